"""From a word in the caller's text to the tokens that carry it.

Every word-level feature (a word's contextual vector, its sense, what it attends to) starts
here: find the word's character span, then the token indices covering that span. A word may
be one token (苹果 in e5's vocabulary) or several (杜鹃 in e5; every Chinese word in BERT,
which splits per character).
"""

from __future__ import annotations

from collections.abc import Sequence


class SpanError(ValueError):
    """The word or span does not exist in the text as asked."""


def find_word(text: str, word: str, occurrence: int = 0) -> tuple[int, int]:
    """Character span [start, end) of the `occurrence`-th (0-based) appearance of `word`."""
    if not word:
        raise SpanError("word is empty")
    if occurrence < 0:
        raise SpanError(f"occurrence must be >= 0, got {occurrence}")
    start = -1
    for seen in range(occurrence + 1):
        start = text.find(word, start + 1)
        if start < 0:
            if seen == 0:
                raise SpanError(f"word {word!r} does not occur in the text")
            raise SpanError(
                f"occurrence {occurrence} of {word!r} asked for, but the text has only {seen}"
            )
    return start, start + len(word)


def token_indices_for_span(
    offsets: Sequence[tuple[int, int]], from_text: Sequence[bool], start: int, end: int
) -> list[int]:
    """Indices of tokens whose character offsets overlap [start, end).

    Tokens that are not from the caller's text (specials, prefixes) never match. Raises
    SpanError for an empty span or one no token covers (e.g. only whitespace).
    """
    if not 0 <= start < end:
        raise SpanError(f"span [{start}, {end}) is empty or negative")
    hits = [
        i
        for i, ((s, e), real) in enumerate(zip(offsets, from_text, strict=True))
        if real and s < end and e > start
    ]
    if not hits:
        raise SpanError(f"no token covers characters [{start}, {end})")
    return hits
