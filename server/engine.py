"""The inference engine: many concurrent asyncio callers, one model, batches by token budget.

    embed() ─ tokenize, admit or refuse ─► pending rows ─► worker thread: plan_batch ─►
    ModelRunner.run ─► the batch's vectors back to their callers' futures ─► pool, stitch
    windows

The worker thread owns the model, so the event loop never blocks on compute. A large
request is tokenized and assembled in a small thread pool, so it does not block the loop
either; a small one is done on the loop, where that costs less than the hop. Each row of
work carries its own future; rows whose caller has gone (cancelled, or past its deadline)
are dropped before they cost compute. Admission is bounded: beyond `max_concurrent_requests`
or `max_queued_tokens` a request is refused at once with `Overloaded`.

Every request has a priority (batching.Priority: query, interactive, bulk): the caller's, or
one that its size implies. Higher priorities are planned first, waiting rows rise with age so
none starves, bulk work has admission limits of its own, and while higher-priority work is
about a forward is cut to a time budget, so that such work waits little behind it.
batching.py holds those rules; this module keeps the counts and the clock they need.

With front-end processes (frontends/), each front end runs this class's host work (FrontEngine)
and sends a request's rows here through run_rows(), into the same queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from embedsense.model import LoadedModel, TextRole, TextTooLongError, TokenizedText, load_model
from embedsense.model.pooling import Pooling
from embedsense.server import openmp
from embedsense.server.batching import (
    BatchPlan,
    ForwardCost,
    Limit,
    Priority,
    admission_refusal,
    consecutive_parts,
    default_priority,
    plan_batch,
)
from embedsense.server.config import EngineConfig
from embedsense.server.memory import HeapTrimmer
from embedsense.server.runner import Layers, ModelRunner, check_layers
from embedsense.server.tokenize_batch import BatcherClosed, MicroBatcher
from embedsense.server.windows import Window, plan_windows, stitch_tokens, weighted_sentence

log = logging.getLogger(__name__)
_Result = TypeVar("_Result")

# The model's threads own the CPU cores. Left on, `tokenizers` runs its own thread pool on
# every request and competes with them (measured: ~11 % of engine throughput on 2 cores);
# the engine's own tokenizer threads (EngineConfig.tokenizer_threads) are the parallelism.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Requests up to this many characters are tokenized on the event loop (about a millisecond
# at most). Sending every request through the pool cost the H200 engine 10-40 % of its
# single-text throughput: a hop per request, and the tokenizer threads' Python holding the
# GIL the worker needs to launch kernels.
INLINE_CHARS = 4096
# A batch that is not full, while company is likely on its way (requests being tokenized in
# the pool, fewer rows queued than the last batch served, whose callers tend to come back,
# or rows still arriving less than max_wait_ms apart), waits for it up to this share of the
# last forward's time (or max_wait_ms, if longer): the model idles at most about a tenth of
# the time it computes. Without it, 32 closed-loop callers split into a full batch and a
# batch of stragglers, or into two groups taking turns (measured: through gRPC, every other
# batch 1-4 rows; in-process, 8 and 26, 6 and 26, 17 and 15).
COMPANY_WAIT_SHARE = 0.1
# Batches are held to their time budget (max_forward_ms, query_forward_ms) while work of a
# higher priority has arrived within this many seconds: more is likely on its way (a person
# searching sends a query every few seconds). With none seen, a batch may fill
# max_batch_tokens: the most throughput, for bulk work alone or interactive work alone.
HIGHER_WORK_SEEN_S = 10.0
# Every forward has a fixed cost (it reads all the weights). A batch that is not a query's
# holds at least the tokens that keep that cost within this share of its forward, and at
# least MIN_FORWARD_TOKENS: on a slow or crowded machine, where the fixed cost grows, its
# forwards grow too, rather than spend the model's time on overhead (which would make the
# queue, and every wait, longer). A short batch of queries (query_forward_ms) has no floor:
# it is short on purpose.
MAX_FIXED_SHARE = 0.2
MIN_FORWARD_TOKENS = 256
# A row cancelled this close to its deadline was cancelled by it (skipped_expired): the
# caller's side reckons the same deadline a little earlier than the engine does.
DEADLINE_SLACK_S = 0.05

# The priority of the request being handled, for embed() calls that do not pass one: set by
# the API layer where the call goes through another module (the senses) or where the caller
# names it outside the body (the HTTP header X-Priority). None: implied by the size.
requested_priority: contextvars.ContextVar[Priority | None] = contextvars.ContextVar(
    "requested_priority", default=None
)


@contextlib.contextmanager
def priority_scope(level: Priority | None) -> Iterator[None]:
    """embed() calls made within it that pass no priority get `level` (None: their size's)."""
    token = requested_priority.set(level)
    try:
        yield
    finally:
        requested_priority.reset(token)


def lower_thread_priority(levels: int) -> None:
    """Run the calling thread `levels` nice levels lower, and so the threads it starts
    afterwards (its OpenMP team: Linux threads inherit their creator's level). Linux only;
    elsewhere, or where refused, nothing changes but a warning."""
    if not levels or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + levels)
    except OSError as err:
        log.warning("the worker thread keeps its priority: %s", err)


class EngineError(Exception):
    """Base of the engine's errors; each maps to one gRPC status in the API layer."""


class Overloaded(EngineError):
    """Refused at admission (RESOURCE_EXHAUSTED): the queue or concurrency limit is full."""


class DeadlineExceeded(EngineError):
    """The caller's deadline passed before its work ran (DEADLINE_EXCEEDED)."""


class InvalidRequest(EngineError, ValueError):
    """The request itself is wrong (INVALID_ARGUMENT): a too-long text, a missing layer."""


class TextTooLong(InvalidRequest):
    """A text over the model's length, with long_text="error": which one, how long, the
    limit (a caller without a long_text option words its own error from them)."""

    def __init__(self, index: int, n_tokens: int, limit: int) -> None:
        # Named as callers name it (the request's and the SDK's long_text), not as the
        # tokenizer's own truncate=True.
        super().__init__(
            f"text {index} is {n_tokens} tokens; the model takes {limit} "
            '(long_text="truncate" cuts it, long_text="windows" embeds it in overlapping '
            "windows)"
        )
        self.index, self.n_tokens, self.limit = index, n_tokens, limit

    def __reduce__(self) -> tuple[type, tuple[int, int, int]]:  # across the front ends' bridge
        return TextTooLong, (self.index, self.n_tokens, self.limit)


