"""One OpenMP team per process for the model's forwards.

PyTorch's CPU kernels run their parallel regions on libgomp, which gives every thread that
starts one a team of worker threads of its own and keeps it until that thread exits. Once a
process holds more of those threads than it has CPUs, libgomp stops spinning between
parallel regions (100 spins rather than about 300,000) and its workers sleep on a futex
after each region, to be woken for the next: a forward of 12 layers has hundreds. A server
loads and warms its model on one thread and runs its forwards on another (and on the query
lane, and Explain's), so on 2 cores every forward of the engine's worker ran that way: 60
sleeps per text, and 0.78× the texts/s of the same forwards run by a process's only team
(2-core EPYC, interleaved rounds; docs/performance.md).

release_team() hands the calling thread's team back (OpenMP 5's omp_pause_resource_all), so
that the worker's is the only one that stays (ModelRunner.run_here). Where PyTorch does not
run on libgomp, or it lacks that call, it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

OMP_PAUSE_SOFT = 1  # omp.h's omp_pause_soft: the threads go, the runtime stays usable


@functools.cache
def _torch_libgomp() -> ctypes.CDLL | None:
    """The libgomp PyTorch's kernels run on: the one loaded from PyTorch's own folders
    (faiss's wheel brings another copy, with threads and counts of its own)."""
    package = Path(torch.__file__).resolve().parent
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not Path(fields[5]).name.startswith("libgomp"):
            continue
        path = Path(fields[5])
        if package in path.parents or path.parent.name == "torch.libs":
            library = ctypes.CDLL(str(path))
            if hasattr(library, "omp_pause_resource_all"):
                return library
    log.debug("PyTorch does not run on a libgomp with omp_pause_resource_all here")
    return None


def supported() -> bool:
    """Whether release_team() can hand a team back here."""
    return _torch_libgomp() is not None


def release_team() -> None:
    """End the calling thread's OpenMP team, if it has one; its next parallel region starts
    a new one. Not to be called inside a parallel region (it is not, from Python)."""
    library = _torch_libgomp()
    if library is not None:
        library.omp_pause_resource_all(OMP_PAUSE_SOFT)
