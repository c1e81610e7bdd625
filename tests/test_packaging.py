"""The distribution installs one namespace, embedsense.*, and no bare model/server/client."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib.util, json, sys
found = {name: (spec.origin if (spec := importlib.util.find_spec(name)) else None)
         for name in ("embedsense.model", "embedsense.server", "embedsense.client",
                      "embedsense.proto", "embedsense.proto.v1.embedsense_pb2")}
bare = [name for name in ("model", "server", "client", "proto")
        if importlib.util.find_spec(name)]
print(json.dumps({"found": found, "bare": bare, "prefix": sys.prefix}))
"""


def test_non_editable_install_into_a_fresh_venv(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = next(env_dir.glob("lib/python*/site-packages"))
    # Build and install a wheel of the working tree (non-editable) into the fresh venv,
    # without dependencies: the layout is what is under test, not PyPI.
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(ROOT)],
        check=True, cwd=tmp_path,
    )  # fmt: skip
    python = env_dir / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", PROBE], check=True, capture_output=True, text=True,
        cwd=tmp_path, env={"PATH": os.environ["PATH"]},
    ).stdout  # fmt: skip
    import json

    result = json.loads(out)
    assert result["bare"] == []
    for name, origin in result["found"].items():
        assert origin is not None, f"{name} not installed"
        assert origin.startswith(str(site)), f"{name} came from {origin}, not the fresh venv"
    assert not (site / "model").exists() and not (site / "server").exists()
    assert (site / "embedsense" / "model" / "encoder.py").exists()
    assert not (site / "embedsense" / "client" / "v1").exists()  # the contract is shared


def _make_install_dry_run(*assignments: str) -> list[str]:
    """The commands `make install` would run, forced (-B) and not run (-n)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # A pytest started by `make test` inherits make's flags; the dry run needs none of them.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    done = subprocess.run(
        ["make", "-n", "-B", "install", *assignments],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return done.stdout.splitlines()


def _torch_line(lines: list[str]) -> str:
    (line,) = [line for line in lines if "pip install" in line and "torch==" in line]
    return line


def test_make_install_pins_the_cpu_torch_build_on_linux():
    # PyPI's Linux torch wheel is the CUDA build (several GB of CUDA libraries); the CPU
    # build is `+cpu`, from PyTorch's own index, as in docker/Dockerfile.
    line = _torch_line(_make_install_dry_run())
    pinned = re.search(r"torch==([0-9.]+)(\+cpu)?", line)
    server_pin = re.search(r'"torch==([0-9.]+)"', (ROOT / "pyproject.toml").read_text())
    assert pinned and server_pin and pinned.group(1) == server_pin.group(1), line
    if platform.system() == "Linux":
        assert pinned.group(2) == "+cpu", f"not the CPU build: {line}"
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in line, line
    else:
        assert pinned.group(2) is None, f"+cpu builds exist only for Linux: {line}"
    # TORCH_INDEX= (empty): no extra index, local wheels or a mirror only.
    assert "--extra-index-url" not in _torch_line(_make_install_dry_run("TORCH_INDEX="))


def test_make_install_asks_for_the_setuptools_that_pyproject_needs():
    # `license = "MIT"` (a string) needs setuptools 77; the Makefile upgrades .venv's to match.
    required = re.search(r'"setuptools>=([0-9]+)"', (ROOT / "pyproject.toml").read_text())
    assert required and int(required.group(1)) >= 77, required
    (line,) = [line for line in _make_install_dry_run() if "setuptools>=" in line]
    assert f'"setuptools>={required.group(1)}"' in line, line
