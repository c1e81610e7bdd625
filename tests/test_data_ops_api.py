"""The vector-database operations on every surface, end to end: count, delete and scroll by
filter, metadata updates, batch search with a score threshold and vectors, caller vectors;
over gRPC (the SDK, sync and async), the CLI, and HTTP REST (/v1/collections), on a real
server on 127.0.0.1 with the real default model."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading

import httpx2
import numpy as np
import pytest
from conftest import ServerThread

from embedsense.client import (
    AlreadyExists,
    AsyncClient,
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from embedsense.client._api import Call
from embedsense.client.cli import main as cli_main
from embedsense.proto.v1 import embedsense_pb2 as pb
from embedsense.server.api.collection_ops import encode_cursor, filter_keys

KEY = "data-ops-key"
DIM = 384
TEXTS = [
    ("a01", "我喜欢吃苹果", {"sense": "fruit", "year": 2019, "tags": ["food", "red"]}),
    ("a02", "香蕉和苹果都是水果", {"sense": "fruit", "year": 2021, "tags": ["food"]}),
    ("a03", "这个苹果又红又甜", {"sense": "fruit", "year": 2023, "tags": ["red"]}),
    ("b01", "我买了最新的苹果手机", {"sense": "company", "year": 2022, "tags": ["tech"]}),
    ("b02", "苹果公司发布了新款电脑", {"sense": "company", "year": 2020, "tags": ["tech"]}),
    ("b03", "这款苹果手机的电池很耐用", {"sense": "company", "year": 2024}),
    ("c01", "今天天气很好", {"sense": "other", "year": 2018, "lang": "zh"}),
]
QUERIES = ["水果很甜", "新款手机", "天气"]


@pytest.fixture(scope="module", params=["faiss", "milvus-lite-file"])
def running(e5, tmp_path_factory, request):
    """A server per backend: the surfaces must not care which one stores the documents."""
    folder = tmp_path_factory.mktemp("data-ops")
    backend = {}
    if request.param != "faiss":
        backend = {"index_backend": "milvus", "milvus_uri": str(folder / "index.db")}
    server = ServerThread(e5, folder, http_port=0, api_key=KEY, **backend)
    yield server
    server.stop()


@pytest.fixture
def client(running):
    with Client(running.target, api_key=KEY, timeout=60) as c:
        yield c


@pytest.fixture
def http(running):
    base = f"http://127.0.0.1:{running.server.http_port}"
    with httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as h:
        yield h


def documents() -> list[dict]:
    return [{"id": i, "text": t, "metadata": m} for i, t, m in TEXTS]


@pytest.fixture
def news(client, request):
    name = request.node.name[:50].replace("[", "-").replace("]", "")
    client.create_collection(name)
    client.upsert(name, documents())
    yield name
    client.drop_collection(name)


# ---------------------------------------------------------------- gRPC, through the SDK


def test_count_and_delete_by_filter(client, news):
    assert client.count(news) == 7
    assert client.count(news, filter={"sense": "fruit"}) == 3
    either = {"$or": [{"sense": "other"}, {"year": {"$gte": 2023}}]}
    assert client.count(news, filter=either) == 3  # a03, b03, c01
    assert client.count(news, filter={"tags": {"$contains": "red"}}) == 2
    assert client.delete(news, filter=either) == 3
    assert client.count(news) == 4 and client.count(news, filter=either) == 0
    assert [d is None for d in client.get(news, ["a03", "b03", "a01"])] == [True, True, False]
    assert client.delete(news, ["a01", "nope"]) == 1  # by ids, as before
    with pytest.raises(InvalidArgument):  # an empty filter would delete everything
        client.delete(news, filter={})
    with pytest.raises(ValueError, match="one of them"):  # the SDK asks for one of the two
        client.delete(news, ["a02"], filter={"sense": "fruit"})
    both = pb.DeleteRequest(collection=news, ids=["a02"], filter_json='{"sense": "fruit"}')
    with pytest.raises(InvalidArgument, match="not both"):  # and so does the server
        client._call(Call("Delete", both, lambda r: r))
    # Neither was OK, 0 deleted, over raw gRPC (HTTP refused it); no ids at all is 0 in the
    # SDK, as HTTP's {"ids": []}, for a collection that exists.
    with pytest.raises(InvalidArgument, match="ids or filter_json"):
        client._call(Call("Delete", pb.DeleteRequest(collection=news), lambda r: r))
    assert client.delete(news, []) == 0 and client.delete(news, iter([])) == 0
    with pytest.raises(NotFound):
        client.delete("no-such-collection", [])
    assert client.count(news) == 3


def test_scroll_gives_each_document_once_in_id_order(client, news):
    ids = [d.id for d in client.scroll(news, batch_size=2)]
    assert ids == sorted(i for i, _, _ in TEXTS)
    fruit = list(client.scroll(news, filter={"sense": "fruit"}, batch_size=1, with_vectors=True))
    assert [d.id for d in fruit] == ["a01", "a02", "a03"]
    stored = client.get(news, ["a01"], with_vectors=True)[0]
    assert fruit[0].metadata == TEXTS[0][2] and np.array_equal(fruit[0].vector, stored.vector)
    assert all(d.vector is None for d in client.scroll(news, batch_size=3))


def test_a_scroll_cursor_is_opaque_and_tied_to_its_collection_and_filter(client, news):
    def page(
        cursor: str, where: str = "", limit: int = 2, collection: str = news
    ) -> pb.ScrollResponse:
        request = pb.ScrollRequest(
            collection=collection, cursor=cursor, filter_json=where, limit=limit
        )
        return client._call(Call("Scroll", request, lambda r: r))

    first = page("")
    assert [d.id for d in first.documents] == ["a01", "a02"] and first.next_cursor
    assert [d.id for d in page(first.next_cursor).documents] == ["a03", "b01"]
    with pytest.raises(InvalidArgument, match="another filter"):
        page(first.next_cursor, '{"sense": "fruit"}')
    # The same filter written another way goes on: key order, {"x": v} for {"x": {"$eq": v}},
    # 2020 for 2020.0, the order of $and's parts (a client that writes its JSON anew was
    # told "another filter").
    fruit_filter = '{"sense": "fruit", "year": {"$gte": 2020}}'
    fruit = page("", fruit_filter, limit=1)
    assert [d.id for d in fruit.documents] == ["a02"]
    for same in ('{"year": {"$gte": 2020.0}, "sense": {"$eq": "fruit"}}',
                 '{"$and": [{"year": {"$gte": 2020}}, {"sense": "fruit"}]}'):  # fmt: skip
        assert [d.id for d in page(fruit.next_cursor, same).documents] == ["a03"]
    with pytest.raises(InvalidArgument, match="another filter"):
        page(fruit.next_cursor, '{"sense": "fruit", "year": {"$gt": 2020}}')
    # A filter in the normal form (none, or keys sorted, equalities bare) is fingerprinted
    # as servers of the version before did (its JSON, keys sorted), so that they take the
    # cursors of this one in a rolling upgrade.
    for where, cursor in ((None, first.next_cursor), (json.loads(fruit_filter), fruit.next_cursor)):
        made = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        as_before = json.dumps(
            where or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        assert made[2] == hashlib.sha256(as_before.encode()).hexdigest()[:16], where
    # It went on from "a02" in any other collection, as if the scroll had begun there.
    other = f"{news}-other"
    client.create_collection(other)
    try:
        client.upsert(other, documents())
        with pytest.raises(InvalidArgument, match=re.escape(f"collection {news!r}, not {other!r}")):
            page(first.next_cursor, collection=other)
    finally:
        client.drop_collection(other)
    # A cursor of the form before (version 1, no collection, the filter's JSON fingerprinted)
    # goes on where it left off: a scroll survives a rolling upgrade of the replicas.
    before = json.dumps([1, hashlib.sha256(b"{}").hexdigest()[:16], "a02"]).encode()
    assert [d.id for d in page(base64.urlsafe_b64encode(before).decode()).documents] == [
        "a03",
        "b01",
    ]
    with pytest.raises(InvalidArgument, match="cursor"):
        page("not-a-cursor")
    # JSON nested too deep for the parser was INTERNAL (a RecursionError)
    with pytest.raises(InvalidArgument, match="cursor"):
        page(base64.urlsafe_b64encode(b"[" * 100_000).decode())
    with pytest.raises(InvalidArgument, match="10000"):
        page("", limit=10_001)
    last = page("", limit=10)
    assert len(last.documents) == 7 and last.next_cursor == ""


def test_scroll_while_others_write_misses_nothing_and_repeats_nothing(client, news):
    """Documents that exist throughout come exactly once while other ids are upserted and
    deleted between the pages."""
    vectors = np.random.default_rng(0).standard_normal((60, DIM)).astype(np.float32)
    churn = [{"id": f"x{i:02d}", "text": "", "metadata": {"churn": True}} for i in range(60)]
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            client.upsert(news, churn[i % 60 : i % 60 + 3], vectors=vectors[i % 60 : i % 60 + 3])
            client.delete(news, [churn[(i + 30) % 60]["id"]])
            i = (i + 3) % 57

    writer = threading.Thread(target=write)
    writer.start()
    try:
        seen = [d.id for d in client.scroll(news, batch_size=2)]
    finally:
        stop.set()
        writer.join(30)
    assert len(seen) == len(set(seen)), "a document came twice"
    assert {i for i, _, _ in TEXTS} <= set(seen)
    assert seen == sorted(seen)


def test_update_metadata_merges_or_replaces_and_keeps_the_vector(client, news):
    before = client.get(news, ["a01", "b01"], with_vectors=True)
    assert client.update_metadata(news, ["a01", "b01", "zz"], {"year": 1999, "new": 1}) == 2
    a01, b01 = client.get(news, ["a01", "b01"], with_vectors=True)
    assert a01.metadata == {**TEXTS[0][2], "year": 1999, "new": 1}
    assert np.array_equal(a01.vector, before[0].vector) and a01.text == before[0].text
    assert client.count(news, filter={"year": 1999}) == 2  # filters see it at once
    assert client.update_metadata(news, ["b01"], {"only": "this"}, mode="replace") == 1
    assert client.get(news, ["b01"])[0].metadata == {"only": "this"}
    with pytest.raises(ValueError, match="merge"):
        client.update_metadata(news, ["b01"], {}, mode="upsert")
    bad_mode = pb.UpdateMetadataRequest(collection=news, ids=["b01"], patch_json="{}", mode=7)
    with pytest.raises(InvalidArgument, match="mode"):
        client._call(Call("UpdateMetadata", bad_mode, lambda r: r))
    with pytest.raises(InvalidArgument, match="patch_json: must be a JSON object, got an array"):
        bad = pb.UpdateMetadataRequest(collection=news, ids=["b01"], patch_json="[1]")
        client._call(Call("UpdateMetadata", bad, lambda r: r))
    # An empty id was "takes a list of document ids (strings)", which the caller had sent.
    empty = pb.UpdateMetadataRequest(collection=news, ids=["b01", ""], patch_json="{}")
    with pytest.raises(InvalidArgument, match=r"ids\[1\]: a document id is a string of 1-256"):
        client._call(Call("UpdateMetadata", empty, lambda r: r))
    assert b01.vector is not None and np.array_equal(
        client.get(news, ["b01"], with_vectors=True)[0].vector, b01.vector
    )


def test_batch_search_answers_as_one_search_per_query(client, news):
    batch = client.search(news, QUERIES, k=3, filter={"year": {"$gte": 2019}})
    assert len(batch) == 3
    for query, hits in zip(QUERIES, batch, strict=True):
        one = client.search(news, query, k=3, filter={"year": {"$gte": 2019}})
        assert [h.id for h in hits] == [h.id for h in one]
        assert [h.score for h in hits] == pytest.approx([h.score for h in one], abs=1e-5)
    vectors = np.stack([d.vector for d in client.get(news, ["a02", "b02"], with_vectors=True)])
    by_vector = client.search(news, vectors, k=1, with_vectors=True)
    assert [hits[0].id for hits in by_vector] == ["a02", "b02"]
    assert np.allclose(by_vector[0][0].vector, vectors[0])


def test_score_threshold_keeps_only_hits_that_near(client, news):
    everything = client.search(news, QUERIES[1], k=7)
    cut = (everything[2].score + everything[3].score) / 2
    kept = client.search(news, QUERIES[1], k=7, score_threshold=cut)
    assert [h.id for h in kept] == [h.id for h in everything[:3]]
    assert client.search(news, QUERIES[1], k=7, score_threshold=1.5) == []
    assert all(h.vector is None for h in kept)  # vectors only when asked


def test_a_score_threshold_cuts_alike_over_grpc_and_http(client, http, news):
    """gRPC carries the threshold as a float32, HTTP as a double: a threshold just above a
    hit's score (in doubles) kept the hit over gRPC and dropped it over HTTP. Scores are
    float32, and every surface compares with the threshold rounded to one; a threshold past
    float32's range is refused on every surface (over HTTP, 1e39 was taken)."""
    top = client.search(news, QUERIES[1], k=1)[0]
    over_http = http.post(f"/v1/collections/{news}/search", json={"query": QUERIES[1], "k": 1})
    assert over_http.json()["results"][0][0]["score"] == top.score
    just_above = float(np.nextafter(top.score, 2.0))  # a double between two float32s
    by_grpc = client.search(news, QUERIES[1], k=3, score_threshold=just_above)
    body = {"query": QUERIES[1], "k": 3, "score_threshold": just_above}
    by_http = http.post(f"/v1/collections/{news}/search", json=body).json()["results"][0]
    assert [h.id for h in by_grpc] == [h["id"] for h in by_http] == [top.id]
    with pytest.raises(ValueError, match="score_threshold: 1e.39 is past float32's range"):
        client.search(news, QUERIES[1], score_threshold=1e39)
    assert client.search(news, QUERIES[1], score_threshold=3.4028235e38) == []  # float32's max
    body = {"query": QUERIES[1], "score_threshold": 1e39}
    refused = http.post(f"/v1/collections/{news}/search", json=body)
    assert refused.status_code == 400 and "score_threshold" in refused.text, refused.text


