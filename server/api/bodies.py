"""HTTP request bodies within bounds: a size limit checked before and while reading, a
budget of body bytes held at once, and JSON parsing that refuses a body of more values than
any request needs before it builds them (parsed JSON costs far more memory than its text:
tens of bytes for every small value, so a body of millions of tiny values would cost
gigabytes where its text costs megabytes)."""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from typing import Any

import orjson
from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestPayloadError

from embedsense.proto.values import KeyTwice, once_each

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes and all
_LONG_NUMBER = re.compile(rb"\d{19}")  # past 64 bits: 20 digits, or 19 below -2**63
# An array of numbers long enough to be a vector (no quote in it: never across a string)
_NUMBER_ARRAY = re.compile(rb"\[[-+0-9.eE,\s]{64,}\]")


class BodyError(Exception):
    """A body refused before it is parsed: its HTTP status and kind."""

    def __init__(self, status: int, message: str, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.headers: dict[str, str] = {}  # e.g. a 415's Accept-Encoding


class BodyBudget:
    """Bytes of request bodies held at once, from the first byte read until the reply is
    sent (the parsed request lives that long). One event loop: no lock."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def claim(self) -> Claim:
        """An empty claim on the budget, for one request's body."""
        return Claim(self)


class Claim:
    """What one request holds of the budget; release() gives it all back."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def take(self, size: int) -> None:
        """Hold `size` more bytes, or raise BodyError (429: bodies are in flight up to the
        budget; the caller may retry)."""
        budget = self.budget
        if budget.held + size > budget.limit:
            raise BodyError(
                429,
                f"{budget.held} bytes of request bodies are in flight and this one adds "
                f"{size}; the limit is {budget.limit} (http_max_body_bytes_in_flight): "
                "retry later",
                "resource_exhausted",
            )
        budget.held += size
        self.size += size

    def release(self) -> None:
        self.budget.held -= self.size
        self.size = 0


# The codings a body may come in, by the names a Content-Encoding gives them (x-gzip is
# gzip: RFC 9110 8.4.1.3), and how a 415 names them. aiohttp would decode br and zstd only
# with optional packages, and pass any other coding through as if it were none: the server
# decodes bodies itself (HttpServer turns aiohttp's decoding off), these and no others.
CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}
ACCEPTED = "gzip, deflate"


async def read_body(request: web.Request, limit: int, claim: Claim, timeout_s: float) -> bytearray:
    """The body, decompressed as its Content-Encoding says, its bytes held on `claim` (the
    caller releases it once the reply is sent). Raises BodyError: 415 for a coding it does
    not decode, 413 over `limit` (before reading, when Content-Length says so), 408 when it
    arrives too slowly, 400 when it does not decode, 429 over the budget."""
    coding = content_coding(request)
    declared = request.content_length or 0
    if declared > limit and coding is None:
        raise _too_large(declared, limit)
    # A compressed body's length says little of its size once decoded (the reading below
    # holds what it decodes): holding at most the limit up front keeps one slow request
    # that declares a huge length from holding the whole budget.
    claim.take(min(declared, limit))
    body = bytearray()
    inflater = Inflater(coding) if coding is not None else None
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.readany():
                if inflater is None:
                    _append(body, chunk, limit, claim)
                    continue
                while chunk:  # inflated a piece at a time: a bomb stops at the limit
                    _append(body, inflater.inflate(chunk, limit - len(body) + 1), limit, claim)
                    chunk = inflater.pending
        if inflater is not None:
            inflater.finish()
    except TimeoutError:
        raise BodyError(
            408, f"the request body did not arrive within {timeout_s:.0f} s", "timeout"
        ) from None
    except zlib.error as err:
        raise BodyError(
            400,
            f"the body does not decode as its Content-Encoding ({coding}): {err}",
            "invalid_json",
        ) from None
    except RequestPayloadError as err:  # the transfer broke: a bad chunk, a short body
        raise BodyError(400, f"the body could not be read: {err}", "invalid_json") from None
    return body


def content_coding(request: web.Request) -> str | None:
    """The coding the body comes in (None: none, or only `identity`). Raises BodyError 415
    for one the server does not decode, and for several: no client compresses twice, and
    one that says so is more likely confused than not."""
    named = ",".join(request.headers.getall(hdrs.CONTENT_ENCODING, ()))
    codings = [c.strip().lower() for c in named.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in CODINGS:
        return CODINGS[codings[0]]
    error = BodyError(
        415,
        f"the body's Content-Encoding is {named.strip()!r}; this server decodes one of "
        f"{ACCEPTED} (or none)",
        "unsupported_media_type",
    )
    error.headers["Accept-Encoding"] = ACCEPTED  # what RFC 9110 15.5.16 asks a 415 to name
    raise error


class Inflater:
    """A gzip or deflate body decoded as it arrives, never more than asked for at a time."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._stream: Any = None  # zlib's decompressobj, made on the first bytes
        self.pending = b""  # what the last inflate() left of its input, for the next

    def inflate(self, data: bytes, max_length: int) -> bytes:
        """At most `max_length` bytes of what `data` decodes to; the rest waits in
        `pending`. Raises zlib.error, as soon as bytes follow the stream's end (zlib would
        keep them all, unbounded, in unused_data)."""
        if self._stream is None:
            self._stream = zlib.decompressobj(self._window_bits(data))
        out = self._stream.decompress(data, max_length)
        self.pending = self._stream.unconsumed_tail
        if self._stream.unused_data:  # the stream ended before its input did
            if self.coding != "gzip":
                raise zlib.error(f"bytes follow the end of the {self.coding} stream")
            # gzip may hold several members, one after another (RFC 1952): the next starts
            # a stream of its own; bytes that are no member fail its header check.
            self.pending, self._stream = self._stream.unused_data, None
        return out

    def finish(self) -> None:
        """Raises zlib.error when the stream was cut short."""
        if self._stream is not None and not self._stream.eof:  # None: empty, or a member ended
            raise zlib.error(f"the {self.coding} stream is cut short")

    def _window_bits(self, first: bytes) -> int:
        if self.coding == "gzip":
            return 16 + zlib.MAX_WBITS  # a gzip header and trailer
        # deflate is zlib's format (RFC 9110 8.4.1.2), but some clients send raw deflate,
        # without zlib's header: as aiohttp does, a first byte that names no zlib method
        # (the low nibble of a zlib header is 8) says which.
        return zlib.MAX_WBITS if first[0] & 0x0F == 8 else -zlib.MAX_WBITS


def _append(body: bytearray, chunk: bytes, limit: int, claim: Claim) -> None:
    size = len(body) + len(chunk)
    if size > limit:
        raise _too_large(size, limit, "at least ")
    if size > claim.size:  # decompressed, or sent without a Content-Length
        claim.take(size - claim.size)
    body += chunk


def _too_large(size: int, limit: int, qualifier: str = "") -> BodyError:
    return BodyError(
        413,
        f"the body is {qualifier}{size} bytes; the limit is {limit} (http_max_body_bytes, "
        "derived from max_request_chars and max_texts_per_request unless set)",
        "too_large",
    )


def values_bound(body: bytes | bytearray) -> int:
    """An upper bound on the JSON values in `body`, at the speed of a memory scan: every
    value but the first follows a comma or opens a container (commas and brackets inside
    strings count too, so this only ever overestimates)."""
    return body.count(b",") + body.count(b"[") + body.count(b"{") + 1


def values_outside_strings(body: bytes | bytearray) -> int:
    """values_bound with the strings' own commas and brackets left out: what a body of
    texts full of them (CSV, code) really holds. One regex pass, run only over the bound."""
    return values_bound(_STRING.sub(b'""', body))


def parse_json(body: bytes | bytearray, max_values: int, keys_once: bool = False) -> Any:
    """The body as JSON, refused (BodyError 413) when it could hold more than `max_values`
    values, before any is built; 400 when it is not JSON (or holds a lone surrogate escape,
    which is no Unicode text, or nests deeper than 1024), or, with `keys_once`, when an
    object gives a key twice (JSON keeps the last: a filter's `$gt` written twice would
    filter on the second in silence)."""
    if values_bound(body) > max_values and (bound := values_outside_strings(body)) > max_values:
        raise BodyError(
            413,
            f"the body has {bound - 1} commas and brackets; a request holds at most "
            f"{max_values} JSON values (max_texts_per_request plus max_queued_tokens token "
            "ids): send fewer inputs at a time",
            "too_large",
        )
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        reason = str(err)
        if "not valid UTF-8" in reason:  # orjson adds "surrogates not allowed" to any
            try:
                bytes(body).decode("utf-8")
            except UnicodeDecodeError as bad:
                reason = f"it is not UTF-8 (byte {body[bad.start]:#04x} at offset {bad.start})"
        elif "surrogate" in reason:
            reason = (
                "it holds a lone UTF-16 surrogate escape (such as \\ud800), which is no "
                f"Unicode character ({reason})"
            )
        raise BodyError(400, f"the body is not valid JSON: {reason}", "invalid_json") from None
    if _LONG_NUMBER.search(body):
        # orjson reads an integer past 64 bits as a float, silently rounded; Python's parser
        # keeps it exact, for the checks after to refuse it (the body is valid JSON by now).
        try:
            return json.loads(body, object_pairs_hook=once_each if keys_once else None)
        except RecursionError:
            raise BodyError(400, "the body nests too deeply", "invalid_json") from None
        except KeyTwice as err:
            raise _key_twice(err) from None
    if keys_once:
        _check_keys_once(body)
    return value


def _check_keys_once(body: bytes | bytearray) -> None:
    """BodyError 400 naming a key that an object of `body` (valid JSON) gives twice, where
    orjson keeps the last in silence. Python's parser finds it, over the body with its long
    arrays of numbers emptied first: vectors hold no keys, and are most of the parsing."""
    try:
        json.loads(_NUMBER_ARRAY.sub(b"[]", body), object_pairs_hook=once_each)
    except RecursionError:
        # Deeper than Python's parser goes (orjson's goes to 1024): the filter or metadata
        # it holds is refused for its depth by the checks after, whatever its keys.
        pass
    except KeyTwice as err:
        raise _key_twice(err) from None


def _key_twice(err: KeyTwice) -> BodyError:
    return BodyError(400, f"the body gives {err}", "invalid_json")
