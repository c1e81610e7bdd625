"""The running server: the model, the engine and the catalog behind one grpc.aio server,
with the standard health service, server reflection, an optional API key, and a graceful
shutdown (stop accepting, finish what is in flight, flush and snapshot the store)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedsense.model import LoadedModel, load_model
from embedsense.model.checkpoint import CheckpointError
from embedsense.model.hub import ModelNotAvailableError
from embedsense.proto.v1 import embedsense_pb2 as pb
from embedsense.proto.v1 import embedsense_pb2_grpc
from embedsense.server.api.collection_ops import CollectionOps
from embedsense.server.api.collection_routes import CollectionRoutes
from embedsense.server.api.explain_ops import ExplainOps
from embedsense.server.api.explain_routes import ExplainRoutes
from embedsense.server.api.http import HttpContext, HttpServer
from embedsense.server.api.interceptors import ApiKeyInterceptor, ApiKeys, DecodeGuard
from embedsense.server.api.observability import Metrics
from embedsense.server.api.openai_routes import OpenAIRoutes
from embedsense.server.api.openapi import DocsRoutes, openapi_document
from embedsense.server.api.sense_ops import SenseOps
from embedsense.server.api.sense_routes import SenseRoutes
from embedsense.server.api.service import Service, server_version, status_for
from embedsense.server.api.settings import ServerSettings, where
from embedsense.server.api.tei_routes import TEIRoutes
from embedsense.server.api.tls import ReloadableTls, ServerTls, TlsError
from embedsense.server.engine import Engine
from embedsense.server.explain import Explainer
from embedsense.server.index import IndexBackend, open_backend
from embedsense.server.index.errors import IndexStoreError
from embedsense.server.index.threads import close_wait_s
from embedsense.server.runner import resolve_device

log = logging.getLogger(__name__)

STOPPED = {  # the last log line, by index backend: what a restart finds
    "faiss": "stopped; the store is flushed and snapshotted",
    "milvus": "stopped; Milvus keeps the collections",
}
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbedSense"].full_name


class StartupError(Exception):
    """The server cannot start: a bad data directory, an unknown model, a port in use."""


@dataclass(frozen=True)
class Parts:
    """What the API serves from: in a front-end process, the engine process's (frontends/)."""

    engine: Engine
    catalog: IndexBackend
    explainer: Explainer
    name: str  # the front end's, added to the replica's name


def _start_engine(s: ServerSettings, model: LoadedModel | None) -> Engine:
    """Load the model (unless given), build the engine and warm it up, all on one thread:
    the one whose OpenMP team Engine.start hands back (openmp.py)."""
    ours = model is None
    try:
        model = model or load_model(s.model)
    except (ModelNotAvailableError, CheckpointError, OSError, ValueError) as err:
        raise StartupError(f"model {s.model!r}: {err}") from err
    return Engine(s.engine, model, owns_model=ours).start()


async def open_engine_and_index(
    settings: ServerSettings, model: LoadedModel | None = None
) -> tuple[Engine, IndexBackend]:
    """Load and warm the model, start the engine, open the index; StartupError naming what
    is wrong (the engine closed again if the index fails)."""
    s = settings
    engine = await asyncio.to_thread(_start_engine, s, model)
    try:
        catalog = await asyncio.to_thread(open_backend, s.backend())
    except (sqlite3.Error, OSError, IndexStoreError, ValueError) as err:
        engine.close()
        where = s.data_dir if s.index_backend == "faiss" else s.milvus_uri
        raise StartupError(f"index ({s.index_backend}, {where}): {err}") from err
    return engine, catalog