def test_upsert_of_caller_vectors_is_dimension_checked(client, news):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((2, DIM)).astype(np.float32)
    ids = client.upsert(
        news, [{"id": "v1", "text": ""}, {"id": "v2", "text": "外部向量"}], vectors=vectors
    )
    assert ids == ["v1", "v2"] and client.count(news) == 9
    hit = client.search(news, vectors[1], k=1)[0]
    assert hit.id == "v2" and hit.text == "外部向量" and hit.score == pytest.approx(1, abs=1e-5)
    as_dict = client.upsert(news, [{"id": "v3", "vector": vectors[0] * 2, "metadata": {"n": 3}}])
    assert as_dict == ["v3"] and client.get(news, ["v3"])[0].metadata == {"n": 3}
    with pytest.raises(InvalidArgument, match=r"17.*384|384.*17"):
        client.upsert(news, [{"id": "short", "text": "x"}], vectors=np.ones((1, 17)))
    with pytest.raises(ValueError, match="needs an 'id'"):
        client.upsert(news, [""], vectors=vectors[:1])
    assert client.count(news) == 10

    # Shapes no tensor can have: numpy's own message ("cannot reshape array of size 0 into
    # shape ..."), the product of the shape having wrapped past 2**63 to 0 (or below it).
    big = [2**31] * 3
    for shape, data, why in ((big, b"", str(4 * 2**93)), ([], b"\0" * 4, "dimension")):
        request = pb.SearchRequest(collection=news, vector=pb.Tensor(shape=shape, data=data))
        with pytest.raises(InvalidArgument, match=f"vector: .*{re.escape(why)}") as err:
            client._call(Call("Search", request, lambda r: r))
        assert "-" not in str(err.value).split("needs")[-1] and "reshape" not in str(err.value)


