"""`make demo`: start a server on the offline default model, index the bundled corpus, search
it, tell the two 苹果 apart, stop the server. Everything it does goes through the client.

The corpus (client/data/corpus.jsonl, written for this project) has ~200 Chinese sentences;
苹果, 小米, 杜鹃 and 东西 appear in two senses each (labelled in their metadata, unused by
the server). The demo asks the server which sense 苹果 and 小米 have in new sentences (its
default inventory), finds the corpus's 苹果 used as the company, and lets it find the
senses of 苹果 in the corpus by clustering, without labels.
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
from importlib.resources import files
from pathlib import Path

from embedsense.client import AlreadyExists, Client, Retry, Unavailable
from embedsense.client.cli import api_key_from_env, table

CORPUS = files("embedsense.client") / "data" / "corpus.jsonl"
QUESTIONS = [("我喜欢吃苹果", "苹果"), ("我买了最新的苹果手机", "苹果"),
             ("早饭喝了一碗小米粥", "小米"), ("小米的新手机卖得很好", "小米")]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def private_log_path() -> Path:
    """server.log in a new directory only this user can enter (mkdtemp: mode 0700). Kept
    after the demo, for reading."""
    return Path(tempfile.mkdtemp(prefix="embedsense-demo-")) / "server.log"


def wait_until_serving(
    target: str, server: subprocess.Popen, log_path: Path, limit_s: float = 300
) -> None:
    deadline = time.monotonic() + limit_s
    with Client(target, timeout=2, retry=Retry(attempts=1)) as probe:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                tail = log_path.read_text(encoding="utf-8").splitlines()[-5:]
                raise SystemExit(
                    f"the server exited with status {server.returncode}; the end of its log "
                    f"({log_path}):\n" + "\n".join(tail)
                )
            try:
                probe.info()
                return
            except Unavailable:
                time.sleep(0.5)
    raise SystemExit(f"the server did not come up within {limit_s:.0f} s")


def demo_collection(client: Client, name: str, model: str) -> None:
    """The demo's collection: made, or, on a server that kept it from an earlier run, used
    again (the corpus's ids make the upsert a rewrite of the same documents). One of that
    name the demo cannot use stops it, untouched: it may be someone's."""
    try:
        client.create_collection(name, store_tokens=True)
        return
    except AlreadyExists:
        found = client.describe_collection(name)
    if not found.store_tokens or found.model != model:
        made = f"of {found.model}'s vectors" + ("" if found.store_tokens else ", no token vectors")
        raise SystemExit(
            f"the server has a collection {name!r} ({made}); the demo needs one of {model}'s "
            f"vectors with token vectors: drop it (embedsense drop {name}) or name another "
            "(--collection)"
        )
    print(f"using the collection {name!r} already on the server\n")


def run(client: Client, collection: str = "demo") -> None:
    docs = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    info = client.info()
    print(f"server: {info.model} ({info.dim}-dim) on {info.device}/{info.dtype}\n")

    demo_collection(client, collection, info.model)
    started = time.perf_counter()
    client.upsert(collection, docs, batch_size=64, show_progress_bar=True)
    print(f"indexed {client.count(collection)} sentences in "
          f"{time.perf_counter() - started:.1f} s\n")  # fmt: skip

    for query in ("水果的营养", "智能手机发布会", "春天开花"):
        hits = client.search(collection, query, k=3)
        print(f"nearest to {query!r}:")
        print(table([(f"{h.score:.3f}", h.text) for h in hits], ["score", "sentence"]) + "\n")

    rows = []
    for text, word in QUESTIONS:
        result = client.disambiguate(text, word)  # the server's "default" inventory
        rows.append((text, word, result.label, "  ".join(
            f"{s.label} {s.probability:.0%}" for s in result.scores)))  # fmt: skip
    print("which sense? (the word in its sentence, against the server's default inventory)")
    print(table(rows, ["sentence", "word", "sense", "probabilities"]) + "\n")

    found = client.search_occurrences(collection, "我买了最新的苹果手机", "苹果", k=3)
    print("苹果 in the corpus, used as in 我买了最新的苹果手机:")
    print(table([(f"{o.score:+.3f}", o.text) for o in found], ["score", "sentence"]) + "\n")

    induced = client.induce_senses(collection, "苹果")
    print(f"the senses of 苹果 in the corpus, found without labels ({induced.occurrences} "
          f"occurrences, {len(induced.senses)} clusters):")  # fmt: skip
    for n, sense in enumerate(induced.senses, 1):
        print(f"  sense {n} ({sense.size}): " + " / ".join(o.text for o in sense.central[:2]))


FRUIT_SENTENCE = "我喜欢吃苹果，尤其是刚摘下来的红富士。"  # both from the corpus
PHONE_SENTENCE = "我买了最新的苹果手机，拍照效果特别好。"


def pictures(client: Client, folder: Path) -> None:
    """The README's two pictures, from two corpus sentences."""
    from embedsense.client.render import render_png

    folder.mkdir(parents=True, exist_ok=True)
    explanation = client.explain(FRUIT_SENTENCE, "苹果")
    comparison = client.compare_layers(FRUIT_SENTENCE, PHONE_SENTENCE, "苹果")
    written = [
        render_png(explanation, folder / "explain_apple_fruit.png", comparison,
                   title=f"{FRUIT_SENTENCE}   vs   {PHONE_SENTENCE}"),
        render_png(client.explain(PHONE_SENTENCE, layers=[12]),
                   folder / "explain_phone_layer12.png", layer=12, title=PHONE_SENTENCE),
    ]  # fmt: skip
    print("\nwrote " + ", ".join(str(p) for p in written))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", help="use a running server instead of starting one")
    parser.add_argument(
        "--collection",
        default="demo",
        help="the collection the demo fills (default demo); on a server that has it from "
        "an earlier run, it is used again",
    )
    parser.add_argument("--pictures", type=Path, help="also draw the README's pictures here")
    parser.add_argument(
        "--server-log",
        type=Path,
        help="where the started server logs (default: server.log in a new "
        "private temporary directory, named when the demo starts)",
    )
    args = parser.parse_args()
    if args.target:  # a running server; its API key, if it has one, from the environment
        api_key = api_key_from_env()
        with Client(args.target, api_key=api_key, timeout=120) as client:
            run(client, args.collection)
            if args.pictures:
                pictures(client, args.pictures)
        return 0

    port = free_port()
    # The server's JSON log goes to a file, named here: the demo's output is a report. Never
    # a fixed name in the shared /tmp, where anyone may have planted a link to another file.
    log_path = args.server_log or private_log_path()
    with tempfile.TemporaryDirectory(prefix="embedsense-demo-") as data_dir, \
            open(log_path, "w", encoding="utf-8") as log:  # fmt: skip
        command = [sys.executable, "-m", "embedsense.server", "--host", "127.0.0.1",
                   "--port", str(port), "--data-dir", data_dir]  # fmt: skip
        print(f"starting: embedsense-server --port {port} (offline default model)")
        print(f"server log: {log_path}\n")
        # No API key from the environment: the demo's own client sends none.
        keyless = {**os.environ, "EMBEDSENSE_API_KEY": "", "EMBEDSENSE_API_KEY_FILE": ""}
        server = subprocess.Popen(command, env=keyless, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_serving(f"127.0.0.1:{port}", server, log_path)
            with Client(f"127.0.0.1:{port}", timeout=120) as client:
                run(client, args.collection)
                if args.pictures:
                    pictures(client, args.pictures)
        finally:
            server.send_signal(signal.SIGTERM)  # graceful: in-flight work, then a snapshot
            server.wait(60)
            print("\nserver stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
