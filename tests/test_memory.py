"""The memory footprint: the formula against what a forward really holds, the start-up log's
predicted peak, and --max-memory fitting the limits (or refusing to start)."""

from __future__ import annotations

import logging
import os
import re
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import ServerThread
from torch.utils._python_dispatch import TorchDispatchMode

from embedsense.model import Encoder, EncoderConfig
from embedsense.server import footprint, memory
from embedsense.server import runner as runner_module
from embedsense.server.api.settings import ServerSettings
from embedsense.server.cli import parser
from embedsense.server.config import EngineConfig
from embedsense.server.engine import Engine
from embedsense.server.footprint import MIB, Footprint, parse_bytes
from embedsense.server.runner import ModelRunner, split_rows

PEAK = re.compile(r"predicted peak (\d+) MiB")
DTYPES = ("float32", "bfloat16")
DOCKER = Path(__file__).resolve().parents[1] / "docker"


class LiveTensors(TorchDispatchMode):
    """The most bytes of tensors made by ops and alive at once, while it is entered."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else [out]:
            if isinstance(tensor, torch.Tensor):
                self._count(tensor.untyped_storage())
        return out

    def _count(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if key in self.seen or not size:
            return
        self.seen.add(key)
        self.live += size
        self.peak = max(self.peak, self.live)

        def freed() -> None:
            self.live -= size
            self.seen.discard(key)

        weakref.finalize(storage, freed)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("hidden", "ffn"), [(64, 256), (128, 512)])
def test_the_formula_counts_what_a_forward_holds(hidden, ffn, dtype):
    """Every op's outputs of one forward, counted while alive: the peak per token is the
    formula's, within 5 %, for two widths and both CPU precisions."""
    torch.manual_seed(0)
    cfg = EncoderConfig(vocab_size=500, hidden_size=hidden, num_layers=2, num_heads=4,
                        intermediate_size=ffn, max_positions=64)  # fmt: skip
    encoder = Encoder(cfg).eval()
    if dtype == "bfloat16":
        for module in encoder.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(torch.bfloat16)  # as the runner holds them (bf16_linears)
    ids = torch.randint(3, 500, (32, 64))
    mask = torch.ones_like(ids)
    counter = LiveTensors()
    with (
        torch.inference_mode(),
        torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bfloat16"),
        counter,
    ):
        encoder(ids, mask)
    per_token = counter.peak / ids.numel()
    assert per_token == pytest.approx(
        footprint.activation_bytes_per_token(hidden, ffn, dtype), rel=0.05
    )


def test_the_formula_counts_the_kernels_the_math_libraries_keep(own_engines):
    """oneDNN (bf16) and MKL (fp32) keep compiled kernels and buffers per input shape, in
    caches bounded by memory.KERNEL_CACHES. Filled by 200 forwards of mixed shapes (under
    bf16 and one of each token count the runner pads to) and trimmed, they held 74-97 MiB
    under bf16 and 8-13 MiB in fp32, at widths 768 and 384 (the docs' memory table); the
    formula left them out."""
    for dtype, engine in own_engines.items():
        entries = engine.runner.kernel_entries
        kernels = footprint.kernel_bytes(dtype, entries)
        assert engine.footprint.kernels == kernels
        assert engine.footprint.fixed == (
            engine.footprint.runtime + engine.footprint.tokenizer + engine.footprint.weights
            + engine.footprint.heaps + engine.footprint.kernels
        )  # fmt: skip
        assert f"kernels {kernels // MIB} " in engine.footprint.describe()
    # Under bf16 the term follows the caches' size: 197 entries for the bundled model (97 MiB
    # measured), more for a model whose parts hold more tokens.
    bf16 = own_engines["bfloat16"].footprint.kernels
    assert 97 * MIB <= bf16 < 110 * MIB
    assert footprint.kernel_bytes("bfloat16", 700) > 3 * bf16
    assert bf16 > footprint.kernel_bytes("float32", 197) > 0


