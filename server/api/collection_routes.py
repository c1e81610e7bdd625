"""Collections and documents over HTTP: REST under /v1/collections, in the same OpenAPI
document, behind the same API key, body limits and deadline as the embedding routes.

    POST   /v1/collections                          create
    GET    /v1/collections                          list
    GET    /v1/collections/{name}                   describe
    DELETE /v1/collections/{name}                   drop
    POST   /v1/collections/{name}/upsert            texts (embedded here) or caller vectors
    POST   /v1/collections/{name}/get               by ids
    POST   /v1/collections/{name}/delete            by ids or by filter
    POST   /v1/collections/{name}/count             by filter
    POST   /v1/collections/{name}/scroll            a page and the next cursor
    POST   /v1/collections/{name}/update_metadata   merge or replace
    POST   /v1/collections/{name}/search            one query or many

Reads and filters travel in JSON bodies (POST), as Qdrant's points API does: a filter is a
JSON object, awkward in a query string. Each handler only translates shapes: the work is
collection_ops.py's, the same calls gRPC makes. Errors are {"error": {"message", "code",
"param"}} with the status the gRPC code maps to (http_errors.HTTP_STATUS).

A search, scroll or get reply is bounded as a gRPC reply is, by max_message_bytes: its JSON
size is estimated from its hits or documents (texts in UTF-8, metadata, vectors at the
widest a number is written) before it is built, and one over the limit is a 413
reply_too_large saying what to ask less of, rather than gigabytes written in memory.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import orjson
from aiohttp import web

from embedsense.server.api import collection_models as m
from embedsense.server.api.checks import (
    check_json_reply_size,
    json_string_bytes,
    json_vector_bytes,
)
from embedsense.server.api.collection_ops import CollectionOps, NewDocument
from embedsense.server.api.http import BuiltOffLoop, HttpRoute
from embedsense.server.api.http_errors import ApiError
from embedsense.server.engine import requested_priority
from embedsense.server.index import CollectionInfo, Document, Hit

TAG = "Collections"
ERRORS = (400, 404, 408, 413, 415, 422, 429, 503, 504)
WRITE_ERRORS = (*ERRORS, 507)  # 507: the disk that holds the store is full
# The JSON of one hit or document besides its id, text, metadata and vector: the field
# names, quotes, colons and commas (51 bytes), a score (24 at most) and a null vector.
JSON_ITEM_BYTES = 80


class RestDialect:
    """{"error": {"message", "code", "param"}}, with the error's own status."""

    error_model = m.ErrorResponse

    def error(self, error: ApiError) -> tuple[int, dict[str, Any]]:
        # A bad field is invalid_argument, as gRPC's status names it, wherever it was found;
        # a request the collection or the index cannot take as it is (texts to embed in a
        # collection of outside vectors) is failed_precondition, as on gRPC.
        if error.kind == "failed_precondition":
            code = error.kind
        elif error.status == 400:
            code = "invalid_argument"
        else:
            code = error.kind or "error"
        return error.status, {"error": {"message": error.message, "code": code,
                                        "param": error.param}}  # fmt: skip


def rest_route(tag: str) -> Callable[..., HttpRoute]:
    """A maker of our own REST API's routes, under `tag` in the OpenAPI document: the REST
    dialect, ERRORS unless told, and a key given twice in a body refused."""
    dialect = RestDialect()

    def route(
        method: str, path: str, handler: Any, summary: str, description: str = "", **more: Any
    ) -> HttpRoute:
        more.setdefault("errors", ERRORS)
        return HttpRoute(
            method, path, handler, dialect, summary, description, tag=tag, keys_once=True, **more
        )

    return route


def _info(info: CollectionInfo) -> m.CollectionInfo:
    return m.CollectionInfo.model_construct(
        name=info.name, model=info.model, dim=info.dim, metric=info.metric,
        index=info.index_spec, store_tokens=info.store_tokens, count=info.count,
        created_at=info.created_at, trained=info.trained, training_size=info.training_size,
        ef_search=info.ef_search, nprobe=info.nprobe, tokens=info.tokens,
        bytes_per_token=info.bytes_per_token,
    )  # fmt: skip


def _stored(doc: Document, with_vectors: bool) -> m.StoredDocument:
    vector = doc.vector if with_vectors and doc.vector is not None else None
    return m.StoredDocument.model_construct(
        id=doc.id, text=doc.text, metadata=doc.metadata or {}, vector=vector
    )


def _hit(hit: Hit, with_vectors: bool) -> m.Hit:
    vector = hit.vector if with_vectors else None
    return m.Hit.model_construct(
        id=hit.id, score=hit.score, text=hit.text or "", metadata=hit.metadata or {},
        vector=vector,
    )  # fmt: skip


def json_item_bytes(id_: str, text: str | None, metadata: dict | None, vector: Any) -> int:
    """The bytes one hit or document takes in a JSON reply: at most, its metadata exactly
    (written on its own: usually a few fields, and it can be any JSON)."""
    return (JSON_ITEM_BYTES + json_string_bytes(id_) + json_string_bytes(text or "")
            + len(orjson.dumps(metadata or {})) + json_vector_bytes(vector))  # fmt: skip


