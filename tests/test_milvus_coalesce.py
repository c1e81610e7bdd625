"""Concurrent searches with equal parameters made as one Milvus call
(server/index/milvus/coalesce.py); the real backends' side is in test_backends.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from embedsense.server.index.errors import IndexUnavailable
from embedsense.server.index.milvus.coalesce import Coalescer


class Milvus:
    """A search call that answers each row with its sum, records the rows of every call, and
    holds its first call until released."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[float]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, rows: np.ndarray) -> list[float]:
        self.calls.append([float(r.sum()) for r in rows])
        if len(self.calls) == 1:
            self.started.set()
            assert self.release.wait(10)
        elif self.fail:
            raise IndexUnavailable("milvus did not answer (search 'news'): no")
        return [float(r.sum()) for r in rows]


def waiting(coalescer: Coalescer, key: object, n: int) -> None:
    """Until n callers wait behind the call in flight for `key`."""
    deadline = time.monotonic() + 10
    while len(coalescer._waiting.get(key, ())) < n:
        assert time.monotonic() < deadline, "the callers never queued"
        time.sleep(0.005)


def rows(*values: float) -> np.ndarray:
    return np.array([[v, 0.0] for v in values], dtype=np.float32)


def test_searches_arriving_during_a_call_are_the_next_call_each_answered_its_own_rows():
    coalescer, milvus = Coalescer(max_calls=1), Milvus()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(coalescer.run, "k", rows(1), milvus)
        assert milvus.started.wait(10)
        # Seven callers, one with two rows, arrive while the first call is in Milvus.
        later = [pool.submit(coalescer.run, "k", rows(10 * i), milvus) for i in range(2, 8)]
        later.append(pool.submit(coalescer.run, "k", rows(100, 200), milvus))
        waiting(coalescer, "k", 7)
        milvus.release.set()
        assert first.result(10) == [1.0]
        assert [f.result(10) for f in later] == [[20.0], [30.0], [40.0], [50.0], [60.0],
                                                 [70.0], [100.0, 200.0]]  # fmt: skip
    assert len(milvus.calls) == 2 and sorted(milvus.calls[1]) == [
        20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 100.0, 200.0
    ]  # fmt: skip
    assert not coalescer._waiting and not coalescer._in_flight


def test_a_caller_alone_or_with_other_parameters_waits_for_no_call():
    coalescer, milvus = Coalescer(max_calls=1), Milvus()
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(coalescer.run, "ef 64", rows(1), milvus)
        assert milvus.started.wait(10)
        # Other parameters: a call of its own at once, while the first is still in Milvus.
        assert pool.submit(coalescer.run, "ef 128", rows(5), milvus).result(10) == [5.0]
        assert not held.done()
        milvus.release.set()
        assert held.result(10) == [1.0]
    assert coalescer.run("ef 64", rows(3, 4), milvus) == [3.0, 4.0]
    assert milvus.calls == [[1.0], [5.0], [3.0, 4.0]]


def test_with_two_calls_in_flight_the_third_search_waits_for_either():
    coalescer, milvus = Coalescer(max_calls=2), Milvus()
    second_started, second_release = threading.Event(), threading.Event()

    def held_second(batch: np.ndarray) -> list[float]:
        second_started.set()
        assert second_release.wait(10)
        return milvus(batch)

    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(coalescer.run, "k", rows(1), milvus)
        assert milvus.started.wait(10)
        second = pool.submit(coalescer.run, "k", rows(2), held_second)
        assert second_started.wait(10)  # beside the first, not behind it
        later = [pool.submit(coalescer.run, "k", rows(i), milvus) for i in (3, 4, 5)]
        waiting(coalescer, "k", 3)
        second_release.set()  # the second call ends first: its turn goes to the three
        assert second.result(10) == [2.0]
        assert [f.result(10) for f in later] == [[3.0], [4.0], [5.0]]
        assert not first.done()
        milvus.release.set()
        assert first.result(10) == [1.0]
    assert milvus.calls == [[1.0], [2.0], [3.0, 4.0, 5.0]]
    assert not coalescer._waiting and not coalescer._in_flight


def test_a_merged_call_holds_at_most_max_rows_and_the_rest_make_the_next():
    coalescer, milvus = Coalescer(max_calls=1, max_rows=4), Milvus()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(coalescer.run, "k", rows(1), milvus)
        assert milvus.started.wait(10)
        later = [pool.submit(coalescer.run, "k", rows(i), milvus) for i in range(2, 8)]
        waiting(coalescer, "k", 6)
        big = pool.submit(coalescer.run, "k", rows(*range(10, 16)), milvus)  # 6 rows alone
        waiting(coalescer, "k", 7)
        milvus.release.set()
        assert first.result(10) == [1.0] and [f.result(10) for f in later] == [
            [float(i)] for i in range(2, 8)
        ]  # fmt: skip
        assert big.result(10) == [float(i) for i in range(10, 16)]
    assert [len(c) for c in milvus.calls] == [1, 4, 2, 6]


def test_a_failed_merged_call_fails_each_of_its_callers_and_the_next_call_is_made():
    coalescer, milvus = Coalescer(max_calls=1), Milvus(fail=True)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(coalescer.run, "k", rows(1), milvus)
        assert milvus.started.wait(10)
        later = [pool.submit(coalescer.run, "k", rows(i), milvus) for i in (2, 3, 4)]
        waiting(coalescer, "k", 3)
        milvus.release.set()
        assert first.result(10) == [1.0]
        errors = [f.exception(10) for f in later]
    assert all(isinstance(e, IndexUnavailable) and "did not answer" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 3  # one error object for each caller's thread
    milvus.fail = False
    assert coalescer.run("k", rows(9), milvus) == [9.0]
    assert not coalescer._waiting and not coalescer._in_flight


def test_many_callers_racing_each_get_their_own_answer():
    """No waiter is left behind or answered another's rows, however the arrivals interleave."""
    coalescer, calls, callers = Coalescer(max_calls=1, max_rows=5), [], 16

    def slow_sum(batch: np.ndarray) -> list[float]:
        calls.append(len(batch))
        time.sleep(0.002)
        return [float(r.sum()) for r in batch]

    def caller(i: int) -> bool:
        return all(
            coalescer.run("k", rows(i, j), slow_sum) == [float(i), float(j)]
            for j in range(1000 + 20 * i, 1020 + 20 * i)
        )

    with ThreadPoolExecutor(callers) as pool:
        assert all(pool.map(caller, range(callers)))
    assert sum(calls) == 2 * 20 * callers and len(calls) < 20 * callers
