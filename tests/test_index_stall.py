"""A stalled index holds up only the calls that need it. A Milvus that stops answering (here a
milvus-lite server stopped with SIGSTOP) keeps each call to it waiting until the Milvus
deadline. While more searches than a thread pool holds wait on it, the calls that need no
index answer: Explain, and /metrics (the engine's metrics, the collections' sizes left out
and `embedsense_index_up` 0). Once the Milvus answers again, so does the index. Then, in
isolation, how scrapes share the index's readings, and how a stop waits for index calls.
Bounded: one collection of 8 documents, ~30 calls, a deadline of STALL_S."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import FrontEndsThread, ServerThread
from ops.serverproc import MilvusLiteServer, free_port, wait_until_serving

from embedsense.client import Client, Retry, Unavailable
from embedsense.server.index.milvus.coalesce import SearchStats
from embedsense.server.index.threads import INDEX_THREADS, IndexThreads

STALL_S = 20.0  # the server's deadline per Milvus call: how long a stalled call waits
WAITING = INDEX_THREADS + 4  # searches waiting on the stalled Milvus: more than a pool holds
STALL_SIZE = r'^embedsense_collection_documents\{collection="stall"\} 8\.0$'
TEXTS = ["我喜欢吃苹果", "这个苹果又红又甜", "苹果发布了新款手机", "我的苹果电脑坏了"]


@contextlib.contextmanager
def over_own_milvus(kind, e5, tmp_path, **settings):
    """A server (`kind`: ServerThread or FrontEndsThread) over a milvus-lite server of its
    own, which the test may stop."""
    milvus = MilvusLiteServer(tmp_path / "milvus")
    server = None
    try:
        server = kind(e5, tmp_path / "data", index_backend="milvus", milvus_uri=milvus.uri,
                      **settings)  # fmt: skip
        yield server, milvus
    finally:
        if milvus.process.poll() is None:  # whatever the test left it in (not ended)
            os.kill(milvus.process.pid, signal.SIGCONT)
        if server is not None:
            server.stop()
        milvus.stop()


@pytest.fixture(params=["one process", "front ends"])
def stallable(request, e5, tmp_path):
    """A server over its own milvus-lite server: one process, then the engine's process
    with two front-end processes (--frontends 2)."""
    kind = ServerThread if request.param == "one process" else FrontEndsThread
    with over_own_milvus(kind, e5, tmp_path, milvus_timeout_s=STALL_S, metrics_port=0,
                         http_port=0) as running:  # fmt: skip
        yield running


def metrics_page(port: int) -> tuple[str, float]:
    """/metrics on `port` (the metrics port, or the HTTP API's), and how long it took."""
    started = time.monotonic()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60).read()
    return text.decode(), time.monotonic() - started


def test_a_stalled_index_holds_up_only_the_calls_that_need_it(stallable):
    server, milvus = stallable
    port = server.server.metrics_port
    with Client(server.target, timeout=120) as c:
        c.create_collection("stall")
        c.upsert("stall", [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS * 2)],
                 show_progress_bar=False)  # fmt: skip
        page, _ = metrics_page(port)
        assert re.search(STALL_SIZE, page, re.M), page
        assert re.search(r"^embedsense_index_up 1\.0$", page, re.M), page

        os.kill(milvus.process.pid, signal.SIGSTOP)
        with ThreadPoolExecutor(WAITING) as pool:
            searches = [pool.submit(c.search, "stall", "水果", k=3) for _ in range(WAITING)]
            time.sleep(2)  # every search has reached the server and waits on the Milvus
            assert not any(s.done() for s in searches)

            started = time.monotonic()
            explained = c.explain("我喜欢吃苹果", "苹果")
            explain_s = time.monotonic() - started
            scrapes = [metrics_page(p) for p in (port, server.server.http_port)]
            waited = [s.done() for s in searches]

            os.kill(milvus.process.pid, signal.SIGCONT)
            outcomes = []
            for search in searches:
                try:
                    outcomes.append(len(search.result()))
                except Unavailable as err:  # its deadline passed while the Milvus was stopped
                    outcomes.append(str(err))

        assert not any(waited), "searches answered while their Milvus was stopped"
        assert explained.attentions.size and explain_s < STALL_S / 2, explain_s
        for page, scrape_s in scrapes:
            assert scrape_s < STALL_S / 2, scrape_s
            assert re.search(r"^embedsense_index_up 0\.0$", page, re.M), page
            assert "embedsense_engine_queue_depth" in page  # the engine's metrics are there
            assert "embedsense_collection_documents{" not in page  # sizes unknown: left out
            # The search counters are the server's own, there while Milvus is away: a search
            # waits in each index thread (the rest wait for a thread).
            asked = re.search(r'^embedsense_milvus_searches_total\{collection="stall"\} (\S+)$',
                              page, re.M)  # fmt: skip
            assert asked and float(asked[1]) == INDEX_THREADS, page
        assert all(o == 3 or "Milvus" in o for o in outcomes), outcomes

        # The Milvus answers again: so do searches, and the next scrape reads its sizes.
        assert len(c.search("stall", "水果", k=3)) == 3
        deadline = time.monotonic() + STALL_S * 2
        while not re.search(r"^embedsense_index_up 1\.0$", page, re.M):
            assert time.monotonic() < deadline, page
            time.sleep(0.5)
            page, _ = metrics_page(port)
        assert re.search(STALL_SIZE, page, re.M), page


