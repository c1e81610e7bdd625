"""The data operations through the surfaces a user calls: a collection of caller vectors
(random unit vectors, so no embedding cost) loaded over gRPC, then, through a real server
(its own process, on 127.0.0.1):

1. scroll: every document through `Client.scroll` (pages of 1,000 and 5,000), documents/s;
   with vectors too;
2. export: `embedsense docs export` (the CLI, in-process main(), pages of 5,000, to a
   file), documents/s;
3. count and delete by filter: 10 % of the documents by a filter on one field;
4. batch search: 64 query vectors in one SearchBatch call vs 64 Search calls.
Last line: one JSON object.

    python tests/bench/bench_data_ops.py [--docs 100000] [--dim 384]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ops.serverproc import ServerProcess  # noqa: E402  (tests/ops/serverproc.py)

from embedsense.client import Client  # noqa: E402
from embedsense.client.cli import main as cli_main  # noqa: E402


def timed(work: object) -> tuple[object, float]:
    started = time.perf_counter()
    result = work()  # type: ignore[operator]
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    args = parser.parse_args()
    n = args.docs
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, args.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    figures: dict[str, object] = {"docs": n, "dim": args.dim}
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "data", None, "--threads", "2")
        server.start()
        try:
            with Client(server.target, timeout=600) as c:
                if args.dim != c.info().dim:
                    raise SystemExit(f"--dim must be the served model's ({c.info().dim})")
                c.create_collection("bench")
                docs = [
                    {"id": f"{i:07d}", "text": f"doc {i}", "metadata": {"bucket": i % 10}}
                    for i in range(n)
                ]
                _, load_s = timed(lambda: c.upsert("bench", docs, batch_size=2000, vectors=vectors))
                figures["load_docs_per_s"] = round(n / load_s)
                for size in (1000, 5000):
                    count, s = timed(
                        lambda size=size: sum(1 for _ in c.scroll("bench", batch_size=size))
                    )
                    assert count == n
                    figures[f"scroll_{size}_docs_per_s"] = round(n / s)
                count, s = timed(
                    lambda: sum(1 for _ in c.scroll("bench", batch_size=5000, with_vectors=True))
                )
                figures["scroll_with_vectors_docs_per_s"] = round(n / s)
                out = Path(tmp) / "export.jsonl"
                argv = [
                    "--target",
                    server.target,
                    "docs",
                    "export",
                    "bench",
                    "--out",
                    str(out),
                    "--batch-size",
                    "5000",
                ]
                with contextlib.redirect_stdout(io.StringIO()):
                    status, s = timed(lambda: cli_main(argv))
                assert status == 0 and sum(1 for _ in out.open()) == n
                figures["export_docs_per_s"] = round(n / s)
                where = {"bucket": 3}
                counted, s = timed(lambda: c.count("bench", filter=where))
                figures["count_10pct_s"] = round(s, 3)
                deleted, s = timed(lambda: c.delete("bench", filter=where))
                assert counted == deleted == n // 10
                figures["delete_10pct_s"] = round(s, 3)
                queries = vectors[:64]
                _, batch_s = timed(lambda: c.search("bench", queries, k=10))
                _, single_s = timed(lambda: [c.search("bench", q, k=10) for q in queries])
                figures["search_64_batch_s"] = round(batch_s, 3)
                figures["search_64_single_s"] = round(single_s, 3)
        finally:
            server.stop()
    for key, value in figures.items():
        print(f"{key:>32}: {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
