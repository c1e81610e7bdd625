"""What a front-end process serves from: the engine, the index and the explainer of the
engine process, seen through the bridge.

The front end does the host work of a request itself (parsing, tokenizing, windows, pooling,
building the reply): FrontEngine is the engine's own code for those, with only the forward
of each request's rows sent to the engine process, where they join the one queue (the same
admission limits, priorities and deadlines as its own callers'). The index and the
explainer's calls are sent whole: they are a small share of a busy server's calls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedsense.model.pooling import Pooling
from embedsense.model.registry import ModelSpec
from embedsense.model.tokenizer import Tokenizer
from embedsense.server.api.observability import Metrics
from embedsense.server.api.settings import ServerSettings
from embedsense.server.batching import Priority
from embedsense.server.engine import (
    Engine,
    EngineBroken,
    EngineClosed,
    EngineInfo,
    EngineStats,
)
from embedsense.server.frontends.bridge import Bridge, BridgeClosed
from embedsense.server.index.collection import CollectionInfo
from embedsense.server.index.errors import IndexUnavailable
from embedsense.server.index.hits import Hit
from embedsense.server.index.store import Document
from embedsense.server.runner import Layers


@dataclass(frozen=True)
class FrontModel:
    """The model as a front end needs it: its name, shape and tokenizer, not its weights."""

    spec: ModelSpec
    tokenizer: Tokenizer
    dim: int
    load_seconds: float


@dataclass(frozen=True)
class Facts:
    """What the engine process tells a front end as it starts (its "hello" answer)."""

    settings: ServerSettings  # the engine's limits as sized at start-up (max_memory)
    model: FrontModel
    info: EngineInfo
    groups_tokenizing: bool  # as the engine would (tokenize_batch; by default on a GPU)
    index_kind: str
    index: int  # this front end's number, 0 to N-1
    json_logs: bool
    log_level: int


class FrontEngine(Engine):
    """The engine's embed(), tokenize() and decode() in a front-end process: everything but
    the forward runs here; each request's rows go to the engine process in one call."""

    def __init__(self, facts: Facts, bridge: Bridge) -> None:  # noqa: D107 - no model here
        self.config = facts.settings.engine
        self.model = facts.model  # type: ignore[assignment]
        self.stats = EngineStats()
        self._info = facts.info
        self.num_layers = facts.info.num_layers
        self._bridge = bridge
        self._closing = False
        self._cond = threading.Condition(threading.RLock())
        self._broken: str | None = None  # the engine process's, once a forward heard of it
        self._broken_listeners: list[Callable[[str], None]] = []
        self._preparing = 0
        self._start_host_work(facts.groups_tokenizing)

    def start(self) -> FrontEngine:
        return self

    def close(self, timeout: float | None = None) -> None:
        self._closing = True
        self._host_work.shutdown(wait=False)

    def info(self) -> EngineInfo:
        return self._info

    def _check_open(self) -> None:
        if self._broken is not None:
            raise EngineBroken(self._broken)
        if self._closing or self._bridge.closed:
            raise EngineClosed("the engine is not running")

    def _submit(
        self,
        rows: Sequence[Sequence[int]],
        layers: Layers,
        level: Priority,
        timeout: float | None,
        pooled: Pooling | None = None,
        started: float | None = None,
    ) -> Awaitable[list[np.ndarray]]:
        if timeout is not None and started is not None:  # what tokenizing here left of it
            timeout = max(0.0, timeout - (time.monotonic() - started))
        return self._forward(list(rows), layers, level, timeout, pooled)

    async def _forward(
        self,
        rows: list[Sequence[int]],
        layers: Layers,
        level: Priority,
        timeout: float | None,
        pooled: Pooling | None,
    ) -> list[np.ndarray]:
        try:
            return await self._bridge.call("rows", rows, layers, int(level), timeout, pooled)
        except BridgeClosed as err:
            raise EngineClosed(str(err)) from err
        except EngineBroken as err:  # this front end's health says so from now on
            self._tell_broken(str(err))
            raise


