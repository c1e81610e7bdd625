"""What each precision the engine computes in is held to, against float32 run in-process.

float32 is exact parity: the same math, to 1e-5 per value. bfloat16 keeps 8 bits of
mantissa, so its values differ by about 1e-2; it is held by direction instead: a pooled
vector within cosine 0.999 of float32's, a token vector within 0.995. The behavioural tests
run under both on every machine (bf16 is emulated where the processor lacks it: slower,
the same numbers), so a host with native bf16 and one without give the same results.
"""

from __future__ import annotations

import numpy as np

PRECISIONS = ["float32", "bfloat16"]
FLOAT32_ATOL = 1e-5
BF16_POOLED_COSINE = 0.999
BF16_TOKEN_COSINE = 0.995


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, dim) arrays (or of two vectors)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_matches(got: np.ndarray, want: np.ndarray, dtype: str, *, pooled: bool) -> None:
    """`got` (computed in `dtype`) against `want` (float32) at `dtype`'s tolerance; `pooled`:
    sentence vectors, else token vectors."""
    assert got.shape == want.shape, (got.shape, want.shape)
    if dtype == "float32":
        np.testing.assert_allclose(got, want, atol=FLOAT32_ATOL, rtol=0)
        return
    assert dtype == "bfloat16", dtype
    gate = BF16_POOLED_COSINE if pooled else BF16_TOKEN_COSINE
    worst = float(cosines(got, want).min())
    assert worst >= gate, f"{dtype}: cosine {worst:.5f} < {gate}"
