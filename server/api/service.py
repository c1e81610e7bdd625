"""The RPCs: each turns a request into engine and index calls, and their answer into a reply.

Text is embedded by the engine (asyncio, batched with every other caller's); index work
(SQLite, FAISS) runs in worker threads so the event loop keeps serving. Errors become gRPC
statuses in one place (`STATUSES`), with the domain error's message.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message

from embedsense.model import TokenizedText
from embedsense.model.spans import SpanError
from embedsense.model.tokenizer import TextTooLongError
from embedsense.proto.metadata import (
    OVERLOADED_TRAILER,
    REPLY_TOO_LARGE_TRAILER,
    RETRY_PUSHBACK_TRAILER,
)
from embedsense.proto.tensors import from_tensor, to_tensor
from embedsense.proto.v1 import embedsense_pb2 as pb
from embedsense.proto.v1 import embedsense_pb2_grpc
from embedsense.server import engine as eng
from embedsense.server import index as idx
from embedsense.server.api.checks import (
    LONG_TEXT,
    POOLINGS,
    BadRequest,
    Limits,
    ReplyTooLarge,
    Undecodable,
    check_reply_size,
    check_text,
    check_texts,
    choice,
    k_of,
    metadata_of,
    neuron_of,
    priority_of,
    role_of,
    span_of,
)
from embedsense.server.api.collection_ops import CollectionOps, NewDocument, Page
from embedsense.server.api.explain_ops import ExplainOps
from embedsense.server.api.observability import Metrics, new_request_id, request_id
from embedsense.server.api.sense_ops import INVENTORIES_FEWER, INVENTORY_FEWER, SenseOps
from embedsense.server.api.settings import ServerSettings
from embedsense.server.batching import Priority
from embedsense.server.engine import Embedding, Engine
from embedsense.server.explain import MAX_ATTENTION_VALUES, Explainer
from embedsense.server.index import Document, IndexBackend
from embedsense.server.index.threads import IndexThreads
from embedsense.server.senses import errors as sense_errors
from embedsense.server.senses.senses import FoundOccurrence, Senses

log = logging.getLogger(__name__)

_Reply = TypeVar("_Reply", bound=Message)
# A token's share of an Embed reply besides its vector: its text (a few bytes), id, offsets
# and their field tags, as serialized (12 bytes a token for e5's Chinese tokens).
TOKEN_REPLY_BYTES = 32


# Most specific first: ModelMismatch is an InvalidArgument, but the request is not at fault.
STATUSES: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (eng.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (eng.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (eng.EngineClosed, grpc.StatusCode.UNAVAILABLE),
    (eng.ModelOutOfMemory, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (eng.ModelFailed, grpc.StatusCode.UNAVAILABLE),
    (eng.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (idx.CollectionNotFound, grpc.StatusCode.NOT_FOUND),
    (idx.CollectionExists, grpc.StatusCode.ALREADY_EXISTS),
    (idx.ModelMismatch, grpc.StatusCode.FAILED_PRECONDITION),
    (idx.IndexOutOfStep, grpc.StatusCode.ABORTED),  # nothing stored; a retry can succeed
    (idx.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (idx.IndexUnavailable, grpc.StatusCode.UNAVAILABLE),
    (idx.StorageFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (idx.IndexUnsupported, grpc.StatusCode.FAILED_PRECONDITION),  # IndexFailed: INTERNAL
    (BadRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (ReplyTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (sense_errors.SenseInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (sense_errors.NoTokenVectors, grpc.StatusCode.FAILED_PRECONDITION),
    (sense_errors.InventoryNotFound, grpc.StatusCode.NOT_FOUND),
    (sense_errors.InventoryExists, grpc.StatusCode.ALREADY_EXISTS),
    (sense_errors.Abandoned, grpc.StatusCode.CANCELLED),  # its caller is gone: for the log
    # The model's own input errors, wherever a handler lets one through.
    (TextTooLongError, grpc.StatusCode.INVALID_ARGUMENT),
    (SpanError, grpc.StatusCode.INVALID_ARGUMENT),
]


# The most bytes of an error's message a status carries, as gRPC sends it: in a header,
# percent-encoded (3 bytes a byte past ASCII). Past a client's limit on headers (8 KiB by
# default) the caller gets RESOURCE_EXHAUSTED instead of the error, and a message that
# repeats a 20,000-character word is no one-line error anyway.
MAX_DETAILS_BYTES = 4096


def status_details(message: str) -> str:
    """`message`, cut where it would pass MAX_DETAILS_BYTES, saying so."""
    sent = 0
    for i, char in enumerate(message):
        sent += 1 if " " <= char <= "~" and char != "%" else 3 * len(char.encode(errors="replace"))
        if sent > MAX_DETAILS_BYTES - 64:  # room for the note that says it was cut
            return f"{message[:i]}… (cut: {len(message):,} characters)"
    return message


def status_for(error: BaseException) -> grpc.StatusCode | None:
    return next((code for kind, code in STATUSES if isinstance(error, kind)), None)


def rpc(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Around every RPC: a request id (the caller's x-request-id, or a new one; sent back in
    the trailers and put on every log line), metrics and an access log line, and domain
    errors mapped to statuses. Anything unexpected is INTERNAL, logged with its trace."""

    @functools.wraps(method)
    async def handle(self: Service, request: Any, context: grpc.aio.ServicerContext) -> Any:
        rid = new_request_id(context.invocation_metadata())
        token = request_id.set(rid)
        trailers = (("x-request-id", rid),)
        context.set_trailing_metadata(trailers)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if isinstance(request, Undecodable):  # interceptors.DecodeGuard
                raise BadRequest(request.message)
            return await method(self, request, context)
        except asyncio.CancelledError:
            # gRPC cancels the handler both when the caller hangs up and at its deadline.
            left = context.time_remaining()
            expired = left is not None and left <= 0
            code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as err:  # noqa: BLE001 - every error gets a status, never a crash
            code = status_for(err) or grpc.StatusCode.INTERNAL
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method.__name__)
                await context.abort(code, status_details(f"{type(err).__name__}: {err}"), trailers)
            if isinstance(err, eng.Overloaded):  # "not now": the client may retry
                trailers += ((OVERLOADED_TRAILER, "1"),)
            if isinstance(err, ReplyTooLarge):  # "not so much": the client may ask for less
                trailers += ((REPLY_TOO_LARGE_TRAILER, "1"),)
            if code is grpc.StatusCode.UNAVAILABLE:
                # Not again at once: gRPC's own retries (the SDK's channel retries
                # UNAVAILABLE for a server it cannot reach) would send it straight back to
                # what just failed, each time for as long, and the caller would see only
                # its deadline pass. The SDK's retries, with backoff, still apply.
                trailers += ((RETRY_PUSHBACK_TRAILER, "-1"),)
            await context.abort(code, status_details(str(err)), trailers)
        finally:
            self.metrics.observe_request(method.__name__, code.name, time.perf_counter() - started)
            request_id.reset(token)

    return handle


