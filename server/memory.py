"""Giving freed memory back to the operating system, now and then.

Each forward allocates and frees buffers of tens of megabytes (attention scores, the
feed-forward's inner activations). glibc keeps freed heap memory for reuse, so a server's
RSS climbs to the high-water mark of every batch shape it has seen and stays there (+47 %
over five minutes of mixed load, README). `malloc_trim` hands the free pages back; it costs
about a millisecond, so the engine calls it at most every couple of seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time

log = logging.getLogger(__name__)


class HeapTrimmer:
    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self._last = time.monotonic()
        self._trim = None
        name = ctypes.util.find_library("c")
        try:
            self._trim = ctypes.CDLL(name).malloc_trim if name else None
        except (OSError, AttributeError):  # not glibc: nothing to do
            self._trim = None
        if self._trim is None:
            log.debug("malloc_trim is not available here; RSS is left to the allocator")

    def maybe_trim(self) -> None:
        """Trim when `every_s` seconds have passed since the last time."""
        now = time.monotonic()
        if self._trim is not None and now - self._last >= self.every_s:
            self._last = now
            self._trim(0)
