"""Bringing a Milvus collection to the state a bulk load should be searched in: flushed, its
segments merged (Milvus's compaction), each with its built index, and served by the query
nodes. Until then searches run on Milvus's interim index (lower recall), or on each small
segment's graph in turn: slower, and at a given ef of lower recall than one graph over all.

"Served" is judged by comparing two lists Milvus keeps: the segments its data coordinator
holds (flushed, not yet merged away) and those its query nodes have loaded. A merge changes
the first at once and the second only once the merged segment is indexed and loaded, so the
two agree only when what Milvus keeps is what it searches, whoever started the merge.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from embedsense.server.index.errors import IndexUnavailable
from embedsense.server.index.milvus.calls import MilvusCalls

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 3600.0
POLL_S = 0.5
# A compaction without a plan: Milvus's own merge holds the segments, or Milvus leaves them
# alone (its compaction settings, its version). Once they have not changed for this long, the
# segments are taken as they are: each is indexed and served (a merge of Milvus's own running
# longer replaces them later, served all along).
NO_PLAN_PATIENCE_S = 60.0
NO_PLAN_RETRY_S = 5.0  # between compactions without a plan: each is a request Milvus plans
# gRPC's timer may end a call a moment before the deadline it was given.
DEADLINE_SLACK_S = 0.05
GROWING = 2  # Milvus's SegmentState of a segment still taking writes (never "kept" yet)
L0 = 1  # Milvus's SegmentLevel (2.4+) of a segment of deletes only: never searched as one
# Segments below this many rows get no index in Milvus: searched exhaustively, they are done.
MIN_INDEXED_SEGMENT_ROWS = 1024


class OutOfTime(Exception):
    """The caller's timeout passed."""


class Deadline:
    def __init__(self, timeout: float) -> None:
        self.at = time.monotonic() + timeout

    def left(self) -> float:
        """What is left of the time, for one call to Milvus; OutOfTime when nothing is."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise OutOfTime
        return left

    def sleep(self, seconds: float | None = None) -> None:
        """`seconds` (a poll interval where not given), or what is left of the time where
        that is less."""
        time.sleep(min(POLL_S if seconds is None else seconds, self.left()))

    def wait_for(self, done: Callable[[], Any]) -> Any:
        """done()'s first answer other than None, asked every POLL_S."""
        while (answer := done()) is None:
            self.sleep()
        return answer


def wait_until_optimized(
    calls: MilvusCalls, name: str, docs: str, flushed: tuple[str, ...], timeout: float | None
) -> bool:
    """Flush the `flushed` Milvus collections, merge the segments of `docs` and wait until
    they are served (module docstring). False when `timeout` seconds pass first; each call to
    Milvus has what is left of them as its deadline."""
    deadline = Deadline(DEFAULT_TIMEOUT_S if timeout is None else timeout)
    try:
        for collection in flushed:
            calls(f"flush {name!r}", "flush", collection, timeout=deadline.left())
        return _merge_and_wait(calls, name, docs, deadline)
    except OutOfTime:
        return False
    except IndexUnavailable:  # a call that ran out of the caller's time
        if time.monotonic() >= deadline.at - DEADLINE_SLACK_S:
            return False
        raise


def _merge_and_wait(calls: MilvusCalls, name: str, docs: str, deadline: Deadline) -> bool:
    what = f"optimize {name!r}"
    if calls.loaded_segments(what, docs, timeout=deadline.left()) is None:
        return True  # milvus-lite: no interim index, no segments to merge
    if calls.persistent_segments(what, docs, timeout=deadline.left()) is None:
        # A Milvus that does not say what it keeps: a merge could not be seen served, so
        # none is started; what it says of its indexes is waited for.
        deadline.wait_for(lambda: _served(calls, what, docs, deadline))
        return True
    unplanned: tuple[float, set[int]] | None = None  # since when, which segments
    while True:
        # Milvus merges only segments whose index is built: wait for those, then merge.
        served = deadline.wait_for(lambda: _served(calls, what, docs, deadline))
        if len(served) < 2:  # a compaction would rewrite a lone segment whole
            return True
        sources = _compact(calls, what, docs, deadline)
        if sources:
            served = deadline.wait_for(lambda: _served(calls, what, docs, deadline))
            if unmerged := sources & {s.segmentID for s in served}:
                log.warning(
                    "milvus did not merge the segments of %r (its compaction failed or timed "
                    "out; see its log): %d segments stay, each searched on its own",
                    name,
                    len(unmerged),
                )
            return True
        segments = {s.segmentID for s in served}
        if unplanned is None or unplanned[1] != segments:
            unplanned = (time.monotonic(), segments)
        elif time.monotonic() - unplanned[0] >= NO_PLAN_PATIENCE_S:
            log.info(
                "milvus plans no merge of the %d segments of %r (a merge of its own holds them, "
                "or it leaves them alone): each is searched on its own",
                len(segments),
                name,
            )
            return True
        deadline.sleep(NO_PLAN_RETRY_S)


def _compact(calls: MilvusCalls, what: str, docs: str, deadline: Deadline) -> set[int]:
    """Compact `docs` and wait until the job ends (each plan completed, failed or timed
    out; a job Milvus does not know is not waited for): the segments its plans merged or
    tried to."""
    job = calls(what, "compact", docs, timeout=deadline.left())
    deadline.wait_for(
        lambda: (
            calls(what, "get_compaction_state", job, timeout=deadline.left()) != "Executing" or None
        )
    )
    plans = calls(what, "get_compaction_plans", job, timeout=deadline.left()).plans
    return {source for plan in plans for source in plan.sources}


def _served(calls: MilvusCalls, what: str, docs: str, deadline: Deadline) -> list[Any] | None:
    """The segments the query nodes serve when they are those Milvus keeps, each with its
    index built (where its size gets one); None until then."""
    index = calls(what, "describe_index", docs, index_name="vector", timeout=deadline.left())
    if index and (index.get("pending_index_rows") or 0) > 0:
        return None
    segments = calls.loaded_segments(what, docs, timeout=deadline.left())
    if segments is None:  # this Milvus stopped saying (refused the call): nothing to wait for
        return []
    loaded = [s for s in segments if s.state != GROWING and s.level != L0]
    kept = calls.persistent_segments(what, docs, timeout=deadline.left())
    if kept is None:  # what Milvus keeps, as its index counts it: every row of it loaded
        if index and sum(s.num_rows for s in loaded) < (index.get("total_rows") or 0):
            return None
    elif {s.segmentID for s in loaded} != {s.segmentID for s in kept if s.level != L0}:
        return None
    if any(not s.index_name and s.num_rows >= MIN_INDEXED_SEGMENT_ROWS for s in loaded):
        return None
    return loaded