def test_kernel_caches_are_sized_for_the_forwards_a_runner_can_run_and_no_larger(e5, monkeypatch):
    """A narrow feed-forward makes parts of many tokens (96 wide: 21,824): its forwards are
    still no larger than a batch, and the caches no larger than MAX_KERNEL_ENTRIES (the
    kernels term follows them)."""
    narrow = replace(e5, encoder=Encoder(replace(e5.encoder.cfg, intermediate_size=96)))
    sized = {}
    for budget in (8192, 512):
        for name in memory.KERNEL_CACHES:
            monkeypatch.delenv(name, raising=False)
        config = EngineConfig(dtype="bfloat16", max_batch_tokens=budget)
        sized[budget] = ModelRunner(narrow, config).kernel_entries
    assert sized[8192] == runner_module.MAX_KERNEL_ENTRIES
    # 512 tokens at most: 15 counts below 256 and 5 from there, five entries each, 32 spare.
    assert sized[512] == runner_module.kernel_cache_entries(512) == 5 * 20 + 32


def test_kernel_caches_an_operator_sized_stay_as_set_and_are_what_the_formula_counts(
    e5, monkeypatch
):
    """LRU_CACHE_CAPACITY and ONEDNN_PRIMITIVE_CACHE_CAPACITY set by the operator win (read
    by the libraries at their first bf16 product), and the kernels term counts them."""
    for name in memory.KERNEL_CACHES:
        monkeypatch.setenv(name, "7")
    runner = ModelRunner(e5, EngineConfig(dtype="bfloat16"))
    assert [os.environ[name] for name in memory.KERNEL_CACHES] == ["7", "7"]
    assert runner.kernel_entries == 7
    _, predicted = runner.sized(e5, EngineConfig(dtype="bfloat16"))
    assert predicted.kernels == footprint.kernel_bytes("bfloat16", 7)


def test_sizes_are_read_as_kubernetes_writes_them():
    assert parse_bytes("2Gi") == 2 * 2**30
    assert parse_bytes("1536Mi") == 1536 * 2**20
    assert parse_bytes("1.5G") == 1_500_000_000
    assert parse_bytes("800MB") == 800_000_000
    assert parse_bytes("123456") == 123456
    for bad in ("", "2 elephants", "-1Gi", "0", "Gi"):
        with pytest.raises(ValueError, match="expected a positive number"):
            parse_bytes(bad)
    with pytest.raises(ValueError, match="memory size '1 furlong'"):
        EngineConfig(max_memory="1 furlong")


def test_the_heaps_term_follows_the_allocator_settings_in_effect(monkeypatch):
    # What glibc may keep for reuse: per heap, the batch whose (N, I) block fits under its
    # mmap threshold. The environment's MALLOC_* variables win over ours, so they count.
    for name in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    per_token = {
        dtype: footprint.activation_bytes_per_token(384, 1536, dtype)
        for dtype in ("float32", "bfloat16")
    }
    ours = footprint.heap_bytes(1536, "bfloat16", per_token["bfloat16"], batch_tokens=8192)
    assert 20 * MIB < ours < 40 * MIB
    # The threshold follows the element size: the same batch stays in the heaps in fp32.
    fp32 = footprint.heap_bytes(1536, "float32", per_token["float32"], batch_tokens=8192)
    assert fp32 / per_token["float32"] == ours / per_token["bfloat16"]
    # No heap keeps more than a batch may hold.
    bf16 = per_token["bfloat16"]
    assert footprint.heap_bytes(1536, "bfloat16", bf16, batch_tokens=512) < ours / 2
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert footprint.heap_bytes(1536, "bfloat16", bf16, 8192) == 2 * ours
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(2 * MIB))
    assert footprint.heap_bytes(1536, "bfloat16", bf16, 8192) == pytest.approx(ours, rel=0.01)


