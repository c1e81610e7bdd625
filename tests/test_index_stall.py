"""A stalled index holds up only the calls that need it. A Milvus that stops answering (here a
milvus-lite server stopped with SIGSTOP) keeps each call to it waiting until the Milvus
deadline. While a dozen searches wait on it, the calls that need no index answer at once:
Explain, and /metrics (the engine's metrics at once, the collections' sizes left out and
`embedsense_index_up` 0). Once the Milvus answers again, so does the index. Bounded: one
collection of 8 documents, ~20 calls, a deadline of STALL_S."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ServerThread
from ops.serverproc import MilvusLiteServer

from embedsense.client import Client, Unavailable

STALL_S = 20.0  # the server's deadline per Milvus call: how long a stalled call waits
WAITING = 12  # searches left waiting on the stalled Milvus: more than any pool's threads
STALL_SIZE = r'^embedsense_collection_documents\{collection="stall"\} 8\.0$'
TEXTS = ["我喜欢吃苹果", "这个苹果又红又甜", "苹果发布了新款手机", "我的苹果电脑坏了"]


@pytest.fixture
def stallable(e5, tmp_path):
    """A server over a milvus-lite server of its own (the test stops that one)."""
    milvus = MilvusLiteServer(tmp_path / "milvus")
    server = None
    try:
        server = ServerThread(
            e5, tmp_path / "data", index_backend="milvus", milvus_uri=milvus.uri,
            milvus_timeout_s=STALL_S, metrics_port=0,
        )  # fmt: skip
        yield server, milvus
    finally:
        os.kill(milvus.process.pid, signal.SIGCONT)  # whatever the test left it in
        if server is not None:
            server.stop()
        milvus.stop()


def metrics_page(port: int) -> tuple[str, float]:
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
            page, scrape_s = metrics_page(port)
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
        assert scrape_s < STALL_S / 2, scrape_s
        assert re.search(r"^embedsense_index_up 0\.0$", page, re.M), page
        assert "embedsense_engine_queue_depth" in page  # the engine's metrics are there
        assert "embedsense_collection_documents{" not in page  # sizes unknown: left out
        assert all(o == 3 or "Milvus" in o for o in outcomes), outcomes

        # The Milvus answers again: so do searches, and the next scrape reads its sizes.
        assert len(c.search("stall", "水果", k=3)) == 3
        deadline = time.monotonic() + STALL_S * 2
        while not re.search(r"^embedsense_index_up 1\.0$", page, re.M):
            assert time.monotonic() < deadline, page
            time.sleep(0.5)
            page, _ = metrics_page(port)
        assert re.search(STALL_SIZE, page, re.M), page


class _StalledCatalog:
    """An index whose every call waits until `answering` is set; it counts its readings."""

    kind = "faiss"

    def __init__(self) -> None:
        self.answering = threading.Event()
        self.readings = 0

    def names(self) -> list[str]:
        self.readings += 1
        self.answering.wait(60)
        return ["c"]

    def get(self, name: str) -> _StalledCatalog:
        return self

    def count(self) -> int:
        return 5

    def index_vectors(self) -> int:
        return 6


def test_scrapes_of_a_stalled_index_share_one_reading_and_leave_its_metrics_out(monkeypatch):
    """Each scrape waits READ_WAIT_S at most; while the index does not answer, the next
    scrape waits for the same reading instead of starting another (one thread held, not one
    per scrape); once it answers, the metrics are back."""
    from prometheus_client import CollectorRegistry, generate_latest

    from embedsense.server.api import index_metrics

    monkeypatch.setattr(index_metrics, "READ_WAIT_S", 0.2)
    catalog = _StalledCatalog()
    collector = index_metrics.IndexMetrics(catalog)
    registry = CollectorRegistry()
    registry.register(collector)
    try:
        for _ in range(3):
            page = generate_latest(registry).decode()
            assert "embedsense_index_up 0.0" in page and "collection_documents{" not in page
        assert catalog.readings == 1
        catalog.answering.set()
        deadline = time.monotonic() + 30
        while "embedsense_index_up 1.0" not in (page := generate_latest(registry).decode()):
            assert time.monotonic() < deadline, page
        assert 'embedsense_collection_documents{collection="c"} 5.0' in page
        assert 'embedsense_collection_index_vectors{collection="c"} 6.0' in page
    finally:
        catalog.answering.set()
        collector.close()
