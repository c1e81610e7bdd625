"""text-embeddings-inference's API as typed models: the requests and replies of /embed,
/similarity (and /, which takes either), /embed_all, /tokenize, /decode and /info, and TEI's
error body. Validation and the published OpenAPI document both come from them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, RootModel, Tag

from embedsense.server.api.http_inputs import Ids, Inputs, RequestModel, Texts, Whole

PROMPT = (
    "The role of the inputs, which picks the e5 prefix ('query: ' or 'passage: '), as "
    "TEI's prompts do. Unset: the server's default (--default-prompt-name; 'query' unless set)."
)
TRUNCATE = (
    "Cut an input over the model's length instead of refusing it (413). Unset: the server's "
    "--auto-truncate (off unless set)."
)
DIRECTION = "Which end truncation cuts: Right (the text's end) or Left (its start)."
Direction = Literal["Left", "Right", "left", "right"]
Prompt = Literal["query", "passage"]


class EmbedRequest(RequestModel):
    inputs: Inputs = Field(
        description="A string, a list of strings, token ids of the served model's own "
        "tokenizer (no special tokens, no prefix), or a list of such lists.",
        examples=["我喜欢吃苹果"],
    )
    normalize: bool = Field(True, description="L2-normalize the vectors.")
    truncate: bool | None = Field(None, description=TRUNCATE)
    truncation_direction: Direction = Field("Right", description=DIRECTION)
    prompt_name: Prompt | None = Field(None, description=PROMPT)
    dimensions: Whole | None = Field(
        None,
        description="Only the model's own dimension is offered (leave it out).",
        json_schema_extra={"x-limit": "dimensions"},
    )


class SimilarityInput(RequestModel):
    source_sentence: str = Field(
        description="The text the others are compared with.",
        examples=["我喜欢吃苹果"],
        json_schema_extra={"x-limit": "inputs"},
    )
    sentences: list[str] = Field(
        description="The texts compared with source_sentence.",
        examples=[["苹果很甜", "我买了苹果手机"]],
        json_schema_extra={"x-limit": "inputs"},
    )


class SimilarityParameters(RequestModel):
    truncate: bool | None = Field(None, description=TRUNCATE)
    truncation_direction: Direction = Field("Right", description=DIRECTION)
    prompt_name: Prompt | None = Field(None, description=PROMPT)


class SimilarityRequest(RequestModel):
    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


def _predict_kind(body: Any) -> str:
    """TEI's sentence-similarity body has an object of inputs; an embed body never does."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    return "similarity" if isinstance(inputs, dict) else "embed"


class PredictRequest(
    RootModel[
        Annotated[
            Annotated[EmbedRequest, Tag("embed")] | Annotated[SimilarityRequest, Tag("similarity")],
            Discriminator(_predict_kind),
        ]
    ]
):
    """What POST / takes: an embed body, or a sentence-similarity one (what
    huggingface_hub's `InferenceClient.sentence_similarity` sends there)."""


class EmbedAllRequest(RequestModel):
    inputs: Inputs = Field(
        description=EmbedRequest.model_fields["inputs"].description, examples=["我喜欢吃苹果"]
    )
    truncate: bool | None = Field(None, description=TRUNCATE)
    truncation_direction: Direction = Field("Right", description=DIRECTION)
    prompt_name: Prompt | None = Field(None, description=PROMPT)


class TokenizeRequest(RequestModel):
    inputs: Texts = Field(description="A string or a list of strings.", examples=["我喜欢吃苹果"])
    add_special_tokens: bool = Field(True, description="List the model's special tokens too.")
    prompt_name: Prompt | None = Field(None, description=PROMPT)


class DecodeRequest(RequestModel):
    ids: Ids = Field(description="Token ids, or a list of lists of them.")
    skip_special_tokens: bool = Field(True, description="Leave the special tokens out.")


class SimpleToken(BaseModel):
    id: int
    text: str
    special: bool = Field(description="One of the model's special tokens (<s>, </s>).")
    start: int | None = Field(
        description="Where the token starts in the input text (characters); null for a "
        "token that is not from it (a special token, the prompt's)."
    )
    stop: int | None = Field(description="Where it ends (exclusive); null as for start.")


class EmbedResponse(RootModel[list[list[float]]]):
    """One vector per input."""


class SimilarityResponse(RootModel[list[float]]):
    """Per sentence, its cosine similarity with source_sentence."""


class PredictResponse(RootModel[list[list[float]] | list[float]]):
    """An embed body's vectors, or a similarity body's cosines."""


class EmbedAllResponse(RootModel[list[list[list[float]]]]):
    """Per input, one vector per token (special and prompt tokens included), not normalized."""


class TokenizeResponse(RootModel[list[list[SimpleToken]]]):
    """Per input, its tokens."""


class DecodeResponse(RootModel[list[str]]):
    """Per input, its text."""


class Pooling(BaseModel):
    pooling: str


class ModelType(BaseModel):
    embedding: Pooling


class Info(BaseModel):
    model_id: str
    model_sha: str | None
    model_dtype: str
    model_type: ModelType
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str


class TEIError(BaseModel):
    error: str
    error_type: str = Field(description="Validation, Empty, Tokenizer, Overloaded, Unhealthy")