def server_version() -> str:
    try:
        return version("embedsense")
    except PackageNotFoundError:
        return "unknown"


def _tokens_reply(t: TokenizedText) -> pb.TokenizeResponse:
    return pb.TokenizeResponse(
        tokens=t.tokens, ids=t.ids, starts=[s for s, _ in t.offsets],
        ends=[e for _, e in t.offsets], from_text=t.from_text,
    )  # fmt: skip


class Service(embedsense_pb2_grpc.EmbedSenseServicer):
    def __init__(
        self,
        engine: Engine,
        catalog: IndexBackend,
        settings: ServerSettings,
        metrics: Metrics,
        explainer: Explainer | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.catalog = catalog
        self.index_threads = IndexThreads()  # index calls, apart from other work
        # The collection operations, shared with HTTP REST.
        self.ops = CollectionOps(engine, catalog, settings, self.index_threads)
        self.senses = Senses(engine, catalog, self.index_threads)
        self.sense_ops = SenseOps(self.senses, self.ops, settings)  # shared with HTTP too
        # Explain and CompareLayers, shared with HTTP's explanation routes.
        self.explain_ops = ExplainOps(explainer or Explainer(engine.model, engine.runner), settings)
        self._streams = 0  # Upsert streams open now (one event loop: no lock needed)
        self.settings = settings
        self.model_name = engine.model.spec.name
        self.replica = settings.replica or ""  # the app names it once it has a port

    # ------------------------------------------------------------ helpers

    def _texts(self, texts: Any, field: str = "texts") -> list[str]:
        return check_texts(list(texts), field, Limits.of(self.settings))

    def _text(self, text: str, field: str = "text") -> str:
        return check_text(text, field, self.settings.max_text_chars)

    async def _embed(
        self, texts: list[str], context: grpc.aio.ServicerContext, **options: Any
    ) -> list[Embedding]:
        remaining = context.time_remaining()
        return await self.engine.embed(texts, timeout=remaining, **options)

    async def _collection(self, name: str) -> idx.CollectionBackend:
        return await self.ops.collection(name)

    # ------------------------------------------------------------ model

    @rpc
    async def Info(self, request: pb.InfoRequest, context: Any) -> pb.InfoResponse:
        info, s = self.engine.info(), self.settings
        return pb.InfoResponse(
            version=server_version(), model=info.model, dim=info.dim, device=info.device,
            dtype=info.dtype, max_tokens=info.max_tokens,
            num_layers=info.num_layers,
            max_batch_tokens=info.max_batch_tokens, max_queued_tokens=info.max_queued_tokens,
            max_concurrent_requests=info.max_concurrent_requests,
            max_texts_per_request=s.max_texts_per_request,
            max_message_bytes=s.max_message_bytes, auth_required=s.auth_required,
            index_backend=self.catalog.kind, replica=self.replica,
            dtype_reason=info.dtype_reason, max_text_chars=s.max_text_chars,
        )  # fmt: skip

    @rpc
    async def Tokenize(self, request: pb.TokenizeRequest, context: Any) -> pb.TokenizeResponse:
        role = role_of(request.role)
        # Any length: telling a caller how long a text is must not fail for a long one.
        text = self._text(request.text)
        # Off the event loop, grouped with concurrent callers' (the engine's tokenize()).
        (t,) = await self.engine.tokenize([text], role)
        return _tokens_reply(t)

    @rpc
    async def Embed(self, request: pb.EmbedRequest, context: Any) -> pb.EmbedResponse:
        texts = self._texts(request.texts)
        want_sentences = request.sentence_vectors or not request.token_vectors
        long_text = choice(LONG_TEXT, request.long_text, "long_text")
        # Token vectors come back whole: refuse, before the work, what no reply could hold
        # (a token: its vector, and its text, id and offsets).
        per_token = 4 * self.engine.info().dim + TOKEN_REPLY_BYTES
        replied = self.settings.max_message_bytes // per_token
        results = await self._embed(
            texts, context,
            role=role_of(request.role),
            layers=list(request.layers) or None,
            token_vectors=request.token_vectors,
            normalize=not request.no_normalize,
            pooling=choice(POOLINGS, request.pooling, "pooling"),
            truncate=long_text == "truncate",
            windowed=long_text == "windows",
            priority=priority_of(request.priority),
            max_tokens=replied if request.token_vectors else None,
        )  # fmt: skip
        reply = pb.EmbedResponse()
        if want_sentences:
            reply.sentence_vectors.CopyFrom(to_tensor(np.stack([r.sentence for r in results])))
        if request.token_vectors:
            reply.token_vectors.extend(
                pb.TokenVectors(
                    tokens=_tokens_reply(r.tokenized),
                    vectors=to_tensor(r.token_vectors),
                    windows=r.windows,
                    truncated_tokens=r.tokenized.truncated_tokens,
                )  # fmt: skip
                for r in results
            )
            # The estimate above leaves room for the usual; a token's text can be longer.
            check_reply_size(reply, self.settings.max_message_bytes,
                             "fewer or shorter texts", "each token carries its vector")  # fmt: skip
        return reply

    # ------------------------------------------------------------ collections

    @staticmethod
    def _collection_reply(info: idx.CollectionInfo) -> pb.CollectionInfo:
        return pb.CollectionInfo(
            name=info.name, model=info.model, dim=info.dim, metric=info.metric,
            index=info.index_spec, store_tokens=info.store_tokens, count=info.count,
            created_at=info.created_at, trained=info.trained,
            training_size=info.training_size, ef_search=info.ef_search, nprobe=info.nprobe,
            tokens=info.tokens, bytes_per_token=info.bytes_per_token,
        )  # fmt: skip

    @rpc
    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: Any
    ) -> pb.CollectionInfo:
        info = await self.ops.create(
            request.name, index=request.index, metric=request.metric,
            store_tokens=request.store_tokens, ef_search=request.ef_search,
            nprobe=request.nprobe, dim=request.dim, exist_ok=request.exist_ok,
        )  # fmt: skip
        return self._collection_reply(info)

    @rpc
    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: Any
    ) -> pb.ListCollectionsResponse:
        infos = await self.ops.list()
        return pb.ListCollectionsResponse(collections=[self._collection_reply(i) for i in infos])

    @rpc
    async def DescribeCollection(
        self, request: pb.CollectionRef, context: Any
    ) -> pb.CollectionInfo:
        return self._collection_reply(await self.ops.describe(request.name))

    @rpc
    async def DropCollection(
        self, request: pb.CollectionRef, context: Any
    ) -> pb.DropCollectionResponse:
        await self.ops.drop(request.name)
        return pb.DropCollectionResponse()

    # ------------------------------------------------------------ documents

    @staticmethod
    def _new_documents(batch: Any) -> list[NewDocument]:
        """The messages' documents for the shared upsert (collection_ops.py)."""
        docs = []
        for i, d in enumerate(batch):
            vector = None
            if d.HasField("vector"):
                try:
                    vector = from_tensor(d.vector)
                except ValueError as err:
                    raise BadRequest(f"documents[{i}].vector: {err}") from None
            metadata = metadata_of(d.metadata_json, f"documents[{i}].metadata_json")
            docs.append(NewDocument(d.text, d.id or None, metadata, vector))
        return docs

    @rpc
    async def Upsert(
        self, requests: AsyncIterator[pb.UpsertRequest], context: Any
    ) -> pb.UpsertResponse:
        if self._streams >= self.settings.max_concurrent_streams:
            raise eng.Overloaded(
                f"{self._streams} upsert streams are open; the limit is "
                f"{self.settings.max_concurrent_streams} (max_concurrent_streams): retry later"
            )
        self._streams += 1
        try:
            return await self._upsert(requests, context)
        finally:
            self._streams -= 1

    async def _upsert(
        self, requests: AsyncIterator[pb.UpsertRequest], context: Any
    ) -> pb.UpsertResponse:
        ids: list[str] = []
        try:
            await self._store_stream(requests, context, ids)
        except Exception as err:
            if ids:  # say what is already stored, whatever refused the rest: never guess
                err.args = (f"{err} ({len(ids)} documents sent before it were stored)",)
            raise
        return pb.UpsertResponse(upserted=len(ids), ids=ids)

    async def _store_stream(
        self, requests: AsyncIterator[pb.UpsertRequest], context: Any, ids: list[str]
    ) -> None:
        """Store each message's documents as it comes, appending their ids to `ids`."""
        name = ""
        async for request in requests:
            if request.collection and name and request.collection != name:
                raise BadRequest(
                    f"collection: one upsert stream writes one collection ({name!r}), "
                    f"got {request.collection!r}"
                )
            name = name or request.collection
            collection = await self._collection(name)
            if not request.documents:
                continue
            if len(request.documents) > self.settings.max_texts_per_request:
                raise BadRequest(
                    f"documents: {len(request.documents)} in one message; the limit is "
                    f"{self.settings.max_texts_per_request}: send smaller batches"
                )
            level = priority_of(request.priority, Priority.BULK)
            ids += await self.ops.store(
                collection, self._new_documents(request.documents), priority=level,
                timeout=context.time_remaining(),
            )  # fmt: skip

    @staticmethod
    def _stored(doc: Document, with_vectors: bool) -> pb.StoredDocument:
        stored = pb.StoredDocument(
            id=doc.id, text=doc.text, metadata_json=json.dumps(doc.metadata, ensure_ascii=False)
        )
        if with_vectors and doc.vector is not None:
            stored.vector.CopyFrom(to_tensor(doc.vector))
        return stored

    @rpc
    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        docs = await self.ops.get(request.collection, list(request.ids))
        reply = pb.GetResponse()
        for doc_id, doc in zip(request.ids, docs, strict=True):
            if doc is None:
                reply.missing.append(doc_id)
            else:
                reply.documents.append(self._stored(doc, request.with_vectors))
        return self._within_limit(reply, "fewer ids", request.with_vectors)

    @rpc
    async def Delete(self, request: pb.DeleteRequest, context: Any) -> pb.DeleteResponse:
        where = _filter(request.filter_json) if request.filter_json else None
        if where is None and not request.ids:  # proto3 sends no ids and ids=[] alike
            raise BadRequest("give ids or filter_json (one of them); no ids deletes nothing")
        deleted = await self.ops.delete(request.collection, list(request.ids), where)
        return pb.DeleteResponse(deleted=deleted)

    @rpc
    async def Count(self, request: pb.CountRequest, context: Any) -> pb.CountResponse:
        count = await self.ops.count(request.collection, _filter(request.filter_json))
        return pb.CountResponse(count=count)

    @rpc
    async def Scroll(self, request: pb.ScrollRequest, context: Any) -> pb.ScrollResponse:
        page: Page = await self.ops.scroll(
            request.collection, _filter(request.filter_json), request.limit, request.cursor,
            with_vectors=request.with_vectors,
        )  # fmt: skip
        reply = pb.ScrollResponse(
            documents=[self._stored(d, request.with_vectors) for d in page.documents],
            next_cursor=page.next_cursor or "",
        )
        return self._within_limit(reply, "a smaller page (limit)", request.with_vectors)

    @rpc
    async def UpdateMetadata(
        self, request: pb.UpdateMetadataRequest, context: Any
    ) -> pb.UpdateMetadataResponse:
        mode = choice(METADATA_MODES, request.mode, "mode")
        patch = metadata_of(request.patch_json, "patch_json")
        updated = await self.ops.update_metadata(request.collection, list(request.ids), patch, mode)
        return pb.UpdateMetadataResponse(updated=updated)

    async def _search(
        self, request: Any, context: Any, texts: list[str] | None, vectors: Any,
        vectors_field: str = "vectors",
    ) -> list[list[idx.Hit]]:  # fmt: skip
        """What Search and SearchBatch share: their options, one call of the shared search."""
        threshold = request.score_threshold if request.HasField("score_threshold") else None
        return await self.ops.search(
            request.collection, texts=texts, vectors=vectors, k=k_of(request),
            where=_filter(request.filter_json), ef_search=request.ef_search,
            nprobe=request.nprobe, score_threshold=threshold,
            with_vectors=request.with_vectors, priority=priority_of(request.priority),
            timeout=context.time_remaining(),
            field="texts" if texts is not None else vectors_field,
        )  # fmt: skip

    @rpc
    async def Search(self, request: pb.SearchRequest, context: Any) -> pb.SearchResponse:
        which = request.WhichOneof("query")
        if which == "text":
            hits = await self._search(request, context, [self._text(request.text)], None)
        elif which == "vector":
            vector = _tensor(request.vector, "vector")
            if vector.ndim > 1 and len(vector) != 1:
                raise BadRequest(
                    f"vector: one (dim,) vector, got shape {vector.shape}: SearchBatch takes "
                    "several"
                )
            hits = await self._search(request, context, None, vector, "vector")
        else:
            raise BadRequest("query: give a text or a vector")
        reply = pb.SearchResponse(hits=_hits_reply(hits[0], request.with_vectors))
        return self._within_limit(reply, "fewer hits (k)", request.with_vectors)

    @rpc
    async def SearchBatch(
        self, request: pb.SearchBatchRequest, context: Any
    ) -> pb.SearchBatchResponse:
        if request.texts and request.HasField("vectors"):
            raise BadRequest("texts and vectors: give one of them, not both")
        if request.HasField("vectors"):
            results = await self._search(
                request, context, None, _tensor(request.vectors, "vectors")
            )
        else:
            results = await self._search(request, context, list(request.texts), None)
        reply = pb.SearchBatchResponse(
            results=[pb.HitList(hits=_hits_reply(hits, request.with_vectors)) for hits in results]
        )
        return self._within_limit(reply, "fewer hits (k, or fewer queries)", request.with_vectors)

    def _within_limit(self, reply: _Reply, fewer: str, with_vectors: bool) -> _Reply:
        """A reply of documents or hits within max_message_bytes, else ReplyTooLarge saying
        what to ask less of (each carries its document's whole text and metadata, and maybe
        its vector)."""
        if with_vectors:
            fewer += ", or leave the vectors out (with_vectors false)"
        return check_reply_size(reply, self.settings.max_message_bytes, fewer,
                                "each carries its document's whole text and metadata")  # fmt: skip

    # ------------------------------------------------------------ senses

    @rpc
    async def Disambiguate(
        self, request: pb.DisambiguateRequest, context: Any
    ) -> pb.DisambiguateResponse:
        result = await self.sense_ops.disambiguate(
            request.text, request.word, span=span_of(request), occurrence=request.occurrence,
            senses={label: list(s.examples) for label, s in request.senses.items()} or None,
            inventory=request.inventory or None, layers=list(request.layers) or None,
            centre=not request.no_centring, with_sentence=not request.word_only,
            priority=priority_of(request.priority),
        )  # fmt: skip
        return pb.DisambiguateResponse(
            label=result.label,
            scores=[pb.SenseScore(label=label, probability=result.probabilities[label],
                                  similarity=result.similarities[label])
                    for label in result.best_first()],
            nearest=[pb.SenseExample(label=label, text=text, similarity=cos)
                     for label, text, cos in result.nearest],
            span=pb.Span(start=result.occurrence.start, end=result.occurrence.end),
            layers=result.layers, centred=result.centred, temperature=result.temperature,
            with_sentence=result.with_sentence,
        )  # fmt: skip

    @staticmethod
    def _inventory_reply(name: str, words: dict, builtin: bool) -> pb.InventoryInfo:
        return pb.InventoryInfo(
            name=name, builtin=builtin,
            words={word: pb.WordSenses(senses={label: pb.SenseExamples(examples=examples)
                                               for label, examples in senses.items()})
                   for word, senses in words.items()},
        )  # fmt: skip

    @rpc
    async def CreateInventory(
        self, request: pb.CreateInventoryRequest, context: Any
    ) -> pb.InventoryInfo:
        words = {word: {label: list(s.examples) for label, s in entry.senses.items()}
                 for word, entry in request.words.items()}  # fmt: skip
        stored = await self.sense_ops.create_inventory(request.name, words, request.replace)
        return self._inventory_reply(request.name, stored, False)

    @rpc
    async def ListInventories(
        self, request: pb.ListInventoriesRequest, context: Any
    ) -> pb.ListInventoriesResponse:
        listed = await self.sense_ops.inventories()
        reply = pb.ListInventoriesResponse(
            inventories=[self._inventory_reply(*entry) for entry in listed]
        )
        return check_reply_size(reply, self.settings.max_message_bytes, INVENTORIES_FEWER,
                                "each inventory carries every example")  # fmt: skip

    @rpc
    async def GetInventory(self, request: pb.InventoryRef, context: Any) -> pb.InventoryInfo:
        reply = self._inventory_reply(*await self.sense_ops.inventory(request.name))
        return check_reply_size(reply, self.settings.max_message_bytes, INVENTORY_FEWER,
                                "the inventory carries every example")  # fmt: skip

    @rpc
    async def DeleteInventory(
        self, request: pb.InventoryRef, context: Any
    ) -> pb.DeleteInventoryResponse:
        await self.sense_ops.delete_inventory(request.name)
        return pb.DeleteInventoryResponse()

    @rpc
    async def SearchOccurrences(
        self, request: pb.SearchOccurrencesRequest, context: Any
    ) -> pb.SearchOccurrencesResponse:
        found, compared = await self.sense_ops.search_occurrences(
            request.collection, request.text, request.word, span=span_of(request),
            occurrence=request.occurrence, k=k_of(request),
            priority=priority_of(request.priority),
        )  # fmt: skip
        reply = pb.SearchOccurrencesResponse(
            occurrences=[_occurrence_reply(o) for o in found], compared=compared
        )
        return check_reply_size(reply, self.settings.max_message_bytes, "fewer occurrences (k)",
                                "each occurrence carries its document's whole text")  # fmt: skip

    @rpc
    async def InduceSenses(
        self, request: pb.InduceSensesRequest, context: Any
    ) -> pb.InduceSensesResponse:
        induced = await self.sense_ops.induce_senses(
            request.collection, request.word, k=request.k or None,
            max_k=request.max_k or None, central=request.central or 3,
        )  # fmt: skip
        reply = pb.InduceSensesResponse(
            senses=[pb.InducedSense(size=s.size, central=[_occurrence_reply(o) for o in s.central])
                    for s in induced.senses],
            occurrences=induced.occurrences, silhouette=induced.silhouette,
        )  # fmt: skip
        return check_reply_size(reply, self.settings.max_message_bytes,
                                "fewer central occurrences",
                                "each occurrence carries its document's whole text")  # fmt: skip

    # ------------------------------------------------------------ explain

    @rpc
    async def Explain(self, request: pb.ExplainRequest, context: Any) -> pb.ExplainResponse:
        result = await self.explain_ops.explain(
            request.text, request.word, span=span_of(request), occurrence=request.occurrence,
            layers=request.layers, heads=request.heads, role=role_of(request.role),
            truncate=request.truncate, neuron=neuron_of(request),
            timeout=context.time_remaining(),
        )  # fmt: skip
        reply = pb.ExplainResponse(
            tokens=_tokens_reply(result.tokenized), layers=result.layers, heads=result.heads,
            attentions=to_tensor(result.attentions), target_tokens=result.target_tokens,
            focus=[pb.Focus(layer=f.layer, head=-1 if f.head is None else f.head,
                            tokens=[pb.TokenWeight(token=i, weight=w) for i, w in f.tokens])
                   for f in result.focus],
            max_attention_values=MAX_ATTENTION_VALUES,
            truncated_tokens=result.tokenized.truncated_tokens,
        )  # fmt: skip
        if result.target is not None:
            reply.span.CopyFrom(pb.Span(start=result.target.start, end=result.target.end))
        if result.neuron is not None:
            n = result.neuron
            reply.neuron.CopyFrom(pb.Neuron(layer=n.layer, head=n.head,
                                            query_tokens=n.query_tokens,
                                            queries=to_tensor(n.queries),
                                            keys=to_tensor(n.keys)))  # fmt: skip
        return reply

    @rpc
    async def CompareLayers(
        self, request: pb.CompareLayersRequest, context: Any
    ) -> pb.CompareLayersResponse:
        cosines, a, b = await self.explain_ops.compare_layers(
            request.text_a, request.text_b, request.word, request.occurrence_a,
            request.occurrence_b, span_a=span_of(request, "span_a"),
            span_b=span_of(request, "span_b"), role=role_of(request.role),
            truncate=request.truncate, timeout=context.time_remaining(),
        )  # fmt: skip
        return pb.CompareLayersResponse(
            cosines=cosines, span_a=pb.Span(start=a.start, end=a.end),
            span_b=pb.Span(start=b.start, end=b.end),
        )  # fmt: skip


METADATA_MODES = {pb.METADATA_MERGE: "merge", pb.METADATA_REPLACE: "replace"}


def _filter(text: str) -> dict[str, Any] | None:
    """A filter_json field: None when empty (no filter)."""
    return metadata_of(text, "filter_json") if text else None


def _tensor(tensor: pb.Tensor, field: str) -> np.ndarray:
    try:
        return from_tensor(tensor)
    except ValueError as err:
        raise BadRequest(f"{field}: {err}") from None


def _hits_reply(hits: list[idx.Hit], with_vectors: bool) -> list[pb.Hit]:
    replies = []
    for h in hits:
        hit = pb.Hit(id=h.id, score=h.score, text=h.text or "",
                     metadata_json=json.dumps(h.metadata, ensure_ascii=False))  # fmt: skip
        if with_vectors and h.vector is not None:
            hit.vector.CopyFrom(to_tensor(h.vector))
        replies.append(hit)
    return replies


def _occurrence_reply(o: FoundOccurrence) -> pb.Occurrence:
    return pb.Occurrence(
        id=o.id, text=o.text, span=pb.Span(start=o.start, end=o.end), score=o.score,
        metadata_json=json.dumps(o.metadata, ensure_ascii=False),
    )  # fmt: skip
