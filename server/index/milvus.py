"""The `milvus` index backend: collections in Milvus, through pymilvus' MilvusClient.

The same code serves an embedded milvus-lite file (`./index.db`) and a Milvus server or
cluster (`http://host:19530`, with a token when it asks for one): MilvusClient gives us that,
and this module adds nothing that depends on which. Every encoder server pointed at the same
URI sees the same collections and inventories; none keeps state of its own.

How an embedsense collection is stored:
- `embedsense_meta`: one row per collection (its settings, as JSON) and per named sense
  inventory. Milvus wants a vector in every collection; this one carries a dummy.
- `embedsense_c_<hash>`: the documents. Primary key the document id; the sentence vector;
  the text (at most 65,535 UTF-8 bytes, Milvus's VARCHAR limit); the metadata as given; a
  typed copy of it for filters (below); and the version of its token rows.
- `embedsense_t_<hash>` (collections with store_tokens): one row per token — document id,
  version, position, token text, character offsets and the token's vector. A row per token,
  not an array per document: Milvus arrays hold 4,096 numbers at most, a 512-token text has
  196,608, and token rows can be fetched for exactly the documents a word occurs in. A
  replaced document's new token rows are written before its document row names their
  version, and the old ones deleted after: a crash in between leaves orphans, never a
  document whose tokens are missing.

Filters: Milvus compares JSON values loosely (true == 1, a null equals a missing key, and a
`not` drops documents without the field), where our filter language is strict. So filters
run on a typed copy of the metadata: strings become "s:…", booleans "b:1"/"b:0", null
"null:", numbers stay numbers; the compiled expression says exactly what the SQLite one does
(tests/test_backends.py checks both give identical ids on one set of filter cases).

A collection object whose collection this process dropped refuses every later call with
CollectionNotFound: a write in flight during the drop must not land in a new collection of
the same name (the Milvus collections are named after it). Another replica's drop is not
seen here.

Acknowledged means: Milvus returned from the upsert or delete, which it does once the
change is in its write-ahead log (durable without a flush, which would seal segments and is
left to Milvus). Every collection is created with consistency level Strong, so any read
after an acknowledged write sees it, from any replica, not only the writer.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, TypeVar

import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from embedsense.server.index.collection import CollectionInfo
from embedsense.server.index.errors import (
    CollectionExists,
    CollectionNotFound,
    IndexUnavailable,
    InvalidArgument,
)
from embedsense.server.index.filters import COMPARISONS, Condition, parse_filter
from embedsense.server.index.hits import Hit
from embedsense.server.index.locks import ReadWriteLock
from embedsense.server.index.store import CollectionRow, Document, Token
from embedsense.server.index.validation import (
    check_model,
    check_new_collection,
    checked_query,
    search_options,
    validated,
)

T = TypeVar("T")

PREFIX = "embedsense_"
META = PREFIX + "meta"
MAX_VARCHAR = 65_535
MAX_ROWS_PER_QUERY = 16_384  # Milvus's query window
METRICS = {"cosine": "COSINE", "ip": "IP", "l2": "L2"}
_NOT_FOUND = 100  # Milvus's "collection not found"


# ------------------------------------------------------------------ index specs


def milvus_index(spec: str) -> tuple[str, dict[str, int]]:
    """A FAISS factory string the faiss backend takes (specs.py checked it), as a Milvus
    index type and params: Flat, HNSW<M>, IVF<n>,Flat and IVF<n>,PQ<m>; others are refused,
    naming these."""
    if spec == "Flat":
        return "FLAT", {}
    if m := re.fullmatch(r"HNSW(\d+)", spec):
        return "HNSW", {"M": int(m[1]), "efConstruction": 200}
    if m := re.fullmatch(r"IVF(\d+),Flat", spec):
        return "IVF_FLAT", {"nlist": int(m[1])}
    if m := re.fullmatch(r"IVF(\d+),PQ(\d+)", spec):
        return "IVF_PQ", {"nlist": int(m[1]), "m": int(m[2]), "nbits": 8}
    raise InvalidArgument(
        f"index spec {spec!r}: the milvus backend takes Flat, HNSW<M>, IVF<n>,Flat or "
        "IVF<n>,PQ<m>, for example HNSW32, IVF256,Flat, IVF256,PQ16"
    )


# ------------------------------------------------------------------ filters


def typed(value: Any) -> Any:
    """The filterable copy of a metadata value: each scalar tagged with its JSON type."""
    if isinstance(value, Mapping):
        return {str(k): typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, str):
        return "s:" + value
    if isinstance(value, bool):
        return "b:1" if value else "b:0"
    if value is None:
        return "null:"
    return value


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)  # int or float (booleans and null are tagged strings by now)


def milvus_expression(where: Mapping[str, Any] | None) -> str:
    """The filter language as a Milvus boolean expression on the typed copy."""
    return " and ".join(_clause(c) for c in parse_filter(where))


def _clause(c: Condition) -> str:
    field = "filterable" + "".join(f"[{json.dumps(part)}]" for part in c.path)

    def equals(value: Any) -> str:
        return f"{field} == {_literal(typed(value))}"

    if c.op == "$eq":
        return equals(c.operand)
    if c.op == "$in":
        # milvus-lite refuses `in` on a JSON key: expanded, one `==` per value. milvus-lite
        # evaluates that row by row, parsing the row's JSON for each value: a $in of
        # 10,000 values over 40 rows takes about a second there.
        return "(" + " or ".join(equals(v) for v in c.operand) + ")"
    if c.op == "$ne":
        return f"(not (exists {field}) or not ({equals(c.operand)}))"
    op = COMPARISONS[c.op]
    if isinstance(c.operand, str):  # only strings: between the "s:" and "s;" tags
        return f'({field} >= "s:" and {field} < "s;" and {field} {op} {_literal(typed(c.operand))})'
    return f"{field} {op} {_literal(c.operand)}"


def _like_pattern(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return json.dumps(f"%{escaped}%", ensure_ascii=False)


# ------------------------------------------------------------------ one collection


def documents_collection(name: str) -> str:
    return f"{PREFIX}c_{hashlib.sha1(name.encode()).hexdigest()[:24]}"


def tokens_collection(name: str) -> str:
    return f"{PREFIX}t_{hashlib.sha1(name.encode()).hexdigest()[:24]}"


@contextmanager
def _translated(name: str) -> Iterator[None]:
    """Milvus's errors as the index's own."""
    try:
        yield
    except MilvusException as err:
        if err.code == _NOT_FOUND:
            raise CollectionNotFound(f"no collection named {name!r}") from None
        raise IndexUnavailable(f"milvus: {err.message}") from err


class MilvusCollection:
    def __init__(self, client: MilvusClient, row: CollectionRow) -> None:
        self.client = client
        self.row = row  # the settings; generation and next_label mean nothing here
        self.docs = documents_collection(row.name)
        self.tokens = tokens_collection(row.name)
        self._drop_lock = ReadWriteLock()  # writes share it; a drop takes it alone
        self._dropped = False

    @property
    def name(self) -> str:
        return self.row.name

    @property
    def store_tokens(self) -> bool:
        return self.row.store_tokens

    def _check_open(self) -> None:
        if self._dropped:
            raise CollectionNotFound(f"collection {self.name!r} was dropped")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Around every write: none starts once the collection is dropped, and a drop waits
        for those in progress."""
        with self._drop_lock.reading():
            self._check_open()
            yield

    @contextmanager
    def dropping(self) -> Iterator[None]:
        """Around the collection's drop: when it succeeds, every later call raises
        CollectionNotFound."""
        with self._drop_lock.writing():
            yield
            self._dropped = True

    def _count(self, collection: str) -> int:
        self._check_open()
        with _translated(self.name):
            rows = self.client.query(collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def count(self) -> int:
        return self._count(self.docs)

    def index_vectors(self) -> int:
        return self.count()

    def info(self) -> CollectionInfo:
        s = self.row
        count = self.count()
        tokens = self._count(self.tokens) if s.store_tokens else 0
        return CollectionInfo(
            name=s.name, model=s.model, dim=s.dim, metric=s.metric, index_spec=s.index_spec,
            store_tokens=s.store_tokens, count=count, created_at=s.created_at, trained=True,
            training_size=0, ef_search=s.options.get("ef_search", 64),
            nprobe=s.options.get("nprobe", 16), index_vectors=count, tokens=tokens,
            # The vector only: Milvus does not say what a row costs on its disks.
            bytes_per_token=4.0 * s.dim if tokens else 0.0, options=dict(s.options),
        )  # fmt: skip

    # ------------------------------------------------------------ writes

    def upsert(self, docs: Sequence[Document], model: str | None = None) -> list[str]:
        check_model(self.row, model)
        docs = [self._checked(validated(self.row, doc)) for doc in docs]
        ids = [doc.id for doc in docs]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("the same id twice in one upsert")
        if not docs:
            return []
        versions = [uuid.uuid4().hex if d.tokens is not None else "" for d in docs]
        with self._writing(), _translated(self.name):
            if self.store_tokens:
                token_rows = [
                    {"key": f"{d.id}|{v}|{i}", "doc_id": d.id, "version": v, "position": i,
                     "token": t.text[:1024], "start": t.start, "end": t.end,
                     "vector": d.token_vectors[i].tolist()}
                    for d, v in zip(docs, versions, strict=True) if d.tokens is not None
                    for i, t in enumerate(d.tokens)
                ]  # fmt: skip
                for start in range(0, len(token_rows), 4096):
                    self.client.insert(self.tokens, token_rows[start : start + 4096])
            self.client.upsert(self.docs, [
                {"id": d.id, "vector": d.vector.tolist(), "text": d.text,
                 "metadata": d.metadata, "filterable": typed(d.metadata), "tokens_version": v}
                for d, v in zip(docs, versions, strict=True)
            ])  # fmt: skip
            if self.store_tokens:  # the replaced versions, now that nothing names them
                self.client.delete(
                    self.tokens,
                    filter=f"doc_id in {_literal_list(ids)} and "
                    f"not (version in {_literal_list(versions)})",
                )
        return ids

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
        with self._writing(), _translated(self.name):
            existing = [row["id"] for chunk in _chunks(ids, 1000) for row in self.client.query(
                self.docs, filter=f"id in {_literal_list(chunk)}", output_fields=["id"]
            )]  # fmt: skip
            if existing:
                self.client.delete(self.docs, ids=existing)
                if self.store_tokens:
                    self.client.delete(self.tokens, filter=f"doc_id in {_literal_list(existing)}")
        return len(existing)

    # ------------------------------------------------------------ reads

    def get(self, ids: Sequence[str]) -> list[Document | None]:
        self._check_open()
        ids = list(ids)
        found: dict[str, Document] = {}
        versions: dict[str, str] = {}  # id -> the version of its token rows
        with _translated(self.name):
            for chunk in _chunks(list(dict.fromkeys(ids)), 1000):
                rows = self.client.query(
                    self.docs, filter=f"id in {_literal_list(chunk)}",
                    output_fields=["id", "vector", "text", "metadata", "tokens_version"],
                )  # fmt: skip
                for row in rows:
                    found[row["id"]] = Document(
                        text=row["text"], vector=np.asarray(row["vector"], dtype=np.float32),
                        id=row["id"], metadata=row["metadata"] or {},
                    )  # fmt: skip
                    versions[row["id"]] = row["tokens_version"]
            if self.store_tokens and found:
                self._attach_tokens(found, versions)
        return [found.get(doc_id) for doc_id in ids]

    def _attach_tokens(self, docs: dict[str, Document], versions: dict[str, str]) -> None:
        by_doc: dict[str, list[dict]] = {doc_id: [] for doc_id in docs}
        # A query returns at most Milvus's row window: documents of up to 512 tokens go 32
        # to a query; when one comes back full, each of its documents is read page by page.
        for chunk in _chunks(list(docs), MAX_ROWS_PER_QUERY // 512):
            rows = self._token_rows(chunk, [versions[i] for i in chunk], "")
            if len(rows) == MAX_ROWS_PER_QUERY:
                rows = [row for doc_id in chunk for row in self._paged(doc_id, versions[doc_id])]
            for row in rows:
                by_doc[row["doc_id"]].append(row)
        for doc_id, rows in by_doc.items():
            if not rows:
                continue
            rows.sort(key=lambda r: r["position"])
            docs[doc_id].tokens = [Token(r["token"], r["start"], r["end"]) for r in rows]
            docs[doc_id].token_vectors = np.asarray([r["vector"] for r in rows], np.float32)

    def _token_rows(self, doc_ids: list[str], versions: list[str], more: str) -> list[dict]:
        return self.client.query(
            self.tokens,
            filter=f"doc_id in {_literal_list(doc_ids)} and version in "
            f"{_literal_list(versions)}{more}",
            output_fields=["doc_id", "position", "token", "start", "end", "vector"],
            limit=MAX_ROWS_PER_QUERY,
        )  # fmt: skip

    def _paged(self, doc_id: str, version: str) -> Iterator[dict]:
        for first in range(0, 2**31, MAX_ROWS_PER_QUERY):
            page = self._token_rows([doc_id], [version], f" and position >= {first} and "
                                    f"position < {first + MAX_ROWS_PER_QUERY}")  # fmt: skip
            yield from page
            if len(page) < MAX_ROWS_PER_QUERY:
                return

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
        self._check_open()
        queries = checked_query(self.row, queries, k, model)
        expression = milvus_expression(where)
        index_type, _ = milvus_index(self.row.index_spec)
        params: dict[str, int] = {}
        if index_type == "HNSW":
            params["ef"] = max(k, ef_search or self.row.options.get("ef_search", 64))
        elif index_type.startswith("IVF"):
            params["nprobe"] = nprobe or self.row.options.get("nprobe", 16)
        fields = ["text", "metadata"] if with_documents else ["id"]
        with _translated(self.name):
            results = self.client.search(
                self.docs, data=queries.tolist(), limit=k, filter=expression,
                search_params={"metric_type": METRICS[self.row.metric], "params": params},
                output_fields=fields,
            )  # fmt: skip
        return [
            [Hit(h["id"], float(h["distance"]),
                 h["entity"].get("text") if with_documents else None,
                 (h["entity"].get("metadata") or {}) if with_documents else None)
             for h in row]
            for row in results
        ]  # fmt: skip

    def ids_containing(self, word: str, limit: int) -> list[str]:
        self._check_open()
        with _translated(self.name):
            rows = self.client.query(
                self.docs, filter=f"text like {_like_pattern(word)}",
                output_fields=["id"], limit=min(limit, MAX_ROWS_PER_QUERY),
            )  # fmt: skip
        return [row["id"] for row in rows]


def _literal_list(values: Sequence[str]) -> str:
    return json.dumps(list(values), ensure_ascii=False)


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------------ the backend


class MilvusBackend:
    """The `milvus` index backend (see backend.py)."""

    kind = "milvus"

    def __init__(self, uri: str, token: str | None = None) -> None:
        self.uri = uri
        try:
            self.client = MilvusClient(uri=uri, token=token or "")
            if not self.client.has_collection(META):
                self._create_meta()
        except MilvusException as err:
            raise IndexUnavailable(f"milvus at {uri}: {err.message}") from err
        self._lock = threading.Lock()
        self._open: dict[str, MilvusCollection] = {}

    def _create_meta(self) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("value", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants one
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="L2")
        try:
            self.client.create_collection(META, schema=schema, index_params=index,
                                          consistency_level="Strong")  # fmt: skip
        except MilvusException:
            if not self.client.has_collection(META):  # another replica made it first: fine
                raise

    # ------------------------------------------------------------ meta rows

    def _meta_get(self, key: str) -> str | None:
        rows = self._meta(lambda: self.client.query(
            META, filter=f"key == {_literal(key)}", output_fields=["value"]
        ))  # fmt: skip
        return rows[0]["value"] if rows else None

    def _meta_put(self, key: str, value: str) -> None:
        if len(value.encode()) > MAX_VARCHAR:
            raise InvalidArgument(f"{key}: {len(value.encode())} bytes; the milvus backend "
                                  f"keeps at most {MAX_VARCHAR}")  # fmt: skip
        self._meta(lambda: self.client.upsert(
            META, [{"key": key, "value": value, "vector": [0.0, 0.0]}]
        ))  # fmt: skip

    def _meta_keys(self, prefix: str) -> list[tuple[str, str]]:
        rows = self._meta(lambda: self.client.query(
            META, filter=f"key like {json.dumps(prefix + '%')}", output_fields=["key", "value"],
            limit=MAX_ROWS_PER_QUERY,
        ))  # fmt: skip
        return sorted((row["key"][len(prefix) :], row["value"]) for row in rows)

    def _meta(self, call: Callable[[], T]) -> T:
        try:
            return call()
        except MilvusException as err:
            raise IndexUnavailable(f"milvus: {err.message}") from err

    # ------------------------------------------------------------ collections

    def create(
        self,
        name: str,
        *,
        model: str,
        dim: int,
        metric: str = "cosine",
        index_spec: str = "Flat",
        store_tokens: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> CollectionInfo:
        check_new_collection(name, model, dim, metric, index_spec)
        index_type, index_params = milvus_index(index_spec)
        row = CollectionRow(name, model, dim, metric, index_spec, store_tokens,
                            search_options(options), time.time(), 0, 0)  # fmt: skip
        with self._lock:
            if self._meta_get(f"collection:{name}") is not None:
                raise CollectionExists(f"collection {name!r} already exists")
            with _translated(name):
                self._create_documents(row, index_type, index_params)
                if store_tokens:
                    self._create_tokens(row)
            self._meta_put(f"collection:{name}", json.dumps(asdict(row)))
            self._open[name] = MilvusCollection(self.client, row)
        return self._open[name].info()

    def _create_documents(self, s: CollectionRow, index_type: str, params: dict[str, int]) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=256)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=s.dim)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("filterable", DataType.JSON)
        schema.add_field("tokens_version", DataType.VARCHAR, max_length=64)
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type=index_type, metric_type=METRICS[s.metric],
                        params=params)  # fmt: skip
        docs = documents_collection(s.name)
        self.client.drop_collection(docs)  # left by a create that crashed half-way
        self.client.create_collection(docs, schema=schema, index_params=index,
                                      consistency_level="Strong")  # fmt: skip

    def _create_tokens(self, s: CollectionRow) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=512)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=256)
        schema.add_field("version", DataType.VARCHAR, max_length=64)
        schema.add_field("position", DataType.INT64)
        schema.add_field("token", DataType.VARCHAR, max_length=1024)
        schema.add_field("start", DataType.INT64)
        schema.add_field("end", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=s.dim)
        index = self.client.prepare_index_params()
        index.add_index("vector", index_type="FLAT", metric_type="IP")
        tokens = tokens_collection(s.name)
        self.client.drop_collection(tokens)
        self.client.create_collection(tokens, schema=schema, index_params=index,
                                      consistency_level="Strong")  # fmt: skip

    def get(self, name: str) -> MilvusCollection:
        with self._lock:
            if name in self._open:
                return self._open[name]
        stored = self._meta_get(f"collection:{name}")  # another replica may have made it
        if stored is None:
            raise CollectionNotFound(f"no collection named {name!r}")
        collection = MilvusCollection(self.client, CollectionRow(**json.loads(stored)))
        with self._lock:
            return self._open.setdefault(name, collection)

    def names(self) -> list[str]:
        return [name for name, _ in self._meta_keys("collection:")]

    def list(self) -> list[CollectionInfo]:
        infos = []
        for name in self.names():
            try:
                infos.append(self.get(name).info())
            except CollectionNotFound:  # dropped by another replica meanwhile
                continue
        return infos

    def drop(self, name: str) -> None:
        collection = self.get(name)
        with collection.dropping(), self._lock, _translated(name):
            self._meta(lambda: self.client.delete(META, ids=[f"collection:{name}"]))
            self.client.drop_collection(collection.docs)
            self.client.drop_collection(collection.tokens)
            self._open.pop(name, None)

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------ inventories

    def put_inventory(self, name: str, words_json: str, replace: bool) -> bool:
        with self._lock:
            if not replace and self._meta_get(f"inventory:{name}") is not None:
                return False
            self._meta_put(f"inventory:{name}", words_json)
        return True

    def get_inventory(self, name: str) -> str | None:
        return self._meta_get(f"inventory:{name}")

    def inventories(self) -> list[tuple[str, str]]:
        return self._meta_keys("inventory:")

    def delete_inventory(self, name: str) -> bool:
        if self._meta_get(f"inventory:{name}") is None:
            return False
        self._meta(lambda: self.client.delete(META, ids=[f"inventory:{name}"]))
        return True
