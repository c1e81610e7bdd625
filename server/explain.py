"""Why a word means what it means: attention maps, what a word attends to, and where in the
stack two uses of a word pull apart.

Attention needs the encoder's explicit path (the fast path never materializes the
probabilities), so these run their own forward, one text at a time, beside the engine's
batches; a lock keeps at most one running so their memory stays bounded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from embedsense.model import LoadedModel, TextRole, TokenizedText
from embedsense.model.spans import SpanError, shown
from embedsense.model.tokenizer import TextTooLongError, pad_sequences
from embedsense.proto.values import blank_problem
from embedsense.server.engine import DeadlineExceeded, model_failure
from embedsense.server.runner import ModelRunner
from embedsense.server.senses.errors import SenseInputError
from embedsense.server.senses.words import Occurrence, locate

# The attention tensor in one response: layers x heads x tokens x tokens floats at most
# (4 MB as float32). All 12 layers x 12 heads of e5-small fit up to 83 tokens; longer texts
# ask for fewer layers or heads, and the error says so.
MAX_ATTENTION_VALUES = 1_000_000
TOP_TOKENS = 5


@dataclass
class Focus:
    """What one query token attends to: (token index, weight), heaviest first."""

    layer: int  # 1-based: the layer whose attention this is
    head: int | None  # None: the mean over the heads
    tokens: list[tuple[int, float]]


@dataclass
class Neuron:
    """One head's query and key vectors, as its attention used them: after the q/k
    projection, before the scaled dot product, so that softmax(queries @ keys.T /
    sqrt(head_size)) is that head's attention rows of `query_tokens`."""

    layer: int  # 1-based
    head: int  # 0-based
    query_tokens: list[int]  # the target word's tokens; with no word, every token
    queries: np.ndarray  # (len(query_tokens), head_size) float32
    keys: np.ndarray  # (T, head_size) float32


@dataclass
class Explanation:
    tokenized: TokenizedText
    layers: list[int]  # 1-based layer numbers, in the order of `attentions`
    heads: list[int]  # 0-based head numbers
    attentions: np.ndarray  # (len(layers), len(heads), T, T) float32; rows sum to 1
    target: Occurrence | None
    target_tokens: list[int]  # the tokens covering the target word
    focus: list[Focus]  # per layer: mean over heads, then each head
    neuron: Neuron | None = None  # when one (layer, head) was asked for


EXPLAINER_CALLS = frozenset({"explain", "compare_layers"})


