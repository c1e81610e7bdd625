"""What the client hands back: plain dataclasses, vectors as float32 numpy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# What a search takes: a text, or a vector (dim,); several in one call as a list of texts,
# or vectors (n, dim), as an array or as lists of numbers.
SearchQuery = str | np.ndarray | Sequence[str] | Sequence[float] | Sequence[Sequence[float]]


@dataclass(frozen=True)
class Info:
    version: str
    model: str
    dim: int
    device: str
    dtype: str
    max_tokens: int
    num_layers: int
    max_batch_tokens: int
    max_queued_tokens: int
    max_concurrent_requests: int
    max_texts_per_request: int
    max_message_bytes: int
    auth_required: bool
    index_backend: str = ""  # "faiss" or "milvus"
    replica: str = ""  # which server answered
    dtype_reason: str = ""  # why the server computes in this dtype
    max_text_chars: int = 0  # characters in one text (0: the server does not say)


@dataclass(frozen=True)
class Tokens:
    tokens: list[str]
    ids: list[int]
    offsets: list[tuple[int, int]]  # character offsets into your text; (0, 0) for specials
    from_text: list[bool]  # False for specials and the model's prefix


@dataclass(frozen=True)
class TokenEmbeddings:
    tokens: Tokens
    vectors: np.ndarray  # (len(tokens), dim)
    windows: int = 1  # > 1: a long text embedded in overlapping windows
    truncated_tokens: int = 0


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    model: str
    dim: int
    metric: str
    index: str
    store_tokens: bool
    count: int
    created_at: float
    trained: bool
    training_size: int
    ef_search: int
    nprobe: int
    tokens: int
    bytes_per_token: float


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str
    metadata: dict[str, Any]
    vector: np.ndarray | None = None  # (dim,), with with_vectors=True


@dataclass(frozen=True)
class StoredDocument:
    id: str
    text: str
    metadata: dict[str, Any]
    vector: np.ndarray | None = None


@dataclass(frozen=True)
class SenseScore:
    label: str
    probability: float  # softmax over the senses at a fixed temperature: comparable
    similarity: float  # cosine to the sense's prototype


@dataclass(frozen=True)
class Disambiguation:
    label: str
    scores: list[SenseScore]  # best first
    nearest: list[tuple[str, str, float]]  # (label, example, cosine), best first
    span: tuple[int, int]  # the occurrence judged, in characters of your text
    layers: list[int]
    centred: bool
    temperature: float
    with_sentence: bool


@dataclass(frozen=True)
class Occurrence:
    id: str
    text: str
    span: tuple[int, int]
    score: float
    metadata: dict[str, Any]


class Occurrences(list[Occurrence]):
    """search_occurrences' answer: a list of occurrences, best first, that also says how many
    of the word's occurrences were compared (`compared`, at most 50,000)."""

    def __init__(self, found: Iterable[Occurrence], compared: int) -> None:
        super().__init__(found)
        self.compared = compared

    def __repr__(self) -> str:
        return f"Occurrences({list.__repr__(self)}, compared={self.compared})"


@dataclass(frozen=True)
class InducedSense:
    size: int
    central: list[Occurrence]


@dataclass(frozen=True)
class Induction:
    senses: list[InducedSense]  # largest first
    occurrences: int
    silhouette: float


@dataclass(frozen=True)
class Inventory:
    name: str
    words: dict[str, dict[str, list[str]]]  # word -> sense label -> examples
    builtin: bool


@dataclass(frozen=True)
class Focus:
    layer: int  # 1-based
    head: int | None  # None: the mean over heads
    tokens: list[tuple[int, float]]  # (token index, attention weight), heaviest first


@dataclass(frozen=True)
class Neuron:
    """One head's query and key vectors (the neuron view): softmax(queries @ keys.T /
    sqrt(head_size)) is that head's attention rows of `query_tokens`."""

    layer: int  # 1-based
    head: int  # 0-based
    query_tokens: list[int]  # the word's tokens; with no word, every token
    queries: np.ndarray  # (len(query_tokens), head_size)
    keys: np.ndarray  # (T, head_size)


@dataclass(frozen=True)
class Explanation:
    tokens: Tokens
    layers: list[int]  # 1-based
    heads: list[int]  # 0-based
    attentions: np.ndarray  # (len(layers), len(heads), T, T); rows sum to 1
    span: tuple[int, int] | None  # the target word, when one was given
    target_tokens: list[int]
    focus: list[Focus]
    max_attention_values: int
    neuron: Neuron | None = None  # when explain(..., neuron=(layer, head)) asked for one
    truncated_tokens: int = 0  # past the first window, not explained (long_text="truncate")

    def check_view(self, layer: int | None, head: int | None) -> None:
        """A ValueError, "layer 13: the explanation has layers 1-12 (1-based)", unless the
        view asked for (a layer, 1-based; a head, 0-based; None: any) is one it holds."""
        if layer is not None and layer not in self.layers:
            raise ValueError(f"layer {layer}: the explanation has layers {_spans(self.layers)} "
                             "(1-based)")  # fmt: skip
        if head is not None and head not in self.heads:
            raise ValueError(f"head {head}: the explanation has heads {_spans(self.heads)} "
                             "(0-based)")  # fmt: skip

    def to_html(
        self,
        path: str | None = None,
        contexts: dict[str, LayerComparison] | None = None,
        senses: dict[str, list[float]] | None = None,
        title: str = "embedsense: attention",
        num_layers: int | None = None,
    ) -> str:
        """One self-contained page: head view, model view, and the sense view of `contexts`
        (other text -> `compare_layers` answer) and `senses` (label -> similarity per layer,
        attention_page.sense_profile). Written to `path` when given; returned either way."""
        from embedsense.client.attention_page import render

        return render(self, path, contexts, senses, title, num_layers)


@dataclass(frozen=True)
class LayerComparison:
    cosines: list[float]  # hidden state 0 (embeddings) .. last layer
    span_a: tuple[int, int]
    span_b: tuple[int, int]


def _spans(numbers: list[int]) -> str:
    """[1, 2, 3, 7] as "1-3, 7"."""
    spans: list[list[int]] = []
    for n in sorted(numbers):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
