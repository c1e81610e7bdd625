"""bf16 kernel caches sized to hold every token count the runner's forwards come in
(runner.kernel_cache_entries) against caches of 32 entries each (what they were before),
at the bundled model's width (384) and at 768 (the same tokenizer, random weights).

Each setting in a process of its own (the caches are sized at the first bf16 product):
one forward, a trim, the RSS; then 200 forwards of mixed shapes (1-24 texts of 8-120
tokens, the same seeded batches for every setting) and one of each token count, a trim,
the RSS again: what the kernel caches keep is the growth (footprint.KERNEL_BYTES_PER_ENTRY
is it per entry). Then the 200 batches again, timed: with every kernel kept, none is
compiled again. The settings alternate, twice each; medians. Meant for a CPU with native
bf16 (2 threads).

    python tests/bench/bench_kernel_caches.py
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import replace

SETTINGS = {"32 entries each (before)": "32", "sized by the runner": None}
WIDTHS = {384: (384, 1536, 12), 768: (768, 3072, 12)}
THREADS = 2


def measure(width: int) -> dict[str, float]:
    """In this process: the kernels' resident MiB and the timed second pass, in seconds."""
    import torch

    from embedsense.model import Encoder, load_model
    from embedsense.server.config import EngineConfig
    from embedsense.server.memory import resident_bytes
    from embedsense.server.runner import ModelRunner, bf16_token_counts

    torch.manual_seed(0)
    e5 = load_model()
    hidden, ffn, heads = WIDTHS[width]
    cfg = replace(e5.encoder.cfg, hidden_size=hidden, intermediate_size=ffn, num_heads=heads)
    model = e5 if width == 384 else replace(e5, encoder=Encoder(cfg).eval())
    runner = ModelRunner(model, EngineConfig(threads=THREADS, dtype="bfloat16"), owns_model=True)
    trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim

    def run(batch: list[list[int]]) -> None:
        runner.run(batch, [None] * len(batch))

    rng = random.Random(0)
    batches = [
        [[100 + rng.randrange(1000)] * rng.randint(8, 120) for _ in range(rng.randint(1, 24))]
        for _ in range(200)
    ]
    run(batches[0])
    trim(0)
    start = resident_bytes()
    for batch in batches:
        run(batch)
    for tokens in bf16_token_counts(runner.part_tokens):
        run([[100] * min(100, tokens - i) for i in range(0, tokens, 100)])
    trim(0)
    kept = resident_bytes() - start
    began = time.perf_counter()
    for batch in batches:
        run(batch)
    return {"kernels_mib": kept / 2**20, "second_pass_s": time.perf_counter() - began}


def child(width: int, entries: str | None) -> dict[str, float]:
    env = dict(os.environ)
    for name in ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY"):
        env.pop(name, None)
        if entries is not None:
            env[name] = entries
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(width)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(int(sys.argv[2]))))
        return
    results: dict[str, dict[str, float]] = {}
    for width in WIDTHS:
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
        for _ in range(2):
            for name, entries in SETTINGS.items():
                runs[name].append(child(width, entries))
        for name, got in runs.items():
            row = {k: statistics.median(r[k] for r in got) for k in got[0]}
            results[f"{width}, {name}"] = row
            print(f"width {width}, caches {name:<26} kernels kept {row['kernels_mib']:6.1f} MiB"
                  f"   200 mixed batches again {row['second_pass_s']:6.2f} s")  # fmt: skip
    print(json.dumps({k: {m: round(v, 2) for m, v in r.items()} for k, r in results.items()}))


if __name__ == "__main__":
    main()
