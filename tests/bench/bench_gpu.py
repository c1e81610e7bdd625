"""The engine on a GPU: bert-base-chinese shape, fp32 vs fp16 vs bf16, max_batch_tokens 16k.

A bert-base-chinese-shaped model (random weights: speed does not depend on their values;
a per-character vocabulary so Chinese splits as the real one does) is saved as a Hugging
Face directory and loaded through the normal path; the transformers model that saved it is
the reference, on the same weights. Per dtype:
- the engine: all texts of a mixed-length Chinese workload sent at once, one text per
  request, batched by its token budget: tokens/s, time in the model, padding;
- offline sorted batches (the same texts sorted by length and cut by the same budget) run
  by our backend alone and by transformers, so the engine's overhead and our encoder's lead
  are both visible;
- the encoder alone at large full batches (64 × 256 tokens), ours and transformers.
MFU is against this GPU's measured matmul peak in the same dtype and in bf16. Without CUDA
it says so and stops (--device cpu checks the script itself on a CPU). With --service, then
the whole service in fp16 (float32 on a CPU) through gRPC against the offline figure
(gpu_service.py: one text per request at 256 callers, 32 per request, p50 at 32 callers);
--service-only skips the engine runs before it. Last line: one JSON object.

    python tests/bench/bench_gpu.py [--texts 8192] [--max-batch-tokens 16384] [--service]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_encoder import model_flops
from gpu_service import service_figures

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import bert_chinese_shaped_dir  # noqa: E402  (tests/helpers.py)
from ops.serverproc import stop_servers_on_sigterm  # noqa: E402  (tests/ops/serverproc.py)
from workload import chinese_texts  # noqa: E402  (tests/workload.py)

from embedsense.model import TextRole, load_model  # noqa: E402
from embedsense.model.tokenizer import pad_sequences  # noqa: E402
from embedsense.server.config import EngineConfig  # noqa: E402
from embedsense.server.engine import Engine, EngineStats  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """FLOP/s of the best of several n×n matmuls in this dtype (the MFU denominator)."""
    if device.type == "cpu":
        n = 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(10):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def host_copy_rates(device: torch.device, tokens: int = 16384, width: int = 768) -> dict:
    """GB/s of one batch's token vectors copied to the host: pageable vs page-locked memory,
    float32 vs float16 (what bounds the end-to-end rate once the model is fast)."""
    rates = {}
    for name, dtype, pinned in [("pageable_fp32", torch.float32, False),
                                ("pinned_fp32", torch.float32, True),
                                ("pinned_fp16", torch.float16, True)]:  # fmt: skip
        x = torch.randn(tokens, width, device=device).to(dtype)
        # Pinned: into one page-locked buffer, as the runner does; pageable: `.cpu()`, as
        # a plain host copy does.
        copy = x.cpu
        if pinned:
            copy = functools.partial(torch.empty(x.shape, dtype=dtype, pin_memory=True).copy_, x)
        best = float("inf")
        for _ in range(5):
            sync(device)
            start = time.perf_counter()
            copy()
            sync(device)
            best = min(best, time.perf_counter() - start)
        rates[name] = round(x.numel() * x.element_size() / best / 1e9, 2)
    return rates


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


async def embed_all(engine: Engine, texts: list[str]) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(engine.embed([t], role=TextRole.PASSAGE) for t in texts))
    return time.perf_counter() - start


def measure(model, reference, texts, lengths, device, dtype: str, args, bf16_peak: float) -> dict:
    config = EngineConfig(
        device=str(device),
        dtype=dtype,
        max_batch_tokens=args.max_batch_tokens,
        max_queued_tokens=sum(lengths) + 1,
        max_concurrent_requests=len(texts) + 1,
    )
    engine = Engine(config, model).start()
    reference.to(device=device, dtype=DTYPES[dtype])
    batches = sorted_batches(model, texts, args.max_batch_tokens)
    try:
        asyncio.run(embed_all(engine, texts[: len(texts) // 4]))  # warm: kernels, allocator
        engine.stats = EngineStats()  # count the measured run only
        seconds = asyncio.run(embed_all(engine, texts))
        stats = engine.stats
        offline = offline_seconds(lambda batch: engine.runner.run(batch, [None] * len(batch)),
                                  batches, device)  # fmt: skip
        pad_id = model.tokenizer.pad_id
        transformers = offline_seconds(lambda b: run_reference(reference, b, pad_id, device),
                                       batches, device)  # fmt: skip
        stages = stage_seconds(engine.runner, batches, device)
        lone = lone_latencies(engine, texts[:50], device)
        large = large_batches(engine.runner.encoder, reference, device, args.large_rows,
                              args.large_length)  # fmt: skip
    finally:
        engine.close()
    peak = matmul_peak(device, engine.runner.dtype)
    tokens = sum(lengths)
    flops = model_flops(model.encoder.cfg, lengths)
    large_flops = model_flops(model.encoder.cfg, [args.large_length] * args.large_rows)
    row = {
        "dtype": dtype,
        "tokens_per_s": round(tokens / seconds, 1),
        "texts_per_s": round(len(texts) / seconds, 1),
        "model_seconds_share": round(stats.model_seconds / seconds, 3),
        "batches": stats.batches,
        "mean_rows_per_batch": round(stats.rows / stats.batches, 1),
        "padding_fraction": round(1 - stats.real_tokens / stats.padded_tokens, 3),
        "matmul_peak_tflops": round(peak / 1e12, 1),
        "mfu": round(flops / seconds / peak, 3),
        "mfu_of_bf16_peak": round(flops / seconds / bf16_peak, 3),
        "offline_tokens_per_s": round(tokens / offline, 1),
        "engine_vs_offline": round(offline / seconds, 3),
        "transformers_offline_tokens_per_s": round(tokens / transformers, 1),
        "engine_vs_transformers_offline": round(transformers / seconds, 3),
        "offline_stage_seconds": stages,
        "lone_text_ms": lone,
        "large_batch_tokens_per_s": round(args.large_rows * args.large_length / large["ours"], 1),
        "large_batch_mfu": round(large_flops / large["ours"] / peak, 3),
        "large_batch_mfu_of_bf16_peak": round(large_flops / large["ours"] / bf16_peak, 3),
        "large_batch_transformers_mfu": round(large_flops / large["transformers"] / peak, 3),
    }
    print(
        f"{dtype:<9} engine {row['tokens_per_s']:>9.0f} tok/s  {row['texts_per_s']:>7.0f} texts/s"
        f"  MFU {row['mfu']:.1%} of {row['matmul_peak_tflops']} TFLOP/s "
        f"({row['mfu_of_bf16_peak']:.1%} of bf16's)  in model {row['model_seconds_share']:.0%}  "
        f"padding {row['padding_fraction']:.1%}  {row['mean_rows_per_batch']} rows/batch\n"
        f"{'':<9} offline sorted batches: ours {row['offline_tokens_per_s']:.0f} tok/s "
        f"(engine {row['engine_vs_offline']:.2f}x), transformers "
        f"{row['transformers_offline_tokens_per_s']:.0f} tok/s "
        f"(engine {row['engine_vs_transformers_offline']:.2f}x); ours by stage (s) {stages}\n"
        f"{'':<9} one text alone, p50 ms: through the engine {lone['engine_p50']}, the "
        f"forward alone {lone['forward_p50']}\n"
        f"{'':<9} encoder at {args.large_rows}x{args.large_length}: ours "
        f"{row['large_batch_tokens_per_s']:.0f} tok/s, MFU {row['large_batch_mfu']:.1%} "
        f"(transformers {row['large_batch_transformers_mfu']:.1%})"
    )
    return row


def stage_seconds(runner, batches, device) -> dict[str, float]:
    """Where a batch's time goes in the backend (each stage synchronised, so the sum is a
    little above the unsynchronised whole): padding ids on the host, the forward, picking the
    real tokens, the copy to the host."""
    from embedsense.server.runner import to_host

    totals = dict.fromkeys(["pad", "forward", "pack", "to_host"], 0.0)
    for batch in batches:
        marks = [time.perf_counter()]
        ids, mask = pad_sequences(batch, runner.pad_id)
        marks.append(time.perf_counter())
        with runner.computing():
            mask = mask.to(device)
            out = runner.encoder(ids.to(device), mask)
            sync(device)
            marks.append(time.perf_counter())
            packed = out.last_hidden_state[mask.bool()]
            sync(device)
            marks.append(time.perf_counter())
            to_host(packed)
            marks.append(time.perf_counter())
        for name, begin, end in zip(totals, marks, marks[1:], strict=False):
            totals[name] += end - begin
    return {name: round(seconds, 3) for name, seconds in totals.items()}


def lone_latencies(engine: Engine, texts: list[str], device) -> dict[str, float]:
    """p50 ms of one text at a time, nothing else queued: through the engine (tokenizing,
    the wait for company, the batch, pooling) and the backend's forward alone on its ids,
    so a host cost per request shows as their difference."""
    ids = [t.ids for t in engine.model.tokenizer.encode_batch(texts, TextRole.PASSAGE)]

    async def one_by_one() -> list[float]:
        seconds = []
        for text in texts:
            start = time.perf_counter()
            await engine.embed([text], role=TextRole.PASSAGE)
            seconds.append(time.perf_counter() - start)
        return seconds

    through_engine = asyncio.run(one_by_one())
    alone = []
    for seq in ids:
        sync(device)
        start = time.perf_counter()
        engine.runner.run([seq], [None])
        sync(device)
        alone.append(time.perf_counter() - start)
    return {"engine_p50": round(statistics.median(through_engine) * 1e3, 2),
            "forward_p50": round(statistics.median(alone) * 1e3, 2)}  # fmt: skip


def sorted_batches(model, texts: list[str], max_batch_tokens: int) -> list[list[list[int]]]:
    """The texts' ids sorted by length and cut by the engine's token budget (rows × longest):
    the offline batches the engine's own batching is measured against."""
    ids = sorted((t.ids for t in model.tokenizer.encode_batch(texts, TextRole.PASSAGE)), key=len)
    batches, batch = [], []
    for seq in ids:
        if batch and (len(batch) + 1) * len(seq) > max_batch_tokens:
            batches.append(batch)
            batch = []
        batch.append(seq)
    batches.append(batch)
    return batches