class RemoteCollection:
    """A collection of the engine process's index (CollectionBackend)."""

    def __init__(self, bridge: Bridge, name: str, store_tokens: bool, dim: int) -> None:
        self._bridge = bridge
        self._name = name
        self._store_tokens = store_tokens
        self._dim = dim

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def store_tokens(self) -> bool:
        return self._store_tokens

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _blocking(self._bridge, "collection", self._name, method, args, kwargs)

    def info(self) -> CollectionInfo:
        return self._call("info")

    def count(self, where: Mapping[str, Any] | None = None) -> int:
        return self._call("count", where)

    def index_vectors(self) -> int:
        return self._call("index_vectors")

    def upsert(self, docs: Sequence[Document], model: str | None = None) -> list[str]:
        return self._call("upsert", list(docs), model)

    def get(self, ids: Sequence[str]) -> list[Document | None]:
        return self._call("get", list(ids))

    def delete(self, ids: Sequence[str]) -> int:
        return self._call("delete", list(ids))

    def delete_where(self, where: Mapping[str, Any]) -> int:
        return self._call("delete_where", dict(where))

    def scroll(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("scroll", *args, **kwargs)

    def update_metadata(self, *args: Any, **kwargs: Any) -> Any:
        return self._call("update_metadata", *args, **kwargs)

    def search(self, *args: Any, **kwargs: Any) -> list[list[Hit]]:
        return self._call("search", *args, **kwargs)

    def ids_containing(self, word: str, limit: int) -> list[str]:
        return self._call("ids_containing", word, limit)


class RemoteCatalog:
    """The engine process's index (IndexBackend)."""

    def __init__(self, bridge: Bridge, kind: str) -> None:
        self._bridge = bridge
        self.kind = kind

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return _blocking(self._bridge, "catalog", method, args, kwargs)

    def create(self, name: str, **kwargs: Any) -> CollectionInfo:
        return self._call("create", name, **kwargs)

    def get(self, name: str) -> RemoteCollection:
        store_tokens, dim = self._call("get", name)
        return RemoteCollection(self._bridge, name, store_tokens, dim)

    def names(self) -> list[str]:
        return self._call("names")

    def list(self) -> list[CollectionInfo]:
        return self._call("list")

    def drop(self, name: str) -> None:
        self._call("drop", name)

    def close(self) -> None:
        """Nothing to close here: the engine process closes its index."""

    def put_inventory(self, name: str, words_json: str, replace: bool) -> bool:
        return self._call("put_inventory", name, words_json, replace)

    def get_inventory(self, name: str) -> str | None:
        return self._call("get_inventory", name)

    def inventories(self) -> list[tuple[str, str]]:
        return self._call("inventories")

    def delete_inventory(self, name: str) -> bool:
        return self._call("delete_inventory", name)


class RemoteExplainer:
    """The engine process's Explainer: it runs the model with attention weights out."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    async def in_turn(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Explainer.in_turn in the engine process; cancelling the call cancels it there."""
        try:
            return await self._bridge.call("explain", method, args, kwargs)
        except BridgeClosed as err:
            raise EngineClosed(str(err)) from err


class FrontMetrics(Metrics):
    """A front end's own metrics (its requests); its /metrics page is the engine process's,
    which adds up every front end's and its own (the engine's, the index's)."""

    def __init__(self, bridge: Bridge, access_log: bool = True) -> None:
        super().__init__(access_log)
        self._bridge = bridge

    async def page(self) -> bytes:
        return await self._bridge.call("metrics_page")


def _blocking(bridge: Bridge, *call: Any) -> Any:
    """A call from a worker thread (the API runs index calls in threads): its answer."""
    try:
        return bridge.call_blocking(*call)
    except BridgeClosed as err:
        raise IndexUnavailable(str(err)) from err
