"""Where the server's memory goes, phase by phase, in one process (the docs' memory table):
RSS and its peak (VmHWM, reset between phases through /proc/self/clear_refs), the bytes of
live torch tensors during a forward (a dispatch mode that counts every op's outputs until
they are freed) and the footprint formula's prediction beside them. Linux only.

    python tests/ops/memory_profile.py [--model DIR|name] [--dtype float32|bfloat16]
        [--tokens 8192] [--steady 60]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def status(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class LiveTensors(TorchDispatchMode):
    """Bytes of tensors created by ops and still alive; the peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.seen: set[int] = set()

    def _count(self, t: torch.Tensor) -> None:
        s = t.untyped_storage()
        key = s.data_ptr()
        if key in self.seen or s.nbytes() == 0:
            return
        self.seen.add(key)
        n = s.nbytes()
        self.live += n
        self.peak = max(self.peak, self.live)

        def gone(key=key, n=n):
            self.live -= n
            self.seen.discard(key)

        weakref.finalize(s, gone)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self._count(t)
        return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="multilingual-e5-small")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--steady", type=int, default=60)
    a = p.parse_args()
    out: dict = {"model": a.model, "dtype": a.dtype, "tokens": a.tokens}

    def phase(name: str) -> None:
        out[name] = {"rss": round(status("VmRSS"), 1), "peak": round(status("VmHWM"), 1)}
        print(name, out[name], flush=True)
        reset_peak()

    phase("python+torch")
    from embedsense.model import load_model
    from embedsense.server.config import EngineConfig
    from embedsense.server.runner import ModelRunner

    phase("imports")
    loaded = load_model(a.model)
    phase("load")
    params = sum(t.numel() * t.element_size() for t in loaded.encoder.state_dict().values())
    out["model_bytes_mib"] = round(params / 2**20, 1)
    runner = ModelRunner(loaded, EngineConfig(model=a.model, dtype=a.dtype))
    phase("runner")
    fp = runner.sized(
        loaded, EngineConfig(model=a.model, dtype=a.dtype, max_batch_tokens=a.tokens)
    )[1]
    out["predicted"] = fp.describe()
    out["predicted_no_queue_mib"] = round((fp.peak - fp.queue) / 2**20, 1)
    out["per_token_formula"] = fp.per_token
    rng = random.Random(0)
    vocab = loaded.encoder.cfg.vocab_size
    T = loaded.tokenizer.max_tokens
    # worst case: rows of full length
    rows = max(1, a.tokens // T)
    seqs = [[rng.randrange(5, vocab) for _ in range(T)] for _ in range(rows)]
    runner.run(seqs, [None] * rows)
    phase("first-full-batch")
    parts, runner.part_tokens = runner.part_tokens, None  # per token: the batch whole
    with LiveTensors() as m:
        runner.run(seqs, [None] * rows)
    runner.part_tokens = parts
    out["live_tensor_peak_mib_full"] = round(m.peak / 2**20, 1)
    with LiveTensors() as m_parts:  # as a CPU runs it (None on a GPU: whole)
        runner.run(seqs, [None] * rows)
    out["live_tensor_peak_mib_as_run"] = round(m_parts.peak / 2**20, 1)
    # short rows: many of them
    seqs2 = [[rng.randrange(5, vocab) for _ in range(32)] for _ in range(a.tokens // 32)]
    with LiveTensors() as m2:
        runner.run(seqs2, [None] * len(seqs2))
    out["live_tensor_peak_mib_short"] = round(m2.peak / 2**20, 1)
    phase("short-batch")
    samples = []
    started = time.perf_counter()
    for _ in range(a.steady):
        n = rng.choice([8, 16, 32, 64, 128, 256, 512])
        k = max(1, rng.randint(1, (a.tokens if rng.random() < 0.1 else 1024) // n))
        batch = [
            [rng.randrange(5, vocab) for _ in range(rng.randint(max(1, n // 2), n))]
            for _ in range(k)
        ]
        runner.run(batch, [None] * k)
        samples.append(status("VmRSS"))
    out["steady_seconds"] = round(time.perf_counter() - started, 1)
    out["steady_rss_min"] = round(min(samples), 1)
    out["steady_rss_max"] = round(max(samples), 1)
    phase("steady")
    out["overall_peak"] = max(v["peak"] for v in out.values() if isinstance(v, dict))
    out["per_token_measured"] = round(out["live_tensor_peak_mib_full"] * 2**20 / a.tokens)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
