"""The asyncio client: the same methods as `Client`, as typed coroutines.

async with AsyncClient("127.0.0.1:50051") as c:
    hits = await c.search("news", "苹果发布了新手机", k=5)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
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
from embedsense.proto.v1 import embedsense_pb2, embedsense_pb2_grpc

T = TypeVar("T")


class AsyncClient:
    def __init__(
        self,
        target: str | Sequence[str] = "127.0.0.1:50051",
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retry: Retry | None = None,
        max_concurrent_batches: int = 4,
        tls: TLS | bool | None = None,
    ) -> None:
        self._channel = api.open_channel(target, tls, aio=True)
        self._stub = embedsense_pb2_grpc.EmbedSenseStub(self._channel)
        self._metadata = api.auth_metadata(api_key)
        self.timeout = timeout
        self.retry = retry or Retry()
        self.max_concurrent_batches = max_concurrent_batches
        self._texts_per_request: int | None = None  # the server's limit, asked once

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, call: Call[T]) -> T:
        method = getattr(self._stub, call.rpc)
        for attempt in range(self.retry.attempts):
            try:
                response = await method(call.request, timeout=self.timeout, metadata=self._metadata)
                return call.parse(response)
            except grpc.aio.AioRpcError as err:
                if not retryable(err) or attempt == self.retry.attempts - 1:
                    raise from_rpc_error(err) from None
                await asyncio.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")

    async def _batch_size(self, asked: int, total: int) -> int:
        """`asked`, within the server's texts-per-request limit when `total` items must be
        split anyway (as `Client`)."""
        if total <= asked:
            return asked
        if self._texts_per_request is None:
            self._texts_per_request = (await self.info()).max_texts_per_request
        return max(1, min(asked, self._texts_per_request))

    async def encode(
        self,
        texts: str | Sequence[str],
        batch_size: int = 32,
        normalize_embeddings: bool = True,
        show_progress_bar: bool = False,
        *,
        role: str | None = None,
        long_text: str = "error",
    ) -> np.ndarray:
        """Sentence vectors, float32, up to `max_concurrent_batches` requests in flight: a
        str gives one vector (dim,), a list a matrix (len(texts), dim), [] an empty (0, dim)."""
        batch, single = api.as_texts(texts)
        if not batch:
            return np.zeros((0, (await self.info()).dim), np.float32)
        size = await self._batch_size(batch_size, len(batch))
        gate = asyncio.Semaphore(self.max_concurrent_batches)
        bar = tqdm(total=len(batch), disable=not show_progress_bar, unit="text")

        async def one(chunk: Sequence[str]) -> np.ndarray:
            async with gate:
                request = api.embed_request(chunk, normalize_embeddings, role, long_text)
                vectors = await self._call(Call("Embed", request, api.parse_sentences))
                bar.update(len(chunk))
                return vectors

        with bar:
            parts = await asyncio.gather(
                *(one(batch[s : s + size]) for s in range(0, len(batch), size))
            )
        vectors = np.concatenate(parts)
        return vectors[0] if single else vectors

    async def upsert(
        self,
        name: str,
        documents: Iterable[str | Mapping[str, Any]],
        batch_size: int = 256,
        show_progress_bar: bool = True,
        *,
        timeout: float | None = None,
    ) -> list[str]:
        """Store documents in a collection; their ids, in order, once all are durably stored
        (a list as batches, up to `max_concurrent_batches` in flight, each sent again when
        the server becomes unavailable; an iterator streamed once: as `Client.upsert`)."""
        documents, total = api.resendable(documents)
        with tqdm(total=total, disable=not show_progress_bar, unit="doc") as bar:
            if total is None:
                return await self._upsert(name, documents, batch_size, timeout, bar.update, False)
            size = await self._batch_size(batch_size, total)
            parts = [documents[s : s + size] for s in range(0, total, size)] or [[]]
            gate = asyncio.Semaphore(self.max_concurrent_batches)

            async def one(part: list[Any]) -> list[str] | EmbedSenseError:
                async with gate:
                    try:
                        return await self._upsert(name, part, size, timeout, bar.update, True)
                    except EmbedSenseError as err:
                        return err

            return api.joined_ids(await asyncio.gather(*(one(part) for part in parts)), parts)

    async def _upsert(
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
            try:
                response = await self._stub.Upsert(
                    _aiter(api.upsert_requests(name, documents, batch_size, on_batch)),
                    timeout=timeout, metadata=self._metadata,
                )  # fmt: skip
                progress(sum(sent))
                return list(response.ids)
            except grpc.aio.AioRpcError as err:
                if not resend or not retryable(err) or attempt == self.retry.attempts - 1:
                    raise from_rpc_error(err) from None
            await asyncio.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")

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
    ) -> TokenEmbeddings | list[TokenEmbeddings]:
        """Per-token vectors: the last layer, or the mean of `layers`. A str gives one
        TokenEmbeddings, a list of texts a list of them (`[]` gives `[]`)."""
        batch, single = api.as_texts(texts)
        if not batch:
            return []
        results = await self._call(api.embed_tokens_call(batch, layers, role_name, long_text))
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
    ) -> CollectionInfo:
        """A new collection: `index` is a FAISS factory string ("Flat", "HNSW32", ...)."""
        return await self._call(
            api.create_collection_call(name, index, store_tokens, metric, ef_search, nprobe)
        )

    async def list_collections(self) -> list[CollectionInfo]:
        return await self._call(api.list_collections_call())

    async def describe_collection(self, name: str) -> CollectionInfo:
        return await self._call(api.describe_collection_call(name))

    async def drop_collection(self, name: str) -> None:
        return await self._call(api.drop_collection_call(name))

    async def count(self, name: str) -> int:
        return await self._call(api.count_call(name))

    async def get(
        self, name: str, ids: Sequence[str], with_vectors: bool = False
    ) -> list[StoredDocument | None]:
        """The stored documents for `ids`, in order; None where an id is not stored."""
        return await self._call(api.get_call(name, ids, with_vectors))

    async def delete(self, name: str, ids: Sequence[str]) -> int:
        """Delete documents by id; how many existed."""
        return await self._call(api.delete_call(name, ids))

    async def search(
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
        return await self._call(api.search_call(name, query, k, filter, ef_search, nprobe))

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
    ) -> Disambiguation:
        """Which sense `word` (its `occurrence`-th appearance, or the characters `span`) has
        in `text`: against `senses` (label -> example sentences with the word), or a stored
        inventory ("default", which ships with the server, when neither is given).
        with_sentence=False compares the word's own vectors only, without its sentence's
        (for a sentence that uses the word in two senses)."""
        return await self._call(api.disambiguate_call(
            text, word, senses, occurrence, span, inventory, layers, centre, with_sentence
        ))  # fmt: skip

    async def create_inventory(
        self, name: str, words: Mapping[str, Mapping[str, Sequence[str]]], replace: bool = False
    ) -> Inventory:
        """Store a sense inventory: word -> sense label -> example sentences."""
        return await self._call(api.create_inventory_call(name, words, replace))

    async def list_inventories(self) -> list[Inventory]:
        return await self._call(api.list_inventories_call())

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
    ) -> list[Occurrence]:
        """Occurrences of `word` in a collection (stored with token vectors) used in the
        sense it has in `text`, best first."""
        return await self._call(
            api.search_occurrences_call(collection, text, word, k, occurrence, span)
        )

    async def induce_senses(
        self, collection: str, word: str, k: int | None = None, *, max_k: int = 6,
        central: int = 3,
    ) -> Induction:  # fmt: skip
        """The senses of `word` in a collection, found by clustering its occurrences (k
        chosen by silhouette unless given; k and max_k at most 20)."""
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
        truncate: bool = False,
    ) -> Explanation:
        """Attention maps of `layers` (1-based) x `heads` (0-based), all by default (the
        response is bounded: a long text must ask for fewer); for `word`, what it attends to
        most in each layer and head. A text longer than the model takes is refused unless
        truncate=True, which explains its first window."""
        return await self._call(
            api.explain_call(text, word, layers, heads, occurrence, span, truncate)
        )

    async def compare_layers(
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
        return await self._call(
            api.compare_layers_call(text_a, text_b, word, occurrence_a, occurrence_b, truncate)
        )


async def _aiter(requests: Iterable[embedsense_pb2.UpsertRequest]) -> AsyncIterator[Any]:
    for request in requests:
        yield request
