"""OpenAI's embeddings API as typed models: the request and reply of POST /v1/embeddings,
GET /v1/models and GET /v1/models/{model}, and OpenAI's error body. Validation and the
published OpenAPI document both come from them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from embedsense.server.api.http_inputs import Inputs, RequestModel, Whole


class EmbeddingsRequest(RequestModel):
    input: Inputs = Field(
        description="The texts to embed: a string, a list of strings, token ids of the served "
        "model's own tokenizer (no special tokens, no prefix), or a list of such lists.",
        examples=[["我喜欢吃苹果", "我买了最新的苹果手机"]],
    )
    model: str | None = Field(
        None, description="The served model's name (GET /v1/models); any other is a 404."
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="Vectors as JSON numbers, or as base64 of little-endian float32."
    )
    dimensions: Whole | None = Field(
        None,
        description="Only the model's own dimension is offered (leave it out).",
        json_schema_extra={"x-limit": "dimensions"},
    )
    user: str | None = Field(None, description="Accepted and ignored, as an end-user id.")
    input_type: Literal["query", "passage"] | None = Field(
        None,
        description="Beyond OpenAI: the role of the inputs, which picks the e5 prefix "
        "('query: ' or 'passage: '). Unset: the server's default (--default-prompt-name; "
        "'query' unless set).",
    )


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="The vector (L2-normalized), or its float32 bytes in base64."
    )


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class OpenAIError(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, requests, or server_error")
    param: str | None = Field(description="The request field at fault, if one is.")
    code: str | None = Field(
        description="e.g. invalid_api_key, model_not_found, context_length_exceeded, "
        "rate_limit_exceeded"
    )


class OpenAIErrorResponse(BaseModel):
    error: OpenAIError
