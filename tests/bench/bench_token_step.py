"""bf16 forwards padded to whole steps of tokens (runner.BF16_TOKEN_STEP) against the path
before them (a step of 1: each forward in its own token count), in one engine.

oneDNN compiles a kernel for each new shape of a bf16 product and keeps a few
(memory.KERNEL_CACHES); the engine's batches come in a new token count nearly every time.
The engine in this process (bf16, 2 threads) is called by 32 concurrent callers, one text
each, as the service's engine is; the two settings alternate round by round on the same
engine, so drift in the machine's speed hits both alike. Medians, then one JSON line.

    python tests/bench/bench_token_step.py [--texts 384] [--rounds 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workload import chinese_texts, concurrent_callers  # noqa: E402  (tests/workload.py)

from embedsense.model import load_model  # noqa: E402
from embedsense.server import runner  # noqa: E402
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    texts = chinese_texts(args.texts)
    engine = Engine(EngineConfig(threads=THREADS, dtype="bfloat16"), load_model()).start()
    steps = {"each forward its own token count (step 1)": 1,
             f"whole steps of {runner.BF16_TOKEN_STEP} tokens": runner.BF16_TOKEN_STEP}  # fmt: skip
    rates: dict[str, list[float]] = {name: [] for name in steps}
    try:
        for round_ in range(args.rounds + 1):
            order = list(steps.items())
            for name, step in order if round_ % 2 else reversed(order):
                runner.BF16_TOKEN_STEP = step
                rate = one_round(engine, texts)
                if round_:  # the first round warms both
                    rates[name].append(rate)
    finally:
        engine.close()
    print(f"{len(texts)} Chinese texts, e5-small bf16, {THREADS} threads, {CALLERS} callers, "
          f"{args.rounds} rounds (medians)")  # fmt: skip
    medians = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        print(f"{name:<44}{medians[name]:>8.1f} texts/s   {[round(x, 1) for x in r]}")
    before, after = medians.values()
    print(f"whole steps / step 1: {after / before:.2f}")
    print(json.dumps({"texts_per_s": {n: round(m, 1) for n, m in medians.items()},
                      "ratio": round(after / before, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
