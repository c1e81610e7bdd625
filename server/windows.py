"""Long texts as overlapping windows, and the windows' outputs stitched back together.

A text of n content tokens longer than the model's limit W is cut into windows of at most W
content tokens starting every `stride` tokens; each window is run with the model's special
tokens around it. Every token then takes its vector from the window in which it sits most
centrally, so it has context on both sides; the sentence vector is the mean of the windows'
pooled vectors weighted by their token counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Window:
    start: int  # first content token (0-based, specials excluded)
    end: int  # one past the last


def plan_windows(n_content: int, max_content: int, stride: int) -> list[Window]:
    """Windows covering [0, n_content), each at most max_content long, starts `stride` apart
    (the last one aligned to the end so it is full)."""
    if n_content <= max_content:
        return [Window(0, n_content)]
    stride = min(stride, max_content)  # windows must overlap or touch, never leave gaps
    starts = list(range(0, n_content - max_content, stride)) + [n_content - max_content]
    return [Window(s, s + max_content) for s in starts]


def stitch_tokens(
    windows: list[Window], window_vectors: list[np.ndarray], n_content: int
) -> np.ndarray:
    """Content-token vectors (n_content, C) from each window's content vectors (len, C):
    each token from the window where its distance to the nearer edge is largest."""
    dim = window_vectors[0].shape[1]
    out = np.empty((n_content, dim), dtype=np.float32)
    best = np.full(n_content, -1)
    for w, vectors in zip(windows, window_vectors, strict=True):
        positions = np.arange(w.start, w.end)
        centrality = np.minimum(positions - w.start, w.end - 1 - positions)
        better = centrality > best[w.start : w.end]
        out[positions[better]] = vectors[better]
        best[w.start : w.end] = np.maximum(best[w.start : w.end], centrality)
    return out


def weighted_sentence(windows: list[Window], pooled: list[np.ndarray]) -> np.ndarray:
    """Length-weighted mean of the windows' (unnormalized) pooled vectors."""
    weights = np.array([w.end - w.start for w in windows], dtype=np.float32)
    return (np.stack(pooled) * weights[:, None]).sum(axis=0) / weights.sum()
