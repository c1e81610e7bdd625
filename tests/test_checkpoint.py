"""Hugging Face model directories through our loader: real files written by
`save_pretrained`, and broken ones that must fail with every offending key named."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import bert_reference_for, padded_batch, tiny_bert, tiny_xlmr
from safetensors.torch import load_file, save_file

from embedsense.model import load_model
from embedsense.model.checkpoint import CheckpointError, load_hf_encoder, to_hf_state_dict

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "我", "喜", "欢", "吃", "苹", "果"]


def save(model, path, safe: bool = True):
    model.save_pretrained(path)
    if not safe:  # the pickled format of older checkpoints (transformers 5 writes only safetensors)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
        (path / "model.safetensors").unlink()
    return path


def hidden(model, ids, mask):
    with torch.inference_mode():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("build,pad", [(tiny_bert, 0), (tiny_xlmr, 1)])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_saved_directory_loads_and_matches(tmp_path, build, pad, safe):
    ref = build()
    path = save(ref, tmp_path / "m", safe)
    assert (path / ("model.safetensors" if safe else "pytorch_model.bin")).exists()
    ours = load_hf_encoder(path)
    ids, mask = padded_batch([13, 6], ref.config.vocab_size, pad_id=pad)
    real = mask.bool()
    expected = hidden(ref, ids, mask)[real]
    got = ours(ids, mask).last_hidden_state[real]
    assert (expected - got).abs().max() <= 1e-4


def test_pooler_is_ignored_on_purpose(tmp_path, caplog):
    ref = tiny_bert()
    assert any(k.startswith("pooler.") for k in ref.state_dict())
    with caplog.at_level("INFO"):
        load_hf_encoder(save(ref, tmp_path / "m"))
    assert "pooler is ignored on purpose" in caplog.text


def test_task_prefix_and_gamma_beta_names_are_understood(tmp_path):
    ref = tiny_bert()
    path = save(ref, tmp_path / "m")
    weights = load_file(str(path / "model.safetensors"))
    renamed = {}
    for k, v in weights.items():  # how old BertForMaskedLM checkpoints name things
        k = "bert." + k.replace("LayerNorm.weight", "LayerNorm.gamma")
        renamed[k.replace("LayerNorm.bias", "LayerNorm.beta")] = v
    renamed["cls.predictions.bias"] = torch.zeros(ref.config.vocab_size)
    save_file(renamed, str(path / "model.safetensors"))
    ids, mask = padded_batch([5], ref.config.vocab_size, pad_id=0)
    torch.testing.assert_close(
        load_hf_encoder(path)(ids, mask).last_hidden_state, hidden(ref, ids, mask)
    )


def test_broken_checkpoint_names_every_problem(tmp_path):
    path = save(tiny_bert(), tmp_path / "m")
    weights = load_file(str(path / "model.safetensors"))
    del weights["encoder.layer.1.attention.self.key.weight"]
    del weights["embeddings.LayerNorm.bias"]
    weights["encoder.layer.2.output.dense.weight"] = torch.zeros(64, 5)
    weights["encoder.layer.9.surprise"] = torch.zeros(1)
    save_file(weights, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_hf_encoder(path)
    message = str(err.value)
    for name in (
        "encoder.layer.1.attention.self.key.weight",
        "embeddings.LayerNorm.bias",
        "encoder.layer.2.output.dense.weight",
        "encoder.layer.9.surprise",
    ):
        assert name in message
    assert "missing keys" in message and "unexpected keys" in message
    assert "shape mismatches" in message and "(64, 5)" in message


def test_directory_without_config_or_weights_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_hf_encoder(tmp_path)
    save(tiny_bert(), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="neither model.safetensors nor pytorch_model.bin"):
        load_hf_encoder(tmp_path / "m")


@pytest.mark.parametrize("damage", ["truncated weights", "config missing a field",
                                    "config not JSON", "broken tokenizer.json"])  # fmt: skip
def test_a_damaged_model_directory_is_a_checkpoint_error_naming_the_file(tmp_path, damage):
    """Each was an exception the server's start does not expect (SafetensorError, KeyError,
    JSONDecodeError, a bare Exception): a traceback instead of "embedsense-server: ..."."""
    path = save(tiny_bert(vocab_size=len(VOCAB)), tmp_path / "m")
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    load_model(str(path))  # whole, it loads
    config = path / "config.json"
    if damage == "truncated weights":
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        name = "model.safetensors"
    elif damage == "config missing a field":
        data = json.loads(config.read_text())
        del data["intermediate_size"]
        config.write_text(json.dumps(data))
        name = "config.json"
    elif damage == "config not JSON":
        config.write_text(config.read_text()[:40])
        name = "config.json"
    else:
        (path / "tokenizer.json").write_text('{"version": "1.0", "truncation', encoding="utf-8")
        name = "tokenizer.json"
    with pytest.raises(CheckpointError, match=name):
        load_model(str(path))


def test_local_bert_directory_through_the_registry(tmp_path):
    ref = tiny_bert(vocab_size=len(VOCAB))
    path = save(ref, tmp_path / "m")
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    loaded = load_model(str(path))
    assert loaded.dim == 64 and loaded.spec.source == "dir" and loaded.spec.prefixes == {}
    enc = loaded.tokenizer.encode("我喜欢吃苹果")
    assert enc.tokens == ["[CLS]", "我", "喜", "欢", "吃", "苹", "果", "[SEP]"]
    vectors = loaded.encode_sentences(["我喜欢吃苹果", "苹果"])
    assert vectors.shape == (2, 64)
    assert abs(float((vectors**2).sum(1).max()) - 1.0) < 1e-5


def test_export_round_trips_through_transformers(e5):
    """to_hf_state_dict gives transformers exactly our weights (used by the benchmark)."""
    ref = bert_reference_for(e5.encoder.cfg)
    ref.load_state_dict(to_hf_state_dict(e5.encoder), strict=True)
    batch = e5.tokenizer.encode_batch(["我喜欢吃苹果", "苹果发布了新款手机，价格不低。"])
    ids, mask = e5.pad(batch)
    real = mask.bool()
    with torch.inference_mode():
        ours = e5.encoder(ids, mask).last_hidden_state[real]
    assert (hidden(ref, ids, mask)[real] - ours).abs().max() <= 1e-4


def test_config_json_is_the_source_of_shape(tmp_path):
    path = save(tiny_xlmr(), tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    encoder = load_hf_encoder(path)
    assert (
        encoder.cfg.positions_after_pad
        and encoder.cfg.max_tokens == config["max_position_embeddings"] - 2
    )
