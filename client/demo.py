"""`make demo`: start a server on the offline default model, index the bundled corpus, search
it, tell the two 苹果 apart, stop the server. Everything it does goes through the client.

The corpus (client/data/corpus.jsonl, written for this project) has ~200 Chinese sentences;
苹果, 小米, 杜鹃 and 东西 appear in two senses each, labelled in their metadata. The sense
of a word in a new sentence is read off its contextual token vector: the nearest of the
per-sense centroids of its labelled occurrences (the server-side Disambiguate RPC, with
more methods, arrives with the senses issue).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from importlib.resources import files

import numpy as np

from embedsense.client import Client, Retry, Unavailable
from embedsense.client.cli import table

CORPUS = files("embedsense.client") / "data" / "corpus.jsonl"
QUESTIONS = [("我喜欢吃苹果", "苹果"), ("我买了最新的苹果手机", "苹果"),
             ("早饭喝了一碗小米粥", "小米"), ("小米的新手机卖得很好", "小米")]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(target: str, server: subprocess.Popen, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    with Client(target, timeout=2, retry=Retry(attempts=1)) as probe:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with status {server.returncode}")
            try:
                probe.info()
                return
            except Unavailable:
                time.sleep(0.5)
    raise SystemExit(f"the server did not come up within {limit_s:.0f} s")


def word_vector(client: Client, text: str, word: str) -> np.ndarray:
    """The contextual vector of `word`'s first occurrence: the mean of its tokens."""
    (emb,) = client.embed_tokens([text])
    start = text.index(word)
    end = start + len(word)
    rows = [i for i, (s, e) in enumerate(emb.tokens.offsets)
            if emb.tokens.from_text[i] and s < end and e > start]  # fmt: skip
    vector = emb.vectors[rows].mean(axis=0)
    return vector / np.linalg.norm(vector)


def sense_centroids(client: Client, docs: list[dict]) -> dict[str, dict[str, np.ndarray]]:
    vectors: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for doc in docs:
        meta = doc["metadata"]
        if "sense" in meta:
            vectors[meta["word"]][meta["sense"]].append(word_vector(client, doc["text"],
                                                                    meta["word"]))  # fmt: skip
    return {
        word: {sense: np.mean(vs, axis=0) / np.linalg.norm(np.mean(vs, axis=0))
               for sense, vs in senses.items()}
        for word, senses in vectors.items()
    }  # fmt: skip


def run(client: Client) -> None:
    docs = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    info = client.info()
    print(f"server: {info.model} ({info.dim}-dim) on {info.device}/{info.dtype}\n")

    client.create_collection("demo", store_tokens=True)
    started = time.perf_counter()
    client.upsert("demo", docs, batch_size=64, show_progress_bar=True)
    print(f"indexed {client.count('demo')} sentences in {time.perf_counter() - started:.1f} s\n")

    for query in ("水果的营养", "智能手机发布会", "春天开花"):
        hits = client.search("demo", query, k=3)
        print(f"nearest to {query!r}:")
        print(table([(f"{h.score:.3f}", h.text) for h in hits], ["score", "sentence"]) + "\n")

    centroids = sense_centroids(client, docs)
    rows = []
    for text, word in QUESTIONS:
        vector = word_vector(client, text, word)
        scores = {sense: float(vector @ c) for sense, c in centroids[word].items()}
        best = max(scores, key=scores.get)
        rows.append((text, word, best, "  ".join(f"{s} {v:.3f}" for s, v in scores.items())))
    print("which sense? (cosine of the word's contextual vector to each sense's centroid)")
    print(table(rows, ["sentence", "word", "sense", "scores"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="use a running server instead of starting one")
    args = parser.parse_args()
    if args.target:
        with Client(args.target, timeout=120) as client:
            run(client)
        return 0

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="embedsense-demo-") as data_dir:
        command = [sys.executable, "-m", "embedsense.client.cli", "serve", "--host", "127.0.0.1",
                   "--port", str(port), "--data-dir", data_dir]  # fmt: skip
        print(f"starting: embedsense serve --port {port} (offline default model)")
        server = subprocess.Popen(command, env={**os.environ, "EMBEDSENSE_API_KEY": ""})
        try:
            wait_until_serving(f"127.0.0.1:{port}", server)
            with Client(f"127.0.0.1:{port}", timeout=120) as client:
                run(client)
        finally:
            server.send_signal(signal.SIGTERM)  # graceful: in-flight work, then a snapshot
            server.wait(60)
            print("\nserver stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
