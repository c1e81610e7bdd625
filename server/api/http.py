"""HTTP beside gRPC: the OpenAI and text-embeddings-inference shapes, served from the same
process and event loop, over the same engine, limits, API keys and metrics.

The HTTP library is aiohttp: an asyncio server that runs on the loop grpc.aio already runs
(an AppRunner and a TCPSite; no second loop, no thread hop per request, no ASGI server to
embed), with the request-size limit enforced while the body is read. As in
text-embeddings-inference's router, handlers only translate shapes and errors; the engine
does the work. Routes: openai_routes.py and tei_routes.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from embedsense.model import TextRole
from embedsense.model.tokenizer import TextTooLongError
from embedsense.server.api.checks import check_text
from embedsense.server.api.interceptors import ApiKeys
from embedsense.server.api.observability import Metrics, new_request_id, request_id
from embedsense.server.api.settings import ServerSettings
from embedsense.server.engine import Embedding, Engine, InvalidRequest

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# gRPC statuses, as the service's error mapping gives them, to HTTP's.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "UNAUTHENTICATED": 401,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}  # fmt: skip
RETRY_AFTER_S = "1"  # what a 429 or 503 suggests: the engine's queue drains in about that


class ApiError(Exception):
    """An HTTP error: its status, a message for the caller, and a kind each API names."""

    def __init__(self, status: int, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind


class Dialect(Protocol):
    """How one API answers an error: its status (APIs differ: a text over the model's
    length is OpenAI's 400 and text-embeddings-inference's 413) and its JSON body."""

    def error(self, error: ApiError) -> tuple[int, dict[str, Any]]: ...


@dataclass
class HttpContext:
    """What the route handlers share: the engine and the limits of the gRPC API."""

    engine: Engine
    settings: ServerSettings
    to_status: Callable[[BaseException], str | None]  # an exception's gRPC status name

    @property
    def model_name(self) -> str:
        return self.engine.model.spec.name

    async def embed(
        self,
        texts: list[str] | list[list[int]],
        *,
        role: TextRole,
        normalize: bool = True,
        truncate: bool = False,
        truncate_hint: str = "",
    ) -> list[Embedding]:
        """Texts (or token-id lists) checked as the gRPC API checks them, then embedded by
        the shared engine. A text over the model's positions is an error naming it, with
        `truncate_hint`: what this API offers to cut it."""
        limit = self.settings.max_texts_per_request
        if not texts:
            raise ApiError(400, "at least one input is needed", "empty")
        if len(texts) > limit:
            raise ApiError(413, f"{len(texts)} inputs; the limit is {limit} per request "
                           "(max_texts_per_request)", "too_many")  # fmt: skip
        as_ids = isinstance(texts[0], list)
        if not as_ids:
            for i, text in enumerate(texts):
                check_text(text, f"input[{i}]", self.settings.max_text_chars)
        try:
            return await self.engine.embed(
                [] if as_ids else texts, role=role, normalize=normalize, truncate=truncate,
                token_ids=texts if as_ids else None,
            )  # fmt: skip
        except InvalidRequest as err:
            if not isinstance(long := err.__cause__, TextTooLongError):
                raise
            raise ApiError(
                400, f"input[{long.index}] is {long.n_tokens} tokens; {self.model_name} takes "
                f"{long.limit}{truncate_hint}", "too_long",
            ) from None  # fmt: skip


async def read_json(request: web.Request, timeout_s: float) -> Any:
    """The body as JSON: 413 over the size limit (aiohttp stops reading there), 408 when it
    arrives too slowly, 400 when it is not JSON."""
    try:
        body = await asyncio.wait_for(request.read(), timeout_s)
    except TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {timeout_s:.0f} s",
                       "timeout") from None  # fmt: skip
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the body is not JSON: {err}", "invalid_json") from None


Route = tuple[str, str, Handler, Dialect]  # method, path, handler, its API's dialect


class HttpServer:
    """The aiohttp application on the gRPC server's loop."""

    def __init__(
        self,
        settings: ServerSettings,
        metrics: Metrics,
        keys: ApiKeys | None,
        to_status: Callable[[BaseException], str | None],
        open_paths: tuple[str, ...] = ("/health",),
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.keys = keys
        self.to_status = to_status
        self.open_paths = open_paths
        self.draining = False
        self._dialects: dict[str, Dialect] = {}
        self.app = web.Application(
            client_max_size=settings.max_message_bytes, middlewares=[self._around]
        )
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def add_routes(self, routes: list[Route]) -> None:
        for method, path, handler, dialect in routes:
            self.app.router.add_route(method, path, handler)
            self._dialects[path] = dialect

    def _dialect(self, request: web.Request) -> Dialect:
        """The dialect of the route, or for an unknown path the one of its API's prefix."""
        resource = request.match_info.route.resource
        if resource is not None and resource.canonical in self._dialects:
            return self._dialects[resource.canonical]
        prefixed = [d for p, d in self._dialects.items() if p != "/" and
                    request.path.startswith(p.rsplit("/", 1)[0] + "/")]  # fmt: skip
        return prefixed[0] if prefixed else next(iter(self._dialects.values()))

    @web.middleware
    async def _around(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Request id, API key, draining, errors in the route's own shape, metrics and the
        access log: what the gRPC interceptors and the `rpc` wrapper do for RPCs."""
        rid = new_request_id([("x-request-id", request.headers.get("x-request-id", ""))])
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        try:
            response = await self._guarded(request, handler)
            status = response.status
        except ApiError as err:
            status, body = self._dialect(request).error(err)
            response = web.json_response(body, status=status)
            if status in (429, 503):
                response.headers["Retry-After"] = RETRY_AFTER_S
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unknown"
            elapsed = time.perf_counter() - started
            self.metrics.observe_request(f"HTTP {request.method} {route}", str(status), elapsed)
            request_id.reset(token)
        response.headers["x-request-id"] = rid
        return response

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.draining:
            raise ApiError(503, "the server is shutting down", "unavailable")
        if self.keys is not None and request.path not in self.open_paths:
            refusal = self.keys.refusal(request.headers.get("Authorization", ""))
            if refusal is not None:
                raise ApiError(401, refusal, "unauthorized")
        try:
            return await handler(request)
        except ApiError:
            raise
        except web.HTTPRequestEntityTooLarge as err:
            raise ApiError(413, f"the body is over {self.settings.max_message_bytes} bytes "
                           "(max_message_bytes)", "too_large") from err  # fmt: skip
        except web.HTTPException as err:  # aiohttp's own: an unknown route, a wrong method
            kind = "not_found" if err.status == 404 else "http"
            raise ApiError(err.status, err.reason, kind) from None
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - every error gets a status, never a crash
            code = self.to_status(err)
            if code is None:
                log.exception("%s %s failed", request.method, request.path)
                raise ApiError(500, f"{type(err).__name__}: {err}", "internal") from err
            kind = "too_long" if isinstance(err.__cause__, TextTooLongError) else code.lower()
            raise ApiError(HTTP_STATUS[code], str(err), kind) from err

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen on host:port (0: any free port), under `tls` when given; the port."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=tls)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
