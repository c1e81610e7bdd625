"""The index tier: the faiss backend, the milvus backend on milvus-lite and on a real Milvus,
and 1 vs 2 encoder replicas.

Part 1, the backends through the same interface the service uses (server/index/backend.py),
on N clustered unit vectors (bench_index.py's data set) with a `bucket` field that a 10 %
filter selects: upsert throughput, then, once each collection says it is optimized
(wait_until_optimized: faiss's background work; Milvus's flush, index build, segments merged
and loaded), for HNSW32 at several ef_search values, recall@10 against exact search and
queries/s with p50/p99 latency (one query per call, as the service makes them), unfiltered
and filtered; at the fastest ef that reaches recall 0.95, faiss and the real Milvus again
with --callers threads calling at once (the throughput many callers get, where one caller's
q/s is 1 / its latency), and for Milvus the same again with each search one Milvus call (the
baseline: concurrent searches not merged, server/index/milvus/coalesce.py). The milvus
backend talks to a milvus-lite server (Milvus rewritten in Python) and to a real Milvus
standalone from PyPI's `milvus` wheel (tests/ops/milvus_standalone.py), both separate
processes on 127.0.0.1 reached over gRPC (the standalone's relay into its network namespace
adds nothing measurable: 2.4-2.9 ms per search through it or from inside, same run), or with
--milvus-uri to a Milvus of yours.
milvus-lite is slow: it answers only the first --lite-queries queries, at three ef values.

Part 2 (--service), the service: 32 concurrent callers embedding Chinese texts through one
client that knows every replica, with 1 and then 2 encoder servers over one milvus-lite server.

Part 3 (--data-ops), issue 26's operations on each backend: filtered search whose filter is
an `$or` over two fields against a one-field filter, both keeping 10 % of the documents
(queries/s and recall@10 at each ef_search: `cached` repeats the filter, as the faiss backend
caches its matches between writes; `fresh`, on --fresh-queries queries, evaluates it for every
query), count by filter,
scroll through every document (10,000 a page, without and with vectors), and delete 10 % by
filter.

Last line: one JSON object.

    python tests/bench/bench_backends.py [--n 100000] [--dim 384] [--queries 100] [--callers 8]
        [--backends faiss milvus-lite milvus] [--milvus-uri URI] [--service]
        [--milvus-search-calls 2] [--sweep-callers 1 2 4 8 16]
    python tests/bench/bench_backends.py --data-ops --backends faiss [--spec HNSW32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_index import dataset  # noqa: E402
from ops.serverproc import MilvusLiteServer, MilvusStandalone, ServerProcess  # noqa: E402
from workload import chinese_texts, concurrent_callers  # noqa: E402

from embedsense.client import AsyncClient  # noqa: E402
from embedsense.server.index import BackendSettings, Document, open_backend  # noqa: E402
from embedsense.server.index.backend import MILVUS_SEARCH_CALLS  # noqa: E402

EF_VALUES = (64, 128, 256)  # milvus-lite's (seconds a filtered query)
# faiss's and Milvus's, fine enough that each is compared at about its cheapest setting that
# reaches recall 0.95: on 100,000 vectors Milvus (one graph, efConstruction 200) reaches it
# near ef 32 and faiss (efConstruction 40) near ef 112.
FINE_EF_VALUES = (16, 32, 48, 64, 96, 128, 192, 256)
# Part 1 goes on past them until a backend reaches recall 0.95 (the backends are compared
# where each first does): on the clustered set faiss's HNSW32 needs more than ef 256 at
# 50,000 vectors unfiltered.
MORE_EF_VALUES = (512, 1024)
RECALL_TARGET = 0.95
WHERE = {"bucket": 3}  # 10 % of the documents


def recall_at_10(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


def exact(vectors: np.ndarray, queries: np.ndarray, mask: np.ndarray | None) -> list[list[str]]:
    scores = queries @ vectors.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    return [[f"d{i}" for i in np.argsort(-row, kind="stable")[:10]] for row in scores]


def rate(seconds: float, latencies: list[float]) -> dict:
    """Calls per second over `seconds`, and the calls' latency percentiles."""
    ms = np.array(latencies) * 1000
    return {
        "qps": round(len(latencies) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def searching(collection, where, ef):
    """One search as the benchmark makes it: k = 10, ids only."""
    return lambda query: collection.search(
        query, k=10, where=where, ef_search=ef, with_documents=False
    )


def timed_calls(queries, call) -> tuple[dict, list]:
    """`call(query)` once per query, one at a time: q/s and latency percentiles, and the
    results in order."""
    latencies, results = [], []
    for query in queries:
        started = time.perf_counter()
        results.append(call(query))
        latencies.append(time.perf_counter() - started)
    return rate(sum(latencies), latencies), results


def concurrent_calls(collection, queries, where, ef, callers: int, passes: int = 5) -> dict:
    """Queries/s with `callers` threads, each making one call at a time, as a server's
    concurrent requests do (every query `passes` times): the throughput a backend gives many
    callers, where one caller's q/s is 1 / its latency. Latency percentiles per call."""

    search = searching(collection, where, ef)

    def call(query: np.ndarray) -> float:
        started = time.perf_counter()
        search(query)
        return time.perf_counter() - started

    work = [q for _ in range(passes) for q in queries]
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(call, queries[:callers]))  # every thread started and warm
        started = time.perf_counter()
        latencies = list(pool.map(call, work))
        wall = time.perf_counter() - started
    return {"ef_search": ef, "callers": callers, **rate(wall, latencies)}


def one_call_each(collection, queries, where, ef, callers: int) -> dict:
    """concurrent_calls() with the milvus backend's searches not merged: one Milvus call per
    search, the baseline merging (server/index/milvus/coalesce.py) is measured against."""
    collection.coalesce_searches = False
    try:
        return concurrent_calls(collection, queries, where, ef, callers)
    finally:
        collection.coalesce_searches = True


def measure(collection, queries, truth, where, ef) -> dict:
    timing, hits = timed_calls(queries, searching(collection, where, ef))
    found = [[h.id for h in hit[0]] for hit in hits]
    return {"ef_search": ef, "recall_at_10": round(recall_at_10(found, truth), 4), **timing}


def raw_pymilvus(uri: str, collection, queries, ef: int) -> dict:
    """The baseline under the milvus backend: pymilvus's MilvusClient.search on the same
    collection with the same parameters (unfiltered, ids only), one query per call. What
    the backend adds is the difference; the rest is the round trip into Milvus."""
    from pymilvus import MilvusClient

    from embedsense.server.index.milvus.schema import METRICS

    client = MilvusClient(uri=uri)
    params = {"metric_type": METRICS[collection.row.metric], "params": {"ef": ef}}
    try:
        timing, _ = timed_calls(queries, lambda query: client.search(
            collection.layout.docs, data=[query.tolist()], limit=10, output_fields=["id"],
            search_params=params, consistency_level="Bounded"))  # fmt: skip
    finally:
        client.close()
    return {"ef_search": ef, **timing}


def bench_backend(
    name: str,
    settings: BackendSettings,
    vectors,
    queries,
    truths,
    callers: int = 0,
    ef_values: tuple[int, ...] = FINE_EF_VALUES,
    sweep: tuple[int, ...] = (),
) -> dict:
    backend = open_backend(settings)
    # A name of its own: the Milvus may be the caller's (--milvus-uri), with a "bench" of its own.
    name_in_index = f"bench_{secrets.token_hex(4)}"
    created = False
    try:
        backend.create(name_in_index, model="bench", dim=vectors.shape[1], index_spec="HNSW32")
        created = True
        collection = backend.get(name_in_index)
        started = time.perf_counter()
        for start in range(0, len(vectors), 1000):
            collection.upsert([
                Document(text="", vector=vectors[i], id=f"d{i}", metadata={"bucket": i % 10})
                for i in range(start, min(start + 1000, len(vectors)))
            ])  # fmt: skip
        upsert_s = time.perf_counter() - started
        started = time.perf_counter()
        collection.wait_until_optimized()
        optimize_s = time.perf_counter() - started
        row: dict = {
            "upsert_docs_per_s": round(len(vectors) / upsert_s, 1),
            "optimize_s": round(optimize_s, 1),
        }
        for label, where in (("unfiltered", None), ("filtered_10pct", WHERE)):
            row[label] = []
            for ef in [*ef_values, *MORE_EF_VALUES]:
                if ef not in ef_values and at_equal_recall(row[label]):
                    break  # reached: larger ef only costs time (milvus-lite: seconds a query)
                row[label].append(measure(collection, queries, truths[label], where, ef))
            for r in row[label]:
                print(f"{name:<11} {label:<15} ef {r['ef_search']:>4}  recall@10 "
                      f"{r['recall_at_10']:.3f}  {r['qps']:>7.1f} q/s  p50 {r['p50_ms']:>6.2f} "
                      f"ms  p99 {r['p99_ms']:>6.2f} ms")  # fmt: skip
            reached = at_equal_recall(row[label])
            if callers and reached:  # many callers at once, at the ef that reaches the target
                c = concurrent_calls(collection, queries, where, reached["ef_search"], callers)
                row[f"{label}_concurrent"] = c
                print(f"{name:<11} {label:<15} ef {c['ef_search']:>4}  {callers} callers at "
                      f"once         {c['qps']:>7.1f} q/s  p50 {c['p50_ms']:>6.2f} ms  p99 "
                      f"{c['p99_ms']:>6.2f} ms")  # fmt: skip
                if hasattr(collection, "coalesce_searches"):  # Milvus: the same, one call each
                    c = one_call_each(collection, queries, where, reached["ef_search"], callers)
                    row[f"{label}_concurrent_one_call_each"] = c
                    print(f"{name:<11} {label:<15} ef {c['ef_search']:>4}  {callers} callers, "
                          f"a call each {c['qps']:>7.1f} q/s  p50 {c['p50_ms']:>6.2f} ms  p99 "
                          f"{c['p99_ms']:>6.2f} ms  (baseline: not merged)")  # fmt: skip
            if sweep and reached and hasattr(collection, "coalesce_searches"):
                row[f"{label}_callers_sweep"] = []
                for n in sweep:  # merged against one call each, at each number of callers
                    merged = concurrent_calls(collection, queries, where, reached["ef_search"], n)
                    alone = one_call_each(collection, queries, where, reached["ef_search"], n)
                    row[f"{label}_callers_sweep"].append({"merged": merged, "one_call_each": alone})
                    print(f"{name:<11} {label:<15} ef {merged['ef_search']:>4}  {n:>2} callers: "
                          f"merged {merged['qps']:>7.1f} q/s (p50 {merged['p50_ms']:.2f} ms), "
                          f"a call each {alone['qps']:>7.1f} q/s "
                          f"(p50 {alone['p50_ms']:.2f} ms)")  # fmt: skip
        if name == "milvus":  # a real Milvus: what pymilvus alone gets from it, same run
            row["raw_pymilvus_unfiltered"] = [
                raw_pymilvus(settings.milvus_uri, collection, queries, r["ef_search"])
                for r in row["unfiltered"]
            ]
            for r in row["raw_pymilvus_unfiltered"]:
                print(f"{'pymilvus':<11} {'unfiltered':<15} ef {r['ef_search']:>4}  (the same "
                      f"collection, MilvusClient.search alone)  {r['qps']:>7.1f} q/s  p50 "
                      f"{r['p50_ms']:>6.2f} ms")  # fmt: skip
        print(
            f"{name:<11} upsert {row['upsert_docs_per_s']:.0f} documents/s, then "
            f"{optimize_s:.1f} s until optimized"
        )
        return row
    finally:
        try:
            if created:  # also when the run failed: a Milvus of the caller's keeps no leftovers
                backend.drop(name_in_index)
        except Exception as err:  # said, not raised: where the run failed, its error is the one
            print(f"could not drop the collection {name_in_index!r}: {err}", file=sys.stderr)
        finally:
            backend.close()


# Part 3: two filters of the same selectivity (10 %), one field against an $or of two.
ONE_FIELD = {"bucket": 3}  # i % 10 == 3
TWO_FIELD_OR = {"$or": [{"a": 6}, {"b": 0}]}  # i % 20 == 6, or (i + 7) % 20 == 0: i % 20 == 13


def ops_metadata(i: int) -> dict:
    return {"bucket": i % 10, "a": i % 20, "b": (i + 7) % 20}


def ops_masks(n: int) -> dict[str, np.ndarray]:
    i = np.arange(n)
    return {"one_field": i % 10 == 3, "or_two_fields": (i % 20 == 6) | (i % 20 == 13)}


def bench_data_ops(
    name: str, settings: BackendSettings, vectors, queries, spec: str, fresh_queries: int
) -> dict:
    n = len(vectors)
    backend = open_backend(settings)
    try:
        backend.create("ops", model="bench", dim=vectors.shape[1], index_spec=spec)
        collection = backend.get("ops")
        for start in range(0, n, 2000):
            collection.upsert([
                Document(text=f"text {i}", vector=vectors[i], id=f"d{i:07d}",
                         metadata=ops_metadata(i))
                for i in range(start, min(start + 2000, n))
            ])  # fmt: skip
        collection.wait_until_optimized()
        row: dict = {"spec": spec}
        masks = ops_masks(n)
        for label, where in (("one_field", ONE_FIELD), ("or_two_fields", TWO_FIELD_OR)):
            truth = [[f"d{int(h[1:]):07d}" for h in t]
                     for t in exact(vectors, queries, masks[label])]  # fmt: skip
            started = time.perf_counter()
            matching = collection.count(where)
            row[f"count_{label}_s"] = round(time.perf_counter() - started, 3)
            assert matching == int(masks[label].sum()), (label, matching)
            for mode in ("cached", "fresh"):
                results = []
                for ef in EF_VALUES:
                    if mode == "fresh" and hasattr(collection, "_filters"):
                        few = slice(0, fresh_queries)
                        results.append(
                            fresh_filter(collection, queries[few], truth[few], where, ef)
                        )
                    elif mode == "cached":
                        results.append(measure(collection, queries, truth, where, ef))
                if results:
                    row[f"{label}_{mode}"] = results
                for r in results:
                    print(f"{name:<11} {label:<14} {mode:<6} ef {r['ef_search']:>4}  recall@10 "
                          f"{r['recall_at_10']:.3f}  {r['qps']:>7.1f} q/s  p50 "
                          f"{r['p50_ms']:>6.2f} ms")  # fmt: skip
        for mode in ("cached", "fresh"):
            one, two = row.get(f"one_field_{mode}"), row.get(f"or_two_fields_{mode}")
            if one and two:
                ratios = [round(b["qps"] / a["qps"], 2) for a, b in zip(one, two, strict=True)]
                row[f"or_over_one_field_qps_{mode}"] = ratios
                print(f"{name:<11} $or / one-field q/s ({mode}), ef {EF_VALUES}: {ratios}")
        for with_vectors in (False, True):
            started, seen, after = time.perf_counter(), 0, None
            while True:
                page, after = collection.scroll(None, 10_000, after, with_vectors=with_vectors)
                seen += len(page)
                if after is None:
                    break
            rate = seen / (time.perf_counter() - started)
            assert seen == n, seen
            key = "scroll_docs_per_s" + ("_with_vectors" if with_vectors else "")
            row[key] = round(rate, 1)
            print(f"{name:<11} scroll{' with vectors' if with_vectors else ''}: {rate:,.0f} "
                  "documents/s")  # fmt: skip
        started = time.perf_counter()
        deleted = collection.delete_where({"bucket": 7})
        row["delete_10pct_s"] = round(time.perf_counter() - started, 2)
        assert deleted == n // 10 and collection.count() == n - deleted, deleted
        print(f"{name:<11} delete 10 % by filter ({deleted:,} documents): "
              f"{row['delete_10pct_s']:.2f} s")  # fmt: skip
        backend.drop("ops")
        return row
    finally:
        backend.close()


def fresh_filter(collection, queries, truth, where, ef) -> dict:
    """measure() with the faiss backend's filter cache emptied before every query: the
    filter is evaluated over every document's metadata each time."""
    search = searching(collection, where, ef)
    latencies, found = [], []
    for query in queries:
        collection._filters.clear()
        started = time.perf_counter()
        hits = search(query)
        latencies.append(time.perf_counter() - started)
        found.append([h.id for h in hits[0]])
    recall = round(recall_at_10(found, truth), 4)
    return {"ef_search": ef, "recall_at_10": recall, **rate(sum(latencies), latencies)}


def data_ops(args, vectors, queries, root: Path) -> dict:
    result: dict = {"n": args.n, "dim": args.dim, "queries": len(queries)}
    for name in args.backends:
        if name == "faiss":
            settings, server = BackendSettings("faiss", root / "faiss"), None
        elif name == "milvus-lite":
            server = MilvusLiteServer(root / "milvus-lite")
            settings = BackendSettings("milvus", milvus_uri=server.uri)
        else:
            server = MilvusStandalone(root / "milvus")
            settings = BackendSettings("milvus", milvus_uri=server.uri)
        try:
            result[name] = bench_data_ops(
                name, settings, vectors, queries, args.spec, args.fresh_queries
            )
        finally:
            if server is not None:
                server.stop()
    return result


def at_equal_recall(rows: list[dict], target: float = RECALL_TARGET) -> dict | None:
    """The fastest setting that reaches the recall target."""
    reached = [r for r in rows if r["recall_at_10"] >= target]
    return max(reached, key=lambda r: r["qps"]) if reached else None


async def service_throughput(targets: list[str], texts: list[str]) -> float:
    async with AsyncClient(targets, timeout=300) as client:
        await client.encode(texts[:8])  # warm every connection
        seconds, _ = await concurrent_callers(texts, 32, lambda t: client.encode([t]))
    return len(texts) / seconds


def bench_replicas(root: Path, texts: list[str]) -> dict:
    milvus = MilvusLiteServer(root / "milvus")
    replicas: list[ServerProcess] = []
    row = {}
    try:
        for count in (1, 2):
            while len(replicas) < count:
                replica = ServerProcess(
                    root / f"replica{len(replicas)}", None, "--index-backend", "milvus",
                    "--milvus-uri", milvus.uri, "--threads", "2",
                )  # fmt: skip
                replica.start()
                replicas.append(replica)
            rate = asyncio.run(service_throughput([r.target for r in replicas], texts))
            row[f"texts_per_s_{count}_replicas"] = round(rate, 1)
            print(f"service, {count} encoder replica(s), 32 callers: {rate:.1f} texts/s")
    finally:
        for replica in replicas:
            replica.stop()
        milvus.stop()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--lite-queries", type=int, default=20)
    parser.add_argument(
        "--callers", type=int, default=8,
        help="part 1: faiss and the real Milvus also with this many concurrent callers "
        "(0: one caller only; milvus-lite: one)",
    )  # fmt: skip
    parser.add_argument(
        "--milvus-search-calls", type=int, default=MILVUS_SEARCH_CALLS,
        help="part 1: the milvus backend's search calls in flight per collection and "
        "parameters, as the server's flag (its default too)",
    )  # fmt: skip
    parser.add_argument(
        "--sweep-callers", type=int, nargs="*", default=[],
        help="part 1, the real Milvus: queries/s at each of these numbers of callers at once, "
        "merged and one call each (e.g. 1 2 4 8 16)",
    )  # fmt: skip
    parser.add_argument("--backends", nargs="+", default=["faiss", "milvus-lite", "milvus"])
    parser.add_argument("--service", action="store_true", help="part 2 too")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--data-ops", action="store_true", help="part 3 only (issue 26)")
    parser.add_argument("--spec", default="HNSW32", help="part 3's index spec")
    parser.add_argument("--fresh-queries", type=int, default=20, help="part 3: fresh filters")
    parser.add_argument(
        "--milvus-uri", help="part 1: the Milvus at this URI (yours) instead of a standalone "
        "started from the `milvus` wheel",
    )  # fmt: skip
    args = parser.parse_args()
    if args.milvus_uri and "milvus" not in args.backends:
        parser.error("--milvus-uri names the Milvus to benchmark: add milvus to --backends")
    logging.basicConfig(level=logging.WARNING)
    vectors, queries = dataset("clustered", args.n, args.queries, args.dim)
    if args.data_ops:
        print(f"{args.n} clustered unit vectors x {args.dim}, {args.queries} queries, "
              f"{args.spec}, k = 10, one query per call")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="embedsense-bench-") as tmp:
            print(json.dumps(data_ops(args, vectors, queries, Path(tmp))))
        return
    mask = np.arange(args.n) % 10 == 3
    truths = {"unfiltered": exact(vectors, queries, None),
              "filtered_10pct": exact(vectors, queries, mask)}  # fmt: skip
    print(f"{args.n} clustered unit vectors x {args.dim}, {args.queries} queries, HNSW32, "
          "k = 10, one query per call")  # fmt: skip
    result: dict = {"n": args.n, "dim": args.dim}
    with tempfile.TemporaryDirectory(prefix="embedsense-bench-") as tmp:
        root = Path(tmp)
        if "faiss" in args.backends:
            result["faiss"] = bench_backend(
                "faiss", BackendSettings("faiss", root / "faiss"), vectors, queries, truths,
                args.callers,
            )  # fmt: skip
        if "milvus-lite" in args.backends:
            lite = MilvusLiteServer(root / "milvus-lite")
            try:
                result["milvus-lite"] = bench_backend(
                    "milvus-lite",
                    BackendSettings("milvus", milvus_uri=lite.uri),
                    vectors,
                    queries[: args.lite_queries],
                    {label: truth[: args.lite_queries] for label, truth in truths.items()},
                    ef_values=EF_VALUES,
                )
            finally:
                lite.stop()
        if "milvus" in args.backends and args.milvus_uri:  # a Milvus of the caller's
            result["milvus"] = bench_backend(
                "milvus", BackendSettings("milvus", milvus_uri=args.milvus_uri,
                                          milvus_search_calls=args.milvus_search_calls), vectors,
                queries, truths, args.callers, sweep=tuple(args.sweep_callers),
            )  # fmt: skip
        elif "milvus" in args.backends:
            milvus = MilvusStandalone(root / "milvus")
            try:
                result["milvus"] = bench_backend(
                    "milvus", BackendSettings("milvus", milvus_uri=milvus.uri,
                                              milvus_search_calls=args.milvus_search_calls),
                    vectors, queries, truths, args.callers, sweep=tuple(args.sweep_callers),
                )  # fmt: skip
            finally:
                milvus.stop()
        for label in ("unfiltered", "filtered_10pct"):
            if "faiss" not in result or "milvus" not in result:
                break
            ours = at_equal_recall(result["faiss"][label])
            theirs = at_equal_recall(result["milvus"][label])
            if ours and theirs:
                ratio = round(theirs["qps"] / ours["qps"], 2)
                result[f"milvus_over_faiss_qps_{label}_at_recall_0.95"] = ratio
                print(
                    f"{label}: at recall@10 >= 0.95, milvus {theirs['qps']} q/s (ef "
                    f"{theirs['ef_search']}) vs faiss {ours['qps']} q/s (ef "
                    f"{ours['ef_search']}): {ratio}x"
                )
                many = [result[b].get(f"{label}_concurrent") for b in ("milvus", "faiss")]
                if all(many):
                    ratio = round(many[0]["qps"] / many[1]["qps"], 2)
                    result[f"milvus_over_faiss_qps_{label}_at_recall_0.95_concurrent"] = ratio
                    print(
                        f"{label}: the same with {args.callers} callers at once, milvus "
                        f"{many[0]['qps']} q/s vs faiss {many[1]['qps']} q/s: {ratio}x"
                    )
            else:
                short = [n for n, r in (("faiss", ours), ("milvus", theirs)) if r is None]
                print(f"{label}: {' and '.join(short)} never reached recall@10 {RECALL_TARGET} "
                      f"(ef up to {MORE_EF_VALUES[-1]}): no ratio")  # fmt: skip
        if args.service:
            result["service"] = bench_replicas(root, chinese_texts(args.texts))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
