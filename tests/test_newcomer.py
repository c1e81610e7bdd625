"""What a newcomer runs first: `make demo` reads as a clean report, and `make docker-test`
says what to install when the machine cannot run it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_demo_prints_a_report_and_keeps_the_server_log_in_the_file_it_names(tmp_path):
    log = tmp_path / "server.log"
    done = subprocess.run(
        [sys.executable, "-m", "embedsense.client.demo", "--server-log", str(log)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-1000:]
    out = done.stdout
    assert f"server log: {log}" in out
    assert "which sense?" in out and "server stopped" in out
    assert not [line for line in out.splitlines() if line.lstrip().startswith("{")], out
    logged = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(line["msg"].startswith("serving") for line in logged)
    assert any(line["logger"] == "embedsense.access" for line in logged)


def test_docker_test_says_what_to_install_when_there_is_no_engine(tmp_path):
    """A docker CLI that reaches no engine, and no dockerd: the script must say to install
    docker.io, not fail with 'dockerd: command not found'."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "env", "dirname", "mktemp", "rm", "cat", "seq", "sleep", "printf"):
        if found := shutil.which(tool):
            (bin_dir / tool).symlink_to(found)
    docker = bin_dir / "docker"  # the CLI alone: every command fails, as with no engine
    docker.write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    docker.chmod(0o755)
    done = subprocess.run(
        ["bash", str(ROOT / "docker" / "test.sh")], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": str(bin_dir)},
    )  # fmt: skip
    assert done.returncode == 1
    assert "apt-get install docker.io" in done.stdout + done.stderr
    assert "command not found" not in done.stdout + done.stderr
