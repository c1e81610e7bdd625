"""Concurrent requests' small pieces of host work made into one call, off the event loop.

Many callers each sending one short text cost the event loop one tokenizer call apiece, on
the loop itself (a hop to a thread per request costs more than the call). Here the inputs
of the requests that arrive while the worker threads are busy wait together, and go to a
thread as one group: one hop and one tokenizer call (`encode_batch`, which runs without the
GIL) for all of them, while the loop goes on serving. Under light load a group is one
request and goes at once (the loop's next turn); under heavy load groups grow with it.

The group's work returns one outcome per request (a result, or the exception that request
alone raises), so one caller's bad input fails only that caller. A caller that has gone
(cancelled) by the time its group is done is skipped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
Key = TypeVar("Key", bound=Hashable)

# The work for one group: the key its requests share, their items in arrival order; one
# outcome per item, in the same order (a result, or an exception for that item's caller).
GroupWork = Callable[[Key, list[Item]], list[Result | BaseException]]


class BatcherClosed(RuntimeError):
    """The executor is shut down: the group's work will not be done."""


class MicroBatcher(Generic[Key, Item, Result]):
    """Groups `submit` calls that share a key into one `work(key, items)` call in
    `executor`, at most `parallel` groups at a time (the executor's threads)."""

    def __init__(
        self,
        work: GroupWork,
        executor: Executor,
        parallel: int,
        on_group: Callable[[int], None] | None = None,
    ) -> None:
        self._work = work
        self._executor = executor
        self._parallel = parallel
        # Called on the loop with +1 when a group leaves for a thread and -1 once every
        # caller of it has taken its outcome and run on to its next await.
        self._on_group = on_group
        self._open: dict[Key, tuple[list[Item], list[asyncio.Future]]] = {}
        self._running = 0
        self._flush_due = False

    async def submit(self, key: Key, item: Item) -> Result:
        """`item`'s outcome: its result, or the exception the work gave for it."""
        loop = asyncio.get_running_loop()
        items, futures = self._open.setdefault(key, ([], []))
        future = loop.create_future()
        items.append(item)
        futures.append(future)
        if not self._flush_due and self._running < self._parallel:
            # On the loop's next turn: the requests that arrived in this one join the group.
            self._flush_due = True
            loop.call_soon(self._flush, loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flush_due = False
        while self._open and self._running < self._parallel:
            key = next(iter(self._open))
            items, futures = self._open.pop(key)
            self._running += 1
            if self._on_group is not None:
                self._on_group(+1)
            try:
                done = loop.run_in_executor(self._executor, self._work, key, items)
            except RuntimeError as err:  # the executor is shut down: nobody will do it
                self._deliver(loop, futures, None, BatcherClosed(str(err)))
                continue
            done.add_done_callback(lambda f, futures=futures: self._deliver(loop, futures, f, None))

    def _deliver(
        self,
        loop: asyncio.AbstractEventLoop,
        futures: list[asyncio.Future],
        done: asyncio.Future | None,
        failure: BaseException | None,
    ) -> None:
        self._running -= 1
        if done is not None and done.cancelled():
            failure = asyncio.CancelledError()
        elif done is not None and done.exception() is not None:
            failure = done.exception()
        outcomes = [failure] * len(futures) if failure is not None else done.result()
        for future, outcome in zip(futures, outcomes, strict=True):
            if future.done():  # its caller has gone
                continue
            if isinstance(outcome, asyncio.CancelledError):
                future.cancel()
            elif isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        if self._on_group is not None:
            # After the callers' own next steps (scheduled by set_result, so earlier).
            loop.call_soon(self._on_group, -1)
        if self._open:
            self._flush(loop)
