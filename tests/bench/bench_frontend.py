"""The front end's own capacity: the real server around a stand-in model (standin.py).

The server runs in its own process with a forward that costs nothing, so what is measured is
everything around the model: gRPC, parsing, checks, admission, tokenizing, batching,
pooling, building and sending replies. Concurrent callers (one text per request, the
mixed-length Chinese workload) call it over real gRPC on 127.0.0.1 from this process, with
requests serialized ahead of time so the client costs little. Per path:
- texts/s: the front end's capacity on this machine (client included: it shares the cores);
- host cost per text: the server process's CPU time (all its threads) per text, split into
  tokenize (the tokenizer's calls, timed inside the server in whatever thread runs them),
  response (pooling and normalizing, timed inside the server, plus building and
  serializing a one-text EmbedResponse, timed here) and transport (the rest: gRPC, asyncio,
  parsing, checks, admission, batching);
- loop cost per text: the CPU time of the server's main thread (its event loop) per text:
  the serial part, which bounds one front end's texts/s however many cores it has (with
  front-end processes, their main threads' together).
Paths: `today` tokenizes each request on the event loop on its own (EngineConfig.
tokenize_batch off, as before, and still what `auto` does on a CPU); `new` groups concurrent
small requests' tokenizing in the tokenizer thread (tokenize_batch on, `auto` on a GPU).
The rounds interleave the paths so that drift in the machine's speed hits both alike;
figures are medians. Last line: one JSON
object.

With --frontends N, path feN is `new` served by N front-end processes around the stand-in's
engine process (--frontends N): its host cost is every process's CPU time together.
With --client-processes P the callers are shared by P client processes (on a host with many
cores one client process, not the server, would be the wall). --model DIR serves that
model's tokenizer and width (default: the offline e5-small).

    python tests/bench/bench_frontend.py [--texts 2000] [--callers 32] [--rounds 3]
        [--frontends 2,4] [--client-processes 1] [--model DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gpu_service import drive as drive_from_processes  # noqa: E402
from ops.serverproc import (  # noqa: E402  (tests/ops/serverproc.py)
    free_port,
    stop_servers_on_sigterm,
    wait_until_serving,
)
from workload import chinese_texts  # noqa: E402  (tests/workload.py)

from embedsense.model import load_model  # noqa: E402
from embedsense.proto.tensors import to_tensor  # noqa: E402
from embedsense.proto.v1 import embedsense_pb2 as pb  # noqa: E402

STANDIN = Path(__file__).with_name("standin.py")
# What selects each path in the server (its environment). feN: `new` with N front-end
# processes around the engine process (--frontends N), added by --frontends.
# Both in one process, also where `auto` would start front ends (a GPU host).
PATHS = {
    "today": {"EMBEDSENSE_STANDIN_PATH": "today", "EMBEDSENSE_FRONTENDS": "1"},
    "new": {"EMBEDSENSE_FRONTENDS": "1"},
}


class StandinServer:
    """standin.py in its own process on 127.0.0.1, started with `env` added."""

    def __init__(self, data_dir: Path, env: dict[str, str], *extra: str) -> None:
        self.stats = data_dir.with_suffix(".stats.json")
        env = {**env, "EMBEDSENSE_STANDIN_STATS": str(self.stats)}
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.log = data_dir.with_suffix(".log")  # its end is printed when a run fails
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(STANDIN), "--host", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", str(data_dir), "--log-format", "text", *extra],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "EMBEDSENSE_API_KEY": "", **env},
            )  # fmt: skip

    def wait_ready(self, limit_s: float = 90) -> None:
        wait_until_serving(self.target, self.process, limit_s)

    def log_tail(self, lines: int = 20) -> str:
        logged = self.log.read_text(errors="replace").splitlines()
        logged = [line for line in logged if "embedsense.access" not in line]  # one per call
        return "\n  ".join(logged[-lines:])

    def cpu_seconds(self) -> tuple[float, float, float]:
        """User + system CPU time so far of the server (all its threads, its front-end
        processes' too), of the main threads of the processes that serve the port (the
        event loops': the server's, or its front ends'), and of the server process alone
        (with front ends: the engine process's share)."""
        pid = self.process.pid
        fronts = _children(pid)
        own = _cpu(Path(f"/proc/{pid}/stat"))
        host = own + sum(_cpu(Path(f"/proc/{p}/stat")) for p in fronts)
        loops = sum(_cpu(Path(f"/proc/{p}/task/{p}/stat")) for p in fronts or (pid,))
        return host, loops, own

    def counters(self) -> dict[str, float]:
        """CPU seconds spent so far tokenizing and assembling (standin.py's counters)."""
        self.stats.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                return json.loads(self.stats.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.01)
        raise RuntimeError("the stand-in server did not report its counters")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(60)


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return [int(c) for task in tasks for c in (task / "children").read_text().split()]


def _cpu(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(target: str, requests: list[bytes], callers: int) -> tuple[float, list[float]]:
    """Send every request (pre-serialized EmbedRequests) from `callers` concurrent tasks,
    each one request at a time; wall seconds and per-call latencies."""
    async with grpc.aio.insecure_channel(target) as channel:
        embed = channel.unary_unary(
            "/embedsense.v1.EmbedSense/Embed",
            request_serializer=None,
            response_deserializer=None,
        )
        await embed(requests[0])  # connect
        queue = list(reversed(requests))
        latencies: list[float] = []

        async def caller() -> None:
            while queue:
                request = queue.pop()
                start = time.perf_counter()
                await embed(request)
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        return time.perf_counter() - start, latencies


def measure(
    server: StandinServer, requests: list[bytes], callers: int, processes: int = 1
) -> dict[str, float]:
    """One pass of every request (from this process, or from `processes` client
    processes): texts/s, p50 latency (s), and per text the CPU seconds of the server (host),
    of its event loop, of tokenizing and of assembling."""
    n = len(requests)
    (host, loop, own), counted = server.cpu_seconds(), server.counters()
    if processes > 1:
        wall, latencies = drive_from_processes(server.target, requests, callers, processes)
    else:
        wall, latencies = asyncio.run(drive(server.target, requests, callers))
    (host_after, loop_after, own_after), counted_after = server.cpu_seconds(), server.counters()
    return {
        "texts_per_s": n / wall,
        "p50": statistics.median(latencies),
        "host": (host_after - host) / n,
        "loop": (loop_after - loop) / n,
        "engine_process": (own_after - own) / n,
        **{name: (counted_after[name] - counted[name]) / n for name in counted},
    }


def reply_cost(dim: int, n: int = 2000) -> float:
    """Seconds per reply of building and serializing a one-text EmbedResponse."""
    vector = np.random.default_rng(0).standard_normal(dim, dtype=np.float32)
    start = time.perf_counter()
    for _ in range(n):
        reply = pb.EmbedResponse()
        reply.sentence_vectors.CopyFrom(to_tensor(np.stack([vector])))
        reply.SerializeToString()
    return (time.perf_counter() - start) / n


def main() -> None:
    stop_servers_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--paths", default="today,new", help="comma-separated: today, new")
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--model", default="", help="a model directory (default: e5-small)")
    parser.add_argument(
        "--frontends",
        default="",
        help="comma-separated process counts N: "
        "paths feN, `new` with N front-end processes (--frontends N)",
    )
    args = parser.parse_args()
    paths = args.paths.split(",")
    for count in filter(None, args.frontends.split(",")):
        PATHS[f"fe{count}"] = {"EMBEDSENSE_FRONTENDS": count}
        paths.append(f"fe{count}")
    texts = chinese_texts(args.texts)
    requests = [pb.EmbedRequest(texts=[t]).SerializeToString() for t in texts]
    cores = os.cpu_count()
    print(f"{len(texts)} Chinese texts, one per request, {args.callers} callers from "
          f"{args.client_processes} client process(es), stand-in model "
          f"{args.model or 'e5-small'}, {cores} cores, {args.rounds} rounds (medians)")  # fmt: skip
    samples: dict[str, list[dict[str, float]]] = {p: [] for p in paths}
    with tempfile.TemporaryDirectory() as tmp:
        model = ("--model", args.model) if args.model else ()
        servers = {p: StandinServer(Path(tmp) / p, PATHS[p], *model) for p in paths}
        try:
            for server in servers.values():
                server.wait_ready()
            for server in servers.values():  # warm each path once
                asyncio.run(drive(server.target, requests[:200], args.callers))
            for round_ in range(args.rounds):
                for path, server in servers.items():
                    samples[path].append(
                        measure(server, requests, args.callers, args.client_processes)
                    )
                print(f"  round {round_ + 1} of {args.rounds} done", flush=True)
        except BaseException:  # a time limit's SIGTERM too (SystemExit): the logs say why
            for path, server in servers.items():
                print(f"{path}'s server log, last lines:\n  {server.log_tail()}", flush=True)
            raise
        finally:
            for server in servers.values():
                server.stop()

    reply = reply_cost((load_model(args.model) if args.model else load_model()).dim)
    result: dict[str, object] = {"texts": len(texts), "callers": args.callers, "cores": cores,
                                 "client_processes": args.client_processes}  # fmt: skip
    print(f"\n{'path':<8}{'texts/s':>9}{'p50 ms':>8}{'loop µs':>9}{'host µs':>9}"
          f"{'tokenize':>10}{'transport':>11}{'response':>10}   (per text)")  # fmt: skip
    for path in paths:
        m = {name: statistics.median(s[name] for s in samples[path]) for name in samples[path][0]}
        figures: dict[str, float | str] = {
            "texts_per_s": round(m["texts_per_s"], 1),
            "p50_ms": round(m["p50"] * 1e3, 2),
            "loop_us": round(m["loop"] * 1e6, 1),
            "host_us": round(m["host"] * 1e6, 1),
        }
        if path.startswith("fe"):  # the split is timed in the server process: not its front ends'
            figures |= {"tokenize_us": "-", "transport_us": "-", "response_us": "-"}
            engine_us = round(m["engine_process"] * 1e6, 1)
            figures["engine_process_us"] = engine_us
        else:
            response = m["assemble"] + reply
            figures |= {
                "tokenize_us": round(m["tokenize"] * 1e6, 1),
                "transport_us": round((m["host"] - m["tokenize"] - response) * 1e6, 1),
                "response_us": round(response * 1e6, 1),
            }
        result[path] = figures
        widths = (9, 8, 9, 9, 10, 11, 10)
        shown = list(figures.values())[: len(widths)]
        print(
            f"{path:<8}"
            + "".join(f"{v:>{w}}" for v, w in zip(shown, widths, strict=True))
            + (f"   engine process {figures['engine_process_us']} µs" if path.startswith("fe")
               else "")
        )  # fmt: skip
    if "today" in result and "new" in result:
        today, new = result["today"], result["new"]
        for name in ("loop_us", "host_us"):
            result[f"{name}_cut"] = round(today[name] / new[name], 2)
        result["capacity_gain"] = round(new["texts_per_s"] / today["texts_per_s"], 2)
        print(
            f"\ntoday / new, per text: loop {result['loop_us_cut']}x, host "
            f"{result['host_us_cut']}x; texts/s new / today {result['capacity_gain']}x"
        )
    for path in paths:
        if path.startswith("fe") and "new" in result:
            gain = round(result[path]["texts_per_s"] / result["new"]["texts_per_s"], 2)
            result[f"{path}_capacity_gain"] = gain
            print(f"{path} / new, texts/s: {gain}x ({path[2:]} front ends, {cores} cores)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