class _SlowCatalog:
    """An index whose every reading of its names waits for a turn the test gives
    (`answer`); it counts the readings started."""

    kind = "faiss"

    def __init__(self) -> None:
        self.turns = threading.Semaphore(0)
        self.started = 0

    def names(self) -> list[str]:
        self.started += 1
        assert self.turns.acquire(timeout=60)
        return ["c"]

    def answer(self) -> None:
        """Let the reading under way end, and wait until its thread has handed its result
        over and ended (one reading at a time: no other such thread is left)."""
        self.turns.release()
        deadline = time.monotonic() + 30
        while any(t.name == "embedsense-index-metrics" for t in threading.enumerate()):
            assert time.monotonic() < deadline
            time.sleep(0.01)

    def get(self, name: str) -> _SlowCatalog:
        return self

    def count(self) -> int:
        return 5

    def index_vectors(self) -> int:
        return 6


def scraper(catalog: object) -> Callable[[], str]:
    """A scrape of a registry with the index's metrics over `catalog`, at will."""
    from prometheus_client import CollectorRegistry, generate_latest

    from embedsense.server.api.index_metrics import IndexMetrics

    registry = CollectorRegistry()
    registry.register(IndexMetrics(catalog))
    return lambda: generate_latest(registry).decode()


@pytest.fixture
def scrape(monkeypatch):
    """The index's metrics over a _SlowCatalog, scraped at will (each scrape waiting 0.2 s
    for the index)."""
    from embedsense.server.api import index_metrics

    monkeypatch.setattr(index_metrics, "READ_WAIT_S", 0.2)
    catalog = _SlowCatalog()
    yield catalog, scraper(catalog)
    for _ in range(8):  # no reading left waiting
        catalog.turns.release()


def test_scrapes_of_a_stalled_index_share_one_reading_and_leave_its_metrics_out(scrape):
    """While the index does not answer, each scrape waits READ_WAIT_S and then leaves the
    index's metrics out; the next waits for the same reading instead of starting another
    (one thread held, not one per scrape)."""
    catalog, page_now = scrape
    for _ in range(3):
        page = page_now()
        assert "embedsense_index_up 0.0" in page and "collection_documents{" not in page
    assert catalog.started == 1


def test_an_index_slower_than_a_scrape_waits_is_reported_every_scrape(scrape):
    """A reading that ends after its scrape gave up is the next scrape's, which starts the
    one after: an index that answers, slower than READ_WAIT_S, is up in every scrape but
    the first (it was up in none: each scrape started a new reading and gave up on it)."""
    catalog, page_now = scrape
    assert "embedsense_index_up 0.0" in page_now()
    for readings in range(2, 5):
        catalog.answer()
        page = page_now()
        assert "embedsense_index_up 1.0" in page, page
        assert 'embedsense_collection_documents{collection="c"} 5.0' in page
        assert 'embedsense_collection_index_vectors{collection="c"} 6.0' in page
        assert catalog.started == readings  # the next scrape's reading, under way


class _AwayCatalog(_SlowCatalog):
    """An index that fails each reading at once while `away`, and answers at once after."""

    away = True

    def names(self) -> list[str]:
        if self.away:
            raise ConnectionError("milvus is away")
        return ["c"]


def test_an_index_back_from_a_failure_is_up_in_the_next_scrape():
    """A reading that failed is served once, like one that answered: the scrape after the
    index is back reads it afresh (it was served the failure again, one scrape behind)."""
    catalog = _AwayCatalog()
    page_now = scraper(catalog)
    assert "embedsense_index_up 0.0" in page_now()
    catalog.away = False
    page = page_now()
    assert "embedsense_index_up 1.0" in page, page
    assert 'embedsense_collection_documents{collection="c"} 5.0' in page


