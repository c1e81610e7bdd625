"""The milvus backend with several replicas over one Milvus: what the shared backend tests
(test_backends.py) cannot show with one backend object. Each test runs on a milvus-lite
server and on a real Milvus standalone (conftest.py's milvus_standalone), both on 127.0.0.1;
two MilvusBackend objects on one URI are two encoder servers' index layers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from bench.bench_index import dataset
from ops.serverproc import MilvusLiteServer, free_port
from pymilvus import MilvusException
from pymilvus.exceptions import ParamError
from test_backends import assert_own_tokens, tokenized
from test_index import DIM, corpus, unit

from embedsense.server.api.service import status_for
from embedsense.server.index import (
    BackendSettings,
    CollectionExists,
    CollectionNotFound,
    Document,
    IndexFailed,
    IndexUnavailable,
    IndexUnsupported,
    InvalidArgument,
    open_backend,
)
from embedsense.server.index.milvus import MilvusBackend, optimize
from embedsense.server.index.milvus.backend import RECHECK_S
from embedsense.server.index.milvus.calls import (
    MilvusAliasMissing,
    MilvusAliasTaken,
    MilvusCollectionGone,
    MilvusNotLoaded,
    classify,
)
from embedsense.server.index.milvus.schema import (
    META,
    InventoryClaim,
    Layout,
    documents_schema,
    meta_schema,
)
from embedsense.server.index.store import CollectionRow
from embedsense.server.index.threads import IndexThreads
from embedsense.server.senses.senses import Senses

# The issue asks for 30 s; 12 s of 8 writers already makes hundreds of racing replacements
# of the same 20 ids (each write settles in about one Milvus time tick), within CI's time.
WRITE_SECONDS = 12


@pytest.fixture(scope="module", params=["milvus-lite-server", "milvus"])
def uri(request, tmp_path_factory):
    if request.param == "milvus":
        return request.getfixturevalue("milvus_standalone")
    server = MilvusLiteServer(tmp_path_factory.mktemp("milvus-lite"))
    request.addfinalizer(server.stop)
    return server.uri


@pytest.fixture
def replicas(uri):
    a, b = (open_backend(BackendSettings("milvus", milvus_uri=uri)) for _ in range(2))
    yield a, b
    for name in a.names():
        a.drop(name)
    a.close()
    b.close()


def test_concurrent_writers_of_the_same_ids_leave_each_document_its_own_tokens(replicas):
    """Before: two upserts of one id each deleted the other's fresh token rows, leaving the
    document with none; every occurrence search touching it failed INTERNAL."""
    a, b = replicas
    a.create("race", model="m", dim=DIM, store_tokens=True)
    ids = [f"id{i}" for i in range(20)]
    errors: list[BaseException] = []
    writes = [0]
    deadline = time.monotonic() + WRITE_SECONDS

    def writer(backend, name: str) -> None:
        rng = random.Random(name)
        col = backend.get("race")
        n = 0
        try:
            while time.monotonic() < deadline:
                n += 1
                chosen = rng.sample(ids, 3)
                col.upsert(
                    [tokenized(i, f"{i} {name} 第{n}次 苹果" * rng.randint(1, 3)) for i in chosen]
                )
                writes[0] += 1
                if n % 5 == 0:
                    for doc in col.get(chosen):
                        assert doc is not None and doc.tokens, "a document without tokens"
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    threads = [
        threading.Thread(target=writer, args=(backend, f"r{r}w{w}"))
        for r, backend in enumerate((a, b))
        for w in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WRITE_SECONDS + 120)
    assert not errors, errors[:3]
    assert writes[0] > 40
    for backend in (a, b):
        docs = backend.get("race").get(ids)
        for doc in docs:
            assert doc is not None and doc.tokens, "a document without tokens"
            assert_own_tokens(doc)
        assert sorted(backend.get("race").ids_containing("苹果", 100)) == sorted(ids)


def test_a_write_acknowledged_by_one_replica_is_read_by_the_next_call_to_another(replicas):
    """Before: every search waited for Strong consistency, ~200 ms on a real Milvus."""
    a, b = replicas
    a.create("raw", model="m", dim=DIM)
    writer, reader = a.get("raw"), None
    docs = corpus(20, seed=5)
    for i, doc in enumerate(docs):
        writer.upsert([doc])
        reader = reader or b.get("raw")
        assert reader.search(doc.vector, k=1)[0][0].id == doc.id
        assert reader.get([doc.id])[0] is not None and reader.count() == i + 1
        if i == 10:  # a delete too
            writer.delete([docs[0].id])
            assert reader.get([docs[0].id]) == [None]
            writer.upsert([docs[0]])
    latencies = []
    for doc in docs:
        started = time.perf_counter()
        reader.search(doc.vector, k=10)
        latencies.append(time.perf_counter() - started)
    assert np.median(latencies) < 0.05, f"median search {np.median(latencies) * 1000:.0f} ms"


def _at_once(*calls) -> list[object]:
    """Each call in a thread of its own, released together: "created" or its error."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            calls[i]()
            outcomes[i] = "created"
        except BaseException as err:  # noqa: BLE001
            outcomes[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return outcomes


def test_two_replicas_creating_one_collection_at_once_one_wins(replicas):
    """Before: each replica's create dropped the other's Milvus collection and both
    answered OK; one of them then wrote into nothing."""
    a, b = replicas
    for round_ in range(3):
        name = f"both{round_}"
        outcomes = _at_once(
            partial(a.create, name, model="m", dim=DIM),
            partial(b.create, name, model="m", dim=DIM, store_tokens=True),
        )
        outcomes = dict(zip("ab", outcomes, strict=True))
        winners = [label for label, outcome in outcomes.items() if outcome == "created"]
        assert len(winners) == 1, outcomes
        loser = "b" if winners == ["a"] else "a"
        assert isinstance(outcomes[loser], CollectionExists), outcomes
        tokens = winners == ["b"]
        time.sleep(RECHECK_S)
        for backend in (a, b):
            assert backend.get(name).store_tokens == tokens
        b.get(name).upsert(corpus(3))
        assert a.get(name).count() == 3
        layout = a.get(name).layout
        made = {c for c in a.calls.client.list_collections() if layout.alias[-24:] in c}
        assert made == {layout.docs} | ({layout.tokens} if tokens else set())


def test_a_collection_recreated_by_another_replica_is_noticed(replicas):
    """Before: the other replica kept the old settings for ever, and its late writes went
    to the new collection's Milvus collection."""
    a, b = replicas
    a.create("c", model="m", dim=DIM)
    held = b.get("c")
    held.upsert(corpus(2))
    a.drop("c")
    a.create("c", model="m2", dim=2 * DIM, store_tokens=True)
    with pytest.raises(CollectionNotFound, match="'c' was dropped"):
        held.upsert(corpus(4)[2:])
    time.sleep(RECHECK_S)
    fresh = b.get("c")
    assert (fresh.row.dim, fresh.row.model, fresh.store_tokens) == (2 * DIM, "m2", True)
    rng = np.random.default_rng(1)
    vector = rng.normal(size=2 * DIM).astype(np.float32)
    fresh.upsert([Document(text="new", vector=vector / np.linalg.norm(vector), id="n")])
    assert a.get("c").count() == 1 and a.get("c").get(["doc-2"]) == [None]


def test_milvus_errors_are_classified():
    """Before: every error but "not found" was UNAVAILABLE, and clients retried them."""
    undefined = 65535  # Milvus before 2.4 answers most failures with it
    cases = [
        (MilvusException(undefined, 'cannot parse expression: x like "%a%"'), InvalidArgument),
        (MilvusException(undefined, "unsupported pattern: %a%, only prefix"), IndexUnsupported),
        (MilvusException(undefined, "worker(1) query failed: Assert ..."), IndexFailed),
        (MilvusException(101, "collection not loaded"), MilvusNotLoaded),  # loaded, and again
        (MilvusException(undefined, "collection x was released"), MilvusNotLoaded),
        (MilvusException(8, "rate limit exceeded"), IndexUnavailable),
        (MilvusException(1100, "invalid parameter"), InvalidArgument),
        (MilvusException(1602, "alias already exist"), MilvusAliasTaken),
        (MilvusException(1600, "alias not found[database=default][alias=x]"), MilvusAliasMissing),
        (MilvusException(100, "alias 'x' does not exist"), MilvusAliasMissing),  # milvus-lite
        (MilvusException(100, "collection not found[collection=x]"), MilvusCollectionGone),
        (MilvusException(grpc.StatusCode.DEADLINE_EXCEEDED, "Retry timeout: 2s"), IndexUnavailable),
        (ParamError(message="vector dim"), InvalidArgument),
        (ValueError("no idea"), IndexFailed),
    ]
    for error, kind in cases:
        assert type(classify(error, "a search")) is kind, error
    assert status_for(IndexUnavailable("x")) == grpc.StatusCode.UNAVAILABLE
    assert status_for(MilvusNotLoaded("x")) == grpc.StatusCode.UNAVAILABLE  # if loading fails
    assert status_for(IndexUnsupported("x")) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_for(IndexFailed("x")) is None  # the RPC layer: INTERNAL, logged with its trace


def test_an_unreachable_milvus_is_unavailable_within_the_deadline():
    """Before: no deadline on any call; pymilvus retried 75 times."""
    started = time.monotonic()
    with pytest.raises(IndexUnavailable):
        MilvusBackend(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    assert time.monotonic() - started < 20


def test_creating_collections_on_milvus_lite_logs_no_error(tmp_path, caplog):
    """Before: each create (the meta rows' at start-up too) had pymilvus wait for the index
    build, which first asks Milvus for a timestamp (AllocTimestamp): milvus-lite does not
    implement it, and its gRPC server, in this process for a .db file, logged an ERROR each
    time; the wait's first poll came 0.5 s later, in every create."""
    with caplog.at_level(logging.ERROR, logger="grpc._server"):
        backend = MilvusBackend(str(tmp_path / "index.db"))
        try:
            backend.create("plain", model="m", dim=DIM)
            backend.create("with-tokens", model="m", dim=DIM, store_tokens=True)
            docs = corpus(3)
            backend.get("plain").upsert(docs)
            found = backend.get("plain").search(np.stack([docs[1].vector]), 1)
        finally:
            backend.close()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [hit.id for hit in found[0]] == ["doc-1"]  # indexed and loaded: served at once


class _Recorder:
    """A backend whose every lookup records its thread, then fails."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def _record(self, *args, **kwargs):
        self.threads.append(threading.get_ident())
        raise CollectionNotFound("recorded")

    get = get_inventory = _record


def test_senses_look_up_collections_and_inventories_off_the_event_loop():
    """Before: inventory and collection lookups ran on the event loop: a slow Milvus froze
    gRPC, HTTP and health together."""
    recorder = _Recorder()
    senses = Senses(engine=None, catalog=recorder, index_threads=IndexThreads())

    async def calls() -> int:
        loop_thread = threading.get_ident()
        for call in (
            senses.disambiguate("我喜欢吃苹果", "苹果", inventory="mine"),
            senses.search_occurrences("c", "我喜欢吃苹果", "苹果"),
            senses.induce_senses("c", "苹果"),
        ):
            with pytest.raises(CollectionNotFound):
                await call
        return loop_thread

    loop_thread = asyncio.run(calls())
    assert len(recorder.threads) == 3 and loop_thread not in recorder.threads


def _recall(col, queries, truth, where, ef) -> float:
    found = [
        [h.id for h in col.search(q, k=10, where=where, ef_search=ef, with_documents=False)[0]]
        for q in queries
    ]
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]))


def test_recall_after_a_bulk_load_and_under_a_filter_matches_faiss(uri, tmp_path):
    """Before: the backend never flushed, so searches ran on Milvus's interim index (recall
    0.35-0.43 at 50k), and a 10 % filter kept ef as it was (recall 0.52 at ef 64)."""
    n, dim = 6000, 48
    vectors, queries = dataset("clustered", n, 100, dim)  # the benchmark's kind of data
    bucket = np.arange(n) % 10
    docs = [
        Document(text=f"t{i}", vector=vectors[i], id=f"d{i}", metadata={"bucket": int(b)})
        for i, b in enumerate(bucket)
    ]
    recalls = {}
    for kind, settings in (
        ("faiss", BackendSettings("faiss", data_dir=tmp_path / "f")),
        ("milvus", BackendSettings("milvus", milvus_uri=uri)),
    ):
        backend = open_backend(settings)
        try:
            backend.create("r", model="m", dim=dim, index_spec="HNSW16")
            col = backend.get("r")
            for start in range(0, n, 2000):
                col.upsert(docs[start : start + 2000])
            assert col.wait_until_optimized(180)
            for where, mask in ((None, None), ({"bucket": 3}, bucket == 3)):
                scores = queries @ vectors.T
                if mask is not None:
                    scores[:, ~mask] = -np.inf
                truth = [[f"d{i}" for i in np.argsort(-row)[:10]] for row in scores]
                for ef in (32, 64, 128):
                    recalls[kind, str(where), ef] = _recall(col, queries, truth, where, ef)
        finally:
            for name in backend.names():
                backend.drop(name)
            backend.close()
    for (kind, where, ef), recall in recalls.items():
        if kind == "milvus":
            assert recall >= recalls["faiss", where, ef] - 0.02, recalls


def test_a_create_that_died_before_its_meta_row_is_taken_over(replicas):
    """A replica that died between claiming a name and writing its meta row would block the
    name for ever; after the grace period another replica takes the claim over."""
    a, b = replicas
    dead = Layout("orphan", f"{int(time.time()) - 3600:08x}deadbeef")
    row = CollectionRow("orphan", "m", DIM, "cosine", "Flat", False, {}, time.time(), 0, 0)
    schema, index = documents_schema(row, dead)
    a.calls("test", "create_collection", dead.docs, schema=schema, index_params=index)
    a.calls("test", "create_alias", dead.docs, dead.alias)
    b.create("orphan", model="m", dim=DIM)
    assert dead.docs not in a.calls.client.list_collections()
    b.get("orphan").upsert([Document(text="x", vector=unit(np.random.default_rng(0))[0])])
    assert a.get("orphan").count() == 1


def test_metadata_milvus_would_refuse_is_refused_before_any_write(replicas):
    """Measured as `json.dumps` wrote it, not as its copy for filters (each string tagged
    with its type, 80 KB here): Milvus refused the write in its own words, after a
    collection with token vectors had stored the document's token rows."""
    a, _ = replicas
    a.create("big", model="m", dim=DIM)
    col = a.get("big")
    doc = corpus(1)[0]
    doc.metadata = {"k": [""] * 16_000}
    with pytest.raises(InvalidArgument, match="its metadata takes 80007 bytes"):
        col.upsert([doc])
    doc.metadata = {"k": [""] * 100}
    assert col.upsert([doc]) == [doc.id] and col.count() == 1


def test_a_scroll_goes_on_past_a_narrowed_window_emptied_meanwhile(replicas, monkeypatch):
    """A full query window is narrowed to the ids up to the lowest few it saw; when another
    writer had deleted all of those by then, the narrowed query came back empty and the
    scroll ended, although every document above them still matched."""
    from embedsense.server.index.milvus import collection as milvus_collection

    monkeypatch.setattr(milvus_collection, "MAX_ROWS_PER_QUERY", 4)
    monkeypatch.setattr(milvus_collection, "NARROW_TO", 1)
    a, b = replicas
    a.create("s", model="m", dim=DIM)
    col = a.get("s")
    docs = corpus(12)
    col.upsert(docs)
    real, deleted = col.calls.query, []

    def query(what, *args, **kwargs):
        rows = real(what, *args, **kwargs)
        if what.startswith("page through") and not deleted:
            upper = min(row["id"] for row in rows)  # what the next query narrows to
            deleted.extend(d.id for d in docs if d.id <= upper)
            b.get("s").delete(deleted)
        return rows

    monkeypatch.setattr(col.calls, "query", query)
    seen, after = [], None
    while True:
        page, after = col.scroll(None, 3, after)
        seen += [d.id for d in page]
        if after is None:
            break
    assert deleted and seen == sorted(d.id for d in docs if d.id not in deleted)


def test_a_word_is_found_past_a_query_window_of_candidates_that_only_hold_its_pairs(
    replicas, monkeypatch
):
    """The character pairs find every document holding the word, and others holding its
    pairs apart; one query window of candidates was read, so where the window held only
    those, the documents holding the word were not found."""
    from test_backends import tokenized

    from embedsense.server.index.milvus import collection as milvus_collection

    monkeypatch.setattr(milvus_collection, "MAX_ROWS_PER_QUERY", 4)
    monkeypatch.setattr(milvus_collection, "NARROW_TO", 2)
    a, _ = replicas
    a.create("w", model="m", dim=DIM, store_tokens=True)
    col = a.get("w")
    apart = [tokenized(f"apart-{i}", f"苹果{i} 果汁") for i in range(9)]
    col.upsert([*apart, tokenized("z-has-it", "苹果汁")])  # written last: not in the window
    assert col.ids_containing("苹果汁", 10) == ["z-has-it"]


def test_two_replicas_dropping_one_collection_at_once_both_get_a_status(replicas):
    """A drop that lost the race to another replica's fails with a status the API maps
    (NOT_FOUND; milvus-lite may say UNAVAILABLE), never an unmapped error (INTERNAL)."""
    a, b = replicas
    for round_ in range(2):
        name = f"gone{round_}"
        a.create(name, model="m", dim=DIM, store_tokens=round_ % 2 == 1)
        time.sleep(RECHECK_S)
        outcomes = _at_once(partial(a.drop, name), partial(b.drop, name))
        assert "created" in outcomes, outcomes  # one drop, at least, went through
        for outcome in outcomes:
            assert outcome == "created" or status_for(outcome) is not None, outcomes
        assert name not in a.names() and name not in b.names()


def test_two_replicas_creating_one_inventory_at_once_one_wins(replicas, inventory_names):
    """Before: both read no inventory, both wrote theirs and both answered "created"; the
    first caller's inventory was gone while it was told it had made it."""
    a, b = replicas
    for round_ in range(3):
        name = f"senses{round_}"
        inventory_names(name)
        outcomes = _at_once(
            partial(_created_or_exists, a, name, '{"by": "a"}'),
            partial(_created_or_exists, b, name, '{"by": "b"}'),
        )
        outcomes = {label: "exists" if isinstance(outcome, CollectionExists) else outcome
                    for label, outcome in zip("ab", outcomes, strict=True)}  # fmt: skip
        assert sorted(outcomes.values()) == ["created", "exists"], outcomes
        winner = next(label for label, outcome in outcomes.items() if outcome == "created")
        for backend in (a, b):
            assert backend.get_inventory(name) == f'{{"by": "{winner}"}}'
        assert a.delete_inventory(name) and b.get_inventory(name) is None
        assert b.put_inventory(name, '{"by": "again"}', replace=False)  # the name is free
        assert a.get_inventory(name) == '{"by": "again"}'
        assert b.delete_inventory(name)


def _created_or_exists(backend, name: str, words_json: str) -> None:
    if not backend.put_inventory(name, words_json, replace=False):
        raise CollectionExists(name)  # _at_once's outcome for "exists"


def _claims(backend, name: str) -> list[str]:
    """The Milvus collections of claims on the inventory `name` (schema.InventoryClaim)."""
    prefix = InventoryClaim(name).target("")
    return [c for c in backend.calls.client.list_collections() if c.startswith(prefix)]


def _make_claim(backend, name: str, born: float, *, alias: bool = True) -> str:
    """A claim as a create that stopped before its row leaves it."""
    claim = InventoryClaim(name)
    target = claim.target(f"{int(born):08x}deadbeef")
    backend.calls("test", "create_collection", target, schema=meta_schema()[0])
    if alias:
        backend.calls("test", "create_alias", target, claim.alias)
    return target


@pytest.fixture
def inventory_names(replicas):
    """Names for a test's inventories; what the test left of them is deleted after it."""
    names: list[str] = []
    yield names.append
    a, _ = replicas
    for name in names:
        with contextlib.suppress(Exception):
            a.delete_inventory(name)
        for left in _claims(a, name):
            a.calls("test", "drop_collection", left)


def test_an_inventory_create_that_died_before_its_row_is_taken_over(replicas, inventory_names):
    """A replica that died between claiming an inventory's name and writing its row would
    block the name for ever; after CLAIM_GRACE_S another replica takes the claim over. A
    claim younger than that is a create under way: the name exists."""
    a, b = replicas
    for name in ("orphaned", "underway"):
        inventory_names(name)
    dead = _make_claim(a, "orphaned", time.time() - 3600)
    _make_claim(a, "underway", time.time())
    assert b.put_inventory("orphaned", '{"by": "b"}', replace=False)
    assert a.get_inventory("orphaned") == '{"by": "b"}'
    assert dead not in _claims(a, "orphaned")
    assert not a.put_inventory("orphaned", '{"by": "a"}', replace=False)
    assert not b.put_inventory("underway", '{"by": "b"}', replace=False)
    assert a.delete_inventory("orphaned") and a.get_inventory("orphaned") is None
    assert _claims(a, "orphaned") == []


def test_an_inventory_whose_row_was_not_written_can_be_created_again_at_once(
    replicas, monkeypatch, inventory_names
):
    """A create whose row write failed (Milvus unavailable) hands its claim back: the
    caller's retry creates the inventory, rather than hearing "exists" for two minutes."""
    a, b = replicas
    inventory_names("retried")

    def unavailable(key: str, value: str) -> None:
        raise IndexUnavailable("milvus did not answer (write)")

    monkeypatch.setattr(a, "_meta_put", unavailable)
    with pytest.raises(IndexUnavailable):
        a.put_inventory("retried", '{"by": "a"}', replace=False)
    monkeypatch.undo()
    assert b.put_inventory("retried", '{"by": "b"}', replace=False)
    assert a.get_inventory("retried") == '{"by": "b"}'
    assert a.delete_inventory("retried")
    assert _claims(a, "retried") == []


def test_an_inventory_without_a_claim_is_refused_replaced_and_deleted_as_any(
    replicas, inventory_names
):
    """Inventories stored before claims existed, or by a replace, have a row and no claim."""
    a, b = replicas
    inventory_names("unclaimed")
    assert a.put_inventory("unclaimed", '{"v": 1}', replace=True)
    assert _claims(a, "unclaimed") == []
    assert not b.put_inventory("unclaimed", '{"v": 2}', replace=False)
    assert b.put_inventory("unclaimed", '{"v": 3}', replace=True)
    assert a.get_inventory("unclaimed") == '{"v": 3}'
    assert a.delete_inventory("unclaimed") and b.get_inventory("unclaimed") is None
    assert b.put_inventory("unclaimed", '{"v": 4}', replace=False)
    assert len(_claims(a, "unclaimed")) == 1


def test_deleting_an_inventory_drops_claims_that_earlier_failed_creates_left(
    replicas, inventory_names
):
    """A create stopped between making its claim's collection and naming it leaves that
    collection; the next delete of the name drops it once it is older than CLAIM_GRACE_S
    (a younger one may be a create under way)."""
    a, b = replicas
    inventory_names("leftovers")
    old = _make_claim(a, "leftovers", time.time() - 3600, alias=False)
    young = _make_claim(a, "leftovers", time.time(), alias=False)
    assert b.put_inventory("leftovers", '{"by": "b"}', replace=False)
    assert a.delete_inventory("leftovers")
    assert _claims(a, "leftovers") == [young] and old != young


@pytest.fixture
def three_segments(uri):
    """A collection of three loads, each flushed as a segment of its own (real Milvus only:
    milvus-lite keeps no segments). Milvus's own compaction is off for it: had it merged them
    first, a test's compaction would have nothing to merge. (Milvus 2.3.5 honours the
    property: of four small segments flushed, it merged three within 15 s in a collection
    without it, and none in 150 s in one with it.)"""
    backend = open_backend(BackendSettings("milvus", milvus_uri=uri))
    try:
        backend.create("merged", model="m", dim=DIM, index_spec="HNSW16")
        col = backend.get("merged")
        if col.calls.loaded_segments("test", col.layout.docs) is None:
            pytest.skip("milvus-lite keeps no segments")
        col.calls("test", "alter_collection_properties", col.layout.docs,
                  properties={"collection.autocompaction.enabled": "false"})  # fmt: skip
        rng = np.random.default_rng(0)
        for part in range(3):  # each flush seals the load as a segment of its own
            col.upsert([Document(text=f"t{part}-{i}", vector=v, id=f"d{part}-{i}")
                        for i, v in enumerate(unit(rng, 1500))])  # fmt: skip
            col.calls("test", "flush", col.layout.docs)
        yield col
    finally:
        for name in backend.names():
            backend.drop(name)
        backend.close()


def _served(col) -> list[tuple[int, bool]]:
    segments = col.calls.loaded_segments("test", col.layout.docs)
    return sorted((s.num_rows, bool(s.index_name)) for s in segments)


class _Recording:
    """An object passing every call through, keeping each call's deadline in `timeouts`;
    a call named in `refuse` raises its error instead."""

    def __init__(self, target, timeouts: list[tuple[str, float | None]], refuse=None) -> None:
        self.target = target
        self.timeouts = timeouts
        self.refuse: dict[str, Exception] = {} if refuse is None else refuse

    def __getattr__(self, name: str):
        method = getattr(self.target, name)
        if name == "_get_connection":  # how the collection lists segments
            return lambda: _Recording(method(), self.timeouts, self.refuse)
        if name.startswith("_") or not callable(method):
            return method

        def call(*args, **kwargs):
            self.timeouts.append((name, kwargs.get("timeout")))
            if name in self.refuse:
                raise self.refuse[name]
            return method(*args, **kwargs)

        return call


class _MilvusSpy(_Recording):
    """A collection's MilvusClient, recorded; its compaction jobs, where a test asks, go
    otherwise: "no plan" (the first a real compaction, said to have had no plan), "failed"
    (the first none started, its plan said to have ended with the segments unmerged) or
    "never" (none started, each said to have had no plan, as when Milvus merges none)."""

    FAKE_JOB, FAKE_JOB_WITHOUT_PLAN = 1, 2

    def __init__(self, col, first_job: str = "real") -> None:
        super().__init__(col.calls.client, [])
        self.docs = col.layout.docs
        self.first_job = first_job
        self.jobs: list[int] = []

    def compact(self, *args, **kwargs) -> int:
        self.timeouts.append(("compact", kwargs.get("timeout")))
        if self.first_job == "failed" and not self.jobs:
            self.jobs.append(self.FAKE_JOB)
        elif self.first_job == "never":
            self.jobs.append(self.FAKE_JOB_WITHOUT_PLAN)
        else:
            self.jobs.append(self.target.compact(*args, **kwargs))
        return self.jobs[-1]

    def get_compaction_state(self, job: int, **kwargs) -> str:
        self.timeouts.append(("get_compaction_state", kwargs.get("timeout")))
        if job in (self.FAKE_JOB, self.FAKE_JOB_WITHOUT_PLAN):
            return "Completed"
        return self.target.get_compaction_state(job, **kwargs)

    def get_compaction_plans(self, job: int, **kwargs):
        self.timeouts.append(("get_compaction_plans", kwargs.get("timeout")))
        if job == self.FAKE_JOB_WITHOUT_PLAN:
            return SimpleNamespace(plans=[])
        if job == self.FAKE_JOB:
            segments = self.target._get_connection().get_query_segment_info(self.docs)
            return SimpleNamespace(plans=[SimpleNamespace(sources=[s.segmentID for s in segments])])
        plans = self.target.get_compaction_plans(job, **kwargs)
        if self.first_job == "no plan" and job == self.jobs[0]:
            return SimpleNamespace(plans=[])
        return plans


def test_optimizing_merges_the_segments_and_waits_for_the_merge_to_be_served(three_segments):
    """Before: wait_until_optimized flushed and waited for indexes only. Three bulk loads
    stayed three segments, each searched on its own graph (slower, and lower recall at a
    given ef than one graph); Milvus merged them later, when it chose, while serving."""
    col = three_segments
    assert col.wait_until_optimized(240)
    assert _served(col) == [(4500, True)]
    segment = col.calls.loaded_segments("test", col.layout.docs)[0].segmentID
    assert len(col.search(unit(np.random.default_rng(1)), k=10, with_documents=False)[0]) == 10
    assert col.wait_until_optimized(240)  # one segment: left as it is, not rewritten
    assert [s.segmentID for s in col.calls.loaded_segments("test", col.layout.docs)] == [segment]


def test_optimizing_waits_for_a_merge_milvus_started_itself(three_segments):
    """Milvus's own compaction can take the segments first: the manual job then has no plan.
    Before: wait_until_optimized took that for "nothing to merge" and returned while the old
    segments were still served. Here Milvus merges for real, and the job is said to have had
    no plan, as when Milvus's own compaction holds every segment."""
    col = three_segments
    col.calls.client = spy = _MilvusSpy(col, first_job="no plan")
    assert col.wait_until_optimized(240)
    assert spy.jobs and _served(col) == [(4500, True)]


def test_optimizing_says_so_at_once_when_the_merge_failed(three_segments, caplog):
    """A compaction job is "Completed" once each plan has ended, failed or not. Before: after
    a failed merge, wait_until_optimized waited for its segments to be replaced until its
    timeout passed (the benchmark gives none: an hour), and said False, though every row was
    indexed and served."""
    col = three_segments
    col.calls.client = spy = _MilvusSpy(col, first_job="failed")
    with caplog.at_level("WARNING"):
        assert col.wait_until_optimized(90)
    assert spy.jobs == [spy.FAKE_JOB]  # once: not tried again and again
    # (Milvus's own compaction may merge some of them meanwhile: which stay is not asserted.)
    assert "did not merge the segments of 'merged'" in caplog.text


def test_optimizing_returns_when_milvus_plans_no_merge(three_segments, monkeypatch, caplog):
    """A Milvus that plans no merge of the segments, however often it is asked (its
    compaction settings or version may leave them alone). Before: wait_until_optimized
    compacted again and again, taking each "no plan" for Milvus's own merge still running,
    until its timeout passed (the benchmark gives none: an hour), and said False, though
    every row was indexed and served."""
    monkeypatch.setattr(optimize, "NO_PLAN_PATIENCE_S", 2.0)
    monkeypatch.setattr(optimize, "NO_PLAN_RETRY_S", 0.2)
    col = three_segments
    col.calls.client = spy = _MilvusSpy(col, first_job="never")
    with caplog.at_level("INFO"):
        assert col.wait_until_optimized(30)
    assert len(spy.jobs) >= 2  # asked again: a merge of Milvus's own could have held them
    assert _served(col) == [(1500, True)] * 3
    assert "milvus plans no merge of the 3 segments of 'merged'" in caplog.text


def test_optimizing_a_milvus_that_does_not_say_what_it_keeps_merges_nothing(three_segments):
    """A Milvus that refuses GetPersistentSegmentInfo (as one that does not list its loaded
    segments, milvus-lite, is served): a merge could not be seen served, so none is started.
    Before: the refusal reached the caller as an index error."""
    col = three_segments
    col.calls.client = spy = _MilvusSpy(col)
    refused = MilvusException(code=10, message="GetPersistentSegmentInfo: not supported")
    spy.refuse["get_persistent_segment_infos"] = refused
    for _ in range(2):
        assert col.wait_until_optimized(60)
    assert not spy.jobs
    assert _served(col) == [(1500, True)] * 3  # each segment's index built and served
    assert col.count() == 4500
    asked = [name for name, _ in spy.timeouts]
    assert asked.count("get_persistent_segment_infos") == 1  # an unsupported call: asked once


class _SlowMilvus:
    """MilvusCalls of a Milvus whose every answer takes longer than the time it is given:
    each call ends, unanswered, a moment before its deadline (gRPC's timer may fire early)."""

    def __call__(self, what: str, method: str, *args, timeout: float, **kwargs):
        time.sleep(max(0.0, timeout - 0.01))
        raise IndexUnavailable(f"milvus did not answer ({what}): Deadline Exceeded")


class _IndexingMilvus:
    """MilvusCalls of a Milvus still building the index of three segments."""

    def __call__(self, what: str, method: str, *args, **kwargs):
        return {"pending_index_rows": 100} if method == "describe_index" else None

    def loaded_segments(self, what: str, collection: str, timeout: float) -> list:
        return [SimpleNamespace(segmentID=i, state=3, level=2, num_rows=1500, index_name="")
                for i in range(3)]  # fmt: skip

    persistent_segments = loaded_segments


def test_an_optimize_whose_milvus_call_ran_out_of_its_time_says_false():
    """Before: a call cut off by its deadline a moment early raised "milvus did not answer"
    (UNAVAILABLE to the caller) instead of the timeout's False."""
    assert optimize.wait_until_optimized(_SlowMilvus(), "n", "d", ("d",), 0.3) is False


def test_an_optimize_timeout_shorter_than_its_poll_is_kept(monkeypatch):
    """Before: it slept a whole poll interval past a shorter timeout."""
    monkeypatch.setattr(optimize, "POLL_S", 30.0)
    started = time.monotonic()
    assert optimize.wait_until_optimized(_IndexingMilvus(), "n", "d", (), 0.2) is False
    assert time.monotonic() - started < 10


class _MilvusLoading:
    """MilvusCalls of a Milvus that does not list the segments it keeps, its index built over
    4,500 rows, its query nodes serving `loaded` segments of 1,500 rows."""

    def __init__(self, loaded: int) -> None:
        self.loaded = loaded

    def __call__(self, what: str, method: str, *args, **kwargs):
        assert method == "describe_index"
        return {"total_rows": 4500, "indexed_rows": 4500, "pending_index_rows": 0}

    def loaded_segments(self, what: str, collection: str, timeout: float) -> list:
        return [SimpleNamespace(segmentID=i, state=3, level=2, num_rows=1500, index_name="v")
                for i in range(self.loaded)]  # fmt: skip

    def persistent_segments(self, what: str, collection: str, timeout: float) -> None:
        return None


def test_without_the_segments_milvus_keeps_the_rows_its_index_counts_are_waited_for():
    """Before: with the index built, the segments served were taken as all, though the
    query nodes had loaded none of them yet (Milvus 2.3.5 after a flush, for seconds)."""
    deadline = optimize.Deadline(10)
    for loaded in (0, 2):
        assert optimize._served(_MilvusLoading(loaded), "w", "d", deadline) is None
    assert len(optimize._served(_MilvusLoading(3), "w", "d", deadline)) == 3


def test_each_milvus_call_of_an_optimize_is_bounded_by_what_is_left_of_its_timeout(uri):
    """Before: each call inside wait_until_optimized took the backend's whole Milvus timeout
    (here 300 s), so wait_until_optimized(60) could take many minutes on a slow Milvus."""
    backend = open_backend(BackendSettings("milvus", milvus_uri=uri, milvus_timeout_s=300))
    try:
        backend.create("bounded", model="m", dim=DIM)
        col = backend.get("bounded")
        col.upsert(corpus(20))
        col.calls.client = spy = _MilvusSpy(col)
        assert col.wait_until_optimized(60)
        assert spy.timeouts
        assert all(t is not None and 0 < t <= 60 for _, t in spy.timeouts), spy.timeouts
    finally:
        for name in backend.names():
            backend.drop(name)
        backend.close()


def test_a_milvus_lite_file_opened_again_serves_what_it_holds(tmp_path):
    """Before: milvus-lite opens a file's collections released, and the backend never loaded
    one it had not created itself: after a clean restart every call failed UNAVAILABLE
    ("Collection 'embedsense_meta' is in state 'released'; call load()")."""
    path = str(tmp_path / "index.db")
    docs = corpus(3)
    # Written by another process: this one's milvus-lite would keep the file open, loaded.
    write = f"""
import sys
sys.path[:0] = {[str(Path(__file__).parent)]!r}
from test_backends import tokenized
from test_index import DIM, corpus
from embedsense.server.index.milvus import MilvusBackend
first = MilvusBackend({path!r})
first.create("plain", model="m", dim=DIM)
first.create("with-tokens", model="m", dim=DIM, store_tokens=True)
first.get("plain").upsert(corpus(3))
first.get("with-tokens").upsert([tokenized("t-1", "苹果很甜"), tokenized("t-2", "手机")])
first.close()
"""
    subprocess.run([sys.executable, "-c", write], check=True, timeout=120)
    again = MilvusBackend(path)
    try:
        assert sorted(again.names()) == ["plain", "with-tokens"]
        plain = again.get("plain")
        assert plain.info().count == 3
        found = plain.search(np.stack([docs[1].vector]), 1)
        assert [hit.id for hit in found[0]] == ["doc-1"]
        for doc in again.get("with-tokens").get(["t-1", "t-2"]):
            assert_own_tokens(doc)
        assert again.get("with-tokens").ids_containing("苹果", 10) == ["t-1"]
    finally:
        again.close()


def test_a_collection_released_under_a_running_replica_is_served_again(replicas):
    """An operator's release (or a milvus-lite server restarted under running replicas)
    left every call on the collection UNAVAILABLE until the replica restarted."""
    a, b = replicas
    a.create("released", model="m", dim=DIM, store_tokens=True)
    docs = [tokenized("t-1", "苹果很甜"), tokenized("t-2", "手机")]
    a.get("released").upsert(docs)
    _, layout = a._stored("released")
    for collection in (layout.docs, layout.tokens, META):
        a.calls("release", "release_collection", collection)
    for replica in (a, b):
        found = replica.get("released").search(np.stack([docs[1].vector]), 1)
        assert [hit.id for hit in found[0]] == ["t-2"]
        assert replica.get("released").ids_containing("苹果", 10) == ["t-1"]
        assert replica.get("released").info().count == 2
