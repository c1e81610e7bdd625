"""Giving freed memory back to the operating system: at once for large blocks, and now
and then for the rest.

Each forward allocates and frees buffers of tens of megabytes (attention scores, the
feed-forward's inner activations). glibc keeps freed heap memory for reuse, so a server's
RSS climbs to the high-water mark of every batch shape it has seen and stays there (+47 %
over five minutes of mixed load, README). `malloc_trim` hands the free pages back; it costs
about a millisecond, so the engine calls it at most every couple of seconds.

That alone leaves the heaps' high-water marks in between, and glibc raises its mmap
threshold each time a large block is freed (up to 32 MiB), so the activations of the largest
batches soon come from the heaps and stay there. tune_allocator() pins the threshold at
8 MiB and caps the number of heaps (glibc makes up to 8 per core, one per thread that
allocates). Blocks above it (only large batches make them) are mapped on their own and go
back when freed. Blocks below it are reused from the heaps: a block mapped afresh costs a
page fault per 4 KiB on every forward, and at a threshold of 256 KiB that made the forwards
of a busy server (about 1,000 tokens each) a third slower. What is reused is bounded
(footprint.py counts it). What each setting did to RSS and throughput is in the docs'
memory table.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time

log = logging.getLogger(__name__)

# mallopt's parameters (glibc's malloc.h) and the values set. A variable glibc reads itself
# (MALLOC_ARENA_MAX, MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_) wins over these.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
SETTINGS = (
    (M_ARENA_MAX, "MALLOC_ARENA_MAX", 2),
    (M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", 8 * 1024 * 1024),
    (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", 4 * 1024 * 1024),
)
# On a CPU, bf16 matrix products go through oneDNN, and PyTorch's ideep layer and oneDNN
# each keep a cache of kernels per input shape (1024 entries by default). The engine's
# batches come in a new token count nearly every time, so RSS climbs batch after batch until
# those caches are full. A few entries keep the reuse that matters (a forward's layers share
# their shapes); read by both libraries when first used, so set before the first forward.
KERNEL_CACHES = {"LRU_CACHE_CAPACITY": "32", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "32"}
_tuned = False


def effective(variable: str) -> int:
    """The value of one of SETTINGS' glibc variables in effect: the environment's, where
    it is set to a number, else the value tune_allocator() sets."""
    default = next(value for _, name, value in SETTINGS if name == variable)
    try:
        return int(os.environ[variable])
    except (KeyError, ValueError):
        return default


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def tune_allocator() -> bool:
    """Bound the kernel caches (KERNEL_CACHES, unless set already) and set glibc's malloc
    as SETTINGS say, once per process; False where this is not glibc (another allocator
    has its own rules)."""
    global _tuned
    for variable, value in KERNEL_CACHES.items():
        os.environ.setdefault(variable, value)
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    if not _tuned:
        for parameter, variable, value in SETTINGS:
            if variable not in os.environ:
                mallopt(parameter, value)
        _tuned = True
    return True


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
