"""`--frontends N`: front-end processes serving one port around one engine process. Every
front end gives the vectors one process gives, applies the keys and the limits, passes a
caller's cancellation on to the engine, and adds its counts to one /metrics; no front end
outlives the engine process, however that ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from conftest import FrontEndsThread, ServerThread
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ops.serverproc import ServerProcess, alive, children

from embedsense.client import (
    TLS,
    AsyncClient,
    Client,
    InvalidArgument,
    ResourceExhausted,
    Retry,
    Unauthenticated,
    Unavailable,
)
from embedsense.client._api import Call, channel_options
from embedsense.model.tokenizer import TextTooLongError
from embedsense.proto.v1 import embedsense_pb2 as pb
from embedsense.server.config import EngineConfig
from embedsense.server.frontends.bridge import Bridge, transportable

KEY = "front-ends-key"
TEXTS = ["我喜欢吃苹果", "苹果公司发布了新款电脑", "the quick brown fox jumps over the lazy dog"]


def each_front_end(
    target: str, limit_s: float = 60, credentials: grpc.ChannelCredentials | None = None, **options
) -> dict[str, Client]:
    """A client connected to each front end: new connections until every replica name has
    been seen (the kernel spreads connections over the processes listening)."""
    found: dict[str, Client] = {}
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        # A connection of its own: gRPC shares one between channels to the same target.
        own = [("grpc.use_local_subchannel_pool", 1), *channel_options()]
        channel = (
            grpc.secure_channel(target, credentials, options=own)
            if credentials
            else grpc.insecure_channel(target, options=own)
        )
        client = Client(timeout=60, retry=Retry(attempts=1), channel=channel, **options)
        name = client.info().replica
        if name in found:
            client.close()
        else:
            found[name] = client
        if len(found) == 2:
            return found
        time.sleep(0.05)
    raise AssertionError(f"in {limit_s} s, connections reached only {sorted(found)}")


@pytest.fixture(scope="module")
def fronts(e5, tmp_path_factory):
    running = FrontEndsThread(e5, tmp_path_factory.mktemp("front-ends"), metrics_port=0,
                              api_key=KEY, max_texts_per_request=8)  # fmt: skip
    yield running
    running.stop()


def test_every_front_end_gives_one_processs_vectors(e5, fronts, tmp_path):
    long_text = "苹果和香蕉都是水果。" * 150  # in windows, stitched in the front end
    alone = ServerThread(e5, tmp_path / "alone")
    try:
        with Client(alone.target, timeout=60) as one:
            sentences = one.encode(TEXTS + [long_text], long_text="windows")
            tokens = one.embed_tokens(TEXTS, layers=[4, 12])
            stitched = one.embed_tokens(long_text, long_text="windows")
    finally:
        alone.stop()
    for name, client in each_front_end(fronts.target, api_key=KEY).items():
        with client:
            mine = client.encode(TEXTS + [long_text], long_text="windows")
            mine_tokens = client.embed_tokens(TEXTS, layers=[4, 12])
            mine_stitched = client.embed_tokens(long_text, long_text="windows")
        np.testing.assert_allclose(mine, sentences, atol=1e-5, err_msg=name)
        assert mine_stitched.windows == stitched.windows > 1
        np.testing.assert_allclose(mine_stitched.vectors, stitched.vectors, atol=1e-5)
        for got, want in zip(mine_tokens, tokens, strict=True):
            np.testing.assert_allclose(got.vectors, want.vectors, atol=1e-5, err_msg=name)


def test_every_front_end_asks_for_the_key_and_applies_the_limits(fronts):
    clients = each_front_end(fronts.target, api_key=KEY)
    for name, client in clients.items():
        with client:
            with pytest.raises(InvalidArgument, match="texts"):  # max_texts_per_request
                client._call(Call("Embed", pb.EmbedRequest(texts=["x"] * 9), lambda r: r))
            with pytest.raises(InvalidArgument, match="layer 40 does not exist"):
                client.embed_tokens(["x"], layers=[40])
        # The same connection, so the same process, without the key.
        channel = grpc.insecure_channel(fronts.target)
        info = channel.unary_unary("/embedsense.v1.EmbedSense/Info")
        with pytest.raises(grpc.RpcError) as refused:
            info(b"", timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED, name
        channel.close()
    with pytest.raises(Unauthenticated), Client(fronts.target, retry=Retry(attempts=1)) as anon:
        anon.encode(["x"])


def test_metrics_add_up_every_front_ends_requests(fronts):
    def infos() -> float:
        url = f"http://127.0.0.1:{fronts.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        line = next(
            (
                x
                for x in text.splitlines()
                if x.startswith('embedsense_requests_total{code="OK",rpc="Info"}')
            ),
            "",
        )
        return float(line.split()[-1]) if line else 0.0  # fmt: skip

    clients = each_front_end(fronts.target, api_key=KEY)
    before = infos()
    for client in clients.values():  # three calls in each process
        with client:
            for _ in range(3):
                client.info()
    assert infos() - before == 6


def test_a_callers_cancellation_reaches_the_engine_process(fronts):
    engine = fronts.server.engine
    long_texts = ["苹果 " * 200] * 8

    async def cancel_one() -> None:
        async with AsyncClient(fronts.target, api_key=KEY, timeout=60) as client:
            calls = [asyncio.ensure_future(client.encode(long_texts)) for _ in range(6)]
            await asyncio.sleep(0.3)
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)

    before = engine.stats.skipped_cancelled
    asyncio.run(cancel_one())
    deadline = time.monotonic() + 30
    while engine.stats.skipped_cancelled == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.stats.skipped_cancelled > before


def test_overload_is_refused_in_every_front_end(e5, tmp_path):
    small = EngineConfig(dtype="float32", max_queued_tokens=600, max_concurrent_requests=64)
    running = FrontEndsThread(e5, tmp_path, engine=small)
    try:
        refused: dict[str, int] = {}
        with ThreadPoolExecutor(12) as pool:
            for name, client in each_front_end(running.target).items():
                with client:
                    calls = [pool.submit(client.encode, ["苹果 " * 100] * 2) for _ in range(12)]
                    refused[name] = sum(isinstance(c.exception(), ResourceExhausted)
                                        for c in calls)  # fmt: skip
        assert all(refused.values()), refused  # by the one engine's limits, in either process
    finally:
        running.stop()


def test_a_front_end_says_not_serving_once_the_engine_process_is_broken(e5, tmp_path):
    """A broken engine (a thread of it failed: every call UNAVAILABLE until a restart) left
    the front ends' health SERVING; a front end that hears of it says NOT_SERVING."""
    running = FrontEndsThread(e5, tmp_path, count=1, http_port=0)
    try:
        with grpc.insecure_channel(running.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def status() -> int:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=10).status

            assert status() == health_pb2.HealthCheckResponse.SERVING
            running.break_engine()
            with Client(running.target, retry=Retry(attempts=1)) as c:
                with pytest.raises(Unavailable, match="needs a restart"):
                    c.encode(["苹果"])
            deadline = time.monotonic() + 10  # the change is handed to the event loop
            while status() != health_pb2.HealthCheckResponse.NOT_SERVING:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        http_health = f"http://127.0.0.1:{running.server.http_port}/health"
        with pytest.raises(urllib.error.HTTPError, match="503"):
            urllib.request.urlopen(http_health, timeout=10)
    finally:
        running.stop()


