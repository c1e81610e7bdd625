"""The synchronous client.

from embedsense.client import Client
with Client("127.0.0.1:50051") as c:
    vectors = c.encode(["我喜欢吃苹果", "我买了最新的苹果手机"])
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import grpc
import numpy as np
from tqdm import tqdm

from embedsense.client import _api as api
from embedsense.client import bulk
from embedsense.client._api import TLS, Call, Retry
from embedsense.client.errors import (
    ResourceExhausted,
    cancelled,
    closed_while_running,
    reported,
    retryable,
)
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


class Client:
    def __init__(
        self,
        target: str | Sequence[str] = "127.0.0.1:50051",
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retry: Retry | None = None,
        channel: grpc.Channel | None = None,
        tls: TLS | bool | None = None,
        max_concurrent_batches: int = 4,
    ) -> None:
        """target: one server ("host:port", or "dns:///name:port" for every address a name
        has; without a port, 50051) or a list of them: calls are balanced round-robin
        (gRPC's own), and a call that finds a server gone is sent to another. timeout: the
        deadline of every call, in seconds (None: no deadline). channel: a channel of your
        own (interceptors, say) instead of one to `target`. tls: True (the system's CA
        roots) or a TLS(...) with your CA and, for mutual TLS, a client certificate and
        key. max_concurrent_batches: how many requests of one `encode` or `upsert` are in
        flight at once, at least 1 (the bulk path: one client keeps the server as busy as
        several callers). Raises ValueError for a max_concurrent_batches below 1."""
        self.max_concurrent_batches = bulk.at_least_one(
            "max_concurrent_batches", max_concurrent_batches
        )
        self._channel = channel or api.open_channel(target, tls, aio=False)
        self._stub = embedsense_pb2_grpc.EmbedSenseStub(self._channel)
        self._closed = False
        self._metadata = api.auth_metadata(api_key)
        self.timeout = timeout
        self.retry = retry or Retry()
        self._limits: Info | None = None  # the server's limits, asked once

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._channel.close()

    def _call(self, call: Call[T]) -> T:
        return self._send(call, self.timeout)

    def _send(self, call: Call[T], timeout: float | None, calls: _Calls | None = None) -> T:
        """The call, retried with backoff while the server says "not now"; with `calls`, made
        so that a failure elsewhere in the same bulk operation can cancel it."""
        if self._closed:  # grpc's own error ("Cannot invoke RPC on closed channel!") said less
            raise RuntimeError("this Client is closed: make a new one")
        method = getattr(self._stub, call.rpc)
        attempts = self.retry.attempts_for(call)
        deadline = api.Deadline(timeout)  # the call's, its retries included
        earlier: grpc.RpcError | None = None  # the last attempt's error, when retried
        for attempt in range(attempts):
            left = deadline.left()
            try:
                if calls is None:
                    response = method(call.message(), timeout=left, metadata=self._metadata)
                else:
                    response = calls.result(
                        method.future(call.message(), timeout=left, metadata=self._metadata)
                    )
                return call.parse(response)
            except grpc.RpcError as err:
                if self._closed and cancelled(err):  # by close(), not by the bulk call's end
                    raise closed_while_running("Client") from None
                delay = self.retry.delay(attempt)
                if not retryable(err) or attempt == attempts - 1 or not deadline.allows(delay):
                    raise reported(err, earlier) from None
                earlier = err
                time.sleep(delay)
                if self._closed:  # while it waited to try again
                    raise closed_while_running("Client") from None
        raise AssertionError("unreachable")

    def _run(
        self, plan: bulk.Plan, send: Callable[[Any, _Calls | None], Any], cancel_in_flight: bool
    ) -> None:
        """Every batch of `plan`, in threads, as the plan allows; on the first failure no more
        are sent, and those in flight are cancelled if `cancel_in_flight`, else waited for.
        The answers and the failure are in the plan."""
        if plan.sequential:  # no threads for one batch at a time
            while (batch := plan.next()) is not None:
                try:
                    result = send(batch.request, None)
                except Exception as err:  # noqa: BLE001 - the plan raises it once all are done
                    plan.failed(batch, err)
                else:
                    plan.done(batch, result)
            return
        calls = _Calls()
        running: dict[Future[Any], bulk.Batch] = {}
        pool = ThreadPoolExecutor(plan.limit, thread_name_prefix="embedsense-bulk")
        try:
            while True:
                while (batch := plan.next()) is not None:
                    running[pool.submit(send, batch.request, calls)] = batch
                if not running:
                    return
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    batch = running.pop(future)
                    if (error := future.exception()) is None:
                        plan.done(batch, future.result())
                    else:
                        plan.failed(batch, error)
                if plan.error is not None and cancel_in_flight:
                    calls.cancel()
        finally:
            if running:  # interrupted (Ctrl-C): nothing of this call goes on after it
                calls.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _batch_size(self, asked: int, total: int | None) -> int:
        """`asked` (at least 1), within the server's texts-per-request limit (asked once per
        client, when a request could hold more than one item)."""
        bulk.at_least_one("batch_size", asked)
        if not bulk.needs_server_limit(asked, total):
            return asked
        return bulk.within_limit(asked, self._server_limits().max_texts_per_request)

    def _server_limits(self) -> Info:
        if self._limits is None:
            self._limits = self.info()
        return self._limits

    def _id_batches(self, ids: Sequence[str | int], unique: bool = False) -> list[list[str]]:
        """`ids` as sent (api.id_list), in requests within the server's limit (asked once
        per client, for more than one id)."""
        listed = api.id_list(ids, unique)
        limit = self._server_limits().max_texts_per_request if len(listed) > 1 else 1
        return bulk.id_batches(listed, limit)

    def encode(
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
        """Sentence vectors, float32, in requests of `batch_size` texts (at most the server's
        limit), up to `max_concurrent_batches` in flight: a str gives one vector (dim,), a
        list a matrix (len(texts), dim) in the list's order, [] an empty (0, dim).

        long_text: what to do with a text longer than the model takes: "error" (refuse it,
        naming its length), "truncate" (embed its first window), "windows" (overlapping
        windows). When a request fails, no more are sent, those in flight are cancelled, and
        its error is raised. No progress bar unless `show_progress_bar`.
        priority: "query", "interactive" or "bulk", how soon the server embeds the texts
        when it is busy (None: by each request's size, interactive for a few texts, bulk for
        more; README: Priority). Raises ValueError for another name.
        """
        api.check_embed_options(role, long_text, priority)
        batch, single = api.as_texts(texts)
        if not batch:
            return np.zeros((0, self.info().dim), np.float32)
        size = self._batch_size(batch_size, len(batch))
        with tqdm(total=len(batch), disable=not show_progress_bar, unit="text") as bar:
            plan = bulk.encode_plan(
                batch, size, self.max_concurrent_batches,
                lambda chunk: api.embed_request(
                    chunk, normalize_embeddings, role, long_text, priority
                ),
                bar.update,
            )  # fmt: skip
            self._run(plan, self._send_embed, cancel_in_flight=True)
        vectors = bulk.joined_vectors(plan)
        return vectors[0] if single else vectors

    def _send_embed(self, request: Any, calls: _Calls | None) -> np.ndarray:
        return self._send(Call("Embed", request, api.parse_sentences), self.timeout, calls)

    def upsert(
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
        are durably stored.

        Vectors embedded elsewhere: `vectors` (len(documents), dim), a row per document of a
        list, or a dict document's "vector"; such documents are stored as given and not
        embedded (their text may be empty, then they need an "id"). The dimension must be
        the collection's (InvalidArgument naming both).

        A document is a str (a text) or a dict with "text" and optionally "id" and
        "metadata". One given without an id gets an id made from its text and metadata: the
        same document always gets the same id, so uploading the same documents again
        replaces them instead of storing them twice (identical documents are stored once).
        An id given twice keeps its last text, as if the documents were sent one by one.

        Documents go in batches of `batch_size` (at most the server's limit), up to
        `max_concurrent_batches` in flight; a list is checked whole before anything is
        sent, any other iterable is read as the batches go. A batch is sent again when the
        server is unavailable or overloaded: its ids are fixed, so a retry replaces what an
        interrupted try stored. When a batch fails no more are sent, those in flight are
        let finish, and its error (an EmbedSenseError) says what is stored: `stored_ids`,
        and every document's id in `document_ids`. Bulk loads take long: no deadline
        unless `timeout` is given (per batch). No progress bar unless `show_progress_bar`.
        priority: how soon the server embeds the documents when it is busy (None: "bulk",
        behind searches and small embeds, and refused first when the server is full;
        "interactive" or "query" for a write a person waits on). Raises ValueError for
        another name.
        """
        level = api.priority(priority)  # a wrong name fails here, before any request
        source = bulk.documents_source(api.with_vectors_documents(documents, vectors))
        total = len(source) if isinstance(source, list) else None
        size = self._batch_size(batch_size, total)
        if source:  # the server's limit asked after every check here, and for something
            source = bulk.within_text_limit(source, self._server_limits().max_text_chars)
        with tqdm(total=total, disable=not show_progress_bar, unit="doc") as bar:
            plan = bulk.upsert_plan(
                name, source, size, self.max_concurrent_batches, bar.update, level
            )
            self._run(
                plan,
                lambda request, calls: self._send(api.upsert_call(request), timeout, calls),
                cancel_in_flight=False,
            )
        return bulk.upserted_ids(plan)

    def info(self) -> Info:
        """The server's model, device, dtype and limits."""
        return self._call(api.info_call())

    def tokenize(self, text: str, role_name: str | None = None) -> Tokens:
        """The model's tokens of `text`, with character offsets into it."""
        return self._call(api.tokenize_call(text, role_name))

    def embed_tokens(
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
        `encode`'s."""
        batch, single = api.as_texts(texts)
        if not batch:
            return []
        call = api.embed_tokens_call(batch, layers, role_name, long_text, priority)
        results = self._call(call)
        return results[0] if single else results

    def create_collection(
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
        """A new collection: `index` is a FAISS factory string ("Flat", "HNSW32", ...). dim:
        0 for the served model's vectors; else a collection of vectors embedded elsewhere, of
        that dimension (its model "external": upsert with `vectors=`, search by vector).

        AlreadyExists if the name is taken; with `exist_ok`, unless the collection of that name
        was made with other settings (index, metric, store_tokens and dim as given or at
        their defaults; ef_search and nprobe where given): it is the answer, so a script can
        run twice, and the call is retried as any other when the server is unavailable."""
        return self._call(
            api.create_collection_call(
                name, index, store_tokens, metric, ef_search, nprobe, dim, exist_ok
            )
        )

    def list_collections(self) -> list[CollectionInfo]:
        return self._call(api.list_collections_call())

    def describe_collection(self, name: str) -> CollectionInfo:
        return self._call(api.describe_collection_call(name))

    def drop_collection(self, name: str) -> None:
        return self._call(api.drop_collection_call(name))

    def count(
        self,
        name: str,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - as in search
    ) -> int:
        """Documents in the collection; with `filter`, those matching it."""
        return self._call(api.count_call(name, filter))

    def get(
        self, name: str, ids: Sequence[str | int], with_vectors: bool = False
    ) -> list[StoredDocument | None]:
        """The stored documents for `ids`, in order; None where an id is not stored. A list
        longer than the server's max_texts_per_request is sent in several requests."""
        return [doc for part in self._id_batches(ids)
                for doc in self._call(api.get_call(name, part, with_vectors))]  # fmt: skip

    def delete(
        self,
        name: str,
        ids: Sequence[str | int] | None = None,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - as in search
    ) -> int:
        """Delete documents by id, or every document matching `filter` (one of the two; an
        empty filter is refused: drop the collection instead); how many were deleted (by
        the last try, when an UNAVAILABLE was retried: the documents are gone either way).
        Ids past the server's max_texts_per_request go in several requests, in order: an
        error leaves the earlier ones deleted (a delete may simply be sent again)."""
        # Split only a delete by ids alone: anything else is delete_call's to refuse, unsent.
        parts = [ids] if ids is None or filter is not None else self._id_batches(ids, True)
        return sum(self._call(api.delete_call(name, part, filter)) for part in parts)

    def scroll(
        self,
        name: str,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - as in search
        batch_size: int = 1000,
        with_vectors: bool = False,
    ) -> Iterator[StoredDocument]:
        """Every document (matching `filter`), in id order, fetched `batch_size` at a time
        (at most 10,000) as the iterator is read. Each document that exists and matches for
        the whole scroll comes exactly once; one added, removed or changed meanwhile may or
        may not; none twice."""
        bulk.scroll_batch(batch_size)
        cursor = ""
        while True:
            try:
                docs, cursor = self._call(
                    api.scroll_call(name, filter, batch_size, cursor, with_vectors)
                )
            except ResourceExhausted as err:  # a page too large to send: a smaller one
                batch_size = bulk.smaller_page(err, batch_size)
                continue
            yield from docs
            if not cursor:
                return

    def update_metadata(
        self, name: str, ids: Sequence[str | int], patch: Mapping[str, Any], mode: str = "merge"
    ) -> int:
        """Change stored documents' metadata without re-embedding: "merge" sets the patch's
        top-level keys (a None value is stored as null), "replace" makes the patch the whole
        metadata. How many of `ids` existed. Ids past the server's max_texts_per_request go
        in several requests, in order: an error leaves the earlier ones updated (an update
        may simply be sent again)."""
        api.metadata_update(patch, mode)
        parts = self._id_batches(ids, unique=True)
        return sum(self._call(api.update_metadata_call(name, part, patch, mode)) for part in parts)

    def search(
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
        """Nearest documents to a text (embedded as a query) or a vector (dim,): a hit list.
        Several queries in one call, a list of texts or vectors (n, dim): a hit list per
        query, in order. A vector may be an array or a list of numbers. score_threshold:
        only hits at least that near (score >= it for cosine and ip, squared distance <= it
        for l2). with_vectors: hits carry their stored vectors. priority: of the query texts
        (None: "query", ahead of embeds and upserts; README: Priority)."""
        call = api.search_call(name, query, k, filter, ef_search, nprobe, priority,
                               score_threshold, with_vectors)  # fmt: skip
        return self._call(call)

    def disambiguate(
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
        return self._call(api.disambiguate_call(
            text, word, senses, occurrence, span, inventory, layers, centre, with_sentence,
            priority,
        ))  # fmt: skip

    def create_inventory(
        self, name: str, words: Mapping[str, Mapping[str, Sequence[str]]], replace: bool = False
    ) -> Inventory:
        """Store a sense inventory: word -> sense label -> example sentences."""
        return self._call(api.create_inventory_call(name, words, replace))

    def list_inventories(self) -> list[Inventory]:
        return self._call(api.list_inventories_call())

    def get_inventory(self, name: str) -> Inventory:
        """One stored inventory ("default": the one the server ships), without the others."""
        return self._call(api.get_inventory_call(name))

    def delete_inventory(self, name: str) -> None:
        return self._call(api.delete_inventory_call(name))

    def search_occurrences(
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
        return self._call(
            api.search_occurrences_call(collection, text, word, k, occurrence, span, priority)
        )

    def induce_senses(
        self, collection: str, word: str, k: int | None = None, *,
        max_k: int | None = None, central: int = 3,
    ) -> Induction:  # fmt: skip
        """The senses of `word` in a collection, found by clustering its occurrences (k
        chosen by silhouette unless given, among at most max_k, 6 by default: give one of
        the two; each at most 20)."""
        return self._call(api.induce_senses_call(collection, word, k, max_k, central))

    def explain(
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
        return self._call(
            api.explain_call(text, word, layers, heads, occurrence, span, long_text, neuron, role)
        )

    def compare_layers(
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
        window ("error", the default, refuses them; "windows" is a ValueError). role: both
        texts read as a "query" (None: the default) or as a "passage". span_a, span_b: the
        word's characters in a text instead of its occurrence there ("apple" inside
        "apples"); the word may be left out when both are given."""
        return self._call(
            api.compare_layers_call(
                text_a, text_b, word, occurrence_a, occurrence_b, long_text, role, span_a, span_b
            )
        )


class _Calls:
    """The gRPC calls one bulk operation has in flight, so that its first failure can cancel
    the others: a thread cannot be stopped, its call can."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: set[grpc.Future] = set()
        self._cancelled = False

    def result(self, future: grpc.Future) -> Any:
        """The call's answer; grpc.FutureCancelledError once `cancel` was called."""
        with self._lock:
            self._futures.add(future)
            if self._cancelled:
                future.cancel()
        try:
            return future.result()
        finally:
            with self._lock:
                self._futures.discard(future)

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            for future in self._futures:
                future.cancel()
