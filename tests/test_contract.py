"""The SDK's contract with its callers and the two sides' contract with each other: shapes
as sentence-transformers has them, typed coroutines, what is retried, settings that reach
the engine, and a server and a client that import only the shared contract."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import subprocess
import sys
import threading
import typing

import grpc
import numpy as np
import pytest
from conftest import ServerThread
from workload import at_once

from embedsense.client import (
    AsyncClient,
    Client,
    Info,
    InvalidArgument,
    ResourceExhausted,
    Retry,
    TokenEmbeddings,
)
from embedsense.server.config import EngineConfig

TEXT = "我喜欢吃苹果"


def test_encode_takes_a_str_as_one_text_as_sentence_transformers_does(client):
    one = client.encode(TEXT)
    assert one.shape == (384,) and one.dtype == np.float32
    np.testing.assert_allclose(one, client.encode([TEXT])[0], atol=1e-6)
    assert client.encode([TEXT, "香蕉"]).shape == (2, 384)
    assert client.encode([]).shape == (0, 384)
    tokens = client.embed_tokens(TEXT)
    assert isinstance(tokens, TokenEmbeddings) and "苹果" in tokens.tokens.tokens
    assert client.embed_tokens([]) == []
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        client.encode([TEXT, 3])


def test_the_async_client_keeps_the_same_shapes(server):
    async def scenario() -> None:
        async with AsyncClient(server.target) as c:
            assert (await c.encode(TEXT)).shape == (384,)
            assert (await c.encode([])).shape == (0, 384)
            assert isinstance(await c.embed_tokens(TEXT), TokenEmbeddings)
            assert await c.embed_tokens([]) == []

    asyncio.run(scenario())


def test_an_async_client_made_before_its_event_loop_runs_works_in_it(server):
    """Made at import time or in an app's constructor, before asyncio.run: every call was a
    RuntimeError (its gRPC channel belonged to another event loop)."""
    c = AsyncClient(server.target, timeout=60)

    async def use() -> int:
        async with c:
            return (await c.info()).dim

    assert asyncio.run(use()) == 384
    with pytest.raises(ValueError, match="target 'no port'"):
        AsyncClient(["127.0.0.1:1", "no port"])  # still refused when made, and named


def test_a_numpy_array_of_texts_is_searched_as_texts():
    """np.array(["水果", "手机"]) was taken for vectors: "could not convert string to float"."""
    from embedsense.client._api import search_call

    call = search_call("c", np.array(["水果", "手机"]), 3, None, 0, 0)
    assert call.rpc == "SearchBatch" and list(call.request.texts) == ["水果", "手机"]
    call = search_call("c", np.array(["水果"], dtype=object), 3, None, 0, 0)
    assert call.rpc == "SearchBatch" and list(call.request.texts) == ["水果"]
    assert search_call("c", np.ones(4), 3, None, 0, 0).rpc == "Search"  # a vector still


def test_async_client_methods_are_typed_coroutines_with_the_sync_signatures():
    public = [n for n, f in vars(Client).items() if callable(f) and not n.startswith("_")]
    assert {"info", "encode", "search", "upsert", "explain"} <= set(public)
    for name in public:
        sync, coro = getattr(Client, name), getattr(AsyncClient, name)
        # An iterator (scroll) is an async generator where the sync one is a generator.
        iterates = inspect.isgeneratorfunction(sync) and inspect.isasyncgenfunction(coro)
        assert inspect.iscoroutinefunction(coro) or iterates, f"AsyncClient.{name} is not async"
        a, b = inspect.signature(sync), inspect.signature(coro)
        assert a.parameters == b.parameters if iterates else a == b, name
    assert typing.get_type_hints(AsyncClient.info)["return"] is Info
    assert typing.get_type_hints(Client.info)["return"] is Info


def test_both_clients_are_made_with_the_same_settings_in_the_same_order():
    sync = inspect.signature(Client.__init__)
    coro = inspect.signature(AsyncClient.__init__)
    # The one difference: the async client's own channel is a grpc.aio one.
    assert coro.parameters["channel"].annotation == "grpc.aio.Channel | None"
    assert sync.parameters["channel"].annotation == "grpc.Channel | None"
    channel = coro.parameters["channel"].replace(annotation=sync.parameters["channel"].annotation)
    assert coro.replace(parameters=[channel if p.name == "channel" else p
                                    for p in coro.parameters.values()]) == sync  # fmt: skip


def test_long_text_is_one_option_with_one_name_in_every_method(client, server):
    for method in (Client.encode, Client.embed_tokens, Client.explain, Client.compare_layers):
        assert inspect.signature(method).parameters["long_text"].default == "error", method
    assert not any("truncate" in inspect.signature(m).parameters for m in vars(Client).values()
                   if callable(m))  # fmt: skip
    long = "我喜欢吃苹果。" * 120  # about 700 tokens
    with pytest.raises(InvalidArgument, match='long_text="truncate"'):
        client.encode(long)  # the hint names the option the caller has
    with pytest.raises(InvalidArgument, match='long_text="truncate"'):
        client.explain(long, "苹果", layers=[1], heads=[0])
    with pytest.raises(ValueError, match="long_text='windows': explain takes 'error' or"):
        client.explain(long, "苹果", long_text="windows")
    with pytest.raises(ValueError, match="long_text='cut': expected 'error', 'truncate' or"):
        client.encode(long, long_text="cut")
    with pytest.raises(
        ValueError, match=r"long_text='cut': explain takes 'error' or 'truncate' \("
    ):
        client.explain(long, "苹果", long_text="cut")  # offered 'windows', then refused it

    async def with_async_client() -> None:
        async with AsyncClient(server.target, timeout=60) as c:
            e = await c.explain(long, "苹果", layers=[1], heads=[0], long_text="truncate")
            assert len(e.tokens.tokens) == 512
            with pytest.raises(ValueError, match="compare_layers takes 'error' or 'truncate'"):
                await c.compare_layers(long, "苹果手机", "苹果", long_text="windows")

    asyncio.run(with_async_client())


class _CountCalls(grpc.UnaryUnaryClientInterceptor):
    def __init__(self) -> None:
        self.calls = 0

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.calls += 1
        return continuation(client_call_details, request)


def test_a_message_too_large_is_not_retried_but_overload_is(e5, tmp_path):
    running = ServerThread(e5, tmp_path, max_message_bytes=200_000,
                           engine=EngineConfig(dtype="float32", max_queued_tokens=600))  # fmt: skip
    counter = _CountCalls()
    channel = grpc.intercept_channel(grpc.insecure_channel(running.target), counter)
    retry = Retry(attempts=3, initial_backoff=0.01)
    try:
        with Client(channel=channel, retry=retry) as c:
            with pytest.raises(ResourceExhausted, match="larger than max"):
                c.encode(["苹果" * 50_000])  # 300 kB of UTF-8: over the server's limit
            assert counter.calls == 1, "a message too large fails again however often it is sent"
            counter.calls = 0
            answers = at_once(lambda: c.encode(["苹果 " * 100] * 2))  # over the engine's queue
            refused = [a for a in answers if isinstance(a, ResourceExhausted)]
            assert refused and all("max_queued_tokens" in str(a) for a in refused)
            # Each refused call was asked three times; others got in on a second or third.
            assert counter.calls >= len(answers) + 2 * len(refused), "overload is asked again"
    finally:
        channel.close()
        running.stop()


def test_both_clients_split_a_large_list_within_the_servers_texts_per_request(e5, tmp_path):
    """Also a list within one batch_size but over the server's limit: it was sent whole
    and refused, while a list twice as long was split and served."""
    running = ServerThread(e5, tmp_path, max_texts_per_request=5)
    texts = [f"第{i}句：我喜欢吃苹果" for i in range(12)]
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]

    async def with_async_client() -> tuple[np.ndarray, list[str]]:
        async with AsyncClient(running.target) as c:
            await c.create_collection("async-limit")
            return (
                await c.encode(texts, batch_size=16),
                await c.upsert("async-limit", docs, batch_size=16, show_progress_bar=False),
            )

    try:
        with Client(running.target) as c:
            expected = np.concatenate([c.encode(texts[s : s + 4]) for s in range(0, 12, 4)])
            np.testing.assert_allclose(c.encode(texts, batch_size=8), expected, atol=1e-5)
            np.testing.assert_allclose(c.encode(texts, batch_size=16), expected, atol=1e-5)
            c.create_collection("sync-limit")
            assert c.upsert("sync-limit", docs, batch_size=16, show_progress_bar=False) == [
                d["id"] for d in docs
            ]
        vectors, ids = asyncio.run(with_async_client())
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
        assert ids == [d["id"] for d in docs]
    finally:
        running.stop()


def test_engine_knobs_have_one_home_in_the_engine_config():
    from embedsense.server.api.settings import ServerSettings

    server_fields = {f.name for f in dataclasses.fields(ServerSettings)}
    assert not server_fields & {f.name for f in dataclasses.fields(EngineConfig)}
    with pytest.raises(TypeError):
        ServerSettings(device="cpu")  # once silently ignored: the engine never saw it
    s = ServerSettings.from_env({"EMBEDSENSE_THREADS": "1"}, dtype="float32", model="m")
    assert (s.engine.threads, s.engine.dtype, s.engine.model, s.model) == (1, "float32", "m", "m")


BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {blocked!r} or name.startswith({blocked!r} + "."):
            raise ImportError(f"{{name}} is the other side")
sys.meta_path.insert(0, Block())
import {module}
print("ok")
"""


