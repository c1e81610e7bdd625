"""HTTP beside gRPC: the OpenAI and text-embeddings-inference shapes, served from the same
process and event loop, over the same engine, limits, API keys and metrics.

The HTTP library is aiohttp: an asyncio server that runs on the loop grpc.aio already runs
(an AppRunner and a TCPSite; no second loop, no thread hop per request, no ASGI server to
embed). As in text-embeddings-inference's router, each route is a typed request model, a
typed reply model and a thin handler that only translates shapes and errors: the checks
(checks.py, shared with gRPC) and the engine do the rest. The same route table gives the
OpenAPI document (openapi.py).

Around every handler: the body read within its limit and the in-flight budget (bodies.py),
a large body parsed and a large reply written in a worker thread (the loop keeps serving
gRPC, HTTP and health meanwhile), a deadline, and cancellation when the client hangs up
(the engine then drops the request's queued rows, as it does for gRPC). Routes:
openai_routes.py and tei_routes.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, RootModel, ValidationError

from embedsense.model import TextRole, TokenizedText
from embedsense.server.api.bodies import BodyBudget, BodyError, parse_json, read_body
from embedsense.server.api.checks import (
    PRIORITY_HEADER,
    Limits,
    Truncation,
    check_reply_tokens,
    check_texts,
    check_token_ids,
    priority_header,
    role_named,
    truncation_of,
)
from embedsense.server.api.cors import CorsPolicy, refused_origin
from embedsense.server.api.http_errors import ApiError, Dialect, from_exception, from_validation
from embedsense.server.api.interceptors import ApiKeys
from embedsense.server.api.observability import Metrics, new_request_id, request_id
from embedsense.server.api.settings import ServerSettings
from embedsense.server.engine import Embedding, Engine, TextTooLong, priority_scope

log = logging.getLogger(__name__)
_Result = TypeVar("_Result")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# (the request, its body as the route's model, or None) -> a reply model, or a response
RouteHandler = Callable[[web.Request, Any], Awaitable[Any]]

RETRY_AFTER_S = "1"  # what a 429 or 503 suggests: the engine's queue drains in about that
# Bodies up to this size are parsed, and their replies written, on the loop: a single text
# or a few (a hop to a thread would cost more than the work). Larger ones in a thread.
INLINE_BODY_BYTES = 16 * 1024
# JSON values a request may carry beyond its inputs: its other fields.
OTHER_VALUES = 1024
SHUTDOWN_TIMEOUT_S = 1.0  # after the grace: a reply being written finishes, a handler is cancelled
PARSE_THREADS = 2  # parsing holds the GIL: more threads would only queue on it


@dataclass(frozen=True)
class HttpRoute:
    """One route: its handler, its API's dialect, and what the OpenAPI document says of it
    (the body and reply models, the error statuses it can answer)."""

    method: str
    path: str
    handler: RouteHandler
    dialect: Dialect
    summary: str
    description: str = ""
    body: type[BaseModel] | None = None
    reply: type[BaseModel] | None = None
    reply_media: str = "application/json"
    errors: tuple[int, ...] = ()
    open: bool = False  # served without an API key (health, the docs)
    tag: str = ""
    documented: bool = True
    heavy_reply: bool = False  # a reply that can be large for a small body: written off the loop
    prioritized: bool = False  # embeds: takes the X-Priority header (checks.PRIORITY_HEADER)
    keys_once: bool = False  # a body of filters, metadata, patches: a key given twice is a 400


@dataclass(frozen=True)
class BuiltOffLoop:
    """A large reply a handler hands back unbuilt (search, scroll, get): sizing it against
    the reply limit, building it and writing its JSON are one step in the HTTP worker
    threads, one hop off the loop rather than one to build and another to write."""

    build: Callable[[], BaseModel]


@dataclass
class HttpContext:
    """What the route handlers share: the engine, the settings, and the request checks
    (checks.py, the ones gRPC calls) in front of every engine call."""

    engine: Engine
    settings: ServerSettings
    to_status: Callable[[BaseException], str | None]  # an exception's gRPC status name
    limits: Limits = field(init=False)
    executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.limits = Limits.of(self.settings)
        self.executor = ThreadPoolExecutor(PARSE_THREADS, thread_name_prefix="embedsense-http")

    @property
    def model_name(self) -> str:
        return self.engine.model.spec.name

    @property
    def special_ids(self) -> frozenset[int]:
        return self.engine.model.tokenizer.special_ids

    async def off_loop(self, work: Callable[[], _Result]) -> _Result:
        """work() in the HTTP worker threads, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    def role(self, name: str | None, field: str) -> TextRole:
        """The role a request names, or the server's default_prompt_name."""
        return role_named(name, field, self.settings.default_prompt_name)

    def truncation(self, truncate: bool | None, direction: str = "right") -> Truncation:
        """A request's truncation, or the server's auto_truncate."""
        return truncation_of(truncate, direction, self.settings.auto_truncate)

    async def embed(
        self,
        inputs: list[str] | list[list[int]],
        field: str,
        *,
        role: TextRole,
        truncation: Truncation,
        normalize: bool = True,
        token_vectors: bool = False,
        max_tokens: int | None = None,
        truncate_hint: str = "",
        name_of: Callable[[int], str] | None = None,
    ) -> list[Embedding]:
        """Texts (or token-id lists) checked as the gRPC API checks them, then embedded by
        the shared engine. A text over the model's positions is an error naming it (by
        `name_of` its index, else as `field`[index]), with `truncate_hint`: what this API
        offers to cut it."""
        as_ids = bool(inputs) and isinstance(inputs[0], list)
        if as_ids:
            ids, texts = check_token_ids(inputs, field, self.limits, self.vocab_size), []
        else:
            ids, texts = None, check_texts(inputs, field, self.limits)  # type: ignore[arg-type]
        try:
            return await self.engine.embed(
                texts,
                role=role,
                normalize=normalize,
                truncate=truncation.cut,
                truncation_direction=truncation.direction,
                token_ids=ids,
                token_vectors=token_vectors,
                max_tokens=max_tokens,
            )
        except TextTooLong as long:
            where = name_of(long.index) if name_of else f"{field}[{long.index}]"
            raise ApiError(
                400,
                f"{where} is {long.n_tokens} tokens; {self.model_name} takes "
                f"{long.limit}{truncate_hint}",
                "too_long",
                field,
            ) from None

    async def tokenize(self, texts: list[str], field: str, role: TextRole) -> list[TokenizedText]:
        """Texts checked as gRPC Tokenize checks them, tokenized at any length; the tokens of
        all together at most max_queued_tokens (what bounds the reply)."""
        tokenized = await self.engine.tokenize(check_texts(texts, field, self.limits), role)
        check_reply_tokens(sum(map(len, tokenized)), field, self.limits)
        return tokenized

    async def decode(self, batch: list[list[int]], field: str, skip_special: bool) -> list[str]:
        checked = check_token_ids(batch, field, self.limits, self.vocab_size)
        return await self.engine.decode(checked, skip_special)

    @property
    def vocab_size(self) -> int:
        return self.engine.model.tokenizer.vocab_size


