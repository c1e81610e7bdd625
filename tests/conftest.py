"""Shared fixtures. Tests never touch the network: the Hugging Face hub is forced offline
and its cache points at an empty folder, so only models that tests build, or that a
package ships, can load."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="embedsense-hf-home-")
os.environ.pop("EMBEDSENSE_ALLOW_DOWNLOAD", None)

import pytest  # noqa: E402
import torch  # noqa: E402

# Parity checks compare float32 results to 1e-4; keep the math path identical run to run.
torch.manual_seed(0)


@pytest.fixture(scope="session")
def e5():
    """The offline default model, loaded once for the whole session."""
    from embedsense.model import load_model

    return load_model()
