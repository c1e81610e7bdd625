"""bf16 forwards padded to whole steps of tokens (runner.BF16_SMALL_STEP below 256 tokens,
runner.BF16_TOKEN_STEP from there) against each forward in its own token count (steps of
1), in one engine.

oneDNN compiles a kernel for each new shape of a bf16 product, and its caches are sized for
the kernels of the steps' token counts (runner.kernel_cache_entries); the engine's batches
come in a new token count nearly every time.
The engine in this process (bf16, 2 threads) is called by 32 concurrent callers, one text
each, as the service's engine is; the two settings alternate round by round on the same
engine, so drift in the machine's speed hits both alike. Then one caller sending queries
(2-40 characters, at the query priority, one at a time, as a person searching does): their
p50 and p90 latency under each setting, alternating the same way. Medians, then one JSON
line. Meant for a CPU with native bf16: elsewhere bf16 is emulated, about a third of fp32's
speed (docs/performance.md), and a run takes ten minutes or more.

    python tests/bench/bench_token_step.py [--texts 384] [--rounds 8] [--queries 64]
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
from workload import chinese_texts, concurrent_callers  # noqa: E402  (tests/workload.py)

from embedsense.model import TextRole, load_model  # noqa: E402
from embedsense.server import runner  # noqa: E402
from embedsense.server.batching import Priority  # noqa: E402
from embedsense.server.config import EngineConfig  # noqa: E402
from embedsense.server.engine import Engine  # noqa: E402

THREADS = 2
CALLERS = 32


def one_round(engine: Engine, texts: list[str]) -> float:
    """Texts per second through the engine, CALLERS callers of one text each."""

    async def run() -> float:
        seconds, _ = await concurrent_callers(texts, CALLERS, lambda t: engine.embed([t]))
        return len(texts) / seconds

    return asyncio.run(run())


def query_latencies(engine: Engine, queries: list[str]) -> list[float]:
    """Seconds per query, one caller, one query at a time."""

    async def run() -> list[float]:
        seconds = []
        for query in queries:
            start = time.perf_counter()
            await engine.embed([query], role=TextRole.QUERY, priority=Priority.QUERY)
            seconds.append(time.perf_counter() - start)
        return seconds

    return asyncio.run(run())


def percentile_ms(seconds: list[float], q: float) -> float:
    return 1000 * float(np.percentile(seconds, q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--queries", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    texts = chinese_texts(args.texts)
    engine = Engine(EngineConfig(threads=THREADS, dtype="bfloat16"), load_model()).start()
    steps = {"each forward its own token count (step 1)": (1, 1),
             f"whole steps of {runner.BF16_SMALL_STEP} and {runner.BF16_TOKEN_STEP} tokens":
                 (runner.BF16_SMALL_STEP, runner.BF16_TOKEN_STEP)}  # fmt: skip
    queries = chinese_texts(args.queries, min_chars=2, max_chars=40, seed=1)
    rates: dict[str, list[float]] = {name: [] for name in steps}
    latencies: dict[str, list[float]] = {name: [] for name in steps}
    try:
        for round_ in range(args.rounds + 1):
            order = list(steps.items())
            for name, step in order if round_ % 2 else reversed(order):
                runner.BF16_SMALL_STEP, runner.BF16_TOKEN_STEP = step
                rate = one_round(engine, texts)
                seconds = query_latencies(engine, queries)
                if round_:  # the first round warms both
                    rates[name].append(rate)
                    latencies[name] += seconds
    finally:
        engine.close()
    print(f"{len(texts)} Chinese texts, e5-small bf16, {THREADS} threads, {CALLERS} callers, "
          f"{args.rounds} rounds (medians)")  # fmt: skip
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        print(f"{name:<44}{medians[name]:>8.1f} texts/s   {[round(x, 1) for x in r]}")
    before, after = medians.values()
    print(f"whole steps / step 1: {after / before:.2f}")
    print(f"one caller, {len(queries)} queries of 2-40 characters per round:")
    query_ms = {n: (percentile_ms(s, 50), percentile_ms(s, 90)) for n, s in latencies.items()}
    for name, (p50, p90) in query_ms.items():
        print(f"{name:<44}p50 {p50:>6.1f} ms   p90 {p90:>6.1f} ms")
    print(json.dumps({"texts_per_s": {n: round(m, 1) for n, m in medians.items()},
                      "ratio": round(after / before, 3),
                      "query_p50_p90_ms": {n: [round(p50, 2), round(p90, 2)]
                                           for n, (p50, p90) in query_ms.items()}}))  # fmt: skip


if __name__ == "__main__":
    main()
