"""What every call passes through before its RPC: the API key check, and a guard that turns
a request that does not decode (e.g. invalid UTF-8 sent by a non-Python client) into
INVALID_ARGUMENT instead of gRPC's generic INTERNAL."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc

from embedsense.proto.v1 import embedsense_pb2 as pb
from embedsense.server.api.checks import BadRequest, Undecodable
from embedsense.server.api.observability import Metrics

# Load balancers and tools must work without the key.
OPEN_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# The service's own methods, whose wrapper counts every call and returns its request id.
OWN_METHODS = f"/{pb.DESCRIPTOR.services_by_name['EmbedSense'].full_name}/"


def _replace(handler: Any, behavior: Any, deserializer: Any = None) -> Any:
    """A handler of the same kind (unary or client-streaming) running `behavior`."""
    factory = (
        grpc.stream_unary_rpc_method_handler
        if handler.request_streaming
        else grpc.unary_unary_rpc_method_handler
    )
    return factory(
        behavior,
        request_deserializer=deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class ApiKeys:
    """The configured keys, as `authorization: Bearer <key>` (gRPC metadata or an HTTP
    header; the scheme in any case, as RFC 9110 has it) must carry one; compared in
    constant time, never logged."""

    def __init__(self, api_keys: Sequence[str]) -> None:
        self.replace(api_keys)

    @property
    def count(self) -> int:
        return len(self._expected)

    def replace(self, api_keys: Sequence[str]) -> None:
        """Accept `api_keys` from the next call on (SIGHUP's reload): one assignment, so a
        call checks against the old keys or the new ones, never a mix."""
        self._expected = [key.encode() for key in api_keys]

    def refusal(self, given: str) -> str | None:
        """None when `given` carries a configured key; else why not, for the caller."""
        scheme, _, credentials = given.strip().partition(" ")
        # Bytes that are not UTF-8 reach here as surrogate escapes (aiohttp decodes headers
        # so): compared as the bytes they were, they match no key.
        offered = credentials.strip().encode("utf-8", "surrogateescape")
        # Compare against every key, always: the time taken says nothing about which matched.
        matched = any([hmac.compare_digest(offered, key) for key in self._expected])
        if matched and scheme.lower() == "bearer":
            return None
        if not given:
            return "this server needs an API key: 'authorization: Bearer <key>'"
        return "the API key is wrong"


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Every call but health and reflection needs one of the keys."""

    def __init__(self, keys: ApiKeys, metrics: Metrics) -> None:
        self._keys = keys
        self._metrics = metrics

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHODS):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        message = self._keys.refusal(given)
        if message is None:
            return handler
        rpc = details.method.rsplit("/", 1)[-1]

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._metrics.observe_request(rpc, "UNAUTHENTICATED", 0.0)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        return _replace(handler, deny)


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Last of the interceptors: what follows it is the service, whose handler for a method
    never changes, so the guarded handler is made once per method and kept (making it on
    every call cost a front end about a tenth of its CPU per request)."""

    def __init__(self) -> None:
        self._guarded: dict[str, Any] = {}

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        guarded = self._guarded.get(details.method)
        if guarded is None:
            handler = await continuation(details)
            if handler is None:  # no such method: nothing to keep (a caller names any)
                return None
            guarded = self._guarded[details.method] = self._guard(handler, details.method)
        return guarded

    @staticmethod
    def _guard(handler: Any, method: str) -> Any:
        """`handler`, answering INVALID_ARGUMENT for a request that does not decode."""
        if handler.response_streaming or handler.request_deserializer is None:
            return handler  # reflection (bidi streaming) keeps its own handling
        decode = handler.request_deserializer

        def safe_decode(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception as err:  # noqa: BLE001 - any decoding failure is the caller's
                return Undecodable(
                    f"the request does not decode as {method}'s message "
                    f"({str(err) or type(err).__name__}); string fields must be valid UTF-8"
                )

        if handler.request_streaming:
            inner = handler.stream_unary

            async def streaming(requests: AsyncIterator[Any], context: Any) -> Any:
                async def checked() -> AsyncIterator[Any]:
                    async for request in requests:
                        if isinstance(request, Undecodable):
                            # Raised into the handler, which says what earlier messages stored.
                            raise BadRequest(request.message)
                        yield request

                return await inner(checked(), context)

            return _replace(handler, streaming, safe_decode)

        if method.startswith(OWN_METHODS):
            # The RPC's wrapper (service.rpc) answers an Undecodable itself.
            return _replace(handler, handler.unary_unary, safe_decode)
        inner_unary = handler.unary_unary

        async def unary(request: Any, context: Any) -> Any:
            if isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            return await inner_unary(request, context)

        return _replace(handler, unary, safe_decode)
