"""Checks on requests before any work starts, one implementation that gRPC and HTTP both
call: texts, counts, sizes, roles, truncation. Each failure is a BadRequest naming the field
and the limit, which gRPC answers with INVALID_ARGUMENT and HTTP in each API's own shape."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from google.protobuf.message import Message

from embedsense.model import TextRole
from embedsense.model.pooling import Pooling
from embedsense.proto.v1 import embedsense_pb2 as pb
from embedsense.proto.values import (
    CONTROL_CLASS,
    KeyTwice,
    blank_problem,
    json_kind,
    once_each,
    text_problem,
)
from embedsense.server.batching import PRIORITY_LABELS, Priority, priority_named

if TYPE_CHECKING:
    from embedsense.server.api.settings import ServerSettings


class BadRequest(ValueError):
    """A request field that is wrong before any work starts (INVALID_ARGUMENT).

    param: the field at fault, as the request spells it (OpenAI's error names it).
    kind: "empty" (nothing to work on; TEI answers 400 "Empty"), "too_many" (over a count or
    size limit), "invalid_header" (a header, not the body: TEI's 413 would mislead), or
    "invalid"."""

    def __init__(self, message: str, param: str | None = None, kind: str = "invalid") -> None:
        super().__init__(message)
        self.param = param
        self.kind = kind


@dataclass(frozen=True)
class Undecodable:
    """In place of a request message that did not decode (interceptors.DecodeGuard): the
    RPC's own wrapper answers it INVALID_ARGUMENT with `message`, so that it is counted and
    gets its request id as every call does."""

    message: str


class ReplyTooLarge(Exception):
    """RESOURCE_EXHAUSTED, as gRPC's own message limit would be, but said in words before
    the reply is sent (and not retried: the same request makes the same reply). HTTP answers
    it 413 (http_errors.from_exception); param: the request field to ask less of, if one."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def check_reply_size(reply: Message, limit: int, fewer: str, carries: str = "") -> Message:
    """`reply`, when it fits in `limit` bytes (max_message_bytes); `fewer` names what to ask
    less of, `carries` (if given) why an item weighs what it does. Said in words, before
    gRPC core would fail the reply with no word of what to ask less of."""
    size = reply.ByteSize()
    if size > limit:
        why = f" ({carries})" if carries else ""
        raise ReplyTooLarge(
            f"the reply would be {size:,} bytes{why}; the limit is {limit:,} "
            f"(max_message_bytes): ask for {fewer}"
        )
    return reply


# The most bytes orjson writes for one float32 of a vector, its comma included: 16
# characters at most ("-0.000012345679"); a unit vector's numbers average about 13.
JSON_BYTES_PER_NUMBER = 17
# What a JSON string escapes as two bytes; a checked text holds no other control character.
JSON_TWO_BYTE_ESCAPES = ('"', "\\", "\n", "\r", "\t")


def json_string_bytes(text: str) -> int:
    """The bytes `text` takes as a JSON string: its UTF-8, one more for each character
    written as a two-byte escape, and its quotes. Without encoding an ASCII text."""
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return size + sum(text.count(c) for c in JSON_TWO_BYTE_ESCAPES) + 2


def json_vector_bytes(vector: np.ndarray | None) -> int:
    """At most the bytes `vector` takes as a JSON list of numbers (0 for none: null is
    counted with the fields around it)."""
    return 0 if vector is None else 2 + JSON_BYTES_PER_NUMBER * len(vector)


def check_json_reply_size(
    sizes: Iterable[int], limit: int, what: str, ask: str, param: str | None = None
) -> None:
    """Raises ReplyTooLarge once the JSON sizes of a reply's items (`what`: "hits") add up to
    more than `limit` bytes (max_message_bytes, gRPC's bound on a reply). Summed item by item
    and stopped at the limit, so a reply of gigabytes costs no more to refuse than one at the
    limit. `ask` says what to ask for instead; `param` is the field to ask less of."""
    total = 0
    for count, size in enumerate(sizes, 1):
        total += size
        if total > limit:
            raise ReplyTooLarge(
                f"the reply would be over max_message_bytes ({limit:,} bytes of JSON): its "
                f"first {count:,} {what} come to about {total:,}; ask for {ask}",
                param,
            )


@dataclass(frozen=True)
class Limits:
    """The input limits of one request, as ServerSettings sets them."""

    max_texts: int  # texts, or token-id inputs (max_texts_per_request)
    max_text_chars: int  # characters in one text
    max_request_chars: int  # characters in all the texts together
    max_request_tokens: int  # token ids in all the inputs together (max_queued_tokens)

    @classmethod
    def of(cls, settings: ServerSettings) -> Limits:
        return cls(
            settings.max_texts_per_request,
            settings.max_text_chars,
            settings.max_request_chars,
            settings.engine.max_queued_tokens,
        )


# Unspecified (0) reads the text as a query.
ROLES = {
    pb.ROLE_UNSPECIFIED: TextRole.QUERY,
    pb.ROLE_QUERY: TextRole.QUERY,
    pb.ROLE_PASSAGE: TextRole.PASSAGE,
}
MAX_OCCURRENCES = 1000  # SearchOccurrences answers at most this many
POOLINGS = {pb.POOLING_DEFAULT: None, pb.POOLING_MEAN: Pooling.MEAN, pb.POOLING_CLS: Pooling.CLS}


# The text rule of embedsense.proto.values (and "not only whitespace") as a JSON Schema
# pattern, for the OpenAPI document: no control character, and one other character at least.
TEXT_PATTERN = rf"^[^{CONTROL_CLASS}]*[^\s{CONTROL_CLASS}][^{CONTROL_CLASS}]*$"


def _param(field: str) -> str:
    """The request field a check's field names: "input" for "input[3]", "senses" for
    "senses (every example)"."""
    return re.split(r"[\[. ]", field, maxsplit=1)[0]


def check_text(text: str, field: str, max_chars: int, embedded: bool = True) -> str:
    """A text the model can take: not empty, not over `max_chars`, no control characters,
    no lone surrogates. One stored beside a vector, not `embedded`, may be blank."""
    if embedded and (blank := blank_problem(text)) is not None:
        raise BadRequest(f"{field}: {blank}", _param(field), "empty")
    if len(text) > max_chars:
        raise BadRequest(
            f"{field}: {len(text)} characters; the limit is {max_chars} (max_text_chars)",
            _param(field),
            "too_many",
        )
    if (wrong := text_problem(text)) is not None:
        raise BadRequest(f"{field}: {wrong}", _param(field))
    return text


def check_word(word: str, field: str = "word") -> str:
    """A word to find in a text: empty where a span names the occurrence instead (the senses
    logic says when one is needed), never whitespace alone, which the tokenizer keeps no
    token for."""
    if word and not word.strip():
        raise BadRequest(f"{field}: only whitespace; a word is needed", _param(field))
    return word


def check_count(count: int, field: str, limits: Limits, what: str = "texts") -> None:
    """At least one input, at most max_texts."""
    if count == 0:
        one = "query" if what == "queries" else what.rstrip("s")
        raise BadRequest(f"{field}: at least one {one} is needed", _param(field), "empty")
    if count > limits.max_texts:
        raise BadRequest(
            f"{field}: {count} {what}; the limit is {limits.max_texts} per request "
            "(max_texts_per_request)",
            _param(field),
            "too_many",
        )


def check_texts(texts: Sequence[str], field: str, limits: Limits) -> list[str]:
    """Texts the model can take: their count, each text (check_text), and their characters
    together (max_request_chars)."""
    check_count(len(texts), field, limits)
    total = 0
    for i, text in enumerate(texts):
        check_text(text, f"{field}[{i}]", limits.max_text_chars)
        total += len(text)
    if total > limits.max_request_chars:
        raise BadRequest(
            f"{field}: {total} characters in all; the limit is {limits.max_request_chars} per "
            "request (max_request_chars): send fewer texts at a time",
            _param(field),
            "too_many",
        )
    return list(texts)


def check_token_ids(
    batch: Sequence[Sequence[int]], field: str, limits: Limits, vocab_size: int
) -> list[list[int]]:
    """Inputs given as token ids: their count, none empty, each id in the vocabulary, and
    their ids together at most max_queued_tokens (the bound on a request of ids, whose body
    holds no text to bound it by characters)."""
    check_count(len(batch), field, limits, "inputs")
    total = 0
    for i, ids in enumerate(batch):
        if not ids:
            raise BadRequest(
                f"{field}[{i}]: no token ids; an input needs at least one", _param(field), "empty"
            )
        if bad := [token for token in ids if not 0 <= token < vocab_size]:
            raise BadRequest(
                f"{field}[{i}]: token id {bad[0]} is not in the vocabulary (0-{vocab_size - 1})",
                _param(field),
            )
        total += len(ids)
    if total > limits.max_request_tokens:
        raise BadRequest(
            f"{field}: {total} token ids in all; the limit is {limits.max_request_tokens} per "
            "request (max_queued_tokens)",
            _param(field),
            "too_many",
        )
    return [list(ids) for ids in batch]


def check_reply_tokens(count: int, field: str, limits: Limits) -> None:
    """A reply that lists tokens (tokenize) holds at most max_queued_tokens of them, the
    bound on its size."""
    if count > limits.max_request_tokens:
        raise BadRequest(
            f"{field}: {count} tokens in all; a reply lists at most {limits.max_request_tokens} "
            "(max_queued_tokens): send fewer or shorter texts",
            _param(field),
            "too_many",
        )


def role_named(name: str | None, field: str, default: str) -> TextRole:
    """The role an HTTP request names ("query" or "passage"), or the server's default."""
    try:
        return TextRole(default if name is None else name)
    except ValueError:
        raise BadRequest(
            f"{field}: {name!r}; this model's roles are 'query' and 'passage' (the e5 prefixes)",
            field,
        ) from None


def check_dimensions(dimensions: int | None, dim: int, model: str) -> None:
    """Vectors come in the model's own size only (no Matryoshka cut)."""
    if dimensions is not None and dimensions != dim:
        raise BadRequest(
            f"dimensions: {model} gives {dim}-dimensional vectors only; {dimensions!r} is not "
            "offered (leave it out)",
            "dimensions",
        )


@dataclass(frozen=True)
class Truncation:
    """What to do with an input over the model's length: refuse it, or cut it, from the
    right (its end) or the left (its start)."""

    cut: bool = False
    direction: str = "right"


def truncation_of(truncate: bool | None, direction: str, auto_truncate: bool) -> Truncation:
    """A request's truncation: its own `truncate`, else the server's auto_truncate."""
    direction = direction.lower()
    if direction not in ("left", "right"):
        raise BadRequest(
            f"truncation_direction: {direction!r}; expected 'Left' or 'Right'",
            "truncation_direction",
        )
    return Truncation(auto_truncate if truncate is None else truncate, direction)


LONG_TEXT = {pb.LONG_TEXT_ERROR: "error", pb.LONG_TEXT_TRUNCATE: "truncate",
             pb.LONG_TEXT_WINDOWS: "windows"}  # fmt: skip


def choice(table: dict[int, Any], value: int, field: str) -> Any:
    """An enum field's meaning; a number the contract does not define is the caller's error
    (proto3 lets any integer through)."""
    if value not in table:
        raise BadRequest(f"{field}: {value} is not one of {sorted(table)}")
    return table[value]


PRIORITIES = {
    pb.PRIORITY_UNSPECIFIED: None,
    pb.PRIORITY_BULK: Priority.BULK,
    pb.PRIORITY_INTERACTIVE: Priority.INTERACTIVE,
    pb.PRIORITY_QUERY: Priority.QUERY,
}
PRIORITY_HEADER = "X-Priority"  # HTTP: a request's priority, on every route that embeds


def priority_of(value: int, default: Priority | None = None) -> Priority | None:
    """A request's priority field: its level, or `default` when unspecified (None: the
    engine's, from the request's size)."""
    asked = choice(PRIORITIES, value, "priority")
    return default if asked is None else asked  # not `or`: BULK is 0


def priority_header(value: str | None) -> Priority | None:
    """The X-Priority header's level ("query", "interactive" or "bulk", any case); None when
    it is absent."""
    if value is None:
        return None
    try:
        return priority_named(value)
    except ValueError:
        raise BadRequest(
            f"{PRIORITY_HEADER}: {value!r}; expected one of {PRIORITY_LABELS}",
            PRIORITY_HEADER,
            "invalid_header",
        ) from None


def role_of(value: int) -> TextRole:
    return choice(ROLES, value, "role")


def k_of(request: Any, default: int = 10) -> int:
    """k as sent; unset means the default, an explicit 0 is an error."""
    if not request.HasField("k"):
        return default
    if request.k == 0:
        raise BadRequest("k: must be at least 1")
    return request.k


def metadata_of(text: str, field: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text, object_pairs_hook=once_each)
    except json.JSONDecodeError as err:
        raise BadRequest(f"{field}: not JSON ({err.msg} at character {err.pos})") from None
    except KeyTwice as err:
        raise BadRequest(f"{field}: {err}") from None
    except RecursionError:
        raise BadRequest(f"{field}: nested too deeply") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{field}: must be a JSON object, got {json_kind(value)}")
    return value


def span_of(request: Any, field: str = "span") -> tuple[int, int] | None:
    """A request's Span field as (start, end); None when unset."""
    if not request.HasField(field):
        return None
    span = getattr(request, field)
    return span.start, span.end


def neuron_of(request: Any) -> tuple[int, int] | None:
    """ExplainRequest.neuron as (layer, head); None when unset. The model's ranges are
    checked by the explainer, which knows them."""
    return (request.neuron.layer, request.neuron.head) if request.HasField("neuron") else None
