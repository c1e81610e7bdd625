"""Searches made at the same time with the same parameters, sent to Milvus as one call.

Milvus's cost per call is most of a search's: on two cores Milvus 2.3.5 spends about 2.8 ms
of CPU on a one-query search of 20,000 vectors, of which the vector search itself is about a
sixth (its proxy's interceptors, configuration lookups, a timestamp from the root
coordinator, the hop to the query node, Go's allocations). A call with several queries pays
that once. So once `max_calls` searches for a key (a collection's search parameters) are in
Milvus, the searches for that key that arrive wait, and each call that ends hands its turn
to them: one call for all that are waiting then, as a database's group commit. A caller
alone waits for nothing, and many callers share calls. Each query is searched on its own
inside Milvus, so each caller gets the hits it would have got alone."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

# Rows in one merged call: Milvus refuses more than 16,384 queries in a call, and a larger
# answer only keeps its first caller waiting longer.
MAX_MERGED_ROWS = 256


class _Waiter:
    def __init__(self, queries: np.ndarray) -> None:
        self.queries = queries
        self.leads = False  # makes a call for itself and those waiting
        self.woken = threading.Event()
        self.result: list[Any] = []
        self.error: BaseException | None = None


class Coalescer:
    """`run(key, queries, call)` is `call(queries)`, one result per query row, with at most
    `max_calls` calls for a key in flight: a call that ends hands its turn to the callers
    waiting then, one call on all their rows (at most `max_rows`, or one caller's own)."""

    def __init__(self, max_calls: int, max_rows: int = MAX_MERGED_ROWS) -> None:
        self.max_calls = max_calls
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._waiting: dict[Hashable, list[_Waiter]] = {}
        self._in_flight: dict[Hashable, int] = {}

    def run(
        self, key: Hashable, queries: np.ndarray, call: Callable[[np.ndarray], list[Any]]
    ) -> list[Any]:
        me = _Waiter(queries)
        with self._lock:
            if self._in_flight.get(key, 0) < self.max_calls:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
                me.leads = True
            else:
                self._waiting.setdefault(key, []).append(me)
        if not me.leads:
            me.woken.wait()
        if me.leads:
            self._lead(key, me, call)
        if me.error is None:
            return me.result
        if me.leads:  # this thread made the call
            raise me.error
        raise _own_copy(me.error) from me.error

    def _lead(self, key: Hashable, me: _Waiter, call: Callable[[np.ndarray], list[Any]]) -> None:
        with self._lock:
            batch, rows = [me], len(me.queries)
            waiting = self._waiting.get(key, [])
            while waiting and rows + len(waiting[0].queries) <= self.max_rows:
                batch.append(waiting.pop(0))
                rows += len(batch[-1].queries)
            if not waiting:
                self._waiting.pop(key, None)
        try:
            results = call(me.queries if len(batch) == 1 else np.concatenate(
                [w.queries for w in batch]))  # fmt: skip
            start = 0
            for waiter in batch:
                waiter.result = results[start : start + len(waiter.queries)]
                start += len(waiter.queries)
        except BaseException as err:  # every caller of the call hears of it
            for waiter in batch:
                waiter.error = err
        finally:
            after = None
            with self._lock:
                waiting = self._waiting.get(key)
                if waiting:  # this call's turn passes to the first of those waiting
                    after = waiting.pop(0)
                    after.leads = True
                    if not waiting:
                        del self._waiting[key]
                elif self._in_flight[key] == 1:
                    del self._in_flight[key]
                else:
                    self._in_flight[key] -= 1
            if after is not None:
                after.woken.set()
            for waiter in batch[1:]:
                waiter.woken.set()


def _own_copy(error: BaseException) -> BaseException:
    """The error for another caller of the call: one object raised in several threads would
    have their tracebacks written into it at once."""
    try:
        return copy.copy(error).with_traceback(None)
    except Exception:  # an error its class cannot make again from its arguments
        return error
