"""Concurrent searches with equal parameters made as one Milvus call
(server/index/milvus/coalesce.py); the real backends' side is in test_backends.py."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embedsense.server.index.errors import IndexFailed, IndexUnavailable
from embedsense.server.index.milvus.coalesce import Coalescer

TIMEOUT_S = 30.0


class Milvus:
    """A search call that answers each row with its sum, records the rows of every call, and
    holds its first call until released."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[float]] = []
        self.timeouts: list[float] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, rows: np.ndarray, timeout_s: float) -> list[float]:
        self.calls.append([float(r.sum()) for r in rows])
        self.timeouts.append(timeout_s)
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
        first = pool.submit(coalescer.run, "k", rows(1), milvus, TIMEOUT_S)
        assert milvus.started.wait(10)
        # Seven callers, one with two rows, arrive while the first call is in Milvus.
        later = [
            pool.submit(coalescer.run, "k", rows(10 * i), milvus, TIMEOUT_S) for i in range(2, 8)
        ]
        later.append(pool.submit(coalescer.run, "k", rows(100, 200), milvus, TIMEOUT_S))
        waiting(coalescer, "k", 7)
        time.sleep(0.05)
        milvus.release.set()
        assert first.result(10) == [1.0]
        assert [f.result(10) for f in later] == [[20.0], [30.0], [40.0], [50.0], [60.0],
                                                 [70.0], [100.0, 200.0]]  # fmt: skip
    assert len(milvus.calls) == 2 and sorted(milvus.calls[1]) == [
        20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 100.0, 200.0
    ]  # fmt: skip
    assert not coalescer._waiting and not coalescer._in_flight
    stats = coalescer.stats()  # the metrics' counts: 8 searches in 2 calls, 7 of them waited
    assert (stats.searches, stats.calls) == (8, 2) and 7 * 0.05 <= stats.wait_seconds < 7 * 10


def test_a_caller_alone_or_with_other_parameters_waits_for_no_call():
    coalescer, milvus = Coalescer(max_calls=1), Milvus()
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(coalescer.run, "ef 64", rows(1), milvus, TIMEOUT_S)
        assert milvus.started.wait(10)
        # Other parameters: a call of its own at once, while the first is still in Milvus.
        assert pool.submit(coalescer.run, "ef 128", rows(5), milvus, TIMEOUT_S).result(10) == [5.0]
        assert not held.done()
        milvus.release.set()
        assert held.result(10) == [1.0]
    assert coalescer.run("ef 64", rows(3, 4), milvus, TIMEOUT_S) == [3.0, 4.0]
    assert milvus.calls == [[1.0], [5.0], [3.0, 4.0]]


def test_with_two_calls_in_flight_the_third_search_waits_for_either():
    coalescer, milvus = Coalescer(max_calls=2), Milvus()
    second_started, second_release = threading.Event(), threading.Event()

    def held_second(batch: np.ndarray, timeout_s: float) -> list[float]:
        second_started.set()
        assert second_release.wait(10)
        return milvus(batch, timeout_s)

    with ThreadPoolExecutor(5) as pool:
        first = pool.submit(coalescer.run, "k", rows(1), milvus, TIMEOUT_S)
        assert milvus.started.wait(10)
        second = pool.submit(coalescer.run, "k", rows(2), held_second, TIMEOUT_S)
        assert second_started.wait(10)  # beside the first, not behind it
        later = [pool.submit(coalescer.run, "k", rows(i), milvus, TIMEOUT_S) for i in (3, 4, 5)]
        waiting(coalescer, "k", 3)
        second_release.set()  # the second call ends first: its turn goes to the three
        assert second.result(10) == [2.0]
        assert [f.result(10) for f in later] == [[3.0], [4.0], [5.0]]
        assert not first.done()
        milvus.release.set()
        assert first.result(10) == [1.0]
    assert milvus.calls[:2] == [[1.0], [2.0]] and sorted(milvus.calls[2]) == [3.0, 4.0, 5.0]
    assert not coalescer._waiting and not coalescer._in_flight


def test_a_merged_call_holds_at_most_max_rows_and_the_rest_make_the_next():
    coalescer, milvus = Coalescer(max_calls=1), Milvus()
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(coalescer.run, "k", rows(1), milvus, TIMEOUT_S, max_rows=4)
        assert milvus.started.wait(10)
        later = [
            pool.submit(coalescer.run, "k", rows(i), milvus, TIMEOUT_S, max_rows=4)
            for i in range(2, 8)
        ]
        waiting(coalescer, "k", 6)
        big = pool.submit(
            coalescer.run, "k", rows(*range(10, 16)), milvus, TIMEOUT_S, max_rows=4
        )  # 6 rows alone
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
        first = pool.submit(coalescer.run, "k", rows(1), milvus, TIMEOUT_S)
        assert milvus.started.wait(10)
        later = [pool.submit(coalescer.run, "k", rows(i), milvus, TIMEOUT_S) for i in (2, 3, 4)]
        waiting(coalescer, "k", 3)
        milvus.release.set()
        assert first.result(10) == [1.0]
        errors = [f.exception(10) for f in later]
    assert all(isinstance(e, IndexUnavailable) and "did not answer" in str(e) for e in errors)
    assert len({id(e) for e in errors}) == 3  # one error object for each caller's thread
    milvus.fail = False
    assert coalescer.run("k", rows(9), milvus, TIMEOUT_S) == [9.0]
    assert not coalescer._waiting and not coalescer._in_flight


