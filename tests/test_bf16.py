"""bfloat16 on CPUs: chosen by what the processor can do, and held to quality gates that do
not depend on the processor (they run on every machine, native bf16 or emulated)."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
import torch
from eval_senses import evaluate, load
from helpers import padded_batch, tiny_bert
from test_encoder_parity import ours_for

from embedsense.client import Client
from embedsense.model import TextRole
from embedsense.server import precision
from embedsense.server.config import EngineConfig
from embedsense.server.engine import Engine

NATIVE = "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16"
EMULATED = "fpu,sse2,avx2,avx512f"
CPU = torch.device("cpu")


def test_auto_picks_bf16_only_where_the_cpu_computes_it_and_the_probe_says_faster(monkeypatch):
    chosen = precision.choose("auto", CPU, 384, 1536, cpu_flags=EMULATED)
    assert chosen.dtype is torch.float32 and "no native bf16" in chosen.reason
    monkeypatch.setattr(precision, "bf16_speedup", lambda hidden, ffn: 1.8)
    chosen = precision.choose("auto", CPU, 384, 1536, cpu_flags=NATIVE)
    assert chosen.dtype is torch.bfloat16 and "1.80x" in chosen.reason
    assert "amx_bf16" in chosen.reason and "avx512_bf16" in chosen.reason
    monkeypatch.setattr(precision, "bf16_speedup", lambda hidden, ffn: 0.9)
    chosen = precision.choose("auto", CPU, 384, 1536, cpu_flags=NATIVE)
    assert chosen.dtype is torch.float32 and "0.90x" in chosen.reason
    assert precision.choose("bfloat16", CPU, 384, 1536).dtype is torch.bfloat16
    with pytest.raises(ValueError, match="float16 is for GPUs"):
        precision.choose("float16", CPU, 384, 1536)


def test_this_machines_auto_choice_matches_its_processor():
    chosen = precision.choose("auto", CPU, 384, 1536)
    native = precision.cpu_bf16_flags()
    assert (chosen.dtype is torch.bfloat16) <= bool(native), chosen.reason
    assert 0 < precision.bf16_speedup(64, 128, rows=64, repeats=1)


@pytest.fixture(scope="module")
def both(e5):
    """The eval sentences through the engine in fp32 and in bf16: sentence and token vectors."""
    data = load()
    sentences = sorted({x for word in data.values() for sense in word.values()
                        for x in sense["support"] + sense["test"]})  # fmt: skip

    async def run(dtype: str):
        engine = Engine(EngineConfig(dtype=dtype, warmup=False), e5).start()
        try:
            assert engine.info().dtype == dtype
            return await engine.embed(sentences, role=TextRole.PASSAGE, token_vectors=True)
        finally:
            engine.close()

    return asyncio.run(run("float32")), asyncio.run(run("bfloat16"))


def test_bf16_pooled_and_token_vectors_pass_the_quality_gates(both):
    fp32, bf16 = both
    pooled = np.array([a.sentence @ b.sentence for a, b in zip(fp32, bf16, strict=True)])
    assert pooled.min() >= 0.999, pooled.min()
    tokens = np.concatenate([
        (a.token_vectors * b.token_vectors).sum(1)
        / np.linalg.norm(a.token_vectors, axis=1) / np.linalg.norm(b.token_vectors, axis=1)
        for a, b in zip(fp32, bf16, strict=True)
    ])  # fmt: skip
    assert tokens.min() >= 0.995, tokens.min()


def test_bf16_keeps_the_word_sense_evaluation_within_half_a_point(e5):
    data = load()
    last = {"last": [-1]}
    key = "word + sentence, last, centred"
    fp32 = asyncio.run(evaluate(e5, data, last, EngineConfig(dtype="float32", warmup=False)))
    bf16 = asyncio.run(evaluate(e5, data, last, EngineConfig(dtype="bfloat16", warmup=False)))
    difference = abs(fp32["accuracy"][key]["overall"] - bf16["accuracy"][key]["overall"])
    assert difference <= 0.005, (fp32["accuracy"][key], bf16["accuracy"][key])


def test_bf16_autocast_runs_attention_grouped_by_length():
    """Under a CPU's bf16 autocast the grouped attention path gives what one grid gives."""
    reference = tiny_bert()
    ours = ours_for(reference)
    ids, mask = padded_batch([2, 38, 5, 30, 9, 24, 1, 36], reference.config.vocab_size, 0)
    out = {}
    for groups in (1, 4):
        ours.attention_groups = groups
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
            out[groups] = ours(ids, mask).last_hidden_state.float()
    real = mask.bool()
    cosine = torch.nn.functional.cosine_similarity(out[1][real], out[4][real], dim=-1)
    assert cosine.min() >= BF16_TOKEN_COSINE, cosine.min()


