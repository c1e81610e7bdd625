"""The collection and document operations, once for gRPC (service.py) and HTTP REST
(collection_routes.py): each surface only translates its request into these calls and their
answers into its reply.

Here: the checks that are the same on every surface (texts, counts, caller vectors, k, page
sizes, the scroll cursor), embedding documents and queries with the shared engine, and the
index calls, which run in threads of their own (SQLite, FAISS, Milvus round trips;
index/threads.py) so the event loop keeps serving. Domain errors pass through as they are:
each surface maps them (gRPC: service.STATUSES; HTTP: http_errors.from_exception over the
same table).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedsense.model import TextRole
from embedsense.proto import MAX_SCROLL_PAGE
from embedsense.proto.ids import content_id
from embedsense.server.api.checks import (
    BadRequest,
    Limits,
    check_count,
    check_text,
    check_texts,
)
from embedsense.server.api.settings import ServerSettings
from embedsense.server.batching import Priority
from embedsense.server.engine import Engine, TextTooLong
from embedsense.server.index import (
    CollectionBackend,
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    Document,
    Hit,
    IndexBackend,
    IndexUnavailable,
    Token,
)
from embedsense.server.index.filters import normal_form
from embedsense.server.index.filters import parse as parse_filter
from embedsense.server.index.threads import IndexThreads
from embedsense.server.index.validation import (
    EXTERNAL_MODEL,
    MAX_K,
    METADATA_MODES,
    checked_ids,
    checked_metadata,
)
from embedsense.server.senses.words import encode_to_store

DEFAULT_PAGE = 256  # documents per scroll page when the caller gives no limit
MAX_SEARCH_HITS = 100_000  # queries x k in one batch search: bounds the reply
CURSOR_VERSION = 2  # 2: the collection's name in it


@dataclass(frozen=True)
class NewDocument:
    """A document to store, as any surface gives it: a text to embed, or a text (possibly
    empty) with the caller's own vector."""

    text: str
    id: str | None = None
    metadata: Mapping[str, Any] | None = None
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class Page:
    """One page of a scroll, and the cursor of the next (None: this was the last)."""

    documents: list[Document]
    next_cursor: str | None


def filter_keys(where: Mapping[str, Any] | None) -> tuple[str, str]:
    """Short fingerprints of a filter, what ties a cursor to the filter it was made for:
    first of its normal form (filters.normal_form: the same however the filter is written),
    then of its JSON as sent, which servers of earlier versions made. Both are of JSON with
    keys sorted, so a filter written in the normal form (no filter at all, most filters)
    has one fingerprint for servers of either version, and a scroll goes on across a
    rolling upgrade whichever way it goes."""
    return _fingerprint(normal_form(parse_filter(where))), _fingerprint(where or {})


def _fingerprint(where: Mapping[str, Any]) -> str:
    text = json.dumps(where, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_cursor(collection: str, after: str, filter_key: str) -> str:
    """The opaque cursor of the page after document id `after`: URL-safe base64 of a small
    JSON array (version, collection, filter fingerprint, id). Callers must not build or read
    it."""
    raw = json.dumps([CURSOR_VERSION, collection, filter_key, after], ensure_ascii=False)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, collection: str, filter_keys: Sequence[str]) -> str | None:
    """The id a cursor continues after (None for an empty cursor: the start). BadRequest for
    a cursor this server did not make, or one made for another collection or filter (one
    whose fingerprint is none of `filter_keys`)."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        fields = json.loads(raw)
        if isinstance(fields, list) and len(fields) == 3 and fields[0] == 1:
            # Form 1, made before an upgrade, had no collection: taken as this one's, so a
            # scroll goes on across a rolling upgrade.
            fields = [CURSOR_VERSION, collection, *fields[1:]]
        version, made_for, key, after = fields
        if version != CURSOR_VERSION or not all(isinstance(v, str) for v in (made_for, key, after)):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise BadRequest(
            "cursor: not a cursor this server made; pass the next_cursor of the previous "
            "page as it came, or none to start",
            "cursor",
        ) from None
    if made_for != collection:
        raise BadRequest(
            f"cursor: it was made for collection {made_for!r}, not {collection!r}; a cursor "
            "goes on only with the scroll that made it",
            "cursor",
        )
    if key not in filter_keys:
        raise BadRequest(
            "cursor: it was made for another filter; a scroll keeps its filter from the first "
            "page to the last",
            "cursor",
        )
    return after


def page_size(limit: int | None) -> int:
    """A scroll's page size: DEFAULT_PAGE when not given (0 or None), at most MAX_SCROLL_PAGE."""
    if not limit:
        return DEFAULT_PAGE
    if not 1 <= limit <= MAX_SCROLL_PAGE:
        raise BadRequest(f"limit: {limit}; a page holds 1 to {MAX_SCROLL_PAGE} documents", "limit")
    return limit