def test_a_documents_vector_of_none_is_no_vector_and_one_of_another_kind_is_named(client, news):
    """{"vector": None} was sent as a NaN vector of 1 dimension (refused as "a 1-dim vector"
    or "NaN"), a scalar was stored as the vector [x], and a str was numpy's bare "could not
    convert string to float"."""
    [made] = client.upsert(news, [{"id": "vn", "text": "文本", "vector": None}])
    assert made == "vn" and client.get(news, ["vn"])[0].text == "文本"
    assert client.search(news, "文本", k=1)[0].id == "vn"  # embedded from its text
    for wrong in (np.float32(3.0), 3.0, "abc", [[0.1] * DIM], ["0.1"] * DIM, [0.1, None]):
        with pytest.raises((TypeError, ValueError), match=r"'vector'") as err:
            client.upsert(news, [{"id": "odd", "text": "x", "vector": wrong}])
        assert "could not convert" not in str(err.value), err.value
    with pytest.raises(ValueError, match=r"expected id, text, metadata, vector"):
        client.upsert(news, [{"id": "u", "text": "1", "meta": {}}])
    assert client.get(news, ["odd"]) == [None]


def test_a_text_beside_a_vector_is_stored_as_it_is_even_blank(client, news):
    """A text given with a vector is stored, not embedded: "" was taken and "   " or "\u3000"
    refused as "empty (or only whitespace); a text is needed"."""
    vector = np.random.default_rng(2).standard_normal(DIM).astype(np.float32)
    for doc_id, text in (("ws", "   "), ("ideographic", "\u3000")):
        assert client.upsert(news, [{"id": doc_id, "text": text, "vector": vector}]) == [doc_id]
        assert client.get(news, [doc_id])[0].text == text
    with pytest.raises(ValueError, match=r"documents\[0\]: text: empty"):
        client.upsert(news, [{"id": "embed-me", "text": "   "}])  # to embed: a text is needed


def test_search_takes_a_vector_as_a_plain_list_of_numbers(client, news):
    """A list of floats (as JSON, Qdrant's and Chroma's clients give them) was read as a
    list of query texts: TypeError "query[0] is a float; queries are str"."""
    vectors = np.random.default_rng(3).standard_normal((2, DIM)).astype(np.float32)
    one = client.search(news, vectors[0].tolist(), k=3)
    assert [(h.id, h.score) for h in one] == [
        (h.id, h.score) for h in client.search(news, vectors[0], k=3)
    ]
    several = client.search(news, vectors.tolist(), k=3)
    assert [[h.id for h in hits] for hits in several] == [
        [h.id for h in hits] for hits in client.search(news, vectors, k=3)
    ]
    with pytest.raises(ValueError, match=r"query: .*same length"):
        client.search(news, [vectors[0].tolist(), vectors[1].tolist()[:5]], k=3)
    with pytest.raises(TypeError, match=r"query\[1\] is a float"):
        client.search(news, ["苹果", 0.5], k=3)  # a mix stays an error


def test_a_collection_of_vectors_embedded_elsewhere(client, http):
    """Made with a dim: it takes caller vectors of that size only; texts to embed (of the
    served model) are refused, on gRPC and HTTP alike."""
    info = client.create_collection("elsewhere", dim=8, metric="l2")
    try:
        assert (info.model, info.dim) == ("external", 8)
        rows = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
        ids = client.upsert("elsewhere", [{"id": str(i)} for i in range(3)], vectors=rows)
        assert ids == ["0", "1", "2"]
        hits = client.search("elsewhere", rows, k=1, score_threshold=1e-6)
        assert [[h.id for h in hits_] for hits_ in hits] == [["0"], ["1"], ["2"]]
        with pytest.raises(FailedPrecondition, match="external.*search it by vector"):
            client.search("elsewhere", "一段文本")
        with pytest.raises(FailedPrecondition, match="external"):
            client.upsert("elsewhere", ["一段文本"])
        with pytest.raises(InvalidArgument, match=r"(?s)384.*8|8.*384"):
            client.upsert("elsewhere", [{"id": "x"}], vectors=np.ones((1, DIM)))
        found = http.post("/v1/collections/elsewhere/search", json={"vector": rows[1].tolist()})
        assert found.json()["results"][0][0]["id"] == "1"
        refused = http.post("/v1/collections/elsewhere/search", json={"query": "文本"})
        assert refused.status_code == 400 and "by vector" in refused.json()["error"]["message"]
        assert (
            refused.json()["error"]["code"] == "failed_precondition"
        )  # as on gRPC, not a bad field
    finally:
        client.drop_collection("elsewhere")
    # Token vectors come from texts the server embeds, which such a collection never has:
    # it was made, and kept no token vector ever.
    with pytest.raises(InvalidArgument, match="store_tokens.*dim"):
        client.create_collection("elsewhere-tokens", store_tokens=True, dim=8)
    refused = http.post("/v1/collections", json={"name": "e6", "store_tokens": True, "dim": 8})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "store_tokens"
    assert "elsewhere-tokens" not in [c.name for c in client.list_collections()]


def test_a_create_with_exist_ok_answers_the_collection_made_with_those_settings(
    running, client, http
):
    """A script run twice (the README's) failed on its second run with ALREADY_EXISTS: with
    exist_ok, the collection made with the settings asked for is the answer, untouched; one
    made with other settings is still refused, naming them, on every surface."""
    made = client.create_collection("twice", metric="ip", store_tokens=True, exist_ok=True)
    try:
        client.upsert("twice", [{"id": "a", "text": "苹果很甜"}])
        again = client.create_collection("twice", metric="ip", store_tokens=True, exist_ok=True)
        assert (again.created_at, again.count) == (made.created_at, 1)
        with pytest.raises(AlreadyExists):
            client.create_collection("twice", metric="ip", store_tokens=True)
        with pytest.raises(AlreadyExists, match='metric "ip", store_tokens true, not metric '
                           '"cosine", store_tokens false'):  # fmt: skip
            client.create_collection("twice", exist_ok=True)
        # The caller named no model: the error says that dim= made it "external".
        with pytest.raises(AlreadyExists, match='model "multilingual-e5-small".* not model '
                           '"external".* \\(dim=384 makes a collection of vectors embedded '
                           'elsewhere'):  # fmt: skip
            client.create_collection("twice", metric="ip", dim=DIM, exist_ok=True)

        same = {"name": "twice", "metric": "ip", "store_tokens": True, "exist_ok": True}
        answered = http.post("/v1/collections", json=same)
        assert answered.status_code == 200 and answered.json()["count"] == 1
        other = http.post("/v1/collections", json={**same, "index": "HNSW32"})
        assert other.status_code == 409
        assert 'index "Flat", not index "HNSW32"' in other.json()["error"]["message"]

        async def from_async() -> float:
            async with AsyncClient(running.target, api_key=KEY) as c:
                info = await c.create_collection("twice", metric="ip", store_tokens=True,
                                                 exist_ok=True)  # fmt: skip
                return info.created_at

        assert asyncio.run(from_async()) == made.created_at
        assert client.count("twice") == 1
    finally:
        client.drop_collection("twice")


