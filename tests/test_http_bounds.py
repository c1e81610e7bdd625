"""Bounded work on the HTTP port: a body limit derived from the input limits, a budget of
bodies in flight, a deadline, cancellation when the client hangs up (its queued rows are
dropped before they cost compute, as on gRPC), and the memory a maximal body costs while
it is in flight."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import ServerThread

from embedsense.server.api.settings import ServerSettings
from embedsense.server.engine import Overloaded


def call(base: str, path: str, body: bytes, timeout: float = 120) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(
        base + path, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class Gate:
    """Holds the engine's worker inside its next forward until opened: rows queued behind
    it wait, as behind a long batch."""

    def __init__(self, engine) -> None:
        self.entered, self.opened = threading.Event(), threading.Event()
        self.runner, self.run = engine.runner, engine.runner.run

        def held(*args, **kwargs):
            self.entered.set()
            self.opened.wait(60)
            return self.run(*args, **kwargs)

        self.runner.run = held

    def open(self) -> None:
        self.opened.set()
        self.runner.run = self.run


def wait_for(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.fixture
def server(e5, tmp_path):
    running = ServerThread(e5, tmp_path, http_port=0, http_deadline_s=2.0)
    yield running
    running.stop()


def test_a_client_that_hangs_up_costs_no_compute(server):
    engine = server.server.engine
    base = f"http://127.0.0.1:{server.server.http_port}"
    gate = Gate(engine)
    first = threading.Thread(target=call, args=(base, "/embed", b'{"inputs": "first"}'))
    first.start()
    assert gate.entered.wait(30)
    before = engine.stats.skipped_cancelled
    texts = json.dumps({"inputs": [f"第{i}个苹果" for i in range(64)]}).encode()
    with socket.create_connection(("127.0.0.1", server.server.http_port)) as raw:
        raw.sendall(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(texts), texts)
        )
        wait_for(lambda: engine.queue_depth >= 64)
    # Hung up: the handler is cancelled, and with it its 64 queued rows.
    gate.open()
    first.join(30)
    wait_for(lambda: engine.stats.skipped_cancelled >= before + 64)
    assert engine.queue_depth == 0


def test_past_its_deadline_a_request_is_a_504_and_its_rows_are_dropped(server):
    engine = server.server.engine
    base = f"http://127.0.0.1:{server.server.http_port}"
    gate = Gate(engine)
    first = threading.Thread(target=call, args=(base, "/embed", b'{"inputs": "first"}'))
    first.start()
    assert gate.entered.wait(30)
    before = engine.stats.skipped_cancelled
    started = time.monotonic()
    body = json.dumps({"input": ["苹果"] * 8}).encode()
    status, headers, answer = call(base, "/v1/embeddings", body)
    waited = time.monotonic() - started
    gate.open()
    first.join(30)
    assert status == 504 and 1.5 < waited < 10, (status, waited)
    error = json.loads(answer)["error"]
    assert error["type"] == "server_error" and "http_deadline_s" in error["message"]
    wait_for(lambda: engine.stats.skipped_cancelled >= before + 8)


def test_the_body_limit_is_derived_from_the_input_limits(e5, tmp_path):
    settings = ServerSettings(max_texts_per_request=4, max_text_chars=100, max_request_chars=200)
    limit = settings.http_body_limit()
    assert limit == 6 * 200 + 8 * 4 + 64 * 1024
    assert ServerSettings().http_body_limit() < 16 * 1024 * 1024  # not gRPC's 64 MiB
    running = ServerThread(
        e5,
        tmp_path,
        http_port=0,
        max_texts_per_request=4,
        max_text_chars=100,
        max_request_chars=200,
    )
    base = f"http://127.0.0.1:{running.server.http_port}"
    try:
        # The largest request the limits allow, written with JSON escapes, fits.
        fits = json.dumps({"inputs": ["苹" * 50] * 4}).encode()
        assert call(base, "/embed", fits)[0] == 200
        status, _, answer = call(base, "/embed", b" " * (limit + 1))
        assert status == 413 and "http_max_body_bytes" in json.loads(answer)["error"]
        # Texts over the request's characters are the shared check's refusal.
        status, _, answer = call(base, "/embed", json.dumps({"inputs": ["苹" * 90] * 3}).encode())
        assert status == 413 and "max_request_chars" in json.loads(answer)["error"]
    finally:
        running.stop()


def test_commas_inside_texts_are_not_counted_as_json_values(e5, tmp_path):
    """Six texts of 100,000 characters are within every limit; their 300,000 commas were
    counted as JSON values, and the body was a 413 "send fewer inputs". (The deadline is the
    default: six full-length forwards take about 2 s on 2 cores, the `server` fixture's.)"""
    running = ServerThread(e5, tmp_path, http_port=0)
    try:
        base = f"http://127.0.0.1:{running.server.http_port}"
        body = json.dumps({"inputs": ["a," * 50_000] * 6, "truncate": True}).encode()
        status, _, answer = call(base, "/embed", body)
        assert status == 200 and len(json.loads(answer)) == 6, answer[:300]
    finally:
        running.stop()


def test_a_body_of_millions_of_tiny_values_is_refused_before_it_is_parsed(server):
    base = f"http://127.0.0.1:{server.server.http_port}"
    body = b'{"input": [' + b",".join([b"1"] * 2_000_000) + b"]}"
    status, _, answer = call(base, "/v1/embeddings", body)
    assert status == 413 and "JSON values" in json.loads(answer)["error"]["message"]


def test_bodies_in_flight_beyond_the_budget_are_a_429(e5, tmp_path):
    running = ServerThread(e5, tmp_path, http_port=0, http_max_body_bytes_in_flight=100_000)
    base = f"http://127.0.0.1:{running.server.http_port}"
    try:
        # A body that arrives slowly holds its bytes from the start.
        with socket.create_connection(("127.0.0.1", running.server.http_port)) as slow:
            slow.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: 80000\r\n\r\n{")
            wait_for(lambda: running.server.http.budget.held >= 80_000)
            status, headers, answer = call(
                base, "/embed", b'{"truncate": true, "inputs": "%s"}' % (b"a " * 15_000)
            )
            assert status == 429 and headers["Retry-After"] == "1"
            assert json.loads(answer)["error_type"] == "Overloaded"
        wait_for(lambda: running.server.http.budget.held == 0)
        assert (
            call(base, "/embed", b'{"truncate": true, "inputs": "%s"}' % (b"a " * 15_000))[0] == 200
        )
    finally:
        running.stop()


def test_a_body_that_says_it_is_encoded_holds_at_most_the_body_limit(e5, tmp_path):
    """Content-Encoding skips the early 413 (a compressed body's length is not its size),
    but it must not let one slow request hold the whole budget by its Content-Length:
    `identity` is no compression (a 413 at once), others hold at most the body limit."""
    running = ServerThread(e5, tmp_path, http_port=0, http_max_body_bytes=100_000,
                           http_max_body_bytes_in_flight=300_000)  # fmt: skip
    port = running.server.http_port
    head = (
        "POST /embed HTTP/1.1\r\nHost: x\r\nContent-Encoding: {}\r\n"
        "Content-Length: 290000\r\n\r\n{{"
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:
            plain.sendall(head.format("identity").encode())
            assert plain.recv(4096).startswith(b"HTTP/1.1 413"), "identity waited for its body"
        with socket.create_connection(("127.0.0.1", port)) as slow:
            slow.sendall(head.format("gzip").encode())
            wait_for(lambda: running.server.http.budget.held > 0)
            assert running.server.http.budget.held == 100_000
            body = b'{"truncate": true, "inputs": "%s"}' % (b"a " * 15_000)
            assert call(f"http://127.0.0.1:{port}", "/embed", body)[0] == 200
    finally:
        running.stop()


def rss_mib() -> tuple[float, float]:
    """This process's resident memory now and at its peak, MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def test_a_maximal_body_in_flight_costs_at_most_four_times_its_size(tmp_path):
    """Three bodies at the size limit (the most characters a request may carry, every one a
    JSON escape) read, parsed, checked and held in flight at once: the peak resident memory
    they add, per request, against the body's size. Measured in a process of its own: in
    this one, what the tests before it left in the heaps moves the peak."""
    measuring = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "from pathlib import Path; from test_http_bounds import maximal_body_ratio; "
        f"print(maximal_body_ratio(Path({str(tmp_path)!r})))"
    )
    done = subprocess.run([sys.executable, "-c", measuring], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ratio = float(done.stdout.split()[-1])
    print(f"a maximal body in flight: peak RSS growth per request {ratio:.2f} x the body")
    assert ratio <= 4, ratio


def maximal_body_ratio(tmp_path: Path) -> float:
    """The measurement above, in this process: the peak RSS growth per request in flight
    over the body's size. The engine is held back (its embed() waits), so what is measured
    is what the HTTP layer holds for a request."""
    from embedsense.model import load_model

    running = ServerThread(load_model(), tmp_path, http_port=0)
    base = f"http://127.0.0.1:{running.server.http_port}"
    settings = running.server.settings
    n, per_text = settings.max_texts_per_request, settings.max_request_chars // 2048
    body = json.dumps({"inputs": ["苹果香蕉"[i % 4] * per_text for i in range(n)]}).encode()
    limit = settings.http_body_limit()
    assert limit - 100_000 < len(body) <= limit, (len(body), limit)
    engine = running.server.engine
    held, release, inside = [], threading.Event(), threading.Semaphore(0)

    async def waiting_embed(texts, **options):
        held.append(texts)
        inside.release()
        await asyncio.get_running_loop().run_in_executor(None, release.wait, 120)
        raise Overloaded("held for the measurement")

    engine.embed = waiting_embed
    try:
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
        before, _ = rss_mib()
        replies: list[int] = []
        senders = [
            threading.Thread(target=lambda: replies.append(call(base, "/embed", body)[0]))
            for _ in range(3)
        ]
        for sender in senders:
            sender.start()
        for _ in senders:
            assert inside.acquire(timeout=120)
        _, peak = rss_mib()
        release.set()
        for sender in senders:
            sender.join(120)
    finally:
        del engine.embed
        running.stop()
    assert replies == [429] * 3 and all(len(texts) == n for texts in held)
    return (peak - before) * 1024 * 1024 / 3 / len(body)


def test_a_collection_reply_over_max_message_bytes_is_refused_before_it_is_written(e5, tmp_path):
    """gRPC replies are bounded by max_message_bytes; a search, scroll or get over HTTP had
    no bound, and wrote gigabytes of JSON for k=10,000 with vectors. Past the same limit it is
    a 413 saying what to ask less of (not a 429: the same request makes the same reply);
    within it, answered as before. Texts count in UTF-8 bytes, not characters: a 4,000-
    character Chinese text is 12,000 bytes."""
    limit, dim = 100_000, 1_000
    running = ServerThread(e5, tmp_path, http_port=0, max_message_bytes=limit)
    base = f"http://127.0.0.1:{running.server.http_port}"
    vectors = np.random.default_rng(7).standard_normal((20, dim)).astype(np.float32)
    documents = [{"id": f"d{i:02}", "text": "苹" * 4_000, "metadata": {"n": i},
                  "vector": row.tolist()} for i, row in enumerate(vectors)]  # fmt: skip

    def post(route: str, body: dict) -> tuple[int, dict, bytes]:
        return call(base, f"/v1/collections/big/{route}", json.dumps(body).encode())

    def refused(route: str, body: dict, *words: str) -> None:
        status, headers, answer = post(route, body)
        assert status == 413, (status, answer[:300])
        error = json.loads(answer)["error"]
        assert error["code"] == "reply_too_large" and "Retry-After" not in headers, error
        for word in ("max_message_bytes", f"{limit:,}", *words):
            assert word in error["message"], error

    def answered(route: str, body: dict) -> dict:
        status, _, answer = post(route, body)
        assert status == 200 and len(answer) <= limit, (status, len(answer), answer[:300])
        return json.loads(answer)

    try:
        made = call(base, "/v1/collections", json.dumps({"name": "big", "dim": dim}).encode())
        assert made[0] == 200, made
        assert post("upsert", {"documents": documents})[0] == 200
        query = {"vector": [vectors[0].tolist()]}
        refused("search", {**query, "k": 10}, "k")  # 120,000 bytes of text alone
        assert len(answered("search", {**query, "k": 5})["results"][0]) == 5
        refused("search", {**query, "k": 5, "with_vectors": True}, "with_vectors")
        refused("scroll", {"limit": 10}, "limit")
        assert len(answered("scroll", {"limit": 5})["documents"]) == 5
        refused("get", {"ids": [d["id"] for d in documents[:10]]}, "ids")
        got = answered("get", {"ids": [d["id"] for d in documents[:2]], "with_vectors": True})
        assert [len(d["vector"]) for d in got["documents"]] == [dim, dim]
    finally:
        running.stop()
