"""A stand-in model for benchmarks only: the real server with a forward that costs nothing.

`ModelRunner.run` is replaced by one that returns, for every row, a slice of one fixed
(max_tokens, dim) float32 array at once: the same shapes and dtype as the real forward, so
everything around the model (gRPC, parsing, admission, tokenizing, batching, pooling,
building replies) runs as it does in production, and a benchmark against it measures the
front end's own capacity. Run it like `embedsense-server`, with the same flags and
EMBEDSENSE_* variables:

    python tests/bench/standin.py --host 127.0.0.1 --port 50051 --data-dir /tmp/x

The engine groups concurrent small requests' tokenizing off the event loop
(EngineConfig.tokenize_batch on, whatever the device); with EMBEDSENSE_STANDIN_PATH=today
it takes each request's texts to the tokenizer on the loop on its own, as before: the
benchmark runs both side by side. With EMBEDSENSE_STANDIN_PROFILE=path,
the process writes a cProfile of its main thread to `path` when it stops (SIGTERM). With
EMBEDSENSE_STANDIN_STATS=path, SIGUSR1 writes there (JSON) the CPU seconds spent so far, in
whatever thread, tokenizing (`Tokenizer.encode_batch`) and assembling results
(`Engine._assemble_all`: pooling, normalizing): the benchmark's split of the host cost.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from embedsense.model import LoadedModel
from embedsense.model.tokenizer import Tokenizer
from embedsense.server.config import EngineConfig
from embedsense.server.engine import Engine
from embedsense.server.runner import Layers, ModelRunner


def standin_run(
    self: ModelRunner,
    sequences: Sequence[Sequence[int]],
    layers: Sequence[Layers],
    on_part: Callable[[list[int], list[np.ndarray]], None] | None = None,
) -> list[np.ndarray]:
    """What ModelRunner.run returns (len_i, C) float32 per row, without computing: in one
    part, as on a GPU."""
    table = self._standin_table
    outputs = [table[: len(seq)] for seq in sequences]
    if on_part is not None:
        on_part(list(range(len(sequences))), outputs)
    return outputs


def install(today: bool = False) -> None:
    """Every ModelRunner made from now on in this process is a stand-in, and every Engine
    groups small requests' tokenizing (tokenize_batch on), or with `today` does not."""
    # Either path whatever the device (auto groups only on a GPU): the benchmark compares.
    real_engine_init = Engine.__init__

    def engine_init(
        self: Engine, config: EngineConfig | None = None, model=None, **options: bool
    ) -> None:
        config = dataclasses.replace(config or EngineConfig(), tokenize_batch=not today)
        real_engine_init(self, config, model, **options)

    Engine.__init__ = engine_init  # type: ignore[method-assign]
    real_init = ModelRunner.__init__

    def init(self: ModelRunner, loaded: LoadedModel, config: EngineConfig, **options: bool) -> None:
        real_init(self, loaded, config, **options)
        # Rows are sliced from one table: long enough for the longest row, random so that
        # pooling and normalizing do the work they do on real vectors.
        shape = (loaded.tokenizer.max_tokens, loaded.dim)
        self._standin_table = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    ModelRunner.__init__ = init  # type: ignore[method-assign]
    ModelRunner.run = standin_run  # type: ignore[method-assign]


def count_cpu(owner: type, name: str, counters: dict[str, float], label: str) -> None:
    """Add the thread CPU time of every `owner.name(...)` call to counters[label]."""
    real = getattr(owner, name)

    @functools.wraps(real)
    def timed(*args: object, **kwargs: object) -> object:
        start = time.thread_time()
        try:
            return real(*args, **kwargs)
        finally:
            counters[label] += time.thread_time() - start  # one += under the GIL: no lock

    setattr(owner, name, timed)


def report_on_signal(path: str) -> None:
    counters = {"tokenize": 0.0, "assemble": 0.0}
    count_cpu(Tokenizer, "encode_batch", counters, "tokenize")
    count_cpu(Engine, "_assemble_all", counters, "assemble")

    def dump(*_: object) -> None:
        Path(path).write_text(json.dumps(counters))

    signal.signal(signal.SIGUSR1, dump)


def main(argv: Sequence[str] | None = None) -> int:
    install(today=os.environ.get("EMBEDSENSE_STANDIN_PATH") == "today")
    if os.environ.get("EMBEDSENSE_STANDIN_STATS"):
        report_on_signal(os.environ["EMBEDSENSE_STANDIN_STATS"])
    from embedsense.server import cli

    profile_to = os.environ.get("EMBEDSENSE_STANDIN_PROFILE")
    if not profile_to:
        return cli.main(argv)
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(cli.main, argv)
    finally:
        profiler.dump_stats(profile_to)


if __name__ == "__main__":
    sys.exit(main())
