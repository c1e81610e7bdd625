"""Gathering a word's stored occurrences with their sentences' vectors (what
SearchOccurrences reads) against the word vectors alone (what InduceSenses clusters).

No model: 2,000 stored documents of 300 characters, each character a token with a random
384-dim vector, the word 苹果 in each about 20 times (40,000 occurrences in all).
The two alternate in each round; medians.

    python tests/bench/bench_senses_gather.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import numpy as np

from embedsense.server.index.store import Document, Token
from embedsense.server.senses.senses import gather_occurrences

SENTENCES = (
    "今天天气很好，我们去公园散步吧。他买了苹果手机。超市里的苹果很新鲜！我喜欢吃苹果，也吃梨。"
)
DOCUMENTS, CHARACTERS, DIM = 2000, 300, 384


def stored(i: int, rng: np.random.Generator) -> Document:
    text = (SENTENCES * 7)[:CHARACTERS]
    tokens = [Token("", 0, 0)] + [Token(c, j, j + 1) for j, c in enumerate(text)]
    vectors = rng.standard_normal((len(tokens), DIM)).astype(np.float32)
    return Document(text, vectors[1], f"doc-{i}", {}, tokens, vectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    docs = {f"doc-{i}": stored(i, rng) for i in range(DOCUMENTS)}
    collection = SimpleNamespace(
        ids_containing=lambda word, limit: list(docs)[:limit],
        get=lambda ids: [docs[i] for i in ids],
    )
    ways = {"with sentences (SearchOccurrences)": True, "word vectors alone (InduceSenses)": False}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, with_sentences in ways.items():
            start = time.perf_counter()
            found = gather_occurrences(collection, "苹果", with_sentences=with_sentences)
            seconds[name].append(time.perf_counter() - start)
    print(f"{len(found.items)} occurrences in {DOCUMENTS} documents, {args.rounds} rounds")
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    for name, median in medians.items():
        print(f"{name:<40}{median:>7.3f} s")
    print(json.dumps({"seconds": {name: round(m, 3) for name, m in medians.items()}}))


if __name__ == "__main__":
    main()
