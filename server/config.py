"""Engine configuration: one dataclass, the one home of every limit and knob."""

from __future__ import annotations

import math
from dataclasses import dataclass

from embedsense.server.footprint import parse_bytes

# Refused at start when the device is named cpu, and once the model is placed when `auto`
# finds no GPU (precision.choose).
FLOAT16_ON_CPU = "dtype float16 is for GPUs; on a CPU use bfloat16 or float32"

# The longest max_wait_ms may keep a lone text waiting for company: a minute (tests hold
# work queued for seconds with it; anything near this is a mistake in production).
MAX_WAIT_MS = 60_000.0


@dataclass(frozen=True)
class EngineConfig:
    model: str = "multilingual-e5-small"
    # Padded tokens in one forward (rows × longest row): the budget that bounds memory and
    # latency per batch, whatever the mix of lengths.
    max_batch_tokens: int = 8192
    max_batch_requests: int | None = None  # texts per batch; None = only the token budget
    # How long a lone text waits for company before running; up to a tenth of the last
    # forward instead while the last batch's callers may still be coming back (engine.py).
    max_wait_ms: float = 2.0
    max_queued_tokens: int = 262_144  # admission: beyond this, refuse at once
    max_concurrent_requests: int = 512  # admission: embed() calls in flight
    # Priority (batching.py states the rules; the API makes searches and sense queries
    # "query" and Upsert "bulk"). A request that names no priority is "interactive" when it
    # has at most this many texts and tokens, else "bulk".
    interactive_max_texts: int = 8
    interactive_max_tokens: int = 1024
    # The bound on starvation: a waiting row rises one level for every this many ms. Long
    # enough that ordinary queueing under load never reaches it (aged rows go ahead of
    # queries), short enough that bulk work waits seconds, not minutes, behind a flood.
    priority_aging_ms: float = 5000.0
    # How long one forward may last while work of a higher priority is about, so that such
    # work waits at most about that long behind it: a batch is cut to the tokens that run in
    # this long (measured on recent forwards). query_forward_ms holds a batch of queries,
    # whose own forward adds to their latency, but never two such batches in a row (the
    # next batch of queries gets max_forward_ms); max_forward_ms any other. 0: no time limit
    # (query_forward_ms 0: batches of queries get max_forward_ms).
    max_forward_ms: float = 300.0
    query_forward_ms: float = 30.0
    # Queries share no forward with other work: while the worker runs a forward or has other
    # work queued, they get a forward of their own in a second thread, at once (up to
    # query_lane_tokens()); batches of other work are then not cut short for them.
    query_lane: bool = True
    # On a CPU with the lane on, the worker's threads (its OpenMP team included) run this
    # many Linux nice levels below the lane's: when both forwards want the cores, the
    # query's gets them (measured: a 9-token forward 42 ms beside a worker's at the same
    # level, 28 at 10, 20 alone). Under a cgroup's CPU control (a container, a systemd
    # service) or the kernel's autogroup, nice ranks threads within that group, so the
    # server's share of the machine does not change. 0: the same level.
    worker_nice: int = 10
    # Admission of bulk work (None: half of max_queued_tokens, half of
    # max_concurrent_requests): beyond it bulk requests are refused while the others are
    # still admitted, so that a flood of bulk work cannot fill the queue queries need.
    max_queued_bulk_tokens: int | None = None
    max_concurrent_bulk_requests: int | None = None
    # The memory the server may take (a pod's limit), e.g. "2Gi", "1536Mi", "1.5G" or bytes:
    # max_batch_tokens and max_queued_tokens are lowered until the predicted peak fits
    # (footprint.py), and the server refuses to start if the model alone does not fit.
    max_memory: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (fp16 on GPU; bf16 or fp32 on CPU) | float32 | float16 | bfloat16
    # The processor flags `auto` decides from on a CPU (as /proc/cpuinfo spells them, e.g.
    # "avx512f avx512_bf16"); None: this machine's. Setting it pins the choice across a
    # fleet of mixed machines, and lets tests take either outcome on any machine.
    cpu_flags: str | None = None
    threads: int | None = None  # CPU threads for torch; None = torch's default
    # Threads that tokenize large requests and assemble their results off the event loop
    # (the Rust tokenizer runs without the GIL, so several do run in parallel). One by
    # default: on a CPU the model's threads own the cores.
    tokenizer_threads: int = 1
    # Small requests that arrive together are tokenized together, in those threads, off
    # the event loop (tokenize_batch.py); False: each on the loop on its own. None (auto):
    # on when the model runs on a GPU, where the host's cores are free for it; off on a
    # CPU, where the model's threads own the cores and the hops cost more than they free.
    tokenize_batch: bool | None = None
    int8: bool = False  # dynamic int8 quantization of the linear layers (CPU only)
    window_stride: int = 256  # tokens between window starts for long texts (windowed mode)
    warmup: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch_tokens", "max_queued_tokens", "max_concurrent_requests",
                     "tokenizer_threads"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("interactive_max_texts", "interactive_max_tokens"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        # Finite: inf ("no limit") or nan stopped the worker at its first batch (int(inf),
        # a wait of inf seconds). 0 is the way to say "off".
        for name in ("priority_aging_ms", "max_forward_ms", "query_forward_ms"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be >= 0 and finite (0: off), got "
                                 f"{getattr(self, name)}")  # fmt: skip
        if not 0 <= self.max_wait_ms <= MAX_WAIT_MS:  # a lone text waits that long at most
            raise ValueError(
                f"max_wait_ms must be within 0-{MAX_WAIT_MS:g}, got {self.max_wait_ms}"
            )
        bulk_limits = (
            ("max_queued_bulk_tokens", "max_queued_tokens"),
            ("max_concurrent_bulk_requests", "max_concurrent_requests"),
        )
        for name, total in bulk_limits:
            value = getattr(self, name)
            if value is not None and not 0 < value <= getattr(self, total):
                raise ValueError(
                    f"{name} must be > 0 and at most {total} ({getattr(self, total)}), got {value}"
                )
        if self.max_batch_requests is not None and self.max_batch_requests <= 0:
            raise ValueError(f"max_batch_requests must be > 0, got {self.max_batch_requests}")
        if self.window_stride <= 0:
            raise ValueError(f"window_stride must be > 0, got {self.window_stride}")
        if self.max_memory is not None:
            parse_bytes(self.max_memory)  # raises ValueError naming the value
        if not 0 <= self.worker_nice <= 19:
            raise ValueError(f"worker_nice {self.worker_nice}: expected 0 to 19")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"dtype {self.dtype!r}: expected auto, float32, float16 or bfloat16")

    def query_lane_tokens(self, max_tokens: int) -> int:
        """The padded tokens of one query-lane forward (0 with the lane off): an eighth of
        max_batch_tokens, or one full-length text of `max_tokens` if that is more."""
        return max(self.max_batch_tokens // 8, max_tokens) if self.query_lane else 0

    def bulk_queued_tokens(self, max_tokens: int) -> int:
        """max_queued_bulk_tokens, or its default: half of max_queued_tokens, and at least
        one full-length text of `max_tokens` (less would refuse every long document)."""
        if self.max_queued_bulk_tokens is not None:
            return self.max_queued_bulk_tokens
        return min(self.max_queued_tokens, max(self.max_queued_tokens // 2, max_tokens))

    def check_room_for(self, max_tokens: int) -> None:
        """ValueError when a token limit is below one full-length text of `max_tokens`: such
        a text (or a long document's window) could never run, whatever the load."""
        for name in ("max_batch_tokens", "max_queued_tokens", "max_queued_bulk_tokens"):
            value = getattr(self, name)
            if value is not None and value < max_tokens:
                raise ValueError(
                    f"{name} {value} is below the model's {max_tokens}-token inputs: a "
                    "full-length text never fits"
                )

    @property
    def bulk_concurrent_requests(self) -> int:
        """max_concurrent_bulk_requests, or its default: half of max_concurrent_requests."""
        return self.max_concurrent_bulk_requests or max(1, self.max_concurrent_requests // 2)