def _plain(value: Any) -> Any:
    """What orjson cannot write by itself: reply models (fields as they are; numpy arrays
    in them are written as numbers, float32 in its shortest form)."""
    if isinstance(value, RootModel):
        return value.root
    if isinstance(value, BaseModel):
        return value.__dict__
    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def float32s(values: np.ndarray, encoding: str) -> np.ndarray | str:
    """Numbers of a reply as its request's encoding_format asks: "float", as they are (JSON
    numbers); "base64", their little-endian float32 bytes, row-major, in base64 (what the
    openai package decodes, and a browser reads as a Float32Array)."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode()
    return values


def encode_reply(reply: Any) -> bytes:
    """A reply model as JSON. A list's items are written one by one: a large reply yields
    the GIL between them, so the loop's thread gets its turns while a worker writes it."""
    option = orjson.OPT_SERIALIZE_NUMPY
    if isinstance(reply, RootModel) and isinstance(reply.root, list) and len(reply.root) > 1:
        parts = [orjson.dumps(item, default=_plain, option=option) for item in reply.root]
        return b"[" + b",".join(parts) + b"]"
    return orjson.dumps(reply, default=_plain, option=option)


def json_response(payload: bytes, status: int = 200) -> web.Response:
    return web.Response(body=payload, status=status, content_type="application/json")