def test_every_front_end_serves_mutual_tls_on_both_ports(e5, tmp_path, pki):
    running = FrontEndsThread(e5, tmp_path, http_port=0, tls_cert=pki / "server.pem",
                              tls_key=pki / "server.key", tls_client_ca=pki / "ca.pem")  # fmt: skip
    try:
        mine = grpc.ssl_channel_credentials(
            (pki / "ca.pem").read_bytes(), (pki / "client.key").read_bytes(),
            (pki / "client.pem").read_bytes(),
        )  # fmt: skip
        for client in each_front_end(running.target, credentials=mine).values():
            with client:
                assert client.encode(["苹果"]).shape == (1, 384)
        with Client(running.target, tls=TLS(pki / "ca.pem"), timeout=5) as anonymous:
            with pytest.raises(Unavailable):
                anonymous.info()
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        context.load_cert_chain(pki / "client.pem", pki / "client.key")
        url = f"https://127.0.0.1:{running.server.http_port}/v1/embeddings"
        body = json.dumps({"input": ["苹果"], "model": "multilingual-e5-small"}).encode()
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, context=context, timeout=30) as reply:
            assert len(json.loads(reply.read())["data"][0]["embedding"]) == 384
    finally:
        running.stop()


def test_a_bad_start_names_the_problem_and_leaves_no_process(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "embedsense.server", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(tmp_path), "--frontends", "2", "--model", "no-such-model"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # run() returned: no process it started holds its output open.
    assert done.returncode == 2
    assert "cannot start" in done.stderr and "no-such-model" in done.stderr


def test_an_exception_that_cannot_cross_crosses_as_its_nearest_class():
    err = transportable(TextTooLongError(3, 900, 512))
    assert type(err) is ValueError and "900" in str(err)
    assert type(pickle.loads(pickle.dumps(err))) is ValueError


def test_a_blocking_call_on_the_event_loops_own_thread_fails_instead_of_hanging():
    async def scenario() -> None:
        mine, theirs = socket.socketpair()

        async def echo(value: int) -> int:
            return value

        here = await Bridge.open(mine, {}, lambda: None)
        there = await Bridge.open(theirs, {"echo": echo}, lambda: None)
        try:
            # From another thread it waits for the answer; on the loop's thread it would wait
            # for a reply that loop can never read.
            assert await asyncio.to_thread(here.call_blocking, "echo", 7) == 7
            with pytest.raises(RuntimeError, match="event loop"):
                here.call_blocking("echo", 7)
        finally:
            here.close()
            there.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_blocking_call_gives_up_at_its_timeout_and_cancels_the_call_there():
    """A /metrics scrape asked each front end for its metrics with no time limit: one front
    end that did not answer held every scrape for good."""

    async def scenario() -> None:
        mine, theirs = socket.socketpair()

        async def stuck() -> None:
            await asyncio.sleep(60)

        here = await Bridge.open(mine, {}, lambda: None)
        there = await Bridge.open(theirs, {"metric_families": stuck}, lambda: None)
        try:
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.to_thread(here.call_blocking, "metric_families", timeout=0.3)
            assert time.monotonic() - started < 5
            await asyncio.sleep(0.2)
            assert here._calls == {} and dict(there._serving) == {}
        finally:
            here.close()
            there.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_call_whose_arguments_cannot_cross_fails_its_own_caller_only():
    """Its pickling error was sent to the other side as a REPLY carrying the caller's call
    id, which there names the other side's own call: a call of theirs got a stranger's
    error, and the caller here waited for good."""

    async def scenario() -> None:
        mine, theirs = socket.socketpair()
        release = asyncio.Event()

        async def slow(value: int) -> int:
            await release.wait()
            return value

        async def echo(value: object) -> object:
            return value

        here = await Bridge.open(mine, {"slow": slow}, lambda: None)
        there = await Bridge.open(theirs, {"echo": echo}, lambda: None)
        try:
            theirs_pending = asyncio.ensure_future(there.call("slow", 5))  # its call id 1
            await asyncio.sleep(0.1)
            with pytest.raises(Exception, match="pickle"):
                await asyncio.wait_for(here.call("echo", lambda: None), 2)  # here's call id 1
            await asyncio.sleep(0.1)
            assert not theirs_pending.done()
            release.set()
            assert await theirs_pending == 5
            assert await here.call("echo", 3) == 3 and here._calls == {}
        finally:
            here.close()
            there.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_call_cancelled_in_the_same_read_as_it_came_leaves_nothing_behind():
    """A busy engine process reads a front end's call and its cancel together: the task
    serving it was cancelled before it started, and its entry stayed in the bridge for
    good, one per such call."""
    from embedsense.server.frontends.bridge import CALL, CANCEL, HEADER

    def frame(*fields: object) -> bytes:
        data = pickle.dumps(fields)
        return HEADER.pack(len(data)) + data

    async def scenario() -> None:
        mine, theirs = socket.socketpair()
        started = []

        async def slow(value: int) -> int:
            started.append(value)
            await asyncio.sleep(10)
            return value

        engine_side = await Bridge.open(mine, {"rows": slow}, lambda: None)
        try:
            theirs.sendall(frame(CALL, 7, "rows", (1,)) + frame(CANCEL, 7))
            await asyncio.sleep(0.2)
            assert started == [] and dict(engine_side._serving) == {}
        finally:
            engine_side.close()
            theirs.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


# ------------------------------------------------------------ processes


def wait_gone(pids: set[int], limit_s: float = 20) -> set[int]:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return {p for p in pids if alive(p)}


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_no_front_end_outlives_the_engine_process(tmp_path, how):
    server = ServerProcess(tmp_path, None, "--frontends", "2")
    server.start()
    fronts: set[int] = set()
    try:
        fronts = children(server.process.pid)
        assert len(fronts) == 2
        with Client(server.target, timeout=60) as c:
            c.create_collection("kept")
            c.upsert("kept", [{"id": "a", "text": "我喜欢吃苹果"}])
        server.process.send_signal(how)
        assert server.process.wait(60) == (-signal.SIGKILL if how == signal.SIGKILL else 0)
        assert wait_gone(fronts) == set(), "front ends left running"
    finally:
        for pid in fronts:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        server.stop()
    if how == signal.SIGTERM:  # drained and flushed: what was acknowledged is there
        again = ServerProcess(tmp_path)
        again.start()
        try:
            with Client(again.target, timeout=60) as c:
                assert [d.id for d in c.get("kept", ["a"]) if d] == ["a"]
        finally:
            again.stop()


def test_sigterm_while_it_starts_stops_it_once_started_drained(tmp_path):
    """The signal comes while the model loads (the front ends are started already): the
    server finishes starting, then drains and exits 0, its front ends with it."""
    server = subprocess.Popen(
        [sys.executable, "-m", "embedsense.server", "--host", "127.0.0.1", "--port", "0",
         "--data-dir", str(tmp_path), "--frontends", "2", "--log-format", "text"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "EMBEDSENSE_API_KEY": ""},
    )  # fmt: skip
    try:
        for line in server.stderr:
            if "loaded multilingual-e5-small" in line:
                break
        fronts = children(server.pid)
        server.send_signal(signal.SIGTERM)
        rest = server.communicate(timeout=120)[1]
        assert server.returncode == 0, rest[-2000:]
        assert "with 2 front-end processes" in rest and "shutting down" in rest
        assert wait_gone(fronts) == set()
    finally:
        if server.poll() is None:
            server.kill()


def test_a_started_again_front_end_that_never_listens_is_replaced(e5, tmp_path, monkeypatch):
    """The engine process waited for it to exit, and it never did: the port went unserved
    for good (here it is stopped with SIGSTOP before it could listen)."""
    from embedsense.server.frontends import host as host_module

    running = FrontEndsThread(e5, tmp_path, count=1)  # the first start at the usual limit
    # A start again gets 15 s: time for a front end to start on a busy machine (5 s was
    # not, under the whole suite), short enough to see the stopped one replaced.
    monkeypatch.setattr(host_module, "READY_TIMEOUT_S", 15.0)
    host, stopped = running.server, []
    real_spawn = host._spawn

    async def spawn_stopped_once(index: int):
        front = await real_spawn(index)
        if not stopped:
            os.kill(front.process.pid, signal.SIGSTOP)
            stopped.append(front.process.pid)
        return front

    host._spawn = spawn_stopped_once
    try:
        os.kill(host.front_ends[0].process.pid, signal.SIGKILL)
        deadline, served = time.monotonic() + 60, False
        while not served and time.monotonic() < deadline:
            time.sleep(0.5)
            if stopped and host.front_ends[0].process.pid != stopped[0]:
                with Client(running.target, timeout=5) as c, contextlib.suppress(Unavailable):
                    served = c.encode(["苹果"]).shape == (1, 384)  # once it listens
        assert served and not alive(stopped[0])
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        running.stop()


def test_a_front_end_that_dies_is_started_again(tmp_path):
    server = ServerProcess(tmp_path, None, "--frontends", "2")
    server.start()
    try:
        for client in each_front_end(server.target).values():  # both listen
            client.close()
        time.sleep(0.5)  # and have said so to the engine process
        first = children(server.process.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = children(server.process.pid) - {victim}
            if len({p for p in now if alive(p)}) == 2:
                break
            time.sleep(0.2)
        assert len({p for p in children(server.process.pid) if alive(p)} - {victim}) == 2
        clients = each_front_end(server.target)  # the new one among them
        for client in clients.values():
            with client:
                assert client.encode(["苹果"]).shape == (1, 384)
    finally:
        server.stop()
