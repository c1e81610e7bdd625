"""Giving freed memory back to the operating system: at once for large blocks, and now
and then for the rest.

Each forward allocates and frees buffers of tens of megabytes (attention scores, the
feed-forward's inner activations). glibc keeps freed heap memory for reuse, so a server's
RSS climbs to the high-water mark of every batch shape it has seen and stays there (+47 %
over five minutes of mixed load, README). `malloc_trim` hands the free pages back; it costs
about a millisecond, so the engine calls it at most every couple of seconds (every quarter
second while the RSS is over the predicted peak, HeapTrimmer).

That alone leaves the heaps' high-water marks in between, and glibc raises its mmap
threshold each time a large block is freed (up to 32 MiB), so the activations of the largest
batches soon come from the heaps and stay there. tune_allocator() pins the threshold (at
8 MiB in fp32) and caps the number of heaps (glibc makes up to 8 per core, one per thread that
allocates). Blocks above it (only large batches make them) are mapped on their own and go
back when freed. Blocks below it are reused from the heaps: a block mapped afresh costs a
page fault per 4 KiB on every forward, and at a threshold of 256 KiB that made the forwards
of a busy server (about 1,000 tokens each) a third slower. What is reused is bounded
(footprint.py counts it). What each setting did to RSS and throughput is in the docs'
memory table.

The threshold scales with the compute dtype's element size (8 MiB in fp32, 4 MiB in bf16
and fp16), so that the same batch shapes are reused from the heaps whatever the dtype. At
8 MiB in bf16, a full bulk batch's (N, C) blocks (6 MiB at 8,192 tokens) stayed in the heaps
as well, interleaved with the small blocks that live on, and indexing 2,000 documents left
the server's peak at 1,056–1,101 MiB; at 4 MiB, 955 MiB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time

log = logging.getLogger(__name__)

# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
# Per byte of the compute dtype's elements: the same batch shapes stay in the heaps in fp32
# and bf16 (the module's docstring).
MMAP_THRESHOLD_PER_ELEMENT_BYTE = 2 * 1024 * 1024
# What a heap keeps free at its top: a part's activations (part_tokens), so that the next
# part reuses them rather than fault them in again (at 4 MiB: 43,000 faults and 135 ms of
# kernel time per 3,600-token bf16 forward, against 3,300 and 17 ms).
TRIM_THRESHOLD = 32 * 1024 * 1024
# On a CPU, bf16 matrix products go through oneDNN, and PyTorch's ideep layer and oneDNN
# each keep a cache of kernels per input shape (1024 entries by default), read by both
# libraries when first used, so set before the first forward. The runner's forwards come in
# few token counts (runner.BF16_TOKEN_STEP), and the caches are sized to hold them all
# (runner.kernel_cache_entries): bounded, since a cache sized for every count a forward
# could have would keep growing batch after batch.
KERNEL_CACHES = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY")


def part_tokens(ffn: int, element_bytes: int, max_tokens: int) -> int:
    """Padded tokens of the parts a CPU runs a batch in (runner.py): the most whose largest
    activation block, the feed-forward's (N, ffn) of `element_bytes` elements, stays under
    the mmap threshold in effect (in whole 64s), and at least one full-length text.

    A part's blocks are then reused from the heaps forward after forward: a block mapped
    afresh costs a page fault per 4 KiB. The worker's batches of a few thousand tokens, run
    whole, had their feed-forward's blocks mapped afresh in every layer: 147,000 faults a
    second under `make load`, 44 % of one core in the kernel. And a forward's live
    activations are those of one part, whatever the batch budget."""
    threshold = effective("MALLOC_MMAP_THRESHOLD_", element_bytes)
    return max(max_tokens, threshold // (ffn * element_bytes) // 64 * 64)


def settings(element_bytes: int = 4) -> tuple[tuple[int, str, int], ...]:
    """mallopt's parameter, the variable glibc reads itself for it (which wins over ours)
    and our value, for a model computing in elements of `element_bytes` bytes."""
    return (
        (M_ARENA_MAX, "MALLOC_ARENA_MAX", 2),
        (M_MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_",
         MMAP_THRESHOLD_PER_ELEMENT_BYTE * element_bytes),
        (M_TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD),
    )  # fmt: skip


def effective(variable: str, element_bytes: int = 4) -> int:
    """The value of one of settings()' glibc variables in effect: the environment's, where
    it is set to a number, else the value tune_allocator(element_bytes) sets."""
    default = next(value for _, name, value in settings(element_bytes) if name == variable)
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


def bound_kernel_caches(entries: int) -> int:
    """KERNEL_CACHES at `entries` each, unless set already: before the process's first bf16
    product (the precision probe's included), after which the libraries have read them.
    Returns the largest in effect (an operator's own setting may differ)."""
    values = [os.environ.setdefault(variable, str(entries)) for variable in KERNEL_CACHES]
    return max(int(value) if value.strip().isdigit() else entries for value in values)


def tune_allocator(element_bytes: int = 4) -> bool:
    """Set glibc's malloc as settings(element_bytes) say, for the whole process (the latest
    runner's dtype decides); False where this is not glibc (another allocator has its own
    rules)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    for parameter, variable, value in settings(element_bytes):
        if variable not in os.environ:
            mallopt(parameter, value)
    return True


def resident_bytes() -> int | None:
    """The process's RSS (None where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """`malloc_trim` every `every_s` seconds; and, while the RSS is over `ceiling` (the
    server's predicted peak), as soon as `soon_s` have passed: between two trims 2 s apart the
    heaps of a busy server refill with free memory (fragments around blocks that live on,
    touched again by the next forwards), and its RSS rose 21 % over the prediction."""

    def __init__(
        self, every_s: float = 2.0, ceiling: int | None = None, soon_s: float = 0.25
    ) -> None:
        self.every_s, self.ceiling, self.soon_s = every_s, ceiling, soon_s
        self._last = self._checked = time.monotonic()
        # A trim left the RSS over the ceiling: what holds it there is not the heaps' free
        # memory (a large faiss index in the server, which the prediction leaves out).
        self._held_over = False
        self._trim = None
        name = ctypes.util.find_library("c")
        try:
            self._trim = ctypes.CDLL(name).malloc_trim if name else None
        except (OSError, AttributeError):  # not glibc: nothing to do
            self._trim = None
        if self._trim is None:
            log.debug("malloc_trim is not available here; RSS is left to the allocator")

    def maybe_trim(self) -> None:
        """Trim when `every_s` seconds have passed since the last time, or `soon_s` with the
        RSS over the ceiling, unless the last such trim left it over the ceiling (then
        every `every_s`, until the RSS is under it again: a trim after every forward cost
        10 % of a CPU's throughput, for nothing there). The RSS is read at most every
        `soon_s` too: reading it after every forward of small batches cost more than the
        trims."""
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self.trim()
        elif self.ceiling is not None and now - self._checked >= self.soon_s:
            self._checked = now
            if (resident_bytes() or 0) <= self.ceiling:
                self._held_over = False
            elif not self._held_over:
                self.trim()
                self._held_over = (resident_bytes() or 0) > self.ceiling

    def trim(self) -> None:
        """Hand the heaps' free memory back to the system now."""
        self._last = self._checked = time.monotonic()
        if self._trim is not None:
            self._trim(0)