def _hit_bytes(hit: Hit, with_vectors: bool) -> int:
    return json_item_bytes(hit.id, hit.text, hit.metadata, hit.vector if with_vectors else None)


def _stored_bytes(doc: Document, with_vectors: bool) -> int:
    vector = doc.vector if with_vectors else None
    return json_item_bytes(doc.id or "", doc.text, doc.metadata, vector)


class CollectionRoutes:
    def __init__(self, ops: CollectionOps) -> None:
        self.ops = ops

    def _within_reply_limit(
        self, sizes: Iterable[int], what: str, fewer: str, param: str, with_vectors: bool
    ) -> None:
        """A reply of these items' `sizes` fits in max_message_bytes, as a gRPC reply must;
        else ReplyTooLarge (413) asking for `fewer` of `param`, or for no vectors."""
        no_vectors = ", or leave the vectors out (with_vectors: false)" if with_vectors else ""
        limit = self.ops.settings.max_message_bytes
        check_json_reply_size(sizes, limit, what, fewer + no_vectors, param)

    def routes(self) -> list[HttpRoute]:
        route = rest_route(TAG)
        one = "/v1/collections/{name}"
        return [
            route("POST", "/v1/collections", self.create, "Create a collection",
                  "Its vectors are the served model's (its dimension); 409 if it exists "
                  "(with exist_ok: if it exists with other settings).",
                  body=m.CreateCollectionRequest, reply=m.CollectionInfo,
                  errors=(400, 408, 409, 413, 415, 422, 429, 503, 504, 507)),
            route("GET", "/v1/collections", self.list, "List the collections",
                  reply=m.CollectionList, errors=(503,)),
            route("GET", one, self.describe, "Describe a collection", reply=m.CollectionInfo,
                  errors=(400, 404, 503)),
            route("DELETE", one, self.drop, "Drop a collection and everything in it",
                  reply=m.Dropped, errors=(400, 404, 503, 507)),
            route("POST", one + "/upsert", self.upsert, "Store documents",
                  "Texts are embedded by the server as passages (as gRPC Upsert does); a "
                  "document with a `vector` is stored with it, not embedded. Durable when the "
                  "reply comes. A body holds at most max_texts_per_request documents, and its "
                  "JSON values (vector numbers included) are bounded: send large loads in "
                  "batches, or over gRPC.",
                  body=m.UpsertRequest, reply=m.UpsertResponse, prioritized=True,
                  errors=WRITE_ERRORS),
            route("POST", one + "/get", self.get, "Get documents by id",
                  body=m.GetRequest, reply=m.GetResponse),
            route("POST", one + "/delete", self.delete, "Delete documents by id or by filter",
                  body=m.DeleteRequest, reply=m.DeleteResponse, errors=WRITE_ERRORS),
            route("POST", one + "/count", self.count, "Count documents (matching a filter)",
                  body=m.CountRequest, reply=m.CountResponse),
            route("POST", one + "/scroll", self.scroll, "Page through documents",
                  "Documents in id order, `limit` a page; pass next_cursor back for the next "
                  "page (null: the end). " + m.ScrollRequest.model_fields["cursor"].description,
                  body=m.ScrollRequest, reply=m.ScrollResponse),
            route("POST", one + "/update_metadata", self.update_metadata,
                  "Change documents' metadata", "Texts and vectors are not touched.",
                  body=m.UpdateMetadataRequest, reply=m.UpdateMetadataResponse,
                  errors=WRITE_ERRORS),
            route("POST", one + "/search", self.search, "Nearest documents",
                  "One query or many (texts embedded as queries, or vectors): a hit list "
                  "per query.",
                  body=m.SearchRequest, reply=m.SearchResponse,
                  prioritized=True),
        ]  # fmt: skip

    # ------------------------------------------------------------ collections

    async def create(self, request: web.Request, body: m.CreateCollectionRequest) -> Any:
        info = await self.ops.create(
            body.name, index=body.index, metric=body.metric, store_tokens=body.store_tokens,
            ef_search=body.ef_search, nprobe=body.nprobe, dim=body.dim, exist_ok=body.exist_ok,
        )  # fmt: skip
        return _info(info)

    async def list(self, request: web.Request, body: None) -> m.CollectionList:
        return m.CollectionList.model_construct(
            collections=[_info(i) for i in await self.ops.list()]
        )

    async def describe(self, request: web.Request, body: None) -> m.CollectionInfo:
        return _info(await self.ops.describe(request.match_info["name"]))

    async def drop(self, request: web.Request, body: None) -> m.Dropped:
        name = request.match_info["name"]
        await self.ops.drop(name)
        return m.Dropped.model_construct(dropped=name)

    # ------------------------------------------------------------ documents

    async def upsert(self, request: web.Request, body: m.UpsertRequest) -> m.UpsertResponse:
        with np.errstate(over="ignore"):  # a number past float32 becomes inf: the index's error
            docs = [NewDocument(d.text, d.id, d.metadata, None if d.vector is None
                                else np.asarray(d.vector, dtype=np.float32))
                    for d in body.documents]  # fmt: skip
        ids = await self.ops.upsert(
            request.match_info["name"], docs, priority=requested_priority.get()
        )
        return m.UpsertResponse.model_construct(upserted=len(ids), ids=ids)

    async def get(self, request: web.Request, body: m.GetRequest) -> BuiltOffLoop:
        # The reply is bounded by max_message_bytes as well as the ids by the ops.
        found = await self.ops.get(request.match_info["name"], body.ids)
        # Built off the loop, as the other large replies: counting megabytes of text holds
        # the GIL.
        return BuiltOffLoop(functools.partial(self._get_reply, body, found))

    def _get_reply(self, body: m.GetRequest, found: list[Document | None]) -> m.GetResponse:
        present = [d for d in found if d is not None]
        missing = [i for i, d in zip(body.ids, found, strict=True) if d is None]
        sizes = itertools.chain((_stored_bytes(d, body.with_vectors) for d in present),
                                (json_string_bytes(i) + 1 for i in missing))  # fmt: skip
        self._within_reply_limit(sizes, "documents", "fewer ids", "ids", body.with_vectors)
        docs = [_stored(d, body.with_vectors) for d in present]
        return m.GetResponse.model_construct(documents=docs, missing=missing)

    async def delete(self, request: web.Request, body: m.DeleteRequest) -> m.DeleteResponse:
        if (body.ids is None) == (body.filter is None):
            raise ApiError(400, "give ids or filter (one of them)", "invalid_argument", "ids")
        deleted = await self.ops.delete(request.match_info["name"], body.ids or (), body.filter)
        return m.DeleteResponse.model_construct(deleted=deleted)

    async def count(self, request: web.Request, body: m.CountRequest) -> m.CountResponse:
        count = await self.ops.count(request.match_info["name"], body.filter)
        return m.CountResponse.model_construct(count=count)

    async def scroll(self, request: web.Request, body: m.ScrollRequest) -> BuiltOffLoop:
        page = await self.ops.scroll(
            request.match_info["name"], body.filter, body.limit, body.cursor or "",
            with_vectors=body.with_vectors,
        )  # fmt: skip
        return BuiltOffLoop(functools.partial(self._scroll_reply, body, page.documents,
                                              page.next_cursor))  # fmt: skip

    def _scroll_reply(
        self, body: m.ScrollRequest, documents: list[Document], next_cursor: str | None
    ) -> m.ScrollResponse:
        sizes = (_stored_bytes(d, body.with_vectors) for d in documents)
        self._within_reply_limit(sizes, "documents", "a smaller page (limit)", "limit",
                                 body.with_vectors)  # fmt: skip
        return m.ScrollResponse.model_construct(
            documents=[_stored(d, body.with_vectors) for d in documents], next_cursor=next_cursor
        )

    async def update_metadata(
        self, request: web.Request, body: m.UpdateMetadataRequest
    ) -> m.UpdateMetadataResponse:
        updated = await self.ops.update_metadata(
            request.match_info["name"], body.ids, body.patch, body.mode
        )
        return m.UpdateMetadataResponse.model_construct(updated=updated)

    async def search(self, request: web.Request, body: m.SearchRequest) -> BuiltOffLoop:
        if (body.query is None) == (body.vector is None):
            raise ApiError(400, "give query (texts) or vector (one of them)", "invalid_argument",
                           "query")  # fmt: skip
        texts = [body.query] if isinstance(body.query, str) else body.query
        vectors = None
        if body.vector is not None:
            if len({len(v) for v in body.vector}) > 1:
                raise ApiError(400, "vector: the query vectors differ in length",
                               "invalid_argument", "vector")  # fmt: skip
            with np.errstate(over="ignore"):
                vectors = np.asarray(body.vector, dtype=np.float32)
        results = await self.ops.search(
            request.match_info["name"], texts=texts, vectors=vectors, k=body.k,
            where=body.filter, ef_search=body.ef_search, nprobe=body.nprobe,
            score_threshold=body.score_threshold, with_vectors=body.with_vectors,
            priority=requested_priority.get(), field="query" if texts is not None else "vector",
        )  # fmt: skip
        return BuiltOffLoop(functools.partial(self._search_reply, body.with_vectors, results))

    def _search_reply(self, with_vectors: bool, results: list[list[Hit]]) -> m.SearchResponse:
        sizes = (_hit_bytes(h, with_vectors) for hits in results for h in hits)
        self._within_reply_limit(sizes, "hits", "fewer hits (a smaller k, or fewer queries)",
                                 "k", with_vectors)  # fmt: skip
        return m.SearchResponse.model_construct(
            results=[[_hit(h, with_vectors) for h in hits] for hits in results]
        )
