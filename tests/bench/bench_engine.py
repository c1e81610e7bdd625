"""The engine vs the naive ways of serving the same model, in one process, same weights.

32 concurrent callers each send one text at a time (mixed-length Chinese, 5-120 tokens):
  (a) our engine: token-budget dynamic batching with length grouping
  (b) a forward per request, one at a time (what a naive server does)
  (c) fixed batches of 32 in arrival order, no length grouping
  (d) length-sorted batches of 32: what sentence-transformers' `encode` does (it sorts the
      list by length, batches it, and restores the order)
      ((c) and (d) are offline: the whole list at once; latency = when the text's batch
      finished)
(b), (c) and (d) run twice: on our encoder (isolates what the scheduling adds) and on
`transformers`' BertModel with the same weights and tokens (what a user calling the model
themselves runs). Then int8 vs float32 (engine, CPU): throughput ratio and mean cosine to
fp32 vectors. Then bfloat16 beside float32, each against transformers at the same precision
(its length-sorted batches, bf16 under autocast): on a CPU without native bf16 the output
says so, and the speed there is the emulation's. Then the host work every request costs:
tokenizing one text per call with e5's full normalizer pipeline and with the shortcut the
tokenizer takes for texts without a parked character (the same tokens).
Last line: one JSON object.

    python tests/bench/bench_engine.py [--texts 384] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import bert_reference_for  # noqa: E402  (tests/helpers.py)
from workload import chinese_texts, concurrent_callers  # noqa: E402  (tests/workload.py)

from embedsense.model import TextRole, load_model  # noqa: E402
from embedsense.model.checkpoint import to_hf_state_dict  # noqa: E402
from embedsense.model.pooling import Pooling, l2_normalize, pool  # noqa: E402
from embedsense.model.tokenizer import Tokenizer  # noqa: E402
from embedsense.server import precision  # noqa: E402
from embedsense.server.config import EngineConfig  # noqa: E402
from embedsense.server.engine import Engine, EngineStats  # noqa: E402

CALLERS = 32


def summary(name: str, seconds: float, latencies: list[float], tokens: int, padding: float):
    lat = np.array(latencies) * 1000
    row = {
        "texts_per_s": round(len(latencies) / seconds, 1),
        "tokens_per_s": round(tokens / seconds, 1),
        "padding_fraction": round(padding, 3),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }
    print(
        f"{name:<34} {row['texts_per_s']:>7.1f} texts/s {row['tokens_per_s']:>8.1f} tok/s  "
        f"padding {row['padding_fraction']:>5.1%}  p50 {row['p50_ms']:>7.1f} ms  "
        f"p99 {row['p99_ms']:>7.1f} ms"
    )
    return row


def run_engine(model, texts, tokens, config: EngineConfig, name: str):
    engine = Engine(config, model).start()
    call = lambda t: engine.embed([t], role=TextRole.PASSAGE)  # noqa: E731
    try:
        # Warm, as the other ways are: a fresh process's first batches of each shape are
        # slow (allocator, kernels), and a server meets them once, not per benchmark.
        asyncio.run(concurrent_callers(texts[: 2 * CALLERS], CALLERS, call))
        engine.stats = EngineStats()
        seconds, latencies = asyncio.run(concurrent_callers(texts, CALLERS, call))
        s = engine.stats
        return summary(name, seconds, latencies, tokens, 1 - s.real_tokens / s.padded_tokens)
    finally:
        engine.close()


def transformers_encode(model, bf16: bool = False):
    """`encode_sentences` as a user would write it with transformers: our tokens, the
    same weights in a BertModel, a padded batch, masked mean pooling, L2 normalization
    (with bf16: under bf16 autocast, as the engine runs it)."""
    reference = bert_reference_for(model.encoder.cfg)
    reference.load_state_dict(to_hf_state_dict(model.encoder))

    @torch.inference_mode()
    def encode(texts: list[str]) -> np.ndarray:
        ids, mask = model.pad(model.tokenizer.encode_batch(texts, TextRole.PASSAGE))
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            hidden = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        return l2_normalize(pool(hidden.float(), mask, Pooling.MEAN)).numpy()

    return encode


def run_naive(encode, texts, tokens, label: str):
    lock = asyncio.Lock()

    async def one(text):
        async with lock:  # one model, one forward at a time, batch of 1
            await asyncio.to_thread(encode, [text])

    seconds, latencies = asyncio.run(concurrent_callers(texts, CALLERS, one))
    return summary(f"(b) forward per request, {label}", seconds, latencies, tokens, 0.0)


def run_fixed_batches(
    encode, texts, lengths, label: str, batch_size: int = 32, sort: bool = False
):  # fmt: skip
    """(c) batches in arrival order, or (d) with sort=True in length order, as
    sentence-transformers' encode forms them."""
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(texts))
    start = time.perf_counter()
    latencies, padded = [], 0
    for i in range(0, len(texts), batch_size):
        chunk = order[i : i + batch_size]
        encode([texts[j] for j in chunk])
        latencies += [time.perf_counter() - start] * len(chunk)
        padded += len(chunk) * max(lengths[j] for j in chunk)
    seconds = time.perf_counter() - start
    tokens = sum(lengths)
    name = "(d) length-sorted batches of 32" if sort else "(c) arrival-order batches of 32"
    return summary(f"{name}, {label}", seconds, latencies, tokens, 1 - tokens / padded)


