"""Forming batches by a token budget, grouping similar lengths to cut padding.

Pure logic, no threads and no model: given what waits, which items run together next. The
oldest item always runs in the next batch (nobody starves); the rest of the batch is filled
with the items closest to it in length, so rows pad little.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class Waiting(Protocol):
    n_tokens: int
    arrival: float


@dataclass
class BatchPlan:
    indices: list[int] = field(default_factory=list)  # into the pending list
    padded_tokens: int = 0
    real_tokens: int = 0


def plan_batch(
    pending: Sequence[Waiting], max_batch_tokens: int, max_batch_requests: int | None = None
) -> BatchPlan:
    """Choose the next batch from `pending` (any order). Never empty when pending is not."""
    if not pending:
        return BatchPlan()
    order = sorted(range(len(pending)), key=lambda i: pending[i].n_tokens)
    length = [pending[i].n_tokens for i in order]  # ascending
    oldest = min(range(len(pending)), key=lambda i: pending[i].arrival)
    lo = order.index(oldest)
    hi = lo + 1  # the batch is order[lo:hi]; its longest row is length[hi - 1]
    limit = max_batch_requests or len(pending)
    while hi - lo < limit:
        rows = hi - lo + 1
        # Growing downwards keeps the longest row; growing upwards makes the new item it.
        can_below = lo > 0 and rows * length[hi - 1] <= max_batch_tokens
        can_above = hi < len(order) and rows * length[hi] <= max_batch_tokens
        if not (can_below or can_above):
            break
        # Of the two, take the one closer in length to the oldest item.
        ref = pending[oldest].n_tokens
        if can_below and (not can_above or ref - length[lo - 1] <= length[hi] - ref):
            lo -= 1
        else:
            hi += 1
    chosen = order[lo:hi]
    return BatchPlan(
        indices=chosen,
        padded_tokens=len(chosen) * length[hi - 1],
        real_tokens=sum(length[lo:hi]),
    )
