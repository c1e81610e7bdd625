"""Index maintenance off the write path, as Qdrant's optimizers do it.

`next_job` decides, from a few counts, whether a collection's index wants a rebuild (enough
vectors to train its spec, or too many dead vectors) or a snapshot; it is pure logic. The
`Optimizer` runs the chosen job in a background thread, one at a time per collection, while
writes and searches go on; a write only asks it to look.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import Enum

log = logging.getLogger(__name__)

# Dead vectors (deleted or replaced) beyond this share of the index trigger a compaction.
COMPACT_DEAD_SHARE = 0.5
COMPACT_MIN_DEAD = 10_000
# A snapshot after this many changes, or as many as the index holds if more, bounds how much
# a start after a crash must catch up, at an amortized cost of at most one more write of
# each vector.
SNAPSHOT_EVERY_CHANGES = 100_000


class Job(Enum):
    REBUILD = "rebuild"  # train the spec, or compact dead vectors away
    SNAPSHOT = "snapshot"


def next_job(
    live: int, total: int, trained: bool, training_size: int, changes_since_snapshot: int
) -> Job | None:
    """What the index wants now: `live` of `total` vectors are live; an untrained spec wants
    `training_size` vectors; `changes_since_snapshot` writes since the last snapshot."""
    dead = total - live
    if not trained and training_size and live >= training_size:
        return Job.REBUILD
    if dead >= COMPACT_MIN_DEAD and dead > COMPACT_DEAD_SHARE * total:
        return Job.REBUILD
    if changes_since_snapshot >= max(SNAPSHOT_EVERY_CHANGES, total):
        return Job.SNAPSHOT
    return None


class Optimizer:
    """One background thread per collection, started when there is work: `poke` asks it to
    run `work` (which decides and does what is due) once more; `wait` blocks until idle."""

    def __init__(self, name: str, work: Callable[[], None]) -> None:
        self.name = name
        self._work = work
        self._cond = threading.Condition()
        self._wanted = False
        self._thread: threading.Thread | None = None
        self._closed = False

    def poke(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._wanted = True
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"optimizer-{self.name}", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._wanted or self._closed:
                    self._thread = None
                    self._cond.notify_all()
                    return
                self._wanted = False
            try:
                self._work()
            except Exception:  # noqa: BLE001 - searches go on with the index they have
                log.exception("%s: index maintenance failed; will try again on the next write",
                              self.name)  # fmt: skip

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no job runs or is wanted; False if `timeout` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._thread is None, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Run no new job; wait for the one running, if any."""
        with self._cond:
            self._closed = True
        self.wait(timeout)