def int8_comparison(model, texts, tokens):
    async def all_at_once(engine):
        start = time.perf_counter()
        out = await engine.embed(texts)
        return time.perf_counter() - start, np.stack([r.sentence for r in out])

    results = {}
    for name, int8 in (("float32", False), ("int8", True)):
        engine = Engine(EngineConfig(int8=int8), model).start()
        try:
            asyncio.run(all_at_once(engine))  # warm
            results[name] = asyncio.run(all_at_once(engine))
        finally:
            engine.close()
    (t32, v32), (t8, v8) = results["float32"], results["int8"]
    cosine = float((v32 * v8).sum(axis=1).mean())
    row = {
        "fp32_tokens_per_s": round(tokens / t32, 1),
        "int8_tokens_per_s": round(tokens / t8, 1),
        "int8_speedup": round(t32 / t8, 3),
        "int8_mean_cosine_to_fp32": round(cosine, 4),
        "int8_min_cosine_to_fp32": round(float((v32 * v8).sum(axis=1).min()), 4),
    }
    print(
        f"int8 vs fp32 (engine, all texts at once): {row['int8_tokens_per_s']:.1f} vs "
        f"{row['fp32_tokens_per_s']:.1f} tok/s = {row['int8_speedup']:.2f}x, "
        f"cosine to fp32 mean {row['int8_mean_cosine_to_fp32']:.4f} "
        f"min {row['int8_min_cosine_to_fp32']:.4f}"
    )
    return row


def bf16_comparison(model, texts, lengths, tokens) -> dict:
    """fp32 and bf16 side by side: the engine (32 callers) and transformers' sorted batches
    at the same precision."""
    flags = precision.cpu_bf16_flags()
    print("bf16: this CPU computes it natively (" + ", ".join(flags) + ")" if flags else
          "bf16: this CPU has no native bf16 (no avx512_bf16 or amx_bf16): bf16 is emulated "
          "here, so the speed goal cannot be measured; the quality gates still are "
          "(tests/test_bf16.py)")  # fmt: skip
    row: dict = {"native_bf16": flags}
    for dtype, bf16 in (("float32", False), ("bfloat16", True)):
        engine = run_engine(model, texts, tokens, EngineConfig(dtype=dtype),
                            f"(a) engine, {dtype}")  # fmt: skip
        encode = transformers_encode(model, bf16=bf16)
        encode(texts[:8])
        sorted_ref = run_fixed_batches(encode, texts, lengths, f"transformers {dtype}", sort=True)
        row[dtype] = {"engine": engine, "transformers_sorted_batches": sorted_ref,
                      "engine_vs_transformers": round(engine["texts_per_s"]
                                                      / sorted_ref["texts_per_s"], 2)}  # fmt: skip
    row["bf16_over_fp32_engine"] = round(
        row["bfloat16"]["engine"]["texts_per_s"] / row["float32"]["engine"]["texts_per_s"], 2
    )
    print(f"engine bf16 / fp32: {row['bf16_over_fp32_engine']:.2f}x")
    return row


def tokenizing_cost(model, texts: list[str], passes: int = 5) -> dict:
    """Microseconds to tokenize one text per call (as requests arrive), with e5's full
    normalizer pipeline and with the tokenizer as served (its shortcut), passes interleaved."""
    served = model.tokenizer
    full = Tokenizer(served.backend, served.max_tokens, served.pad_id, served.prefixes)
    seconds: dict[str, list[float]] = {"full_pipeline": [], "as_served": []}
    for _ in range(passes):
        for name, tokenizer in (("full_pipeline", full), ("as_served", served)):
            start = time.perf_counter()
            for text in texts:
                tokenizer.encode_batch([text], TextRole.PASSAGE)
            seconds[name].append(time.perf_counter() - start)
    us = {name: round(statistics.median(s) / len(texts) * 1e6, 1) for name, s in seconds.items()}
    print(f"tokenizing one text per call: full pipeline {us['full_pipeline']} us, "
          f"as served (shortcut) {us['as_served']} us")  # fmt: skip
    return {f"tokenize_us_{name}": value for name, value in us.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=384)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    texts = chinese_texts(args.texts)
    lengths = [len(t) for t in model.tokenizer.encode_batch(texts, TextRole.PASSAGE)]
    tokens = sum(lengths)
    print(
        f"{len(texts)} Chinese texts, {min(lengths)}-{max(lengths)} tokens ({tokens} in all), "
        f"{CALLERS} concurrent callers, {args.threads} CPU threads, fp32, multilingual-e5-small"
    )
    encoders = {"our encoder": model.encode_sentences, "transformers": transformers_encode(model)}
    for encode in encoders.values():
        encode(texts[:8])  # warm-up for the non-engine paths
    engine = run_engine(model, texts, tokens, EngineConfig(), "(a) embedsense engine")
    rows: dict = {"engine": engine}
    for label, encode in encoders.items():
        key = label.replace(" ", "_")
        ways = {
            "per_request": run_naive(encode, texts, tokens, label),
            "arrival_batches": run_fixed_batches(encode, texts, lengths, label),
            "sorted_batches": run_fixed_batches(encode, texts, lengths, label, sort=True),
        }
        for way, row in ways.items():
            rows[f"{way}_{key}"] = row
            rows[f"engine_vs_{way}_{key}"] = round(engine["texts_per_s"] / row["texts_per_s"], 2)
        print(
            f"engine / ({label}): "
            + "   ".join(
                f"{way.replace('_', ' ')} {rows[f'engine_vs_{way}_{key}']:.2f}x" for way in ways
            )
        )
    int8 = int8_comparison(model, texts, tokens)
    bf16 = bf16_comparison(model, texts, lengths, tokens)
    host = tokenizing_cost(model, texts)
    print(json.dumps({**rows, **int8, "bf16": bf16, **host, "threads": args.threads}))


if __name__ == "__main__":
    main()
