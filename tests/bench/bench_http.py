"""HTTP beside gRPC: POST /v1/embeddings vs the Embed RPC on the same server, same run.

One server in its own process on 127.0.0.1 (`embedsense-server --http-port`); 256 mixed-
length Chinese texts, one text per request, from 1 and from 32 concurrent callers: through
gRPC (the SDK's AsyncClient) and through HTTP (aiohttp's client, JSON, OpenAI's shape with
encoding_format "float"). Texts/s side by side, the HTTP/gRPC ratio (the goal: at least
0.9), p50/p99 latency. Last line: one JSON object.

    python tests/bench/bench_http.py [--texts 256]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ops.serverproc import ServerProcess, free_port  # noqa: E402
from workload import chinese_texts, concurrent_callers  # noqa: E402

from embedsense.client import AsyncClient  # noqa: E402

MODEL = "multilingual-e5-small"
GOAL = 0.9  # HTTP's throughput at least this share of gRPC's


def summary(name: str, n: int, seconds: float, latencies: list[float]) -> dict:
    ms = np.array(latencies) * 1000
    row = {"texts_per_s": round(n / seconds, 1),
           "p50_ms": round(float(np.percentile(ms, 50)), 1),
           "p99_ms": round(float(np.percentile(ms, 99)), 1)}  # fmt: skip
    print(f"  {name:<22} {row['texts_per_s']:>7.1f} texts/s   p50 {row['p50_ms']:>7.1f} ms   "
          f"p99 {row['p99_ms']:>7.1f} ms")  # fmt: skip
    return row


async def over_grpc(target: str, texts: list[str], callers: int) -> tuple[float, list[float]]:
    async with AsyncClient(target, timeout=300) as client:
        await client.encode(texts[:4])
        return await concurrent_callers(texts, callers, lambda t: client.encode([t]))


async def over_http(url: str, texts: list[str], callers: int) -> tuple[float, list[float]]:
    connector = aiohttp.TCPConnector(limit=callers)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(text: str) -> None:
            body = {"input": [text], "model": MODEL, "encoding_format": "float"}
            async with session.post(url, json=body) as response:
                assert response.status == 200, await response.text()
                await response.json()

        await one(texts[0])
        return await concurrent_callers(texts, callers, one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=256)
    args = parser.parse_args()
    texts = chinese_texts(args.texts)
    http_port = free_port()
    result: dict = {}
    with tempfile.TemporaryDirectory(prefix="embedsense-bench-http-") as tmp:
        server = ServerProcess(Path(tmp), None, "--http-port", str(http_port), "--threads", "2")
        server.start()
        try:
            url = f"http://127.0.0.1:{http_port}/v1/embeddings"
            print(f"{len(texts)} Chinese texts, one per request, server in its own process")
            for callers in (1, 32):
                print(f"{callers} caller(s):")
                timed = asyncio.run(over_grpc(server.target, texts, callers))
                grpc_row = summary("gRPC Embed", len(texts), *timed)
                timed = asyncio.run(over_http(url, texts, callers))
                http_row = summary("HTTP /v1/embeddings", len(texts), *timed)
                ratio = round(http_row["texts_per_s"] / grpc_row["texts_per_s"], 3)
                verdict = "met" if ratio >= GOAL else "NOT met"
                print(f"  HTTP / gRPC throughput: {ratio:.2f} (goal >= {GOAL}: {verdict})")
                result[f"{callers}_callers"] = {"grpc": grpc_row, "http": http_row,
                                                "http_over_grpc": ratio}  # fmt: skip
        finally:
            server.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
