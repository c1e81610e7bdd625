"""Stateless encoder replicas over one shared index (a milvus-lite server, then a real Milvus
standalone) and three encoder servers on 127.0.0.1 (one in this process, two in their own,
so one can be SIGKILLed), and clients that know all of them. Bounded: ~1,300 documents, a few
hundred calls."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import ServerThread
from ops.serverproc import MilvusLiteServer, ServerProcess, free_port

from embedsense.client import Client, Retry

FRUIT = ["我喜欢吃苹果", "这个苹果又红又甜", "果园里的苹果熟了", "她削了一个苹果给孩子"]
PHONE = ["苹果发布了新款手机", "我的苹果电脑坏了", "苹果公司的股价上涨", "他在苹果做软件工程师"]


def requests_served(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read()
    counts = re.findall(r"^embedsense_requests_total\{[^}]*\} ([0-9.e+]+)$", text.decode(), re.M)
    return sum(float(c) for c in counts)


@pytest.fixture(scope="module", params=["milvus-lite-server", "milvus"])
def cluster(request, e5, tmp_path_factory):
    """The replicas over a milvus-lite server, then over a real Milvus standalone."""
    if request.param == "milvus":
        milvus, uri = None, request.getfixturevalue("milvus_standalone")
    else:
        milvus = MilvusLiteServer(tmp_path_factory.mktemp("milvus"))
        uri = milvus.uri
    shared = ("--index-backend", "milvus", "--milvus-uri", uri)
    ports = [free_port(), free_port()]
    processes = [
        ServerProcess(tmp_path_factory.mktemp(f"replica{i}"), None, *shared, "--replica",
                      f"replica-{i}", "--metrics-port", str(port))
        for i, port in enumerate(ports, 1)
    ]  # fmt: skip
    local = None
    try:
        for process in processes:
            process.start()
        local = ServerThread(
            e5, tmp_path_factory.mktemp("replica0"), index_backend="milvus",
            milvus_uri=uri, replica="replica-0", metrics_port=0,
        )  # fmt: skip
        yield {
            "targets": [local.target] + [p.target for p in processes],
            "metrics": [local.server.metrics_port, *ports],
            "processes": processes,
        }
    finally:
        if local is not None:
            local.stop()
        for process in processes:
            process.stop()
        if milvus is not None:
            milvus.stop()


def test_replicas_share_collections_inventories_and_answers(cluster):
    targets = cluster["targets"]
    with Client(targets, timeout=120) as c:
        replicas = {c.info().replica for _ in range(30)}
        assert replicas == {"replica-0", "replica-1", "replica-2"}  # round-robin
        assert c.info().index_backend == "milvus"
        c.create_collection("shared", store_tokens=True)
        docs = [{"id": f"d{i}", "text": f"{(FRUIT + PHONE)[i % 8]}，第{i}条",
                 "metadata": {"sense": "fruit" if i % 8 < 4 else "company"}}
                for i in range(1000)]  # fmt: skip
        for start in range(0, 1000, 100):  # ten calls: every replica takes some
            c.upsert("shared", docs[start : start + 100], batch_size=50, show_progress_bar=False)
        c.create_inventory("apples", {"苹果": {"fruit": FRUIT, "company": PHONE}})
    assert all(requests_served(port) > 0 for port in cluster["metrics"])

    answers = []
    for target in targets:  # each replica alone sees the same collection
        with Client(target, timeout=120) as one:
            assert one.count("shared") == 1000
            answers.append([h.id for h in one.search("shared", "香甜的水果", k=10)])
            verdict = one.disambiguate("超市里的苹果很新鲜", "苹果", inventory="apples")
            assert verdict.label == "fruit"
            found = one.search_occurrences("shared", "我买了最新的苹果手机", "苹果", k=5)
            assert [o.metadata["sense"] for o in found] == ["company"] * 5
    assert answers[0] == answers[1] == answers[2] and len(answers[0]) == 10


def test_a_replicas_metrics_count_its_milvus_searches_and_the_calls_made_for_them(cluster):
    """Concurrent searches through one replica: its metrics count each search once, the
    Milvus calls made for them (fewer where searches were merged) and their waits."""
    target, port = cluster["targets"][0], cluster["metrics"][0]
    with Client(target, timeout=120) as c:
        c.create_collection("counted")
        try:
            c.upsert("counted", [{"id": f"d{i}", "text": t} for i, t in enumerate(FRUIT + PHONE)],
                     show_progress_bar=False)  # fmt: skip
            with ThreadPoolExecutor(12) as pool:
                hits = list(pool.map(lambda i: c.search("counted", FRUIT[i % 4], k=3), range(24)))
            assert all(len(h) == 3 for h in hits)
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        finally:
            c.drop_collection("counted")

    def counted(metric: str) -> float:
        found = re.search(rf'^{metric}{{collection="counted"}} (\S+)$', text.decode(), re.M)
        assert found, f"{metric} for the collection is not in the metrics"
        return float(found.group(1))

    searches = counted("embedsense_milvus_searches_total")
    calls = counted("embedsense_milvus_search_calls_total")
    assert searches == 24 and 1 <= calls <= 24
    assert counted("embedsense_milvus_search_wait_seconds_total") >= 0


def test_a_killed_replica_loses_nothing_acknowledged_and_calls_go_on(cluster):
    targets = cluster["targets"]
    victim = cluster["processes"][0]
    acknowledged: list[str] = []
    errors: list[BaseException] = []
    with Client(targets, timeout=60, retry=Retry(attempts=6, initial_backoff=0.1)) as c:
        c.create_collection("churn")

        def writer() -> None:
            try:
                for batch in range(30):
                    docs = [{"id": f"k{batch}-{i}", "text": f"{PHONE[i % 4]} {batch}-{i}"}
                            for i in range(10)]  # fmt: skip
                    acknowledged.extend(c.upsert("churn", docs, show_progress_bar=False))
                    c.search("churn", "苹果手机", k=3)
            except BaseException as err:  # noqa: BLE001
                errors.append(err)

        thread = threading.Thread(target=writer)
        thread.start()
        while len(acknowledged) < 60 and thread.is_alive():
            time.sleep(0.05)
        victim.kill()  # SIGKILL mid-stream: calls in flight to it fail over
        thread.join(300)
        assert not errors, errors
        assert len(acknowledged) == 300
        assert c.count("churn") == 300
        assert None not in c.get("churn", acknowledged)
        assert {c.info().replica for _ in range(6)} == {"replica-0", "replica-2"}
