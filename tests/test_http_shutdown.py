"""Stopping a server with HTTP requests in flight: the HTTP port keeps the grace that gRPC
keeps, answering 503 meanwhile, and no more. It closed at once, refusing connections, then
waited up to aiohttp's own 60 s for the requests in flight, whatever the grace."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

from conftest import ServerThread

GRACE_S = 1.0


def post_embed(base: str, texts: list[str], answers: list) -> None:
    request = urllib.request.Request(
        base + "/embed",
        data=json.dumps({"inputs": texts}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            answers.append(response.status)
    except (urllib.error.URLError, ConnectionError) as err:  # cut at the grace's end
        answers.append(err)


def get(base: str, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


def test_http_requests_in_flight_get_the_grace_and_new_ones_a_503_meanwhile(e5, tmp_path):
    server = ServerThread(e5, tmp_path, http_port=0)
    base = f"http://127.0.0.1:{server.server.http_port}"
    try:
        assert get(base, "/health")[0] == 200
        answers: list = []
        # Seconds of work on any CPU: 2,000 texts of about 40 tokens.
        texts = [f"{'苹果手机和香蕉都很好' * 4}{i}" for i in range(2000)]
        caller = threading.Thread(target=post_embed, args=(base, texts, answers))
        caller.start()
        deadline = time.monotonic() + 30
        while server.server.http._idle.is_set():  # until the request is in flight
            assert time.monotonic() < deadline and not answers, answers
            time.sleep(0.02)
        started = time.monotonic()
        stopping = asyncio.run_coroutine_threadsafe(server.server.stop(GRACE_S), server.loop)
        time.sleep(0.2)
        assert not stopping.done() and not answers, "the embed finished before the test could"
        # Draining: a new connection is answered, and told to come back (it was refused).
        status, headers = get(base, "/health")
        assert status == 503 and headers.get("Retry-After"), (status, headers)
        stopping.result(timeout=60)
        assert time.monotonic() - started < GRACE_S + 5  # not until the embed's end, as it was
        caller.join(30)
        assert answers and answers[0] != 200, answers  # cut at the grace's end, not finished
    finally:
        server.loop.call_soon_threadsafe(server.loop.stop)
        server.thread.join(10)
