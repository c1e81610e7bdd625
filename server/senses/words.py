"""A word's contextual vector: the mean of the token vectors that cover its characters; and
its sentence's: the mean of the token vectors of the sentence it is in.

In e5's vocabulary 苹果 is one token; in BERT it is two characters; a word may also sit
inside a longer token (花 in 花钱). Either way the tokens overlapping the word's span carry it.
A longer text may use the word in several senses, one sentence rarely does: each occurrence
gets its own sentence's vector, not the whole text's.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedsense.model import TextRole
from embedsense.model.spans import SpanError, TokenSpans, find_word, word_spans
from embedsense.server.engine import Engine
from embedsense.server.index import Document
from embedsense.server.senses.errors import SenseInputError

# Stored documents are embedded as passages; word vectors are too, so that a sentence given
# in a call and one stored in a collection are comparable.
ROLE = TextRole.PASSAGE


@dataclass(frozen=True)
class Occurrence:
    text: str
    start: int
    end: int

    @property
    def word(self) -> str:
        return self.text[self.start : self.end]


def locate(
    text: str, word: str = "", span: tuple[int, int] | None = None, occurrence: int = 0
) -> Occurrence:
    """The occurrence a caller means: a character span, or the n-th appearance of a word."""
    if span is not None:
        start, end = span
        if start >= end:
            raise SenseInputError(
                f"span [{start}, {end}) is empty: a span's end comes after its start "
                "(characters start to end-1)"
            )
        if not 0 <= start < end <= len(text):
            raise SenseInputError(
                f"span [{start}, {end}) is not within the text's {len(text)} characters"
            )
        if word and text[start:end] != word:
            raise SenseInputError(f"span [{start}, {end}) is {text[start:end]!r}, not {word!r}")
        return Occurrence(text, start, end)
    try:
        start, end = find_word(text, word, occurrence)
    except SpanError as err:
        raise SenseInputError(f"{err} (text: {text[:40]!r})") from None
    return Occurrence(text, start, end)


def occurrences_of(word: str, text: str) -> list[Occurrence]:
    """Every appearance of `word` in `text`, numbered as `locate` numbers them."""
    return [Occurrence(text, start, end) for start, end in word_spans(text, word)]


def example_occurrences(text: str, word: str) -> list[Occurrence]:
    """A sense example's occurrences of the word, each of the example's sense (at least one:
    an example without the word is refused as `locate` refuses it)."""
    return occurrences_of(word, text) or [locate(text, word)]


# A sentence ends at a Chinese full stop, exclamation or question mark; at a Latin one before
# a space or the end (not inside a URL or a number); at a blank line. Closing quotes and
# brackets after the mark belong to it. A single line break does not end one: text wrapped
# at a fixed width breaks lines inside sentences.
SENTENCE_END = re.compile(r"[。！？｡．]+[”’」』\"')）]*|[.!?]+[”’\"')]*(?=\s|$)|\n[^\S\n]*\n")


class Sentences:
    """Where a text's sentences end, found once for all its occurrences (a stored document
    may hold thousands)."""

    def __init__(self, text: str) -> None:
        self.ends = [mark.end() for mark in SENTENCE_END.finditer(text)]
        self.length = len(text)

    def around(self, start: int, end: int) -> tuple[int, int]:
        """The span of the sentence holding characters [start, end): from the end of the
        sentence before it to its own closing mark, included."""
        before = bisect_right(self.ends, start)
        after = bisect_left(self.ends, end)
        return (
            self.ends[before - 1] if before else 0,
            self.ends[after] if after < len(self.ends) else self.length,
        )


@dataclass(frozen=True)
class WordVectors:
    words: np.ndarray  # (n, dim): the tokens covering each occurrence, averaged
    contexts: np.ndarray  # (n, dim): the tokens of each item's sentence (or sentences), averaged


async def word_vectors(
    engine: Engine,
    occurrences: Sequence[Occurrence | Sequence[Occurrence]],
    layers: Sequence[int] | None = None,
) -> WordVectors:
    """Each occurrence's contextual vector and its sentence's, in one batched engine call.
    An item may be several occurrences in one text (a sense example holding the word twice):
    its vector is the mean of theirs."""
    groups = [[o] if isinstance(o, Occurrence) else list(o) for o in occurrences]
    if any(not group or len({o.text for o in group}) > 1 for group in groups):
        raise ValueError("an item of word_vectors is one or more occurrences in one text")
    results = await engine.embed(
        [group[0].text for group in groups], role=ROLE, layers=layers, token_vectors=True,
        normalize=False, windowed=True,
    )  # fmt: skip
    words, contexts = [], []
    for group, r in zip(groups, results, strict=True):
        sentences = Sentences(group[0].text)
        each, sentence_rows = [], []
        for o in group:
            try:
                rows = r.tokenized.token_indices(o.start, o.end)
            except SpanError as err:
                raise SenseInputError(f"{err} in {o.text[:40]!r}") from None
            each.append(r.token_vectors[rows].mean(axis=0))
            # It holds the word's tokens: never a span no token covers.
            sentence_rows += r.tokenized.token_indices(*sentences.around(o.start, o.end))
        words.append(np.mean(each, axis=0))
        contexts.append(r.token_vectors[sorted(set(sentence_rows))].mean(axis=0))
    return WordVectors(np.stack(words), np.stack(contexts))


@dataclass(frozen=True)
class StoredOccurrences:
    """A stored document's occurrences of a word that some token covers, with their vectors."""

    occurrences: list[Occurrence]
    words: np.ndarray  # (n, dim)
    sentences: np.ndarray  # (s, dim): the tokens of each sentence holding the word, averaged
    sentence_of: np.ndarray  # (n,): each occurrence's row in `sentences`
    uncovered: int  # occurrences no token covers (whitespace the tokenizer drops), left out


def stored_word_vectors(
    doc: Document, occurrences: Sequence[Occurrence], *, with_sentences: bool = True
) -> StoredOccurrences:
    """The occurrences' word vectors and their sentences' vectors (once per sentence), from
    the document's stored token vectors (no model call); its offsets and sentence ends are
    read once for all of them. Without sentences (`with_sentences=False`: what clustering
    reads), no sentence rows."""
    offsets = [(t.start, t.end) for t in doc.tokens]
    spans = TokenSpans(offsets, [t.end > t.start for t in doc.tokens])  # specials: (0, 0)
    text_sentences = Sentences(doc.text) if with_sentences else None
    kept, words, sentence_of = [], [], []
    sentences: dict[tuple[int, int], int] = {}  # span -> row
    for occurrence in occurrences:
        try:
            rows = spans.indices(occurrence.start, occurrence.end)
        except SpanError:
            continue
        kept.append(occurrence)
        words.append(doc.token_vectors[rows].mean(axis=0))
        if text_sentences is not None:
            around = text_sentences.around(occurrence.start, occurrence.end)
            sentence_of.append(sentences.setdefault(around, len(sentences)))
    dim, dtype = doc.token_vectors.shape[1], doc.token_vectors.dtype
    return StoredOccurrences(
        kept,
        np.stack(words) if words else np.empty((0, dim), dtype),
        np.stack([doc.token_vectors[spans.indices(*span)].mean(axis=0) for span in sentences])
        if sentences
        else np.empty((0, dim), dtype),
        np.asarray(sentence_of, dtype=np.int64),
        len(occurrences) - len(kept),
    )
