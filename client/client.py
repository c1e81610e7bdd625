"""The synchronous client.

from embedsense.client import Client
with Client("127.0.0.1:50051") as c:
    vectors = c.encode(["我喜欢吃苹果", "我买了最新的苹果手机"])
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
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


class Client(Methods):
    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retry: Retry | None = None,
        channel: grpc.Channel | None = None,
        tls: TLS | bool | None = None,
    ) -> None:
        """timeout: the deadline of every call, in seconds (None: no deadline).
        tls: True (the system's CA roots) or a TLS(...) with your CA and, for mutual TLS,
        a client certificate and key."""
        self._channel = channel or open_channel(target, tls, aio=False)
        self._stub = embedsense_pb2_grpc.EmbedSenseStub(self._channel)
        self._metadata = auth_metadata(api_key)
        self.timeout = timeout
        self.retry = retry or Retry()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, call: Call) -> Any:
        method = getattr(self._stub, call.rpc)
        for attempt in range(self.retry.attempts):
            try:
                response = method(call.request, timeout=self.timeout, metadata=self._metadata)
                return call.parse(response)
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or attempt == self.retry.attempts - 1:
                    raise from_rpc_error(err) from None
                time.sleep(self.retry.delay(attempt))
        raise AssertionError("unreachable")

    def encode(
        self,
        texts: Sequence[str],
        batch_size: int = 32,
        normalize_embeddings: bool = True,
        show_progress_bar: bool = False,
        *,
        role: str | None = None,
        long_text: str = "error",
    ) -> np.ndarray:
        """Sentence vectors (len(texts), dim), float32, in batches of `batch_size` texts."""
        parts = []
        for start in tqdm(range(0, len(texts), batch_size), disable=not show_progress_bar,
                          unit="batch"):  # fmt: skip
            chunk = texts[start : start + batch_size]
            request = embed_request(chunk, normalize_embeddings, role, long_text)
            parts.append(self._call(Call("Embed", request, parse_sentences)))
        return np.concatenate(parts) if parts else np.zeros((0, self.info().dim), np.float32)

    def upsert(
        self,
        name: str,
        documents: Iterable[str | Mapping[str, Any]],
        batch_size: int = 256,
        show_progress_bar: bool = True,
        *,
        timeout: float | None = None,
    ) -> list[str]:
        """Stream documents into a collection; their ids once all are durably stored.

        Bulk loads take long, so there is no deadline unless `timeout` is given.
        """
        total = len(documents) if isinstance(documents, Sequence) else None
        with tqdm(total=total, disable=not show_progress_bar, unit="doc") as bar:
            requests = upsert_requests(name, documents, batch_size, bar.update)
            try:
                response = self._stub.Upsert(requests, timeout=timeout, metadata=self._metadata)
            except grpc.RpcError as err:
                raise from_rpc_error(err) from None
        return list(response.ids)