def test_rows_split_into_parts_of_a_padded_budget_longest_first():
    lengths = [30, 500, 12, 64, 64, 700, 3, 250, 251]
    parts = split_rows(lengths, budget=512)
    assert sorted(i for part in parts for i in part) == list(range(len(lengths)))
    for part in parts:
        longest = max(lengths[i] for i in part)
        assert lengths[part[0]] == longest  # the first row sets the padding
        assert len(part) * longest <= 512 or len(part) == 1  # a longer row runs alone
    assert [len(part) for part in parts] == [1, 1, 2, 5]  # 700 | 500 | 251, 250 | the rest
    assert split_rows([], 512) == []


def test_a_cpu_runs_a_large_batch_in_parts_with_one_parts_activations_alive(e5):
    """A forward holds one part's activations whatever the batch, and the float32 rows of
    the parts run before (the formula's terms). The vectors, in each row's layer choice,
    are those of the batch run whole."""
    runner = ModelRunner(e5, EngineConfig(dtype="float32", warmup=False))
    part = runner.part_tokens
    hidden, ffn = e5.encoder.cfg.hidden_size, e5.encoder.cfg.intermediate_size
    per_token = footprint.activation_bytes_per_token(hidden, ffn, "float32")
    assert part >= 512
    rng = torch.Generator().manual_seed(0)
    rows = [torch.randint(5, 1000, (int(n),), generator=rng).tolist()
            for n in torch.randint(40, 200, (48,), generator=rng)]  # fmt: skip
    real = sum(map(len, rows))
    assert real > 3 * part

    def run(parts: int | None, layers: list) -> tuple[list, int]:
        runner.part_tokens = parts
        counter = LiveTensors()
        with counter:
            outputs = runner.run(rows, layers)
        return outputs, counter.peak

    last = [None] * len(rows)
    (_, peak), (_, whole_peak) = run(part, last), run(None, last)
    # Every row's output counted as waiting: more than the formula's earlier parts' rows.
    assert peak <= part * per_token + real * 4 * hidden < whole_peak / 2
    mixed = [None, (6, -1)] * 24  # layer choices alternate, so parts mix them
    in_parts, whole = run(part, mixed)[0], run(None, mixed)[0]
    for a, b in zip(in_parts, whole, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize(("hidden", "ffn"), [(384, 1536), (768, 3072)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_trim_threshold_is_at_least_one_parts_activations(hidden, ffn, dtype):
    """Above the trim threshold glibc hands a heap's free top back, and the next part
    faults it in again (43,000 faults a 3,600-token forward at 4 MiB, the docs): the
    threshold must hold a part's activations for both model shapes and dtypes."""
    element = 4 if dtype == "float32" else 2
    part = memory.part_tokens(ffn, element, 512)
    assert part * footprint.activation_bytes_per_token(hidden, ffn, dtype) <= memory.TRIM_THRESHOLD


class RecordingLibc:
    """glibc's mallopt, recorded instead of called."""

    def __init__(self) -> None:
        self.calls: dict[int, int] = {}

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls[parameter] = value
        return 1


@pytest.mark.parametrize(("dtype", "threshold"), [("float32", 8 * MIB), ("bfloat16", 4 * MIB)])
def test_the_runner_sets_the_mmap_threshold_for_its_dtype(e5, monkeypatch, dtype, threshold):
    """Under bf16 at fp32's 8 MiB, a full bulk batch's (N, C) blocks stayed in the heaps and
    the server's peak while indexing went from ~955 to ~1,080 MiB (the docs' memory page)."""
    libc = RecordingLibc()
    monkeypatch.setattr(memory, "_libc", lambda: libc)
    for name in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        monkeypatch.delenv(name, raising=False)
    ModelRunner(e5, EngineConfig(dtype=dtype))
    assert libc.calls[memory.M_MMAP_THRESHOLD] == threshold
    assert libc.calls[memory.M_ARENA_MAX] == 2
    # A variable the operator set wins: ours is not applied over it.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(MIB))
    libc.calls.clear()
    ModelRunner(e5, EngineConfig(dtype=dtype))
    assert memory.M_MMAP_THRESHOLD not in libc.calls


def test_the_kernel_caches_are_bounded_before_the_precision_probe(e5, monkeypatch):
    """ideep and oneDNN read their cache sizes at their first bf16 product, and `auto`'s
    probe is one. Bounded after it (as once built), they kept 1,024 entries each, and a
    bf16 server's RSS grew by over a third in two minutes of `make load`. Sized to hold
    the kernels of every token count a bf16 forward comes in (runner.kernel_cache_entries).
    """
    for name in memory.KERNEL_CACHES:
        monkeypatch.delenv(name, raising=False)
    seen: dict[str, str | None] = {}
    real_choose = runner_module.choose

    def probe(*args: object, **kwargs: object) -> object:
        seen.update({name: os.environ.get(name) for name in memory.KERNEL_CACHES})
        return real_choose(*args, **kwargs)

    monkeypatch.setattr(runner_module, "choose", probe)
    ModelRunner(e5, EngineConfig(dtype="auto"))
    # Room for the kernels of every token count of the parts a bf16 runner runs.
    bf16_parts = ModelRunner(e5, EngineConfig(dtype="bfloat16")).part_tokens
    entries = str(runner_module.kernel_cache_entries(bf16_parts))
    assert seen == dict.fromkeys(memory.KERNEL_CACHES, entries)


@pytest.fixture(scope="module")
def own_engines() -> Iterator[dict[str, Engine]]:
    """Engines that load the bundled model for themselves, as the server's do, at the
    default limits."""
    engines = {dtype: Engine(EngineConfig(dtype=dtype, warmup=False)) for dtype in DTYPES}
    yield engines
    for engine in engines.values():
        engine.close()


def test_a_bf16_engine_holds_the_linear_weights_of_its_own_model_once(e5, own_engines):
    """Under bf16 on a CPU the runner computes with bf16 Linear weights. An engine that loads
    its model for itself (the server's) once kept the fp32 ones beside them, used by nothing:
    81 MiB of the bundled model's 180 MiB of weights. Now it casts them in place, and the
    vectors are the same, bit for bit, as a runner's that copies them (a model in other use)."""
    fp32, bf16 = own_engines["float32"], own_engines["bfloat16"]
    linears = [m for m in bf16.model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype is torch.bfloat16 for m in linears)
    halved = sum(p.numel() * 2 for m in linears for p in m.parameters())
    assert bf16.footprint.weights == fp32.footprint.weights - halved
    texts = [t.ids for t in e5.tokenizer.encode_batch(["我喜欢吃苹果", "苹果手机很贵" * 9])]
    copying = ModelRunner(e5, EngineConfig(dtype="bfloat16"))
    for ours, copied in zip(bf16.runner.run(texts, [None, (6, -1)]),
                            copying.run(texts, [None, (6, -1)]), strict=True):  # fmt: skip
        np.testing.assert_array_equal(ours, copied)
    assert e5.encoder.layers[0].feed_forward.up.weight.dtype is torch.float32


def test_the_manifests_leave_30_percent_over_the_predicted_peak(own_engines):
    """The encoder's memory limit in the Kubernetes manifest and in Compose's scale profile is
    at least 30 % over the bundled model's predicted peak at the default limits (the larger
    dtype's), its request (reservation) and EMBEDSENSE_MAX_MEMORY at least that peak."""
    peak = max(engine.footprint.peak for engine in own_engines.values())
    manifest = yaml.safe_load_all((DOCKER / "k8s" / "encoder.yaml").read_text())
    deployment = next(doc for doc in manifest if doc["kind"] == "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    (pod,) = [container for container in containers if container["name"] == "encoder"]
    env = {v["name"]: v.get("value") for v in pod["env"]}
    resources = pod["resources"]
    assert parse_bytes(resources["limits"]["memory"]) >= 1.3 * peak
    assert parse_bytes(resources["requests"]["memory"]) >= peak
    assert parse_bytes(env["EMBEDSENSE_MAX_MEMORY"]) >= peak
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]["encoder"]
    docker_size = lambda text: int(text.removesuffix("m")) * MIB  # noqa: E731 (Docker's m: MiB)
    assert docker_size(compose["mem_limit"]) >= 1.3 * peak
    assert docker_size(compose["mem_reservation"]) >= peak
    assert parse_bytes(compose["environment"]["EMBEDSENSE_MAX_MEMORY"]) >= peak


def test_the_engine_hands_back_what_loading_left_free_before_it_serves(e5, monkeypatch):
    """A bf16 server idled at 752 MiB until its first trim under load, 661 MiB after it: the
    fp32 Linear weights it cast, freed into the heaps. Its predicted peak counts them gone."""
    trims: list[bool] = []
    monkeypatch.setattr(memory.HeapTrimmer, "trim", lambda self: trims.append(True))
    engine = Engine(EngineConfig(dtype="float32"), e5)
    assert not trims
    engine.start()
    try:
        assert trims
    finally:
        engine.close()


class TrimmerOnAClock:
    """A HeapTrimmer with a ceiling of 800 MiB, on a fake clock (from 100 s) and a fake RSS;
    the times it trimmed and read the RSS."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, rss_mib: int) -> None:
        self.clock, self.rss = 100.0, rss_mib * MIB
        self.trims: list[float] = []
        self.reads: list[float] = []
        monkeypatch.setattr(memory.time, "monotonic", lambda: self.clock)
        monkeypatch.setattr(memory, "resident_bytes", self._read)
        self.trimmer = memory.HeapTrimmer(ceiling=800 * MIB)
        self.trimmer._trim = lambda pad: self.trims.append(self.clock)

    def _read(self) -> int:
        self.reads.append(self.clock)
        return self.rss

    def forwards(self, steps: range, apart_s: float = 0.1, refill_mib: int = 0) -> None:
        """A forward, then maybe_trim, at every step (`apart_s` apart), each refilling the
        heaps by `refill_mib`."""
        for step in steps:
            self.clock = 100.0 + step * apart_s
            self.trimmer.maybe_trim()
            self.rss += refill_mib * MIB


def test_above_its_predicted_peak_the_server_trims_after_a_forward_not_two_seconds_on(
    monkeypatch,
):
    """Between two trims (every 2 s) a busy bf16 server's heaps refilled with free memory to
    21 % over the predicted peak in a 600 s `make load`. Above that peak the trimmer acts after
    the next forward, at most every quarter second; below it, every 2 s as before."""
    t = TrimmerOnAClock(monkeypatch, rss_mib=500)
    t.forwards(range(1, 41))  # forwards 0.1 s apart, over 4 s
    assert t.trims == pytest.approx([102.0, 104.0])
    t.rss = 900 * MIB

    def trim_heaps(pad: int) -> None:  # a trim hands the heaps' free memory back
        t.trims.append(t.clock)
        t.rss = 750 * MIB

    t.trimmer._trim = trim_heaps
    t.forwards(range(41, 61), refill_mib=50)  # the next 2 s, the heaps refilling
    assert t.trims[2:] == pytest.approx([104.3, 104.6, 104.9, 105.2, 105.5, 105.8])


def test_held_over_its_predicted_peak_by_what_a_trim_cannot_free_the_server_trims_every_2_s(
    monkeypatch,
):
    """The prediction leaves out a faiss index in the server: a large one holds the RSS over
    it, and no trim brings the RSS under. Trimming after every forward then costs for
    nothing (a trim after every batch: 10 % fewer texts/s in process, bf16 on 2 cores). Once
    a trim leaves the RSS over the ceiling, the trimmer keeps to every 2 s, until the RSS is
    under the ceiling again."""
    t = TrimmerOnAClock(monkeypatch, rss_mib=1200)  # an index's memory: no trim frees it
    t.forwards(range(1, 61))  # forwards 0.1 s apart, over 6 s
    assert t.trims == pytest.approx([100.3, 102.3, 104.3])
    t.rss = 700 * MIB  # the index dropped: under the ceiling, the quick trims come back
    t.forwards(range(61, 66))
    t.rss = 900 * MIB
    t.forwards(range(66, 70))
    assert t.trims[3:] == pytest.approx([106.3, 106.6])  # every 2 s, then soon once over again


def test_below_its_predicted_peak_the_trimmer_reads_the_rss_at_most_every_quarter_second(
    monkeypatch,
):
    """Reading the RSS opens /proc/self/statm: after every forward, a quarter of the worker
    thread's time around a model that costs nothing (the front-end benchmark's stand-in)."""
    t = TrimmerOnAClock(monkeypatch, rss_mib=500)
    t.forwards(range(1, 191), apart_s=0.01)  # forwards 10 ms apart, over 1.9 s: no trim due
    assert not t.trims
    assert 7 <= len(t.reads) <= 8
    assert min(np.diff(t.reads)) >= 0.25 - 1e-9


def test_the_engine_trims_against_its_predicted_peak(e5):
    """On a CPU, where the prediction is host memory."""
    engine = Engine(EngineConfig(dtype="float32", warmup=False), e5)
    assert engine._trimmer.ceiling == engine.footprint.peak


def predicted(**limits: int) -> Footprint:
    base = dict(runtime=300 * MIB, tokenizer=200 * MIB, weights=140 * MIB, per_token=18 * 1024)
    return Footprint(**{**base, "batch_tokens": 8192, "queued_tokens": 262_144, **limits})


def test_fit_lowers_the_limits_until_the_peak_fits():
    config = EngineConfig(max_memory="720Mi")
    fitted = footprint.fit(config, predicted(), max_tokens=512)
    assert 512 <= fitted.max_batch_tokens < config.max_batch_tokens
    assert fitted.max_queued_tokens < config.max_queued_tokens
    refit = predicted(batch_tokens=fitted.max_batch_tokens,
                      queued_tokens=fitted.max_queued_tokens)  # fmt: skip
    assert refit.peak <= 720 * MIB
    roomy = EngineConfig(max_memory="4Gi")
    assert footprint.fit(roomy, predicted(), max_tokens=512) == roomy
    assert footprint.fit(EngineConfig(), predicted(), max_tokens=512) == EngineConfig()


def test_fit_lowers_an_explicit_bulk_share_with_the_queue():
    """max_queued_bulk_tokens set by the operator, above the fitted queue: it was refused at
    start ("must be ... at most max_queued_tokens") before the clamp meant for it ran."""
    config = EngineConfig(max_memory="720Mi", max_queued_bulk_tokens=200_000)
    fitted = footprint.fit(config, predicted(), max_tokens=512)
    assert fitted.max_queued_tokens < 200_000
    assert fitted.max_queued_bulk_tokens == fitted.max_queued_tokens
    kept = footprint.fit(replace(config, max_queued_bulk_tokens=1024), predicted(), 512)
    assert kept.max_queued_bulk_tokens == 1024


def test_fit_steps_down_to_one_full_length_text_from_any_budget():
    # 1000 tokens, not a multiple of the 256-token step: 768 does not fit, then one
    # full-length text (512), which fits (with the query lane's 512 tokens beside it).
    config = EngineConfig(max_batch_tokens=1000, max_memory="660Mi")
    fitted = footprint.fit(config, predicted(batch_tokens=1000), max_tokens=512)
    assert fitted.max_batch_tokens == 512
    lane = fitted.query_lane_tokens(512)
    refit = predicted(batch_tokens=512, queued_tokens=fitted.max_queued_tokens, lane_tokens=lane)
    assert refit.peak <= 660 * MIB


def test_fit_keeps_the_largest_budget_that_fits_when_batches_run_in_parts():
    """Run in parts, a budget above a part costs only its queue and its rows' outputs: the
    fitted budget is the largest multiple of the step that fits, not the budget at which
    the whole batch's activations would."""
    parts = predicted(part_tokens=1344, output_per_token=1536)
    assert "in parts of 1344" in parts.describe()
    config = EngineConfig(max_memory="700Mi")
    fitted = footprint.fit(config, parts, max_tokens=512)

    def peak(tokens: int) -> int:
        limits = replace(config, max_batch_tokens=tokens, max_queued_tokens=8 * tokens)
        lane = limits.query_lane_tokens(512)
        return replace(parts, batch_tokens=tokens, queued_tokens=8 * tokens,
                       lane_tokens=lane).peak  # fmt: skip

    tokens = fitted.max_batch_tokens
    assert 1344 < tokens < config.max_batch_tokens
    assert peak(tokens) <= 700 * MIB < peak(tokens + 256)


def test_fit_refuses_a_size_the_model_alone_does_not_fit_and_says_what_would():
    with pytest.raises(ValueError, match=r"max_memory 600Mi .* take 640 MiB.* at least \d+ MiB"):
        footprint.fit(EngineConfig(max_memory="600Mi"), predicted(), max_tokens=512)


def started_peak(e5, tmp_path, caplog, **engine: object) -> tuple[int, ServerThread]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="embedsense.server.engine"):
        running = ServerThread(
            e5, tmp_path, engine=EngineConfig(dtype="float32", warmup=False, **engine)
        )
    found = [PEAK.search(r.getMessage()) for r in caplog.records]
    peaks = [int(m.group(1)) for m in found if m]
    assert len(peaks) == 1, [r.getMessage() for r in caplog.records]
    return peaks[0], running


def test_the_startup_log_states_the_predicted_peak_and_it_rises_with_the_batch_budget(
    e5, tmp_path, caplog
):
    peaks = []
    for tokens in (1024, 16384):
        peak, running = started_peak(e5, tmp_path / str(tokens), caplog, max_batch_tokens=tokens)
        running.stop()
        peaks.append(peak)
    # The batch runs in parts: a forward holds a part's tokens (from 1024), and the query
    # lane's beside it grows from one full-length text (512) to an eighth of the batch
    # (2048) but also to one part, at the bundled model's fp32 bytes per token; heaps keep
    # a part's activations rather than a 1024-token batch's; the float32 rows of the parts
    # run first wait for the last
    part = memory.part_tokens(1536, 4, 512)
    assert 1024 < part < 2048
    per_token = footprint.activation_bytes_per_token(384, 1536, "float32")
    heaps = [footprint.heap_bytes(1536, "float32", per_token, n) for n in (1024, part)]
    assert heaps[1] > heaps[0]
    rows = (16384 + 2048 - 2 * part) * 4 * 384
    more = (part + part - 1024 - 512) * per_token + heaps[1] - heaps[0] + rows
    assert peaks[1] - peaks[0] == pytest.approx(more / MIB, abs=1)


def test_max_memory_lowers_the_limits_the_server_runs_with(e5, tmp_path, caplog):
    default_peak, running = started_peak(e5, tmp_path / "default", caplog)
    running.stop()
    limit = default_peak - 60  # MiB: room for fewer batch and queued tokens
    peak, running = started_peak(e5, tmp_path / "fitted", caplog, max_memory=f"{limit}Mi")
    try:
        info = running.server.engine.info()
        assert info.max_batch_tokens < EngineConfig().max_batch_tokens
        assert info.max_queued_tokens < EngineConfig().max_queued_tokens
        assert peak <= limit
    finally:
        running.stop()


def test_a_max_memory_the_model_cannot_fit_stops_the_start_with_what_it_needs(e5, tmp_path):
    with pytest.raises(ValueError, match=r"max_memory 300Mi .* too small .* at least \d+ MiB"):
        ServerThread(e5, tmp_path, engine=EngineConfig(dtype="float32", max_memory="300Mi"))


def test_max_memory_comes_from_the_flag_or_the_environment():
    assert parser().parse_args(["--max-memory", "2Gi"]).max_memory == "2Gi"
    settings = ServerSettings.from_env({"EMBEDSENSE_MAX_MEMORY": "1536Mi"})
    assert settings.engine.max_memory == "1536Mi"
    with pytest.raises(ValueError, match="memory size 'lots'"):
        ServerSettings.from_env({"EMBEDSENSE_MAX_MEMORY": "lots"})
