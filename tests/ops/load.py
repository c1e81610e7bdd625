"""`make load`: 64 concurrent clients mixing Embed, Search and Upsert against a real server on
127.0.0.1 for a bounded time. Throughput, p50/p95/p99 per operation, errors by status, the
time rows waited in the engine's queue per priority (from the server's Prometheus
histogram), each call's latency as the server measured it (its request histogram, next to
the client's), and memory: the server's RSS every 30 s, their swing (max - min, as a share of
their mean), its peak RSS over its whole life (VmHWM, the initial indexing included), and
next to them the peak its start-up log predicted (footprint.py); what the model did
(forwards/s, rows and tokens per forward, model time per token); and the server's CPU per
1,000 tokens, its kernel share and page faults (/proc: steal time is not in them, so they
compare between runs on a shared machine). Last line: one JSON object.

    python tests/ops/load.py [--clients 64] [--seconds 300] [--warmup 30] [--dtype auto]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from unittest import mock

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workload import chinese_texts  # noqa: E402

from embedsense.client import AsyncClient, Client, EmbedSenseError, Retry  # noqa: E402
from ops.serverproc import ServerProcess, free_port  # noqa: E402

TEXTS = chinese_texts(2000)
QUERIES = ["苹果手机的价格", "水果的营养", "地铁故障", "春天的花", "银行利率", "足球比赛"]


# The statuses a call may end with under this load; any other is a defect, shown at the end
# with the server log's errors.
EXPECTED = {"OK", "RESOURCE_EXHAUSTED"}
failures: list[str] = []


async def worker(client: AsyncClient, deadline: float, seed: int, results: dict) -> None:
    rng = random.Random(seed)
    n = 0
    while time.monotonic() < deadline:
        roll = rng.random()
        started = time.perf_counter()
        try:
            if roll < 0.6:
                op = "embed"
                await client.encode(rng.sample(TEXTS, rng.randint(1, 4)))
            elif roll < 0.9:
                op = "search"
                await client.search("load", rng.choice(QUERIES), k=10)
            else:
                op = "upsert"
                docs = [{"id": f"w{seed}-{n}-{i}", "text": rng.choice(TEXTS)} for i in range(4)]
                await client.upsert("load", docs, show_progress_bar=False, timeout=60)
                n += 1
            status = "OK"
        except EmbedSenseError as err:
            status = err.code.name
            if status not in EXPECTED:
                failures.append(f"{op}: {status}: {err}")
        results[op].append((time.perf_counter() - started, status))


async def run_load(target: str, clients: int, seconds: float) -> dict:
    channels = [AsyncClient(target, timeout=60, retry=Retry(attempts=1)) for _ in range(8)]
    results: dict = defaultdict(list)
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(worker(channels[i % 8], deadline, i, results) for i in range(clients)))
    for c in channels:
        await c.close()
    return results


def logged_errors(log: Path) -> list[str]:
    """The server log's ERROR lines, each with the last line of its traceback (the error)."""
    errors: list[str] = []
    for line in log.read_text().splitlines():
        if " ERROR " in line:
            errors.append(line)
        elif errors and not line[:4].isdigit() and line.strip():  # within its traceback
            errors[-1] = errors[-1].split(" | ")[0] + " | " + line.strip()
    return errors


def start_logged(server: ServerProcess, log: Path) -> float:
    """server.start(), its log (stderr) written to `log` rather than dropped."""
    popen = subprocess.Popen

    def logged(*args: object, **kwargs: object) -> subprocess.Popen:
        kwargs["stderr"] = log.open("w")
        return popen(*args, **kwargs)

    with mock.patch.object(subprocess, "Popen", logged):
        return server.start()


def predicted_peak(log: Path) -> float | None:
    """The peak, in MiB, the server's start-up log predicted."""
    found = re.search(r"predicted peak (\d+) MiB", log.read_text())
    return float(found.group(1)) if found else None