def metadata_mode(mode: str) -> str:
    if mode not in METADATA_MODES:
        raise BadRequest(f"mode: {mode!r}; expected 'merge' or 'replace'", "mode")
    return mode


def check_k(k: int, queries: int) -> int:
    if not 1 <= k <= MAX_K:  # the index's own rule, checked before any embedding
        raise BadRequest(f"k must be within 1-{MAX_K}, got {k}", "k")
    if queries * k > MAX_SEARCH_HITS:
        raise BadRequest(
            f"k: {queries} queries x k={k} is {queries * k} hits; one call answers at most "
            f"{MAX_SEARCH_HITS}: send fewer queries or a smaller k",
            "k",
        )
    return k


def check_vector(vector: Any, field: str, collection: CollectionBackend) -> np.ndarray:
    """A caller's vector as float32 (dim,), of the collection's dimension (named by its
    place in the request: an index error would name an id the caller may never have seen)."""
    array = np.asarray(vector, dtype=np.float32)
    if array.ndim != 1 or array.size == 0:
        raise BadRequest(f"{field}: expected one vector (dim,), got shape {array.shape}", field)
    if array.size != collection.dim:
        raise BadRequest(
            f"{field}: a {array.size}-dim vector; collection {collection.name!r} holds "
            f"{collection.dim}-dim vectors (expected dimension {collection.dim})",
            field,
        )
    return array


