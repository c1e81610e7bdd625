"""The suite itself: a run leaves nothing behind on the machine it runs on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).parent


def test_a_pytest_run_leaves_no_folder_in_the_temporary_directory(tmp_path):
    """conftest.py points the Hugging Face cache at a folder of its own (so that no model
    from the machine's cache can load): every run left that folder behind, one more empty
    embedsense-hf-home-* in /tmp a run."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         str(TESTS / "test_tokenizer.py")],
        env={**os.environ, "TMPDIR": str(scratch)}, cwd=TESTS.parent, check=True,
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert not list(scratch.iterdir())
