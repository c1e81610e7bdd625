"""The clients' bulk path (`encode` and `upsert` of many items), the same in `Client` and
`AsyncClient`: the last write of an id wins however the batches finish, a failure stops the
batches not yet sent and says which documents were stored, ids made from the content make a
rerun safe, and nothing is printed unless asked."""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from embedsense.client import AsyncClient, Client, InvalidArgument, Retry, bulk
from embedsense.client import _api as api
from embedsense.proto.v1 import embedsense_pb2 as pb

TOO_LONG = "苹果" * 2000  # over the model's 512 positions: refused at once, before any compute


class Tap:
    """What a test sees of a client's calls: how many of each RPC were sent, and a delay for
    the Upsert batches that hold a text starting with `slow` (the batch then lands last)."""

    def __init__(self, slow: str | None = None, delay: float = 0.0) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.slow, self.delay = slow, delay

    def seen(self, method: str | bytes, requests: list[Any]) -> float:
        """Counts the call; how long to hold it back."""
        name = (method.decode() if isinstance(method, bytes) else method).rsplit("/", 1)[-1]
        with self.lock:
            self.calls[name] += 1
        texts = [d.text for r in requests for d in getattr(r, "documents", ())]
        slow = self.slow is not None and any(t.startswith(self.slow) for t in texts)
        return self.delay if slow else 0.0


