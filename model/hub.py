"""Fetching Hugging Face models: only from the local cache unless downloading is opted into.

The service must never reach for the network behind a user's back (containers are often
offline, and a 400 MB surprise download is not a default). `allow_download=True`,
embedsense-server's `--allow-download` flag or EMBEDSENSE_ALLOW_DOWNLOAD=1 opt in.
"""

from __future__ import annotations

import os
from pathlib import Path

# Everything our loaders read; weights are fetched separately so that a repository holding
# both safetensors and a pickle does not cost two downloads.
_CONFIG_FILES = [
    "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
    "special_tokens_map.json",
]  # fmt: skip
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ModelNotAvailableError(RuntimeError):
    """The model is neither bundled nor cached, and could not (or may not) be downloaded."""


def download_allowed_by_env() -> bool:
    return os.environ.get("EMBEDSENSE_ALLOW_DOWNLOAD", "").lower() in ("1", "true", "yes")


def fetch_hf_model(repo_id: str, allow_download: bool = False) -> Path:
    """Local directory holding `repo_id`'s config, tokenizer files and one weights file.

    Uses the Hugging Face cache when the model is there. Otherwise downloads only if
    allowed, and raises ModelNotAvailableError with the reason when it cannot.
    """
    try:
        from huggingface_hub import snapshot_download
    except ModuleNotFoundError as err:
        raise ModelNotAvailableError(
            "huggingface_hub is needed to fetch models: install embedsense[server]"
        ) from err

    def snapshot(files: list[str], local_only: bool) -> Path:
        return Path(snapshot_download(repo_id, allow_patterns=files, local_files_only=local_only))

    try:
        return _with_weights(snapshot(_CONFIG_FILES + list(_WEIGHT_FILES), local_only=True))
    except Exception as cached_err:  # noqa: BLE001 - any cache miss means "not here"
        if not allow_download:
            raise ModelNotAvailableError(
                f"model {repo_id!r} is not in the local Hugging Face cache and downloading is "
                "off: allow it with embedsense-server --allow-download or "
                "EMBEDSENSE_ALLOW_DOWNLOAD=1 (Python: allow_download=True), or give the path "
                "of a local model directory"
            ) from cached_err
    try:
        for weights in _WEIGHT_FILES:
            local = snapshot(_CONFIG_FILES + [weights], local_only=False)
            if (local / weights).exists():
                return local
        raise ModelNotAvailableError(f"{repo_id!r} has neither of {_WEIGHT_FILES}")
    except ModelNotAvailableError:
        raise
    except Exception as err:  # noqa: BLE001 - network, auth and hub errors all end here
        raise ModelNotAvailableError(
            f"could not download {repo_id!r} from the Hugging Face hub "
            f"({type(err).__name__}: {err}). Is this machine offline? Download the model "
            "elsewhere and pass its directory instead"
        ) from err


def _with_weights(local: Path) -> Path:
    if not any((local / w).exists() for w in _WEIGHT_FILES):
        raise FileNotFoundError(f"{local} holds no weights file")
    return local