def test_bad_filters_and_sizes_are_invalid_argument_everywhere(client, news):
    bad = {"$or": "not a list"}
    for call in (
        lambda: client.count(news, filter=bad),
        lambda: list(client.scroll(news, filter=bad)),
        lambda: client.delete(news, filter=bad),
        lambda: client.search(news, QUERIES, filter=bad),
    ):
        with pytest.raises(InvalidArgument):
            call()
    # A filter that is not a dict: search ran unfiltered for [] or "" (count and delete sent
    # them, and the server's refusal named the wire's filter_json).
    calls = (
        lambda where: client.count(news, filter=where),
        lambda where: list(client.scroll(news, filter=where)),
        lambda where: client.delete(news, filter=where),
        lambda where: client.search(news, QUERIES[0], filter=where),
        lambda where: client.search(news, QUERIES, filter=where),
    )
    for not_a_filter in ([], "", "year > 2020", [{"sense": "fruit"}]):
        for call in calls:
            with pytest.raises(TypeError, match=r"^filter: a dict"):
                call(not_a_filter)
    assert client.count(news) == len(TEXTS)
    assert len(client.search(news, QUERIES[0], k=10, filter={})) == len(TEXTS)  # {}: all
    with pytest.raises(InvalidArgument, match="100000"):
        client.search(news, ["x"] * 11, k=10_000)
    # As CreateCollection's and HTTP's: 2**31 was INTERNAL, 2**30 took gigabytes (HNSW).
    for option, value in (("ef_search", 2**31), ("ef_search", 65_537), ("nprobe", 2**31)):
        with pytest.raises(InvalidArgument, match=f"{option} must be an integer in 1-65536"):
            client.search(news, "x", **{option: value})
    with pytest.raises(NotFound):
        client.count("no-such-collection")
    # -1 was "out of the range its field can carry (0 to ...)", then 0 refused; numpy's too.
    for k in (-1, 0, np.int64(-1), np.int64(0)):
        with pytest.raises(ValueError, match=r"^k: .*at least 1; got"):
            client.search(news, "x", k=k)
        with pytest.raises(ValueError, match=r"^k: .*at least 1; got"):
            client.search_occurrences(news, "苹果", "苹果", k=k)
    # A key twice in the JSON a gRPC caller writes (grpcurl): JSON keeps the last, unsaid.
    twice = '{"sense": {"$ne": "fruit", "$ne": "company"}}'
    with pytest.raises(InvalidArgument, match="filter_json: '\\$ne' twice"):
        client._call(Call("Count", pb.CountRequest(collection=news, filter_json=twice), str))
    patch = pb.UpdateMetadataRequest(collection=news, ids=["a01"], patch_json='{"a":1,"a":2}')
    with pytest.raises(InvalidArgument, match="patch_json: 'a' twice"):
        client._call(Call("UpdateMetadata", patch, str))
    both = pb.SearchBatchRequest(collection=news, texts=["x"])
    both.vectors.shape.extend([1, DIM])
    both.vectors.data = np.zeros(DIM, "<f4").tobytes()
    with pytest.raises(InvalidArgument, match="not both"):
        client._call(Call("SearchBatch", both, lambda r: r))
    # Named as sent: it was "vectors: expected (n, dim) query vectors, got shape (1, 0)".
    empty = pb.SearchRequest(collection=news)
    empty.vector.shape.extend([0])
    with pytest.raises(InvalidArgument, match=r"^INVALID_ARGUMENT: vector: .*shape \(0,\)"):
        client._call(Call("Search", empty, lambda r: r))
    short = pb.SearchRequest(collection=news)
    short.vector.shape.extend([2])
    short.vector.data = np.ones(2, "<f4").tobytes()
    with pytest.raises(InvalidArgument, match=f"^INVALID_ARGUMENT: vector: a 2-dim vector.*{DIM}"):
        client._call(Call("Search", short, lambda r: r))
    two = pb.SearchRequest(collection=news)  # it was: row 0's hits, row 1 ignored
    two.vector.shape.extend([2, DIM])
    two.vector.data = np.ones(2 * DIM, "<f4").tobytes()
    with pytest.raises(InvalidArgument, match="SearchBatch"):
        client._call(Call("Search", two, lambda r: r))
    none = pb.SearchBatchRequest(collection=news)
    none.vectors.shape.extend([0, DIM])
    with pytest.raises(InvalidArgument, match="at least one query is needed"):  # not "querie"
        client._call(Call("SearchBatch", none, lambda r: r))

    # A query over the model's length: the error offered long_text, which search lacks.
    long_query = "苹果手机和苹果派。" * 120
    with pytest.raises(InvalidArgument, match=r"texts\[1\]: \d+ tokens; a search query") as err:
        client.search(news, ["水果", long_query])
    assert "long_text" not in str(err.value)


def test_an_over_long_search_query_over_http_names_the_query(http, news):
    response = http.post(f"/v1/collections/{news}/search", json={"query": "苹果派。" * 300})
    error = response.json()["error"]
    assert response.status_code == 400 and error["param"] == "query", response.text
    assert "a search query" in error["message"] and "long_text" not in error["message"]


def test_metadata_no_surface_could_read_back_is_refused_when_written(client, http, news):
    """NaN, infinities, integers past 64 bits and deep nesting are INVALID_ARGUMENT (HTTP
    400) at the write, so that the collection's filtered calls and reads keep working: a NaN
    once stored made every filtered call on it INTERNAL, a 2**70 every HTTP read a 500."""
    deep: object = 1
    for _ in range(40):
        deep = {"a": deep}
    for metadata in ({"score": float("nan")}, {"x": [1, float("inf")]}, {"n": 2**70},
                     {"deep": deep}):  # fmt: skip
        with pytest.raises(ValueError, match="metadata"):  # the SDK's, before anything is sent
            client.upsert(news, [{"id": "bad", "text": "坏", "metadata": metadata}])
        raw = pb.Document(id="bad", text="坏", metadata_json=json.dumps(metadata))
        with pytest.raises(InvalidArgument):  # the server's, for any other client
            client._call(Call("Upsert", pb.UpsertRequest(collection=news, documents=[raw]), str,
                              stream=True))  # fmt: skip
        with pytest.raises(ValueError, match="patch"):  # the SDK's, before anything is sent
            client.update_metadata(news, ["a01"], metadata)
        patch = pb.UpdateMetadataRequest(collection=news, ids=["a01"],
                                         patch_json=json.dumps(metadata))  # fmt: skip
        with pytest.raises(InvalidArgument):  # the server's, for any other client
            client._call(Call("UpdateMetadata", patch, str))
    too_deep = '{"a":' * 5000 + "1" + "}" * 5000  # past Python's own JSON parser
    requests = (
        pb.CountRequest(collection=news, filter_json=too_deep),
        pb.UpdateMetadataRequest(collection=news, ids=["a01"], patch_json=too_deep),
    )
    for request in requests:
        with pytest.raises(InvalidArgument, match="nested"):
            client._call(Call(type(request).__name__.removesuffix("Request"), request, str))
    document = {"id": "bad", "text": "坏", "metadata": {"deep": deep}}
    response = http.post(f"/v1/collections/{news}/upsert", json={"documents": [document]})
    assert response.status_code == 400, response.text
    # Past 64 bits, HTTP's JSON parser made the integer a float, stored rounded.
    for number in ("18446744073709551616", "-18446744073709551617", "1" + "0" * 30,
                   "-9223372036854775809"):  # fmt: skip
        body = '{"documents": [{"id": "bad", "text": "坏", "metadata": {"n": ' + number + "}}]}"
        response = http.post(f"/v1/collections/{news}/upsert", content=body.encode(),
                             headers={"content-type": "application/json"})  # fmt: skip
        assert response.status_code == 400 and "64-bit" in response.text, response.text
    assert client.get(news, ["bad"]) == [None]
    assert client.count(news, filter={"sense": "fruit"}) == 3
    assert http.post(f"/v1/collections/{news}/scroll", json={}).status_code == 200