class _SyncTap(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    def __init__(self, tap: Tap) -> None:
        self.tap = tap

    def intercept_unary_unary(self, continuation, details, request):
        time.sleep(self.tap.seen(details.method, [request]))
        return continuation(details, request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        requests = list(request_iterator)
        time.sleep(self.tap.seen(details.method, requests))
        return continuation(details, iter(requests))


class _AioTap(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, tap: Tap) -> None:
        self.tap = tap

    async def intercept_unary_unary(self, continuation, details, request):
        await asyncio.sleep(self.tap.seen(details.method, [request]))
        return await continuation(details, request)

    async def intercept_stream_unary(self, continuation, details, request_iterator):
        requests = list(request_iterator)  # the client sends each batch as a list
        await asyncio.sleep(self.tap.seen(details.method, requests))
        return await continuation(details, iter(requests))


class Blocking:
    """An AsyncClient called the way a Client is, so one scenario tests both: every call runs
    to its end on the client's own event loop."""

    def __init__(self, target: str, tap: Tap | None = None, **settings: Any) -> None:
        self._loop = asyncio.new_event_loop()

        async def make() -> AsyncClient:
            if tap is not None:  # only then: a channel of one's own is part of the contract
                channel = grpc.aio.insecure_channel(target, interceptors=[_AioTap(tap)])
                settings["channel"] = channel
            return AsyncClient(target, **settings)

        self._client = self._loop.run_until_complete(make())

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)
        return lambda *args, **kwargs: self._loop.run_until_complete(method(*args, **kwargs))

    def idle(self, seconds: float) -> None:
        """Let the loop run: a task the client left behind would go on now."""
        self._loop.run_until_complete(asyncio.sleep(seconds))

    def close(self) -> None:
        self._loop.run_until_complete(self._client.close())
        self._loop.close()


def idle(c: Any, seconds: float = 0.5) -> None:
    """Wait after a call: whatever it left running (threads, tasks) would go on meanwhile."""
    if isinstance(c, Blocking):
        c.idle(seconds)
    else:
        time.sleep(seconds)


@pytest.fixture(params=["sync", "async"])
def connect(request, server) -> Iterator[Callable[..., Any]]:
    """connect(tap=None, **settings): a Client, or an AsyncClient behind `Blocking`."""
    opened: list[Any] = []

    def connect(tap: Tap | None = None, **settings: Any) -> Any:
        settings.setdefault("timeout", 60)
        if request.param == "async":
            c = Blocking(server.target, tap, **settings)
        elif tap is None:
            c = Client(server.target, **settings)
        else:
            channel = grpc.intercept_channel(grpc.insecure_channel(server.target), _SyncTap(tap))
            c = Client(server.target, channel=channel, **settings)
        opened.append(c)
        return c

    yield connect
    for c in opened:
        c.close()


@pytest.fixture
def collection(client, request) -> Iterator[str]:
    name = request.node.name.replace("[", "-").replace("]", "")[:60]
    client.create_collection(name)
    yield name
    client.drop_collection(name)


# ------------------------------------------------------------------ last write wins


def test_a_repeated_id_keeps_its_last_text_when_the_earlier_batch_lands_last(
    connect, collection, client
):
    tap = Tap(slow="v1", delay=0.5)  # the batch with v1 is held back: it would land last
    c = connect(tap, max_concurrent_batches=4)
    docs = [{"id": "x", "text": "v0 我喜欢吃苹果"}, {"id": "x", "text": "v1 我买了苹果手机"},
            {"id": "y", "text": "香蕉"}, {"id": "x", "text": "v2 苹果很甜"}]  # fmt: skip
    assert c.upsert(collection, docs, batch_size=1) == ["x", "x", "y", "x"]
    assert [d.text for d in client.get(collection, ["x", "y"])] == ["v2 苹果很甜", "香蕉"]
    assert client.count(collection) == 2


def test_a_long_earlier_text_does_not_outlive_a_later_one(connect, collection, client):
    """The issue's case, as a user meets it: the earlier text is the slow one to embed."""
    c = connect(max_concurrent_batches=4)
    for run in range(3):
        docs = [{"id": "x", "text": f"v0 {run}"}, {"id": "x", "text": "v1 " + "我喜欢吃苹果" * 70},
                {"id": "x", "text": f"v2 {run}"}]  # fmt: skip
        assert c.upsert(collection, docs, batch_size=1) == ["x"] * 3
        assert client.get(collection, ["x"])[0].text == f"v2 {run}", f"run {run}"


def test_a_repeated_id_within_one_batch_stores_the_last(connect, collection, client):
    c = connect()
    docs = [{"id": "x", "text": "第一版"}, {"id": "y", "text": "香蕉"},
            {"id": "x", "text": "第二版", "metadata": {"v": 2}}]  # fmt: skip
    assert c.upsert(collection, docs) == ["x", "y", "x"]  # one request of three
    (x,) = client.get(collection, ["x"])
    assert (x.text, x.metadata) == ("第二版", {"v": 2}) and client.count(collection) == 2
    streamed = iter([{"id": "z", "text": "旧"}, {"id": "z", "text": "新"}])  # read once
    assert c.upsert(collection, streamed) == ["z", "z"]
    assert client.get(collection, ["z"])[0].text == "新"


# ------------------------------------------------------------------ failures


@pytest.fixture
def refused_by_the_server(monkeypatch) -> str:
    """A text only the server refuses (INVALID_ARGUMENT, before any compute): one over its
    max_text_chars, from a client that does not check lengths (as none does when a server
    does not report its limit)."""
    monkeypatch.setattr(bulk, "length_problem", lambda text, max_chars: None)
    return "长" * 100_001


def test_a_failed_batch_stops_the_rest_and_the_error_lists_what_was_stored(
    connect, collection, client, refused_by_the_server
):
    c = connect(max_concurrent_batches=1)  # one at a time: which batches ran is certain
    docs = [{"id": f"d{i}", "text": f"第{i}篇"} for i in range(6)]
    docs[3]["text"] = refused_by_the_server  # the second batch fails: the third is not sent
    with pytest.raises(InvalidArgument, match="max_text_chars") as caught:
        c.upsert(collection, docs, batch_size=2)
    err = caught.value
    assert "2 of 6 documents were stored" in str(err) and "2 of 6" in err.message
    assert err.stored_ids == ["d0", "d1"]
    assert err.document_ids == [d["id"] for d in docs]
    assert client.count(collection) == 2


def test_a_failure_stops_bulk_upsert_with_batches_in_flight(
    connect, collection, client, refused_by_the_server
):
    tap = Tap()
    c = connect(tap, max_concurrent_batches=4)
    docs = [{"id": f"d{i}", "text": f"第{i}条消息"} for i in range(40)]
    docs[0]["text"] = refused_by_the_server  # while the next batches are in flight
    with pytest.raises(InvalidArgument, match="max_text_chars") as caught:
        c.upsert(collection, docs, batch_size=1)
    sent = tap.calls["Upsert"]
    stored = [d.id for d in client.get(collection, [d["id"] for d in docs]) if d is not None]
    assert sent <= 12, f"{sent} of 40 batches were sent: they went on after the failure"
    # the batches in flight were let land, so the error's account is exact
    assert caught.value.stored_ids == stored
    assert f"{len(stored)} of 40 documents were stored" in str(caught.value)
    idle(c)
    assert tap.calls["Upsert"] == sent and client.count(collection) == len(stored)


def test_a_failed_encode_batch_stops_the_batches_not_yet_sent(connect):
    tap = Tap()
    c = connect(tap, max_concurrent_batches=2)
    texts = [TOO_LONG] + [f"第{i}句：我喜欢吃苹果" for i in range(39)]
    with pytest.raises(InvalidArgument, match="512"):
        c.encode(texts, batch_size=1)
    sent = tap.calls["Embed"]
    assert sent <= 6, f"{sent} of 40 batches were sent: they went on after the failure"
    idle(c)
    assert tap.calls["Embed"] == sent, "requests were sent after the error was raised"


# ------------------------------------------------------------------ ids made by the client


def test_documents_without_ids_get_ids_made_from_their_content(connect, collection, client):
    c = connect()
    first = c.upsert(collection, ["苹果", {"text": "香蕉"}, {"text": "苹果", "metadata": {"n": 1}},
                                  {"text": "苹果", "metadata": {}}])  # fmt: skip
    assert len(first) == 4 and first[0] == first[3] and len(set(first)) == 3
    again = c.upsert(collection, [{"text": "苹果"}, "香蕉"])  # a rerun: nothing doubles
    assert again == [first[0], first[1]] and client.count(collection) == 3


def test_one_text_or_one_dict_is_refused_not_stored_as_its_characters_or_keys(
    connect, collection, client
):
    """upsert(name, "hello") stored five one-character documents, and upsert(name, {"text":
    "x"}) the document "text": the check for one str or dict never saw them."""
    c = connect()
    with pytest.raises(TypeError, match="not one str"):
        c.upsert(collection, "hello")
    with pytest.raises(TypeError, match="not one dict"):
        c.upsert(collection, {"text": "苹果"})
    assert client.count(collection) == 0


def test_vectors_of_documents_with_the_same_text_and_no_id_are_refused_not_collapsed(
    connect, collection, client
):
    """Three captions "photo" with three vectors got one id made from the text: two vectors
    were lost without a word (the server refuses them so)."""
    c = connect()
    rows = np.random.default_rng(3).standard_normal((3, 384)).astype(np.float32)
    with pytest.raises(ValueError, match=r"documents\[0\] and documents\[1\].*give each an id"):
        c.upsert(collection, ["photo"] * 3, vectors=rows)
    assert client.count(collection) == 0
    ids = c.upsert(collection, [{"id": f"p{i}", "text": "photo"} for i in range(3)], vectors=rows)
    assert ids == ["p0", "p1", "p2"] and client.count(collection) == 3


def test_a_list_is_checked_whole_before_any_of_it_is_sent(connect, collection, client):
    """NaN metadata, a control character or an over-long id in a later batch were the
    server's refusal after the earlier batches were stored."""
    c = connect()
    good = [f"第{i}篇" for i in range(6)]
    for bad, error in (({"text": "x", "metadata": {"v": float("nan")}}, "metadata.v"),
                       ({"text": "响铃\x07"}, "U\\+0007"), ({"id": "x" * 257, "text": "x"}, "256"),
                       ({"id": 1.5, "text": "x"}, "an id is a str"),
                       ({"text": "长" * 100_001}, "100001 characters.*max_text_chars"),
                       # a blank line of Chinese text: an ideographic space
                       ("", "empty"), ({"text": "\u3000"}, "empty"), (" \n", "empty"),
                       ):  # fmt: skip
        with pytest.raises((ValueError, TypeError), match=rf"documents\[6\]: .*{error}"):
            c.upsert(collection, [*good, bad], batch_size=2)
    assert client.count(collection) == 0


def test_a_rerun_after_a_partial_failure_stores_nothing_twice(
    connect, collection, client, refused_by_the_server
):
    c = connect(max_concurrent_batches=2)
    texts = [f"第{i}条新闻" for i in range(12)]
    broken = texts[:7] + [refused_by_the_server] + texts[8:]
    with pytest.raises(InvalidArgument) as caught:
        c.upsert(collection, broken, batch_size=3)
    stored = caught.value.stored_ids
    assert stored and client.count(collection) == len(stored)
    ids = c.upsert(collection, texts, batch_size=3)  # the same documents, fixed, again
    assert set(stored) <= set(ids) and client.count(collection) == 12


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_max_concurrent_batches_and_batch_size_must_be_at_least_one(cls):
    with pytest.raises(ValueError, match=r"max_concurrent_batches=0.*at least 1"):
        cls("127.0.0.1:1", max_concurrent_batches=0)
    with pytest.raises(ValueError, match=r"max_concurrent_batches=-2"):
        cls("127.0.0.1:1", max_concurrent_batches=-2)


def test_an_upserts_own_checks_come_before_it_asks_the_server_anything():
    """The text-length check asked the server for its limit first: a bad batch_size waited
    on a server (here none) and its retries instead of answering at once."""
    with Client("127.0.0.1:9", timeout=5) as c, pytest.raises(ValueError, match="batch_size"):
        c.upsert("c", ["x"], batch_size=0)


@pytest.mark.parametrize("make", [Client, Blocking])
def test_a_call_on_ids_is_checked_before_the_server_is_asked_for_its_limit(make):
    """A list of ids is split by the server's max_texts_per_request, which the client asks
    for first: a delete by ids and a filter, or an update with a mode or patch there is none
    of, must be the caller's error at once, not a wait on a server (here none) and its
    retries."""
    c = make("127.0.0.1:9", timeout=5)
    try:
        with pytest.raises(ValueError, match="one of them"):
            c.delete("c", ["a", "b"], filter={"x": 1})
        with pytest.raises(ValueError, match="mode='patch'"):
            c.update_metadata("c", ["a", "b"], {"x": 1}, mode="patch")
        with pytest.raises(TypeError, match="patch: a dict"):
            c.update_metadata("c", ["a", "b"], [("x", 1)])
        with pytest.raises(ValueError, match="patch.v"):
            c.update_metadata("c", ["a", "b"], {"v": float("nan")})
        with pytest.raises(TypeError, match="not one str"):
            c.get("c", "ab")
    finally:
        c.close()


def test_batch_size_must_be_at_least_one(connect, collection):
    c = connect()
    with pytest.raises(ValueError, match=r"batch_size=0.*at least 1"):
        c.upsert(collection, ["苹果", "香蕉"], batch_size=0)
    with pytest.raises(ValueError, match=r"batch_size=0.*at least 1"):
        c.encode(["苹果", "香蕉"], batch_size=0)


def test_no_progress_bar_unless_asked_for(connect, collection, capsys):
    c = connect()
    c.upsert(collection, ["苹果", "香蕉"])
    c.encode(["苹果", "香蕉"])
    assert capsys.readouterr().err == ""
    c.upsert(collection, ["苹果", "香蕉"], show_progress_bar=True)
    c.encode(["苹果", "香蕉"], show_progress_bar=True)
    err = capsys.readouterr().err
    assert "2/2" in err and "doc" in err and "text" in err


# ------------------------------------------------------------------ the plan, without a server


def _doc_batches(*ids: str) -> list[bulk.Batch]:
    """One batch per string of one-letter ids: "ab" writes a and b."""
    return [bulk.Batch(n, None, len(k), tuple(k), frozenset(k)) for n, k in enumerate(ids)]


def test_the_plan_holds_back_a_batch_that_writes_an_id_in_flight():
    plan = bulk.Plan(_doc_batches("ab", "c", "bd", "e"), limit=4)
    first, second = plan.next(), plan.next()
    assert (first.number, second.number) == (0, 1)
    assert plan.next() is None, "batch 2 writes b, which batch 0 has in flight"
    plan.done(second, None)
    assert plan.next() is None, "still waiting for batch 0, and nothing overtakes it"
    plan.done(first, None)
    assert [plan.next().number, plan.next().number, plan.next()] == [2, 3, None]


def test_the_plan_sends_at_most_limit_and_nothing_after_a_failure():
    progress: list[int] = []
    plan = bulk.Plan(_doc_batches("a", "b", "c", "d", "e"), limit=2, progress=progress.append)
    a, b = plan.next(), plan.next()
    assert plan.next() is None  # two in flight
    plan.done(a, "ok")
    c = plan.next()
    plan.failed(b, InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, "bad"))
    assert plan.next() is None and [x.number for x in plan.read] == [0, 1, 2]
    plan.done(c, "ok")  # in flight when b failed: it landed
    assert progress == [1, 1]
    with pytest.raises(InvalidArgument, match=r"2 of the 3 documents read were stored") as err:
        bulk.upserted_ids(plan)
    assert err.value.stored_ids == ["a", "c"] and err.value.document_ids == ["a", "b", "c"]


