"""From search results to hits: ids and scores, with the documents' texts and metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Hit:
    id: str
    score: float  # inner product (cosine for "cosine"), or squared L2 distance for "l2"
    text: str | None = None
    metadata: dict[str, Any] | None = None
    vector: np.ndarray | None = None  # (dim,) float32: the document's pooled vector, when asked


def assemble_hits(
    ids: list[list[str]], scores: np.ndarray, texts: dict[str, tuple[str, dict]] | None
) -> list[list[Hit]]:
    """One list of hits per query. With `texts` (the stored documents' text and metadata by
    id), hits carry them, and an id the store no longer holds (deleted while the search
    ran) is left out; without, the raw hits."""
    results = []
    for row_ids, row_scores in zip(ids, scores, strict=False):
        hits = []
        for doc_id, score in zip(row_ids, row_scores, strict=False):
            if texts is None:
                hits.append(Hit(doc_id, float(score)))
            elif (found := texts.get(doc_id)) is not None:
                hits.append(Hit(doc_id, float(score), *found))
        results.append(hits)
    return results


def within(hits: list[list[Hit]], metric: str, threshold: float | None) -> list[list[Hit]]:
    """The hits good enough for `threshold`: a score at least it for the similarities
    ("cosine", "ip"), a distance at most it for "l2" (squared L2, as the scores are)."""
    if threshold is None:
        return hits
    if metric == "l2":
        return [[h for h in row if h.score <= threshold] for row in hits]
    return [[h for h in row if h.score >= threshold] for row in hits]