def test_an_id_no_document_can_have_is_refused_by_reads_and_deletes_on_every_surface(
    client, http, news
):
    """The SDK refused "", NUL and 257 characters before sending, and HTTP "" and 257 by
    its schema; gRPC answered them as missing (Get) or none deleted (Delete), and HTTP a NUL
    id with 200, as if such a document might exist."""
    for bad in ("", "a\x00", "x" * 257):
        for request, call in (
            (pb.GetRequest(collection=news, ids=["a01", bad]), "Get"),
            (pb.DeleteRequest(collection=news, ids=[bad]), "Delete"),
            (pb.UpdateMetadataRequest(collection=news, ids=[bad], patch_json="{}"),
             "UpdateMetadata"),
        ):  # fmt: skip
            with pytest.raises(
                InvalidArgument, match=r"ids\[\d\]: a document id|ids\[\d\]: U\+0000"
            ):
                client._call(Call(call, request, str))
        for route, body in (("get", {}), ("delete", {}), ("update_metadata", {"patch": {}})):
            response = http.post(f"/v1/collections/{news}/{route}", json={"ids": [bad], **body})
            assert response.status_code in (400, 422), (route, bad, response.text)
    assert client.get(news, ["a01"])[0] is not None  # nothing deleted


def test_the_sdk_checks_a_patch_and_a_filter_as_it_checks_metadata(client, news):
    """numpy scalars (what a DataFrame's to_dict gives), keys that are not strings, nesting
    past Python's recursion: upsert refused them by name before sending. update_metadata and
    every filter raised json's bare TypeError (no argument named) or a RecursionError, or
    sent an int key as its digits: a patch stored {"5": 1} that upsert would refuse."""
    before = client.get(news, ["a01"])[0].metadata
    deep: dict = {"sense": "fruit"}
    for _ in range(3000):
        deep = {"$not": deep}
    for bad in ({"x": np.int64(1)}, {5: 1}, {"x": {"y": object()}}, deep):
        with pytest.raises(ValueError, match=r"^patch"):
            client.update_metadata(news, ["a01"], bad)
        for call in (
            lambda where: client.count(news, filter=where),
            lambda where: client.search(news, "苹果", filter=where),
            lambda where: client.delete(news, filter=where),
            lambda where: next(iter(client.scroll(news, filter=where))),
        ):
            with pytest.raises(ValueError, match=r"^filter"):
                call(bad)
    assert client.get(news, ["a01"])[0].metadata == before


def test_metadata_of_32_levels_is_stored_and_of_33_refused_on_every_surface(client, http, news):
    """The limit is 32 levels of objects and arrays (docs/collections.md). Before, the value
    inside the 32nd level counted as a 33rd: metadata of 32 levels was refused."""

    def levels(n: int) -> dict:
        value: object = "底"
        for i in range(n - 1):
            value = {"a": value} if i % 2 else [value]
        return {"top": value}

    client.upsert(news, [{"id": "deep", "text": "深", "metadata": levels(32)}])
    assert client.get(news, ["deep"])[0].metadata == levels(32)
    document = {"id": "deep-http", "text": "深", "metadata": levels(32)}
    stored = http.post(f"/v1/collections/{news}/upsert", json={"documents": [document]})
    assert stored.status_code == 200, stored.text
    with pytest.raises(ValueError, match="more than 32 levels"):
        client.upsert(news, [{"id": "deeper", "text": "深", "metadata": levels(33)}])
    document = {"id": "deeper", "text": "深", "metadata": levels(33)}
    refused = http.post(f"/v1/collections/{news}/upsert", json={"documents": [document]})
    assert refused.status_code == 400 and "32 levels" in refused.text, refused.text
    assert client.get(news, ["deeper"]) == [None]


def test_strings_no_filter_could_match_are_invalid_argument_on_every_surface(client, http, news):
    """U+0000 and a lone surrogate (JSON's "\\ud800": no UTF-8 holds it) in metadata, a patch
    or a filter are INVALID_ARGUMENT (HTTP 400). Before, gRPC answered INTERNAL
    (UnicodeEncodeError) for the surrogate, and a stored NUL made filters match wrongly."""
    for escaped in ("\\u0000", "\\ud800"):
        value = '{"sense": "fruit' + escaped + 'x"}'
        document = pb.Document(id="bad", text="坏", metadata_json=value)
        requests = (
            pb.CountRequest(collection=news, filter_json=value),
            pb.UpdateMetadataRequest(collection=news, ids=["a01"], patch_json=value),
            pb.UpsertRequest(collection=news, documents=[document]),
        )
        for request in requests:
            rpc = type(request).__name__.removesuffix("Request")
            with pytest.raises(InvalidArgument, match="U\\+"):
                client._call(Call(rpc, request, str, stream=rpc == "Upsert"))
        upsert = '{"documents": [{"id": "bad", "text": "坏", "metadata": ' + value + "}]}"
        for route, body in (("count", '{"filter": ' + value + "}"), ("upsert", upsert)):
            response = http.post(f"/v1/collections/{news}/{route}", content=body.encode(),
                                 headers={"content-type": "application/json"})  # fmt: skip
            assert response.status_code == 400, response.text
    assert client.get(news, ["bad"]) == [None]
    assert client.count(news, filter={"sense": "fruit"}) == 3


def test_a_document_without_an_id_gets_the_same_id_on_every_surface(client, http, news):
    """Sent again without an id, a document replaces itself on every surface. HTTP and raw
    gRPC gave it a new random id each time (it doubled); the SDK and the CLI, an id made
    from its text and metadata."""
    document = {"text": "苹果派很好吃", "metadata": {"sense": "fruit", "year": 2025}}
    route = f"/v1/collections/{news}/upsert"
    over_http = [http.post(route, json={"documents": [document]}).json()["ids"] for _ in "ab"]
    raw = pb.Document(text=document["text"], metadata_json='{"year": 2025, "sense": "fruit"}')
    over_grpc = client._call(Call("Upsert", pb.UpsertRequest(collection=news, documents=[raw]),
                                  lambda reply: list(reply.ids), stream=True))  # fmt: skip
    assert over_http[0] == over_http[1] == over_grpc == client.upsert(news, [document])
    assert client.count(news) == len(TEXTS) + 1
    other = http.post(route, json={"documents": [{**document, "metadata": {}}]}).json()["ids"]
    assert other != over_grpc and client.count(news) == len(TEXTS) + 2
    twice = http.post(route, json={"documents": [document, {"text": "x"}, document]})
    assert twice.status_code == 400 and "documents[0] and documents[2]" in twice.text

    # A vector alone had a new random id each time over HTTP and raw gRPC (the SDK refused
    # it); a wrong dimension was named by a derived id the caller never saw.
    vector = [1.0] + [0.0] * (DIM - 1)
    alone = http.post(route, json={"documents": [{"text": "x"}, {"vector": vector}]})
    assert alone.status_code == 400 and "documents[1]: a document given by its vector alone" \
        in alone.text, alone.text  # fmt: skip
    raw = pb.Document(vector=pb.Tensor(shape=[DIM], data=np.asarray(vector, "<f4").tobytes()))
    with pytest.raises(InvalidArgument, match=r"documents\[0\]: a document given by its vector"):
        client._call(Call("Upsert", pb.UpsertRequest(collection=news, documents=[raw]),
                          lambda reply: reply, stream=True))  # fmt: skip
    short = http.post(route, json={"documents": [{"text": "x"}, {"text": "y", "vector": [1, 2]}]})
    assert short.status_code == 400 and "documents[1].vector: a 2-dim vector" in short.text
    assert client.count(news) == len(TEXTS) + 2


def test_async_client_does_the_same(running, news):
    async def scenario() -> None:
        async with AsyncClient(running.target, api_key=KEY, timeout=60) as c:
            assert await c.count(news, filter={"sense": "company"}) == 3
            ids = [d.id async for d in c.scroll(news, batch_size=3)]
            assert ids == sorted(i for i, _, _ in TEXTS)
            batch = await c.search(news, QUERIES, k=2)
            assert [len(hits) for hits in batch] == [2, 2, 2]
            assert await c.update_metadata(news, ["c01"], {"lang": "en"}) == 1
            assert await c.delete(news, filter={"lang": "en"}) == 1
            assert await c.count(news) == 6

    asyncio.run(scenario())