class HttpServer:
    """The aiohttp application on the gRPC server's loop."""

    def __init__(self, context: HttpContext, metrics: Metrics, keys: ApiKeys | None) -> None:
        self.context = context
        self.settings = settings = context.settings
        self.metrics = metrics
        self.keys = keys
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()  # set while no request is in flight
        self._idle.set()
        self.routes: list[HttpRoute] = []
        self._by_path: dict[str, HttpRoute] = {}
        self.body_limit = settings.http_body_limit()
        self.budget = BodyBudget(settings.http_bytes_in_flight())
        limits = context.limits
        self.max_values = limits.max_texts + limits.max_request_tokens + OTHER_VALUES
        self.cors = CorsPolicy.parse(settings.cors_allow_origin)
        self.app = web.Application(client_max_size=self.body_limit, middlewares=[self._around])
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def add_routes(self, routes: list[HttpRoute]) -> None:
        for route in routes:
            endpoint = self._endpoint(route)
            added = self.app.router.add_route(route.method, route.path, endpoint)
            if route.method == "GET":  # HEAD wherever GET (RFC 9110 9.1): aiohttp drops the body
                self.app.router.add_route("HEAD", route.path, endpoint)
            self.routes.append(route)
            if added.resource is not None:
                self._by_path[added.resource.canonical] = route

    def _route(self, request: web.Request) -> HttpRoute | None:
        resource = request.match_info.route.resource
        return self._by_path.get(resource.canonical) if resource is not None else None

    def _dialect(self, request: web.Request) -> Dialect:
        """The dialect of the route; for an unknown path (or method), the one of the route
        whose path shares the most leading segments with it (/v1/collections/...: the REST
        API's; /v1/...: OpenAI's), else the one of "/" (TEI's)."""
        if (route := self._route(request)) is not None:
            return route.dialect
        asked = request.path.strip("/").split("/")

        def shared(route: HttpRoute) -> int:
            segments = route.path.strip("/").split("/")
            same = (a == b or b.startswith("{") for a, b in zip(asked, segments, strict=False))
            return sum(1 for _ in itertools.takewhile(bool, same))

        nearest = max(self.routes, key=shared)  # the first of equals
        fallback = self._by_path.get("/") or self.routes[0]
        return (nearest if shared(nearest) else fallback).dialect

    # ------------------------------------------------------------ one route

    def _endpoint(self, route: HttpRoute) -> Handler:
        """The aiohttp handler of a route: its body read within bounds and parsed into its
        model, the handler under the request's deadline, its reply written as JSON."""

        async def endpoint(request: web.Request) -> web.StreamResponse:
            deadline = asyncio.get_running_loop().time() + self.settings.http_deadline_s
            # Checked before the body is read: a wrong header costs no parsing.
            asked = request.headers.get(PRIORITY_HEADER) if route.prioritized else None
            level = priority_header(asked)
            claim = self.budget.claim()
            try:
                large = False
                body = None
                if route.body is not None:
                    raw = await read_body(
                        request, self.body_limit, claim, self.settings.http_body_timeout_s
                    )
                    large = len(raw) > INLINE_BODY_BYTES
                    parse = functools.partial(self._parse, raw, route.body, route.keys_once)
                    body = await self.context.off_loop(parse) if large else parse()
                    del raw, parse  # the parsed body is what the request holds from here
                with priority_scope(level):  # the engine reads it from the context
                    reply = await self._within_deadline(deadline, route.handler(request, body))
                if isinstance(reply, web.StreamResponse):
                    return reply
                if isinstance(reply, BuiltOffLoop):
                    built = reply.build
                    return json_response(await self.context.off_loop(
                        lambda: encode_reply(built())))  # fmt: skip
                if large or route.heavy_reply:
                    return json_response(await self.context.off_loop(lambda: encode_reply(reply)))
                return json_response(encode_reply(reply))
            except BodyError as err:
                error = ApiError(err.status, str(err), err.kind)
                error.headers.update(err.headers)
                raise error from None
            finally:
                claim.release()

        return endpoint

    def _parse(self, raw: bytearray, model: type[BaseModel], keys_once: bool) -> BaseModel:
        try:
            return model.model_validate(parse_json(raw, self.max_values, keys_once))
        except ValidationError as err:
            raise from_validation(err, tagged=issubclass(model, RootModel)) from None

    async def _within_deadline(self, deadline: float, work: Awaitable[Any]) -> Any:
        """The handler's work, cancelled at the request's deadline (http_deadline_s from its
        arrival, in the loop's time): cancelling drops its rows still queued in the engine."""
        try:
            async with asyncio.timeout_at(deadline):
                return await work
        except TimeoutError:
            raise ApiError(
                504,
                f"not done within the {self.settings.http_deadline_s:.0f} s deadline "
                "(http_deadline_s)",
                "deadline_exceeded",
            ) from None

    # ------------------------------------------------------------ around every request

    @web.middleware
    async def _around(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Request id, CORS, API key, draining, errors in the route's own shape, metrics and
        the access log: what the gRPC interceptors and the `rpc` wrapper do for RPCs."""
        rid = new_request_id([("x-request-id", request.headers.get("x-request-id", ""))])
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 499  # the client hung up before an answer (nginx's name for it)
        self._in_flight += 1
        self._idle.clear()
        try:
            try:
                response = await self._guarded(request, handler)
            except ApiError as err:
                response = self._error_response(request, err)
            status = response.status
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unknown"
            elapsed = time.perf_counter() - started
            self.metrics.observe_request(f"HTTP {request.method} {route}", str(status), elapsed)
            request_id.reset(token)
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        response.headers["x-request-id"] = rid
        if self.cors is not None:
            response.headers.update(self.cors.headers(request.headers.get("Origin")))
        return response

    async def _guarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.cors is not None and self.cors.is_preflight(request.method, request.headers):
            return web.Response(status=204, headers=self.cors.preflight_headers(request.headers))
        if (origin := refused_origin(request.method, request.headers, self.cors)) is not None:
            raise ApiError(
                403,
                f"a {request.method} from a web page of {origin} is refused: only this "
                "server's own pages and the origins of --cors-allow-origin may send one",
                "forbidden",
            )
        if self.draining:
            raise ApiError(503, "the server is shutting down", "unavailable")
        route = self._route(request)
        if self.keys is not None and (route is None or not route.open):
            refusal = self.keys.refusal(request.headers.get("Authorization", ""))
            if refusal is not None:
                raise ApiError(401, refusal, "unauthorized")
        try:
            return await handler(request)
        except ApiError:
            raise
        except web.HTTPException as err:  # aiohttp's own: an unknown route, a wrong method
            kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status, "http")
            error = ApiError(err.status, f"{err.reason}: {request.method} {request.path}", kind)
            if "Allow" in err.headers:  # what a 405 must name (RFC 9110)
                error.headers["Allow"] = err.headers["Allow"]
            raise error from None
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - every error gets a status, never a crash
            mapped = from_exception(err, self.context.to_status)
            if mapped is None:
                log.exception("%s %s failed", request.method, request.path)
                raise ApiError(500, f"{type(err).__name__}: {err}", "internal") from err
            raise mapped from err

    def _error_response(self, request: web.Request, err: ApiError) -> web.Response:
        status, body = self._dialect(request).error(err)
        response = json_response(orjson.dumps(body), status)
        response.headers.update(err.headers)
        if status in (429, 503):
            response.headers["Retry-After"] = RETRY_AFTER_S
        if status == 408:  # the rest of the body may still come: no next request can be read
            response.force_close()
        if status == 401:
            given = bool(request.headers.get("Authorization"))
            response.headers["WWW-Authenticate"] = 'Bearer realm="embedsense"' + (
                ', error="invalid_token"' if given else ""
            )
        return response

    # ------------------------------------------------------------ routes of its own

    def metrics_route(self, dialect: Dialect) -> HttpRoute:
        return HttpRoute(
            "GET",
            "/metrics",
            self.metrics_page,
            dialect,
            "Prometheus metrics",
            "What the metrics port serves, on the HTTP port too (with the API key, if any).",
            reply_media="text/plain",
            errors=(503,),
            tag="Operations",
        )

    async def metrics_page(self, request: web.Request, body: None) -> web.Response:
        """Prometheus' text, as the metrics port serves it (read in a thread: collecting
        asks the index for its collections' sizes)."""
        response = web.Response(body=await self.metrics.page())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    # ------------------------------------------------------------ lifecycle

    async def start(
        self, host: str, port: int, tls: ssl.SSLContext | None = None, reuse_port: bool = False
    ) -> int:
        """Listen on host:port (0: any free port), under `tls` when given; the port.
        reuse_port: shared with the other front-end processes (frontends/)."""
        # handler_cancellation: a client that hangs up cancels its handler, and so its
        # engine work (aiohttp leaves it off by default). auto_decompress off: bodies.py
        # decodes the codings it accepts and refuses the others in the API's shape (aiohttp
        # answers those it cannot decode itself, and reads unknown ones as no coding).
        # shutdown_timeout: `drain` has waited out the grace; what is left after it is
        # cancelled, a reply being written given a moment (aiohttp's default waits 60 s).
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            auto_decompress=False,
            shutdown_timeout=min(SHUTDOWN_TIMEOUT_S, self.settings.shutdown_grace_s),
        )
        await self._runner.setup()
        AIOHTTP_SERVER_LOG.addFilter(client_faults_at_debug)
        site = web.TCPSite(self._runner, host, port, ssl_context=tls, reuse_port=reuse_port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self.port

    async def drain(self, grace: float) -> None:
        """Wait up to `grace` s for the requests in flight to finish, the port still open:
        new ones are answered 503 (`draining`), as a load balancer expects."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._idle.wait()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.context.executor.shutdown(wait=False)


# aiohttp answers a request it cannot parse as HTTP (a repeated Content-Type, a malformed
# header line) itself, before any route or middleware: 400, text/plain, the connection
# closed. It logs each one at ERROR with a traceback, a false alarm for a client's fault.
AIOHTTP_SERVER_LOG = logging.getLogger("aiohttp.server")


def client_faults_at_debug(record: logging.LogRecord) -> bool:
    """A logging filter: aiohttp's record of a request that does not parse, at DEBUG and
    without its traceback; every other record as it is."""
    fault = record.exc_info[1] if record.exc_info else None
    if isinstance(fault, HttpProcessingError) and 400 <= (fault.code or 400) < 500:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.msg, record.args = f"a request that does not parse as HTTP: {fault.message}", ()
        record.exc_info = record.exc_text = None
        return AIOHTTP_SERVER_LOG.isEnabledFor(logging.DEBUG)
    return True


def path_parameters(path: str) -> list[str]:
    """The {names} in a route's path (aiohttp's {name:regex} too)."""
    return re.findall(r"\{(\w+)(?::[^}]*)?\}", path)