class EmbedSenseServer:
    def __init__(
        self,
        settings: ServerSettings,
        model: LoadedModel | None = None,
        parts: Parts | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self._model = model
        self._parts = parts
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._service: Service | None = None
        self._health = health.aio.HealthServicer()
        self._health_change: asyncio.Task[None] | None = None
        self.engine: Engine | None = None
        self.catalog: IndexBackend | None = None
        self.explainer: Explainer | None = None
        self.metrics = metrics or Metrics(settings.access_log)
        self.metrics_port: int | None = None
        self.http: HttpServer | None = None
        self.http_port: int | None = None
        self.api_keys: ApiKeys | None = None
        self.tls: ReloadableTls | None = None

    async def start(self) -> int:
        """Check the API keys, the data directory and the port, load and warm the model, open
        the store, listen; the port it listens on. Raises StartupError, fast, naming what is
        wrong; a data directory it made for nothing is removed again."""
        s = self.settings
        try:
            keys = s.api_keys()
            tls = ServerTls.load(s.tls_cert, s.tls_key, s.tls_client_ca)
        except ValueError as err:
            raise StartupError(str(err)) from err
        # Before the first await: a SIGHUP while the model loads replaces what will serve.
        self.api_keys = ApiKeys(keys) if keys else None
        self.tls = ReloadableTls(tls) if tls else None
        local_store = s.index_backend == "faiss" and self._parts is None
        made = check_data_dir(s.data_dir) if local_store else []
        try:
            return await self._start()
        except BaseException:
            remove_if_empty(made)
            raise

    async def _start(self) -> int:
        s, parts, api_keys = self.settings, self._parts, self.api_keys
        if parts is None:  # the ports, before minutes of loading the model
            check_ports_free(s)
            self.engine, self.catalog = await open_engine_and_index(s, self._model)
            self.metrics.watch(self.engine, self.catalog)
            explainer = Explainer(self.engine.model, self.engine.runner)
        else:  # its siblings listen on the port already
            self.engine, self.catalog, explainer = parts.engine, parts.catalog, parts.explainer
        # The key first; the guard last, next to the service, whose handlers it keeps.
        interceptors = [ApiKeyInterceptor(api_keys, self.metrics)] if api_keys else []
        interceptors.append(DecodeGuard())
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.max_receive_message_length", s.max_message_bytes),
                # Front-end processes share the port; one server alone is kept from a port
                # another has by check_port_free.
                ("grpc.so_reuseport", int(parts is not None)),
                # No grpc.max_concurrent_streams: it would cap every call of a connection, not
                # the Upsert streams max_concurrent_streams counts (the service does).
            ],
        )
        self.explainer = explainer
        self._service = service = Service(self.engine, self.catalog, s, self.metrics, explainer)
        embedsense_pb2_grpc.add_EmbedSenseServicer_to_server(service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self._server,
        )  # fmt: skip
        address = grpc_address(s.host, s.port)
        try:
            self.port = (
                self._server.add_secure_port(address, self.tls.grpc_credentials())
                if self.tls
                else self._server.add_insecure_port(address)
            )
        except RuntimeError as err:
            self.port = 0
            reason = str(err)
        else:
            reason = "the port is taken, or the address is not this machine's"
        if not self.port:
            await asyncio.to_thread(self.engine.close)
            if parts is None:
                await asyncio.to_thread(self.catalog.close)
            raise StartupError(f"cannot listen on {address} (gRPC, {where('port')}): {reason}")
        service.replica = s.replica or f"{socket.gethostname()}:{self.port}"
        if parts is not None:
            service.replica += f"/{parts.name}"
        await self._server.start()
        if s.metrics_port is not None and parts is None:  # a front end's: the engine's port
            try:
                self.metrics_port = serve_metrics(self.metrics, s)
            except StartupError:
                await self.stop(0)
                raise
        http_tls = None
        if s.http_port is not None:
            self.http = http_server(self.engine, s, self.metrics, api_keys, service.ops,
                                    service.sense_ops, service.explain_ops)  # fmt: skip
            http_tls = self.tls.ssl_context() if self.tls and not s.http_insecure else None
            if self.tls and not http_tls:
                log.warning(
                    "the HTTP port serves plain text while gRPC uses TLS (http_insecure): "
                    "API keys and texts sent to it cross the network readable"
                )
            try:
                self.http_port = await self.http.start(
                    bare_host(s.host), s.http_port, http_tls, reuse_port=parts is not None
                )
            except OSError as err:
                await self.stop(0)
                raise StartupError(
                    f"cannot serve HTTP on {grpc_address(s.host, s.http_port)} "
                    f"({where('http_port')}): {err.strerror or err}"
                ) from err
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._not_serving_once_broken(self.engine)
        info = self.engine.info()
        log.info(
            "serving %s (%d-dim, %s, %s: %s) on %s%s as %s, index %s%s%s", info.model,
            info.dim, info.device, info.dtype, info.dtype_reason, grpc_address(s.host, self.port),
            " with TLS" if s.tls_cert else "",
            service.replica,
            f"faiss in {s.data_dir}" if s.index_backend == "faiss" else f"milvus at {s.milvus_uri}",
            f", API keys: {api_keys.count}" if api_keys else "",
            other_ports(s, self.http_port, self.metrics_port, http_tls is not None),
        )  # fmt: skip
        return self.port

    def reload(self) -> None:
        """SIGHUP: read the API key file and the TLS files again. From the next call on, a
        call needs one of the file's keys (or of --api-key's); from the next connection on,
        both ports serve the new certificate. Files that cannot be used leave what is in use,
        and the log says why. Before the start has read the files, nothing: it reads them."""
        if not reloads(self.settings):
            return
        keys = read_keys_again(self.settings)
        if keys is not None and self.api_keys is not None:
            self.api_keys.replace(keys)
            log.info("API keys read again from %s: %d in use", self.settings.api_key_file,
                     len(keys))  # fmt: skip
        tls = read_tls_again(self.settings)
        if tls is not None and self.tls is not None:
            self.tls.replace(tls)
            log.info("TLS files read again: %s from the next connection on", tls.cert)

    def _not_serving_once_broken(self, engine: Engine) -> None:
        """Health NOT_SERVING once the engine is broken (it answers every call UNAVAILABLE
        until a restart): load balancers send elsewhere, orchestrators restart it."""
        loop = asyncio.get_running_loop()

        async def not_serving() -> None:
            for name in ("", SERVICE_NAME):
                await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

        def start() -> None:
            self._health_change = loop.create_task(not_serving())  # kept: not collected

        def tell_loop(why: str) -> None:  # from the engine's thread that failed
            with contextlib.suppress(RuntimeError):  # the loop has ended: nothing to tell
                loop.call_soon_threadsafe(start)

        engine.when_broken(tell_loop)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish (up to `grace` s), then close the
        engine and snapshot the store."""
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        if self.http is not None:
            self.http.draining = True  # 503 from now on, while in-flight calls finish
        grace = self.settings.shutdown_grace_s if grace is None else grace
        stopping = time.monotonic()
        draining = [self._server.stop(grace)]
        if self.http is not None:  # HTTP's requests get the same grace, its port still open
            draining.append(self.http.drain(grace))
        await asyncio.gather(*draining)
        self._server = None
        if self.http is not None:
            await self.http.stop()
        self.metrics.close()  # no scrape reads the index as it closes
        if self._service is not None:  # its threads' work ends before the index closes
            await asyncio.to_thread(self._service.senses.close)
            wait_s = close_wait_s(self._service.catalog.kind, grace, stopping)
            await asyncio.to_thread(self._service.index_threads.close, wait_s)
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
        if self.catalog is not None:
            await asyncio.to_thread(self.catalog.close)
        log.info(STOPPED.get(self.catalog.kind if self.catalog else "", "stopped"))

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def check_data_dir(directory: Path) -> list[Path]:
    """Make the data directory if needed and check that it is writable; the directories
    made here, deepest first (a failed start removes those still empty)."""
    made = [d for d in (directory, *directory.parents) if not d.exists()]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".embedsense-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        remove_if_empty(made)
        raise StartupError(
            f"data directory {directory} is not a writable directory: {err.strerror or err}"
        ) from err
    return made


def bare_host(host: str) -> str:
    """A host as sockets take it: an IPv6 address without the brackets of "[::1]"."""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def other_ports(
    s: ServerSettings, http_port: int | None, metrics_port: int | None, https: bool = False
) -> str:
    """What the start log says of the ports beside gRPC's, each with its address:
    ", HTTP on 127.0.0.1:8080, metrics on 127.0.0.1:9090" (or less)."""
    said = ""
    if http_port:
        said += f", HTTP{'S' if https else ''} on {grpc_address(s.host, http_port)}"
    if metrics_port:
        said += f", metrics on {grpc_address(s.metrics_host or s.host, metrics_port)}"
    return said


def grpc_address(host: str, port: int) -> str:
    """host:port as gRPC (and a URL) takes it: an IPv6 address in brackets, "[::1]:50051"."""
    host = bare_host(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_ports_free(s: ServerSettings) -> None:
    """StartupError, naming the flag, unless the gRPC, HTTP and metrics ports can be had."""
    check_port_free(s.host, s.port, f"gRPC, {where('port')}")
    check_port_free(s.host, s.http_port, f"HTTP, {where('http_port')}")
    check_port_free(s.metrics_host or s.host, s.metrics_port, f"metrics, {where('metrics_port')}")


def serve_metrics(metrics: Metrics, s: ServerSettings) -> int:
    """The metrics port served, as its settings ask; StartupError, naming the flag, when it
    was taken since check_ports_free looked."""
    host = bare_host(s.metrics_host or s.host)
    try:
        return metrics.serve(host, s.metrics_port)
    except OSError as err:
        raise StartupError(
            f"cannot serve metrics on {grpc_address(host, s.metrics_port)} "
            f"({where('metrics_port')}): {err.strerror or err}"
        ) from err


def check_port_free(host: str, port: int | None, what: str = "") -> None:
    """Before minutes of model loading, learn whether the port can be had at all; `what`
    names the listener in the StartupError: "HTTP, --http-port, EMBEDSENSE_HTTP_PORT"."""
    if not port:
        return
    bare = bare_host(host)
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bare, port))
        except OSError as err:
            named = f" ({what})" if what else ""
            raise StartupError(
                f"cannot listen on {grpc_address(bare, port)}{named}: {err.strerror or err}"
            ) from err


def remove_if_empty(directories: list[Path]) -> None:
    """Remove directories a failed start made, deepest first, while they are empty: one that
    something was written into since (rmdir refuses it) stays, and so do its parents."""
    for directory in directories:
        try:
            directory.rmdir()
        except FileNotFoundError:  # never made: the mkdir failed below a parent it made
            continue
        except OSError:
            return


def http_server(
    engine: Engine,
    settings: ServerSettings,
    metrics: Metrics,
    keys: ApiKeys | None,
    ops: CollectionOps | None = None,
    senses: SenseOps | None = None,
    explanations: ExplainOps | None = None,
) -> HttpServer:
    """The OpenAI and TEI routes over the same engine, limits, keys and metrics, the
    collections' REST routes over `ops` (the gRPC service's), the senses' and the
    explanations' over `senses` and `explanations` (the service's too), /metrics, and the
    OpenAPI document and docs page generated from the routes."""
    context = HttpContext(engine, settings, _status_name)
    server = HttpServer(context, metrics, keys)
    server.add_routes(OpenAIRoutes(context).routes())
    if ops is not None:
        server.add_routes(CollectionRoutes(ops).routes())
    if senses is not None:
        server.add_routes(SenseRoutes(senses).routes())
    if explanations is not None:
        server.add_routes(ExplainRoutes(explanations).routes())
    tei = TEIRoutes(context, server).routes()
    server.add_routes(tei)
    dialect = tei[0].dialect
    server.add_routes([server.metrics_route(dialect)])
    title = f"embedsense: {context.model_name}"
    document = openapi_document(
        server.routes,
        context.limits,
        title=title,
        version=server_version(),
        auth=keys is not None,
        default_role=settings.default_prompt_name,
        dim=engine.model.dim,
    )
    server.add_routes(DocsRoutes(document, title).routes(dialect))
    return server


def _status_name(error: BaseException) -> str | None:
    code = status_for(error)
    return code.name if code is not None else None


async def serve(settings: ServerSettings) -> None:
    """Run until SIGINT or SIGTERM, then drain and stop; a second signal exits at once.
    With several front ends (settings.frontends), this process runs the engine and the
    index, and front-end processes serve the ports (frontends/host.py)."""
    count = front_end_count(settings)
    if count > 1:
        from embedsense.server.frontends.host import serve_with_front_ends  # it imports us

        await serve_with_front_ends(settings, count)
        return
    stop = stop_on_signals()
    server = EmbedSenseServer(settings)
    reload_on_hangup(server.reload)
    await server.start()
    await stop.wait()
    log.info("shutting down: finishing in-flight calls (up to %.0f s)", settings.shutdown_grace_s)
    await server.stop()


def read_keys_again(settings: ServerSettings) -> list[str] | None:
    """settings' keys, read again for SIGHUP; None where there is no key file, or (with a
    log line saying why) it cannot be read or holds no key."""
    if settings.api_key_file is None:
        return None
    try:
        return settings.api_keys()
    except ValueError as err:
        log.error("SIGHUP: %s; the keys in use stay", err)
        return None


def read_tls_again(settings: ServerSettings) -> ServerTls | None:
    """settings' TLS files, read again for SIGHUP; None where there is no TLS, or (with a
    log line saying why) the files cannot be used."""
    if settings.tls_cert is None:
        return None
    try:
        return ServerTls.load(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    except TlsError as err:
        log.error("SIGHUP: %s; the TLS in use stays", err)
        return None


def reloads(settings: ServerSettings) -> bool:
    """Whether SIGHUP has files to read again; where not, the log says so."""
    if settings.api_key_file is None and settings.tls_cert is None:
        log.warning("SIGHUP: no API key file or TLS files to read again; nothing changes")
        return False
    return True


def front_end_count(settings: ServerSettings) -> int:
    """settings.frontends as a number: auto is half the cores on a GPU (the other half
    for the engine process and the tokenizer threads), one on a CPU, whose cores belong to
    the model."""
    if settings.frontends != "auto":
        return int(settings.frontends)
    if resolve_device(settings.engine.device).type != "cuda":
        return 1
    return max(1, (os.cpu_count() or 1) // 2)


def reload_on_hangup(reload: Callable[[], None]) -> None:
    """SIGHUP calls `reload` (the key and TLS files read again). Set before the start, whose
    ports may serve already: SIGHUP's default is to exit."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)


def stop_on_signals() -> asyncio.Event:
    """An event the first SIGINT or SIGTERM sets; a second one exits at once, without
    draining. Set up before the server starts: a signal that comes while it starts (its
    ports may serve already) stops it once started, drained, rather than killing it."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def second_signal() -> None:
        log.warning("second signal: exiting now, without draining")
        os._exit(1)

    def first_signal() -> None:
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, second_signal)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, first_signal)
    return stop
