"""The asyncio client: the same methods as `Client`, as coroutines.

async with AsyncClient("127.0.0.1:50051") as c:
    hits = await c.search("news", "苹果发布了新手机", k=5)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from tqdm import tqdm

from embedsense.client._api import (
    TLS,
    Call,
    Methods,
    Retry,
    auth_metadata,
    embed_request,
    open_channel,
    parse_sentences,
    upsert_requests,
)
from embedsense.client.errors import RETRYABLE, from_rpc_error
from embedsense.client.v1 import embedsense_pb2_grpc


class AsyncClient(Methods):
    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retry: Retry | None = None,
        max_concurrent_batches: int = 4,
        tls: TLS | bool | None = None,
    ) -> None:
        self._channel = open_channel(target, tls, aio=True)
        self._stub = embedsense_pb2_grpc.EmbedSenseStub(self._channel)
        self._metadata = auth_metadata(api_key)
        self.timeout = timeout
        self.retry = retry or Retry()
        self.max_concurrent_batches = max_concurrent_batches

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _call(self, call: Call) -> Any:
        method = getattr(self._stub, call.rpc)
        for attempt in range(self.retry.attempts):
            try:
                response = await method(call.request, timeout=self.timeout, metadata=self._metadata)
                return call.parse(response)
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRYABLE or attempt == self.retry.attempts - 1:
                    raise from_rpc_error(err) from None
                await asyncio.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")

    async def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        normalize_embeddings: bool = True,
        show_progress_bar: bool = False,
        *,
        role: str | None = None,
        long_text: str = "error",
    ) -> np.ndarray:
        """Sentence vectors (len(texts), dim); up to `max_concurrent_batches` in flight."""
        gate = asyncio.Semaphore(self.max_concurrent_batches)
        bar = tqdm(total=len(texts), disable=not show_progress_bar, unit="text")

        async def one(chunk: Sequence[str]) -> np.ndarray:
            async with gate:
                request = embed_request(chunk, normalize_embeddings, role, long_text)
                vectors = await self._call(Call("Embed", request, parse_sentences))
                bar.update(len(chunk))
                return vectors

        with bar:
            parts = await asyncio.gather(
                *(one(texts[s : s + batch_size]) for s in range(0, len(texts), batch_size))
            )
        if not parts:
            return np.zeros((0, (await self.info()).dim), np.float32)
        return np.concatenate(parts)

    async def upsert(
        self,
        name: str,
        documents: Iterable[str | Mapping[str, Any]],
        batch_size: int = 256,
        show_progress_bar: bool = True,
        *,
        timeout: float | None = None,
    ) -> list[str]:
        """Stream documents into a collection; their ids once all are durably stored."""
        total = len(documents) if isinstance(documents, Sequence) else None
        with tqdm(total=total, disable=not show_progress_bar, unit="doc") as bar:

            async def requests() -> AsyncIterator:
                for request in upsert_requests(name, documents, batch_size, bar.update):
                    yield request

            try:
                response = await self._stub.Upsert(
                    requests(), timeout=timeout, metadata=self._metadata
                )
            except grpc.aio.AioRpcError as err:
                raise from_rpc_error(err) from None
        return list(response.ids)