class _StallThenFailCatalog(_SlowCatalog):
    """An index whose first reading waits for a turn and then fails (a Milvus stalled until
    its deadline); the readings after it answer at once."""

    def names(self) -> list[str]:
        if self.started == 0:
            super().names()
            raise TimeoutError("milvus did not answer")
        self.started += 1
        return ["c"]


def test_a_reading_that_failed_after_its_scrape_gave_up_is_not_served_late(monkeypatch):
    """The index is back when the next scrape comes: that scrape reads it afresh, rather
    than serve the stale failure (up 0 once more, when the index had been up for a while)."""
    from embedsense.server.api import index_metrics

    monkeypatch.setattr(index_metrics, "READ_WAIT_S", 0.2)
    catalog = _StallThenFailCatalog()
    page_now = scraper(catalog)
    assert "embedsense_index_up 0.0" in page_now()  # gave up waiting
    catalog.answer()  # the stalled reading fails
    page = page_now()
    assert "embedsense_index_up 1.0" in page, page
    assert catalog.started == 2


class _MilvusCatalog(_AwayCatalog):
    """A milvus index whose process has counted searches in "c" and in "gone", a collection
    another replica dropped (this process still holds it open)."""

    kind = "milvus"

    def search_stats(self) -> dict[str, SearchStats]:
        return {name: SearchStats(searches=3, calls=2) for name in ("c", "gone")}


def test_search_counters_are_served_while_the_index_is_away_and_end_with_their_collection():
    catalog = _MilvusCatalog()
    page_now = scraper(catalog)
    page = page_now()  # away: counted in this process all the same
    assert "embedsense_index_up 0.0" in page
    assert 'embedsense_milvus_searches_total{collection="c"} 3.0' in page, page
    catalog.away = False
    page = page_now()
    assert 'embedsense_milvus_search_calls_total{collection="c"} 2.0' in page, page
    assert 'collection="gone"' not in page, page  # not among the index's collections


def test_closing_waits_for_the_index_calls_under_way_up_to_its_grace(caplog):
    """At a stop, the index closes after the calls under way end, but waits at most the
    grace for a call stuck on its index (it waited for every one, however long)."""
    threads = IndexThreads(2)
    stuck = threading.Event()
    ended = []

    async def stop_while_calls_run() -> float:
        calls = [
            asyncio.ensure_future(threads.run(lambda: time.sleep(0.3) or ended.append(1))),
            asyncio.ensure_future(threads.run(stuck.wait, 60)),
        ]
        await asyncio.sleep(0.1)  # both under way
        started = time.monotonic()
        await asyncio.to_thread(threads.close, 1.0)
        for call in calls:
            call.cancel()
        return time.monotonic() - started

    try:
        waited = asyncio.run(stop_while_calls_run())
    finally:
        stuck.set()
    assert ended == [1]  # the quick one ended before close returned
    assert 1.0 <= waited < 10, waited
    assert "1 index call still under way after 1 s" in caplog.text


@pytest.fixture
def quick_stall(e5, tmp_path):
    """A server over its own milvus-lite server, with a Milvus deadline of 10 s."""
    with over_own_milvus(ServerThread, e5, tmp_path, milvus_timeout_s=10.0) as running:
        yield running


def test_a_search_on_a_stalled_index_says_why_and_a_stop_keeps_to_its_grace(quick_stall):
    """The server's UNAVAILABLE ("Milvus did not answer") reaches the caller: gRPC's own
    retries sent the call straight back to the stalled Milvus and the SDK's retry ran out of
    the caller's time, so the caller saw only DEADLINE_EXCEEDED. And a stop whose calls wait
    on a stalled Milvus takes one grace, not one for the calls and another for the index."""
    server, milvus = quick_stall
    with Client(server.target, timeout=60) as c:
        c.create_collection("why")
        c.upsert("why", TEXTS, show_progress_bar=False)
        os.kill(milvus.process.pid, signal.SIGSTOP)
        with Client(server.target, timeout=12) as hurried:  # time for one Milvus deadline
            with pytest.raises(Unavailable, match="Milvus|milvus") as failed:
                hurried.search("why", "水果", k=3)
        assert "did not answer" in str(failed.value), failed.value

        grace = 3.0  # less than the Milvus deadline: the search outlasts it
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(c.search, "why", "水果", k=3)
            time.sleep(1)  # the search waits on the Milvus
            started = time.monotonic()
            server.run(server.server.stop(grace))
            stop_s = time.monotonic() - started
            waiting.exception(timeout=60)  # cut off by the stop
    assert stop_s < grace * 1.6, stop_s  # it was the grace twice over


