"""The running server: the model, the engine and the catalog behind one grpc.aio server,
with the standard health service, server reflection, an optional API key, and a graceful
shutdown (stop accepting, finish what is in flight, flush and snapshot the store)."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedsense.client.v1 import embedsense_pb2 as pb
from embedsense.client.v1 import embedsense_pb2_grpc
from embedsense.model import LoadedModel, load_model
from embedsense.server.api.service import Service
from embedsense.server.api.settings import ServerSettings
from embedsense.server.engine import Engine
from embedsense.server.index import Catalog

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EmbedSense"].full_name
# Load balancers and tools must work without the key.
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Every call but health and reflection needs `authorization: Bearer <key>`."""

    def __init__(self, api_key: str) -> None:
        self._expected = f"Bearer {api_key}".encode()

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return handler
        missing = not given

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "this server needs an API key: metadata 'authorization: Bearer <key>'"
                if missing
                else "the API key is wrong",
            )

        factory = (
            grpc.stream_unary_rpc_method_handler
            if handler.request_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        return factory(
            deny,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class EmbedSenseServer:
    def __init__(self, settings: ServerSettings, model: LoadedModel | None = None) -> None:
        self.settings = settings
        self._model = model
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self.engine: Engine | None = None
        self.catalog: Catalog | None = None

    async def start(self) -> int:
        """Load, warm up, open the data directory, listen; the port it listens on."""
        s = self.settings
        model = self._model or await asyncio.to_thread(load_model, s.model)
        self.engine = await asyncio.to_thread(Engine(s.engine, model).start)
        self.catalog = await asyncio.to_thread(Catalog, s.data_dir)
        interceptors = [ApiKeyInterceptor(s.api_key)] if s.api_key else []
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.max_receive_message_length", s.max_message_bytes),
            ],
        )
        embedsense_pb2_grpc.add_EmbedSenseServicer_to_server(
            Service(self.engine, self.catalog, s), self._server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self._server,
        )  # fmt: skip
        self.port = self._server.add_insecure_port(f"{s.host}:{s.port}")
        if not self.port:
            raise OSError(f"cannot listen on {s.host}:{s.port}")
        await self._server.start()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        info = self.engine.info()
        log.info(
            "serving %s (%d-dim, %s, %s) on %s:%d, data in %s%s", info.model, info.dim,
            info.device, info.dtype, s.host, self.port, s.data_dir,
            ", API key required" if s.api_key else "",
        )  # fmt: skip
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight ones finish (up to `grace` s), then close the
        engine and snapshot the store."""
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self.settings.shutdown_grace_s if grace is None else grace)
        self._server = None
        if self.engine is not None:
            await asyncio.to_thread(self.engine.close)
        if self.catalog is not None:
            await asyncio.to_thread(self.catalog.close)
        log.info("stopped; the store is flushed and snapshotted")

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(settings: ServerSettings) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    server = EmbedSenseServer(settings)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: finishing in-flight calls")
    await server.stop()
