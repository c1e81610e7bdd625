"""Forming batches by a token budget and by priority, grouping similar lengths to cut padding;
and admitting work by priority.

Pure logic, no threads and no model: given what waits, which items run together next, and
whether a new request may join them. The rules, in the order they apply:

- Priority. Every item has a level (`Priority`): queries a person waits on first, then
  interactive work, then bulk work. A batch is filled rank by rank, highest first (an item's
  rank is its level, raised by age: below); within a rank, its oldest item first, then the
  items closest in length to that one, so rows pad little.
- No starvation. An item's rank is its level plus one for every `aging_s` it has waited, up
  to the top level; ties go to the oldest. So after (top level - its level) x aging_s an item
  is ahead of everything that arrives after it, and from then on it waits only for work
  queued before it (which admission bounds: `max_queued_tokens`).
- No preemption. A plan is for the next batch only; a batch that has started runs to its
  end. What bounds how long a query waits behind one is that batch's budget: per level of
  its first item, the real tokens a forward may hold (`forward_tokens`, which the engine
  derives from a time budget), besides the padded tokens any batch may hold
  (`max_batch_tokens`, memory). By level, not rank: rows that rose by age are not queries,
  and held to a query's short budget they would slow the engine when it is most behind.
  (The engine's query lane runs the queries that arrive during a batch beside it: then they
  wait behind none.)
- Every waiting query joins the next batch; only `max_batch_tokens` and `max_batch_requests`
  hold queries back, not a forward budget. A query is a line of a few tokens, but a forward
  has a fixed cost (all the weights are read): queries run one per forward spent a busy
  engine's time on that cost (about half the calls per second of the `make load` mix).
  With the engine's query lane (`queries_join=False`), queries run in batches of their
  own: while other items wait, a batch is of those (as if no query waited), and the lane
  runs the queries beside it; only when queries are all there is are they the batch. Any
  batch of other work makes a query that rides it wait for all of it: one led by rows that
  rose by age keeps their budget, seconds under a backlog (measured: up to 2 s), and one a
  query led still held `max_forward_ms` of other rows (the tail of a search's latency).
- The first item of a batch always runs, whatever its length: nothing waits forever for room.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol


class Priority(IntEnum):
    """How soon a request's rows run: a higher level is planned first.

    QUERY: one short lookup a person waits on (Search, Disambiguate, SearchOccurrences).
    INTERACTIVE: an Embed of a few texts, by default. BULK: Upsert, and large Embeds.
    Queries sit above small Embeds rather than beside them because small Embeds are most of
    a busy server's traffic: sharing their level, a query would queue behind all of them.
    """

    BULK = 0
    INTERACTIVE = 1
    QUERY = 2

    @property
    def label(self) -> str:
        """As callers spell it: "query", "interactive", "bulk"."""
        return self.name.lower()


TOP = max(Priority)
PRIORITY_LABELS = ", ".join(p.label for p in sorted(Priority, reverse=True))


def priority_named(name: str) -> Priority:
    """A level from its name (any case). Raises ValueError naming the valid ones."""
    try:
        return Priority[name.strip().upper()]
    except KeyError:
        raise ValueError(f"priority {name!r}: expected one of {PRIORITY_LABELS}") from None


def default_priority(n_texts: int, n_tokens: int, max_texts: int, max_tokens: int) -> Priority:
    """The level of a request that names none: INTERACTIVE when it is small (at most
    `max_texts` texts and `max_tokens` tokens), else BULK."""
    small = n_texts <= max_texts and n_tokens <= max_tokens
    return Priority.INTERACTIVE if small else Priority.BULK


def rank(level: int, waited: float, aging_s: float) -> int:
    """An item's rank after waiting `waited` seconds: its level, plus one per `aging_s`
    (0: no aging), at most the top level."""
    if aging_s <= 0 or waited <= 0:
        return level
    return min(int(TOP), level + int(waited // aging_s))


class Waiting(Protocol):
    n_tokens: int
    arrival: float
    priority: int


@dataclass
class BatchPlan:
    indices: list[int] = field(default_factory=list)  # into the pending list
    padded_tokens: int = 0
    real_tokens: int = 0
    rank: int = 0  # the rank of its first item
    level: int = 0  # the level of its first item: which forward budget it was cut to


def plan_batch(
    pending: Sequence[Waiting],
    max_batch_tokens: int,
    max_batch_requests: int | None = None,
    *,
    now: float = 0.0,
    aging_s: float = 0.0,
    forward_tokens: Mapping[int, int] | None = None,
    queries_join: bool = True,
) -> BatchPlan:
    """Choose the next batch from `pending` (any order). Never empty when pending is not.

    max_batch_tokens: padded tokens (rows x the longest row) in any batch.
    max_batch_requests: rows in any batch (None: only the token budgets).
    now, aging_s: the clock the items' arrivals are on, and how long an item waits to rise
    one level (0: never). forward_tokens: per level, the real tokens a batch whose first
    item is of that level may hold (a level it does not name: no such limit).
    queries_join: whether queries share batches with other items (False: while any other
    item waits, the batch is of those only).
    See the module's docstring for the rules.
    """
    if not pending:
        return BatchPlan()
    pool = list(range(len(pending)))  # the items this batch may take
    if not queries_join:
        pool = [i for i in pool if pending[i].priority != TOP] or pool
    ranks = {i: rank(pending[i].priority, now - pending[i].arrival, aging_s) for i in pool}
    oldest: dict[int, int] = {}  # per rank, its oldest item
    for i, r in ranks.items():
        if r not in oldest or pending[i].arrival < pending[oldest[r]].arrival:
            oldest[r] = i
    first = oldest[max(oldest)]
    budget = (forward_tokens or {}).get(pending[first].priority)
    limit = max_batch_requests or len(pool)

    def place(i: int) -> tuple[int, bool, int, float]:
        # Higher ranks first; in a rank, its oldest, then lengths nearest the oldest's.
        ref = pending[oldest[ranks[i]]].n_tokens
        return -ranks[i], i != oldest[ranks[i]], abs(pending[i].n_tokens - ref), pending[i].arrival

    chosen: list[int] = []
    longest = real = 0
    for i in sorted(pool, key=place):
        if len(chosen) == limit:
            break
        n = pending[i].n_tokens
        held = budget is not None and pending[i].priority != TOP and real + n > budget
        if chosen and ((len(chosen) + 1) * max(longest, n) > max_batch_tokens or held):
            continue  # a shorter item further on may still fit
        chosen.append(i)
        longest, real = max(longest, n), real + n
    return BatchPlan(chosen, len(chosen) * longest, real, ranks[first], pending[first].priority)


# ------------------------------------------------------------------ forward cost


class ForwardCost:
    """A forward's time as fixed + per_token x real tokens, fitted by least squares over the
    recent forwards (each new one replaces `1 - decay` of the weight): what turns a time
    budget into tokens. The fixed part (every forward reads all the weights) is why a
    budget has a floor: `tokens_for(seconds, max_fixed_share)`."""

    def __init__(self, decay: float = 0.95) -> None:
        self.decay = decay
        self._w = self._n = self._nn = self._t = self._nt = 0.0

    def observe(self, tokens: int, seconds: float) -> None:
        d = self.decay
        self._w, self._n, self._nn = d * self._w + 1, d * self._n + tokens, d * self._nn + tokens**2
        self._t, self._nt = d * self._t + seconds, d * self._nt + tokens * seconds

    def fit(self) -> tuple[float, float] | None:
        """(fixed seconds, seconds per token), or None before there is anything to fit."""
        if not self._n:
            return None
        spread = self._w * self._nn - self._n**2
        per_token = (self._w * self._nt - self._n * self._t) / spread if spread > 1e-9 else 0.0
        fixed = (self._t - per_token * self._n) / self._w
        if per_token <= 0 or fixed < 0:  # forwards all alike, or noise: the plain average
            return 0.0, self._t / self._n
        return fixed, per_token

    def tokens_for(self, seconds: float, max_fixed_share: float = 1.0) -> int | None:
        """The real tokens a forward of `seconds` holds, but at least as many as keep the
        fixed cost within `max_fixed_share` of the forward (a crowded machine's forwards
        grow rather than spend the model's time on overhead). None before any forward."""
        fitted = self.fit()
        if fitted is None:
            return None
        fixed, per_token = fitted
        within = (seconds - fixed) / per_token
        floor = fixed * (1 - max_fixed_share) / (max_fixed_share * per_token)
        return max(1, int(max(within, floor)))


# ------------------------------------------------------------------ admission


def consecutive_parts(sizes: Sequence[int], budget: int) -> list[slice]:
    """The items in consecutive runs of at most `budget` in size each (an item larger than
    that alone); one empty run when there are no items."""
    parts, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > budget:
            parts.append(slice(start, i))
            start, total = i, 0
        total += size
    parts.append(slice(start, len(sizes)))
    return parts


@dataclass(frozen=True)
class Limit:
    """One admission limit: its value and the setting it comes from (for the message)."""

    value: int
    setting: str


def admission_refusal(
    level: int,
    n_tokens: int,
    queued_tokens: Sequence[int],
    in_flight: Sequence[int],
    token_limits: Sequence[Limit],
    request_limits: Sequence[Limit],
) -> str | None:
    """Why a request of `level` adding `n_tokens` is refused, or None to admit it.

    queued_tokens, in_flight: per level (indexed by Priority), the tokens queued and the
    requests in flight now. token_limits, request_limits: per level, the most that level
    and every level below it may hold together. So a level's limit keeps room for the
    levels above it that the levels below cannot take: a flood of bulk work is refused
    while queries are still admitted. The message names the numbers and the setting.
    """
    last = len(token_limits) - 1
    for q in range(level, last + 1):
        # The top level's limit is on all work. A level whose limit is the next one's (the
        # same setting) is checked there, with the larger count: the message then says so.
        whose = "" if q == last else " and ".join(Priority(p).label for p in range(q, -1, -1))
        limit = token_limits[q]
        tokens = sum(queued_tokens[: q + 1])
        if (q == last or limit != token_limits[q + 1]) and tokens + n_tokens > limit.value:
            return (
                f"{tokens} tokens{f' of {whose} work' if whose else ''} queued and this "
                f"{Priority(level).label} request adds {n_tokens}; the limit is {limit.value} "
                f"({limit.setting}): retry later"
            )
        limit = request_limits[q]
        requests = sum(in_flight[: q + 1])
        if (q == last or limit != request_limits[q + 1]) and requests >= limit.value:
            return (
                f"{requests} {f'{whose} ' if whose else ''}requests in flight; the limit is "
                f"{limit.value} ({limit.setting}): retry later"
            )
    return None
