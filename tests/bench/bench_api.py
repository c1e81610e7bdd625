"""The service's overhead: Embed and Search through gRPC vs the same work in-process.

1. Embed: 384 mixed-length Chinese texts (5-120 tokens), one text per request, from 1, 8
   and 32 concurrent callers: through a real server (its own process, `embedsense serve`,
   on 127.0.0.1) vs the engine called in this process. Texts/s, the ratio, p50/p99 latency.
2. Search: a 100,000-document collection (random unit vectors, Flat and HNSW32), queried by
   vector from 8 concurrent callers through gRPC vs the collection searched in-process.
3. The wire format of vectors: encode + decode time per 1,000 384-dim vectors as raw
   float32 bytes (what the API uses) vs `repeated float`.
Last line: one JSON object.

    python tests/bench/bench_api.py [--texts 384] [--docs 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ops.serverproc import ServerProcess  # noqa: E402  (tests/ops/serverproc.py)
from workload import chinese_texts, concurrent_callers  # noqa: E402  (tests/workload.py)

from embedsense.client import AsyncClient  # noqa: E402
from embedsense.model import TextRole, load_model  # noqa: E402
from embedsense.proto.tensors import from_tensor, to_tensor  # noqa: E402
from embedsense.proto.v1 import embedsense_pb2 as pb  # noqa: E402
from embedsense.server.config import EngineConfig  # noqa: E402
from embedsense.server.engine import Engine  # noqa: E402
from embedsense.server.index import Catalog, Document  # noqa: E402

MODEL = "multilingual-e5-small"


def row(name: str, items: int, seconds: float, latencies: list[float], unit: str) -> dict:
    lat = np.array(latencies) * 1000
    result = {
        f"{unit}_per_s": round(items / seconds, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
    }
    print(f"  {name:<28} {result[f'{unit}_per_s']:>9.1f} {unit}/s   p50 {result['p50_ms']:>8.2f} ms"
          f"   p99 {result['p99_ms']:>8.2f} ms")  # fmt: skip
    return result


def bench_embed(texts: list[str], target: str) -> dict:
    model = load_model(MODEL)
    engine = Engine(EngineConfig(threads=2), model).start()
    results = {}
    try:
        for concurrency in (1, 8, 32):
            print(f"Embed, {concurrency} concurrent callers, one text per request:")

            async def in_process(n: int = concurrency) -> tuple[float, list[float]]:
                return await concurrent_callers(
                    texts, n, lambda t: engine.embed([t], role=TextRole.QUERY)
                )

            async def through_grpc(n: int = concurrency) -> tuple[float, list[float]]:
                async with AsyncClient(target, timeout=120) as client:
                    await client.encode(texts[:4])  # connect and warm
                    return await concurrent_callers(texts, n, lambda t: client.encode([t]))

            local = row("engine in-process", len(texts), *asyncio.run(in_process()), "texts")
            remote = row("through gRPC", len(texts), *asyncio.run(through_grpc()), "texts")
            ratio = remote["texts_per_s"] / local["texts_per_s"]
            print(f"  gRPC / in-process: {ratio:.3f}")
            results[str(concurrency)] = {"in_process": local, "grpc": remote,
                                         "ratio": round(ratio, 3)}  # fmt: skip
    finally:
        engine.close()
    return results


def fill_collections(data_dir: Path, docs: int) -> np.ndarray:
    """Two collections of `docs` random unit vectors, written in-process; the queries."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(docs, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalog = Catalog(data_dir)
    for spec in ("Flat", "HNSW32"):
        name = spec.lower()
        catalog.create(name, model=MODEL, dim=384, index_spec="Flat")
        for s in range(0, docs, 10_000):
            catalog.get(name).upsert([Document(id=str(i), text=f"doc {i}", vector=vectors[i])
                                      for i in range(s, min(s + 10_000, docs))])  # fmt: skip
        if spec != "Flat":
            catalog.reindex(name, spec)
    catalog.close()
    return rng.normal(size=(400, 384)).astype(np.float32)


def bench_search(data_dir: Path, queries: np.ndarray, target: str) -> dict:
    catalog = Catalog(data_dir)  # read-only use here: the server holds the same files
    results = {}
    try:
        for name in ("flat", "hnsw32"):
            collection = catalog.get(name)
            print(f"Search, {name}, {collection.count()} documents, k=10, 8 concurrent callers:")

            async def in_process(c=collection) -> tuple[float, list[float]]:
                return await concurrent_callers(
                    list(queries), 8, lambda q: asyncio.to_thread(c.search, q, 10)
                )

            async def through_grpc(n: str = name) -> tuple[float, list[float]]:
                async with AsyncClient(target, timeout=120) as client:
                    await client.search(n, queries[0], k=10)
                    return await concurrent_callers(
                        list(queries), 8, lambda q: client.search(n, q, k=10)
                    )

            local = row("in-process", len(queries), *asyncio.run(in_process()), "queries")
            remote = row("through gRPC", len(queries), *asyncio.run(through_grpc()), "queries")
            ratio = remote["queries_per_s"] / local["queries_per_s"]
            print(f"  gRPC / in-process: {ratio:.3f}")
            results[name] = {"in_process": local, "grpc": remote, "ratio": round(ratio, 3)}
    finally:
        catalog.store.close()
    return results


def repeated_float_message() -> type:
    """A message like Tensor but with `repeated float` (packed): the alternative format."""
    file = descriptor_pb2.FileDescriptorProto(name="bench_floats.proto", package="bench",
                                              syntax="proto3")  # fmt: skip
    message = file.message_type.add(name="Floats")
    message.field.add(name="shape", number=1, type=13, label=3)  # uint32, repeated
    message.field.add(name="values", number=2, type=2, label=3)  # float, repeated
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.Floats"))


def bench_wire(repeats: int = 20) -> dict:
    vectors = np.random.default_rng(0).normal(size=(1000, 384)).astype(np.float32)
    floats = repeated_float_message()

    def raw_bytes() -> None:
        wire = pb.EmbedResponse(sentence_vectors=to_tensor(vectors)).SerializeToString()
        from_tensor(pb.EmbedResponse.FromString(wire).sentence_vectors)

    def repeated() -> None:
        wire = floats(shape=vectors.shape, values=vectors.ravel()).SerializeToString()
        parsed = floats.FromString(wire)
        np.array(parsed.values, dtype=np.float32).reshape(tuple(parsed.shape))

    result = {}
    for name, fn in (("raw_bytes", raw_bytes), ("repeated_float", repeated)):
        fn()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        result[f"{name}_ms_per_1000_vectors"] = round((time.perf_counter() - start) / repeats
                                                      * 1000, 3)  # fmt: skip
    print(f"Wire format, encode + decode of 1,000 384-dim vectors: raw float32 bytes "
          f"{result['raw_bytes_ms_per_1000_vectors']:.2f} ms, repeated float "
          f"{result['repeated_float_ms_per_1000_vectors']:.2f} ms")  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=384)
    parser.add_argument("--docs", type=int, default=100_000)
    args = parser.parse_args()
    wire = bench_wire()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        queries = fill_collections(data_dir, args.docs)
        server = ServerProcess(data_dir, None, "--threads", "2")
        server.start()
        try:
            embed = bench_embed(chinese_texts(args.texts), server.target)
            search = bench_search(data_dir, queries, server.target)
        finally:
            server.stop()
    print(json.dumps({"embed": embed, "search": search, "wire": wire}))


if __name__ == "__main__":
    main()