def run_reference(reference, batch: list[list[int]], pad_id: int, device) -> None:
    ids, mask = pad_sequences(batch, pad_id)
    with torch.inference_mode():
        out = reference(input_ids=ids.to(device), attention_mask=mask.to(device))
    out.last_hidden_state.float().cpu()  # the host copy our backend makes too


def offline_seconds(run, batches, device) -> float:
    for batch in batches[:2]:
        run(batch)  # warm this path's kernels
    sync(device)
    start = time.perf_counter()
    for batch in batches:
        run(batch)
    sync(device)
    return time.perf_counter() - start


def large_batches(encoder, reference, device, rows: int, length: int) -> dict[str, float]:
    """Best-of-5 seconds for one full (rows × length) batch, no padding, through each model."""
    ids = torch.randint(106, 20000, (rows, length), device=device)
    mask = torch.ones_like(ids)
    runs = {
        "ours": lambda: encoder(ids, mask).last_hidden_state,
        "transformers": lambda: reference(input_ids=ids, attention_mask=mask).last_hidden_state,
    }
    best = {}
    with torch.inference_mode():
        for name, run in runs.items():
            run()
            times = []
            for _ in range(5):
                sync(device)
                start = time.perf_counter()
                run()
                sync(device)
                times.append(time.perf_counter() - start)
            best[name] = min(times)
    return best


