"""OpenAI's embeddings API: POST /v1/embeddings, GET /v1/models and GET /v1/models/{model},
in OpenAI's shapes (openai_models.py) and errors, so the `openai` package, LangChain's and
LlamaIndex's OpenAI embeddings classes work with a `base_url`.

Beyond OpenAI: `input_type` ("query" or "passage"; unset: the server's default prompt name)
picks the e5 prefix; token-id inputs are ids of the served model's own tokenizer.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from embedsense.server.api.checks import check_dimensions
from embedsense.server.api.http import HttpContext, HttpRoute, float32s
from embedsense.server.api.http_errors import ApiError
from embedsense.server.api.openai_models import (
    Embedding,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Model,
    ModelList,
    OpenAIErrorResponse,
    Usage,
)
from embedsense.server.api.openapi import roles_text

# Our kinds to OpenAI's error type and code, as OpenAI's API sends them.
TYPES = {401: "invalid_request_error", 429: "requests"}
CODES = {
    "too_long": "context_length_exceeded",
    "model_not_found": "model_not_found",
    "unauthorized": "invalid_api_key",
    "forbidden": "forbidden",
    "resource_exhausted": "rate_limit_exceeded",
    "deadline_exceeded": "timeout",
    "timeout": "timeout",
}
# OpenAI's API has no field to cut a long input: the server's flag does it for every call.
TRUNCATE_HINT = " (shorten it, or start the server with --auto-truncate to cut such inputs)"


class OpenAIDialect:
    """{"error": {"message", "type", "param", "code"}}, the status OpenAI would give: every
    refusal of the request's content is a 400 (OpenAI has no 413 or 422 for it)."""

    error_model = OpenAIErrorResponse

    def error(self, error: ApiError) -> tuple[int, dict[str, Any]]:
        status = error.status
        if status in (413, 422) and error.kind != "too_large":  # a body over the size limit
            status = 400
        kind = TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        return status, {
            "error": {
                "message": error.message,
                "type": kind,
                "param": error.param,
                "code": CODES.get(error.kind),
            }
        }


ERRORS = (400, 401, 404, 408, 413, 415, 429, 503, 504)


class OpenAIRoutes:
    def __init__(self, context: HttpContext) -> None:
        self.context = context
        self.created = int(time.time())

    def routes(self) -> list[HttpRoute]:
        dialect = OpenAIDialect()
        roles = roles_text(self.context.settings.default_prompt_name)
        return [
            HttpRoute(
                "POST",
                "/v1/embeddings",
                self.embeddings,
                dialect,
                "Embed texts (OpenAI)",
                "One L2-normalized vector per input, as OpenAI's embeddings API answers. "
                "Texts over the model's length are refused (400, "
                "context_length_exceeded) unless the server runs with --auto-truncate. " + roles,
                body=EmbeddingsRequest,
                reply=EmbeddingsResponse,
                errors=ERRORS,
                tag="OpenAI",
                prioritized=True,
            ),
            HttpRoute(
                "GET",
                "/v1/models",
                self.models,
                dialect,
                "The served model (OpenAI)",
                reply=ModelList,
                errors=(503,),
                tag="OpenAI",
            ),
            HttpRoute(
                "GET",
                "/v1/models/{model:.+}",
                self.model,
                dialect,
                "One model by its id (OpenAI)",
                reply=Model,
                errors=(404, 503),
                tag="OpenAI",
            ),
        ]

    def _model(self) -> Model:
        return Model.model_construct(
            id=self.context.model_name, created=self.created, owned_by="embedsense"
        )

    async def models(self, request: web.Request, body: None) -> ModelList:
        return ModelList.model_construct(data=[self._model()])

    async def model(self, request: web.Request, body: None) -> Model:
        self._served(request.match_info["model"])
        return self._model()

    def _served(self, name: str | None) -> None:
        served = self.context.model_name
        if name is not None and name != served:
            raise ApiError(
                404,
                f"the model {name!r} does not exist here; this server serves {served!r}",
                "model_not_found",
                "model",
            )

    async def embeddings(self, request: web.Request, body: EmbeddingsRequest) -> EmbeddingsResponse:
        self._served(body.model)
        check_dimensions(body.dimensions, self.context.engine.model.dim, self.context.model_name)
        results = await self.context.embed(
            body.input,
            "input",
            role=self.context.role(body.input_type, "input_type"),
            truncation=self.context.truncation(None),
            truncate_hint=TRUNCATE_HINT,
        )
        data = [
            Embedding.model_construct(index=i, embedding=float32s(r.sentence, body.encoding_format))
            for i, r in enumerate(results)
        ]
        tokens = sum(len(r.tokenized.ids) for r in results)
        return EmbeddingsResponse.model_construct(
            data=data,
            model=self.context.model_name,
            usage=Usage.model_construct(prompt_tokens=tokens, total_tokens=tokens),
        )
