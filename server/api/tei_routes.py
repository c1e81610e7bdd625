"""text-embeddings-inference's API: POST /embed (and POST /, which TEI's clients, such as
`huggingface_hub.InferenceClient(base_url).feature_extraction`, call), POST /tokenize,
GET /info and GET /health, in TEI's shapes and statuses.

`prompt_name` ("query" or "passage") picks the e5 prefix, as TEI's prompts do; without it,
"query", as in gRPC Embed.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from embedsense.model import TextRole
from embedsense.server.api.http import ApiError, HttpContext, read_json
from embedsense.server.api.service import server_version
from embedsense.server.api.settings import ServerSettings

PROMPTS = {"query": TextRole.QUERY, "passage": TextRole.PASSAGE}
# TEI's error types, by our kinds; TEI answers a validation error with 413.
ERROR_TYPES = {
    "too_long": (413, "Validation"), "too_many": (413, "Validation"),
    "invalid_argument": (413, "Validation"), "empty": (400, "Empty"),
    "resource_exhausted": (429, "Overloaded"), "unavailable": (503, "Unhealthy"),
}  # fmt: skip


class TEIDialect:
    """{"error": message, "error_type": kind}."""

    def error(self, error: ApiError) -> tuple[int, dict[str, Any]]:
        status, kind = ERROR_TYPES.get(error.kind, (error.status, error.kind or "Backend"))
        return status, {"error": error.message, "error_type": kind}


class TEIRoutes:
    def __init__(self, context: HttpContext, server: Any, body_timeout_s: float) -> None:
        self.context = context
        self.server = server  # for health: draining or not
        self.body_timeout_s = body_timeout_s

    def routes(self) -> list[tuple[str, str, Any, TEIDialect]]:
        dialect = TEIDialect()
        return [
            ("POST", "/embed", self.embed, dialect), ("POST", "/", self.embed, dialect),
            ("POST", "/tokenize", self.tokenize, dialect), ("GET", "/info", self.info, dialect),
            ("GET", "/health", self.health, dialect),
        ]  # fmt: skip

    async def _request(self, request: web.Request) -> tuple[dict[str, Any], list[str]]:
        body = await read_json(request, self.body_timeout_s)
        if not isinstance(body, dict):
            raise ApiError(422, "the body is a JSON object with `inputs`", "Validation")
        inputs = body.get("inputs")
        if isinstance(inputs, str):
            return body, [inputs]
        if isinstance(inputs, list) and inputs and all(isinstance(x, str) for x in inputs):
            return body, inputs
        raise ApiError(422, "inputs: a string or a non-empty list of strings", "Validation")

    async def embed(self, request: web.Request) -> web.Response:
        body, texts = await self._request(request)
        for flag in ("normalize", "truncate"):
            if not isinstance(body.get(flag, False), bool):
                raise ApiError(422, f"{flag}: true or false", "Validation")
        if body.get("truncation_direction", "Right") not in ("Right", "right"):
            raise ApiError(422, "truncation_direction: only Right is supported", "Validation")
        role = PROMPTS.get(body.get("prompt_name") or "query")
        if role is None:
            raise ApiError(422, f"prompt_name: {body['prompt_name']!r}; this model has the "
                           "prompts 'query' and 'passage'", "Validation")  # fmt: skip
        results = await self.context.embed(
            texts, role=role, normalize=body.get("normalize", True),
            truncate=body.get("truncate", False),
            truncate_hint=' (send "truncate": true to cut it)',
        )  # fmt: skip
        return web.json_response([r.sentence.tolist() for r in results])

    async def tokenize(self, request: web.Request) -> web.Response:
        body, texts = await self._request(request)
        specials = body.get("add_special_tokens", True)
        tokenizer = self.context.engine.model.tokenizer
        encoded = tokenizer.encode_batch(texts, TextRole.QUERY, allow_long=True)
        return web.json_response([
            [{"id": i, "text": tok, "special": not real, "start": start, "stop": stop}
             for i, tok, real, (start, stop) in zip(t.ids, t.tokens, t.from_text, t.offsets,
                                                   strict=True)
             if real or specials]
            for t in encoded
        ])  # fmt: skip

    async def info(self, request: web.Request) -> web.Response:
        engine, s = self.context.engine.info(), self.context.settings
        return web.json_response(info_body(engine, s))

    async def health(self, request: web.Request) -> web.Response:
        if self.server.draining:
            raise ApiError(503, "the server is shutting down", "unavailable")
        return web.Response(status=200)


def info_body(engine: Any, settings: ServerSettings) -> dict[str, Any]:
    return {
        "model_id": engine.model, "model_sha": None, "model_dtype": engine.dtype,
        "model_type": {"embedding": {"pooling": "mean"}},
        "max_concurrent_requests": engine.max_concurrent_requests,
        "max_input_length": engine.max_tokens, "max_batch_tokens": engine.max_batch_tokens,
        "max_batch_requests": engine.max_batch_requests,
        "max_client_batch_size": settings.max_texts_per_request, "auto_truncate": False,
        "tokenization_workers": 1, "version": server_version(),
    }  # fmt: skip
