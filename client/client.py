"""The synchronous client.

from embedsense.client import Client
with Client("127.0.0.1:50051") as c:
    vectors = c.encode(["我喜欢吃苹果", "我买了最新的苹果手机"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
import numpy as np
from tqdm import tqdm

from embedsense.client import _api as api
from embedsense.client._api import TLS, Call, Retry
from embedsense.client.errors import EmbedSenseError, from_rpc_error, retryable
from embedsense.client.types import (
    CollectionInfo,
    Disambiguation,
    Explanation,
    Hit,
    Induction,
    Info,
    Inventory,
    LayerComparison,
    Occurrence,
    StoredDocument,
    TokenEmbeddings,
    Tokens,
)
from embedsense.proto.v1 import embedsense_pb2_grpc

T = TypeVar("T")
R = TypeVar("R")


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
        has) or a list of them: calls are balanced round-robin (gRPC's own), and a call
        that finds a server gone is sent to another. timeout: the deadline of every call,
        in seconds (None: no deadline). tls: True (the system's CA roots) or a TLS(...) with
        your CA and, for mutual TLS, a client certificate and key. max_concurrent_batches:
        how many requests of one `encode` or `upsert` of a list are in flight at once (the
        bulk path: one client keeps the server as busy as several callers)."""
        self._channel = channel or api.open_channel(target, tls, aio=False)
        self._stub = embedsense_pb2_grpc.EmbedSenseStub(self._channel)
        self._metadata = api.auth_metadata(api_key)
        self.timeout = timeout
        self.retry = retry or Retry()
        self.max_concurrent_batches = max_concurrent_batches
        self._texts_per_request: int | None = None  # the server's limit, asked once

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, call: Call[T]) -> T:
        method = getattr(self._stub, call.rpc)
        for attempt in range(self.retry.attempts):
            try:
                response = method(call.request, timeout=self.timeout, metadata=self._metadata)
                return call.parse(response)
            except grpc.RpcError as err:
                if not retryable(err) or attempt == self.retry.attempts - 1:
                    raise from_rpc_error(err) from None
                time.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")

    def _in_flight(self, work: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """work(item) for every item, up to max_concurrent_batches at once, in order."""
        if len(items) <= 1 or self.max_concurrent_batches <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(min(self.max_concurrent_batches, len(items))) as pool:
            return list(pool.map(work, items))

    def _batch_size(self, asked: int, total: int) -> int:
        """`asked`, within the server's texts-per-request limit when `total` items must be
        split anyway (one request asked for whole still meets the limit's clear error)."""
        if total <= asked:
            return asked
        if self._texts_per_request is None:
            self._texts_per_request = self.info().max_texts_per_request
        return max(1, min(asked, self._texts_per_request))

    def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        normalize_embeddings: bool = True,
        show_progress_bar: bool = False,
        *,
        role: str | None = None,
        long_text: str = "error",
    ) -> np.ndarray:
        """Sentence vectors, float32, in requests of `batch_size` texts (at most the server's
        limit), up to `max_concurrent_batches` in flight: a str gives one vector (dim,), a
        list a matrix (len(texts), dim) in the list's order, [] an empty (0, dim)."""
        batch, single = api.as_texts(texts)
        if not batch:
            return np.zeros((0, self.info().dim), np.float32)
        size = self._batch_size(batch_size, len(batch))
        requests = [api.embed_request(batch[s : s + size], normalize_embeddings, role, long_text)
                    for s in range(0, len(batch), size)]  # fmt: skip
        with tqdm(total=len(batch), disable=not show_progress_bar, unit="text") as bar:

            def one(request: Any) -> np.ndarray:
                vectors = self._call(Call("Embed", request, api.parse_sentences))
                bar.update(len(vectors))
                return vectors

            vectors = np.concatenate(self._in_flight(one, requests))
        return vectors[0] if single else vectors

    def upsert(
        self,
        name: str,
        documents: Iterable[str | Mapping[str, Any]],
        batch_size: int = 256,
        show_progress_bar: bool = True,
        *,
        timeout: float | None = None,
    ) -> list[str]:
        """Store documents in a collection; their ids, in order, once all are durably stored.

        A list goes as batches of `batch_size`, up to `max_concurrent_batches` in flight (the
        bulk path), each sent again (to another server, if there are several) when the
        server becomes unavailable: every document has its id before the first try, so a
        retry replaces what an interrupted one stored. An iterator is streamed, read once,
        and not retried. Bulk loads take long: no deadline unless `timeout` is given.
        """
        documents, total = api.resendable(documents)
        with tqdm(total=total, disable=not show_progress_bar, unit="doc") as bar:
            if total is None:
                return self._upsert(name, documents, batch_size, timeout, bar.update, False)
            size = self._batch_size(batch_size, total)
            parts = [documents[s : s + size] for s in range(0, total, size)] or [[]]

            def one(part: list[Any]) -> list[str] | EmbedSenseError:
                try:
                    return self._upsert(name, part, size, timeout, bar.update, True)
                except EmbedSenseError as err:
                    return err

            return api.joined_ids(self._in_flight(one, parts), parts)

    def _upsert(
        self,
        name: str,
        documents: Iterable[Any],
        batch_size: int,
        timeout: float | None,
        progress: Callable[[int], object],
        resend: bool,
    ) -> list[str]:
        """One Upsert stream; sent again on UNAVAILABLE when `resend`."""
        for attempt in range(self.retry.attempts):
            sent: list[int] = []  # a resent stream counts once, when it is done
            on_batch = sent.append if resend else progress
            requests = api.upsert_requests(name, documents, batch_size, on_batch)
            try:
                response = self._stub.Upsert(requests, timeout=timeout, metadata=self._metadata)
                progress(sum(sent))
                return list(response.ids)
            except grpc.RpcError as err:
                if not resend or not retryable(err) or attempt == self.retry.attempts - 1:
                    raise from_rpc_error(err) from None
            time.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")

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
    ) -> TokenEmbeddings | list[TokenEmbeddings]:
        """Per-token vectors: the last layer, or the mean of `layers`. A str gives one
        TokenEmbeddings, a list of texts a list of them (`[]` gives `[]`)."""
        batch, single = api.as_texts(texts)
        if not batch:
            return []
        results = self._call(api.embed_tokens_call(batch, layers, role_name, long_text))
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
    ) -> CollectionInfo:
        """A new collection: `index` is a FAISS factory string ("Flat", "HNSW32", ...)."""
        return self._call(
            api.create_collection_call(name, index, store_tokens, metric, ef_search, nprobe)
        )

    def list_collections(self) -> list[CollectionInfo]:
        return self._call(api.list_collections_call())

    def describe_collection(self, name: str) -> CollectionInfo:
        return self._call(api.describe_collection_call(name))

    def drop_collection(self, name: str) -> None:
        return self._call(api.drop_collection_call(name))

    def count(self, name: str) -> int:
        return self._call(api.count_call(name))

    def get(
        self, name: str, ids: Sequence[str], with_vectors: bool = False
    ) -> list[StoredDocument | None]:
        """The stored documents for `ids`, in order; None where an id is not stored."""
        return self._call(api.get_call(name, ids, with_vectors))

    def delete(self, name: str, ids: Sequence[str]) -> int:
        """Delete documents by id; how many existed."""
        return self._call(api.delete_call(name, ids))

    def search(
        self,
        name: str,
        query: str | np.ndarray,
        k: int = 10,
        filter: Mapping[str, Any] | None = None,  # noqa: A002 - the SDK's documented name
        *,
        ef_search: int = 0,
        nprobe: int = 0,
    ) -> list[Hit]:
        """Nearest documents to a text (embedded as a query) or a vector."""
        return self._call(api.search_call(name, query, k, filter, ef_search, nprobe))

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
    ) -> Disambiguation:
        """Which sense `word` (its `occurrence`-th appearance, or the characters `span`) has
        in `text`: against `senses` (label -> example sentences with the word), or a stored
        inventory ("default", which ships with the server, when neither is given).
        with_sentence=False compares the word's own vectors only, without its sentence's
        (for a sentence that uses the word in two senses)."""
        return self._call(api.disambiguate_call(
            text, word, senses, occurrence, span, inventory, layers, centre, with_sentence
        ))  # fmt: skip

    def create_inventory(
        self, name: str, words: Mapping[str, Mapping[str, Sequence[str]]], replace: bool = False
    ) -> Inventory:
        """Store a sense inventory: word -> sense label -> example sentences."""
        return self._call(api.create_inventory_call(name, words, replace))

    def list_inventories(self) -> list[Inventory]:
        return self._call(api.list_inventories_call())

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
    ) -> list[Occurrence]:
        """Occurrences of `word` in a collection (stored with token vectors) used in the
        sense it has in `text`, best first."""
        return self._call(api.search_occurrences_call(collection, text, word, k, occurrence, span))

    def induce_senses(
        self, collection: str, word: str, k: int | None = None, *, max_k: int = 6,
        central: int = 3,
    ) -> Induction:  # fmt: skip
        """The senses of `word` in a collection, found by clustering its occurrences (k
        chosen by silhouette unless given; k and max_k at most 20)."""
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
        truncate: bool = False,
    ) -> Explanation:
        """Attention maps of `layers` (1-based) x `heads` (0-based), all by default (the
        response is bounded: a long text must ask for fewer); for `word`, what it attends to
        most in each layer and head. A text longer than the model takes is refused unless
        truncate=True, which explains its first window."""
        return self._call(api.explain_call(text, word, layers, heads, occurrence, span, truncate))

    def compare_layers(
        self,
        text_a: str,
        text_b: str,
        word: str,
        occurrence_a: int = 0,
        occurrence_b: int = 0,
        *,
        truncate: bool = False,
    ) -> LayerComparison:
        """The cosine of `word`'s vectors in the two texts at every layer (0 = embeddings).
        truncate=True: texts longer than the model takes are cut to their first window."""
        return self._call(
            api.compare_layers_call(text_a, text_b, word, occurrence_a, occurrence_b, truncate)
        )