# bf16 keeps 8 bits of mantissa: two implementations agree to about 1e-2 per value, and
# per token their vectors point the same way (cosine) to this.
BF16_TOKEN_COSINE = 0.999


def test_bf16_parity_with_transformers_at_a_stated_tolerance():
    reference = tiny_bert()
    ours = ours_for(reference)
    ids, mask = padded_batch([9, 30, 17], reference.config.vocab_size, 0)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
        theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        mine = ours(ids, mask).last_hidden_state.float()
    real = mask.bool()
    cos = torch.nn.functional.cosine_similarity(theirs[real], mine[real], dim=-1)
    assert cos.min().item() >= BF16_TOKEN_COSINE, cos.min().item()


def test_a_bf16_server_embeds_explains_and_says_why(e5, tmp_path):
    """What the API tests check of the float32 server, under bf16 at bf16's tolerances."""
    from conftest import ServerThread
    from precisions import assert_matches

    running = ServerThread(e5, tmp_path, engine=EngineConfig(dtype="bfloat16", warmup=False))
    try:
        with Client(running.target) as c:
            info = c.info()
            assert info.dtype == "bfloat16" and info.dtype_reason == "asked for"
            assert (info.model, info.dim, info.device) == ("multilingual-e5-small", 384, "cpu")
            assert info.max_tokens == 512 and info.num_layers == 12
            texts = ["我喜欢吃苹果", "苹果公司发布了新手机", "The apple fell from the tree."]
            want = e5.encode_sentences(texts, TextRole.QUERY)
            assert_matches(c.encode(texts, batch_size=2), want, "bfloat16", pooled=True)
            e = c.explain("我喜欢吃苹果", "苹果", layers=[12])
            np.testing.assert_allclose(e.attentions.sum(axis=-1), 1.0, atol=1e-2)
            assert len(c.compare_layers("我喜欢吃苹果", "我买了苹果手机", "苹果").cosines) == 13
    finally:
        running.stop()


def test_the_servers_auto_decides_from_the_flags_it_is_given(e5, tmp_path, monkeypatch):
    """`auto` takes the processor's flags as an input (EMBEDSENSE_CPU_FLAGS, --cpu-flags):
    both outcomes, through a real server, on any machine."""
    from conftest import ServerThread

    from embedsense.server.api.settings import ServerSettings

    assert ServerSettings.from_env({"EMBEDSENSE_CPU_FLAGS": NATIVE}).engine.cpu_flags == NATIVE
    monkeypatch.setattr(precision, "bf16_speedup", lambda hidden, ffn: 1.8)
    for flags, dtype in ((EMULATED, "float32"), (NATIVE, "bfloat16")):
        config = EngineConfig(dtype="auto", cpu_flags=flags, warmup=False)
        running = ServerThread(e5, tmp_path / dtype, engine=config)
        try:
            with Client(running.target) as c:
                info = c.info()
                assert info.dtype == dtype, info.dtype_reason
                assert "flags as configured" in info.dtype_reason
                assert c.encode("苹果").shape == (384,)
        finally:
            running.stop()


