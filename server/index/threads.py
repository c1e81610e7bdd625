"""The threads the server's index calls run in: a pool of their own, not asyncio's default.

Index calls can wait long: a Milvus that stops answering holds each call until its deadline
(--milvus-timeout), and a large faiss upsert holds its thread while it writes. In asyncio's
default pool they took the threads that Explain and /metrics also need, so a stalled index
stalled those too. In their own pool they hold up only one another.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

# As many as asyncio's default pool had (its size before Python 3.13).
INDEX_THREADS = min(32, (os.cpu_count() or 1) + 4)

P = ParamSpec("P")
T = TypeVar("T")


def close_wait_s(kind: str, grace_s: float, stopping_since: float) -> float | None:
    """How long a stop begun at `stopping_since` (time.monotonic()) waits for the index
    calls under way: on Milvus, which can stall, what is left of the grace (one grace for
    the whole stop); on faiss, as long as they take (they wait on no network, and each ends
    on its own), so the store never closes under a write."""
    if kind == "faiss":
        return None
    return max(0.0, grace_s - (time.monotonic() - stopping_since))


class IndexThreads:
    """Runs blocking index calls for the event loop, `threads` at a time."""

    def __init__(self, threads: int = INDEX_THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="embedsense-index")
        self._under_way: set[Future] = set()
        self._lock = threading.Lock()

    async def run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """call(*args, **kwargs) in one of the threads, in the caller's context (its request
        id in the index's log lines), as asyncio.to_thread runs it."""
        work = functools.partial(contextvars.copy_context().run, call, *args, **kwargs)
        future = self._pool.submit(work)
        with self._lock:
            self._under_way.add(future)
        future.add_done_callback(self._ended)
        return await asyncio.wrap_future(future)

    def _ended(self, future: Future) -> None:
        with self._lock:
            self._under_way.discard(future)

    def close(self, wait_s: float | None) -> None:
        """Drop the calls not started, and wait up to `wait_s` (None: as long as they take)
        for those under way, so that the index closes after its last write. A stalled Milvus
        is closed under the calls still waiting on it: their deadlines, several in a row for
        one call, could outlast an orchestrator's patience."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            under_way = set(self._under_way)
        _, still = wait(under_way, timeout=wait_s)
        if still:
            calls = f"{len(still)} index call" + ("s" if len(still) > 1 else "")
            log.warning("%s still under way after %.0f s: the index closes without them",
                        calls, wait_s or 0)  # fmt: skip
