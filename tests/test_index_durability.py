"""Durability: a writer killed with SIGKILL at random moments loses nothing it acknowledged.

The writer (tests/durability_writer.py) prints each operation before it runs and an ack
after it returns. After every kill the store is reopened here and must hold exactly the
acknowledged state; the one operation in flight at the kill may or may not have happened,
but wholly or not at all. The index must agree with the store.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from embedsense.server.index import Catalog

WRITER = Path(__file__).with_name("durability_writer.py")
KILLS = 22


def replay(output: str, state: dict[str, dict]) -> dict | None:
    """Apply the acknowledged operations to `state`; the unacknowledged one, if any."""
    pending = None
    for line in output.splitlines():
        try:
            message = json.loads(line)
        except json.JSONDecodeError:  # the last line, cut by the kill
            break
        if "op" in message:
            pending = message
        elif "ack" in message and pending is not None:
            apply(pending, state)
            pending = None
    return pending if pending and pending["op"] != "snapshot" else None


def apply(op: dict, state: dict[str, dict]) -> None:
    if op["op"] == "upsert":
        for doc in op["docs"]:
            state[doc["id"]] = doc
    elif op["op"] == "delete":
        for doc_id in op["ids"]:
            state.pop(doc_id, None)


def same(stored, doc: dict) -> bool:
    return (
        stored is not None
        and stored.text == doc["text"]
        and stored.metadata == doc["metadata"]
        and np.array_equal(stored.vector, np.array(doc["vector"], dtype=np.float32))
        and [[t.text, t.start, t.end] for t in stored.tokens] == doc["tokens"]
        and np.array_equal(stored.token_vectors, np.array(doc["token_vectors"], np.float32))
    )


def test_acknowledged_writes_survive_sigkill(tmp_path):
    rng = random.Random(20261127)
    state: dict[str, dict] = {}
    acked_ops = 0
    for round_ in range(KILLS):
        log = tmp_path / f"writer-{round_}.log"
        with open(log, "w") as stderr:
            writer = subprocess.Popen(
                [sys.executable, str(WRITER), str(tmp_path / "data"), str(round_)],
                stdout=subprocess.PIPE, stderr=stderr, text=True,
            )  # fmt: skip
        assert "ready" in writer.stdout.readline(), log.read_text()
        time.sleep(rng.uniform(0.05, 0.5))
        writer.kill()  # SIGKILL
        output = writer.stdout.read()  # the same reader as readline: nothing it buffered is lost
        writer.wait()
        acked_ops += output.count('"ack"')
        pending = replay(output, state)

        catalog = Catalog(tmp_path / "data")
        collection = catalog.get("durable")
        in_doubt = set()
        if pending is not None:
            in_doubt = {d["id"] for d in pending.get("docs", [])} | set(pending.get("ids", []))
        stored = dict(zip(state, collection.get(list(state)), strict=True))
        for doc_id, doc in state.items():
            if doc_id not in in_doubt:
                assert same(stored[doc_id], doc), f"round {round_}: {doc_id} lost or changed"
        # The operation in flight happened wholly or not at all.
        if pending is not None:
            after = dict(state)
            apply(pending, after)
            now = dict(zip(in_doubt, collection.get(list(in_doubt)), strict=True))
            happened = all(
                same(now[i], after[i]) if i in after else now[i] is None for i in in_doubt
            )
            not_happened = all(
                same(now[i], state[i]) if i in state else now[i] is None for i in in_doubt
            )
            assert happened or not_happened, f"round {round_}: a torn write {pending}"
            if happened:
                state = after

        # The index agrees with the store: the same count, every document finds itself,
        # and no search returns an id the store does not hold.
        assert collection.count() == catalog.store.count("durable") == len(state)
        for doc_id in rng.sample(sorted(state), min(25, len(state))):
            top = collection.search(np.array(state[doc_id]["vector"]), k=1)[0]
            assert top[0].id == doc_id
        query = np.random.default_rng(round_).normal(size=16)
        raw = collection.search(query, k=50, with_documents=False)[0]  # as the index found them
        assert {h.id for h in raw} <= set(state)
        catalog.store.close()  # no snapshot: the next writer starts from what it finds
    assert acked_ops > 10 * KILLS  # the kills landed while writes were going on


# ------------------------------------------------------------------ the store's disk


def test_a_full_disk_or_a_locked_store_is_a_status_that_says_so(e5, tmp_path, monkeypatch):
    """SQLite's "database or disk is full" and "database is locked" (another process held
    the store past the busy timeout) reached callers as INTERNAL ("OperationalError: ...").
    Full: RESOURCE_EXHAUSTED (HTTP 507), nothing stored; locked: UNAVAILABLE, retryable. The
    server serves on, and a write succeeds once the store is free again."""
    import sqlite3

    import grpc
    from conftest import ServerThread

    from embedsense.client import Client, Retry
    from embedsense.client.errors import ResourceExhausted, Unavailable
    from embedsense.server.index.store import Store

    data = tmp_path / "data"
    connect = Store._connect

    def small_disk(store: Store) -> sqlite3.Connection:
        conn = connect(store)
        if store.path.is_relative_to(data):  # this test's server only
            conn.execute("PRAGMA max_page_count = 50")  # 200 kB at 4 kB pages
        return conn

    monkeypatch.setattr(Store, "_connect", small_disk)
    monkeypatch.setattr(Store, "BUSY_TIMEOUT_MS", 200, raising=False)
    running = ServerThread(e5, data, http_port=0)
    try:
        with Client(running.target, timeout=30, retry=Retry(attempts=1)) as client:
            client.create_collection("c", dim=4)
            vectors = np.eye(4, dtype=np.float32)
            client.upsert("c", [{"id": "small", "text": "t"}], vectors=vectors[:1])
            big = [{"id": f"big{i}", "text": "x" * 90_000} for i in range(3)]
            with pytest.raises(ResourceExhausted, match="disk.*full") as full:
                client.upsert("c", big, vectors=vectors[:3])
            assert full.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
            body = {"documents": [{**doc, "vector": [0.5] * 4} for doc in big]}
            request = urllib.request.Request(
                f"http://127.0.0.1:{running.server.http_port}/v1/collections/c/upsert",
                json.dumps(body).encode(), {"Content-Type": "application/json"},
            )  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as http_full:
                urllib.request.urlopen(request, timeout=30)
            assert http_full.value.code == 507
            assert json.loads(http_full.value.read())["error"]["code"] == "insufficient_storage"
            assert client.count("c") == 1

            holder = sqlite3.connect(next(data.glob("*.sqlite3")), isolation_level=None)
            holder.execute("BEGIN EXCLUSIVE")
            with pytest.raises(Unavailable, match="locked"):
                client.upsert("c", [{"id": "second", "text": "t"}], vectors=vectors[1:2])
            holder.execute("ROLLBACK")
            holder.close()
            client.upsert("c", [{"id": "second", "text": "t"}], vectors=vectors[1:2])
            assert client.count("c") == 2
    finally:
        running.stop()