# ---------------------------------------------------------------- the CLI


def cli(running, capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        status = cli_main(["--target", running.target, "--api-key", KEY, *args])
    except SystemExit as stop:  # argparse's own errors (exit status 2)
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_collections_and_docs(running, client, capsys):
    assert cli(running, capsys, "collections", "create", "cli-docs", "--metric", "ip")[0] == 0
    try:
        status, out, _ = cli(running, capsys, "--json", "collections", "describe", "cli-docs")
        assert status == 0 and json.loads(out)["metric"] == "ip"
        client.upsert("cli-docs", documents())
        assert "cli-docs" in cli(running, capsys, "collections")[1]  # list, as before
        assert "cli-docs" in cli(running, capsys, "collections", "list")[1]
        status, out, _ = cli(running, capsys, "collections", "create", "cli-docs", "--metric",
                             "ip", "--exist-ok")  # fmt: skip
        assert status == 0 and "'cli-docs' ready" in out and "7 documents" in out
        status, _, err = cli(running, capsys, "collections", "create", "cli-docs", "--exist-ok")
        assert status != 0 and 'metric "ip", not metric "cosine"' in err
        assert cli(running, capsys, "collections", "create", "cli-docs", "--metric", "ip")[0] != 0
        status, out, _ = cli(
            running, capsys, "docs", "count", "cli-docs", "--filter", '{"sense": "fruit"}'
        )
        assert status == 0 and out.strip() == "3"
        status, out, _ = cli(running, capsys, "--json", "docs", "get", "cli-docs", "a01", "zz")
        got = json.loads(out)
        assert got["documents"][0]["text"] == TEXTS[0][1] and got["missing"] == ["zz"]
        status, out, _ = cli(
            running,
            capsys,
            "--json",
            "docs",
            "delete",
            "cli-docs",
            "--filter",
            '{"year": {"$lt": 2020}}',
        )
        assert status == 0 and json.loads(out) == {"deleted": 2}  # a01, c01
        status, _, err = cli(running, capsys, "docs", "delete", "cli-docs")
        assert status == 2 and "IDs or --filter" in err
        status, _, err = cli(running, capsys, "docs", "count", "cli-docs", "--filter", "{oops")
        assert status == 2 and "not JSON" in err
        status, _, err = cli(
            running, capsys, "docs", "count", "cli-docs", "--filter", '{"$nope": 1}'
        )
        assert status == 1 and "INVALID_ARGUMENT" in err
    finally:
        assert cli(running, capsys, "collections", "drop", "cli-docs")[0] == 0
    status, _, err = cli(running, capsys, "drop", "cli-docs")  # the old spelling still works
    assert status == 1 and "NOT_FOUND" in err


def test_cli_updates_metadata_and_cuts_a_search_at_a_score(running, client, news, capsys):
    status, out, _ = cli(running, capsys, "docs", "update", news, "a01", "zz", "--patch",
                         '{"year": 1999, "new": null}')  # fmt: skip
    assert status == 0 and "1 of 2 documents updated" in out
    assert client.get(news, ["a01"])[0].metadata == {**TEXTS[0][2], "year": 1999, "new": None}
    status, out, _ = cli(running, capsys, "--json", "docs", "update", news, "b01", "--patch",
                         '{"only": "this"}', "--replace")  # fmt: skip
    assert status == 0 and json.loads(out) == {"updated": 1}
    assert client.get(news, ["b01"])[0].metadata == {"only": "this"}
    for patch in ("[1]", "{oops"):
        status, _, err = cli(running, capsys, "docs", "update", news, "a01", "--patch", patch)
        assert status == 2 and "--patch" in err and "JSON object" in err
    status, _, err = cli(running, capsys, "docs", "update", news, "a01")
    assert status == 2 and "--patch" in err
    assert client.get(news, ["a01"])[0].metadata["year"] == 1999  # refused ones changed nothing

    everything = client.search(news, QUERIES[1], k=7)
    cut = (everything[2].score + everything[3].score) / 2
    status, out, _ = cli(running, capsys, "--json", "search", news, QUERIES[1], "-k", "7",
                         "--score-threshold", str(cut))  # fmt: skip
    assert status == 0 and [hit["id"] for hit in json.loads(out)] == [
        hit.id for hit in everything[:3]
    ]
    # No hit: it printed a table's header alone.
    status, out, _ = cli(running, capsys, "search", news, QUERIES[1], "--score-threshold",
                         "0.9999", "--filter", '{"year": 1999}')  # fmt: skip
    assert status == 0 and out.strip() == (
        f"no hits in {news!r} matching the filter and scoring at least 0.9999"
    ), out
    status, out, _ = cli(running, capsys, "--json", "search", news, QUERIES[1],
                         "--score-threshold", "0.9999")  # fmt: skip
    assert status == 0 and json.loads(out) == []


def test_an_export_to_a_directory_names_it_and_leaves_no_file_behind(
    running, news, capsys, tmp_path
):
    """The export was written beside the directory, then renamed over it: the error named
    the hidden file made for it, and left that file there."""
    (tmp_path / "out").mkdir()
    status, _, err = cli(running, capsys, "docs", "export", news, "--out", str(tmp_path / "out"))
    assert status == 2 and f"{tmp_path / 'out'}: is a directory" in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not any((tmp_path / "out").iterdir())


def test_export_then_index_gives_the_same_search_answers(running, client, news, capsys, tmp_path):
    exported = tmp_path / "news.jsonl"
    status, out, _ = cli(
        running, capsys, "docs", "export", news, "--out", str(exported), "--batch-size", "3"
    )
    assert status == 0 and "7 documents" in out
    lines = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines] == sorted(i for i, _, _ in TEXTS)
    status, _, _ = cli(running, capsys, "index", str(exported), "--collection", "news-copy")
    assert status == 0
    try:
        for query in QUERIES:
            a = client.search(news, query, k=7)
            b = client.search("news-copy", query, k=7)
            assert [(h.id, h.text, h.metadata) for h in a] == [
                (h.id, h.text, h.metadata) for h in b
            ]
            assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
        status, out, _ = cli(
            running, capsys, "docs", "export", news, "--filter", '{"sense": "company"}'
        )
        assert [json.loads(line)["id"] for line in out.splitlines()] == ["b01", "b02", "b03"]
    finally:
        client.drop_collection("news-copy")


# ---------------------------------------------------------------- HTTP REST


