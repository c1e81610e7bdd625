"""The distribution installs one namespace, embedsense.*, and no bare model/server/client."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

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
