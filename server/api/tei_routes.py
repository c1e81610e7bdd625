"""text-embeddings-inference's API: POST /embed, POST /similarity (and POST /, either, which
TEI's clients, such as `huggingface_hub.InferenceClient(base_url).feature_extraction` and
`.sentence_similarity`, call), POST /embed_all (a vector per token: what a
contextual-embedding server is for), POST /tokenize, POST /decode, GET /info and
GET /health, in TEI's shapes (tei_models.py), statuses and errors.

`prompt_name` ("query" or "passage") picks the e5 prefix, as TEI's prompts do; without it,
the server's --default-prompt-name ("query" unless set).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiohttp import web

from embedsense.model import TokenizedText
from embedsense.server.api.checks import check_dimensions, check_text, check_texts
from embedsense.server.api.http import HttpContext, HttpRoute
from embedsense.server.api.http_errors import ApiError
from embedsense.server.api.openapi import roles_text
from embedsense.server.api.service import server_version
from embedsense.server.api.tei_models import (
    DecodeRequest,
    DecodeResponse,
    EmbedAllRequest,
    EmbedAllResponse,
    EmbedRequest,
    EmbedResponse,
    Info,
    ModelType,
    Pooling,
    PredictRequest,
    PredictResponse,
    SimilarityParameters,
    SimilarityRequest,
    SimilarityResponse,
    TEIError,
    TokenizeRequest,
    TokenizeResponse,
)

# Our kinds to TEI's status and error type. TEI answers its validation errors (too many
# inputs, too long) with 413, a body it cannot read with 400 or 422, an empty batch with 400.
ERROR_TYPES = {
    "too_long": (413, "Validation"),
    "too_many": (413, "Validation"),
    "invalid": (413, "Validation"),
    "invalid_argument": (413, "Validation"),
    "invalid_header": (400, "Validation"),  # ours (X-Priority): no body too large
    "empty": (400, "Empty"),
    "invalid_json": (400, "Validation"),
    "invalid_body": (422, "Validation"),
    "too_large": (413, "Validation"),
    "timeout": (408, "Validation"),
    "unsupported_media_type": (415, "Validation"),
    "resource_exhausted": (429, "Overloaded"),
    "unavailable": (503, "Unhealthy"),
    "deadline_exceeded": (504, "Backend"),
    "unauthorized": (401, "Unauthorized"),
    "forbidden": (403, "Unauthorized"),
    "not_found": (404, "NotFound"),
    "method_not_allowed": (405, "NotFound"),
}
TRUNCATE_HINT = ' (send "truncate": true to cut it)'
ERRORS = (400, 401, 408, 413, 415, 422, 429, 503, 504)


class TEIDialect:
    """{"error": message, "error_type": kind}."""

    error_model = TEIError

    def error(self, error: ApiError) -> tuple[int, dict[str, Any]]:
        status, kind = ERROR_TYPES.get(error.kind, (error.status, "Backend"))
        return status, {"error": error.message, "error_type": kind}


class TEIRoutes:
    def __init__(self, context: HttpContext, server: Any) -> None:
        self.context = context
        self.server = server  # for health: draining or not

    def routes(self) -> list[HttpRoute]:
        d = TEIDialect()
        roles = roles_text(self.context.settings.default_prompt_name)
        embed = (
            "One vector per input (mean-pooled, L2-normalized unless normalize is "
            "false), as TEI's /embed answers. " + roles
        )
        similarity = (
            "Per sentence, its cosine similarity with source_sentence (their vectors as "
            "/embed's), as TEI's /similarity answers. " + roles
        )
        max_tokens = self.context.engine.config.max_batch_tokens
        return [
            HttpRoute(
                "POST",
                "/embed",
                self.embed,
                d,
                "Embed texts (TEI)",
                embed,
                body=EmbedRequest,
                reply=EmbedResponse,
                errors=ERRORS,
                tag="TEI",
                prioritized=True,
            ),
            HttpRoute(
                "POST",
                "/similarity",
                self.similarity,
                d,
                "Sentence similarity (TEI)",
                similarity,
                body=SimilarityRequest,
                reply=SimilarityResponse,
                errors=ERRORS,
                tag="TEI",
                prioritized=True,
            ),
            HttpRoute(
                "POST",
                "/",
                self.predict,
                d,
                "Embed texts, or compare them (TEI's predict route)",
                "An embed body is answered as /embed; a body whose inputs are "
                "{source_sentence, sentences} as /similarity (what huggingface_hub's "
                "InferenceClient.sentence_similarity sends).",
                body=PredictRequest,
                reply=PredictResponse,
                errors=ERRORS,
                tag="TEI",
                prioritized=True,
            ),
            HttpRoute(
                "POST",
                "/embed_all",
                self.embed_all,
                d,
                "A vector per token (TEI)",
                "Per input, one contextual vector per token (the special and prompt "
                "tokens included; not normalized): how each token reads in its "
                f"sentence. At most {max_tokens} tokens in one request "
                "(max_batch_tokens: the reply grows with them). " + roles,
                body=EmbedAllRequest,
                reply=EmbedAllResponse,
                errors=ERRORS,
                tag="TEI",
                heavy_reply=True,
                prioritized=True,
            ),
            HttpRoute(
                "POST",
                "/tokenize",
                self.tokenize,
                d,
                "Tokenize texts (TEI)",
                "The tokens the model sees, with their offsets in each input (null for "
                "special and prompt tokens), at any length up to the text limits. " + roles,
                body=TokenizeRequest,
                reply=TokenizeResponse,
                errors=ERRORS,
                tag="TEI",
                heavy_reply=True,
            ),
            HttpRoute(
                "POST",
                "/decode",
                self.decode,
                d,
                "Token ids back to text (TEI)",
                body=DecodeRequest,
                reply=DecodeResponse,
                errors=ERRORS,
                tag="TEI",
            ),
            HttpRoute(
                "GET",
                "/info",
                self.info,
                d,
                "The model and the limits (TEI)",
                reply=Info,
                errors=(503,),
                tag="TEI",
            ),
            HttpRoute(
                "GET",
                "/health",
                self.health,
                d,
                "Ready to serve (TEI)",
                "200 while serving; 503 while shutting down, or once the engine failed for good "
                "(it needs a restart). No API key needed.",
                errors=(503,),
                open=True,
                tag="TEI",
            ),
        ]

    async def embed(self, request: web.Request, body: EmbedRequest) -> EmbedResponse:
        check_dimensions(body.dimensions, self.context.engine.model.dim, self.context.model_name)
        results = await self.context.embed(
            body.inputs,
            "inputs",
            role=self.context.role(body.prompt_name, "prompt_name"),
            truncation=self.context.truncation(body.truncate, body.truncation_direction),
            normalize=body.normalize,
            truncate_hint=TRUNCATE_HINT,
        )
        return EmbedResponse.model_construct(root=np.stack([r.sentence for r in results]))

    async def similarity(self, request: web.Request, body: SimilarityRequest) -> SimilarityResponse:
        given, limits = body.parameters or SimilarityParameters(), self.context.limits
        source, sentences = body.inputs.source_sentence, body.inputs.sentences
        check_text(source, "inputs.source_sentence", limits.max_text_chars)
        check_texts(sentences, "inputs.sentences", limits)
        # One engine call: one priority and one batch for all, and nothing left computing
        # for nobody when a text is refused.
        embedded = await self.context.embed(
            [source, *sentences],
            "inputs",
            role=self.context.role(given.prompt_name, "parameters.prompt_name"),
            truncation=self.context.truncation(given.truncate, given.truncation_direction),
            truncate_hint=TRUNCATE_HINT,
            name_of=lambda i: f"inputs.sentences[{i - 1}]" if i else "inputs.source_sentence",
        )
        rows = np.stack([r.sentence for r in embedded[1:]])
        return SimilarityResponse.model_construct(root=(rows @ embedded[0].sentence).tolist())

    async def predict(
        self, request: web.Request, body: PredictRequest
    ) -> EmbedResponse | SimilarityResponse:
        if isinstance(body.root, SimilarityRequest):
            return await self.similarity(request, body.root)
        return await self.embed(request, body.root)

    async def embed_all(self, request: web.Request, body: EmbedAllRequest) -> EmbedAllResponse:
        results = await self.context.embed(
            body.inputs,
            "inputs",
            role=self.context.role(body.prompt_name, "prompt_name"),
            truncation=self.context.truncation(body.truncate, body.truncation_direction),
            token_vectors=True,
            max_tokens=self.context.engine.config.max_batch_tokens,
            truncate_hint=TRUNCATE_HINT,
        )
        return EmbedAllResponse.model_construct(root=[r.token_vectors for r in results])

    async def tokenize(self, request: web.Request, body: TokenizeRequest) -> TokenizeResponse:
        role = self.context.role(body.prompt_name, "prompt_name")
        tokenized = await self.context.tokenize(body.inputs, "inputs", role)
        special = self.context.special_ids
        rows = await self.context.off_loop(
            lambda: [_tokens(t, special, body.add_special_tokens) for t in tokenized]
        )
        return TokenizeResponse.model_construct(root=rows)

    async def decode(self, request: web.Request, body: DecodeRequest) -> DecodeResponse:
        texts = await self.context.decode(body.ids, "ids", body.skip_special_tokens)
        return DecodeResponse.model_construct(root=texts)

    async def info(self, request: web.Request, body: None) -> Info:
        engine, s = self.context.engine.info(), self.context.settings
        return Info.model_construct(
            model_id=engine.model,
            model_sha=None,
            model_dtype=engine.dtype,
            model_type=ModelType.model_construct(
                embedding=Pooling.model_construct(
                    pooling=str(self.context.engine.model.spec.pooling)
                )
            ),
            max_concurrent_requests=engine.max_concurrent_requests,
            max_input_length=engine.max_tokens,
            max_batch_tokens=engine.max_batch_tokens,
            max_batch_requests=engine.max_batch_requests,
            max_client_batch_size=s.max_texts_per_request,
            auto_truncate=s.auto_truncate,
            tokenization_workers=self.context.engine.config.tokenizer_threads,
            version=server_version(),
        )

    async def health(self, request: web.Request, body: None) -> web.Response:
        if self.server.draining:
            raise ApiError(503, "the server is shutting down", "unavailable")
        if self.context.engine.broken is not None:
            raise ApiError(503, self.context.engine.broken, "unavailable")
        return web.Response(status=200)


def _tokens(t: TokenizedText, special: frozenset[int], with_special: bool) -> list[dict]:
    """One input's tokens as TEI's SimpleToken: offsets into the input for its own tokens,
    null for the others (special tokens, the prompt's)."""
    rows = []
    for token_id, text, mine, (start, stop) in zip(
        t.ids, t.tokens, t.from_text, t.offsets, strict=True
    ):
        is_special = not mine and token_id in special
        if is_special and not with_special:
            continue
        rows.append(
            {
                "id": token_id,
                "text": text,
                "special": is_special,
                "start": start if mine else None,
                "stop": stop if mine else None,
            }
        )
    return rows
