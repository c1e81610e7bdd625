"""The benchmarks' own harness (tests/bench/): a benchmark that meets an error must say so at
once, not wait out its time limit and leave nothing to read (a GPU machine's minutes are
few)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from ops.serverproc import free_port

sys.path.insert(0, str(Path(__file__).parent / "bench"))
from gpu_service import drive  # noqa: E402  (tests/bench/gpu_service.py)


def test_a_client_process_that_fails_is_reported_at_once_with_its_error():
    """Client processes that cannot reach the server: the old harness waited 120 s for
    their 'ready' and raised a bare queue.Empty; now the first failure is raised, named."""
    nobody = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="client process failed.*UNAVAILABLE"):
        drive(nobody, [b""] * 8, callers=4, processes=2)
    assert time.monotonic() - started < 60
