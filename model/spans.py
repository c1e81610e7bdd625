"""From a word in the caller's text to the tokens that carry it.

Every word-level feature (a word's contextual vector, its sense, what it attends to) starts
here: find the word's character span, then the token indices covering that span. A word may
be one token (苹果 in e5's vocabulary) or several (杜鹃 in e5; every Chinese word in BERT,
which splits per character).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np


class SpanError(ValueError):
    """The word or span does not exist in the text as asked. `param`: which of them
    ("word", "occurrence", "span") is at fault."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


# Scripts written without spaces between words: a word of theirs may stand anywhere in a
# run of their characters (苹果 in 吃苹果了). Elsewhere a word ends where its letters do.
UNSPACED_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL", "THAI", "LAO", "KHMER", "MYANMAR",
                    "TIBETAN", "IDEOGRAPHIC")  # fmt: skip


def shown(word: str, limit: int = 40) -> str:
    """`word` quoted for a message, its first `limit` characters when it is longer: an error
    about a word sent by mistake (a whole document, say) should not send it back whole."""
    if len(word) <= limit:
        return repr(word)
    return f"{word[:limit]!r}... ({len(word):,} characters)"


def word_spans(text: str, word: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of every appearance of `word`, left to right, not
    overlapping (哈哈 twice in 哈哈哈哈): the one rule by which occurrences are numbered. A
    word that begins or ends with a letter or digit of a spaced script (Latin, Cyrillic...)
    is a whole word there: "apple" is not in "Pineapple" or "apples"."""
    if not word:
        raise SpanError("word is empty: give the word, or its characters as a span", "word")
    spans, start = [], text.find(word)
    while start >= 0:
        end = start + len(word)
        if _whole_word(text, start, end):
            spans.append((start, end))
            start = text.find(word, end)
        else:
            start = text.find(word, start + 1)
    return spans


def why_not(text: str, word: str) -> str:
    """Why a word that looks present is not found, where it is one of the common slips: the
    word is matched as written, whole where its script spaces words."""
    if word.strip() and word != word.strip() and word_spans(text, word.strip()):
        return " (the word has whitespace around it)"
    if word_spans(unicodedata.normalize("NFC", text), unicodedata.normalize("NFC", word)):
        return (
            " as written: the text writes it in another Unicode form (accents as separate "
            "marks, or the other way round); normalize both to NFC"
        )
    if word_spans(unicodedata.normalize("NFKC", text), unicodedata.normalize("NFKC", word)):
        return (
            " as written: the text writes it in other forms of its characters (full-width "
            "ＡＢＣ or １２３ against ABC or 123, say); give the word as the text writes it"
        )
    if word_spans(text.casefold(), word.casefold()):
        return " as written: the text writes it with other capitals (a word is matched by case)"
    if word in text:
        return (
            " as a whole word: it is part of a longer word there (a word of a script that "
            "spaces its words is matched whole: 'apple' is not in 'Pineapple')"
        )
    return ""


def _whole_word(text: str, start: int, end: int) -> bool:
    joined_before = start > 0 and _spaced_letter(text[start]) and _spaced_letter(text[start - 1])
    joined_after = end < len(text) and _spaced_letter(text[end - 1]) and _spaced_letter(text[end])
    return not (joined_before or joined_after)


def _spaced_letter(char: str) -> bool:
    """A letter, digit or mark of a script that puts spaces between words."""
    if not (char.isalnum() or unicodedata.category(char).startswith("M")):
        return False
    return not unicodedata.name(char, "").startswith(UNSPACED_SCRIPTS)


def find_word(text: str, word: str, occurrence: int = 0) -> tuple[int, int]:
    """Character span [start, end) of the `occurrence`-th (0-based) appearance of `word`."""
    if occurrence < 0:
        raise SpanError(f"occurrence must be >= 0, got {occurrence}", "occurrence")
    spans = word_spans(text, word)
    if not spans:
        raise SpanError(
            f"word {shown(word)} does not occur in the text{why_not(text, word)}", "word"
        )
    if occurrence >= len(spans):
        raise SpanError(
            f"occurrence {occurrence} of {shown(word)} asked for, but the text has {len(spans)} "
            f"(counted from 0: the last is occurrence {len(spans) - 1})",
            "occurrence",
        )
    return spans[occurrence]


def token_indices_for_span(
    offsets: Sequence[tuple[int, int]], from_text: Sequence[bool], start: int, end: int
) -> list[int]:
    """Indices of tokens whose character offsets overlap [start, end).

    Tokens that are not from the caller's text (specials, prefixes) never match. Raises
    SpanError for an empty span or one no token covers (e.g. only whitespace).
    """
    return TokenSpans(offsets, from_text).indices(start, end).tolist()


class TokenSpans:
    """`token_indices_for_span` for many spans of one text: its offsets are read into arrays
    once, so each span costs one vectorised pass (a stored document may hold thousands of
    tokens and its word thousands of occurrences)."""

    def __init__(self, offsets: Sequence[tuple[int, int]], from_text: Sequence[bool]) -> None:
        pairs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        self.starts, self.ends = pairs[:, 0], pairs[:, 1]
        self.from_text = np.asarray(from_text, dtype=bool)
        if len(self.from_text) != len(pairs):
            raise ValueError(f"{len(pairs)} offsets but {len(self.from_text)} from_text flags")

    def indices(self, start: int, end: int) -> np.ndarray:
        if not 0 <= start < end:
            raise SpanError(f"span [{start}, {end}) is empty or negative", "span")
        hits = np.flatnonzero(self.from_text & (self.starts < end) & (self.ends > start))
        if not len(hits):
            raise SpanError(f"no token covers characters [{start}, {end})", "span")
        return hits
