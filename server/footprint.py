"""The server's memory footprint, predicted before it serves: what a pod needs.

    peak = runtime + tokenizer + weights + heaps + kernels
           + (forward tokens + query lane's forward tokens) × activation bytes per token
           + the batches' other tokens × output bytes per token
           + max_queued_tokens × bytes per queued token

where a forward's tokens are max_batch_tokens (the query lane's: its budget), on a CPU at
most a part's (memory.part_tokens: the runner runs a larger batch in parts, one at a time);
the float32 output rows of a batch's earlier parts wait for its last.

- runtime: the interpreter, torch, gRPC, FAISS and the HTTP stack, loaded and idle; a
  constant measured on the server process (the docs' memory table).
- tokenizer: its vocabulary, measured per entry on the bundled XLM-R sentencepiece table
  and on a BERT wordpiece one (the larger of the two rates is used).
- weights: the bytes of every tensor the runner and the loaded model hold, counted, not
  estimated (a bf16 runner's Linear weights are bf16: cast in place in the server, copied
  where the loaded model has other users).
- kernels: what the math libraries keep per input shape once their caches are full
  (compiled kernels and their buffers): oneDNN's under bf16, its caches sized for every
  token count the runner's forwards come in (runner.kernel_cache_entries); MKL's in fp32.
  Measured at widths 384 and 768; the larger is used.
- activations: the most bytes of live tensors during one forward, per token of the batch
  budget or the part (padding included), for the worker's forward and the query lane's
  beside it.
  Counted for every op of a forward (the docs say how): the feed-forward's two inner
  (N, I) tensors, in the compute dtype, and a few (N, C) ones.
- queued tokens: ids and the tokenizer's per-token lists of the rows waiting.
- heaps: what glibc keeps in its heaps for reuse after a forward. memory.tune_allocator()
  maps every block above its mmap threshold on its own, so a heap holds at most the
  activations of a batch whose largest block (the feed-forward's (N, I)) stays under the
  threshold; one such batch per heap. A CPU's runner runs parts of just that size
  (memory.part_tokens), and each heap keeps one part's activations free for the next
  (memory.TRIM_THRESHOLD).

It holds only while blocks above that threshold go back to the system when freed: without
tune_allocator(), glibc raises the threshold as large blocks are freed and the heaps'
high-water marks pile up on top (the docs' table shows both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from embedsense.server import memory

if TYPE_CHECKING:
    import torch

    from embedsense.model import LoadedModel
    from embedsense.server.config import EngineConfig

MIB = 2**20
# Measured on the server process (the docs' memory table): Python, torch, gRPC, FAISS, the
# HTTP stack and the index, before the model is loaded and with no request served.
RUNTIME_BYTES = 310 * MIB
TOKENIZER_BYTES_PER_ENTRY = 1050  # measured: the bundled 250k-entry table and a 21k BERT one
QUEUED_TOKEN_BYTES = 200  # an id in a Python list and the tokenizer's offsets and lists
# Measured (the docs' memory table): what 200 forwards of mixed shapes left resident,
# trimmed, over the first forward's, in fp32: 8 MiB at width 384 and 13 at 768.
FP32_KERNEL_BYTES = 13 * MIB
# Under bf16 (and fp16), per entry of the kernel caches, which the runner sizes by the token
# counts its forwards come in (runner.kernel_cache_entries): the same measure with one forward
# of each count added (tests/bench/bench_kernel_caches.py) kept 97 MiB in 197 entries at
# width 384 and 74 MiB in 142 at 768; the larger rate.
KERNEL_BYTES_PER_ENTRY = 543 * 1024
# Activation bytes per token at a forward's peak (inside the feed-forward): two (N, I)
# tensors in the compute dtype (the widened input and its GELU) and bytes per hidden unit
# of the (N, C) ones alive then: in fp32 four fp32 copies (the residual stream, LayerNorm's
# output, the packed and padded states); under bf16 autocast two fp32 and three bf16 ones.
HIDDEN_BYTES = {"float32": 16, "bfloat16": 14, "float16": 14}
FFN_COPIES = 2
# The smallest token budget worth serving: one full-length text; limits fitted to a memory
# size are rounded down to a multiple of this many tokens.
ROUND_TOKENS = 256

UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30,
}  # fmt: skip
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*")


def parse_bytes(text: str | int) -> int:
    """Bytes in a size as Kubernetes and people write it: 2Gi, 1536Mi, 1.5G, 800MB, 10**9.
    Raises ValueError naming the text and the units accepted."""
    if isinstance(text, int):
        return text
    match = _SIZE.fullmatch(str(text))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in UNITS or float(match.group(1)) <= 0:
        raise ValueError(
            f"memory size {text!r}: expected a positive number with an optional unit "
            "(Ki, Mi, Gi, K, M, G, or KiB, MiB, GiB, KB, MB, GB), e.g. 2Gi or 1536Mi"
        )
    return int(float(match.group(1)) * UNITS[unit])


def activation_bytes_per_token(hidden: int, ffn: int, dtype: str) -> int:
    """Live tensor bytes per batch token at a forward's peak, for a model of width `hidden`
    and feed-forward width `ffn` computing in `dtype` ("float32", "bfloat16", "float16")."""
    compute = 4 if dtype == "float32" else 2
    return HIDDEN_BYTES[dtype] * hidden + FFN_COPIES * ffn * compute


def forward_tokens(tokens: int, part_tokens: int) -> int:
    """The tokens alive at once in a forward of a batch of `tokens`, run in parts of
    `part_tokens` (0: whole)."""
    return min(tokens, part_tokens) if part_tokens else tokens


def heap_bytes(ffn: int, dtype: str, per_token: int, batch_tokens: int) -> int:
    """What glibc's heaps may keep after forwards (the module's docstring): per heap, the
    activations of the batch whose (N, ffn) block just fits under the mmap threshold (at
    most `batch_tokens`, a forward's tokens: the budget, or a part), at the allocator
    settings in effect (memory.py)."""
    compute = 4 if dtype == "float32" else 2
    arenas, threshold = (
        memory.effective("MALLOC_ARENA_MAX"),
        memory.effective("MALLOC_MMAP_THRESHOLD_", compute),
    )
    return arenas * min(threshold // (ffn * compute), batch_tokens) * per_token


def tensor_bytes(*modules: torch.nn.Module) -> int:
    """Bytes of the distinct tensor storages the modules hold (shared ones counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@dataclass(frozen=True)
class Footprint:
    """The predicted peak, term by term, in bytes."""

    runtime: int
    tokenizer: int
    weights: int
    batch_tokens: int
    per_token: int
    queued_tokens: int
    heaps: int = 0
    kernels: int = 0  # the math libraries' kernel caches, full
    lane_tokens: int = 0  # the query lane's forward, beside the worker's
    part_tokens: int = 0  # a CPU's runner runs a larger batch in parts of these; 0: whole
    output_per_token: int = 0  # a token's float32 output row

    @property
    def activations(self) -> int:
        return sum(
            self._forward(tokens) * self.per_token
            + (tokens - self._forward(tokens)) * self.output_per_token  # earlier parts' rows
            for tokens in (self.batch_tokens, self.lane_tokens)
        )

    def _forward(self, tokens: int) -> int:
        return forward_tokens(tokens, self.part_tokens)

    @property
    def queue(self) -> int:
        return self.queued_tokens * QUEUED_TOKEN_BYTES

    @property
    def fixed(self) -> int:
        """What the server holds whatever the limits: runtime, tokenizer, weights, heaps,
        kernels."""
        return self.runtime + self.tokenizer + self.weights + self.heaps + self.kernels

    @property
    def peak(self) -> int:
        return self.fixed + self.activations + self.queue

    def _in_parts(self) -> str:
        if not self.part_tokens or self.batch_tokens <= self.part_tokens:
            return ""
        tokens = self._forward(self.batch_tokens) + self._forward(self.lane_tokens)
        rows = self.batch_tokens + self.lane_tokens - tokens
        return (
            f" in parts of {self.part_tokens}: {tokens} x {self.per_token / 1024:.1f} KiB, and "
            f"{rows} tokens' output rows x {self.output_per_token / 1024:.1f} KiB)"
        )

    def _whole(self) -> str:
        return f" x {self.per_token / 1024:.1f} KiB)"

    def describe(self) -> str:
        return (
            f"predicted peak {self.peak / MIB:.0f} MiB = runtime {self.runtime / MIB:.0f} + "
            f"tokenizer {self.tokenizer / MIB:.0f} + weights {self.weights / MIB:.0f} + "
            f"heaps {self.heaps / MIB:.0f} + kernels {self.kernels / MIB:.0f} + "
            f"activations {self.activations / MIB:.0f} ((max_batch_tokens {self.batch_tokens} "
            f"+ query lane {self.lane_tokens}){self._in_parts() or self._whole()} + "
            f"queue {self.queue / MIB:.0f} "
            f"(max_queued_tokens {self.queued_tokens} x {QUEUED_TOKEN_BYTES} B)"
        )


def kernel_bytes(dtype: str, entries: int) -> int:
    """What the math libraries keep per input shape, their caches full: MKL's in fp32,
    oneDNN's `entries` per cache under bf16 and fp16."""
    return FP32_KERNEL_BYTES if dtype == "float32" else entries * KERNEL_BYTES_PER_ENTRY


def predict(
    config: EngineConfig,
    model: LoadedModel,
    dtype: str,
    *runner_modules: torch.nn.Module,
    part_tokens: int | None = None,
    kernel_entries: int = 0,
) -> Footprint:
    """The peak at `config`'s limits for `model` computing in `dtype`; `runner_modules`: the
    runner's own copies of the model (counted with the loaded one, shared tensors once);
    `part_tokens`: the parts the runner runs a larger batch in (None: whole);
    `kernel_entries`: the entries each kernel cache keeps (under bf16 and fp16)."""
    cfg = model.encoder.cfg
    per_token = activation_bytes_per_token(cfg.hidden_size, cfg.intermediate_size, dtype)
    return Footprint(
        runtime=RUNTIME_BYTES,
        tokenizer=TOKENIZER_BYTES_PER_ENTRY * model.tokenizer.vocab_size,
        weights=tensor_bytes(model.encoder, *runner_modules),
        batch_tokens=config.max_batch_tokens,
        per_token=per_token,
        queued_tokens=config.max_queued_tokens,
        heaps=heap_bytes(
            cfg.intermediate_size,
            dtype,
            per_token,
            forward_tokens(config.max_batch_tokens, part_tokens or 0),
        ),
        kernels=kernel_bytes(dtype, kernel_entries),
        lane_tokens=config.query_lane_tokens(model.tokenizer.max_tokens),
        part_tokens=part_tokens or 0,
        output_per_token=4 * cfg.hidden_size,
    )


def fit(config: EngineConfig, footprint: Footprint, max_tokens: int) -> EngineConfig:
    """`config` with max_batch_tokens and max_queued_tokens lowered until the predicted
    peak fits config.max_memory (unchanged when it already fits, or none is set): the
    batch budget first down to one full-length text (`max_tokens`), the queue to 8 such
    batches. Raises ValueError when even that does not fit, saying how much would."""
    if config.max_memory is None:
        return config
    limit = parse_bytes(config.max_memory)
    if footprint.peak <= limit:
        return config

    def at(tokens: int) -> tuple[EngineConfig, Footprint]:
        # The queue keeps its share of what the activations may take: 8 batches of tokens.
        queued = min(config.max_queued_tokens, 8 * tokens)
        bulk = config.max_queued_bulk_tokens  # an operator's share is lowered with the queue
        bulk = None if bulk is None else min(bulk, queued)
        limits = replace(config, max_batch_tokens=tokens, max_queued_tokens=queued,
                         max_queued_bulk_tokens=bulk)  # fmt: skip
        lane = limits.query_lane_tokens(max_tokens)
        return limits, replace(
            footprint, batch_tokens=tokens, queued_tokens=queued, lane_tokens=lane
        )

    # Down from the budget, a step at a time: run in parts, a larger budget costs only its
    # queue's share, so no one rate of bytes per token says where to start.
    tokens = config.max_batch_tokens
    while tokens > max_tokens and at(tokens)[1].peak > limit:
        tokens = max((tokens - 1) // ROUND_TOKENS * ROUND_TOKENS, max_tokens)
    if tokens < max_tokens or at(tokens)[1].peak > limit:
        smallest = at(max_tokens)[1]
        raise ValueError(
            f"max_memory {config.max_memory} ({limit / MIB:.0f} MiB) is too small for this "
            f"model: the runtime, tokenizer, weights, heaps and kernels take "
            f"{footprint.fixed / MIB:.0f} MiB, and with a batch of one full-length text "
            f"({max_tokens} tokens) it needs at least {smallest.peak / MIB:.0f} MiB"
        )
    return at(tokens)[0]