def test_many_callers_racing_each_get_their_own_answer():
    """No waiter is left behind or answered another's rows, however the arrivals interleave."""
    coalescer, calls, callers = Coalescer(max_calls=1), [], 16

    def slow_sum(batch: np.ndarray, timeout_s: float) -> list[float]:
        calls.append(len(batch))
        time.sleep(0.002)
        return [float(r.sum()) for r in batch]

    def caller(i: int) -> bool:
        return all(
            coalescer.run("k", rows(i, j), slow_sum, TIMEOUT_S, max_rows=5) == [float(i), float(j)]
            for j in range(1000 + 20 * i, 1020 + 20 * i)
        )

    with ThreadPoolExecutor(callers) as pool:
        assert all(pool.map(caller, range(callers)))
    assert sum(calls) == 2 * 20 * callers and len(calls) < 20 * callers


def test_a_search_waits_for_its_turn_at_most_until_its_deadline():
    coalescer, milvus = Coalescer(max_calls=1), Milvus()
    with ThreadPoolExecutor(2) as pool:
        held = pool.submit(coalescer.run, "k", rows(1), milvus, TIMEOUT_S)
        assert milvus.started.wait(10)
        started = time.monotonic()
        with pytest.raises(IndexUnavailable, match="within 0.3 s: the searches ahead"):
            coalescer.run("k", rows(2), milvus, 0.3)
        assert 0.3 <= time.monotonic() - started < 5
        assert not coalescer._waiting  # it left the queue
        assert coalescer.stats().wait_seconds >= 0.3 and coalescer.stats().calls == 1
        milvus.release.set()
        assert held.result(10) == [1.0]
    assert coalescer.run("k", rows(3), milvus, TIMEOUT_S) == [3.0]
    assert milvus.calls == [[1.0], [3.0]] and not coalescer._in_flight


def test_a_merged_call_has_the_time_its_oldest_caller_has_left():
    coalescer, milvus = Coalescer(max_calls=1), Milvus()
    with ThreadPoolExecutor(3) as pool:
        held = pool.submit(coalescer.run, "k", rows(1), milvus, TIMEOUT_S)
        assert milvus.started.wait(10)
        oldest = pool.submit(coalescer.run, "k", rows(2), milvus, TIMEOUT_S)
        waiting(coalescer, "k", 1)
        time.sleep(0.3)
        newer = pool.submit(coalescer.run, "k", rows(3), milvus, TIMEOUT_S)
        waiting(coalescer, "k", 2)
        milvus.release.set()
        assert [f.result(10) for f in (held, oldest, newer)] == [[1.0], [2.0], [3.0]]
    assert TIMEOUT_S - 1 < milvus.timeouts[0] <= TIMEOUT_S  # a call alone: all its time
    assert TIMEOUT_S - 10 < milvus.timeouts[1] <= TIMEOUT_S - 0.3  # the oldest waited longest


def test_no_call_in_flight_is_refused():
    with pytest.raises(ValueError, match="calls in flight 0: expected 1 or more"):
        Coalescer(max_calls=0)


def test_an_answer_short_of_rows_fails_every_caller_of_the_call():
    coalescer = Coalescer(max_calls=1)
    with pytest.raises(IndexFailed, match="milvus answered 1 searches of 2"):
        coalescer.run("k", rows(1, 2), lambda batch, timeout_s: [0.0], TIMEOUT_S)
    assert not coalescer._in_flight


def test_an_interrupted_call_interrupts_its_own_thread_and_fails_the_others_as_unavailable():
    coalescer, milvus = Coalescer(max_calls=1), Milvus()

    def interrupted(batch: np.ndarray, timeout_s: float) -> list[float]:
        raise KeyboardInterrupt

    with ThreadPoolExecutor(4) as pool:
        held = pool.submit(coalescer.run, "k", rows(1), milvus, TIMEOUT_S)
        assert milvus.started.wait(10)
        leader = pool.submit(coalescer.run, "k", rows(2), interrupted, TIMEOUT_S)
        waiting(coalescer, "k", 1)
        others = [pool.submit(coalescer.run, "k", rows(i), milvus, TIMEOUT_S) for i in (3, 4)]
        waiting(coalescer, "k", 3)
        milvus.release.set()
        assert held.result(10) == [1.0]
        assert isinstance(leader.exception(10), KeyboardInterrupt)
        for other in others:
            error = other.exception(10)
            assert isinstance(error, IndexUnavailable) and "interrupted" in str(error)
    assert coalescer.run("k", rows(5), milvus, TIMEOUT_S) == [5.0]