class EngineClosed(EngineError):
    """The engine is shutting down (UNAVAILABLE)."""


class EngineBroken(EngineClosed):
    """A thread of the engine failed outside a forward: nothing runs its queue any more, and
    the server needs a restart (UNAVAILABLE, and its health says NOT_SERVING)."""


class ModelFailed(EngineError):
    """One forward failed (UNAVAILABLE): the batch did, not the engine, which serves on; a
    retry runs in another batch."""


class ModelOutOfMemory(ModelFailed):
    """A forward ran out of memory (RESOURCE_EXHAUSTED): that batch was too big for the
    device at that moment."""


def model_failure(err: Exception) -> ModelFailed:
    """The callers' error for a forward's exception. Torch reports running out of memory as
    a RuntimeError (torch.cuda.OutOfMemoryError is one), told apart by its message."""
    text = f"{type(err).__name__}: {err}"
    lowered = text.lower()
    if isinstance(err, MemoryError) or any(m in lowered for m in _OUT_OF_MEMORY):
        return ModelOutOfMemory(f"the model ran out of memory on a batch ({text})")
    return ModelFailed(f"model failure: {text}")


_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "outofmemoryerror")


@dataclass
class Embedding:
    """One text's result. Vectors are float32 numpy."""

    sentence: np.ndarray  # (dim,) pooled; L2-normalized when asked
    tokenized: TokenizedText  # tokens, ids, offsets into the caller's text
    token_vectors: np.ndarray | None = None  # (len(tokenized), dim) when asked
    windows: int = 1  # > 1 when a long text was embedded in overlapping windows


@dataclass
class BatchReport:
    """What one forward did: for metrics (queue depth, sizes, padding, time)."""

    rows: int
    real_tokens: int
    padded_tokens: int
    queue_depth: int  # rows still waiting after this batch was cut
    queue_seconds: list[float]  # per row, arrival to start of the forward
    model_seconds: float
    priorities: list[Priority] = field(default_factory=list)  # per row, its request's

    @property
    def padding_fraction(self) -> float:
        return 1 - self.real_tokens / self.padded_tokens


@dataclass
class EngineStats:
    batches: int = 0
    rows: int = 0
    real_tokens: int = 0
    padded_tokens: int = 0
    refused: int = 0  # requests refused at admission
    skipped_cancelled: int = 0  # rows dropped because their caller had gone
    skipped_expired: int = 0  # rows dropped because their deadline had passed
    model_seconds: float = 0.0
    lane_batches: int = 0  # of the batches, those the query lane ran
    # Per priority label ("query", "interactive", "bulk"): rows computed, requests refused.
    rows_by_priority: dict[str, int] = field(default_factory=lambda: _per_priority(0))
    refused_by_priority: dict[str, int] = field(default_factory=lambda: _per_priority(0))


@dataclass
class EngineInfo:
    model: str
    dim: int
    device: str
    dtype: str
    int8: bool
    max_tokens: int
    max_batch_tokens: int
    max_batch_requests: int | None
    max_queued_tokens: int
    max_concurrent_requests: int
    dtype_reason: str = ""  # why this precision (auto's choice, or asked for)
    num_layers: int = 0  # hidden states 0 (embeddings) to num_layers (last)


@dataclass
class _Prepared:
    """A request after tokenizing: per text, its tokens, frame, windows and their ids."""

    tokenized: list[TokenizedText]
    frames: list[tuple[int, int]]
    plans: list[list[Window]]
    window_ids: list[list[list[int]]]

    @property
    def n_tokens(self) -> int:
        return sum(len(ids) for per_text in self.window_ids for ids in per_text)


@dataclass
class _Row:
    """One forward row: a whole text or one window of a long one."""

    ids: Sequence[int]
    layers: Layers
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    arrival: float
    deadline: float | None
    priority: Priority = Priority.INTERACTIVE
    # How its caller pools it, when a sentence vector is all it wants: the output is pooled
    # as soon as its forward ends (a (1, dim) row), not held whole, 4·C bytes a token, until
    # every row of its request is done (the SDK's bulk upserts keep 1,024 texts in flight).
    pooled: Pooling | None = None
    n_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_tokens = len(self.ids)


