"""The service on the GPU against its own offline figure (bench_gpu.py --service).

A real server (`python -m embedsense.server`, its own process, 127.0.0.1) serves the
bert-base-chinese-shaped model in one dtype; client processes (so that the client is not the
wall) call Embed over gRPC:
- one text per request, `callers` (256) concurrent callers: tokens/s against offline sorted
  batches in the same dtype (goal: >= 60 %);
- 32 texts per request, the same callers: tokens/s against offline (goal: >= 85 %);
- one text per request, 32 callers: p50 latency (goal: <= 5 ms).
The server runs `--frontends auto` (half the host's cores as front-end processes around the
engine process) unless told otherwise (bench_gpu.py --frontends).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ops.serverproc import free_port, wait_until_serving  # noqa: E402  (tests/ops/serverproc.py)

from embedsense.proto.v1 import embedsense_pb2 as pb  # noqa: E402

EMBED = "/embedsense.v1.EmbedSense/Embed"


def _drive(target: str, requests: list[bytes], callers: int, ready: multiprocessing.Queue,
           go: multiprocessing.Event, out: multiprocessing.Queue) -> None:  # fmt: skip
    """In a client process: connect, say ready, wait for `go`, then send `requests` from
    `callers` tasks, each one at a time; put (the monotonic time it finished, the per-call
    latencies) on `out`. A failure goes, as a message, on whichever queue the parent is
    reading then (the parent would otherwise wait for a report that never comes)."""
    waiting_on = ready

    async def run() -> tuple[float, list[float]]:
        nonlocal waiting_on
        async with grpc.aio.insecure_channel(target) as channel:
            embed = channel.unary_unary(EMBED)
            await embed(requests[0], timeout=60)
            ready.put(True)
            waiting_on = out
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            queue = list(reversed(requests))
            latencies: list[float] = []

            async def caller() -> None:
                while queue:
                    request = queue.pop()
                    start = time.perf_counter()
                    await embed(request, timeout=120)
                    latencies.append(time.perf_counter() - start)

            await asyncio.gather(*(caller() for _ in range(callers)))
            return time.monotonic(), latencies

    try:
        out.put(asyncio.run(run()))
    except Exception as err:  # noqa: BLE001  (reported to the parent, which raises it)
        if isinstance(err, grpc.RpcError):
            waiting_on.put(f"{err.code().name}: {err.details()}")
        else:
            waiting_on.put(f"{type(err).__name__}: {err}")


def _reports(queue: multiprocessing.Queue, workers: list, what: str, limit_s: float) -> list:
    """One report from each client process; RuntimeError for a failure one reported, one
    that exited without reporting, or `limit_s` passing first."""
    deadline = time.monotonic() + limit_s
    reports: list = []
    while len(reports) < len(workers):
        try:
            report = queue.get(timeout=0.5)
        except Empty:
            crashed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            if crashed:
                raise RuntimeError(
                    f"a client process exited with {crashed[0]} before {what}"
                ) from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"client processes: {len(reports)} of {len(workers)} "
                                   f"{what} after {limit_s:.0f} s") from None  # fmt: skip
            continue
        if isinstance(report, str):
            raise RuntimeError(f"a client process failed ({what}): {report}")
        reports.append(report)
    return reports


def drive(target: str, requests: list[bytes], callers: int, processes: int) -> tuple[float, list]:
    """All requests from `processes` client processes sharing `callers` callers: the wall
    seconds (from all connected and told to go, to the last done) and every call's latency.
    Any client's failure is raised here, at once."""
    context = multiprocessing.get_context("spawn")
    ready, go, out = context.Queue(), context.Event(), context.Queue()
    shares = [requests[i::processes] for i in range(processes)]
    each = max(1, callers // processes)
    workers = [
        context.Process(target=_drive, args=(target, share, each, ready, go, out), daemon=True)
        for share in shares
    ]
    try:
        for w in workers:
            w.start()
        _reports(ready, workers, "ready", 120)
        start = time.monotonic()
        go.set()
        results = _reports(out, workers, "done", 300)
        for w in workers:
            w.join(30)
    finally:  # after a failure the others are stopped, not waited for
        for w in workers:
            if w.is_alive():
                w.kill()
    seconds = max(end for end, _ in results) - start
    return seconds, [x for _, latencies in results for x in latencies]


def service_figures(model_dir: Path, texts: list[str], tokens: int, dtype: str, device: str,
                    max_batch_tokens: int, offline_tokens_per_s: float,
                    callers: int = 256, frontends: str = "auto") -> dict:  # fmt: skip
    """Start the server (with `frontends` front-end processes: auto is half the host's
    cores on a GPU), run the three loads, stop it; the figures (one JSON-able dict)."""
    port = free_port()
    target = f"127.0.0.1:{port}"
    # The server's log is kept: when a step fails, its end is printed with the error.
    log_path = model_dir / f"server-{port}.log"
    queued = str(max(262_144, 4 * tokens))  # no refusals: the loads measure speed
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "embedsense.server", "--host", "127.0.0.1", "--port",
             str(port), "--data-dir", str(model_dir / "service-data"), "--model",
             str(model_dir), "--device", device, "--dtype", dtype, "--log-format", "text",
             "--frontends", frontends],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "EMBEDSENSE_API_KEY": "", "EMBEDSENSE_MAX_BATCH_TOKENS":
                 str(max_batch_tokens), "EMBEDSENSE_MAX_CONCURRENT_REQUESTS": "4096",
                 "EMBEDSENSE_MAX_QUEUED_TOKENS": queued,
                 "EMBEDSENSE_MAX_QUEUED_BULK_TOKENS": queued},
        )  # fmt: skip
    processes = max(1, min(8, (os.cpu_count() or 2) // 4))
    try:
        wait_until_serving(target, server, limit_s=90)
        one = [pb.EmbedRequest(texts=[t]).SerializeToString() for t in texts]
        many = [pb.EmbedRequest(texts=texts[i : i + 32]).SerializeToString()
                for i in range(0, len(texts), 32)]  # fmt: skip
        loads = {
            "warm": (one[: len(one) // 4], callers, processes),
            "one text per request": (one, callers, processes),
            "32 texts per request": (many, min(callers, len(many)), processes),
            "latency at 32 callers": (one[: min(len(one), 4096)], 32, 1),
        }
        timed = {}
        for name, (requests, load_callers, load_processes) in loads.items():
            timed[name] = drive(target, requests, load_callers, load_processes)
            print(f"  {name}: {len(requests)} requests, {load_callers} callers, "
                  f"{timed[name][0]:.1f} s", flush=True)  # fmt: skip
    except BaseException:  # a time limit's SIGTERM too (SystemExit): the log says why
        lines = log_path.read_text(errors="replace").splitlines()
        lines = [line for line in lines if "embedsense.access" not in line]  # one per call
        print("the server's log, last lines:", *lines[-30:], sep="\n  ", flush=True)
        raise
    finally:
        server.terminate()
        server.wait(60)
    one_s, many_s = timed["one text per request"][0], timed["32 texts per request"][0]
    latencies = timed["latency at 32 callers"][1]
    row = {
        "dtype": dtype,
        "frontends": frontends,
        "host_cores": os.cpu_count(),
        "client_processes": processes,
        "one_text_tokens_per_s": round(tokens / one_s, 1),
        "one_text_vs_offline": round(tokens / one_s / offline_tokens_per_s, 3),
        "texts32_tokens_per_s": round(tokens / many_s, 1),
        "texts32_vs_offline": round(tokens / many_s / offline_tokens_per_s, 3),
        "p50_ms_32_callers": round(statistics.median(latencies) * 1e3, 2),
        "offline_tokens_per_s": round(offline_tokens_per_s, 1),
    }
    print(
        f"service {dtype}, {frontends} front ends, {os.cpu_count()} cores: 1 text/request, "
        f"{callers} callers {row['one_text_tokens_per_s']:.0f} "
        f"tok/s ({row['one_text_vs_offline']:.0%} of offline); 32 texts/request "
        f"{row['texts32_tokens_per_s']:.0f} tok/s ({row['texts32_vs_offline']:.0%}); p50 at 32 "
        f"callers {row['p50_ms_32_callers']} ms"
    )
    return row
