"""The backend: the encoder on one device, run on batches of token ids.

Knows nothing of requests or queues. Places the model (CUDA when there is one, else CPU),
picks its precision (precision.py: fp16/bf16 on GPU; fp32, or bf16 under autocast on a CPU
that computes it natively), optionally quantizes its linear layers to int8 on CPU, and turns
a batch of id sequences into each row's token vectors, unpadded: on a CPU, a large batch in
parts of rows alike in length (memory.part_tokens says why), each part in bf16 with a
filler row up to a whole step of tokens (BF16_TOKEN_STEP says why).
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from embedsense.model import LoadedModel
from embedsense.model.tokenizer import pad_sequences
from embedsense.server import footprint, int8, memory, openmp
from embedsense.server.config import EngineConfig
from embedsense.server.footprint import Footprint
from embedsense.server.precision import Precision, choose

# Grids attention runs on per batch (encoder.Packing). On a CPU, rows grouped by length:
# measured there. On a GPU attention is a small share of a forward and each group costs
# kernel launches of its own: one grid, unmeasured either way.
ATTENTION_GROUPS = {"cpu": 4, "cuda": 1}

# Under bf16 on a CPU, matrix products go through oneDNN, which compiles a kernel for each
# new input shape: about 7 ms per Linear on a 2-core Xeon with AMX, where the product itself
# of 1,000 tokens takes 1-2 ms. The engine's batches come in a new token count nearly every
# time, so a bf16 forward is padded with a filler row up to a multiple of this many tokens,
# and the kernel caches hold every token count a forward can then come in
# (kernel_cache_entries): after its first forward of each, no forward compiles. (Caches of
# 32 entries, five a count, held 6 of the 18 counts from 256 tokens up: the service's mixed
# batches compiled kernels again forward after forward.) memory.part_tokens counts in whole
# 64s, so the filler keeps a part within its budget.
BF16_TOKEN_STEP = 64
# Smaller forwards (a query's) are padded to multiples of BF16_SMALL_STEP: a few tokens of
# filler, and 15 token counts rather than 255 to keep kernels for.
BF16_STEP_FROM = 256
BF16_SMALL_STEP = 16
# Kernel cache entries per token count: the attention's input and output projections and
# the feed-forward's two Linears (4 shapes of product), and the GELU.
KERNELS_PER_TOKEN_COUNT = 5
# Room beyond those, for what else runs a bf16 product (Explain's forward, a probe).
SPARE_KERNEL_ENTRIES = 32
# The most entries a cache is sized to (about 136 MiB of kernels): a model whose forwards
# come in more token counts (long inputs, or a narrow feed-forward whose parts hold many
# tokens) keeps the kernels of the counts it used last, as an LRU cache does.
MAX_KERNEL_ENTRIES = 256

# A layer choice: None = the last layer; else indices into the hidden states (0 = the
# embedding output, num_layers = the last; negatives count from the end), averaged.
Layers = tuple[int, ...] | None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: expected auto, cpu or cuda[:N]")
    return device


class ModelRunner:
    def __init__(
        self, loaded: LoadedModel, config: EngineConfig, *, owns_model: bool = False
    ) -> None:
        """`owns_model`: nobody else computes with `loaded` (the server's engine loaded it for
        itself), so the runner may change it in place rather than keep copies beside it."""
        # Before choose()'s probe: the caches' sizes are read at the first bf16 product
        # (else 1,024 entries each), and the heaps' cap holds for threads that allocate after.
        cfg = loaded.encoder.cfg
        max_tokens = loaded.tokenizer.max_tokens
        bf16_part = memory.part_tokens(cfg.intermediate_size, 2, max_tokens)
        # No forward is larger than a batch (the query lane's included) or one long text.
        entries = kernel_cache_entries(min(bf16_part, max(config.max_batch_tokens, max_tokens)))
        self.kernel_entries = memory.bound_kernel_caches(min(entries, MAX_KERNEL_ENTRIES))
        memory.tune_allocator()
        self.device = resolve_device(config.device)
        if config.threads:
            torch.set_num_threads(config.threads)
        if config.int8 and config.dtype not in ("auto", "float32"):
            raise ValueError(f"int8 computes in float32: drop dtype {config.dtype} or int8")
        self.precision: Precision = choose(
            "float32" if config.int8 else config.dtype, self.device, cfg.hidden_size,
            cfg.intermediate_size, config.cpu_flags,
        )  # fmt: skip
        self.dtype = self.precision.dtype
        # The mmap threshold follows the compute dtype (memory.py), and the CPU's parts it.
        element_bytes = 4 if config.int8 else self.dtype.itemsize
        memory.tune_allocator(element_bytes)
        # On a CPU, bf16 runs under autocast (precision.py says why), its Linear weights
        # cast to bf16 once (bf16_linears), the others fp32; in place when the model is ours.
        self.autocast = self.device.type == "cpu" and self.dtype is torch.bfloat16
        self._home: int | None = None  # run_here's thread
        self.num_layers = loaded.encoder.cfg.num_layers
        self.pad_id = loaded.tokenizer.pad_id
        self.int8 = config.int8
        if config.int8:
            if self.device.type != "cpu":
                raise ValueError("int8 dynamic quantization runs on CPU only")
            # A quantized copy: the loaded fp32 model stays usable (e.g. for comparisons).
            self.encoder = int8.quantize(loaded)
        else:
            weights = torch.float32 if self.autocast else self.dtype
            self.encoder = loaded.encoder.to(device=self.device, dtype=weights)
            if self.autocast:
                self.encoder = bf16_linears(self.encoder, in_place=owns_model)
        self.encoder.attention_groups = ATTENTION_GROUPS[self.device.type]
        # On a CPU a batch runs in parts (memory.part_tokens says why); on a GPU whole.
        self.part_tokens = (
            memory.part_tokens(cfg.intermediate_size, element_bytes, loaded.tokenizer.max_tokens)
            if self.device.type == "cpu"
            else None
        )
        if self.device.type == "cuda":
            # Every attention kernel but cuDNN's: it builds a graph for each new (rows,
            # length) shape, 45 ms of host time a call on an H200 (the GPU check's profile),
            # and the engine's batches come in a new shape nearly every time. Once for the
            # process, not per forward (sdpa_kernel): the flags are global, and two forwards
            # run at once (the query lane, Explain), where one's exit would restore them
            # under the other.
            torch.backends.cuda.enable_cudnn_sdp(False)

    def sized(self, loaded: LoadedModel, config: EngineConfig) -> tuple[EngineConfig, Footprint]:
        """`config` with its limits fitted to config.max_memory (footprint.fit), and the
        predicted peak at those limits. Raises ValueError if the model alone does not fit."""
        compute = "float32" if self.int8 else self.precision.name
        parts = self.part_tokens
        entries = self.kernel_entries
        predicted = footprint.predict(
            config, loaded, compute, self.encoder, part_tokens=parts, kernel_entries=entries
        )
        fitted = footprint.fit(config, predicted, loaded.tokenizer.max_tokens)
        return fitted, footprint.predict(
            fitted, loaded, compute, self.encoder, part_tokens=parts, kernel_entries=entries
        )

    def run_here(self) -> None:
        """The calling thread runs the forwards from now on (the engine's worker): its
        OpenMP team stays between them, and any other thread's (the query lane's,
        Explain's) goes back after each forward (openmp.py says why)."""
        self._home = threading.get_ident()

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """Where the encoder runs: no autograd, and bf16 autocast when that is the choice.
        Every forward (the engine's batches, Explain's explicit path) runs inside it."""
        try:
            with (
                torch.inference_mode(),
                torch.autocast("cpu", torch.bfloat16, enabled=self.autocast),
            ):
                yield
        finally:
            if self._home is not None and threading.get_ident() != self._home:
                openmp.release_team()

    def check_layers(self, layers: Layers) -> None:
        check_layers(layers, self.num_layers)

    def run(
        self,
        sequences: Sequence[Sequence[int]],
        layers: Sequence[Layers],
        on_part: Callable[[list[int], list[np.ndarray]], None] | None = None,
    ) -> list[np.ndarray]:
        """Token vectors (len_i, C) float32 for each id sequence, in the chosen layer mix.
        `on_part(indices, outputs)` is told each part's rows as soon as they are computed
        (the whole batch at once, where it runs in one part)."""
        if self.part_tokens is None:
            outputs = self._forward(sequences, layers)
            if on_part is not None:
                on_part(list(range(len(sequences))), outputs)
            return outputs
        outputs = [np.empty(0)] * len(sequences)
        for part in split_rows([len(seq) for seq in sequences], self.part_tokens):
            done = self._forward([sequences[i] for i in part], [layers[i] for i in part])
            for i, out in zip(part, done, strict=True):
                outputs[i] = out
            if on_part is not None:
                on_part(part, done)
        return outputs

    def _forward(
        self, sequences: Sequence[Sequence[int]], layers: Sequence[Layers]
    ) -> list[np.ndarray]:
        tokens = sum(len(seq) for seq in sequences)
        filler = bf16_tokens(tokens) - tokens if self.autocast else 0
        if filler:  # a row of its own: attention keeps it apart, and its output is dropped
            padded = self._forward([*sequences, [self.pad_id] * filler], [*layers, layers[0]])
            return padded[:-1]
        ids, mask = pad_sequences(sequences, self.pad_id)
        need_all = any(choice is not None for choice in layers)
        with self.computing():
            mask = mask.to(self.device)
            out = self.encoder(ids.to(self.device), mask, output_hidden_states=need_all)
            real = mask.bool()
            # One device-to-host copy per distinct layer choice (usually one), of the real
            # tokens only and in the compute dtype: on a GPU the copy, not the model, is
            # what bounds a batch (the GPU check measured it), and padding is dead weight.
            mixes: dict[Layers, np.ndarray] = {}
            for choice in set(layers):
                if choice is None:
                    mix = out.last_hidden_state
                else:
                    stacked = torch.stack([out.hidden_states[layer] for layer in choice])
                    mix = stacked.float().mean(0)
                mixes[choice] = to_host(mix[real])  # (N, C): the rows' tokens, in order
        ends = np.cumsum([len(seq) for seq in sequences])
        return [
            mixes[choice][end - len(seq) : end]
            for seq, choice, end in zip(sequences, layers, ends, strict=True)
        ]


def bf16_tokens(tokens: int) -> int:
    """The token count a bf16 forward of `tokens` tokens runs at: up to a whole step."""
    step = BF16_TOKEN_STEP if tokens >= BF16_STEP_FROM else BF16_SMALL_STEP
    return tokens + -tokens % step


def bf16_token_counts(part_tokens: int) -> list[int]:
    """Every token count a bf16 forward of at most `part_tokens` tokens runs at."""
    small = range(BF16_SMALL_STEP, BF16_STEP_FROM, BF16_SMALL_STEP)
    return [*small, *range(BF16_STEP_FROM, bf16_tokens(part_tokens) + 1, BF16_TOKEN_STEP)]


def kernel_cache_entries(part_tokens: int) -> int:
    """Kernel cache entries that hold the kernels of every token count a bf16 forward of
    at most `part_tokens` tokens runs at (BF16_TOKEN_STEP says why they must)."""
    return KERNELS_PER_TOKEN_COUNT * len(bf16_token_counts(part_tokens)) + SPARE_KERNEL_ENTRIES


def split_rows(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices of rows of these lengths in parts of at most `budget` padded tokens (a row
    longer than that alone), longest first: a part's first row sets its padded length, and
    its rows are alike in length, so little padding."""
    parts: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if parts and (len(parts[-1]) + 1) * lengths[parts[-1][0]] <= budget:
            parts[-1].append(i)
        else:
            parts.append([i])
    return parts


def check_layers(layers: Layers, num_layers: int) -> None:
    """ValueError naming the range, for a layer the model does not have; or naming the
    hidden state given twice (6 and 6; 12 and -1 on 12 layers), which an average would
    weigh twice."""
    seen: dict[int, int] = {}
    for layer in layers or ():
        if not -(num_layers + 1) <= layer <= num_layers:
            raise ValueError(
                f"layer {layer} does not exist: the model has hidden states 0 (embeddings) "
                f"to {num_layers} (last), or -1 to -{num_layers + 1}"
            )
        state = layer % (num_layers + 1)
        if state in seen:
            raise ValueError(
                f"layers {seen[state]} and {layer} name hidden state {state} twice: the "
                "average takes each hidden state once"
            )
        seen[state] = layer


def bf16_linears(encoder: torch.nn.Module, *, in_place: bool = False) -> torch.nn.Module:
    """`encoder` with its Linear layers holding bf16 weights, for bf16 autocast on a CPU.

    Autocast casts each fp32 weight to bf16 on every forward (its cache lasts one autocast
    region): a fixed cost per forward, which short forwards (a query's, or a batch cut to a
    time budget) pay in full. Cast once here, the products are the same bf16 numbers;
    LayerNorm stays fp32, as autocast computes it. By default a copy, which shares the
    embedding tables (most of the model's memory) and leaves the loaded model in fp32 for
    its other users; `in_place` where it has none, so that no fp32 Linear weights stay
    resident beside the bf16 ones (81 MiB of the bundled model's)."""
    if not in_place:
        shared = {id(encoder.embeddings): encoder.embeddings}  # deepcopy's memo: not copied
        encoder = copy.deepcopy(encoder, memo=shared)
    for module in encoder.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(torch.bfloat16)
    return encoder


def to_host(packed: torch.Tensor) -> np.ndarray:
    """float32 numpy rows of a tensor on any device. From a GPU: widened there, then copied
    into page-locked memory (a pageable copy ran at 1.3 GB/s against 50 GB/s pinned on the
    GPU check's machine). The array is a view that keeps its pinned block alive, so the
    caching host allocator hands the block out again only once the array is gone."""
    if packed.device.type == "cpu":
        return packed.float().numpy()
    host = torch.empty(packed.shape, dtype=torch.float32, pin_memory=True)
    host.copy_(packed.float())
    return host.numpy()