class Explainer:
    def __init__(self, model: LoadedModel, runner: ModelRunner) -> None:
        self.model = model
        self.runner = runner
        self.num_layers = model.encoder.cfg.num_layers
        self.num_heads = model.encoder.cfg.num_heads
        # Direct callers of explain() and compare_layers(), from threads, take turns here.
        self._lock = threading.Lock()
        # The API's callers queue here, on the event loop, rather than in threads: one
        # cancelled while it waits is gone, instead of running later for nobody.
        self._turn = asyncio.Lock()

    async def in_turn(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """`explain` or `compare_layers`, in a thread, once the explanations asked for
        before it are done."""
        if method not in EXPLAINER_CALLS:  # a name from another process, over the bridge
            raise ValueError(f"no explainer call {method!r}")
        asked = time.monotonic()
        async with self._turn:
            if kwargs.get("timeout") is not None:  # the deadline counts the wait for a turn
                kwargs["timeout"] -= time.monotonic() - asked
            work = asyncio.ensure_future(asyncio.to_thread(getattr(self, method), *args, **kwargs))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # Its thread cannot be stopped: the turn is kept until it ends, or the next
                # caller's thread would wait behind it, and each one cancelled would add another.
                await asyncio.wait([work])
                raise

    def _forward(
        self,
        tokenized: Sequence[TokenizedText],
        attentions: bool,
        qkv_of: int | None = None,
        timeout: float | None = None,
    ):
        """The encoder's explicit forward; with `qkv_of` (a 0-based layer index), also that
        layer's q/k/v projection output (T, 3C) of the one text, as its attention computes
        it: from the layer's input, after the forward. (Not a hook on the layer: the engine's
        forwards for other callers run through the same module meanwhile.)
        DeadlineExceeded, without computing, when `timeout` seconds passed in the wait for
        the lock: the caller is gone, and the next explanation would wait for this one."""
        deadline = None if timeout is None else time.monotonic() + timeout
        ids, mask = pad_sequences([t.ids for t in tokenized], self.model.tokenizer.pad_id)
        encoder = self.runner.encoder
        with self._lock:
            if deadline is not None and time.monotonic() > deadline:
                raise DeadlineExceeded(f"not done within the {timeout:.3f} s deadline")
            try:
                with self.runner.computing():
                    out = encoder(
                        ids.to(self.runner.device), mask.to(self.runner.device),
                        output_hidden_states=True, output_attentions=attentions,
                    )  # fmt: skip
                    if qkv_of is None:
                        return out
                    layer_input = out.hidden_states[qkv_of][0]  # (T, C): one text, no padding
                    return out, encoder.layers[qkv_of].attention.qkv(layer_input)
            except Exception as err:  # noqa: BLE001 - a status, as the engine's forwards give
                raise model_failure(err) from err

    def _check_neuron(self, neuron: tuple[int, int]) -> tuple[int, int]:
        layer, head = neuron
        if not 1 <= layer <= self.num_layers:
            raise SenseInputError(f"neuron.layer {layer} does not exist: the model has layers "
                                  f"1-{self.num_layers}", "neuron")  # fmt: skip
        if not 0 <= head < self.num_heads:
            raise SenseInputError(f"neuron.head {head} does not exist: the model has heads "
                                  f"0-{self.num_heads - 1}", "neuron")  # fmt: skip
        return layer, head

    def _neuron(self, qkv: torch.Tensor, layer: int, head: int, rows: list[int], T: int) -> Neuron:
        """Head `head`'s slice of the caught projection, split as SelfAttention splits it:
        channels [0, C) are the queries, [C, 2C) the keys, head h owns h*hs .. (h+1)*hs."""
        hs = self.model.encoder.cfg.head_size
        C = hs * self.num_heads
        qkv = qkv.reshape(T, 3 * C).float().cpu().numpy()
        cols = slice(head * hs, (head + 1) * hs)
        queries = qkv[rows, cols]  # (len(rows), hs)
        keys = qkv[:, C : 2 * C][:, cols]  # (T, hs)
        return Neuron(layer, head, rows, np.ascontiguousarray(queries, dtype=np.float32),
                      np.ascontiguousarray(keys, dtype=np.float32))  # fmt: skip

    def _tokenize(self, text: str, role: TextRole, truncate: bool, field: str) -> TokenizedText:
        if (blank := blank_problem(text)) is not None:
            raise SenseInputError(f"{field}: {blank}", field)
        try:
            (tokenized,) = self.model.tokenizer.encode_batch([text], role, truncate=truncate)
        except TextTooLongError as err:
            raise SenseInputError(
                f"{field} is {err.n_tokens} tokens; the model takes {err.limit}: ask for "
                'long_text="truncate" (gRPC: truncate=true) to explain its first window, or '
                "send a shorter part of the text",
                field,
            ) from None
        return tokenized

    @staticmethod
    def _target_tokens(
        tokenized: TokenizedText, target: Occurrence, field: str, param: str = ""
    ) -> list[int]:
        """The tokens that cover `target`; an error is said of `field` and names `param`
        ("": `field`)."""
        try:
            return tokenized.token_indices(target.start, target.end)
        except SpanError:
            if tokenized.truncated_tokens:
                window = max(end for (_, end), ours in zip(tokenized.offsets, tokenized.from_text,
                                                           strict=True) if ours)  # fmt: skip
                raise SenseInputError(
                    f"{field}: {shown(target.word)} at characters {target.start}-{target.end} "
                    f"lies past the truncated window, which ends at character {window}: send "
                    "the part of the text around it",
                    param or field,
                ) from None
            raise SenseInputError(
                f"{field}: no token covers {shown(target.word)} at characters "
                f"{target.start}-{target.end} (the tokenizer keeps none for whitespace alone)",
                param or field,
            ) from None

    def _select(self, chosen: Sequence[int] | None, count: int, what: str, base: int) -> list[int]:
        if not chosen:
            return list(range(base, count + base))
        last = count + base - 1
        field = what + "s"
        for i, value in enumerate(chosen):
            if not base <= value <= last:
                raise SenseInputError(
                    f"{what} {value} does not exist: the model has {field} {base}-{last}", field
                )
            if value in chosen[:i]:  # dropped, the reply's maps would not be the ones asked
                raise SenseInputError(f"{field}: {value} is named twice; name each once", field)
        return sorted(chosen)

    def explain(
        self,
        text: str,
        word: str = "",
        *,
        span: tuple[int, int] | None = None,
        occurrence: int = 0,
        layers: Sequence[int] | None = None,
        heads: Sequence[int] | None = None,
        role: TextRole = TextRole.QUERY,
        truncate: bool = False,
        neuron: tuple[int, int] | None = None,
        timeout: float | None = None,
    ) -> Explanation:
        """Attention of `layers` (1-based) x `heads` (0-based), all by default; and, for a
        target word, the tokens it attends to most in each layer and head. A text over the
        model's positions is refused unless `truncate` (then its first window is explained).
        neuron: (layer 1-based, head 0-based) whose query and key vectors to return too
        (the word's queries, or every token's when there is no word)."""
        if occurrence and not (word or span):  # first: it is the request's own mistake
            raise SenseInputError(
                f"occurrence {occurrence}: of which word? Give the word with it, or a span instead",
                "occurrence",
            )
        if neuron is not None:
            neuron = self._check_neuron(neuron)
        tokenized = self._tokenize(text, role, truncate, "text")
        layer_list = self._select(layers, self.num_layers, "layer", 1)
        head_list = self._select(heads, self.num_heads, "head", 0)
        T = len(tokenized)
        size = len(layer_list) * len(head_list) * T * T
        if size > MAX_ATTENTION_VALUES:
            fit = MAX_ATTENTION_VALUES // (T * T)  # maps of T x T: layers x heads
            fits = f" ({fit} maps of {T}x{T} fit: {_layers_heads(fit, self.num_heads)})"
            raise SenseInputError(
                f"{len(layer_list)} layers x {len(head_list)} heads x {T}x{T} tokens is {size} "
                f"attention values; a response holds at most {MAX_ATTENTION_VALUES}: ask for "
                f"fewer layers or heads{fits if fit else ''}",
                "layers",
            )
        target = None
        target_tokens: list[int] = []
        if word or span:
            target = locate(text, word, span, occurrence)
            field = "word" if span is None else "span"
            target_tokens = self._target_tokens(tokenized, target, field)
        qkv_of = neuron[0] - 1 if neuron is not None else None
        out = self._forward([tokenized], attentions=True, qkv_of=qkv_of, timeout=timeout)
        found = None
        if neuron is not None:
            out, qkv = out
            rows = target_tokens or list(range(T))
            found = self._neuron(qkv, neuron[0], neuron[1], rows, T)
        maps = np.stack([
            out.attentions[layer - 1][0, head_list].float().cpu().numpy() for layer in layer_list
        ])  # (L, H, T, T)  # fmt: skip
        focus: list[Focus] = []
        if target_tokens:
            from_word = maps[:, :, target_tokens, :].mean(axis=2)  # (L, H, T)
            for li, layer in enumerate(layer_list):
                focus.append(Focus(layer, None, _top(from_word[li].mean(axis=0))))
                focus += [Focus(layer, head, _top(from_word[li, hi]))
                          for hi, head in enumerate(head_list)]  # fmt: skip
        return Explanation(tokenized, layer_list, head_list, maps.astype(np.float32), target,
                           target_tokens, focus, found)  # fmt: skip

    def compare_layers(
        self,
        text_a: str,
        text_b: str,
        word: str,
        occurrence_a: int = 0,
        occurrence_b: int = 0,
        role: TextRole = TextRole.QUERY,
        truncate: bool = False,
        timeout: float | None = None,
        span_a: tuple[int, int] | None = None,
        span_b: tuple[int, int] | None = None,
    ) -> tuple[list[float], Occurrence, Occurrence]:
        """Cosine of the word's vector in the two texts at every hidden state, from the
        embedding output (0) to the last layer: where in the stack the contexts separate.
        span_a, span_b: the word's characters in a text, instead of its occurrence there
        (a word written inside a longer one, "apple" in "apples")."""
        if not word and (span_a is None or span_b is None):
            raise SenseInputError(
                "word: empty; name the word to compare in both texts, or give both spans", "word"
            )
        a = _located(text_a, word, span_a, occurrence_a, "a")
        b = _located(text_b, word, span_b, occurrence_b, "b")
        tok_a = self._tokenize(text_a, role, truncate, "text_a")
        tok_b = self._tokenize(text_b, role, truncate, "text_b")
        rows_a = self._target_tokens(tok_a, a, "text_a", "text_a" if span_a is None else "span_a")
        rows_b = self._target_tokens(tok_b, b, "text_b", "text_b" if span_b is None else "span_b")
        out = self._forward([tok_a, tok_b], attentions=False, timeout=timeout)
        cosines = []
        for hidden in out.hidden_states:
            va = hidden[0, rows_a].float().mean(0)
            vb = hidden[1, rows_b].float().mean(0)
            cosines.append(float(torch.nn.functional.cosine_similarity(va, vb, dim=0)))
        return cosines, a, b


def _layers_heads(maps: int, num_heads: int) -> str:
    """A choice of at most `maps` layer-head maps, in words: "1 layer x 3 heads", "2 layers x
    12 heads"."""
    if maps < num_heads:
        return f"1 layer x {maps} head{'s' * (maps != 1)}"
    layers = maps // num_heads
    return f"{layers} layer{'s' * (layers != 1)} x {num_heads} heads"


def _located(
    text: str, word: str, span: tuple[int, int] | None, occurrence: int, side: str
) -> Occurrence:
    """The word's occurrence in text_a or text_b (`side`: "a" or "b"); an error says which
    text, and names that text's span or occurrence field."""
    try:
        return locate(text, word, span, occurrence)
    except SenseInputError as err:
        param = f"{err.param}_{side}" if err.param in ("occurrence", "span") else err.param
        raise SenseInputError(f"text_{side}: {err}", param) from None


def _top(weights: np.ndarray, n: int = TOP_TOKENS) -> list[tuple[int, float]]:
    order = np.argsort(-weights, kind="stable")[:n]
    return [(int(i), float(weights[i])) for i in order]
