"""A word's contextual vector: the mean of the token vectors that cover its characters; and
its sentence's: the mean of the token vectors of the sentence it is in.

In e5's vocabulary 苹果 is one token; in BERT it is two characters; a word may also sit
inside a longer token (花 in 花钱). Either way the tokens overlapping the word's span carry it.
A longer text may use the word in several senses, one sentence rarely does: each occurrence
gets its own sentence's vector, not the whole text's.

Both are read from the sentence encoded alone, in a text given in a call and in a stored
document alike. Token vectors that have seen a whole document carry the document: the same
sentence alone and inside 30 others clustered by length, not by sense.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from embedsense.model import TextRole
from embedsense.model.spans import SpanError, TokenSpans, find_word, shown, word_spans
from embedsense.server.engine import Embedding, Engine
from embedsense.server.index import Document, Token
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
        if occurrence:  # one would be dropped unsaid
            raise SenseInputError(
                f"span and occurrence ({list(span)}, {occurrence}): each names the occurrence; "
                "give one",
                "span",
            )
        start, end = span
        if start >= end:
            raise SenseInputError(
                f"span [{start}, {end}) is empty: a span's end comes after its start "
                "(characters start to end-1)",
                "span",
            )
        if not 0 <= start < end <= len(text):
            raise SenseInputError(
                f"span [{start}, {end}) is not within the text's {len(text)} characters", "span"
            )
        if word and text[start:end] != word:
            raise SenseInputError(
                f"span [{start}, {end}) is {shown(text[start:end])}, not {shown(word)}", "span"
            )
        return Occurrence(text, start, end)
    try:
        start, end = find_word(text, word, occurrence)
    except SpanError as err:
        raise SenseInputError(f"{err} (text: {text[:40]!r})", err.param) from None
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
        marks = [mark.end() for mark in SENTENCE_END.finditer(text)]
        # Whitespace after a mark (a blank line, a last line break) is no sentence of its
        # own: it stays with the sentence before it, which ends where words follow.
        self.ends = [end for end, after in pairwise([*marks, len(text)])
                     if text[end:after].strip()]  # fmt: skip
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

    def spans(self) -> list[tuple[int, int]]:
        """The text cut into its sentences, in order; together they are the whole text."""
        return [(a, b) for a, b in pairwise([0, *self.ends, self.length]) if a < b]


@dataclass(frozen=True)
class WordVectors:
    words: np.ndarray  # (n, dim): the tokens covering each occurrence, averaged
    contexts: np.ndarray  # (n, dim): the tokens of each item's sentence (or sentences), averaged


async def word_vectors(
    engine: Engine,
    occurrences: Sequence[Occurrence | Sequence[Occurrence]],
    layers: Sequence[int] | None = None,
) -> WordVectors:
    """Each occurrence's contextual vector and its sentence's, read from its sentence encoded
    alone, in one batched engine call. An item may be several occurrences in one text (a
    sense example holding the word twice): its vector is the mean of theirs, its sentence
    vector the mean of their sentences' tokens."""
    groups = [[o] if isinstance(o, Occurrence) else list(o) for o in occurrences]
    if any(not group or len({o.text for o in group}) > 1 for group in groups):
        raise ValueError("an item of word_vectors is one or more occurrences in one text")
    pieces: dict[tuple[str, int, int], int] = {}  # (text, sentence span) -> its row
    plans = []
    for group in groups:
        sentences = Sentences(group[0].text)
        plans.append([(o, pieces.setdefault((o.text, *sentences.around(o.start, o.end)),
                                            len(pieces))) for o in group])  # fmt: skip
    keys = list(pieces)
    results = await engine.embed(
        [text[start:end] for text, start, end in keys], role=ROLE, layers=layers,
        token_vectors=True, normalize=False, windowed=True,
    )  # fmt: skip
    words, contexts = [], []
    for plan in plans:
        each, sentence_rows = [], []
        for o, piece in plan:
            _, start, end = keys[piece]
            r = results[piece]
            try:
                rows = r.tokenized.token_indices(o.start - start, o.end - start)
            except SpanError:
                raise SenseInputError(
                    f"no token covers characters [{o.start}, {o.end}) in {o.text[:40]!r}"
                ) from None
            each.append(r.token_vectors[rows].mean(axis=0))
        # A sentence holding two of the item's occurrences weighs once in its sentence vector.
        for piece in dict.fromkeys(piece for _, piece in plan):
            _, start, end = keys[piece]
            # It holds the word's tokens: never a span no token covers.
            r = results[piece]
            sentence_rows.append(r.token_vectors[r.tokenized.token_indices(0, end - start)])
        words.append(np.mean(each, axis=0))
        contexts.append(np.concatenate(sentence_rows).mean(axis=0))
    return WordVectors(np.stack(words), np.stack(contexts))


