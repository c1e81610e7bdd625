"""The asyncio client: the same methods as `Client`, as typed coroutines.

async with AsyncClient("127.0.0.1:50051") as c:
    hits = await c.search("news", "苹果发布了新手机", k=5)
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import numpy as np
from tqdm import tqdm

from embedsense.client import _api as api
from embedsense.client import bulk
from embedsense.client._api import TLS, Call, Retry
from embedsense.client.errors import ResourceExhausted, closed_while_running, reported, retryable
from embedsense.client.types import (
    CollectionInfo,
    Disambiguation,
    Explanation,
    Hit,
    Induction,
    Info,
    Inventory,
    LayerComparison,
    Occurrences,
    SearchQuery,
    StoredDocument,
    TokenEmbeddings,
    Tokens,
)
from embedsense.proto.v1 import embedsense_pb2_grpc

T = TypeVar("T")
CLOSE_ELSEWHERE_S = 10.0  # how long close() waits for another event loop to close its channel


def _task_cancelled() -> bool:
    """Whether the running task was cancelled (task.cancel()), not only its gRPC call."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class AsyncClient:
    def __init__(
        self,
        target: str | Sequence[str] = "127.0.0.1:50051",
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retry: Retry | None = None,
        channel: grpc.aio.Channel | None = None,
        tls: TLS | bool | None = None,
        max_concurrent_batches: int = 4,
    ) -> None:
        """As `Client`: the same settings, in the same order; `channel` is a grpc.aio one."""
        self.max_concurrent_batches = bulk.at_least_one(
            "max_concurrent_batches", max_concurrent_batches
        )
        # A grpc.aio channel belongs to the event loop it is made in, and a client may be
        # made before one runs (at import, in an app's __init__), then used in one loop after
        # another (asyncio.run twice, a test framework's loop per test) or in two at once: it
        # opens a channel of its own in each loop at its first call there. A wrong target or
        # TLS file is refused now, all the same, and names are resolved now: not in the event
        # loop at the first call.
        resolved, tls = api.grpc_target(target), api.loaded_tls(tls)
        self._given = channel  # the caller's, in the caller's loop: used as it is
        self._open = functools.partial(api.open_channel, resolved, tls, aio=True)
        self._closed = False
        self._given_stub: embedsense_pb2_grpc.EmbedSenseStub | None = None
        self._per_loop: dict[
            asyncio.AbstractEventLoop, tuple[grpc.aio.Channel, embedsense_pb2_grpc.EmbedSenseStub]
        ] = {}
        self._per_loop_lock = threading.Lock()
        self._metadata = api.auth_metadata(api_key)
        self.timeout = timeout
        self.retry = retry or Retry()
        self._limits: Info | None = None  # the server's limits, asked once

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel: the caller's, or the client's own: this event loop's, and each
        one of a loop still running elsewhere, in its loop. Those of loops that have ended
        end with them; one of a loop that exists but is not running is let go unclosed (it
        could be closed only in that loop)."""
        self._closed = True
        if self._given is not None:
            await self._given.close()
        with self._per_loop_lock:
            own, self._per_loop = self._per_loop, {}
        here, elsewhere = asyncio.get_running_loop(), []
        for loop, (channel, _) in own.items():
            if loop is here:
                await channel.close()
            elif loop.is_running():
                closing = channel.close()
                try:
                    elsewhere.append(
                        asyncio.wrap_future(asyncio.run_coroutine_threadsafe(closing, loop))
                    )
                except RuntimeError:  # that loop was closed meanwhile: its channel with it
                    closing.close()  # never to run: not warned of as never awaited
        if elsewhere:
            # A loop stuck, stopped or ending meanwhile (its close never runs, or is cancelled)
            # is not ours to wait on longer, nor its error ours to raise.
            done, pending = await asyncio.wait(elsewhere, timeout=CLOSE_ELSEWHERE_S)
            for future in pending:
                future.cancel()
            for future in done:
                if not future.cancelled():
                    future.exception()  # seen: not logged as never retrieved

    @property
    def _stub(self) -> embedsense_pb2_grpc.EmbedSenseStub:
        if self._closed:  # grpc's own error said less (or a new channel was opened)
            raise RuntimeError("this AsyncClient is closed: make a new one")
        if self._given is not None:
            if self._given_stub is None:
                self._given_stub = embedsense_pb2_grpc.EmbedSenseStub(self._given)
            return self._given_stub
        loop = asyncio.get_running_loop()
        with self._per_loop_lock:  # loops in other threads may use the client at once
            if self._closed:  # closed by another loop since the check above: no new channel
                raise RuntimeError("this AsyncClient is closed: make a new one")
            if loop not in self._per_loop:
                for ended in [other for other in self._per_loop if other.is_closed()]:
                    del self._per_loop[ended]  # its channel cannot be used, nor closed, any more
                channel = self._open()
                self._per_loop[loop] = (channel, embedsense_pb2_grpc.EmbedSenseStub(channel))
            return self._per_loop[loop][1]

    async def _call(self, call: Call[T]) -> T:
        return await self._send(call, self.timeout)

    async def _send(self, call: Call[T], timeout: float | None) -> T:
        """The call, retried with backoff while the server says "not now"."""
        method = getattr(self._stub, call.rpc)
        attempts = self.retry.attempts_for(call)
        deadline = api.Deadline(timeout)  # the call's, its retries included
        earlier: grpc.RpcError | None = None  # the last attempt's error, when retried
        for attempt in range(attempts):
            try:
                response = await method(
                    call.message(), timeout=deadline.left(), metadata=self._metadata
                )
                return call.parse(response)
            except asyncio.CancelledError:
                # grpc.aio cancels the calls of a channel it closes: a task no one cancelled
                # is told the client was closed, one its owner cancelled stays cancelled.
                if self._closed and not _task_cancelled():
                    raise closed_while_running("AsyncClient") from None
                raise
            except grpc.aio.AioRpcError as err:
                delay = self.retry.delay(attempt)
                if not retryable(err) or attempt == attempts - 1 or not deadline.allows(delay):
                    raise reported(err, earlier) from None
                earlier = err
                await asyncio.sleep(delay)
                if self._closed:  # while it waited to try again
                    raise closed_while_running("AsyncClient") from None
        raise AssertionError("unreachable")

    async def _run(
        self, plan: bulk.Plan, send: Callable[[Any], Awaitable[Any]], cancel_in_flight: bool
    ) -> None:
        """Every batch of `plan`, as tasks, as the plan allows; on the first failure no more
        are sent, and those in flight are cancelled if `cancel_in_flight`, else waited for.
        The answers and the failure are in the plan."""
        running: dict[asyncio.Task[Any], bulk.Batch] = {}
        try:
            while True:
                while (batch := plan.next()) is not None:
                    running[asyncio.ensure_future(send(batch.request))] = batch
                if not running:
                    return
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    batch = running.pop(task)
                    if task.cancelled():
                        plan.failed(batch, asyncio.CancelledError())
                    elif (error := task.exception()) is None:
                        plan.done(batch, task.result())
                    else:
                        plan.failed(batch, error)
                if plan.error is not None and cancel_in_flight:
                    for task in running:
                        task.cancel()
        finally:
            # Cancelled from outside: no task of this call outlives it.
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def _batch_size(self, asked: int, total: int | None) -> int:
        """`asked` (at least 1), within the server's texts-per-request limit (as `Client`)."""
        bulk.at_least_one("batch_size", asked)
        if not bulk.needs_server_limit(asked, total):
            return asked
        return bulk.within_limit(asked, (await self._server_limits()).max_texts_per_request)

    async def _server_limits(self) -> Info:
        if self._limits is None:
            self._limits = await self.info()
        return self._limits

    async def _id_batches(self, ids: Sequence[str | int], unique: bool = False) -> list[list[str]]:
        """As `Client._id_batches`."""
        listed = api.id_list(ids, unique)
        limit = (await self._server_limits()).max_texts_per_request if len(listed) > 1 else 1
        return bulk.id_batches(listed, limit)

    async def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        normalize_embeddings: bool = True,
        show_progress_bar: bool = False,
        *,
        role: str | None = None,
        long_text: str = "error",
        priority: str | None = None,
    ) -> np.ndarray:
        """Sentence vectors, float32, up to `max_concurrent_batches` requests in flight: a
        str gives one vector (dim,), a list a matrix (len(texts), dim), [] an empty (0, dim).
        long_text, priority, failures and the progress bar: as `Client.encode`."""
        api.check_embed_options(role, long_text, priority)
        batch, single = api.as_texts(texts)
        if not batch:
            return np.zeros((0, (await self.info()).dim), np.float32)
        size = await self._batch_size(batch_size, len(batch))
        with tqdm(total=len(batch), disable=not show_progress_bar, unit="text") as bar:
            plan = bulk.encode_plan(
                batch, size, self.max_concurrent_batches,
                lambda chunk: api.embed_request(
                    chunk, normalize_embeddings, role, long_text, priority
                ),
                bar.update,
            )  # fmt: skip
            await self._run(plan, self._send_embed, cancel_in_flight=True)
        vectors = bulk.joined_vectors(plan)
        return vectors[0] if single else vectors

    async def _send_embed(self, request: Any) -> np.ndarray:
        return await self._send(Call("Embed", request, api.parse_sentences), self.timeout)

    async def upsert(
        self,
        name: str,
        documents: Iterable[str | Mapping[str, Any]],
        batch_size: int = 256,
        show_progress_bar: bool = False,
        *,
        timeout: float | None = None,
        priority: str | None = None,
        vectors: np.ndarray | None = None,
    ) -> list[str]:
        """Store documents in a collection; their ids, one per document in order, once all
        are durably stored. Ids made from the content for documents without one, the last
        write of an id winning, batches, retries, priority, caller vectors (`vectors`, or a
        document's "vector"), and the error that says what was stored (`stored_ids`,
        `document_ids`): as `Client.upsert`."""
        level = api.priority(priority)  # a wrong name fails here, before any request
        source = bulk.documents_source(api.with_vectors_documents(documents, vectors))
        total = len(source) if isinstance(source, list) else None
        size = await self._batch_size(batch_size, total)
        if source:  # the server's limit asked after every check here, and for something
            source = bulk.within_text_limit(source, (await self._server_limits()).max_text_chars)
        with tqdm(total=total, disable=not show_progress_bar, unit="doc") as bar:
            plan = bulk.upsert_plan(
                name, source, size, self.max_concurrent_batches, bar.update, level
            )
            await self._run(
                plan,
                lambda request: self._send(api.upsert_call(request), timeout),
                cancel_in_flight=False,
            )
        return bulk.upserted_ids(plan)

    async def info(self) -> Info:
        """The server's model, device, dtype and limits."""
        return await self._call(api.info_call())

    async def tokenize(self, text: str, role_name: str | None = None) -> Tokens:
        """The model's tokens of `text`, with character offsets into it."""
        return await self._call(api.tokenize_call(text, role_name))

    async def embed_tokens(
        self,
        texts: str | Sequence[str],
        layers: Sequence[int] | None = None,
        *,
        role_name: str | None = None,
        long_text: str = "error",
        priority: str | None = None,
    ) -> TokenEmbeddings | list[TokenEmbeddings]:
        """Per-token vectors: the last layer, or the mean of `layers`. A str gives one
        TokenEmbeddings, a list of texts a list of them (`[]` gives `[]`). priority: as
        `Client.encode`'s."""
        batch, single = api.as_texts(texts)
        if not batch:
            return []
        call = api.embed_tokens_call(batch, layers, role_name, long_text, priority)
        results = await self._call(call)
        return results[0] if single else results

    async def create_collection(
        self,
        name: str,
        index: str = "Flat",
        store_tokens: bool = False,
        *,
        metric: str = "cosine",
        ef_search: int = 0,
        nprobe: int = 0,
        dim: int = 0,
        exist_ok: bool = False,
    ) -> CollectionInfo:
        """A new collection, as `Client.create_collection`."""
        return await self._call(
            api.create_collection_call(
                name, index, store_tokens, metric, ef_search, nprobe, dim, exist_ok
            )
        )

    async def list_collections(self) -> list[CollectionInfo]:
        return await self._call(api.list_collections_call())

    async def describe_collection(self, name: str) -> CollectionInfo:
        return await self._call(api.describe_collection_call(name))

    async def drop_collection(self, name: str) -> None:
        return await self._call(api.drop_collection_call(name))

    async def count(
        self,
        name: str,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - as in search
    ) -> int:
        """Documents in the collection; with `filter`, those matching it."""
        return await self._call(api.count_call(name, filter))

    async def get(
        self, name: str, ids: Sequence[str | int], with_vectors: bool = False
    ) -> list[StoredDocument | None]:
        """The stored documents for `ids`, in order; None where an id is not stored: as
        `Client.get`."""
        found: list[StoredDocument | None] = []
        for part in await self._id_batches(ids):
            found += await self._call(api.get_call(name, part, with_vectors))
        return found

    async def delete(
        self,
        name: str,
        ids: Sequence[str | int] | None = None,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - as in search
    ) -> int:
        """Delete documents by id, or every document matching `filter`: as `Client.delete`."""
        # Split only a delete by ids alone: anything else is delete_call's to refuse, unsent.
        parts = [ids] if ids is None or filter is not None else await self._id_batches(ids, True)
        return sum([await self._call(api.delete_call(name, part, filter)) for part in parts])

    async def scroll(
        self,
        name: str,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - as in search
        batch_size: int = 1000,
        with_vectors: bool = False,
    ) -> AsyncIterator[StoredDocument]:
        """Every document (matching `filter`), in id order, `batch_size` at a time, as an
        async iterator (`async for doc in c.scroll(...)`): as `Client.scroll`."""
        bulk.scroll_batch(batch_size)
        cursor = ""
        while True:
            try:
                docs, cursor = await self._call(
                    api.scroll_call(name, filter, batch_size, cursor, with_vectors)
                )
            except ResourceExhausted as err:  # a page too large to send: a smaller one
                batch_size = bulk.smaller_page(err, batch_size)
                continue
            for doc in docs:
                yield doc
            if not cursor:
                return

    async def update_metadata(
        self, name: str, ids: Sequence[str | int], patch: Mapping[str, Any], mode: str = "merge"
    ) -> int:
        """Change stored documents' metadata without re-embedding: as
        `Client.update_metadata`."""
        api.metadata_update(patch, mode)
        parts = await self._id_batches(ids, unique=True)
        return sum([await self._call(api.update_metadata_call(name, part, patch, mode))
                    for part in parts])  # fmt: skip

    async def search(
        self,
        name: str,
        query: SearchQuery,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - the SDK's documented name
        *,
        ef_search: int = 0,
        nprobe: int = 0,
        priority: str | None = None,
        score_threshold: float | None = None,
        with_vectors: bool = False,
    ) -> list[Hit] | list[list[Hit]]:
        """Nearest documents to a text or a vector (a hit list), or to each of several (a
        list of texts, vectors (n, dim): a hit list per query); score_threshold,
        with_vectors and priority: as `Client.search`'s."""
        call = api.search_call(name, query, k, filter, ef_search, nprobe, priority,
                               score_threshold, with_vectors)  # fmt: skip
        return await self._call(call)

    async def disambiguate(
        self,
        text: str,
        word: str = "",
        senses: Mapping[str, Sequence[str]] | None = None,
        occurrence: int = 0,
        *,
        span: tuple[int, int] | None = None,
        inventory: str | None = None,
        layers: Sequence[int] | None = None,
        centre: bool = True,
        with_sentence: bool = True,
        priority: str | None = None,
    ) -> Disambiguation:
        """Which sense `word` (its `occurrence`-th appearance, or the characters `span`) has
        in `text`: against `senses` (label -> example sentences with the word), or a stored
        inventory ("default", which ships with the server, when neither is given).
        with_sentence=False compares the word's own vectors only, without its sentence's
        (for a sentence that uses the word in two senses). priority: as `search`'s."""
        return await self._call(api.disambiguate_call(
            text, word, senses, occurrence, span, inventory, layers, centre, with_sentence,
            priority,
        ))  # fmt: skip

    async def create_inventory(
        self, name: str, words: Mapping[str, Mapping[str, Sequence[str]]], replace: bool = False
    ) -> Inventory:
        """Store a sense inventory: word -> sense label -> example sentences."""
        return await self._call(api.create_inventory_call(name, words, replace))

    async def list_inventories(self) -> list[Inventory]:
        return await self._call(api.list_inventories_call())

    async def get_inventory(self, name: str) -> Inventory:
        """One stored inventory ("default": the one the server ships), without the others."""
        return await self._call(api.get_inventory_call(name))

    async def delete_inventory(self, name: str) -> None:
        return await self._call(api.delete_inventory_call(name))

    async def search_occurrences(
        self,
        collection: str,
        text: str,
        word: str = "",
        k: int = 10,
        *,
        occurrence: int = 0,
        span: tuple[int, int] | None = None,
        priority: str | None = None,
    ) -> Occurrences:
        """Occurrences of `word` in a collection (stored with token vectors) used in the
        sense it has in `text`, best first: a list, whose `compared` says how many of the
        word's occurrences were compared: empty, 0 compared, where the collection lacks the word.
        priority: as `search`'s."""
        return await self._call(
            api.search_occurrences_call(collection, text, word, k, occurrence, span, priority)
        )

    async def induce_senses(
        self, collection: str, word: str, k: int | None = None, *,
        max_k: int | None = None, central: int = 3,
    ) -> Induction:  # fmt: skip
        """The senses of `word` in a collection, found by clustering its occurrences (k
        chosen by silhouette unless given, among at most max_k, 6 by default: give one of
        the two; each at most 20)."""
        return await self._call(api.induce_senses_call(collection, word, k, max_k, central))

    async def explain(
        self,
        text: str,
        word: str | None = None,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        *,
        occurrence: int = 0,
        span: tuple[int, int] | None = None,
        long_text: str = "error",
        neuron: tuple[int, int] | None = None,
        role: str | None = None,
    ) -> Explanation:
        """Attention maps of `layers` (1-based) x `heads` (0-based), all by default (the
        response is bounded: a long text must ask for fewer); for `word`, what it attends to
        most in each layer and head. A text longer than the model takes is refused unless
        long_text="truncate", which explains its first window ("windows" is a ValueError:
        an attention map is of one window). neuron=(layer 1-based, head 0-based): also that
        head's query vectors of the word (every token's without a word) and every token's
        key vector, as `Explanation.neuron` (the page's neuron view). role: the text read
        as a "query" (None: the default) or as a "passage", as stored documents are."""
        return await self._call(
            api.explain_call(text, word, layers, heads, occurrence, span, long_text, neuron, role)
        )

    async def compare_layers(
        self,
        text_a: str,
        text_b: str,
        word: str = "",
        occurrence_a: int = 0,
        occurrence_b: int = 0,
        *,
        long_text: str = "error",
        role: str | None = None,
        span_a: tuple[int, int] | None = None,
        span_b: tuple[int, int] | None = None,
    ) -> LayerComparison:
        """The cosine of `word`'s vectors in the two texts at every layer (0 = embeddings).
        long_text="truncate": texts longer than the model takes are cut to their first
        window ("error", the default, refuses them; "windows" is a ValueError). span_a,
        span_b: the word's characters in a text instead of its occurrence there (the word
        may be left out when both are given)."""
        return await self._call(
            api.compare_layers_call(
                text_a, text_b, word, occurrence_a, occurrence_b, long_text, role, span_a, span_b
            )
        )