def test_a_document_that_is_not_one_stops_the_plan_like_a_failed_batch():
    docs = iter(["苹果", {"text": "香蕉"}, {"txt": "typo"}, "手机"])
    plan = bulk.upsert_plan("c", bulk.documents_source(docs), size=2, limit=4)
    batch = plan.next()
    assert plan.next() is None and isinstance(plan.error, ValueError)
    plan.done(batch, None)
    with pytest.raises(ValueError, match="'text'") as err:
        bulk.upserted_ids(plan)
    assert len(err.value.stored_ids) == 2
    assert "2 of the 2 documents read were stored" in err.value.__notes__[0]


def test_a_failed_upserts_account_is_of_each_ids_last_write_and_of_every_document_read():
    """An id whose later write failed was listed as stored (its older text was), so a caller
    resending what was not stored left it stale; documents read into a batch that a bad
    document then kept from being sent were in neither list."""
    docs = [{"id": "x", "text": "old"}, {"id": "y", "text": "y"},
            {"id": "x", "text": "new"}, {"id": "z", "text": "z"}]  # fmt: skip
    plan = bulk.upsert_plan("c", bulk.documents_source(docs), size=2, limit=1)
    plan.done(plan.next(), None)
    plan.failed(plan.next(), InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, "refused"))
    with pytest.raises(InvalidArgument) as err:
        bulk.upserted_ids(plan)
    assert err.value.stored_ids == ["y"] and "1 of 4 documents were stored" in str(err.value)
    docs = iter(["a", "b", "c", {"txt": "typo"}])
    plan = bulk.upsert_plan("c", bulk.documents_source(docs), size=2, limit=4)
    first = plan.next()
    assert plan.next() is None and isinstance(plan.error, ValueError)
    plan.done(first, None)
    with pytest.raises(ValueError, match=r"documents\[3\]") as err:
        bulk.upserted_ids(plan)
    assert err.value.document_ids == [bulk.content_id(t, {}) for t in "abc"]
    assert "2 of the 3 documents read were stored" in err.value.__notes__[0]