def test_bf16_linears_cast_once_give_autocasts_own_numbers(e5):
    """The runner casts its Linear weights to bf16 once instead of autocast casting them on
    every forward (a fixed cost each short forward paid): the same vectors, bit for bit,
    and the loaded model left in fp32 for its other users."""
    from embedsense.server.runner import ModelRunner

    runner = ModelRunner(e5, EngineConfig(dtype="bfloat16"))
    assert runner.encoder.layers[0].feed_forward.up.weight.dtype is torch.bfloat16
    assert e5.encoder.layers[0].feed_forward.up.weight.dtype is torch.float32
    assert runner.encoder.embeddings is e5.encoder.embeddings  # the tables are not copied
    texts = [t.ids for t in e5.tokenizer.encode_batch(["我喜欢吃苹果", "苹果手机很贵" * 9])]
    once = runner.run(texts, [None, (6, -1)])
    groups, e5.encoder.attention_groups = e5.encoder.attention_groups, 4
    runner.encoder, cast_each_time = e5.encoder, runner.encoder
    try:
        every_time = runner.run(texts, [None, (6, -1)])
    finally:
        runner.encoder, e5.encoder.attention_groups = cast_each_time, groups
    for a, b in zip(once, every_time, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bf16_forwards_come_in_few_token_counts_whose_kernels_stay_cached(e5):
    """oneDNN compiles a kernel for each new shape of a bf16 product, which costs more than
    the product itself on a large forward (runner.BF16_TOKEN_STEP), and the engine's batches
    come in a new token count nearly every time. The runner pads a bf16 forward with a
    filler row up to a whole number of steps (16 tokens below 256, 64 from there): every
    Linear sees one of few token counts, the kernel caches have room for them all, and each
    row's vectors are those of the batch without the filler."""
    from embedsense.model.tokenizer import pad_sequences
    from embedsense.server.runner import (
        KERNELS_PER_TOKEN_COUNT,
        MAX_KERNEL_ENTRIES,
        ModelRunner,
        bf16_token_counts,
        bf16_tokens,
        kernel_cache_entries,
    )

    runner = ModelRunner(e5, EngineConfig(dtype="bfloat16"))
    counts = bf16_token_counts(runner.part_tokens)
    assert {bf16_tokens(n) for n in range(1, runner.part_tokens + 1)} == set(counts)
    assert len(counts) <= 40
    # The caches in effect in this process (sized by its first runner) have room for them
    # all, and a process of the bundled model alone sizes them for its counts.
    assert runner.kernel_entries >= KERNELS_PER_TOKEN_COUNT * len(counts)
    assert KERNELS_PER_TOKEN_COUNT * len(counts) < kernel_cache_entries(runner.part_tokens)
    assert kernel_cache_entries(runner.part_tokens) <= MAX_KERNEL_ENTRIES
    token_counts: set[int] = set()
    runner.encoder.layers[0].feed_forward.up.register_forward_pre_hook(
        lambda _, args: token_counts.add(args[0].shape[0])
    )
    texts = [
        "苹果",
        "我喜欢吃苹果",
        "苹果手机很贵" * 50,
        "今天天气很好，我们去公园散步吧" * 15,
        "花" * 250,
    ]
    ids = [t.ids for t in e5.tokenizer.encode_batch(texts)]  # 6, 8, 205, 139 and 255 tokens
    batches = [ids[:2], ids[2:4], ids[1:4], ids, ids[3:], ids[:1]]  # one part each
    for batch in batches:
        tokens = sum(map(len, batch))
        token_counts.clear()
        rows = runner.run(batch, [None, *[(6, -1)] * (len(batch) - 1)])
        step = 64 if tokens >= 256 else 16
        assert tokens % step  # a filler is due
        assert token_counts == {tokens + -tokens % step}
        padded, mask = pad_sequences(batch, runner.pad_id)
        with runner.computing():
            out = runner.encoder(padded, mask, output_hidden_states=True)
        for i, (row, seq) in enumerate(zip(rows, batch, strict=True)):
            mixed = [out.hidden_states[6], out.hidden_states[-1]]
            layers = [out.last_hidden_state] if i == 0 else mixed
            alone = torch.stack([layer[i, : len(seq)].float() for layer in layers]).mean(0)
            np.testing.assert_allclose(row, alone.numpy(), atol=2e-2)


KERNEL_PASSES = """
import sys
from dataclasses import replace
from embedsense.model import Encoder, load_model
from embedsense.server.config import EngineConfig
from embedsense.server.runner import ModelRunner
e5 = load_model()
one_layer = replace(e5, encoder=Encoder(replace(e5.encoder.cfg, num_layers=1)))
runner = ModelRunner(one_layer, EngineConfig(threads=2, dtype="bfloat16"), owns_model=True)
for n in range(2):
    print("PASS", n, flush=True)
    for tokens in range(1, runner.part_tokens + 1, 9):  # in rows of up to 100 tokens
        rows = [[100] * min(100, tokens - i) for i in range(0, tokens, 100)]
        runner.run(rows, [None] * len(rows))
"""


def test_after_one_forward_of_each_token_count_bf16_forwards_compile_no_kernel():
    """The kernel caches hold the kernels of every token count a bf16 forward comes in. At
    32 entries each they held 6 of the 18 counts from 256 tokens up, and forwards of one
    token count after another, as the service's mixed batches come, compiled their
    products' kernels again and again (255 compiles in a second pass over the counts here,
    at about 7 ms each on a 2-core Xeon). oneDNN's own log (ONEDNN_VERBOSE) counts them, in
    a process of its own: the caches are sized at the first bf16 product."""
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_VERBOSE": "profile_create"}
    for name in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY"):
        env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-c", KERNEL_PASSES], env=env, capture_output=True, text=True,
        check=True, timeout=300,
    ).stdout  # fmt: skip
    first, second = out.split("PASS 1")
    if "matmul" not in first:
        pytest.skip("bf16 matrix products do not run on oneDNN on this processor")
    assert first.count("create:cache_miss") > 0
    assert second.count("create:cache_miss") == 0
