"""The service end to end: a real server on 127.0.0.1, the real default model, real clients."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import ServerThread
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from workload import at_once

from embedsense.client import (
    AlreadyExists,
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Retry,
    Unauthenticated,
    Unavailable,
    bulk,
)
from embedsense.client._api import Call
from embedsense.model import TextRole
from embedsense.proto.v1 import embedsense_pb2 as pb
from embedsense.proto.v1 import embedsense_pb2_grpc as pb_grpc
from embedsense.server.config import EngineConfig

ROOT = Path(__file__).resolve().parents[1]
FRUIT = ["我喜欢吃苹果", "香蕉和苹果都是水果", "这个苹果又红又甜"]
PHONE = ["我买了最新的苹果手机", "苹果公司发布了新款电脑", "这款苹果手机的电池很耐用"]


@pytest.fixture
def collection(client, request):
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    client.create_collection(name, store_tokens=True)
    yield name
    client.drop_collection(name)


def test_info_reports_the_model_and_limits(client):
    info = client.info()
    assert (info.model, info.dim, info.device, info.dtype) == (
        "multilingual-e5-small", 384, "cpu", "float32"
    )  # fmt: skip
    assert info.max_tokens == 512 and info.num_layers == 12 and not info.auth_required
    assert info.max_message_bytes == 64 * 1024 * 1024 and info.version
    assert info.max_text_chars == 100_000  # the SDK checks texts against it before sending


def test_tokenize_gives_offsets_into_the_callers_text(client):
    tokens = client.tokenize("我喜欢吃苹果")
    apple = tokens.tokens.index("苹果")
    assert tokens.offsets[apple] == (4, 6) and tokens.from_text[apple]
    assert not tokens.from_text[0]  # <s>, and the query prefix, are not the caller's text


def test_encode_matches_the_model_in_process(client, e5):
    texts = FRUIT + PHONE
    vectors = client.encode(texts, batch_size=4)
    assert vectors.shape == (6, 384) and vectors.dtype == np.float32
    expected = e5.encode_sentences(texts, TextRole.QUERY)
    np.testing.assert_allclose(vectors, expected, atol=1e-4)
    raw = client.encode(texts[:2], normalize_embeddings=False, role="passage")
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)


def test_embed_tokens_and_layers(client):
    (last,) = client.embed_tokens(["我喜欢吃苹果"])
    assert last.vectors.shape == (len(last.tokens.tokens), 384)
    (mixed,) = client.embed_tokens(["我喜欢吃苹果"], layers=[-1, -2])
    (second_last,) = client.embed_tokens(["我喜欢吃苹果"], layers=[-2])
    np.testing.assert_allclose(mixed.vectors, (last.vectors + second_last.vectors) / 2,
                               atol=1e-5)  # fmt: skip


def test_collections_documents_and_search(client, collection):
    ids = client.upsert(
        collection,
        [{"id": f"fruit-{i}", "text": t, "metadata": {"sense": "fruit", "i": i}}
         for i, t in enumerate(FRUIT)]
        + [{"id": f"phone-{i}", "text": t, "metadata": {"sense": "company", "i": i}}
           for i, t in enumerate(PHONE)]
        + ["一段没有编号的文本"],
        batch_size=2, show_progress_bar=False,
    )  # fmt: skip
    assert ids[:2] == ["fruit-0", "fruit-1"] and len(ids) == 7 and ids[-1]
    assert client.count(collection) == 7
    info = client.describe_collection(collection)
    assert info.store_tokens and info.tokens > 7 and info.bytes_per_token > 384 * 4
    assert collection in [c.name for c in client.list_collections()]

    hits = client.search(collection, "苹果手机的屏幕", k=3, filter={"sense": "company"})
    assert len(hits) == 3 and all(h.metadata["sense"] == "company" for h in hits)
    assert hits[0].score >= hits[1].score >= hits[2].score
    by_text = client.search(collection, "香蕉和苹果都是水果", k=1)
    assert by_text[0].id == "fruit-1"

    (stored, missing) = client.get(collection, ["phone-1", "nope"], with_vectors=True)
    assert missing is None and stored.text == PHONE[1] and stored.metadata["i"] == 1
    by_vector = client.search(collection, stored.vector, k=1)
    assert by_vector[0].id == "phone-1" and by_vector[0].score == pytest.approx(1, abs=1e-5)

    assert client.delete(collection, ["phone-1", "nope"]) == 1
    assert client.count(collection) == 6
    assert "phone-1" not in {h.id for h in client.search(collection, stored.vector, k=10)}


def test_bad_requests_get_the_right_status_and_the_server_keeps_serving(client, collection):
    with pytest.raises(NotFound, match="no-such"):
        client.search("no-such", "x")
    with pytest.raises(AlreadyExists):
        client.create_collection(collection)
    with pytest.raises(InvalidArgument, match="collection name"):
        client.create_collection("bad name!")
    with pytest.raises(InvalidArgument, match="factory string"):
        client.create_collection("bad-spec", index="NoSuchIndex")
    with pytest.raises(InvalidArgument, match="512"):
        client.encode(["苹果" * 2000])  # names the length and the limit
    with pytest.raises(InvalidArgument, match="at least one text"):
        client._call(Call("Embed", pb.EmbedRequest(texts=[]), lambda r: r))  # the SDK sends none
    with pytest.raises(TypeError, match="filter: a dict"):  # the SDK's, before sending
        client.search(collection, "x", filter=["not", "an", "object"])
    listed = pb.SearchRequest(collection=collection, text="x", filter_json='["not"]')
    with pytest.raises(InvalidArgument, match="filter_json"):  # the server's
        client._call(Call("Search", listed, lambda r: r))
    with pytest.raises(InvalidArgument, match="unknown operator"):
        client.search(collection, "x", filter={"a": {"$regex": "."}})
    with pytest.raises(InvalidArgument, match="384-dim"):
        client.search(collection, np.ones(10))
    with pytest.raises(ValueError, match="empty"):  # the SDK's, before sending
        client.upsert(collection, ["  "], show_progress_bar=False)
    blank = pb.UpsertRequest(collection=collection, documents=[pb.Document(id="b", text="  ")])
    with pytest.raises(InvalidArgument, match="empty"):  # the server's
        client._call(Call("Upsert", blank, str, stream=True))
    with pytest.raises(InvalidArgument, match="layer 40"):
        client.embed_tokens(["x"], layers=[40])
    # A hidden state named twice ([6, 6], or 12 and -1 on 12 layers) weighed twice in the
    # average, unsaid; Explain took it once.
    for twice in ([6, 6], [12, -1], [0, -13]):
        with pytest.raises(InvalidArgument, match="twice"):
            client.embed_tokens(["x"], layers=twice)
        with pytest.raises(InvalidArgument, match="twice"):
            client.disambiguate("我喜欢吃苹果", "苹果", layers=twice)
    long = client.encode(["苹果" * 2000], long_text="truncate")
    assert long.shape == (1, 384)
    (windowed,) = client.embed_tokens(["苹果" * 700], long_text="windows")
    assert windowed.windows > 1 and len(windowed.tokens.tokens) > 512
    assert client.info().model == "multilingual-e5-small"  # still serving


def test_a_failed_stream_says_what_was_stored(client, collection, monkeypatch):
    # Refused by the server alone: over its max_text_chars, from a client that does not check
    # lengths (as none does when a server does not report its limit).
    monkeypatch.setattr(bulk, "length_problem", lambda text, max_chars: None)
    too_long = "长" * 100_001
    docs = ["第一篇", "第二篇", "第三篇", too_long]
    with pytest.raises(InvalidArgument, match="3 of 4 documents were stored"):
        client.upsert(collection, docs, batch_size=3, show_progress_bar=False)
    assert client.count(collection) == 3
    streamed = iter(["第四篇", "第五篇", too_long])  # read as it goes: counts what was read
    with pytest.raises(InvalidArgument, match="2 of the 3 documents read were stored"):
        client.upsert(collection, streamed, batch_size=2, show_progress_bar=False)
    assert client.count(collection) == 5


def test_a_raw_stream_refused_midway_says_what_was_stored(server, client, collection):
    """Whatever refuses a later message of an Upsert stream, the status names how many
    documents the earlier messages stored: a raw gRPC caller has no SDK to count them."""
    client.create_collection(f"{collection}-other")
    docs = [pb.Document(id=f"d{i}", text=t) for i, t in enumerate(FRUIT)]
    limit = client.info().max_texts_per_request
    too_many = [pb.Document(id=f"x{i}", text="苹果") for i in range(limit + 1)]
    refusals = {
        "another collection": pb.UpsertRequest(collection=f"{collection}-other", documents=docs),
        "too many documents": pb.UpsertRequest(documents=too_many),
    }
    with grpc.insecure_channel(server.target) as channel:
        upsert = pb_grpc.EmbedSenseStub(channel).Upsert
        for why, refused in refusals.items():
            first = pb.UpsertRequest(collection=collection, documents=docs)
            with pytest.raises(grpc.RpcError) as caught:
                upsert(iter([first, refused]))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, why
            assert "(3 documents sent before it were stored)" in caught.value.details(), why
    assert client.count(collection) == 3
    client.drop_collection(f"{collection}-other")


def test_streaming_upsert_of_10000_documents_with_progress(client, capsys):
    client.create_collection("bulk")
    try:
        docs = ({"id": str(i), "text": f"第{i}条短消息", "metadata": {"n": i}}
                for i in range(10_000))  # fmt: skip
        ids = client.upsert("bulk", docs, batch_size=500, show_progress_bar=True)
        assert ids == [str(i) for i in range(10_000)]
        assert client.count("bulk") == 10_000
        assert "10000" in capsys.readouterr().err  # tqdm's count, on stderr
        assert client.get("bulk", ["9999"])[0].metadata == {"n": 9999}
    finally:
        client.drop_collection("bulk")


def test_async_client_has_the_same_methods(server):
    async def scenario() -> None:
        async with AsyncClient(server.target, timeout=60) as c:
            assert (await c.info()).dim == 384
            assert "苹果" in (await c.tokenize("苹果")).tokens
            vectors = await c.encode(FRUIT + PHONE, batch_size=2)
            assert vectors.shape == (6, 384)
            assert (await c.disambiguate("我喜欢吃苹果", "苹果")).label == "fruit"
            assert "default" in [i.name for i in await c.list_inventories()]
            assert (await c.explain("苹果", layers=[1])).attentions.shape[:2] == (1, 12)
            assert len((await c.compare_layers(FRUIT[0], PHONE[0], "苹果")).cosines) == 13
            await c.create_collection("async-one")
            try:
                assert "async-one" in [i.name for i in await c.list_collections()]
                await c.upsert("async-one", [{"id": "a", "text": FRUIT[0]}, PHONE[0]],
                               show_progress_bar=False)  # fmt: skip
                assert await c.count("async-one") == 2
                hits = await c.search("async-one", FRUIT[0], k=1)
                assert hits[0].id == "a"
                assert (await c.get("async-one", ["a"]))[0].text == FRUIT[0]
                assert await c.delete("async-one", ["a"]) == 1
                assert [t.windows for t in await c.embed_tokens(["苹果"])] == [1]
                with pytest.raises(NotFound):
                    await c.describe_collection("nope")
            finally:
                await c.drop_collection("async-one")

    asyncio.run(scenario())


def test_an_async_client_serves_one_event_loop_after_another_or_two_at_once(server):
    """Before: its channel belonged to the first event loop it ran in; in the next one (a
    second asyncio.run, a test framework's loop per test) every call failed with "Event loop
    is closed"."""
    c = AsyncClient(server.target, timeout=60)
    assert asyncio.run(c.info()).dim == 384
    assert asyncio.run(c.info()).dim == 384
    dims: list[int] = []
    threads = [threading.Thread(target=lambda: dims.append(asyncio.run(c.info()).dim))
               for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert dims == [384, 384]
    asyncio.run(c.close())
    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(c.info())


def test_closing_an_async_client_closes_its_channel_in_a_loop_still_running_elsewhere(server):
    """Before: close() closed the channel of the event loop it ran in only; the one it had
    opened in a loop still running in another thread stayed open."""
    c = AsyncClient(server.target, timeout=60)
    elsewhere = asyncio.new_event_loop()
    thread = threading.Thread(target=elsewhere.run_forever, daemon=True)
    thread.start()

    def there(coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, elsewhere).result(60)

    try:
        assert there(c.info()).dim == 384
        [(channel, _)] = c._per_loop.values()  # the channel's state: no call can show it
        asyncio.run(c.close())

        async def state() -> grpc.ChannelConnectivity:
            return channel.get_state()

        assert there(state()) == grpc.ChannelConnectivity.SHUTDOWN
    finally:
        elsewhere.call_soon_threadsafe(elsewhere.stop)
        thread.join(10)
        elsewhere.close()


def test_shutdown_finishes_in_flight_calls(e5, tmp_path):
    running = ServerThread(e5, tmp_path)
    results: list = []
    with Client(running.target, timeout=60) as c:
        call = threading.Thread(target=lambda: results.append(c.encode(FRUIT * 40, batch_size=120)))
        call.start()
        # Until its texts wait in the engine (a fixed sleep was too short on a loaded
        # machine: the server stopped before the call had connected).
        deadline = time.monotonic() + 30
        while not any(running.server.engine.queued_rows().values()) and call.is_alive():
            assert time.monotonic() < deadline, "the call never reached the engine"
            time.sleep(0.005)
        running.stop()
        call.join(60)
    assert len(results) == 1 and results[0].shape == (120, 384)


def test_health_and_reflection_work_unmodified(server):
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", "embedsense.v1.EmbedSense"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
        assert "embedsense.v1.EmbedSense" in services
        assert "grpc.health.v1.Health" in services


def test_api_key_is_enforced_when_configured(e5, tmp_path):
    running = ServerThread(e5, tmp_path, api_key="s3cret")
    try:
        with Client(running.target) as anonymous:
            with pytest.raises(Unauthenticated, match="needs an API key"):
                anonymous.info()
        with Client(running.target, api_key="wrong") as wrong:
            with pytest.raises(Unauthenticated, match="wrong"):
                wrong.list_collections()
            with pytest.raises(Unauthenticated):
                wrong.upsert("x", ["a"], show_progress_bar=False)  # the streaming RPC too
        with Client(running.target, api_key="s3cret") as right:
            assert right.info().auth_required
        with grpc.insecure_channel(running.target) as channel:  # health needs no key
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop()


def test_overload_and_deadlines_map_to_their_statuses(e5, tmp_path):
    config = EngineConfig(dtype="float32", max_queued_tokens=600)
    running = ServerThread(e5, tmp_path, engine=config)
    try:
        with Client(running.target, retry=Retry(attempts=1)) as c:
            answers = at_once(lambda: c.encode(["苹果 " * 100] * 2))
            refused = [a for a in answers if isinstance(a, ResourceExhausted)]
            assert refused and all("max_queued_tokens" in str(a) for a in refused)
            assert c.encode(["苹果"]).shape == (1, 384)  # and it still serves
        with Client(running.target, timeout=0.0005) as hurried:
            with pytest.raises(DeadlineExceeded):
                hurried.encode(["这是一个需要一点时间的句子"] * 64)
    finally:
        running.stop()


def test_rows_whose_deadline_passes_while_queued_are_counted_as_expired(e5, tmp_path):
    """They were counted as cancelled (skipped_cancelled), and skipped_expired never moved:
    the engine counted a request's deadline from when its rows were queued, after their
    tokenizing, so the caller's deadline came before the engine's."""
    running = ServerThread(e5, tmp_path)
    engine = running.server.engine
    real_run, real_prepare = engine.runner.run, engine._prepare

    def slow_run(sequences, layers, on_part=None):  # a forward that holds the worker
        time.sleep(1.5)
        return real_run(sequences, layers, on_part)

    def slow_prepare(*args):  # tokenizing that takes a while, as behind a busy host pool
        time.sleep(0.2)
        return real_prepare(*args)

    engine.runner.run, engine._prepare = slow_run, slow_prepare
    try:
        with Client(running.target, timeout=60) as c:
            busy = threading.Thread(target=lambda: c.encode(["苹果"], priority="bulk"))
            busy.start()
            time.sleep(0.3)  # its forward runs: what comes next queues behind it
            expired, cancelled = engine.stats.skipped_expired, engine.stats.skipped_cancelled
            with Client(running.target, timeout=0.3, retry=Retry(attempts=1)) as hurried:
                with pytest.raises(DeadlineExceeded):
                    hurried.encode(["香蕉"] * 4)
            busy.join(30)
        deadline = time.monotonic() + 10
        while engine.stats.skipped_expired < expired + 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.stats.skipped_expired == expired + 4
        assert engine.stats.skipped_cancelled == cancelled
    finally:
        running.stop()


def test_a_failed_forward_is_a_retryable_status_and_the_server_keeps_serving(e5, tmp_path):
    """The model's own failure reached gRPC callers as INTERNAL and HTTP callers as a 500:
    out of memory (a batch too big for the device) is RESOURCE_EXHAUSTED, anything else
    UNAVAILABLE; the batch failed, not the server, and the caller's retry runs in another."""
    running = ServerThread(e5, tmp_path, http_port=0)
    engine = running.server.engine
    real_run, failures = engine.runner.run, []

    def failing(sequences, layers, on_part=None):
        if failures:
            raise failures.pop()
        return real_run(sequences, layers, on_part)

    engine.runner.run = failing
    url = f"http://127.0.0.1:{running.server.http_port}"
    try:
        with Client(running.target, retry=Retry(attempts=1)) as c:
            failures.append(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
            with pytest.raises(ResourceExhausted, match="out of memory"):
                c.encode(["苹果"])
            assert c.encode(["苹果"]).shape == (1, 384)
        with grpc.insecure_channel(running.target) as channel:  # no retries at all
            failures.append(RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"))
            with pytest.raises(grpc.RpcError) as failed:
                pb_grpc.EmbedSenseStub(channel).Embed(pb.EmbedRequest(texts=["苹果"]))
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "model failure" in failed.value.details()
        with Client(running.target) as retrying:  # the SDK's own retry gets through
            failures.append(RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"))
            assert retrying.encode(["苹果"]).shape == (1, 384)
        failures.append(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
        assert post(f"{url}/v1/embeddings", {"input": "苹果"}) == 429
        failures.append(ValueError("something nobody foresaw"))
        assert post(f"{url}/embed", {"inputs": "苹果"}) == 503
        assert post(f"{url}/embed", {"inputs": "苹果"}) == 200
    finally:
        running.stop()


def test_a_broken_engine_says_not_serving_on_every_health_check(e5, tmp_path):
    """A thread of the engine that failed outside a forward leaves every call UNAVAILABLE
    until a restart, while gRPC's health service still said SERVING and HTTP's /health 200:
    load balancers kept sending to it and orchestrators never restarted it."""
    running = ServerThread(e5, tmp_path, http_port=0)
    health_url = f"http://127.0.0.1:{running.server.http_port}/health"
    try:
        with grpc.insecure_channel(running.target) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def statuses() -> list[int]:
                return [health.Check(health_pb2.HealthCheckRequest(service=name),
                                     timeout=10).status
                        for name in ("", "embedsense.v1.EmbedSense")]  # fmt: skip

            assert statuses() == [health_pb2.HealthCheckResponse.SERVING] * 2
            assert urllib.request.urlopen(health_url, timeout=10).status == 200
            running.break_engine()
            with Client(running.target, retry=Retry(attempts=1)) as c:
                with pytest.raises(Unavailable, match="needs a restart"):
                    c.encode(["苹果"])
            deadline = time.monotonic() + 10  # the change is handed to the event loop
            while statuses() != [health_pb2.HealthCheckResponse.NOT_SERVING] * 2:
                assert time.monotonic() < deadline, statuses()
                time.sleep(0.05)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(health_url, timeout=10)
        assert refused.value.code == 503
        assert "needs a restart" in json.loads(refused.value.read())["error"]  # TEI's shape
    finally:
        running.stop()


def test_a_create_or_drop_that_may_have_happened_is_not_sent_again(e5, tmp_path):
    """UNAVAILABLE after the work (an index backend that timed out once it had made the
    collection): gRPC's retry policy and the SDK's sent the call again, and the caller got
    ALREADY_EXISTS (or, for a drop, NOT_FOUND) for a call that had worked. A create with
    exist_ok is retried: its second try answers with what the first made."""
    from embedsense.server.index import IndexUnavailable

    running = ServerThread(e5, tmp_path)
    catalog, calls = running.server.catalog, []

    def then_unavailable(real):
        def call(*args, **kwargs):
            calls.append(real.__name__)
            real(*args, **kwargs)
            raise IndexUnavailable("the index timed out")

        return call

    catalog.create = then_unavailable(catalog.create)
    catalog.drop = then_unavailable(catalog.drop)
    try:
        with Client(running.target) as c:
            with pytest.raises(Unavailable, match="timed out"):
                c.create_collection("made")
            with pytest.raises(Unavailable, match="timed out"):
                c.drop_collection("made")
            assert calls == ["create", "drop"]
            with pytest.raises(NotFound):
                c.describe_collection("made")
            # With exist_ok a create is safe to repeat: the SDK sends it again, and the
            # collection the first try made is the answer.
            assert c.create_collection("made", exist_ok=True).name == "made"
            assert calls == ["create", "drop", "create", "create"]
    finally:
        running.stop()


def test_a_calls_timeout_bounds_it_whole_retries_included(e5, tmp_path):
    """Each retry had a timeout of its own: a server answering UNAVAILABLE after a while
    held one call for about attempts x timeout."""
    from embedsense.server.engine import EngineClosed

    running = ServerThread(e5, tmp_path)

    async def slowly_unavailable(*args, **kwargs):
        await asyncio.sleep(0.15)
        raise EngineClosed("draining")

    running.server.engine.embed = slowly_unavailable
    retry = Retry(attempts=8, initial_backoff=0.01, max_backoff=0.02)
    try:
        with Client(running.target, timeout=1.0, retry=retry) as c:
            started = time.monotonic()
            with pytest.raises((Unavailable, DeadlineExceeded)):
                c.encode(["苹果"])
            assert time.monotonic() - started < 1.8
    finally:
        running.stop()


def test_a_retry_cut_short_by_the_deadline_reports_why_the_call_was_retried(e5, tmp_path):
    """A call that failed "not now" and whose retry then ran out of its time raised only
    DEADLINE_EXCEEDED, hiding the server's reason; and gRPC's own retries sent the server's
    UNAVAILABLE straight back to it. Both clients, the same way."""
    from embedsense.server.engine import EngineClosed

    running = ServerThread(e5, tmp_path)
    calls = []

    async def slowly_unavailable(*args, **kwargs):
        calls.append(time.monotonic())
        await asyncio.sleep(0.4)
        raise EngineClosed("the engine is draining")

    async def encode_async() -> None:
        async with AsyncClient(running.target, timeout=0.6, retry=retry) as c:
            await c.encode(["苹果"])

    running.server.engine.embed = slowly_unavailable
    retry = Retry(attempts=4, initial_backoff=0.01, max_backoff=0.02)
    try:
        with Client(running.target, timeout=0.6, retry=retry) as c:
            with pytest.raises(Unavailable, match="draining"):
                c.encode(["苹果"])
        with pytest.raises(Unavailable, match="draining"):
            asyncio.run(encode_async())
    finally:
        running.stop()
    assert len(calls) == 4, calls  # each client: its try, and its one retry


def test_a_write_the_index_aborted_before_storing_anything_is_retried(e5, tmp_path):
    """ABORTED (the in-memory index out of step with the store: nothing stored, "a retry
    can succeed") reached the caller as a bare EmbedSenseError, never retried."""
    from embedsense.server.index import IndexOutOfStep

    running = ServerThread(e5, tmp_path)
    try:
        with Client(running.target) as c:
            c.create_collection("aborted")
            collection, calls = running.server.catalog.get("aborted"), []
            real = collection.upsert

            def once_out_of_step(*args, **kwargs):
                calls.append(1)
                if len(calls) == 1:
                    raise IndexOutOfStep("the store's next label is 5, the index's 4")
                return real(*args, **kwargs)

            collection.upsert = once_out_of_step
            assert c.upsert("aborted", ["苹果"]) and len(calls) == 2
            assert c.count("aborted") == 1
    finally:
        running.stop()


def post(url: str, body: dict) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_token_vectors_no_reply_could_hold_are_refused_before_the_work(e5, tmp_path):
    """1 MiB replies hold 668 384-dim token vectors with their tokens. Asked for ~900, the
    server computed them all and then failed to send them (gRPC's own "larger than max")."""
    running = ServerThread(e5, tmp_path, max_message_bytes=2**20)
    try:
        with Client(running.target) as c:
            with pytest.raises(InvalidArgument, match=r"at most 668 .*fewer or shorter texts"):
                c.embed_tokens(["苹果很甜。" * 60] * 4)  # 245 tokens each
            assert len(c.embed_tokens("苹果很甜。" * 60).tokens.tokens) > 240  # one fits
    finally:
        running.stop()


def test_a_restarted_server_keeps_every_document(e5, tmp_path):
    first = ServerThread(e5, tmp_path)
    with Client(first.target) as c:
        c.create_collection("kept", index="HNSW32")
        c.upsert("kept", [{"id": str(i), "text": t} for i, t in enumerate(FRUIT + PHONE)],
                 show_progress_bar=False)  # fmt: skip
        c.delete("kept", ["0"])
    first.stop()
    second = ServerThread(e5, tmp_path)
    try:
        with Client(second.target) as c:
            assert c.count("kept") == 5 and c.describe_collection("kept").index == "HNSW32"
            assert c.search("kept", PHONE[2], k=1)[0].id == "5"
            assert c.get("kept", ["0"]) == [None]
    finally:
        second.stop()


def run_cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "embedsense.client.cli", "--target", server.target, *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_info_index_search_embed(server, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(FRUIT + PHONE) + "\n\n", encoding="utf-8")
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(json.dumps({"id": "j1", "text": "橙子也是水果", "metadata": {"k": 1}},
                                ensure_ascii=False) + "\n", encoding="utf-8")  # fmt: skip

    health = run_cli(server, "health")
    assert health.returncode == 0 and "SERVING" in health.stdout
    info = run_cli(server, "--json", "info")
    assert info.returncode == 0 and json.loads(info.stdout)["dim"] == 384
    assert "multilingual-e5-small" in run_cli(server, "info").stdout

    indexed = run_cli(server, "index", str(corpus), "--collection", "cli-notes")
    assert indexed.returncode == 0 and "6 documents stored" in indexed.stdout
    assert run_cli(server, "index", str(jsonl), "--collection", "cli-notes").returncode == 0

    found = run_cli(server, "--json", "search", "cli-notes", "苹果手机", "-k", "2")
    hits = json.loads(found.stdout)
    assert len(hits) == 2 and all("手机" in h["text"] or "公司" in h["text"] for h in hits)
    table = run_cli(server, "search", "cli-notes", "水果", "--filter", '{"k": 1}').stdout
    assert "j1" in table and "rank" in table

    embedded = run_cli(server, "embed", "我喜欢吃苹果", "--tokens")
    assert embedded.returncode == 0 and "苹果" in embedded.stdout and "4-6" in embedded.stdout

    missing = run_cli(server, "search", "no-such-collection", "x")
    assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
    with Client(server.target) as c:
        c.drop_collection("cli-notes")


def test_generated_grpc_code_is_up_to_date(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), str(tmp_path)],
                   check=True, capture_output=True)  # fmt: skip
    for fresh in tmp_path.iterdir():
        committed = ROOT / "proto" / "v1" / fresh.name
        assert committed.exists(), f"proto/v1/{fresh.name} is missing: run `make proto`"
        assert committed.read_text() == fresh.read_text(), (
            f"proto/v1/{fresh.name} is stale: run `make proto`"
        )


BLOCK_HEAVY = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "faiss", "tokenizers", "transformers", "safetensors"}:
            raise ImportError(f"{name} is not installed (blocked for this test)")
sys.meta_path.insert(0, Block())
from embedsense.client import Client
from embedsense.client.cli import main
with Client(sys.argv[1]) as c:
    assert c.info().dim == 384
    assert c.encode(["苹果"]).shape == (1, 384)
sys.exit(main(["--target", sys.argv[1], "info"]))
"""


def test_the_client_and_cli_need_neither_torch_nor_faiss(server):
    done = subprocess.run([sys.executable, "-c", BLOCK_HEAVY, server.target],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "multilingual-e5-small" in done.stdout


def test_settings_come_from_flags_then_environment_then_defaults():
    from embedsense.server.api.settings import ServerSettings

    env = {"EMBEDSENSE_PORT": "6000", "EMBEDSENSE_API_KEY": "k", "EMBEDSENSE_INT8": "yes",
           "EMBEDSENSE_MAX_BATCH_TOKENS": "4096", "EMBEDSENSE_DATA_DIR": "/srv/data"}  # fmt: skip
    s = ServerSettings.from_env(env, port=7000, host=None)
    assert (s.port, s.host, s.api_key, str(s.data_dir)) == (7000, "127.0.0.1", "k", "/srv/data")
    assert s.engine.max_batch_tokens == 4096 and s.engine.int8 and s.engine.model == s.model
    with pytest.raises(ValueError, match="EMBEDSENSE_MAX_QUEUED_TOKENS='lots'"):
        ServerSettings.from_env({"EMBEDSENSE_MAX_QUEUED_TOKENS": "lots"})


def test_each_call_gets_its_priority_by_default_or_as_asked(server, client, collection):
    """Search and the sense queries are "query", Upsert "bulk", a small Embed "interactive";
    the SDK's priority= (the proto's field) overrides each. Counted by the engine's rows."""
    stats = server.server.engine.stats

    def rows_after(call) -> dict[str, int]:
        before = dict(stats.rows_by_priority)
        call()
        return {k: v - before[k] for k, v in stats.rows_by_priority.items()}

    assert rows_after(lambda: client.upsert(collection, FRUIT)) == {
        "query": 0,
        "interactive": 0,
        "bulk": 3,
    }
    assert rows_after(lambda: client.search(collection, "水果")) == {
        "query": 1,
        "interactive": 0,
        "bulk": 0,
    }
    assert rows_after(lambda: client.encode(PHONE)) == {"query": 0, "interactive": 3, "bulk": 0}
    assert rows_after(lambda: client.encode(PHONE, priority="bulk"))["bulk"] == 3
    # Any case, as the HTTP header takes it (X-Priority: Bulk).
    assert rows_after(lambda: client.encode(PHONE, priority=" BULK "))["bulk"] == 3
    assert rows_after(lambda: client.search(collection, "水果", priority="bulk"))["bulk"] == 1
    assert rows_after(lambda: client.upsert(collection, PHONE, priority="query"))["query"] == 3
    senses = rows_after(lambda: client.disambiguate("我喜欢吃苹果", "苹果"))
    assert senses["query"] >= 1 and senses["interactive"] == senses["bulk"] == 0
    found = rows_after(lambda: client.search_occurrences(collection, "我喜欢吃苹果", "苹果"))
    assert found["query"] >= 1 and found["interactive"] == found["bulk"] == 0
    many = [f"第{i}句：{FRUIT[i % 3]}" for i in range(9)]  # over 8 texts: bulk by its size
    assert rows_after(lambda: client.encode(many, batch_size=9))["bulk"] == 9


def test_a_wrong_priority_is_refused_before_any_work(server, client):
    with pytest.raises(ValueError, match="priority='urgent': expected 'query', 'interactive'"):
        client.encode(["苹果"], priority="urgent")
    with pytest.raises(InvalidArgument, match="priority: 9 is not one of"):
        client._call(Call("Embed", pb.EmbedRequest(texts=["苹果"], priority=9), lambda r: r))
