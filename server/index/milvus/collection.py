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

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson

from embedsense.server.index.collection import CollectionInfo
from embedsense.server.index.errors import (
    CollectionNotFound,
    IndexUnavailable,
    IndexUnsupported,
    InvalidArgument,
)
from embedsense.server.index.filters import required_filter
from embedsense.server.index.hits import Hit, within
from embedsense.server.index.locks import ReadWriteLock
from embedsense.server.index.milvus import optimize
from embedsense.server.index.milvus.calls import MilvusCalls, MilvusCollectionGone
from embedsense.server.index.milvus.coalesce import MAX_MERGED_ROWS, Coalescer, SearchStats
from embedsense.server.index.milvus.filters import (
    containing,
    grams,
    like_containing,
    literal,
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
from embedsense.server.index.validation import (
    MAX_K,
    check_model,
    checked_patch,
    checked_query,
    checked_scroll,
    checked_threshold,
    patched,
    validated,
)

# How long a filter's share of the collection (which widens ef) is reused before counting
# again: a search should not pay for two counts.
SHARE_TTL_S = 5.0
# A scroll page whose query window came back full is narrowed to the ids up to the k-th lowest
# it saw (k at most this), expecting a range that fits in the window; and gives up after
# MAX_NARROWING queries (a collection written faster than it is read).
NARROW_TO = MAX_ROWS_PER_QUERY // 16
MAX_NARROWING = 32


class MilvusCollection:
    def __init__(
        self, calls: MilvusCalls, row: CollectionRow, layout: Layout, search_calls: int
    ) -> None:
        self.calls = calls
        self.row = row  # the settings; generation and next_label mean nothing here
        self.layout = layout
        self.token_rows = TokenRows(calls, row.name, layout.docs, layout.tokens)
        self._drop_lock = ReadWriteLock()  # writes share it; a drop takes it alone
        # Writes of documents share it; a metadata update (read, then written back) takes
        # it alone, so that no write of this process lands between its read and its write.
        self._rows = ReadWriteLock()
        self._dropped = False
        self.gone = False  # Milvus said so: another replica dropped it
        self.checked_at = time.monotonic()  # when the backend last saw it in the meta rows
        self._shares: dict[str, tuple[float, float]] = {}  # expression -> (share, when)
        self._shares_lock = threading.Lock()
        # Searches with the same parameters beyond `search_calls` in flight go to Milvus
        # together (coalesce.py). For benchmarks only: False makes one call per search, the
        # baseline merging is measured against.
        self.coalesce_searches = True
        self._searches = Coalescer(max_calls=search_calls)

    @property
    def name(self) -> str:
        return self.row.name

    def search_stats(self) -> SearchStats:
        """Searches, the Milvus calls made for them and their waits, for the metrics."""
        return self._searches.stats()

    @property
    def dim(self) -> int:
        return self.row.dim

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

    def count(self, where: Mapping[str, Any] | None = None) -> int:
        expression = milvus_expression(where)
        with self._calling():
            return self._count(self.layout.docs, expression)

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
        with self._writing(), self._rows.reading():
            self._write(docs)
        return ids

    def _write(self, docs: list[Document]) -> None:
        """Write checked documents, token rows first (versions.py's rules)."""
        ids = [doc.id for doc in docs]
        versions = [new_version() if d.tokens else "" for d in docs]
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
        # Both JSON fields as pymilvus sends them (orjson): the typed copy is the larger,
        # each string tagged with its type.
        size = max(len(orjson.dumps(doc.metadata)), len(orjson.dumps(typed(doc.metadata))))
        if size > MAX_VARCHAR:
            raise InvalidArgument(
                f"document {doc.id!r}: its metadata takes {size} bytes as Milvus stores it "
                f"(with its copy for filters); the milvus backend keeps at most {MAX_VARCHAR}"
            )
        return doc

    def delete(self, ids: Sequence[str]) -> int:
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        with self._writing(), self._rows.reading():
            named = self.token_rows.named(ids)
            self._delete(named)
        return len(named)

    def _delete(self, named: dict[str, str]) -> None:
        """Delete these documents (id -> the version of token rows it names)."""
        if not named:
            return
        for chunk in chunks(list(named), 1000):
            # Not `ids=`: pymilvus quotes those unescaped ("x','y" would delete x and y).
            expression = f"id in {literal_list(chunk)}"
            self.calls(f"delete from {self.name!r}", "delete", self.layout.docs, filter=expression)
            if self.store_tokens:
                self.token_rows.retire(chunk, [named[i] for i in chunk], [])
        self._settle()

    def delete_where(self, where: Mapping[str, Any]) -> int:
        """Delete the matching documents; how many. Their ids are read first (with the
        versions their token rows have), a query window at a time, then deleted by id as
        `delete` does: a document that starts to match while this runs may stay."""
        expression = milvus_expression(required_filter(where))
        deleted = 0
        with self._writing(), self._rows.reading():
            while True:
                rows = self.calls.query(
                    f"find what to delete in {self.name!r}",
                    self.layout.docs,
                    expression,
                    ["id", "tokens_version"],
                    limit=MAX_ROWS_PER_QUERY,
                )
                # Settled: the next query no longer sees these.
                self._delete({row["id"]: row["tokens_version"] for row in rows})
                deleted += len(rows)
                if len(rows) < MAX_ROWS_PER_QUERY:
                    return deleted

    def update_metadata(
        self, ids: Sequence[str], patch: Mapping[str, Any], mode: str = "merge"
    ) -> int:
        """Merge `patch` into (mode "replace": make it) the documents' metadata; how many of
        the ids exist. Milvus cannot change one field of a row: each row is written again
        with the vector and text it has (none recomputed), and its token rows under a new
        version (versions.py's rule 1), so a concurrent writer never loses its tokens. In
        this process the update excludes other writes of the collection; another replica's
        upsert or delete of the same id landing between its read and its write is undone
        (the document written back as read, with the patch): docs/scaling.md says so."""
        ids = checked_patch(ids, patch, mode)
        if not ids:
            return 0
        with self._writing(), self._rows.writing():
            if self.store_tokens:
                found = self.token_rows.read(self._documents, ids)
            else:
                found = self._documents(ids)[0]
            docs = list(found.values())
            for doc in docs:
                doc.metadata = patched(doc.metadata or {}, patch, mode)
                self._checked(doc)
            if docs:
                self._write(docs)
        return len(docs)

    def _ids_after(
        self, expression: str, after: str | None, n: int
    ) -> tuple[list[str], str | None]:
        """The ids of the first `n` matching documents above `after` in id order, and the
        next page's cursor (None: no more follow). A query with a limit returns *some*
        matching rows, not the lowest ids (Milvus 2.3 reads each segment in the order it
        was written), so only a query that comes back short of its window is known to hold
        every row of its range: a full one is narrowed to the ids up to the k-th lowest it
        saw, until one comes back short."""
        bounds = [f"({expression})"] if expression else []
        bounds.append(f"id > {literal(after)}" if after is not None else 'id != ""')
        upper = None
        for _ in range(MAX_NARROWING):
            narrowed = [*bounds, f"id <= {literal(upper)}"] if upper is not None else bounds
            ids = sorted(
                row["id"]
                for row in self.calls.query(
                    f"page through {self.name!r}",
                    self.layout.docs,
                    " and ".join(narrowed),
                    ["id"],
                    limit=MAX_ROWS_PER_QUERY,
                )
            )
            if len(ids) < MAX_ROWS_PER_QUERY:
                # Every row up to `upper` (or to the end) is read; past `upper` are more,
                # even when those up to it were deleted since the window that named it.
                return (ids[:n], ids[n - 1]) if len(ids) > n else (ids, upper)
            upper = ids[min(n, NARROW_TO) - 1]
        raise IndexUnavailable(
            f"collection {self.name!r}: a page of the scroll did not settle in "
            f"{MAX_NARROWING} queries; retry"
        )

    def scroll(
        self,
        where: Mapping[str, Any] | None,
        limit: int,
        after: str | None = None,
        *,
        with_vectors: bool = False,
    ) -> tuple[list[Document], str | None]:
        """A page of the matching documents in id order, ids above `after`, and the next
        page's cursor (None: no more); see backend.py for what a cursor promises."""
        checked_scroll(limit, after)
        expression = milvus_expression(where)
        fields = ["id", "text", "metadata", *(["vector"] if with_vectors else [])]
        with self._calling():
            ids, cursor = self._ids_after(expression, after, limit)
            rows = {}
            for chunk in chunks(ids, 1000):
                for row in self.calls.query(
                    f"read a page of {self.name!r}",
                    self.layout.docs,
                    f"id in {literal_list(chunk)}",
                    fields,
                ):
                    rows[row["id"]] = row
        empty = np.zeros(0, dtype=np.float32)
        page = [
            Document(
                text=row["text"],
                vector=np.asarray(row["vector"], dtype=np.float32) if with_vectors else empty,
                id=row["id"],
                metadata=row["metadata"] or {},
            )
            for row in (rows[i] for i in ids if i in rows)  # not: deleted since
        ]
        # The cursor is the last id of the page (or of the range read), even when that one
        # was deleted since.
        return page, cursor

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
        score_threshold: float | None = None,
        with_vectors: bool = False,
    ) -> list[list[Hit]]:
        queries = checked_query(self.row, queries, k, model, ef_search=ef_search, nprobe=nprobe)
        threshold = checked_threshold(score_threshold)
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
            if with_vectors:
                fields.append("vector")

            def search(rows: np.ndarray, timeout_s: float) -> list:
                return self.calls(
                    f"search {self.name!r}",
                    "search",
                    self.layout.docs,
                    data=rows.tolist(),
                    limit=k,
                    filter=expression,
                    output_fields=fields,
                    search_params={"metric_type": METRICS[self.row.metric], "params": params},
                    consistency_level="Bounded",
                    timeout=timeout_s,
                )

            if self.coalesce_searches:
                key = (k, expression, tuple(fields), tuple(sorted(params.items())))
                # A merged call asks for no more hits than one search may.
                max_rows = max(1, min(MAX_MERGED_ROWS, MAX_K // k))
                results = self._searches.run(
                    key, queries, search, self.calls.timeout_s, max_rows=max_rows
                )
            else:
                results = search(queries, self.calls.timeout_s)
        hits = [
            [
                Hit(
                    h["id"],
                    float(h["distance"]),
                    h["entity"].get("text") if with_documents else None,
                    (h["entity"].get("metadata") or {}) if with_documents else None,
                    np.asarray(h["entity"]["vector"], dtype=np.float32) if with_vectors else None,
                )
                for h in row
            ]
            for row in results
        ]
        return within(hits, self.row.metric, threshold)

    def _share(self, expression: str) -> float:
        """The share of the documents the filter keeps, counted at most every SHARE_TTL_S."""
        now = time.monotonic()
        with self._shares_lock:
            cached = self._shares.get(expression)
        # A share of 0 is counted again: searched on, it answers nothing, even for a
        # document written a moment ago.
        if cached is not None and cached[0] > 0 and now - cached[1] < SHARE_TTL_S:
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
            # characters or more, others that hold its pairs apart: the text decides. The
            # candidates are read in id order, a window at a time, until `limit` hold it
            # (one window could hold only the others).
            expression = f'{containing(word)} and tokens_version != ""'  # tokens: occurrences
            found: list[str] = []
            after: str | None = None
            while len(found) < limit:
                ids, after = self._ids_after(expression, after, NARROW_TO)
                for chunk in chunks(ids, 1000):
                    rows = self.calls.query(
                        f"find {word!r} in {self.name!r}",
                        self.layout.docs,
                        f"id in {literal_list(chunk)}",
                        ["id", "text"],
                    )
                    found += sorted(row["id"] for row in rows if word in row["text"])
                if after is None:
                    break
        return found[:limit]

    def _ids_like(self, word: str, limit: int) -> list[str]:
        try:
            rows = self.calls.query(
                f"find {word!r} in {self.name!r}",
                self.layout.docs,
                f'{like_containing(word)} and tokens_version != ""',
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
        """Flush, merge the documents' segments and wait until Milvus serves them indexed
        (optimize.py). False when `timeout` seconds pass first."""
        flushed = (self.layout.docs, self.layout.tokens)[: 1 + self.store_tokens]
        with self._calling():
            return optimize.wait_until_optimized(
                self.calls, self.name, self.layout.docs, flushed, timeout
            )
