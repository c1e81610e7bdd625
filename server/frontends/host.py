"""The engine process of `--frontends N`: it owns the model (and the accelerator), the engine's
one queue and the index, and starts N front-end processes (child.py) that serve the gRPC and
HTTP ports together (SO_REUSEPORT: the kernel spreads connections over them). Each front end
parses, tokenizes, pools and replies on its own core; here, only the forwards and the index
calls it sends over its bridge run.

Lifecycle: a front end that exits on its own is started again. SIGTERM or SIGINT here drains
the front ends first (they finish their in-flight calls, which need the engine), then closes
the engine and the index. If this process dies, even by SIGKILL, each front end reads the end
of its bridge and exits: no orphans.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import sys
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics_core import Metric

from embedsense.model import LoadedModel
from embedsense.model.pooling import Pooling
from embedsense.server.api.app import (
    StartupError,
    bare_host,
    check_data_dir,
    check_ports_free,
    grpc_address,
    open_engine_and_index,
    other_ports,
    reload_on_hangup,
    reloads,
    remove_if_empty,
    serve_metrics,
    stop_on_signals,
)
from embedsense.server.api.observability import JsonFormatter, Metrics
from embedsense.server.api.settings import ServerSettings
from embedsense.server.api.tls import ServerTls
from embedsense.server.batching import Priority
from embedsense.server.engine import Engine
from embedsense.server.explain import Explainer
from embedsense.server.frontends.bridge import Bridge, BridgeClosed
from embedsense.server.frontends.remote import Facts, FrontModel
from embedsense.server.index import IndexBackend
from embedsense.server.index.threads import IndexThreads, close_wait_s

log = logging.getLogger(__name__)

# What a front end may ask of the index and the explainer (their whole protocols).
CATALOG_CALLS = frozenset({"create", "get", "names", "list", "drop", "put_inventory",
                           "get_inventory", "inventories", "delete_inventory"})  # fmt: skip
COLLECTION_CALLS = frozenset({"info", "count", "index_vectors", "upsert", "get", "delete",
                              "delete_where", "scroll", "update_metadata", "search",
                              "ids_containing"})  # fmt: skip
READY_TIMEOUT_S = 120.0  # a front end's start once the engine is up: bind, warm nothing
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0
FRONT_END_METRICS_TIMEOUT_S = 5.0  # within a scraper's usual 10 s


async def serve_with_front_ends(
    settings: ServerSettings, count: int, model: LoadedModel | None = None
) -> None:
    """Run the engine process and `count` front ends until SIGINT or SIGTERM."""
    stop = stop_on_signals()
    host = EngineHost(settings, count, model)
    reload_on_hangup(host.reload)
    await host.start()
    await stop.wait()
    log.info("shutting down: the front ends finish their calls (up to %.0f s)",
             settings.shutdown_grace_s)  # fmt: skip
    await host.stop()


@dataclasses.dataclass
class _FrontEnd:
    index: int
    process: asyncio.subprocess.Process
    bridge: Bridge
    ready: asyncio.Future[str | None]  # None, or why it could not start


class EngineHost:
    def __init__(
        self, settings: ServerSettings, count: int, model: LoadedModel | None = None
    ) -> None:
        self.settings = settings
        self.count = count
        self._model = model
        self.engine: Engine | None = None
        self.catalog: IndexBackend | None = None
        self.index_threads = IndexThreads()  # the front ends' index calls (index/threads.py)
        self.explainer: Explainer | None = None
        self.metrics = Metrics(settings.access_log)
        self.metrics_port: int | None = None
        self.front_ends: dict[int, _FrontEnd] = {}
        self._keepers: list[asyncio.Task[None]] = []
        self._stopping = False
        self._opened = asyncio.Event()  # the engine and the index: the front ends may start

    @property
    def port(self) -> int:
        return self.settings.port

    @property
    def http_port(self) -> int | None:
        return self.settings.http_port

    async def start(self) -> int:
        """What EmbedSenseServer.start checks, then the engine and the index here, then the
        front ends, listening; the port they listen on. StartupError naming what is wrong."""
        s = self.settings
        try:
            s.api_keys()
            ServerTls.load(s.tls_cert, s.tls_key, s.tls_client_ca)
        except ValueError as err:
            raise StartupError(str(err)) from err
        made = check_data_dir(s.data_dir) if s.index_backend == "faiss" else []
        try:
            await self._start()
        except BaseException:
            await self.stop(0)
            remove_if_empty(made)
            raise
        return self.port

    async def _start(self) -> None:
        s = self.settings
        check_ports_free(s)  # before any process starts or the model loads
        any_free = [name for name in ("port", "http_port") if getattr(s, name) == 0]
        self.settings = dataclasses.replace(s, **free_ports(s.host, any_free))
        # Started first: they import their modules while the model loads here, and wait for
        # their "hello" answer.
        fronts = [await self._spawn(index) for index in range(self.count)]
        self.engine, self.catalog = await open_engine_and_index(s, self._model)
        # The limits as the engine sized them (max_memory): the front ends apply the same.
        self.settings = dataclasses.replace(self.settings, engine=self.engine.config)
        self.explainer = Explainer(self.engine.model, self.engine.runner)
        self.metrics.watch(self.engine, self.catalog)
        self.metrics.add_source(self._front_end_metrics)
        if s.metrics_port is not None:
            self.metrics_port = serve_metrics(self.metrics, s)
        self._opened.set()
        deadline = time.monotonic() + READY_TIMEOUT_S
        for front in fronts:
            failure = await self._started(front, deadline - time.monotonic())
            if failure:
                raise StartupError(failure)
        self._keepers = [asyncio.create_task(self._keep(i)) for i in self.front_ends]
        info = self.engine.info()
        log.info("serving %s (%d-dim, %s, %s) with %d front-end processes on %s%s",
                 info.model, info.dim, info.device, info.dtype, self.count,
                 grpc_address(s.host, self.port),
                 other_ports(s, self.http_port, self.metrics_port))  # fmt: skip

    def reload(self) -> None:
        """SIGHUP: each front end reads the key file and the TLS files again, and says in
        the log what it could not use (one that starts later reads them then)."""
        if not reloads(self.settings):
            return
        for front in self.front_ends.values():
            with contextlib.suppress(ProcessLookupError):
                front.process.send_signal(signal.SIGHUP)

    async def stop(self, grace: float | None = None) -> None:
        """Drain the front ends (SIGTERM: each finishes its calls), then close the engine
        and the index."""
        self._stopping = True
        for keeper in self._keepers:
            keeper.cancel()
        grace = self.settings.shutdown_grace_s if grace is None else grace
        stopping = time.monotonic()
        fronts = list(self.front_ends.values())
        for front in fronts:
            with contextlib.suppress(ProcessLookupError):
                front.process.send_signal(signal.SIGTERM)
        for front in fronts:
            try:
                await asyncio.wait_for(front.process.wait(), grace + 10)
            except TimeoutError:
                log.warning("front end %d did not stop: killed", front.index)
                front.process.kill()
                await front.process.wait()
            front.bridge.close()
        self.front_ends.clear()
        engine, catalog, self.engine, self.catalog = self.engine, self.catalog, None, None
        self.metrics.close()  # no scrape reads the index as it closes
        wait_s = close_wait_s(catalog.kind, grace, stopping) if catalog is not None else 0
        await asyncio.to_thread(self.index_threads.close, wait_s)
        if engine is not None:
            await asyncio.to_thread(engine.close)
        if catalog is not None:
            await asyncio.to_thread(catalog.close)

    # ------------------------------------------------------------ the front ends

    async def _spawn(self, index: int) -> _FrontEnd:
        mine, theirs = socket.socketpair()
        with theirs:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "embedsense.server.frontends.child", str(theirs.fileno()),
                pass_fds=(theirs.fileno(),), stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        ready: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

        def lost() -> None:
            if not ready.done():
                ready.set_result("it exited")

        bridge = await Bridge.open(mine, self._handlers(index, ready), lost)
        front = self.front_ends[index] = _FrontEnd(index, process, bridge, ready)
        return front

    @staticmethod
    async def _started(front: _FrontEnd, limit_s: float) -> str | None:
        """None once the front end listens, or why it did not start."""
        try:
            failure = await asyncio.wait_for(asyncio.shield(front.ready), max(limit_s, 0.1))
        except TimeoutError:
            failure = f"not listening after {limit_s:.0f} s"
        return f"front end {front.index} did not start: {failure}" if failure else None

    async def _keep(self, index: int) -> None:
        """Start the front end again whenever it exits while this process serves (waiting
        longer after each one that fails to start, up to MAX_RESTART_DELAY_S)."""
        delay = RESTART_DELAY_S
        while True:
            front = self.front_ends[index]
            code = await front.process.wait()
            front.bridge.close()
            if self._stopping:
                return
            log.error("front end %d (pid %d) exited with %s: starting another in %.0f s",
                      index, front.process.pid, code, delay)  # fmt: skip
            await asyncio.sleep(delay)
            front = await self._spawn(index)
            failure = await self._started(front, READY_TIMEOUT_S)
            if failure:
                # Stopped, so that the next turn of the loop starts another: one that never
                # listens would otherwise be waited on for good, its port share unserved.
                log.error("%s: stopping it to start another", failure)
                with contextlib.suppress(ProcessLookupError):
                    front.process.kill()
                delay = min(2 * delay, MAX_RESTART_DELAY_S)
            else:
                delay = RESTART_DELAY_S

    def _handlers(self, index: int, ready: asyncio.Future[str | None]) -> dict[str, Any]:
        async def hello() -> Facts:
            await self._opened.wait()
            assert self.engine is not None and self.catalog is not None
            model = self.engine.model
            root = logging.getLogger()
            return Facts(
                settings=self.settings,
                model=FrontModel(model.spec, model.tokenizer, model.dim, model.load_seconds),
                info=self.engine.info(),
                groups_tokenizing=self.engine.groups_tokenizing,
                index_kind=self.catalog.kind,
                index=index,
                json_logs=any(isinstance(h.formatter, JsonFormatter) for h in root.handlers),
                log_level=root.level,
            )

        async def started(failure: str | None) -> None:
            if not ready.done():
                ready.set_result(failure)

        return {"hello": hello, "ready": started, "rows": self._rows, "catalog": self._catalog,
                "collection": self._collection, "explain": self._explain,
                "metrics_page": self.metrics.page}  # fmt: skip

    # ------------------------------------------------------------ their calls

    async def _rows(
        self,
        rows: list[list[int]],
        layers: Any,
        level: int,
        timeout: float | None,
        pooled: Pooling | None,
    ) -> list[Any]:
        assert self.engine is not None
        return await self.engine.run_rows(rows, layers, Priority(level), timeout, pooled)

    async def _catalog(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if method not in CATALOG_CALLS:
            raise ValueError(f"no index call {method!r}")
        value = await self.index_threads.run(getattr(self.catalog, method), *args, **kwargs)
        # A collection stays here: the front end gets what it needs to name it.
        return (value.store_tokens, value.dim) if method == "get" else value

    async def _collection(
        self, name: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if method not in COLLECTION_CALLS:
            raise ValueError(f"no collection call {method!r}")
        assert self.catalog is not None
        catalog = self.catalog
        return await self.index_threads.run(
            lambda: getattr(catalog.get(name), method)(*args, **kwargs)
        )

    async def _explain(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        assert self.explainer is not None  # in_turn takes only the explainer's calls
        return await self.explainer.in_turn(method, *args, **kwargs)

    def _front_end_metrics(self) -> Iterable[Metric]:
        """Every front end's metrics (called in a scrape's thread); a front end that does not
        answer in time is left out of this scrape, rather than holding it and every next."""
        for number, front in list(self.front_ends.items()):
            try:
                yield from front.bridge.call_blocking(
                    "metric_families", timeout=FRONT_END_METRICS_TIMEOUT_S
                )
            except BridgeClosed:  # exited since: its counts went with it
                continue
            except TimeoutError:
                log.warning("front end %s gave no metrics in %s s", number,
                            FRONT_END_METRICS_TIMEOUT_S)  # fmt: skip


def free_ports(host: str, names: Iterable[str]) -> dict[str, int]:
    """A port free now on `host` for each name, for every front end to listen on: each
    probe is held until all are chosen, so no two names get the same port."""
    bare = bare_host(host)
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    chosen = {}
    with contextlib.ExitStack() as probes:
        for name in names:
            probe = probes.enter_context(socket.socket(family, socket.SOCK_STREAM))
            probe.bind((bare, 0))
            chosen[name] = probe.getsockname()[1]
    return chosen