def peak_rss_mib(server: ServerProcess) -> float:
    """The server's RSS high-water mark over its life (VmHWM)."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def cpu_use(server: ServerProcess) -> dict[str, float]:
    """The server's CPU seconds in user space and in the kernel, and its minor page faults,
    so far (/proc/PID/stat): the time the machine's other tenants steal is in neither."""
    stat = Path(f"/proc/{server.process.pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return {"user_s": int(fields[11]) / tick, "kernel_s": int(fields[12]) / tick,
            "page_faults": int(fields[7])}  # fmt: skip


def summarize_cpu(before: dict[str, float], after: dict[str, float], seconds: float,
                  real_tokens: float) -> dict:  # fmt: skip
    """CPU per 1,000 real tokens: the engine's cost per unit of work, comparable between runs
    on a shared machine, where calls per second move with the steal time."""
    d = {key: after[key] - before[key] for key in after}
    busy = d["user_s"] + d["kernel_s"]
    out = {
        "cpu_ms_per_1k_real_tokens": round(1e6 * busy / (real_tokens or 1), 1),
        "kernel_share": round(d["kernel_s"] / (busy or 1), 3),
        "page_faults_per_s": round(d["page_faults"] / seconds),
        "cores_busy": round(busy / seconds, 2),
    }
    print(f"  the server's CPU: {out['cpu_ms_per_1k_real_tokens']} ms per 1,000 real tokens, "
          f"{out['kernel_share']:.0%} of it in the kernel; {out['page_faults_per_s']} page "
          f"faults a second; {out['cores_busy']} cores busy")  # fmt: skip
    return out


def sample_rss(server: ServerProcess, seconds: float, samples: list[float]) -> None:
    """The server's RSS every 30 s of the run: does it level off?"""
    end = time.monotonic() + seconds
    while time.monotonic() < end - 1:
        time.sleep(min(30.0, max(0.0, end - time.monotonic() - 1)))
        samples.append(round(server.rss_mib(), 1))


