"""OpenAI's embeddings API: POST /v1/embeddings and GET /v1/models, in OpenAI's shapes, so
the `openai` package, LangChain's and LlamaIndex's OpenAI embeddings classes work with a
`base_url`.

Beyond OpenAI: `input_type` ("query", the default as in gRPC Embed, or "passage") picks the
e5 prefix; token-id inputs are ids of the served model's own tokenizer.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
from aiohttp import web

from embedsense.model import TextRole
from embedsense.server.api.http import ApiError, HttpContext, read_json

ROLES = {"query": TextRole.QUERY, "passage": TextRole.PASSAGE}


class OpenAIDialect:
    """{"error": {"message", "type", "param", "code"}}, the status OpenAI would give."""

    def error(self, error: ApiError) -> tuple[int, dict[str, Any]]:
        status = 400 if error.kind in ("too_long", "too_many") else error.status
        kind = {401: "authentication_error", 404: "invalid_request_error",
                429: "rate_limit_exceeded", 503: "server_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )  # fmt: skip
        code = {"too_long": "context_length_exceeded", "model_not_found": "model_not_found",
                "unauthorized": "invalid_api_key"}.get(error.kind)  # fmt: skip
        return status, {"error": {"message": error.message, "type": kind,
                                  "param": None, "code": code}}  # fmt: skip


class OpenAIRoutes:
    def __init__(self, context: HttpContext, body_timeout_s: float) -> None:
        self.context = context
        self.body_timeout_s = body_timeout_s
        self.created = int(time.time())

    def routes(self) -> list[tuple[str, str, Any, OpenAIDialect]]:
        dialect = OpenAIDialect()
        return [("POST", "/v1/embeddings", self.embeddings, dialect),
                ("GET", "/v1/models", self.models, dialect)]  # fmt: skip

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.context.model_name, "object": "model", "created": self.created,
            "owned_by": "embedsense",
        }]})  # fmt: skip

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await read_json(request, self.body_timeout_s)
        if not isinstance(body, dict):
            raise ApiError(400, "the body is a JSON object with `input` and `model`")
        served = self.context.model_name
        if body.get("model") not in (None, served):
            raise ApiError(404, f"the model {body.get('model')!r} does not exist here; this "
                           f"server serves {served!r}", "model_not_found")  # fmt: skip
        dimensions = body.get("dimensions")
        dim = self.context.engine.model.dim
        if dimensions is not None and dimensions != dim:
            raise ApiError(400, f"dimensions: {served} gives {dim}-dimensional vectors only; "
                           f"{dimensions!r} is not offered (leave it out)")  # fmt: skip
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise ApiError(400, f"encoding_format: {encoding!r}; expected 'float' or 'base64'")
        role = ROLES.get(body.get("input_type", "query"))
        if role is None:
            raise ApiError(400, f"input_type: {body.get('input_type')!r}; expected "
                           "'query' or 'passage'")  # fmt: skip
        results = await self.context.embed(self._texts(body.get("input")), role=role)
        data = [
            {"object": "embedding", "index": i, "embedding": _encoded(r.sentence, encoding)}
            for i, r in enumerate(results)
        ]
        tokens = sum(len(r.tokenized.ids) for r in results)
        return web.json_response({
            "object": "list", "data": data, "model": served,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        })  # fmt: skip

    @staticmethod
    def _texts(given: Any) -> list[str] | list[list[int]]:
        """`input` as texts, or as token-id lists: a string, strings, token ids, or lists of
        token ids."""
        if isinstance(given, str):
            return [given]
        if not isinstance(given, list) or not given:
            raise ApiError(400, "input: a string, a list of strings, or token-id arrays")
        if all(isinstance(x, str) for x in given):
            return given
        if all(_is_id(x) for x in given):
            return [given]
        if all(isinstance(x, list) and x and all(_is_id(i) for i in x) for x in given):
            return given
        raise ApiError(400, "input: a string, a list of strings, or token-id arrays; not a mix")


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encoded(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the openai package asks for and decodes: float32 bytes
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector.tolist()