def test_one_batch_keeps_the_last_write_of_an_id_where_it_stands():
    docs = [pb.Document(id=i, text=t) for i, t in [("x", "0"), ("y", "1"), ("x", "2"), ("z", "3")]]
    assert [(d.id, d.text) for d in bulk.last_writes(docs)] == [("y", "1"), ("x", "2"), ("z", "3")]
    (batch,) = bulk.upsert_batches("c", docs, size=10)
    assert batch.ids == ("x", "y", "x", "z") and batch.size == 4
    assert len(batch.request.documents) == 3
    (empty,) = bulk.upsert_batches("c", [], size=10)  # still asks: does the collection exist?
    assert empty.request.collection == "c" and not empty.request.documents


def test_content_ids_are_fixed_and_explicit_ids_are_kept():
    # A changed id would store every document of an old load twice when it is run again.
    assert bulk.content_id("苹果", {}) == "ba1fcfeb50925227b6d77921f5a5164f"
    assert bulk.to_document("苹果").id == bulk.to_document({"text": "苹果", "metadata": {}}).id
    a = bulk.to_document({"text": "苹果", "metadata": {"a": 1, "b": 2}})
    assert a.id == bulk.to_document({"text": "苹果", "metadata": {"b": 2, "a": 1}}).id
    assert a.id != bulk.to_document("苹果").id
    assert bulk.to_document({"id": 0, "text": "苹果"}).id == "0"  # 0 is an id, not "none"
    with pytest.raises(TypeError, match="not one dict"):
        bulk.documents_source({"text": "苹果"})
    with pytest.raises(TypeError, match="not one str"):
        bulk.documents_source("苹果")