def summarize(results: dict, seconds: float) -> dict:
    out = {}
    for op, rows in sorted(results.items()):
        lat = np.array([r[0] for r in rows if r[1] == "OK"]) * 1000
        out[op] = {
            "calls": len(rows),
            "per_s": round(len(rows) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
            "statuses": dict(Counter(r[1] for r in rows)),
        }
        o = out[op]
        print(f"  {op:<7} {o['calls']:>7} calls {o['per_s']:>7.1f}/s  p50 {o['p50_ms']} ms  "
              f"p95 {o['p95_ms']} ms  p99 {o['p99_ms']} ms  {o['statuses']}")  # fmt: skip
    return out


def scrape(metrics_port: int) -> list:
    """The server's Prometheus metrics now, parsed."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return list(text_string_to_metric_families(answer.read().decode()))


# The engine's running totals, by the metric sample that holds each.
ENGINE_TOTALS = {
    "forwards": "embedsense_batch_rows_count",
    "rows": "embedsense_batch_rows_sum",
    "padded_tokens": "embedsense_batch_tokens_sum",
    "real_tokens": "embedsense_engine_real_tokens",
    "model_seconds": "embedsense_model_seconds_sum",
    "lane_forwards": "embedsense_engine_lane_batches",
}


def engine_totals(families: list) -> dict[str, float]:
    by_name = {s.name: s.value for f in families for s in f.samples if not s.labels}
    return {key: by_name.get(name, 0.0) for key, name in ENGINE_TOTALS.items()}


def summarize_engine(before: dict[str, float], after: dict[str, float], seconds: float) -> dict:
    """What the model did over the run: forwards, their size, and how busy it was. Where
    throughput moves between two builds, these say whether the forwards got smaller (the
    planner) or slower per token (the kernels, the allocator)."""
    d = {key: after[key] - before[key] for key in after}
    forwards = d["forwards"] or 1
    out = {
        "forwards_per_s": round(d["forwards"] / seconds, 2),
        "rows_per_forward": round(d["rows"] / forwards, 1),
        "real_tokens_per_forward": round(d["real_tokens"] / forwards, 1),
        "padded_tokens_per_forward": round(d["padded_tokens"] / forwards, 1),
        "model_ms_per_1k_real_tokens": round(1e6 * d["model_seconds"] / (d["real_tokens"] or 1), 1),
        "model_busy": round(d["model_seconds"] / seconds, 3),
        "lane_share": round(d["lane_forwards"] / forwards, 3),
    }
    print(f"  {out['forwards_per_s']} forwards/s of {out['rows_per_forward']} rows, "
          f"{out['real_tokens_per_forward']} real ({out['padded_tokens_per_forward']} padded) "
          f"tokens, {out['lane_share']:.0%} of them the query lane's; "
          f"{out['model_ms_per_1k_real_tokens']} ms of model time per 1,000 real tokens; "
          f"the model busy {out['model_busy']:.0%} of the time (the lane's forwards overlap "
          "the worker's)")  # fmt: skip
    return out


def histograms(families: list, metric: str, label: str) -> dict[str, dict]:
    """Per value of `label`, the server's histogram `metric` now: cumulative bucket counts by
    upper bound, the count and the sum of seconds; and (queue times) the rows refused at
    admission."""
    out: dict[str, dict] = defaultdict(lambda: {"buckets": {}, "count": 0.0, "sum": 0.0})
    for family in families:
        for sample in family.samples:
            key = sample.labels.get(label)
            if key is None:
                continue
            if sample.name == f"{metric}_bucket":
                out[key]["buckets"][float(sample.labels["le"])] = sample.value
            elif sample.name == f"{metric}_count":
                out[key]["count"] = sample.value
            elif sample.name == f"{metric}_sum":
                out[key]["sum"] = sample.value
            elif sample.name == "embedsense_engine_refused_by_priority":
                out[key]["refused"] = sample.value
    return dict(out)


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated within its bucket (as
    Prometheus' histogram_quantile does)."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0
    if not total:
        return None
    rank, below, lower = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            inside = buckets[bound] - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1)
        below, lower = buckets[bound], bound
    return lower


def summarize_histograms(before: dict[str, dict], after: dict[str, dict], keys, what: str) -> dict:
    """Per key, the histogram over the run (after minus before: the warm-up left out)."""
    out = {}
    for key in keys:
        if key not in after:
            continue
        a, b = after[key], before.get(key, {"buckets": {}, "count": 0, "sum": 0})
        buckets = {le: n - b["buckets"].get(le, 0) for le, n in a["buckets"].items()}
        count = a["count"] - b["count"]
        ms = {f"p{round(q * 100)}_ms": quantile(buckets, q) for q in (0.5, 0.95, 0.99)}
        out[key] = {
            what: int(count),
            "mean_ms": round((a["sum"] - b["sum"]) / count * 1000, 1) if count else None,
            **{k: None if v is None else round(v * 1000, 1) for k, v in ms.items()},
        }
        o = out[key]
        line = (f"  {key:<11} {o[what]:>7} {what}  mean {o['mean_ms']} ms  p50 ~{o['p50_ms']} "
                f"ms  p95 ~{o['p95_ms']} ms  p99 ~{o['p99_ms']} ms")  # fmt: skip
        if "refused" in a:
            o["refused"] = int(a["refused"] - b.get("refused", 0))
            line += f"  refused {o['refused']}"
        print(line)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--warmup", type=float, default=30)
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data_dir:
        metrics_port = free_port()
        server = ServerProcess(
            Path(data_dir), None, "--metrics-port", str(metrics_port), "--dtype", args.dtype
        )
        log = Path(data_dir) / "server.log"
        boot = start_logged(server, log)
        try:
            with Client(server.target, timeout=120) as c:
                c.create_collection("load")
                c.upsert("load", [{"id": str(i), "text": t} for i, t in enumerate(TEXTS)],
                         show_progress_bar=False)  # fmt: skip
            print(f"server up in {boot:.1f} s; {len(TEXTS)} documents indexed; warm-up "
                  f"{args.warmup:.0f} s with {args.clients} clients")  # fmt: skip
            asyncio.run(run_load(server.target, args.clients, args.warmup))
            rss_start, peak_before = server.rss_mib(), peak_rss_mib(server)
            before, cpu_before = scrape(metrics_port), cpu_use(server)
            window = time.monotonic()
            mix = "60 % Embed of 1-4 texts, 30 % Search, 10 % Upsert of 4 documents"
            print(f"load: {args.clients} clients for {args.seconds:.0f} s ({mix})")
            samples: list[float] = []
            sampler = threading.Thread(target=sample_rss, args=(server, args.seconds, samples))
            sampler.start()
            results = asyncio.run(run_load(server.target, args.clients, args.seconds))
            sampler.join()
            rss_end = server.rss_mib()
            peak = peak_rss_mib(server)
            predicted = predicted_peak(log)
            after, cpu_after = scrape(metrics_port), cpu_use(server)
            window = time.monotonic() - window
        finally:
            server.stop()
            errors = logged_errors(log)
    for line in failures[:5] + errors[:20]:
        print("unexpected:", line[:2000])
    summary = summarize(results, args.seconds)
    print(
        "every call as the server timed it, refused ones included (bucket-interpolated "
        "percentiles; the rest of a client's time is the network and this script's loop):"
    )
    served = summarize_histograms(
        *(histograms(f, "embedsense_request_seconds", "rpc") for f in (before, after)),
        ("Embed", "Search", "Upsert"), "calls",
    )  # fmt: skip
    print("time in the engine's queue, per row, by priority (bucket-interpolated percentiles):")
    queues = summarize_histograms(
        *(histograms(f, "embedsense_queue_seconds", "priority") for f in (before, after)),
        ("query", "interactive", "bulk"), "rows",
    )  # fmt: skip
    print("the engine over the run:")
    totals = [engine_totals(before), engine_totals(after)]
    engine = summarize_engine(*totals, args.seconds)
    real_tokens = totals[1]["real_tokens"] - totals[0]["real_tokens"]
    engine.update(summarize_cpu(cpu_before, cpu_after, window, real_tokens))
    growth = (rss_end - rss_start) / rss_start
    print(f"server RSS after warm-up {rss_start:.0f} MiB, at the end {rss_end:.0f} MiB "
          f"({growth:+.1%}); every 30 s: {samples}")  # fmt: skip
    swing = (max(samples) - min(samples)) / np.mean(samples) if samples else 0.0
    off = f" ({peak / predicted - 1:+.1%})" if predicted else ""
    print(f"peak RSS {peak:.0f} MiB ({peak_before:.0f} MiB before the load: start-up, "
          f"indexing, warm-up), largest 30-s sample {max(samples, default=0):.0f} MiB; "
          f"swing of the 30-s samples {swing:.1%} of their mean; the start-up log predicted "
          f"a peak of {predicted} MiB, measured{off}")  # fmt: skip
    print(json.dumps({"clients": args.clients, "seconds": args.seconds, "ops": summary,
                      "rss_start_mib": round(rss_start, 1), "rss_end_mib": round(rss_end, 1),
                      "rss_growth": round(growth, 4), "peak_rss_mib": round(peak, 1),
                      "peak_rss_before_load_mib": round(peak_before, 1),
                      "swing": round(swing, 4), "predicted_peak_mib": predicted,
                      "rss_every_30s_mib": samples,
                      "served": served, "queue_by_priority": queues,
                      "engine": engine}))  # fmt: skip


if __name__ == "__main__":
    main()
