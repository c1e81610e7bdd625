"""Searches made at the same time with the same parameters, sent to Milvus as one call.

Milvus's cost per call is most of a search's: on two cores Milvus 2.3.5 spends about 2.8 ms
of CPU on a one-query search of 20,000 vectors, of which the vector search itself is about a
sixth (its proxy's interceptors, configuration lookups, a timestamp from the root
coordinator, the hop to the query node, Go's allocations). A call with several queries pays
that once. So once `max_calls` searches for a key (a collection's search parameters) are in
Milvus, the searches for that key that arrive wait, and each call that ends hands its turn
to them: one call for all that are waiting then, as a database's group commit. A caller
alone waits for nothing, and many callers share calls. Each query is searched on its own
inside Milvus, so each caller gets the hits it would have got alone.

A search still ends within its deadline, waiting included: a caller waits for its turn at
most until its deadline, and a merged call has the time its oldest caller has left (the
least of them all).
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from embedsense.server.index.errors import IndexFailed, IndexUnavailable

# Rows in one merged call: a larger answer only keeps its first caller waiting longer.
MAX_MERGED_ROWS = 256

# call(rows, timeout_s): one result per row of `rows`, within timeout_s.
Call = Callable[[np.ndarray, float], list[Any]]


@dataclass(frozen=True)
class SearchStats:
    """Since the coalescer was made: searches asked of it, the Milvus calls made for them
    (searches / calls is the merged size), and the seconds searches waited for a turn."""

    searches: int = 0
    calls: int = 0
    wait_seconds: float = 0.0


class _Waiter:
    def __init__(self, queries: np.ndarray, timeout_s: float) -> None:
        self.queries = queries
        self.arrived = time.monotonic()
        self.deadline = self.arrived + timeout_s
        self.leads = False  # makes a call for itself and those waiting: holds a turn
        self.woken = threading.Event()
        self.result: list[Any] = []
        self.error: BaseException | None = None


class Coalescer:
    """`run(key, queries, call, timeout_s)` is `call(queries, timeout_s)`, with at most
    `max_calls` calls for a key in flight: a call that ends hands its turn to the callers
    waiting then, one call on all their rows (at most `max_rows`, or one caller's own)."""

    def __init__(self, max_calls: int) -> None:
        if max_calls < 1:  # no call could ever start: every search would wait forever
            raise ValueError(f"calls in flight {max_calls}: expected 1 or more")
        self.max_calls = max_calls
        self._lock = threading.Lock()
        self._waiting: dict[Hashable, list[_Waiter]] = {}
        self._in_flight: dict[Hashable, int] = {}
        self._stats = SearchStats()

    def stats(self) -> SearchStats:
        return self._stats

    def run(
        self,
        key: Hashable,
        queries: np.ndarray,
        call: Call,
        timeout_s: float,
        max_rows: int = MAX_MERGED_ROWS,
    ) -> list[Any]:
        me = _Waiter(queries, timeout_s)
        with self._lock:
            self._count(searches=1)
            if self._in_flight.get(key, 0) < self.max_calls:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
                me.leads = True
            else:
                self._waiting.setdefault(key, []).append(me)
        if not me.leads:
            try:
                woken = me.woken.wait(max(0.0, me.deadline - time.monotonic()))
            except BaseException:
                self._leave(key, me)
                raise
            if not woken:
                if self._leave(key, me):
                    raise IndexUnavailable(
                        f"milvus did not answer within {timeout_s:g} s: the searches ahead "
                        "of this one did not end"
                    )
                me.woken.wait()  # in a call already, which has its own deadline
        if me.leads:
            self._lead(key, me, call, max_rows)
        if me.error is None:
            return me.result
        if me.leads:  # this thread made the call
            raise me.error
        own = _own_copy(me.error)
        if own is me.error:
            raise own
        raise own from me.error

    def _count(self, searches: int = 0, calls: int = 0, wait_seconds: float = 0.0) -> None:
        """Under the lock."""
        s = self._stats
        self._stats = SearchStats(
            s.searches + searches, s.calls + calls, s.wait_seconds + wait_seconds
        )

    def _leave(self, key: Hashable, me: _Waiter) -> bool:
        """A waiter gives up (its deadline passed, or its thread was interrupted): True where
        it left before being answered. A turn it was handed goes on to the next waiter."""
        with self._lock:
            waiting = self._waiting.get(key, [])
            if me in waiting:
                waiting.remove(me)
                if not waiting:
                    del self._waiting[key]
                self._count(wait_seconds=time.monotonic() - me.arrived)
                return True
            if not me.leads:  # in a call already: its answer is on the way
                return False
            self._count(wait_seconds=time.monotonic() - me.arrived)
            me.leads = False
            next_leader = self._pass_turn(key)
        if next_leader is not None:
            next_leader.woken.set()
        return True

    def _pass_turn(self, key: Hashable) -> _Waiter | None:
        """Under the lock: the turn of a call that ended goes to the first waiter, or is freed."""
        waiting = self._waiting.get(key)
        if waiting:
            next_leader = waiting.pop(0)
            next_leader.leads = True
            if not waiting:
                del self._waiting[key]
            return next_leader
        if self._in_flight[key] == 1:
            del self._in_flight[key]
        else:
            self._in_flight[key] -= 1
        return None

    def _lead(self, key: Hashable, me: _Waiter, call: Call, max_rows: int) -> None:
        batch = [me]
        try:
            with self._lock:
                rows = len(me.queries)
                waiting = self._waiting.get(key, [])
                while waiting and rows + len(waiting[0].queries) <= max_rows:
                    batch.append(waiting.pop(0))
                    rows += len(batch[-1].queries)
                if not waiting:
                    self._waiting.pop(key, None)
                now = time.monotonic()
                self._count(wait_seconds=sum(now - w.arrived for w in batch))
            queries = me.queries if len(batch) == 1 else np.concatenate([w.queries for w in batch])
            # The oldest caller's time left: the least of the batch's (it came first).
            left = me.deadline - time.monotonic()
            if left <= 0:
                raise IndexUnavailable(
                    "milvus did not answer in time: the searches ahead of this one did not end"
                )
            with self._lock:
                self._count(calls=1)
            results = call(queries, left)
            if len(results) != len(queries):
                raise IndexFailed(f"milvus answered {len(results)} searches of {len(queries)}")
            start = 0
            for waiter in batch:
                waiter.result = results[start : start + len(waiter.queries)]
                start += len(waiter.queries)
        except Exception as err:  # every caller of the call hears of it
            for waiter in batch:
                waiter.error = err
        except BaseException as err:  # this thread is interrupted; the others are not
            me.error = err
            for waiter in batch[1:]:
                waiter.error = IndexUnavailable("the search call was interrupted; try again")
        finally:
            with self._lock:
                next_leader = self._pass_turn(key)
            if next_leader is not None:
                next_leader.woken.set()
            for waiter in batch[1:]:
                waiter.woken.set()


def _own_copy(error: BaseException) -> BaseException:
    """The error for another caller of the call: one object raised in several threads would
    have their tracebacks written into it at once. The error itself where its class cannot
    make it again from its arguments."""
    try:
        return copy.copy(error).with_traceback(None)
    except Exception:
        return error