class SentencePieces:
    """What a collection with token vectors stores for texts: a text of several sentences
    gets each sentence's token vectors from the sentence encoded alone (its pieces, `texts`),
    so that its occurrences are read as `word_vectors` reads a text's; a text of one
    sentence, its own encoding's."""

    def __init__(self, texts: Sequence[str]) -> None:
        cut = [Sentences(text).spans() for text in texts]
        self.pieces = [(i, start, end) for i, spans in enumerate(cut) if len(spans) > 1
                       for start, end in spans]  # fmt: skip
        self.texts = [texts[i][start:end] for i, start, end in self.pieces]

    def stored(
        self, whole: Sequence[Embedding], pieces: Sequence[Embedding]
    ) -> list[tuple[list[Token], np.ndarray]]:
        """Each text's tokens and token vectors, from the encodings (with token vectors) of
        the texts (`whole`) and of the pieces, offsets into the whole text. Of a piece, only
        tokens of the text: a sentence's specials and the model's prefix belong to no
        character, and a document of short sentences would store several per sentence."""
        tokens: dict[int, list[Token]] = {}
        vectors: dict[int, list[np.ndarray]] = {}
        for (i, start, _), r in zip(self.pieces, pieces, strict=True):
            t = r.tokenized
            own = [j for j, from_text in enumerate(t.from_text) if from_text]
            tokens.setdefault(i, []).extend(
                Token(t.tokens[j], t.offsets[j][0] + start, t.offsets[j][1] + start) for j in own
            )
            vectors.setdefault(i, []).append(r.token_vectors[own])
        # A text of one sentence keeps its own encoding, which is its sentence's; so does one
        # whose pieces hold no token of it (none stored: Milvus reads that as no tokens).
        return [(tokens[i], np.concatenate(vectors[i])) if tokens.get(i) else own_tokens(r)
                for i, r in enumerate(whole)]  # fmt: skip


def own_tokens(encoding: Embedding) -> tuple[list[Token], np.ndarray]:
    """A text's tokens and token vectors as its own encoding has them (specials at (0, 0))."""
    t = encoding.tokenized
    tokens = [Token(token, a, b) for token, (a, b) in zip(t.tokens, t.offsets, strict=True)]
    return tokens, encoding.token_vectors


async def encode_to_store(
    engine: Engine, texts: Sequence[str], **embed_options: Any
) -> tuple[list[Embedding], list[tuple[list[Token], np.ndarray]]]:
    """`texts` as a collection with token vectors stores them: each text encoded whole (its
    vector) and, where it has several sentences, a sentence at a time (its token vectors),
    in one engine call, so one admission and one deadline for both. The texts' encodings, and each
    text's tokens and token vectors. `embed_options`: the engine's (timeout, priority)."""
    pieces = SentencePieces(texts)
    encoded = await engine.embed([*texts, *pieces.texts], role=ROLE, windowed=True,
                                 token_vectors=True, **embed_options)  # fmt: skip
    whole = encoded[: len(texts)]
    return whole, pieces.stored(whole, encoded[len(texts) :])


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