def main() -> None:
    stop_servers_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=8192)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--large-rows", type=int, default=64)
    parser.add_argument("--large-length", type=int, default=256)
    parser.add_argument("--service", action="store_true", help="then the service over gRPC")
    parser.add_argument("--service-only", action="store_true", help="only the service")
    parser.add_argument("--frontends", default="auto", help="the service's --frontends")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: the GPU benchmark did not run")
        print(json.dumps({"skipped": "no CUDA device"}))
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    dtypes = ["float32", "float16", "bfloat16"] if device.type == "cuda" else ["float32"]

    with tempfile.TemporaryDirectory() as tmp:
        reference = bert_chinese_shaped_dir(Path(tmp))
        model = load_model(tmp)
        texts = chinese_texts(args.texts)
        if args.service_only:
            service_only(model, Path(tmp), texts, device, args)
            return
        run_all(model, reference, Path(tmp), texts, device, name, dtypes, args)


def service_only(model, model_dir: Path, texts: list[str], device, args) -> None:
    """The service in fp16 (float32 on a CPU) against our offline sorted batches in it."""
    from embedsense.server.runner import ModelRunner

    dtype = "float16" if device.type == "cuda" else "float32"
    runner = ModelRunner(model, EngineConfig(device=str(device), dtype=dtype))
    batches = sorted_batches(model, texts, args.max_batch_tokens)
    tokens = sum(len(seq) for batch in batches for seq in batch)
    offline = offline_seconds(lambda b: runner.run(b, [None] * len(b)), batches, device)
    row = service_figures(model_dir, texts, tokens, dtype, str(device), args.max_batch_tokens,
                          tokens / offline, frontends=args.frontends)  # fmt: skip
    print(json.dumps({"texts": len(texts), "tokens": tokens, "service": row}))


def run_all(model, reference, model_dir: Path, texts, device, name, dtypes, args) -> None:
    lengths = [len(t) for t in model.tokenizer.encode_batch(texts, TextRole.PASSAGE)]
    print(
        f"{name}, torch {torch.__version__}: bert-base-chinese shape, {len(texts)} texts of "
        f"{min(lengths)}-{max(lengths)} tokens ({sum(lengths)} in all), one per request, "
        f"max_batch_tokens {args.max_batch_tokens}; fp32 matmuls without TF32 (torch default)"
    )
    bf16_peak = matmul_peak(device, torch.bfloat16)
    copies = host_copy_rates(device) if device.type == "cuda" else {}
    print(f"bf16 matmul peak {bf16_peak / 1e12:.1f} TFLOP/s; device-to-host GB/s {copies}")
    # fp32 first: the runner casts the model in place, and a cast down is not undone.
    rows = [
        measure(model, reference, texts, lengths, device, dtype, args, bf16_peak)
        for dtype in dtypes
    ]
    service = None
    if args.service:
        dtype = "float16" if device.type == "cuda" else "float32"
        offline = next(r["offline_tokens_per_s"] for r in rows if r["dtype"] == dtype)
        service = service_figures(model_dir, texts, sum(lengths), dtype, str(device),
                                  args.max_batch_tokens, offline,
                                  frontends=args.frontends)  # fmt: skip
    print(json.dumps({
        "device": name, "torch": torch.__version__, "max_batch_tokens": args.max_batch_tokens,
        "texts": len(texts), "tokens": sum(lengths),
        "bf16_matmul_peak_tflops": round(bf16_peak / 1e12, 1), "host_copy_gb_per_s": copies,
        "runs": rows, "service": service,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