class CollectionOps:
    """Collections and documents over the engine and the index backend."""

    def __init__(
        self,
        engine: Engine,
        catalog: IndexBackend,
        settings: ServerSettings,
        index_threads: IndexThreads,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.index_threads = index_threads
        self.settings = settings
        self.limits = Limits.of(settings)
        self.model_name = engine.model.spec.name

    # ------------------------------------------------------------ collections

    async def collection(self, name: str) -> CollectionBackend:
        """The collection; BadRequest for no name, CollectionNotFound for an unknown one."""
        if not name:
            raise BadRequest("collection: a collection name is needed", "collection")
        return await self.index_threads.run(self.catalog.get, name)  # milvus: maybe a round trip

    async def create(
        self,
        name: str,
        *,
        index: str = "Flat",
        metric: str = "cosine",
        store_tokens: bool = False,
        ef_search: int = 0,
        nprobe: int = 0,
        dim: int = 0,
        exist_ok: bool = False,
    ) -> CollectionInfo:
        """A collection of the served model's vectors; with `dim`, one of vectors embedded
        elsewhere (model EXTERNAL_MODEL), of that dimension. With `exist_ok`, one of that name
        made with these settings is the answer (a script run twice, a create sent again);
        one made with other settings is CollectionExists still, naming them."""
        if dim and store_tokens:  # token vectors come from texts the server embeds
            raise BadRequest(
                "store_tokens: a collection of vectors embedded elsewhere (dim) has no token "
                "vectors, since the server embeds no text into it",
                "store_tokens",
            )
        model, size = (EXTERNAL_MODEL, dim) if dim else (self.model_name, self.engine.model.dim)
        options = {key: value for key, value in (("ef_search", ef_search), ("nprobe", nprobe))
                   if value}  # fmt: skip
        asked = {"model": model, "dim": size, "metric": metric or "cosine",
                 "index": index or "Flat", "store_tokens": store_tokens, **options}  # fmt: skip
        try:
            return await self.index_threads.run(
                self.catalog.create, name, model=model, dim=size, metric=asked["metric"],
                index_spec=asked["index"], store_tokens=store_tokens, options=options,
            )  # fmt: skip
        except CollectionExists:
            if not exist_ok:
                raise
        try:
            found = await self.describe(name)
        except CollectionNotFound:  # still being made by another replica, or dropped since
            raise IndexUnavailable(
                f"collection {name!r} is being made or dropped; try again"
            ) from None
        has = {"model": found.model, "dim": found.dim, "metric": found.metric,
               "index": found.index_spec, "store_tokens": found.store_tokens,
               "ef_search": found.ef_search, "nprobe": found.nprobe}  # fmt: skip
        differ = [key for key in asked if asked[key] != has[key]]
        if differ:
            why = ""
            if "model" in differ and dim:  # the caller named no model: say where one came from
                why = (f" (dim={dim} makes a collection of vectors embedded elsewhere, model "
                       f"{EXTERNAL_MODEL!r}; without dim, the served model's)")  # fmt: skip
            raise CollectionExists(
                f"collection {name!r} exists with {_settings(has, differ)}, not "
                f"{_settings(asked, differ)}{why}: create it with its own settings, or drop "
                "it first"
            )
        return found

    async def list(self) -> list[CollectionInfo]:
        return await self.index_threads.run(self.catalog.list)

    async def describe(self, name: str) -> CollectionInfo:
        collection = await self.collection(name)
        return await self.index_threads.run(collection.info)

    async def drop(self, name: str) -> None:
        await self.collection(name)
        await self.index_threads.run(self.catalog.drop, name)

    # ------------------------------------------------------------ writes

    async def documents(
        self,
        collection: CollectionBackend,
        batch: Sequence[NewDocument],
        *,
        priority: Priority | None = None,
        timeout: float | None = None,
    ) -> list[Document]:
        """The index's documents for `batch`: texts embedded as passages (in windows, so
        every token of a long text gets a vector; token vectors when the collection keeps
        them, each sentence's from the sentence encoded alone, as senses/words.py reads a
        word), or the caller's vectors as they are (their dimension is the index's check).
        Errors name the document: documents[i]."""
        check_count(len(batch), "documents", self.limits, "documents")
        to_embed = [i for i, d in enumerate(batch) if d.vector is None]
        texts = [check_text(batch[i].text, f"documents[{i}].text", self.settings.max_text_chars)
                 for i in to_embed]  # fmt: skip
        ids: list[str] = []
        given: dict[int, np.ndarray] = {}  # the caller's vectors, checked
        seen: dict[str, int] = {}  # id -> the first document of it
        for i, d in enumerate(batch):  # every check before the embedding, which costs most
            if d.vector is not None:
                given[i] = check_vector(d.vector, f"documents[{i}].vector", collection)
                if d.text:  # stored as it is: the same rules, blank allowed
                    check_text(d.text, f"documents[{i}].text", self.settings.max_text_chars,
                               embedded=False)  # fmt: skip
                elif not d.id:  # a random id would store it again each time it is sent
                    raise BadRequest(
                        f"documents[{i}]: a document given by its vector alone (no text) needs "
                        "an id",
                        "documents",
                    )
            if d.metadata is not None and not isinstance(d.metadata, Mapping):
                raise BadRequest(f"documents[{i}].metadata: must be a JSON object", "documents")
            checked_metadata(d.metadata or {}, f"documents[{i}].metadata", "documents")
            # Without an id: the one the SDK would have made.
            ids.append(d.id or content_id(d.text, d.metadata or {}))
            if (first := seen.setdefault(ids[-1], i)) == i:
                continue
            if not d.id and not batch[first].id:
                raise BadRequest(
                    f"documents[{first}] and documents[{i}] have the same text and metadata "
                    "and no id, so the same id: send one of them, or give each an id",
                    "documents",
                )
            raise BadRequest(  # which one to store would be a guess
                f"documents[{first}] and documents[{i}]: the same id {ids[-1]!r} twice in one "
                "upsert; send each document once",
                "documents",
            )
        results = {}
        stored: dict[int, tuple[list[Token], np.ndarray]] = {}  # the token vectors kept
        if texts:
            level = Priority.BULK if priority is None else priority
            if collection.store_tokens:  # an occurrence is read in its sentence alone
                embedded, kept = await encode_to_store(self.engine, texts, timeout=timeout,
                                                       priority=level)  # fmt: skip
                stored = dict(zip(to_embed, kept, strict=True))
            else:
                embedded = await self.engine.embed(texts, role=TextRole.PASSAGE, windowed=True,
                                                   timeout=timeout, priority=level)  # fmt: skip
            results = dict(zip(to_embed, embedded, strict=True))
        docs: list[Document] = []
        for i, (d, doc_id) in enumerate(zip(batch, ids, strict=True)):
            meta = dict(d.metadata or {})
            if (r := results.get(i)) is None:
                docs.append(Document(text=d.text, vector=given[i], id=doc_id, metadata=meta))
                continue
            tokens, token_vectors = stored.get(i, (None, None))
            docs.append(Document(text=d.text, vector=r.sentence, id=doc_id, metadata=meta,
                                 tokens=tokens, token_vectors=token_vectors))  # fmt: skip
        return docs

    async def store(
        self,
        collection: CollectionBackend,
        batch: Sequence[NewDocument],
        *,
        priority: Priority | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        """Embed (where needed) and store one batch; the ids, in order. Durable when it
        returns. Caller vectors are checked by the collection's dimension (another size is
        INVALID_ARGUMENT naming both); texts embedded here need a collection of the served
        model (an "external" one refuses them: FAILED_PRECONDITION)."""
        docs = await self.documents(collection, batch, priority=priority, timeout=timeout)
        # Only vectors this server embedded are of its model: a batch of caller vectors only
        # is checked by its dimension (and may go to an "external" collection).
        embedded = any(d.vector is None for d in batch)
        model = self.model_name if embedded else None
        return await self.index_threads.run(collection.upsert, docs, model)

    async def upsert(
        self,
        name: str,
        batch: Sequence[NewDocument],
        *,
        priority: Priority | None = None,
        timeout: float | None = None,
    ) -> list[str]:
        collection = await self.collection(name)
        return await self.store(collection, batch, priority=priority, timeout=timeout)

    async def delete(
        self, name: str, ids: Sequence[str] = (), where: Mapping[str, Any] | None = None
    ) -> int:
        """Delete by ids, or every document matching `where` (not both; an empty filter is
        the index's to refuse); how many were deleted."""
        if where is not None and ids:
            raise BadRequest("ids and filter: give one of them, not both", "filter")
        if where is None:  # before the lookup, as get and update_metadata check theirs
            self._checked_ids(ids)
        collection = await self.collection(name)
        if where is not None:
            return await self.index_threads.run(collection.delete_where, where)
        return await self.index_threads.run(collection.delete, list(ids))

    async def update_metadata(
        self, name: str, ids: Sequence[str], patch: Mapping[str, Any], mode: str = "merge"
    ) -> int:
        """Change the metadata of `ids` (merge: the patch's keys over the stored ones;
        replace: the patch is the new metadata); how many of them existed. Texts and vectors
        are not touched."""
        if not isinstance(patch, Mapping):
            raise BadRequest("patch: must be a JSON object", "patch")
        check_count(len(ids), "ids", self.limits, "ids")  # a patch for no ids is a mistake
        collection = await self.collection(name)
        return await self.index_threads.run(
            collection.update_metadata, list(ids), dict(patch), metadata_mode(mode)
        )

    def _checked_ids(self, ids: Sequence[str]) -> None:
        """Ids to get or delete: none gets and deletes none; more than max_texts_per_request
        are refused, on every surface and for every call that takes ids (the SDK splits a
        longer list), so no call holds an index thread for an unbounded list."""
        if ids:
            check_count(len(ids), "ids", self.limits, "ids")
        checked_ids(ids)

    # ------------------------------------------------------------ reads

    async def get(self, name: str, ids: Sequence[str]) -> list[Document | None]:
        self._checked_ids(ids)
        collection = await self.collection(name)
        return await self.index_threads.run(collection.get, list(ids))

    async def count(self, name: str, where: Mapping[str, Any] | None = None) -> int:
        collection = await self.collection(name)
        return await self.index_threads.run(collection.count, where or None)

    async def scroll(
        self,
        name: str,
        where: Mapping[str, Any] | None = None,
        limit: int | None = None,
        cursor: str = "",
        *,
        with_vectors: bool = False,
    ) -> Page:
        """One page of the documents matching `where`, in id order, from `cursor` (made by
        the page before; empty: the start). What a cursor promises: a document that exists
        and matches for the whole scroll is returned exactly once; one added, removed or
        changed meanwhile may or may not be; none twice (pages follow the id order)."""
        where = where or None
        keys = filter_keys(where)  # the filter checked first (FilterError names its fault)
        after = decode_cursor(cursor, name, keys)
        size = page_size(limit)
        collection = await self.collection(name)
        docs, next_after = await self.index_threads.run(
            collection.scroll, where, size, after, with_vectors=with_vectors
        )
        return Page(docs, None if next_after is None else encode_cursor(name, next_after, keys[0]))

    async def search(
        self,
        name: str,
        *,
        texts: Sequence[str] | None = None,
        vectors: np.ndarray | None = None,
        k: int = 10,
        where: Mapping[str, Any] | None = None,
        ef_search: int | None = None,
        nprobe: int | None = None,
        score_threshold: float | None = None,
        with_vectors: bool = False,
        priority: Priority | None = None,
        timeout: float | None = None,
        field: str = "texts",
    ) -> list[list[Hit]]:
        """A hit list per query, best first: query texts (embedded together as queries) or
        query vectors (n, dim), not both. score_threshold keeps only hits at least that
        near (score >= it for cosine and ip, squared distance <= it for l2)."""
        if (texts is None) == (vectors is None):
            raise BadRequest("query: give query texts or query vectors (not both)", field)
        collection = await self.collection(name)
        if texts is not None:
            texts = check_texts(list(texts), field, self.limits)
            check_k(k, len(texts))
            try:
                embedded = await self.engine.embed(
                    texts, timeout=timeout, role=TextRole.QUERY,
                    priority=Priority.QUERY if priority is None else priority,
                )  # fmt: skip
            except TextTooLong as err:  # its hint, long_text, is no option of a search
                where = f"{field}[{err.index}]" if len(texts) > 1 else field
                raise BadRequest(
                    f"{where}: {err.n_tokens} tokens; a search query takes at most {err.limit} "
                    "(shorten it, or search with a vector made from it)",
                    field,
                ) from None
            queries = np.stack([r.sentence for r in embedded])
        else:
            given = np.asarray(vectors, dtype=np.float32)
            queries = given[None] if given.ndim == 1 else given
            if queries.ndim != 2 or queries.shape[1] == 0:
                raise BadRequest(
                    f"{field}: expected query vectors of {collection.dim} numbers each, got "
                    f"shape {given.shape}",
                    field,
                )
            if queries.shape[1] != collection.dim:  # named as sent: the index says "query"
                raise BadRequest(
                    f"{field}: a {queries.shape[1]}-dim vector; collection {collection.name!r} "
                    f"holds {collection.dim}-dim vectors (expected dimension {collection.dim})",
                    field,
                )
            check_count(len(queries), field, self.limits, "queries")
            check_k(k, len(queries))
        model = self.model_name if texts is not None else None  # as in store()
        return await self.index_threads.run(
            collection.search, queries, k, where or None, ef_search=ef_search or None,
            nprobe=nprobe or None, model=model, score_threshold=score_threshold,
            with_vectors=with_vectors,
        )  # fmt: skip


def _settings(values: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{key} {json.dumps(values[key])}" for key in keys)