def test_rest_collections_and_documents(http, client):
    made = http.post("/v1/collections", json={"name": "rest-one", "index": "Flat"})
    assert made.status_code == 200 and made.json()["dim"] == DIM
    try:
        assert "rest-one" in [c["name"] for c in http.get("/v1/collections").json()["collections"]]
        docs = documents()[:3] + [{"id": "vec", "vector": [0.0] * (DIM - 1) + [1.0]}]
        stored = http.post("/v1/collections/rest-one/upsert", json={"documents": docs})
        assert stored.status_code == 200, stored.text
        assert stored.json() == {"upserted": 4, "ids": ["a01", "a02", "a03", "vec"]}
        assert http.get("/v1/collections/rest-one").json()["count"] == 4
        count = http.post(
            "/v1/collections/rest-one/count", json={"filter": {"year": {"$gt": 2020}}}
        )
        assert count.json() == {"count": 2}

        got = http.post(
            "/v1/collections/rest-one/get", json={"ids": ["a02", "zz"], "with_vectors": True}
        ).json()
        grpc_a02 = client.get("rest-one", ["a02"], with_vectors=True)[0]
        assert got["missing"] == ["zz"] and got["documents"][0]["metadata"] == TEXTS[1][2]
        assert np.allclose(got["documents"][0]["vector"], grpc_a02.vector, atol=1e-6)

        pages, cursor = [], None
        while True:
            page = http.post(
                "/v1/collections/rest-one/scroll",
                json={"limit": 3, **({"cursor": cursor} if cursor else {})},
            ).json()
            pages.append([d["id"] for d in page["documents"]])
            if (cursor := page["next_cursor"]) is None:
                break
        assert pages == [["a01", "a02", "a03"], ["vec"]]

        one = http.post("/v1/collections/rest-one/search", json={"query": QUERIES[0], "k": 2})
        grpc_hits = client.search("rest-one", QUERIES[0], k=2)
        assert [h["id"] for h in one.json()["results"][0]] == [h.id for h in grpc_hits]
        assert [h["score"] for h in one.json()["results"][0]] == pytest.approx(
            [h.score for h in grpc_hits], abs=1e-5
        )
        many = http.post(
            "/v1/collections/rest-one/search",
            json={"query": QUERIES, "k": 1, "filter": {"sense": "fruit"}},
        ).json()
        assert [len(r) for r in many["results"]] == [1, 1, 1]
        by_vector = http.post(
            "/v1/collections/rest-one/search",
            json={"vector": [0.0] * (DIM - 1) + [1.0], "k": 1, "with_vectors": True},
        ).json()
        assert by_vector["results"][0][0]["id"] == "vec"
        assert by_vector["results"][0][0]["vector"][-1] == pytest.approx(1)

        patched = http.post(
            "/v1/collections/rest-one/update_metadata",
            json={"ids": ["a01"], "patch": {"year": 1990}},
        )
        assert patched.json() == {"updated": 1}
        deleted = http.post(
            "/v1/collections/rest-one/delete", json={"filter": {"year": {"$lt": 2000}}}
        )
        assert deleted.json() == {"deleted": 1}
        assert http.post("/v1/collections/rest-one/delete", json={"ids": ["vec"]}).json() == {
            "deleted": 1
        }
        assert client.count("rest-one") == 2  # the same store as gRPC's
    finally:
        assert http.delete("/v1/collections/rest-one").json() == {"dropped": "rest-one"}
    assert http.get("/v1/collections/rest-one").status_code == 404


def test_rest_errors_have_the_right_status_and_shape(http, running):
    def error(response: httpx2.Response, status: int, *words: str) -> None:
        assert response.status_code == status, response.text
        body = response.json()["error"]
        assert set(body) == {"message", "code", "param"}
        for word in words:
            assert word in body["message"], body
        if status == 400:  # one code for every bad field: it was "invalid", "empty" or
            assert body["code"] == "invalid_argument", body  # "too_many" by where it arose

    base = f"http://127.0.0.1:{running.server.http_port}"
    error(httpx2.get(base + "/v1/collections"), 401)
    error(http.get("/v1/collections/nope"), 404, "nope")
    # No such route, or another method, under /v1/collections: answered in OpenAI's shape.
    error(http.get("/v1/collections/nope/search"), 405)
    error(http.post("/v1/collections/nope/no-such-operation", json={}), 404)
    error(http.post("/v1/collections/nope/count", json={}), 404)
    assert http.post("/v1/collections", json={"name": "rest-errors"}).status_code == 200
    try:
        error(http.post("/v1/collections", json={"name": "rest-errors"}), 409)
        error(http.post("/v1/collections", json={"name": "bad name!"}), 422, "name")
        bad_index = http.post("/v1/collections", json={"name": "x", "index": "IVF4,PQ7"})
        error(bad_index, 400, "PQ")
        assert bad_index.json()["error"]["param"] == "index", bad_index.text  # it was null
        error(
            http.post(
                "/v1/collections/rest-errors/upsert",
                json={"documents": [{"id": "v", "vector": [1.0, 2.0]}]},
            ),
            400,
            "2",
            "384",
        )
        error(
            http.post("/v1/collections/rest-errors/upsert", json={"documents": [{"text": " "}]}),
            400,
            "documents[0].text",
        )
        bad_filter = http.post("/v1/collections/rest-errors/count", json={"filter": {"$or": 1}})
        error(bad_filter, 400)
        assert bad_filter.json()["error"]["param"] == "filter"  # it was null
        # Fingerprinted for the cursor before it was checked: json.dumps's RecursionError, 500.
        deep = '{"a": ' * 1000 + "1" + "}" * 1000
        cursor = encode_cursor("rest-errors", "x", filter_keys(None)[0])
        body = f'{{"filter": {deep}, "cursor": "{cursor}"}}'
        scrolled = http.post("/v1/collections/rest-errors/scroll", content=body.encode(),
                             headers={"content-type": "application/json"})  # fmt: skip
        error(scrolled, 400, "unknown operator")
        # A key twice, as gRPC's filter_json and patch_json refuse it: JSON keeps the last, so
        # {"$gt": 1, "$gt": 0} filtered on $gt 0 unsaid, and a document kept its second year.
        vector = '{"vector": ' + json.dumps([0.5] * DIM)  # its numbers are not read for keys
        for route, body in (
            ("count", '{"filter": {"year": {"$gt": 1, "$gt": 0}}}'),
            ("delete", '{"filter": {"year": 1}, "filter": {"year": 2}}'),
            ("upsert", '{"documents": [{"text": "x", "metadata": {"y": 1, "y": 2}}]}'),
            ("upsert", '{"documents": [' + vector + ', "metadata": {"y": 1, "y": 2}}]}'),
            ("update_metadata", '{"ids": ["a"], "patch": {"y": 1, "y": 2}}'),
        ):
            twice = http.post(f"/v1/collections/rest-errors/{route}", content=body.encode(),
                              headers={"content-type": "application/json"})  # fmt: skip
            error(twice, 400, "twice in one object")
        stored = http.post("/v1/collections/rest-errors/count", json={}).json()
        assert stored == {"count": 0}  # the upsert stored nothing
        error(http.post("/v1/collections/rest-errors/delete", json={}), 400, "ids or filter")
        error(http.post("/v1/collections/rest-errors/delete", json={"filter": {}}), 400)
        error(
            http.post("/v1/collections/rest-errors/scroll", json={"cursor": "zzz"}), 400, "cursor"
        )
        error(http.post("/v1/collections/rest-errors/search", json={"k": 3}), 400, "query")
        # The field at fault is named, as for the others (these had param null).
        for route, body, param in (
            ("search", {"vector": [0.1, 0.2]}, "vector"),
            ("search", {"query": "x", "score_threshold": 1e39}, "score_threshold"),
            ("update_metadata", {"ids": ["a"], "patch": {"h": 2**70}}, "patch"),
            ("upsert", {"documents": [{"text": "x", "metadata": {"big": 2**64}}]}, "documents"),
            ("upsert", {"documents": [{"id": "a", "text": "x"}] * 2}, "documents"),
        ):
            refused = http.post(f"/v1/collections/rest-errors/{route}", json=body)
            error(refused, 400, param)
            assert refused.json()["error"]["param"] == param, refused.text
            # The message names it too: a vector's dimension was blamed on "query".
            assert refused.json()["error"]["message"].startswith(param), refused.text
        error(http.post("/v1/collections/rest-errors/search", json={"query": "x", "k": 0}), 422)
        error(
            http.post("/v1/collections/rest-errors/search", json={"vector": [[1.0] * DIM, [1.0]]}),
            400,
            "length",
        )
        # A vector not made of numbers is named in JSON's words, with the item at fault: it
        # said "got str", "got NoneType", "got a list of other things".
        for vector, said in (
            ("1.0", "got a string"),
            ({"x": 1.0}, "got an object"),
            ([], "got an empty array"),
            ([1.0, "2"], "item [1] is a string"),
            ([[1.0], [1.0, None]], "item [1][1] is null"),
            ([[1.0], []], "item [1] is an empty array"),
            ([[1.0], 2.0], "item [1] is a number"),
        ):
            error(
                http.post("/v1/collections/rest-errors/search", json={"vector": vector}), 422, said
            )
        for vector, said in (([1.0, True], "item [1] is true"), ([[1.0]], "item [0] is an array")):
            upsert = {"documents": [{"id": "v", "vector": vector}]}
            error(http.post("/v1/collections/rest-errors/upsert", json=upsert), 422, said)
    finally:
        http.delete("/v1/collections/rest-errors")


