"""What the client hands back: plain dataclasses, vectors as float32 numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


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


@dataclass(frozen=True)
class StoredDocument:
    id: str
    text: str
    metadata: dict[str, Any]
    vector: np.ndarray | None = None
