"""From search results to hits: ids and scores, with the documents' texts and metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from embedsense.server.index.store import Document


@dataclass
class Hit:
    id: str
    score: float  # inner product (cosine for "cosine"), or squared L2 distance for "l2"
    text: str | None = None
    metadata: dict[str, Any] | None = None


def assemble_hits(
    ids: list[list[str]], scores: np.ndarray, docs: dict[str, Document] | None
) -> list[list[Hit]]:
    """One list of hits per query. With `docs` (the stored documents by id), hits carry
    their text and metadata, and an id the store no longer holds (deleted while the search
    ran) is left out; without, the raw hits."""
    results = []
    for row_ids, row_scores in zip(ids, scores, strict=False):
        hits = []
        for doc_id, score in zip(row_ids, row_scores, strict=False):
            if docs is None:
                hits.append(Hit(doc_id, float(score)))
            elif (doc := docs.get(doc_id)) is not None:
                hits.append(Hit(doc_id, float(score), doc.text, doc.metadata))
        results.append(hits)
    return results