def test_a_misspelled_rest_field_is_refused_not_ignored(http, client):
    """Before: unknown fields were ignored, so a typo changed what a call did and still
    answered 200: a document's "meta" was dropped (stored without metadata), "mod": "replace"
    merged, "top_k" and "filters" searched for 10 unfiltered hits, "metrics" and "indx" made a
    Flat cosine collection, "filtre" counted everything."""
    name = "rest-typos"
    assert http.post("/v1/collections", json={"name": name}).status_code == 200
    try:
        base = f"/v1/collections/{name}"
        client.upsert(name, documents())
        typos = [
            ("/v1/collections", {"name": "rest-typos-2", "metrics": "l2"}, "metrics"),
            ("/v1/collections", {"name": "rest-typos-2", "indx": "HNSW32"}, "indx"),
            (base + "/upsert", {"documents": [{"id": "m", "text": "苹果", "meta": {"a": 1}}]},
             "documents.0.meta"),
            (base + "/upsert", {"documents": [], "batch": 1}, "batch"),
            (base + "/update_metadata", {"ids": ["a01"], "patch": {}, "mod": "replace"}, "mod"),
            (base + "/search", {"query": "水果", "top_k": 1}, "top_k"),
            (base + "/search", {"query": "水果", "filters": {"sense": "fruit"}}, "filters"),
            (base + "/count", {"filtre": {"sense": "fruit"}}, "filtre"),
            (base + "/delete", {"ids": ["a01"], "filtre": {}}, "filtre"),
            (base + "/scroll", {"limt": 1}, "limt"),
            (base + "/get", {"ids": ["a01"], "with_vector": True}, "with_vector"),
        ]  # fmt: skip
        for path, body, field in typos:
            answer = http.post(path, json=body)
            assert answer.status_code == 422, (path, body, answer.text)
            error = answer.json()["error"]
            assert field in error["message"] and "unknown field" in error["message"], error
        assert "rest-typos-2" not in [c.name for c in client.list_collections()]
        assert client.count(name) == len(TEXTS)  # nothing deleted, nothing added
        assert client.get(name, ["a01"])[0].metadata == TEXTS[0][2]  # nor replaced
    finally:
        http.delete(f"/v1/collections/{name}")


def test_rest_routes_are_in_the_openapi_document(http):
    doc = http.get("/openapi.json").json()
    paths = {p for p in doc["paths"] if p.startswith("/v1/collections")}
    assert paths == {"/v1/collections", "/v1/collections/{name}"} | {
        f"/v1/collections/{{name}}/{op}"
        for op in ("upsert", "get", "delete", "count", "scroll", "update_metadata", "search",
                   "occurrences", "senses")  # the last two: word senses (test_http_senses.py)
    }  # fmt: skip
    upsert = doc["paths"]["/v1/collections/{name}/upsert"]["post"]
    assert upsert["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert "401" in upsert["responses"] and any(
        p["name"] == "X-Priority" for p in upsert["parameters"]
    )


def test_scroll_fetches_smaller_pages_where_a_page_would_be_too_large(e5, tmp_path):
    """Documents with large metadata: a page of the default 1,000 was RESOURCE_EXHAUSTED
    ("the reply would be ... bytes"), so scroll and `embedsense docs export` failed unless
    the caller guessed a batch_size. The SDK asks for smaller pages instead."""
    server = ServerThread(e5, tmp_path, max_message_bytes=1 << 20)
    try:
        with Client(server.target) as client:
            client.create_collection("fat")
            for i in range(8):
                client.upsert(
                    "fat", [{"id": f"d{i}", "text": f"第{i}", "metadata": {"s": "x" * 200_000}}]
                )
            assert [d.id for d in client.scroll("fat")] == [f"d{i}" for i in range(8)]

            async def scrolled() -> list[str]:
                async with AsyncClient(server.target) as c:
                    return [d.id async for d in c.scroll("fat", batch_size=8)]

            assert asyncio.run(scrolled()) == [f"d{i}" for i in range(8)]
            # Ids the caller chose: the error says why and what to ask less of.
            with pytest.raises(ResourceExhausted, match="text and metadata.*fewer ids") as err:
                client.get("fat", [f"d{i}" for i in range(8)])
            assert err.value.reply_too_large
    finally:
        server.stop()


def test_ids_past_the_servers_limit_are_refused_alike_and_the_sdk_splits_them(e5, tmp_path):
    """One bound on a request's ids, max_texts_per_request, on both ports: gRPC's Get and
    Delete and HTTP's delete took any number, while UpdateMetadata and HTTP's get stopped
    at it (and the SDK's update_metadata of a longer list failed). The SDK, sync and async,
    sends a longer list in requests within the limit, in order."""
    server = ServerThread(e5, tmp_path, http_port=0, max_texts_per_request=3)
    ids = [f"d{i}" for i in range(8)]
    over = ["d0", "d1", "d2", "nowhere"]
    refused = "ids: 4 ids; the limit is 3 per request"
    try:
        with Client(server.target) as client:
            client.create_collection("many")
            client.upsert("many", [{"id": i, "text": f"第{i}句"} for i in ids], batch_size=3)
            for call in (
                Call("Get", pb.GetRequest(collection="many", ids=over), str),
                Call("Delete", pb.DeleteRequest(collection="many", ids=over), str),
                Call("UpdateMetadata", pb.UpdateMetadataRequest(
                    collection="many", ids=over, patch_json='{"a": 1}'), str),
            ):  # fmt: skip
                with pytest.raises(InvalidArgument, match=refused):
                    client._call(call)
            base = f"http://127.0.0.1:{server.server.http_port}/v1/collections/many"
            for path, body in (("get", {"ids": over}), ("delete", {"ids": over}),
                               ("update_metadata", {"ids": over, "patch": {"a": 1}})):  # fmt: skip
                answer = httpx2.post(f"{base}/{path}", json=body, timeout=60)
                assert answer.status_code == 400, (path, answer.text)
                assert answer.json()["error"]["message"].startswith(refused), answer.text
                assert answer.json()["error"]["param"] == "ids"
            spec = httpx2.get(f"http://127.0.0.1:{server.server.http_port}/openapi.json").json()
            for model in ("GetRequest", "DeleteRequest", "UpdateMetadataRequest"):
                assert spec["components"]["schemas"][model]["properties"]["ids"]["maxItems"] == 3
            assert client.count("many") == 8, "a refused delete deleted nothing"

            # An id twice, in two requests: counted once, as one request counts it.
            assert client.update_metadata("many", ["d0", "d1", "d2", "d0"], {"seen": True}) == 3
            asked = [*ids[::-1], "nowhere"]
            assert client.update_metadata("many", asked, {"seen": True}) == 8
            found = client.get("many", asked)
            assert [d and d.id for d in found] == [*ids[::-1], None]
            assert all(d.metadata == {"seen": True} for d in found[:-1])
            assert client.delete("many", ids[:5]) == 5
            assert [d.id for d in client.scroll("many")] == ids[5:]

        async def split_by_the_async_client() -> None:
            async with AsyncClient(server.target) as c:
                assert await c.update_metadata("many", asked, {"seen": 2}, "replace") == 3
                found = await c.get("many", asked)
                assert [d and d.id for d in found] == [*ids[7:4:-1], *([None] * 6)]
                assert await c.delete("many", asked) == 3
                assert await c.count("many") == 0

        asyncio.run(split_by_the_async_client())
    finally:
        server.stop()
