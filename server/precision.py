"""Which precision the engine computes in, decided by what the processor can do.

On a GPU: float16 by default (bfloat16 and float32 on request). On a CPU: float32, or
bfloat16 where the processor computes it natively (AVX512_BF16 or AMX) and a short probe of
the model's own matrix shapes confirms it is faster; where bf16 is only emulated it is
slower than fp32, so `auto` never picks it there. bfloat16 on CPU runs under autocast: the
matrix products in bf16 (the Linear weights cast once, runner.bf16_linears), LayerNorm and
softmax accumulation in fp32 (measured: pooled vectors within cos 0.9999 of fp32,
tests/test_bf16.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from embedsense.server.config import FLOAT16_ON_CPU

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# bf16 is chosen by `auto` on CPU only when the probe measures at least this speed-up.
MIN_BF16_SPEEDUP = 1.2


@dataclass(frozen=True)
class Precision:
    dtype: torch.dtype
    reason: str  # why: for Info and the start-up log

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def host_cpu_flags() -> str:
    """This machine's processor flags, as /proc/cpuinfo lists them ("" where it has none)."""
    path = Path("/proc/cpuinfo")
    cpuinfo = path.read_text() if path.exists() else ""
    lines = (line.split(":", 1)[1] for line in cpuinfo.splitlines() if line.startswith("flags"))
    return " ".join(dict.fromkeys(flag for line in lines for flag in line.split()))


def cpu_bf16_flags(cpu_flags: str | None = None) -> list[str]:
    """The native bf16 features (avx512_bf16, amx_bf16) among `cpu_flags` (separated by
    spaces or commas; None: this machine's)."""
    flags = (host_cpu_flags() if cpu_flags is None else cpu_flags).replace(",", " ").split()
    return sorted(set(flags) & {"avx512_bf16", "amx_bf16"})


def bf16_speedup(hidden: int, ffn: int, rows: int = 1024, repeats: int = 3) -> float:
    """fp32 time / bf16-autocast time of the model's two matrix shapes (well under a
    second on a CPU): what bf16 buys on this processor, measured, not assumed."""
    x = torch.randn(rows, hidden)
    w1, w2 = torch.randn(ffn, hidden), torch.randn(hidden, ffn)

    def run(bf16: bool) -> float:
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                torch.nn.functional.linear(torch.nn.functional.linear(x, w1), w2)
            best = min(best, time.perf_counter() - started)
        return best

    run(True)  # the first bf16 call pays for kernel selection
    return run(False) / run(True)


def choose(
    name: str, device: torch.device, hidden: int, ffn: int, cpu_flags: str | None = None
) -> Precision:
    """The precision for `name` ("auto", "float32", "float16", "bfloat16") on `device`.
    `auto` on a CPU decides from `cpu_flags` (None: this machine's flags): an input, so
    that a fleet can pin the choice and tests can take both outcomes on any machine.
    Raises ValueError for one the device cannot use."""
    if name not in ("auto", *DTYPES):
        raise ValueError(f"dtype {name!r}: expected auto, float32, float16 or bfloat16")
    if device.type == "cuda":
        if name == "auto":
            return Precision(torch.float16, "auto on a GPU: float16")
        return Precision(DTYPES[name], "asked for")
    if name == "float16":
        raise ValueError(FLOAT16_ON_CPU)
    if name != "auto":
        return Precision(DTYPES[name], "asked for")
    flags = cpu_bf16_flags(cpu_flags)
    source = "" if cpu_flags is None else " (flags as configured)"
    if not flags:
        return Precision(
            torch.float32,
            f"auto: this CPU has no native bf16 (avx512_bf16 or amx_bf16){source}, "
            "where bf16 is emulated and slower",
        )
    speedup = bf16_speedup(hidden, ffn)
    native = f"auto: native bf16 ({', '.join(flags)}){source}"
    if speedup < MIN_BF16_SPEEDUP:
        return Precision(
            torch.float32,
            f"{native} but the probe measured {speedup:.2f}x fp32, under {MIN_BF16_SPEEDUP}x",
        )
    return Precision(torch.bfloat16, f"{native}, the probe measured {speedup:.2f}x fp32")
