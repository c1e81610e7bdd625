"""How one search runs on a generation: which selector, which index, which fallback.

A filter's matching labels (a bitmap) and the generation's live set become one FAISS
IDSelector, so the filter applies inside the search. Very selective filters, and queries an
approximate walk answers short, are searched exhaustively over the same vectors instead.
"""

from __future__ import annotations

import faiss
import numpy as np

from embedsense.server.index.faiss_index import (
    exact_view,
    nlist,
    popcount,
    search_parameters,
)
from embedsense.server.index.generation import Generation

# Filters that leave at most this share of the collection are searched exhaustively over
# the matching vectors: a graph walk (HNSW) or a few IVF lists would find too few of them.
SELECTIVE_FILTER_SHARE = 0.02
# Under a filter that keeps a share s of the vectors, a graph walk meets a match only every
# 1/s steps: its candidate list (efSearch) grows by 1/s, up to this, to keep its recall.
MAX_FILTERED_EF = 4096


def filtered_ef(ef_search: int, k: int, share: float) -> int:
    """The graph walk's candidate list under a filter that keeps `share` (0-1] of the
    vectors: widened by 1/share, at most MAX_FILTERED_EF (the milvus backend uses it too),
    and never below k (Milvus refuses a walk shorter than k)."""
    widened = int(max(ef_search, k) / max(share, 1e-9))
    return max(k, min(MAX_FILTERED_EF, max(ef_search, widened)))


def search_generation(
    gen: Generation,
    queries: np.ndarray,
    k: int,
    matching: np.ndarray | None,
    ef_search: int,
    nprobe: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) of the k best live (and matching, when the bitmap `matching` is
    given) vectors for each query; -1 labels where fewer exist. The caller holds the
    generation steady."""
    index, probes, live = gen.index, nprobe, gen.live
    if matching is not None:
        selector, bits = live.selector(among=matching)
        candidates = int(popcount(bits))
        if not candidates:
            return np.full((len(queries), 0), -1), np.zeros((len(queries), 0))
        if candidates <= SELECTIVE_FILTER_SHARE * live.count:
            index, probes = exhaustive(index, probes)
        if index is gen.index and probes == nprobe:  # a walk still (no exhaustive view)
            ef_search = filtered_ef(ef_search, k, candidates / max(live.count, 1))
    elif live.count < index.ntotal:
        selector, bits = live.selector()
        candidates = live.count
    else:
        selector = bits = None  # nothing dead: no selector, FAISS's fastest path
        candidates = live.count
    scores, labels = index.search(
        queries, k, params=search_parameters(index, selector, ef_search, probes)
    )
    # A graph walk or a few IVF lists can come back short when the selector rejects
    # most of what they visit; those queries are answered exhaustively instead.
    short = (labels >= 0).sum(axis=1) < min(k, candidates)
    full, all_lists = exhaustive(index, probes)
    if short.any() and (full is not index or all_lists != probes):
        params = search_parameters(full, selector, ef_search, all_lists)
        scores[short], labels[short] = full.search(queries[short], k, params=params)
    del bits  # the selector read it during the searches
    return labels, scores


def exhaustive(index: faiss.Index, probes: int) -> tuple[faiss.Index, int]:
    """The same vectors searched exhaustively: HNSW's flat storage, or every IVF list."""
    exact = exact_view(index)
    return (exact, probes) if exact is not None else (index, nlist(index) or probes)
