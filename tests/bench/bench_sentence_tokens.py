"""What a collection with token vectors pays to read each sentence alone: the upsert's
engine work for documents of several sentences, one pass (the path before: the document's
vector and its token vectors from the whole text) against two (the whole text for the
document's vector, then each sentence alone for the token vectors).

The real model (the offline default) at the server's default precision; documents of
`--sentences` held-out sentences of tests/data/senses_eval.json each. The two alternate in
each round; medians of the rounds, in documents/s and in token vectors stored per document.

    python tests/bench/bench_sentence_tokens.py [--documents 64] [--sentences 6] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path

from embedsense.model import TextRole, load_model
from embedsense.server.config import EngineConfig
from embedsense.server.engine import Engine
from embedsense.server.senses.words import encode_to_store

DATA = Path(__file__).resolve().parents[1] / "data" / "senses_eval.json"


def documents(count: int, sentences: int) -> list[str]:
    words = json.loads(DATA.read_text(encoding="utf-8"))["words"]
    pool = [t for senses in words.values() for s in senses.values() for t in s["test"]]
    return ["".join(pool[(i * sentences + j) % len(pool)] for j in range(sentences))
            for i in range(count)]  # fmt: skip


async def one_pass(engine: Engine, texts: list[str]) -> int:
    found = await engine.embed(texts, role=TextRole.PASSAGE, windowed=True, token_vectors=True)
    return sum(len(r.token_vectors) for r in found)


async def two_passes(engine: Engine, texts: list[str]) -> int:
    """As the server stores them: the texts and their sentences in one engine call."""
    _, stored = await encode_to_store(engine, texts)
    return sum(len(tokens) for tokens, _ in stored)


async def run(args: argparse.Namespace) -> None:
    engine = Engine(EngineConfig(), load_model()).start()
    texts = documents(args.documents, args.sentences)
    paths = {"one pass (the path before)": one_pass, "each sentence alone too": two_passes}
    rates: dict[str, list[float]] = {name: [] for name in paths}
    stored: dict[str, int] = {}
    try:
        await one_pass(engine, texts[:8])  # warm-up
        for _ in range(args.rounds):
            for name, path in paths.items():
                began = time.perf_counter()
                stored[name] = await path(engine, texts)
                rates[name].append(len(texts) / (time.perf_counter() - began))
    finally:
        engine.close()
    sentences = f"{args.sentences} sentence" + ("" if args.sentences == 1 else "s")
    print(f"{len(texts)} documents of {sentences}, --dtype {engine.config.dtype}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()})")  # fmt: skip
    base = statistics.median(rates["one pass (the path before)"])
    for name in paths:
        median = statistics.median(rates[name])
        print(f"{name:<30} {median:8.1f} documents/s  ({median / base:.2f}x)  "
              f"{stored[name] / len(texts):6.1f} token vectors stored per document")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=64)
    parser.add_argument("--sentences", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