@pytest.mark.parametrize(
    "module, blocked",
    [("embedsense.server.api.app", "embedsense.client"),
     ("embedsense.server.cli", "embedsense.client"),
     ("embedsense.client.cli", "embedsense.server"),
     ("embedsense.client", "embedsense.server")],
)  # fmt: skip
def test_server_and_client_share_only_the_contract(module, blocked):
    done = subprocess.run([sys.executable, "-c", BLOCK.format(module=module, blocked=blocked)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-600:]


class _InFlight(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    """How many calls of each method are in flight at once, at most."""

    def __init__(self) -> None:
        self.now: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.lock = threading.Lock()

    def _count(self, method: str, call):  # noqa: ANN001, ANN202
        name = method.rsplit("/", 1)[-1]
        with self.lock:
            self.now[name] = self.now.get(name, 0) + 1
            self.most[name] = max(self.most.get(name, 0), self.now[name])
        try:
            response = call()
            response.result()  # wait for the answer while counted
            return response
        finally:
            with self.lock:
                self.now[name] -= 1

    def intercept_unary_unary(self, continuation, details, request):
        return self._count(details.method, lambda: continuation(details, request))

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return self._count(details.method, lambda: continuation(details, request_iterator))


def test_one_client_keeps_several_requests_in_flight_in_order(server):
    texts = [f"第{i}句：{'我喜欢吃苹果' if i % 2 else '我买了最新的苹果手机'}" for i in range(96)]
    with Client(server.target) as plain:
        expected = plain.encode(texts, batch_size=96)  # one request
    counter = _InFlight()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.target), counter)
    try:
        with Client(channel=channel, max_concurrent_batches=4) as bulk:
            got = bulk.encode(texts, batch_size=8)  # twelve requests
            np.testing.assert_allclose(got, expected, atol=1e-5)  # in the list's order
            assert 2 <= counter.most["Embed"] <= 4
            bulk.create_collection("bulk-path")
            docs = [{"id": f"b{i}", "text": t} for i, t in enumerate(texts)]
            assert bulk.upsert("bulk-path", docs, batch_size=8, show_progress_bar=False) == [
                d["id"] for d in docs
            ]
            assert 2 <= counter.most["Upsert"] <= 4
            assert bulk.count("bulk-path") == 96
            bulk.drop_collection("bulk-path")
    finally:
        channel.close()
