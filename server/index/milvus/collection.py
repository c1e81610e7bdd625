"""One embedsense collection in Milvus (one incarnation of it: schema.py): its documents,
their token vectors (versions.py) and searches.

A collection object whose collection was dropped refuses every later call with
CollectionNotFound: by this process at once, by another replica as soon as Milvus says its
Milvus collections are gone. A write in flight during a drop never lands in a new collection
of the same name: that one is a new incarnation, under other Milvus names.

Acknowledged means: Milvus has the change in its write-ahead log (durable without a flush,
which would seal segments and is left to Milvus) and serves it to every reader (calls.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from embedsense.server.index.collection import CollectionInfo
from embedsense.server.index.errors import (
    CollectionNotFound,
    IndexUnsupported,
    InvalidArgument,
)
from embedsense.server.index.hits import Hit
from embedsense.server.index.locks import ReadWriteLock
from embedsense.server.index.milvus.calls import MilvusCalls, MilvusCollectionGone
from embedsense.server.index.milvus.filters import (
    containing,
    grams,
    like_containing,
    literal_list,
    milvus_expression,
    typed,
)
from embedsense.server.index.milvus.schema import MAX_VARCHAR, METRICS, Layout, milvus_index
from embedsense.server.index.milvus.versions import (
    MAX_ROWS_PER_QUERY,
    TokenRows,
    chunks,
    new_version,
)
from embedsense.server.index.search_plan import filtered_ef
from embedsense.server.index.store import CollectionRow, Document
from embedsense.server.index.validation import check_model, checked_query, validated

# How long a filter's share of the collection (which widens ef) is reused before counting
# again: a search should not pay for two counts.
SHARE_TTL_S = 5.0
# Segments below this many rows get no index in Milvus: searched exhaustively, they are done.
MIN_INDEXED_SEGMENT_ROWS = 1024


class MilvusCollection:
    def __init__(self, calls: MilvusCalls, row: CollectionRow, layout: Layout) -> None:
        self.calls = calls
        self.row = row  # the settings; generation and next_label mean nothing here
        self.layout = layout
        self.token_rows = TokenRows(calls, row.name, layout.docs, layout.tokens)
        self._drop_lock = ReadWriteLock()  # writes share it; a drop takes it alone
        self._dropped = False
        self.gone = False  # Milvus said so: another replica dropped it
        self.checked_at = time.monotonic()  # when the backend last saw it in the meta rows
        self._shares: dict[str, tuple[float, float]] = {}  # expression -> (share, when)
        self._shares_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def store_tokens(self) -> bool:
        return self.row.store_tokens

    @contextmanager
    def _calling(self) -> Iterator[None]:
        """Around every call: a dropped collection says so."""
        if self._dropped or self.gone:
            raise CollectionNotFound(f"collection {self.name!r} was dropped")
        try:
            yield
        except MilvusCollectionGone:
            self.gone = True
            raise CollectionNotFound(f"collection {self.name!r} was dropped") from None

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Around every write: none starts once the collection is dropped here, and a drop
        waits for those in progress."""
        with self._drop_lock.reading(), self._calling():
            yield

    @contextmanager
    def dropping(self) -> Iterator[None]:
        """Around the collection's drop: when it succeeds, every later call raises
        CollectionNotFound."""
        with self._drop_lock.writing():
            yield
            self._dropped = True

    def _count(self, collection: str, expression: str = "") -> int:
        rows = self.calls.query(f"count {self.name!r}", collection, expression, ["count(*)"])
        return int(rows[0]["count(*)"])

    def count(self) -> int:
        with self._calling():
            return self._count(self.layout.docs)

    def index_vectors(self) -> int:
        return self.count()

    def info(self) -> CollectionInfo:
        s = self.row
        with self._calling():
            count = self._count(self.layout.docs)
            tokens = self._count(self.layout.tokens) if s.store_tokens else 0
        return CollectionInfo(
            name=s.name,
            model=s.model,
            dim=s.dim,
            metric=s.metric,
            index_spec=s.index_spec,
            store_tokens=s.store_tokens,
            count=count,
            created_at=s.created_at,
            trained=True,
            training_size=0,
            ef_search=s.options.get("ef_search", 64),
            nprobe=s.options.get("nprobe", 16),
            index_vectors=count,
            tokens=tokens,
            # The vector only: Milvus does not say what a row costs on its disks.
            bytes_per_token=4.0 * s.dim if tokens else 0.0,
            options=dict(s.options),
        )

    # ------------------------------------------------------------ writes

    def upsert(self, docs: Sequence[Document], model: str | None = None) -> list[str]:
        check_model(self.row, model)
        docs = [self._checked(validated(self.row, doc)) for doc in docs]
        ids = [doc.id for doc in docs]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("the same id twice in one upsert")
        if not docs:
            return []
        versions = [new_version() if d.tokens else "" for d in docs]
        with self._writing():
            if self.store_tokens:
                replaced = self.token_rows.named(ids)
                self.token_rows.insert(docs, versions)
            rows = [
                {
                    "id": d.id,
                    "vector": d.vector.tolist(),
                    "text": d.text,
                    "metadata": d.metadata,
                    "filterable": typed(d.metadata),
                    "tokens_version": v,
                }
                for d, v in zip(docs, versions, strict=True)
            ]
            if self.store_tokens and self.layout.has_grams:
                for row in rows:
                    row["grams"] = grams(row["text"])
            self.calls(f"upsert into {self.name!r}", "upsert", self.layout.docs, rows)
            if self.store_tokens:
                self.token_rows.retire(ids, list(replaced.values()), versions)
            self._settle()
        return ids

    def _settle(self) -> None:
        written = [(self.layout.docs, "id")]
        if self.store_tokens:
            written.append((self.layout.tokens, "key"))
        self.calls.settle(f"write to {self.name!r}", *written)

    def _checked(self, doc: Document) -> Document:
        if len(doc.text.encode()) > MAX_VARCHAR:
            raise InvalidArgument(
                f"document {doc.id!r}: its text is {len(doc.text.encode())} UTF-8 bytes; the "
                f"milvus backend stores at most {MAX_VARCHAR} (Milvus's VARCHAR limit)"
            )
        if len(json.dumps(doc.metadata, ensure_ascii=False).encode()) > MAX_VARCHAR:
            raise InvalidArgument(f"document {doc.id!r}: metadata over {MAX_VARCHAR} bytes")
        return doc

    def delete(self, ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        with self._writing():
            named = self.token_rows.named(ids)
            if named:
                self.calls(
                    f"delete from {self.name!r}", "delete", self.layout.docs, ids=list(named)
                )
                if self.store_tokens:
                    self.token_rows.retire(list(named), list(named.values()), [])
                self._settle()
        return len(named)

    # ------------------------------------------------------------ reads

    def get(self, ids: Sequence[str]) -> list[Document | None]:
        ids = list(ids)
        with self._calling():
            unique = list(dict.fromkeys(ids))
            if self.store_tokens:
                found = self.token_rows.read(self._documents, unique)
            else:
                found = self._documents(unique)[0]
        return [found.get(doc_id) for doc_id in ids]

    def _documents(self, ids: list[str]) -> tuple[dict[str, Document], dict[str, str]]:
        found: dict[str, Document] = {}
        versions: dict[str, str] = {}
        for chunk in chunks(ids, 1000):
            for row in self.calls.query(
                f"read documents of {self.name!r}",
                self.layout.docs,
                f"id in {literal_list(chunk)}",
                ["id", "vector", "text", "metadata", "tokens_version"],
            ):
                found[row["id"]] = Document(
                    text=row["text"],
                    vector=np.asarray(row["vector"], dtype=np.float32),
                    id=row["id"],
                    metadata=row["metadata"] or {},
                )
                versions[row["id"]] = row["tokens_version"]
        return found, versions

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        where: Mapping[str, Any] | None = None,
        *,
        with_documents: bool = True,
        ef_search: int | None = None,
        nprobe: int | None = None,
        model: str | None = None,
    ) -> list[list[Hit]]:
        queries = checked_query(self.row, queries, k, model)
        expression = milvus_expression(where)
        index_type, _ = milvus_index(self.row.index_spec)
        params: dict[str, int] = {}
        with self._calling():
            if index_type == "HNSW":
                ef = max(k, ef_search or self.row.options.get("ef_search", 64))
                if expression:  # as on faiss: a filter keeping a share s widens ef by 1/s
                    share = self._share(expression)
                    if share == 0:
                        return [[] for _ in queries]
                    ef = filtered_ef(ef, k, share)
                params["ef"] = ef
            elif index_type.startswith("IVF"):
                params["nprobe"] = nprobe or self.row.options.get("nprobe", 16)
            fields = ["text", "metadata"] if with_documents else ["id"]
            results = self.calls(
                f"search {self.name!r}",
                "search",
                self.layout.docs,
                data=queries.tolist(),
                limit=k,
                filter=expression,
                output_fields=fields,
                search_params={"metric_type": METRICS[self.row.metric], "params": params},
                consistency_level="Bounded",
            )
        return [
            [
                Hit(
                    h["id"],
                    float(h["distance"]),
                    h["entity"].get("text") if with_documents else None,
                    (h["entity"].get("metadata") or {}) if with_documents else None,
                )
                for h in row
            ]
            for row in results
        ]

    def _share(self, expression: str) -> float:
        """The share of the documents the filter keeps, counted at most every SHARE_TTL_S."""
        now = time.monotonic()
        with self._shares_lock:
            cached = self._shares.get(expression)
        if cached is not None and now - cached[1] < SHARE_TTL_S:
            return cached[0]
        total = self._count(self.layout.docs)
        share = self._count(self.layout.docs, expression) / total if total else 0.0
        with self._shares_lock:
            if len(self._shares) > 1024:
                self._shares.clear()
            self._shares[expression] = (share, now)
        return share

    def ids_containing(self, word: str, limit: int) -> list[str]:
        with self._calling():
            if not self.layout.has_grams:
                return self._ids_like(word, limit)
            # The grams find every document containing the word and, for words of three
            # characters or more, a few that hold its pairs apart: the text decides.
            rows = self.calls.query(
                f"find {word!r} in {self.name!r}",
                self.layout.docs,
                containing(word),
                ["id", "text"],
                limit=MAX_ROWS_PER_QUERY,
            )
        return [row["id"] for row in rows if word in row["text"]][:limit]

    def _ids_like(self, word: str, limit: int) -> list[str]:
        try:
            rows = self.calls.query(
                f"find {word!r} in {self.name!r}",
                self.layout.docs,
                like_containing(word),
                ["id"],
                limit=min(limit, MAX_ROWS_PER_QUERY),
            )
        except IndexUnsupported as err:
            raise IndexUnsupported(
                f"collection {self.name!r} was made by an older embedsense, which finds words "
                "with an infix LIKE, and this Milvus (before 2.4) has none: re-create the "
                "collection to search word occurrences in it"
            ) from err
        return [row["id"] for row in rows]

    # ------------------------------------------------------------ optimization

    def wait_until_optimized(self, timeout: float | None = None) -> bool:
        """Flush, then wait until every row is in a built index that the query nodes have
        loaded (searches until then run on Milvus's interim index, with lower recall).
        False when `timeout` seconds pass first."""
        deadline = time.monotonic() + (timeout if timeout is not None else 3600)
        with self._calling():
            for collection in (self.layout.docs, self.layout.tokens)[: 1 + self.store_tokens]:
                self.calls(f"flush {self.name!r}", "flush", collection)
            while time.monotonic() < deadline:
                if self._optimized():
                    return True
                time.sleep(0.5)
        return False

    def _optimized(self) -> bool:
        what = f"index state of {self.name!r}"
        index = self.calls(what, "describe_index", self.layout.docs, index_name="vector")
        if index and (index.get("pending_index_rows") or 0) > 0:
            return False
        segments = self.calls.loaded_segments(what, self.layout.docs)
        if segments is None:  # milvus-lite: no interim index, nothing to wait for
            return True
        loaded = sum(s.num_rows for s in segments)
        unindexed = [
            s for s in segments if not s.index_name and s.num_rows >= MIN_INDEXED_SEGMENT_ROWS
        ]
        return not unindexed and loaded >= self._count(self.layout.docs)