class Engine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        model: LoadedModel | None = None,
        *,
        owns_model: bool = False,
    ) -> None:
        """`model`: loaded here when None; `owns_model`: the caller does not compute with the
        one it passes, so the runner may change it in place (ModelRunner)."""
        self.config = config or EngineConfig()
        self.model = model or load_model(self.config.model)
        self.config.check_room_for(self.model.tokenizer.max_tokens)
        self.runner = ModelRunner(self.model, self.config, owns_model=owns_model or model is None)
        self.num_layers = self.runner.num_layers  # hidden states 0 to this one
        # The limits lowered to fit max_memory, if set (ValueError if the model cannot fit).
        self.config, self.footprint = self.runner.sized(self.model, self.config)
        log.info("memory: %s", self.footprint.describe())
        self.stats = EngineStats()
        self._observers: list[Callable[[BatchReport], None]] = []
        self._pending: list[_Row] = []
        levels = len(Priority)
        self._queued_tokens = [0] * levels  # per priority (indexed by it), as the rows below
        self._queued_rows = [0] * levels
        self._in_flight = [0] * levels  # embed() calls admitted and not yet answered
        self._last_arrival = [float("-inf")] * levels  # monotonic, per priority
        self._cost = ForwardCost()  # the forward's time by its tokens: for the time budgets
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # the worker's: rows queued, limits changed
        self._lane_wakeup = threading.Condition(lock)  # the query lane's: queries to take
        self._closing = False
        self._broken: str | None = None  # why the worker stopped, if it failed
        self._broken_listeners: list[Callable[[str], None]] = []
        self._worker: threading.Thread | None = None
        self._lane: threading.Thread | None = None
        self._forward_running = False  # the worker's forward (not the lane's)
        self._lane_tokens = self.config.query_lane_tokens(self.model.tokenizer.max_tokens)
        self._model_free_since = 0.0  # monotonic time the last batch ended
        self._last_model_seconds = 0.0
        self._last_batch_rows = 0
        self._last_forward_short = False  # the last batch was queries' on their short budget
        self._preparing = 0  # requests being tokenized in the pool: rows on their way
        # The predicted peak is host memory on a CPU (footprint.py); a GPU's is on the device.
        on_cpu = self.runner.device.type == "cpu"
        self._trimmer = HeapTrimmer(ceiling=self.footprint.peak if on_cpu else None)
        grouped = self.config.tokenize_batch
        self._start_host_work(self.runner.device.type == "cuda" if grouped is None else grouped)

    def _start_host_work(self, grouped: bool) -> None:
        """The tokenizer threads. Small requests' tokenizing is grouped across concurrent
        callers (tokenize_batch.py): embed()'s when `grouped` (tokenize_batch; None: on a
        GPU), else each on the loop; tokenize()'s always: it serves the Tokenize RPC, which
        must not hold the loop."""
        threads = self.config.tokenizer_threads
        self.groups_tokenizing = grouped
        self._host_work = ThreadPoolExecutor(threads, thread_name_prefix="embedsense-tokenize")
        self._prepares: MicroBatcher | None = None
        if grouped:
            self._prepares = MicroBatcher(
                self._prepare_group, self._host_work, threads, self._groups_on_their_way
            )
        self._tokenizes = MicroBatcher(self._tokenize_group, self._host_work, threads)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> Engine:
        """Warm the model up (so the first request is not slow) and start the worker."""
        if self._worker is not None:
            return self
        if self.config.warmup:
            started = time.perf_counter()
            sample = self.model.tokenizer.encode("预热 warm-up", TextRole.QUERY)
            self.runner.run([sample.ids] * 4, [None] * 4)
            took = time.perf_counter() - started
            # A first estimate of the forward's cost; the first real batches correct it.
            self._cost.observe(4 * len(sample.ids), took)
            log.info("warm-up took %.2f s", took)
        # What loading left free (a bf16 runner's fp32 Linear weights, the model file's
        # decoding buffers) goes back now, not at the first trim under load.
        self._trimmer.trim()
        # And the OpenMP team loading and the warm-up started on this thread: the worker's
        # own is to be the only one (openmp.py).
        openmp.release_team()
        self._worker = threading.Thread(target=self._work, name="embedsense-engine", daemon=True)
        self._worker.start()
        if self._lane_tokens:
            self._lane = threading.Thread(
                target=self._serve_queries, name="embedsense-queries", daemon=True
            )
            self._lane.start()
        return self

    def close(self, timeout: float | None = None) -> None:
        """Finish the rows already queued, then stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            self._lane_wakeup.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in (self._lane, self._worker):
            if thread is not None:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._host_work.shutdown(wait=False)

    async def __aenter__(self) -> Engine:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.close)

    def add_observer(self, observer: Callable[[BatchReport], None]) -> None:
        """Called after every batch, from the thread that ran it: the worker's or the query
        lane's, at the same time (keep it cheap and thread-safe)."""
        self._observers.append(observer)

    def info(self) -> EngineInfo:
        c = self.config
        return EngineInfo(
            model=self.model.spec.name,
            dim=self.model.dim,
            device=str(self.runner.device),
            dtype="int8" if self.runner.int8 else str(self.runner.dtype).removeprefix("torch."),
            int8=self.runner.int8,
            max_tokens=self.model.tokenizer.max_tokens,
            max_batch_tokens=c.max_batch_tokens,
            max_batch_requests=c.max_batch_requests,
            max_queued_tokens=c.max_queued_tokens,
            max_concurrent_requests=c.max_concurrent_requests,
            dtype_reason="int8 asked for" if self.runner.int8 else self.runner.precision.reason,
            num_layers=self.num_layers,
        )

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def queued_rows(self) -> dict[str, int]:
        """Rows waiting now, per priority label."""
        return {p.label: self._queued_rows[p] for p in Priority}

    # ------------------------------------------------------------ the API

    async def embed(
        self,
        texts: Sequence[str],
        *,
        role: TextRole = TextRole.PASSAGE,
        layers: Sequence[int] | None = None,
        token_vectors: bool = False,
        normalize: bool = True,
        pooling: Pooling | None = None,
        truncate: bool = False,
        windowed: bool = False,
        timeout: float | None = None,
        token_ids: Sequence[Sequence[int]] | None = None,
        truncation_direction: str = "right",
        max_tokens: int | None = None,
        priority: Priority | None = None,
    ) -> list[Embedding]:
        """Embed texts: a pooled sentence vector each, and token vectors when asked.

        layers: hidden states to average (0 = embeddings ... num_layers = last; default last).
        truncate / windowed: what to do with a text over the model's limit (default: refuse
        with InvalidRequest naming its length and the limit); truncate cuts the text's end,
        or with truncation_direction="left" its start.
        token_ids: instead of texts, each text as the tokenizer's ids (no specials, no
        prefix: they are added as for text).
        max_tokens: refuse (InvalidRequest) a request of more tokens than this, before it is
        queued (a caller whose reply grows with them bounds it so).
        priority: how soon its rows run (batching.py); None: `requested_priority`'s, else
        interactive for a request of at most interactive_max_texts texts and
        interactive_max_tokens tokens, bulk for a larger one.
        Raises Overloaded, InvalidRequest, DeadlineExceeded (after `timeout` seconds).
        """
        started = time.monotonic()  # the deadline counts from here, tokenizing included
        self._check_open()
        choice: Layers = tuple(layers) if layers else None
        prepare = functools.partial(
            self._prepare, texts, role, choice, truncate, windowed, token_ids, truncation_direction
        )
        large = sum(map(len, texts if token_ids is None else token_ids)) > INLINE_CHARS
        grouped = self._prepares is not None and not large and token_ids is None
        with self._on_its_way() if large else contextlib.nullcontext():
            if grouped:
                self._check_layers(choice)
                key = (TextRole(role), truncate, windowed, truncation_direction)
                prepared = await self._grouped(self._prepares, key, texts)
            else:
                prepared = await self._on_host(prepare) if large else prepare()
            # One vector comes back per token of each text, however many windows it took
            # (overlapping windows count most tokens twice as rows).
            returned = sum(len(t) for t in prepared.tokenized)
            if max_tokens is not None and returned > max_tokens:
                raise InvalidRequest(
                    f"the inputs are {returned} tokens together; at most {max_tokens} "
                    "are taken in one request here (a token vector each comes back): send "
                    "fewer or shorter texts"
                )
            level = self._priority(priority, len(prepared.tokenized), prepared.n_tokens)
            rows = [ids for per_text in prepared.window_ids for ids in per_text]
            # Only a sentence vector wanted: each row's output is needed pooled, no more.
            pooled = None if token_vectors else Pooling(pooling or self.model.spec.pooling)
            computing = self._submit(rows, choice, level, timeout, pooled, started)
        outputs = await computing
        assemble = functools.partial(
            self._assemble_all, prepared, outputs, token_vectors, normalize, pooling
        )
        return await self._on_host(assemble) if large else assemble()

    async def run_rows(
        self,
        rows: Sequence[Sequence[int]],
        layers: Layers,
        priority: Priority,
        timeout: float | None,
        pooled: Pooling | None = None,
    ) -> list[np.ndarray]:
        """Rows a front end in another process tokenized and windowed (frontends/): each
        row's (tokens, dim) output, as embed() gets them before pooling; with `pooled`, its
        pooled vector as a (1, dim) row instead (a sentence vector is all the front end
        needs: 1/tokens of the bytes to send back). The same admission, priorities and
        deadline as embed()'s. Raises as embed() does."""
        self._check_open()
        self._check_layers(layers)
        limit = self.model.tokenizer.max_tokens
        for index, ids in enumerate(rows):
            if len(ids) > limit:
                raise TextTooLong(index, len(ids), limit)
        return await self._submit(rows, layers, Priority(priority), timeout, pooled)

    async def tokenize(
        self, texts: Sequence[str], role: TextRole = TextRole.PASSAGE
    ) -> list[TokenizedText]:
        """Texts as the model would see them, at any length (no limit: telling a caller how
        long a text is must not fail for a long one); a large request off the event loop."""
        encode = functools.partial(self.model.tokenizer.encode_batch, texts, role, allow_long=True)
        if sum(map(len, texts)) > INLINE_CHARS:
            return await self._on_host(encode)
        return await self._grouped(self._tokenizes, TextRole(role), texts)

    async def decode(self, batch: Sequence[Sequence[int]], skip_special: bool = True) -> list[str]:
        """Token ids back to texts. Raises InvalidRequest for an id outside the vocabulary."""
        decode = functools.partial(self.model.tokenizer.decode_batch, batch, skip_special)
        try:
            return await self._on_host(decode) if sum(map(len, batch)) > INLINE_CHARS else decode()
        except ValueError as err:
            raise InvalidRequest(str(err)) from err

    @property
    def broken(self) -> str | None:
        """Why the engine stopped serving for good (a thread of it failed), or None."""
        return self._broken

    def when_broken(self, listener: Callable[[str], None]) -> None:
        """Call `listener(why)` once the engine is broken (at once if it is): from the
        engine's thread that failed, so a listener only hands the news on."""
        with self._cond:
            self._broken_listeners.append(listener)
            why = self._broken
        if why is not None:
            listener(why)

    def _check_open(self) -> None:
        if self._broken is not None:
            raise EngineBroken(self._broken)
        if self._worker is None or self._closing:
            raise EngineClosed("the engine is not running")

    def _check_layers(self, layers: Layers) -> None:
        try:
            check_layers(layers, self.num_layers)
        except ValueError as err:
            raise InvalidRequest(str(err)) from err

    def _submit(
        self,
        rows: Sequence[Sequence[int]],
        layers: Layers,
        level: Priority,
        timeout: float | None,
        pooled: Pooling | None = None,
        started: float | None = None,
    ) -> Awaitable[list[np.ndarray]]:
        """Queue a request's rows (or refuse them, Overloaded); what to await for their
        outputs, in order (DeadlineExceeded `timeout` seconds after `started`, the request's
        arrival: unset, now). `pooled`: how the caller pools the rows when it wants sentence
        vectors only; each output is then that row pooled, (1, dim) (_Row.pooled).

        A request of more tokens than its level may ever queue runs in parts of at most
        half that, one after another: refused whole, it would be "overloaded" however often
        it was sent (an SDK bulk upsert of long documents was)."""
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        deadline = (now if started is None else started) + timeout if timeout is not None else None
        if deadline is not None and deadline <= now:  # tokenizing took it: queue nothing
            raise DeadlineExceeded(f"not done within the {timeout:.3f} s deadline")
        queued = [_Row(ids, layers, loop.create_future(), loop, now, deadline, level, pooled)
                  for ids in rows]  # fmt: skip
        # The tokens this level may queue: its own limit and those of the levels above.
        limit = min(self._limits()[0][level:], key=lambda limit: limit.value)
        most, sizes = limit.value, [row.n_tokens for row in queued]
        if max(sizes, default=0) > most:  # no part could ever be queued
            raise InvalidRequest(
                f"a text's window of {max(sizes)} tokens is more than the {most} tokens a "
                f"{level.label} request may queue ({limit.setting})"
            )
        if sum(sizes) <= most:
            self._admit(queued, level)
            return self._outputs(queued, level, timeout)
        parts = [queued[part] for part in consecutive_parts(sizes, most // 2)]
        self._admit(parts[0], level)
        return self._in_parts(parts, level, timeout)

    async def _in_parts(
        self, parts: list[list[_Row]], level: Priority, timeout: float | None
    ) -> list[np.ndarray]:
        """The outputs of a request queued in parts; the first is admitted already."""
        outputs: list[np.ndarray] = []
        for number, part in enumerate(parts):
            if number:
                await self._admit_when_room(part, level, timeout)
            outputs += await self._outputs(part, level, timeout)
        return outputs

    async def _admit_when_room(
        self, rows: list[_Row], level: Priority, timeout: float | None
    ) -> None:
        """Queue a later part of a request once the queue has room for it: the request was
        admitted, so its parts wait rather than fail after earlier ones were computed. It
        arrives now, as far as aging goes: an arrival stamped when the request came would rank
        it ahead of work that came in meanwhile."""
        pause = 0.005
        while True:
            for row in rows:
                row.arrival = time.monotonic()
            try:
                return self._admit(rows, level, count_refusal=False)
            except Overloaded:
                deadline = rows[0].deadline
                if deadline is not None and time.monotonic() + pause > deadline:
                    raise DeadlineExceeded(
                        f"not done within the {timeout:.3f} s deadline"
                    ) from None
                await asyncio.sleep(pause)
                pause = min(2 * pause, 0.1)

    async def _outputs(
        self, rows: list[_Row], level: Priority, timeout: float | None
    ) -> list[np.ndarray]:
        """The rows' outputs, by the request's `timeout` (its rows carry its deadline)."""
        deadline = rows[0].deadline if rows else None
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for left a cancelled
            # gather's exception unread, an asyncio ERROR line per cancelled caller.
            async with asyncio.timeout(left):
                return await asyncio.gather(*(row.future for row in rows))
        except TimeoutError as err:
            raise DeadlineExceeded(f"not done within the {timeout:.3f} s deadline") from err
        finally:
            # Whatever ended the wait (one row's failure too, which gather does not spread),
            # the rest of the request is computed for nobody: cancelled rows are dropped,
            # and those still queued give their room back at once, not after the forward
            # in progress (new requests were refused against tokens nobody waited for).
            # (Cancelled: gather cancels the rows' futures when its caller is cancelled.)
            abandoned = [row for row in rows if row.future.cancelled() or not row.future.done()]
            for row in rows:
                row.future.cancel()
            with self._cond:
                self._in_flight[level] -= 1
                if abandoned:
                    self._drop_abandoned(abandoned)

    async def _grouped(self, batcher: MicroBatcher, key: Hashable, texts: Sequence[str]) -> Any:
        """A request's share of a group's work in the host-work pool (tokenize_batch.py)."""
        try:
            return await batcher.submit(key, texts)
        except BatcherClosed as err:  # closed since embed() checked
            raise EngineClosed("the engine is not running") from err

    async def _on_host(self, work: Callable[[], _Result]) -> _Result:
        """work() in the host-work pool, off the event loop."""
        try:
            pending = asyncio.get_running_loop().run_in_executor(self._host_work, work)
        except RuntimeError as err:  # closed since embed() checked
            raise EngineClosed("the engine is not running") from err
        return await pending

    def _prepare(
        self,
        texts: Sequence[str],
        role: TextRole,
        choice: Layers,
        truncate: bool,
        windowed: bool,
        token_ids: Sequence[Sequence[int]] | None,
        direction: str = "right",
    ) -> _Prepared:
        """Tokenized texts and the rows (windows) each becomes (on the loop for a small
        request, in the host-work pool for a large one)."""
        try:
            self._check_layers(choice)
            encode = (
                self.model.tokenizer.encode_batch
                if token_ids is None
                else self.model.tokenizer.encode_ids
            )
            tokenized = encode(
                texts if token_ids is None else token_ids, role, truncate=truncate,
                allow_long=windowed and not truncate, direction=direction,
            )  # fmt: skip
        except TextTooLongError as err:
            raise TextTooLong(err.index, err.n_tokens, err.limit) from err
        except ValueError as err:
            raise InvalidRequest(str(err)) from err
        return self._planned(tokenized)

    def _prepare_group(
        self, key: tuple[TextRole, bool, bool, str], requests: list[Sequence[str]]
    ) -> list[_Prepared | BaseException]:
        """_prepare for several requests' texts at once (in a tokenizer thread): one
        tokenizer call for all; per request its _Prepared, or the error it alone gets."""
        role, truncate, windowed, direction = key
        flat = [text for texts in requests for text in texts]
        try:
            # Long texts pass here whatever the options, and are refused per request below:
            # one caller's long text must not fail the others.
            tokenized = self.model.tokenizer.encode_batch(
                flat, role, truncate=truncate, allow_long=not truncate, direction=direction
            )
        except ValueError:  # some request's input the tokenizer refuses: each on its own
            return [_outcome(self._prepare, texts, role, None, truncate, windowed, None,
                             direction) for texts in requests]  # fmt: skip
        limit, outcomes, start = self.model.tokenizer.max_tokens, [], 0
        for texts in requests:
            mine = tokenized[start : start + len(texts)]
            start += len(texts)
            long = [] if truncate or windowed else [i for i, t in enumerate(mine) if len(t) > limit]
            outcomes.append(TextTooLong(long[0], len(mine[long[0]]), limit) if long else
                            self._planned(mine))  # fmt: skip
        return outcomes

    def _tokenize_group(
        self, role: TextRole, requests: list[Sequence[str]]
    ) -> list[list[TokenizedText] | BaseException]:
        """tokenize() for several requests at once (in a tokenizer thread)."""
        encode = functools.partial(self.model.tokenizer.encode_batch, role=role, allow_long=True)
        try:
            tokenized = encode([text for texts in requests for text in texts])
        except ValueError:
            return [_outcome(encode, texts) for texts in requests]
        outcomes, start = [], 0
        for texts in requests:
            outcomes.append(tokenized[start : start + len(texts)])
            start += len(texts)
        return outcomes

    def _planned(self, tokenized: list[TokenizedText]) -> _Prepared:
        """Tokenized texts with the rows (windows) each becomes."""
        frames = [_frame(t) for t in tokenized]
        plans = [self._windows_for(t, f) for t, f in zip(tokenized, frames, strict=True)]
        window_ids = [
            [_window_ids(t, f, w) for w in plan]
            for t, f, plan in zip(tokenized, frames, plans, strict=True)
        ]
        return _Prepared(tokenized, frames, plans, window_ids)

    def _assemble_all(
        self,
        prepared: _Prepared,
        outputs: list[np.ndarray],
        want_tokens: bool,
        normalize: bool,
        pooling: Pooling | None,
    ) -> list[Embedding]:
        results, cursor = [], 0
        for tok, frame, plan in zip(prepared.tokenized, prepared.frames, prepared.plans,
                                    strict=True):  # fmt: skip
            per_window = outputs[cursor : cursor + len(plan)]
            cursor += len(plan)
            results.append(
                self._assemble(tok, frame, plan, per_window, want_tokens, normalize, pooling)
            )
        return results

    # ------------------------------------------------------------ admission and windows

    def _priority(self, asked: Priority | None, n_texts: int, n_tokens: int) -> Priority:
        if asked is None:
            asked = requested_priority.get()
        if asked is not None:
            return Priority(asked)
        c = self.config
        return default_priority(
            n_texts, n_tokens, c.interactive_max_texts, c.interactive_max_tokens
        )

    def _limits(self) -> tuple[list[Limit], list[Limit]]:
        """Per priority, the tokens and requests that level and those below it may hold
        together: bulk work has limits of its own, the levels above share the engine's."""
        c = self.config
        tokens = Limit(c.max_queued_tokens, "max_queued_tokens")
        requests = Limit(c.max_concurrent_requests, "max_concurrent_requests")
        bulk_tokens = c.bulk_queued_tokens(self.model.tokenizer.max_tokens)
        bulk_requests = Limit(c.bulk_concurrent_requests, "max_concurrent_bulk_requests")
        return (
            [Limit(bulk_tokens, "max_queued_bulk_tokens"), tokens, tokens],
            [bulk_requests, requests, requests],
        )

    def _admit(self, rows: list[_Row], level: Priority, count_refusal: bool = True) -> None:
        token_limits, request_limits = self._limits()
        n_tokens = sum(row.n_tokens for row in rows)
        with self._cond:
            self._check_open()  # again: since embed()'s check the worker may have exited
            refusal = admission_refusal(
                level, n_tokens, self._queued_tokens, self._in_flight, token_limits, request_limits
            )
            if refusal is not None:
                if count_refusal:
                    self.stats.refused += 1
                    self.stats.refused_by_priority[level.label] += 1
                raise Overloaded(refusal)
            self._in_flight[level] += 1
            self._queued_tokens[level] += n_tokens
            self._queued_rows[level] += len(rows)
            self._last_arrival[level] = rows[0].arrival if rows else time.monotonic()
            self._pending.extend(rows)
            self._cond.notify()
            if self._lane_due():
                self._lane_wakeup.notify()

    @contextlib.contextmanager
    def _on_its_way(self) -> Iterator[None]:
        """Counts a request tokenized in the pool until its rows are queued (or it fails):
        a batch that is not full waits for it. A small request, tokenized on the loop in
        about a millisecond at most, is not counted: it costs the hot path no lock and no
        wake-up of the worker."""
        with self._cond:
            self._preparing += 1
        try:
            yield
        finally:
            with self._cond:
                self._preparing -= 1
                self._cond.notify()  # a batch waiting for this request may be due now

    def _groups_on_their_way(self, change: int) -> None:
        """A group of requests being tokenized counts as one request on its way (one lock
        per group, not per request) until its callers have queued their rows."""
        with self._cond:
            self._preparing += change
            if change < 0:
                self._cond.notify()

    def _windows_for(self, tok: TokenizedText, frame: tuple[int, int]) -> list[Window]:
        head, tail = frame
        max_content = self.model.tokenizer.max_tokens - head - tail
        return plan_windows(len(tok) - head - tail, max_content, self.config.window_stride)

    def _assemble(
        self,
        tok: TokenizedText,
        frame: tuple[int, int],
        plan: list[Window],
        per_window: list[np.ndarray],
        want_tokens: bool,
        normalize: bool,
        pooling: Pooling | None,
    ) -> Embedding:
        how = Pooling(pooling or self.model.spec.pooling)
        pooled = [_pooled(w, how)[0] for w in per_window]
        if len(plan) == 1:
            sentence, tokens = pooled[0], per_window[0]
        else:
            sentence = pooled[0] if how is Pooling.CLS else weighted_sentence(plan, pooled)
            # Without token vectors the windows are pooled rows only (_Row.pooled).
            tokens = _stitched(tok, frame, plan, per_window) if want_tokens else None
        sentence = np.asarray(sentence, dtype=np.float32)
        if normalize:
            sentence = sentence / max(float(np.linalg.norm(sentence)), 1e-12)
        return Embedding(
            sentence=sentence,
            tokenized=tok,
            token_vectors=np.ascontiguousarray(tokens, dtype=np.float32) if want_tokens else None,
            windows=len(plan),
        )

    # ------------------------------------------------------------ the worker thread

    def _work(self) -> None:
        try:
            self._work_until_closed()
        except Exception as err:  # noqa: BLE001 - its callers must hear of it, not wait
            self._stop_broken("worker", err)

    def _serve_queries(self) -> None:
        try:
            self._serve_queries_until_closed()
        except Exception as err:  # noqa: BLE001 - as the worker's
            self._stop_broken("query lane", err)

    def _stop_broken(self, thread: str, err: BaseException) -> None:
        """A thread of the engine failed outside a forward (a forward's failure is its
        batch's status): nothing would run what is queued. Its callers, and every caller
        after them, are told UNAVAILABLE rather than left to wait for ever."""
        log.critical("the engine's %s thread stopped: %r", thread, err, exc_info=err)
        with self._cond:  # broken before the queue is emptied: nothing is admitted after
            self._tell_broken(
                f"the engine's {thread} stopped ({type(err).__name__}: {err}); the server "
                "needs a restart"
            )
            queued, self._pending = self._pending, []
            for row in queued:
                self._unqueue(row)
            self._cond.notify_all()
            self._lane_wakeup.notify_all()
        _settle_batch([(row, None, EngineBroken(self._broken or "")) for row in queued])

    def _tell_broken(self, why: str) -> None:
        """Mark the engine broken for good (the first cause stays) and tell the listeners."""
        with self._cond:
            if self._broken is not None:
                return
            self._broken = why
            for listener in self._broken_listeners:
                listener(why)

    def _work_until_closed(self) -> None:
        self.runner.run_here()
        if self._lane_tokens and self.runner.device.type == "cpu":
            lower_thread_priority(self.config.worker_nice)  # before its first forward
        while True:
            batch, plan, depth = self._next_batch()
            if batch is None:
                return
            if batch:
                try:
                    self._run(batch, plan, depth)
                finally:
                    with self._cond:
                        self._forward_running = False
                self._model_free_since = time.monotonic()

    def _serve_queries_until_closed(self) -> None:
        """The query lane: while the worker runs a forward or has other work queued, the
        queries run here in a forward of their own, at once, rather than wait for its
        forward to end or ride it. A query's forward is small, so it costs the worker's
        little; the memory formula counts its tokens (EngineConfig.query_lane_tokens).
        When queries are all that waits and the worker is free, the worker runs them; its
        batches of other work leave them out (batching.py, `queries_join`)."""
        while True:
            with self._cond:
                while not self._closing and not self._lane_due():
                    self._lane_wakeup.wait()
                if self._closing:  # the worker finishes what is queued
                    return
                self._drop_abandoned()
                if not self._lane_due():  # the other work queued was abandoned
                    continue
                queries = [r for r in self._pending if r.priority is Priority.QUERY]
                plan = plan_batch(queries, self._lane_tokens, self.config.max_batch_requests)
                batch = self._take([queries[i] for i in plan.indices])
                depth = len(self._pending)
            if batch:
                self._run(batch, plan, depth, lane=True)

    def _lane_due(self) -> bool:
        """Whether the query lane has queries to run now: queued while the worker runs a
        forward, or while other work is queued (which the worker's next batch is of)."""
        queries = self._queued_rows[Priority.QUERY]
        return bool(
            self._lane_tokens and queries and (self._forward_running or self._other_work_queued())
        )

    def _forward_tokens(self, now: float) -> dict[int, int]:
        """Per level, the real tokens a batch whose first row is of that level may hold: its
        time budget at the measured cost, for a level with work above it seen lately (or
        queries, while queries are about); none for the others.

        A batch of queries gets the short budget (query_forward_ms) only when the forward
        before it was not one: queries that arrive during a short forward ride the next,
        full one. Else, under a steady stream of queries, every forward would be short, and
        the engine would spend its time on the forwards' fixed cost (measured: half the
        throughput under `make load`). With the query lane, queries never wait behind a
        forward: they hold none short."""
        c = self.config
        seen = [now - t <= HIGHER_WORK_SEEN_S for t in self._last_arrival]
        if self._lane_tokens:  # queries run beside other batches: they need no short ones
            seen[Priority.QUERY] = False
        budgets = {}
        for level in Priority:
            held = any(seen[above] for above in range(level + 1, len(Priority)))
            if level is Priority.QUERY and self._short_query_forward(now):
                budgets[level] = self._cost.tokens_for(c.query_forward_ms / 1000) or 1  # typing
            elif c.max_forward_ms > 0 and (held or level is Priority.QUERY):
                tokens = self._cost.tokens_for(c.max_forward_ms / 1000, MAX_FIXED_SHARE)
                if tokens is not None:
                    budgets[level] = max(MIN_FORWARD_TOKENS, tokens)
        return budgets

    def _short_query_forward(self, now: float) -> bool:
        """Whether a batch of queries planned now gets the short budget (_forward_tokens):
        not right after another short one, unless there is no full budget to fall back on
        (max_forward_ms 0), where a query's batch would otherwise fill max_batch_tokens."""
        c = self.config
        return (
            c.query_forward_ms > 0
            and (not self._last_forward_short or c.max_forward_ms <= 0)
            and now - self._last_arrival[Priority.QUERY] <= HIGHER_WORK_SEEN_S
            and self._cost.fit() is not None
        )

    def _next_batch(self) -> tuple[list[_Row] | None, BatchPlan, int]:
        """Block until a batch is due; None when closing with nothing left."""
        c = self.config
        with self._cond:
            while not self._pending:
                if self._closing:
                    return None, BatchPlan(), 0
                # Idle: a query that arrives next did not arrive during a short forward.
                self._last_forward_short = False
                self._cond.wait()
            # Wait a little for company, unless the budget is already full or we are closing.
            # Should the queue empty meanwhile (the lane dropped its last rows), no batch.
            lone_wait = c.max_wait_ms / 1000
            while not self._closing and self._pending and self._pending_tokens() < self._fill():
                waited_from, longest = self._company_window()
                if self._preparing or len(self._pending) < self._last_batch_rows:
                    due = longest
                else:  # while rows keep arriving, a wave of callers is still coming back
                    newest = max(r.arrival for r in self._pending)
                    due = min(max(waited_from, newest) + lone_wait, longest)
                remaining = due - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            self._drop_abandoned()
            now = time.monotonic()
            plan = plan_batch(
                self._pending,
                c.max_batch_tokens,
                c.max_batch_requests,
                now=now,
                aging_s=c.priority_aging_ms / 1000,
                forward_tokens=self._forward_tokens(now),
                # The lane runs the queries left out beside it, until the engine closes.
                queries_join=not self._lane_tokens or self._closing,
            )
            if plan.indices:  # rows may all have been dropped: then no forward runs
                short = plan.level == Priority.QUERY and self._short_query_forward(now)
                self._last_forward_short = short
                self._forward_running = True
            batch = self._take([self._pending[i] for i in plan.indices])
            if self._lane_due():
                self._lane_wakeup.notify()  # queries this batch left behind
            return batch, plan, len(self._pending)

    def _company_window(self) -> tuple[float, float]:
        """When the wait for company began and when it ends at the latest, from the queue as
        it is now: the lane takes queries and drops abandoned rows meanwhile, and the rows
        left decide (a lone query waited as long as the abandoned row it arrived beside).
        Counted from the later of the oldest row's arrival and the end of the last batch,
        so that callers who just got their results can join the next batch."""
        waited_from = max(min(r.arrival for r in self._pending), self._model_free_since)
        lone_wait = self.config.max_wait_ms / 1000
        if self._lane_tokens and not self._other_work_queued():
            return waited_from, waited_from + lone_wait  # queries the lane would run at once
        return waited_from, waited_from + max(
            lone_wait, COMPANY_WAIT_SHARE * self._last_model_seconds
        )

    def _other_work_queued(self) -> bool:
        """Whether rows other than queries wait: with the lane, the worker's next batch is
        of those, and the lane takes the queries."""
        return sum(self._queued_rows) > self._queued_rows[Priority.QUERY]

    def _pending_tokens(self) -> int:
        """The tokens the worker's next batch may take: with the lane, not the queries'
        while other work waits (as _fill)."""
        queued, queries = sum(self._queued_tokens), self._queued_tokens[Priority.QUERY]
        if self._lane_tokens and self._other_work_queued():
            return queued - queries
        return queued

    def _fill(self) -> int:
        """The tokens that make the next batch full: the budget it would be cut to (with
        the lane, queries are the batch only when nothing else waits)."""
        levels = {r.priority for r in self._pending}
        if self._lane_tokens and self._other_work_queued():
            levels.discard(Priority.QUERY)
        top = max(levels)
        budget = self._forward_tokens(time.monotonic()).get(top)
        return min(self.config.max_batch_tokens, budget or self.config.max_batch_tokens)

    def _take(self, batch: list[_Row]) -> list[_Row]:
        """`batch`, out of the queue (for the worker or the query lane to run)."""
        chosen = {id(row) for row in batch}
        self._pending = [r for r in self._pending if id(r) not in chosen]
        for row in batch:
            self._unqueue(row)
        return batch

    def _unqueue(self, row: _Row) -> None:
        self._queued_tokens[row.priority] -= row.n_tokens
        self._queued_rows[row.priority] -= 1

    def _drop_abandoned(self, among: Sequence[_Row] | None = None) -> None:
        """Remove rows nobody waits for any more (of `among`, when given: one request's):
        they must cost no compute."""
        now = time.monotonic()
        keep = []
        candidates = None if among is None else {id(row) for row in among}
        for row in self._pending:
            if candidates is not None and id(row) not in candidates:
                keep.append(row)
                continue
            expired = row.deadline is not None and now > row.deadline
            if row.future.cancelled():
                # The caller's own timeout cancels its rows at their deadline: that is an
                # expiry, not a caller who went away. A gRPC caller's deadline arrives as a
                # cancel from its side, a moment before ours of the same deadline.
                if row.deadline is not None and now > row.deadline - DEADLINE_SLACK_S:
                    self.stats.skipped_expired += 1
                else:
                    self.stats.skipped_cancelled += 1
            elif expired:
                self.stats.skipped_expired += 1
                _settle_batch([(row, None, DeadlineExceeded("the deadline passed while queued"))])
            else:
                keep.append(row)
                continue
            self._unqueue(row)
        if len(keep) < len(self._pending):
            self._cond.notify()  # the worker's wait for company may end sooner (_company_window)
        self._pending = keep

    def _run(self, batch: list[_Row], plan: BatchPlan, depth: int, lane: bool = False) -> None:
        """One forward and its callers told; `lane`: the query lane's, beside the worker's
        (its time, shared with that forward, is not the cost the budgets are planned by)."""
        started = time.monotonic()
        told: set[int] = set()

        def tell_early(indices: list[int], outputs: list[np.ndarray]) -> None:
            # A part's callers hear back while the batch's later parts compute: they come
            # back with their next texts sooner, and the next batch waits less for them. The
            # last part's hear back below, with the batch. Their rows are counted first (what
            # a caller sees includes its rows); the batch's totals, at its end.
            if len(told) + len(indices) < len(batch):
                rows = [batch[i] for i in indices]
                self._count_rows(rows)
                told.update(indices)
                pairs = zip(rows, outputs, strict=True)
                _settle_batch([(row, _pooled(out, row.pooled), None) for row, out in pairs])

        try:
            outputs = self.runner.run([r.ids for r in batch], [r.layers for r in batch], tell_early)
        except Exception as err:  # noqa: BLE001 - the callers get it, the worker survives
            log.exception(
                "batch of %d rows failed (%d answered before the failure)", len(batch), len(told)
            )
            failure = model_failure(err)
            _settle_batch([(row, None, failure) for i, row in enumerate(batch) if i not in told])
            return
        seconds = time.monotonic() - started
        if not lane:
            # The worker's forwards, stretched where the lane's overlap them, are the cost
            # its budgets plan by: how long a forward lasts under the mix, what a row waits.
            self._last_model_seconds = seconds
            self._last_batch_rows = len(batch)
            self._cost.observe(plan.real_tokens, seconds)
        with self._cond:  # two threads count; before the callers hear back: what they see
            s = self.stats  # includes them
            s.batches += 1
            s.lane_batches += lane
            s.real_tokens += plan.real_tokens
            s.padded_tokens += plan.padded_tokens
            s.model_seconds += seconds
        self._count_rows([row for i, row in enumerate(batch) if i not in told])
        _settle_batch(
            [
                (row, _pooled(out, row.pooled), None)
                for i, (row, out) in enumerate(zip(batch, outputs, strict=True))
                if i not in told
            ]
        )
        self._trimmer.maybe_trim()
        report = BatchReport(
            rows=len(batch),
            real_tokens=plan.real_tokens,
            padded_tokens=plan.padded_tokens,
            queue_depth=depth,
            queue_seconds=[started - r.arrival for r in batch],
            model_seconds=seconds,
            priorities=[r.priority for r in batch],
        )
        for observer in self._observers:
            observer(report)

    def _count_rows(self, rows: list[_Row]) -> None:
        with self._cond:  # the worker and the query lane count
            self.stats.rows += len(rows)
            for row in rows:
                self.stats.rows_by_priority[row.priority.label] += 1


def _pooled(output: np.ndarray, how: Pooling | None) -> np.ndarray:
    """A row's output as its caller takes it: whole, or pooled, (1, dim), in an array of its
    own (a view would keep its whole part of the batch alive). _assemble pools windows so."""
    if how is None:
        return output
    if how is Pooling.CLS:
        return output[:1].copy()
    return output.mean(axis=0, keepdims=True)


def _per_priority(value: int) -> dict[str, int]:
    return {p.label: value for p in sorted(Priority, reverse=True)}


def _outcome(work: Callable[..., _Result], *args: object) -> _Result | BaseException:
    """work(*args), or the exception it raised (for one request of a group)."""
    try:
        return work(*args)
    except Exception as err:  # noqa: BLE001 - handed to that request's caller
        return err


def _frame(tok: TokenizedText) -> tuple[int, int]:
    """How many tokens before and after the text's own tokens (specials, prefix)."""
    if True not in tok.from_text:
        return len(tok), 0
    head = tok.from_text.index(True)
    tail = tok.from_text[::-1].index(True)
    return head, tail


def _window_ids(tok: TokenizedText, frame: tuple[int, int], window: Window) -> list[int]:
    """A window's input: the text's frame (specials, the model's prefix) around its slice."""
    head, tail = frame
    content = tok.ids[head : len(tok) - tail]
    return tok.ids[:head] + content[window.start : window.end] + tok.ids[len(tok) - tail :]


def _stitched(
    tok: TokenizedText, frame: tuple[int, int], plan: list[Window], per_window: list[np.ndarray]
) -> np.ndarray:
    """A long text's token vectors from its windows': the frame's from the first and last
    window, each content token's from the windows that hold it (windows.stitch_tokens)."""
    head, tail = frame
    content = [w[head : len(w) - tail] for w in per_window]
    middle = stitch_tokens(plan, content, len(tok) - head - tail)
    return np.concatenate(
        [per_window[0][:head], middle, per_window[-1][len(per_window[-1]) - tail :]]
    )


def _settle_batch(outcomes: list[tuple[_Row, object, Exception | None]]) -> None:
    """Hand rows' outcomes (row, result, error) to their callers' event loops: one wake-up
    per loop for the whole batch, not one per row (futures are not thread-safe)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Row, object, Exception | None]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)

    def apply(some: list[tuple[_Row, object, Exception | None]]) -> None:
        for row, result, error in some:
            if row.future.done():  # cancelled meanwhile
                continue
            if error is not None:
                row.future.set_exception(error)
            else:
                row.future.set_result(result)

    for loop, some in by_loop.items():
        try:
            loop.call_soon_threadsafe(apply, some)
        except RuntimeError:  # the caller's loop is closed: nobody is left to tell
            pass
