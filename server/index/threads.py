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
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

# asyncio's default pool's size: index calls get as many threads as they had there.
INDEX_THREADS = min(32, (os.cpu_count() or 1) + 4)

P = ParamSpec("P")
T = TypeVar("T")


class IndexThreads:
    """Runs blocking index calls for the event loop, `threads` at a time."""

    def __init__(self, threads: int = INDEX_THREADS) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="embedsense-index")

    async def run(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """call(*args, **kwargs) in one of the threads, in the caller's context (its request
        id in the index's log lines), as asyncio.to_thread runs it."""
        work = functools.partial(contextvars.copy_context().run, call, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, work)

    def close(self) -> None:
        """Wait for the calls under way (each bounded by its own deadline), so the index
        closes after its last write; calls not started are dropped."""
        self._pool.shutdown(wait=True, cancel_futures=True)