def test_a_milvus_away_costs_each_caller_one_deadline_says_so_and_is_found_again(
    e5, tmp_path, capsys
):
    """A Milvus gone (its port refuses), then one that takes connections and never answers
    (one starting, say), then back. pymilvus answered a call's UNAVAILABLE by building its
    channel anew and waiting up to the deadline for it, under one lock for all calls:
    callers at once waited in turn, 3, 6, 9, 12 s at a deadline of 3 (13-40 s at 10 in an
    operator's trial). The error says the server answered, which the CLI tells from no server
    at all (it asked "is a server running at ...?"), in words, not the index's internal
    names. And the Milvus back is found by the next calls, on the same connection."""
    from embedsense.client.cli import main

    deadline_s = 3.0
    with over_own_milvus(ServerThread, e5, tmp_path, milvus_timeout_s=deadline_s) as (
        server,
        milvus,
    ):
        with Client(server.target, timeout=120, retry=Retry(attempts=1)) as c:
            c.create_collection("away")
            c.upsert("away", TEXTS, show_progress_bar=False)

            def search() -> tuple[float, BaseException | None]:
                started = time.monotonic()
                try:
                    c.search("away", "水果", k=3)
                except Unavailable as err:
                    return time.monotonic() - started, err
                return time.monotonic() - started, None

            def searches_at_once() -> list[tuple[float, BaseException | None]]:
                with ThreadPoolExecutor(4) as pool:
                    return list(pool.map(lambda _: search(), range(4)))

            milvus.stop()
            refused = searches_at_once()
            capsys.readouterr()
            status = main(["--target", server.target, "--timeout", "60", "search", "away", "果"])
            line = capsys.readouterr().err.strip()

            with socket.socket() as silent:  # takes connections (the backlog), answers none
                silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                silent.bind(("127.0.0.1", milvus.port))
                silent.listen(64)
                unanswered = searches_at_once()

            back = MilvusLiteServer(milvus.data_dir, milvus.port)
            try:
                found = search()
                for _ in range(60):  # until the channel has reconnected (about a second)
                    if found[1] is None:
                        break
                    time.sleep(0.25)
                    found = search()
            finally:
                back.stop()

    for took, err in refused + unanswered:
        assert isinstance(err, Unavailable) and err.server_answered, (took, err)
        assert took < deadline_s + 2, (refused, unanswered)
    assert status == 1 and "milvus" in line.lower(), line
    assert "is a server running" not in line and "collection:" not in line, line
    assert found[1] is None, found


def test_a_json_log_stays_json_lines_while_milvus_fails(tmp_path):
    """pymilvus logged each failed call with its trace through a handler of its own: a
    server at --log-format json wrote plain-text tracebacks between its JSON lines (hundreds
    a minute while the Milvus was down)."""
    milvus = MilvusLiteServer(tmp_path / "milvus")
    port = free_port()
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "embedsense.server", "--host", "127.0.0.1", "--port",
             str(port), "--data-dir", str(tmp_path / "data"), "--index-backend", "milvus",
             "--milvus-uri", milvus.uri, "--milvus-timeout", "2", "--log-format", "json"],
            stdout=log_file, stderr=subprocess.STDOUT,
            env={**os.environ, "EMBEDSENSE_API_KEY": ""},
        )  # fmt: skip
    try:
        wait_until_serving(f"127.0.0.1:{port}", process, 180)
        with Client(f"127.0.0.1:{port}", timeout=60, retry=Retry(attempts=1)) as c:
            c.create_collection("logs")
            c.upsert("logs", TEXTS, show_progress_bar=False)
            os.kill(milvus.process.pid, signal.SIGSTOP)
            for _ in range(2):
                with pytest.raises(Unavailable, match="did not answer"):
                    c.search("logs", "水果", k=3)
    finally:
        os.kill(milvus.process.pid, signal.SIGCONT)
        process.terminate()
        process.wait(60)
        milvus.stop()

    def is_json(line: str) -> bool:
        try:
            return isinstance(json.loads(line), dict)
        except ValueError:
            return False

    lines = log_path.read_text().splitlines()
    assert any(is_json(line) and "Search" in line for line in lines)  # its access log
    strays = [line for line in lines if not is_json(line)]
    assert not [line for line in strays if "Traceback" in line or "_log_rpc_error" in line], strays[
        :20
    ]