def test_one_str_of_ids_is_refused_not_sent_as_its_characters():
    for call in (
        lambda: api.get_call("c", "a1", False),  # it was: get of "a" and "1"
        lambda: api.delete_call("c", "a1"),
        lambda: api.update_metadata_call("c", "a1", {"x": 1}, "merge"),
    ):
        with pytest.raises(TypeError, match="not one str"):
            call()
    assert list(api.get_call("c", ("a1",), False).request.ids) == ["a1"]


@pytest.mark.parametrize("cls", [Client, AsyncClient])
def test_an_encodes_wrong_role_or_long_text_is_refused_before_any_request(cls):
    """They were checked as the batches were built, after the round trip for the server's
    limits: with no server, `role="Query"` was UNAVAILABLE after the retries."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        down = f"127.0.0.1:{probe.getsockname()[1]}"
    for wrong, match in (({"role": "Query"}, "role 'Query'"),
                         ({"long_text": "cut"}, "long_text='cut'")):  # fmt: skip
        c = cls(down, retry=Retry(attempts=1), timeout=5)
        with pytest.raises(ValueError, match=match):
            if cls is Client:
                c.encode(["苹果", "香蕉"], **wrong)
            else:
                asyncio.run(c.encode(["苹果", "香蕉"], **wrong))
        c.close() if cls is Client else asyncio.run(c.close())


def test_a_closed_client_says_so_and_opens_nothing_again(server):
    """A call after close() was grpc's own "Cannot invoke RPC on closed channel!" (a
    ValueError) in Client, and an AsyncClient closed before its first call opened a new
    channel and worked, unlike one closed after it."""
    c = Client(server.target, timeout=60)
    assert c.info().dim == 384
    c.close()
    with pytest.raises(RuntimeError, match="Client is closed"):
        c.info()

    async def closed_first() -> None:
        a = AsyncClient(server.target, timeout=60)
        await a.close()
        with pytest.raises(RuntimeError, match="AsyncClient is closed"):
            await a.info()

    asyncio.run(closed_first())


def test_an_async_clients_tls_files_are_read_where_it_is_made(tmp_path):
    """AsyncClient opens its channel at its first call; a missing PEM file was found only
    then (Client refuses it at once)."""
    missing = api.TLS(root_certificates=tmp_path / "missing.pem")
    for cls in (Client, AsyncClient):
        with pytest.raises(FileNotFoundError, match="missing.pem"):
            cls("127.0.0.1:1", tls=missing)
    (tmp_path / "ca.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    loaded = api.loaded_tls(api.TLS(root_certificates=tmp_path / "ca.pem"))
    assert loaded.root_certificates == b"-----BEGIN CERTIFICATE-----\n"  # bytes from now on


def test_ids_as_a_numpy_array_are_the_ids_it_holds():
    """delete(ids=np.array([...])) asked the array its truth (numpy's ValueError), and an
    array of one falsy id ([0] or [""]) deleted nothing; numpy integers were refused."""
    assert list(api.delete_call("c", np.array(["a", "b"])).request.ids) == ["a", "b"]
    assert list(api.delete_call("c", np.array([0])).request.ids) == ["0"]
    assert list(api.get_call("c", np.array([7, 8]), False).request.ids) == ["7", "8"]
    assert bulk.to_document({"id": np.int64(7), "text": "苹果"}).id == "7"


def test_integer_ids_are_looked_up_as_upsert_stored_them():
    """upsert stores {"id": 7} as "7"; get, delete and update_metadata of [7] failed with
    protobuf's own TypeError. Now 7 is "7" there too; other kinds are a TypeError naming
    the id."""
    assert bulk.to_document({"id": 7, "text": "苹果"}).id == "7"
    assert list(api.get_call("c", [7, "a1", -2], False).request.ids) == ["7", "a1", "-2"]
    assert list(api.delete_call("c", [7]).request.ids) == ["7"]
    assert list(api.update_metadata_call("c", [7], {}, "merge").request.ids) == ["7"]
    for bad in (1.5, True, None, b"a1"):
        with pytest.raises(TypeError, match=r"ids\[1\]: .*" + re.escape(repr(bad))):
            api.get_call("c", ["a1", bad], False)
