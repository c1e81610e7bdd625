"""One test module for every index backend: `faiss` (FAISS + SQLite), `milvus` on an
embedded milvus-lite file, `milvus` on a milvus-lite server and `milvus` on a real Milvus
standalone (tests/ops/milvus_standalone.py), both on 127.0.0.1, through the same interface
the service uses (server/index/backend.py)."""

from __future__ import annotations

import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from ops.serverproc import MilvusLiteServer
from test_index import DIM, FILTERS, brute_force, corpus, unit

from embedsense.server.index import (
    BackendSettings,
    CollectionExists,
    CollectionNotFound,
    DimensionMismatch,
    Document,
    FilterError,
    InvalidArgument,
    ModelMismatch,
    Token,
    open_backend,
)

# Strings a filter expression must quote exactly: quotes, backslashes, every kind of
# control character a metadata string may hold (all but U+0000).
NOTES = ["第一行\n第二行", 'say "hi"\\', "tab\there\rand\x01\x1b\x7f\b\f", "第\u2028二"]

# The filter cases every backend must answer with the same ids: the faiss backend's cases,
# and the ones where a loose comparison would differ (true vs 1, null vs missing, $ne on a
# missing field, a string vs a number, non-ASCII).
SHARED_FILTERS = [
    *FILTERS,
    {"flag": True},
    {"flag": 1},
    {"flag": {"$ne": True}},
    {"note": None},
    {"note": {"$ne": None}},
    {"year": {"$in": [2003, "2004"]}},
    {"lang": {"$gte": "ja"}},
    {"source.site": {"$in": ["wiki", "论坛"]}},
    {"title": "苹果"},
    {"score": {"$lte": 0.25}, "public": False},
    # Boolean structure: $and, $or, $not, nested, and beside plain fields.
    {"$or": [{"lang": "zh"}, {"year": {"$lt": 2005}}]},
    {"$and": [{"lang": "en"}, {"public": True}]},
    {"lang": "zh", "$or": [{"public": True}, {"year": 2003}]},
    {"$or": [{"$and": [{"lang": "zh"}, {"public": False}]}, {"$not": {"year": {"$gte": 2003}}}]},
    {"$not": {"lang": "zh"}},
    {"$not": {"note": None}},  # null is not missing
    {"$not": {"$or": [{"flag": True}, {"note": "x"}]}},
    {"$not": {"$and": [{"score": {"$gt": 0.5}}, {"tag": "rare"}]}},
    {"$not": {"$not": {"lang": "ja"}}},
    {"$not": {"year": {"$in": [2003, 2004]}}},
    {"$not": {"lang": {"$ne": "zh"}}},
    # $nin and $exists: a missing field is "not in", and null exists.
    {"lang": {"$nin": ["zh", "ja"]}},
    {"note": {"$nin": [None, "x"]}},
    {"note": {"$exists": True}},
    {"note": {"$exists": False}},
    {"source.site": {"$exists": True}},
    {"$not": {"note": {"$exists": True}}},
    # Array membership, strict types; a scalar field is not an array.
    {"tags": {"$contains": "red"}},
    {"tags": {"$contains": 1}},
    {"tags": {"$contains": 1.0}},
    {"tags": {"$contains": True}},
    {"tags": {"$contains": None}},
    {"tags": {"$contains_any": ["blue", "green"]}},
    {"$not": {"tags": {"$contains": "red"}}},
    {"tags": "red"},
    # A field of mixed types: every operator sees only its own kind.
    {"mixed": 5},
    {"mixed": {"$gt": 4}},
    {"$not": {"mixed": {"$gt": 4}}},
    {"$not": {"mixed": {"$gte": "4"}}},
    {"mixed": {"$contains": 5}},
    {"mixed": {"$ne": 5}},
    {"mixed": {"$nin": [5, "5"]}},
    # Field names in any script, and strings with quotes, backslashes and control characters.
    {"语言": "中文"},
    {"来源.站点": {"$in": ["论坛", "新闻"]}},
    {"$not": {"语言": "中文"}},
    {"备注": NOTES[0]},
    {"备注": {"$in": NOTES[1:]}},
    {"备注": {"$gte": "第"}},
    {"tags": {"$contains": NOTES[2]}},
    # The ends of 64-bit integers (Milvus 2.3 read -2**63 as minus 2**63: out of range).
    {"year": {"$gt": -(2**63)}},
    {"mixed": {"$nin": [-(2**63), 2**63 - 1]}},
]


def _extra(i: int) -> dict:
    extra: dict = {}
    if i % 3:
        extra["语言"] = "中文" if i % 3 == 1 else "英文"
        extra["来源"] = {"站点": ["论坛", "新闻", "博客"][i % 3]}
    if i % 8 < len(NOTES):
        extra["备注"] = NOTES[i % 8]
    if i % 4 == 0:
        extra["flag"] = True
    elif i % 4 == 1:
        extra["flag"] = 1
    if i % 5 == 0:
        extra["note"] = None
    elif i % 5 == 1:
        extra["note"] = "x"
    if i % 7 == 0:
        extra["title"] = "苹果"
        extra["source"] = {"site": "论坛"}
    tags = [["red", "blue", NOTES[2]], ["green", 1, True, None], "red", None]
    tags = tags[i % 4 if i % 9 else 3]
    if tags is not None:
        extra["tags"] = tags
    if i % 11:
        extra["mixed"] = [5, "5", True, None, [5, 2.5], 5.0][i % 6]
    return extra


def documents(n: int) -> list[Document]:
    docs = corpus(n)
    for i, doc in enumerate(docs):
        doc.metadata = {**doc.metadata, **_extra(i)}
    return docs


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    """A milvus-lite server of its own on 127.0.0.1, for the module."""
    server = MilvusLiteServer(tmp_path_factory.mktemp("milvus-server"))
    yield server.uri
    server.stop()


@pytest.fixture(params=["faiss", "milvus-lite-file", "milvus-lite-server", "milvus"])
def backend(request, tmp_path):
    if request.param == "faiss":
        settings = BackendSettings("faiss", data_dir=tmp_path / "data")
    elif request.param == "milvus-lite-file":
        settings = BackendSettings("milvus", milvus_uri=str(tmp_path / "index.db"))
    elif request.param == "milvus-lite-server":
        settings = BackendSettings("milvus", milvus_uri=request.getfixturevalue("milvus_server"))
    else:
        uri = request.getfixturevalue("milvus_standalone")
        settings = BackendSettings("milvus", milvus_uri=uri)
    opened = open_backend(settings)
    yield opened
    for name in opened.names():  # the server outlives the test
        opened.drop(name)
    opened.close()


def test_collections_are_created_listed_described_and_dropped(backend):
    info = backend.create("news", model="m", dim=DIM, index_spec="HNSW32",
                          options={"ef_search": 40})  # fmt: skip
    assert (info.name, info.dim, info.metric, info.index_spec, info.count, info.ef_search) == (
        "news", DIM, "cosine", "HNSW32", 0, 40
    )  # fmt: skip
    backend.create("blogs.v2", model="m", dim=DIM, store_tokens=True)
    assert [c.name for c in backend.list()] == ["blogs.v2", "news"]
    assert backend.get("blogs.v2").store_tokens and not backend.get("news").store_tokens
    with pytest.raises(CollectionExists):
        backend.create("news", model="m", dim=DIM)
    for bad in ("bad name!", "news\n"):  # "$" let a trailing newline through (not HTTP's)
        with pytest.raises(InvalidArgument, match="collection name"):
            backend.create(bad, model="m", dim=DIM)
    with pytest.raises(InvalidArgument, match="index spec"):
        backend.create("x", model="m", dim=DIM, index_spec="NoSuchIndex")
    backend.drop("news")
    assert backend.names() == ["blogs.v2"]
    with pytest.raises(CollectionNotFound, match="news"):
        backend.get("news")


def test_documents_are_upserted_read_replaced_and_deleted(backend):
    backend.create("c", model="m", dim=DIM)
    col = backend.get("c")
    docs = documents(50)
    assert col.upsert(docs) == [d.id for d in docs]
    assert col.count() == 50
    got = col.get(["doc-3", "nope", "doc-7"])
    assert got[1] is None and got[0].text == "text 3" and got[2].metadata == docs[7].metadata
    np.testing.assert_allclose(got[0].vector, docs[3].vector, atol=1e-6)
    replaced = Document(id="doc-3", text="new", vector=docs[9].vector, metadata={"v": 2})
    col.upsert([replaced])
    assert col.count() == 50 and col.get(["doc-3"])[0].text == "new"
    hits = col.search(docs[9].vector, k=2)[0]
    assert {h.id for h in hits} == {"doc-3", "doc-9"}
    assert col.delete(["doc-3", "doc-4", "nope", "doc-4"]) == 2
    assert col.count() == 48 and col.get(["doc-3", "doc-4"]) == [None, None]
    raw = col.search(docs[4].vector, k=48, with_documents=False)[0]
    assert len(raw) == 48 and not {"doc-3", "doc-4"} & {h.id for h in raw}
    assert raw[0].text is None
    generated = col.upsert([Document(text="no id", vector=docs[0].vector)])
    assert len(generated[0]) == 32 and col.get(generated)[0].text == "no id"


def test_ids_with_quotes_filters_right_after_a_write_and_a_large_k(backend):
    """Milvus: pymilvus quoted ids unescaped, so deleting "x','y" deleted "x" and "y",
    "O'Brien" could never be deleted, and "a\\b" was acknowledged and kept. A filter that
    matched nothing was remembered for 5 s: a document written then, matching it, was not
    found. A filtered search with k over 4,096 asked for a walk of 4,096 (refused)."""
    backend.create("c", model="m", dim=DIM, index_spec="HNSW32")
    col = backend.get("c")
    odd = ["x", "y", "x','y", "O'Brien", "a\\b", 'say "hi"']
    col.upsert([Document(id=i, text=i, vector=d.vector, metadata={"lang": "en"})
                for i, d in zip(odd, corpus(len(odd)), strict=True)])  # fmt: skip
    assert col.delete(["x','y", "O'Brien", "a\\b"]) == 3
    assert [d and d.id for d in col.get(odd)] == ["x", "y", None, None, None, 'say "hi"']
    query = corpus(1, seed=1)[0].vector
    assert col.search(query, k=3, where={"lang": "fr"}) == [[]]
    col.upsert([Document(id="fr", text="salut", vector=query, metadata={"lang": "fr"})])
    assert [h.id for h in col.search(query, k=3, where={"lang": "fr"})[0]] == ["fr"]
    hits = col.search(query, k=5000, where={"lang": "en"})[0]
    assert {h.id for h in hits} == {"x", "y", 'say "hi"'}


@pytest.mark.parametrize("backend", ["milvus-lite-server", "milvus"], indirect=True)
def test_concurrent_searches_share_milvus_calls_and_each_gets_its_own_hits(backend, monkeypatch):
    """Milvus spends milliseconds of CPU per call whatever it searches: searches with the
    same parameters made while others are in Milvus go as one call (coalesce.py), and each
    caller gets the hits it gets alone."""
    backend.create("c", model="m", dim=DIM, index_spec="HNSW32")
    col = backend.get("c")
    col.upsert(documents(60))
    queries = [d.vector for d in corpus(12, seed=3)]
    wheres = [None if i % 2 else {"lang": "zh"} for i in range(12)]
    alone = [col.search(q, k=5, where=w)[0] for q, w in zip(queries, wheres, strict=True)]
    made, search = [], col.calls.client.search
    in_flight = BackendSettings().milvus_search_calls  # what the backend lets go at once

    def counted(*args, **kwargs):
        made.append((kwargs["filter"], len(kwargs["data"])))
        if [f for f, _ in made].count(kwargs["filter"]) <= in_flight:
            # The first calls stay in Milvus until every other caller waits behind them.
            deadline = time.monotonic() + 10
            while (
                time.monotonic() < deadline
                and sum(len(w) for w in col._searches._waiting.values()) < 12 - 2 * in_flight
            ):
                time.sleep(0.01)
        return search(*args, **kwargs)

    monkeypatch.setattr(col.calls.client, "search", counted)
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda i: col.search(queries[i], k=5, where=wheres[i])[0],
                                 range(12)))  # fmt: skip
    for one, other in zip(alone, together, strict=True):
        assert [(h.id, h.text, h.metadata) for h in one] == [
            (h.id, h.text, h.metadata) for h in other
        ]  # fmt: skip
        np.testing.assert_allclose([h.score for h in one], [h.score for h in other], atol=1e-6)
    # For each filter, the first calls alone, and those that came meanwhile in the turns of
    # the first calls to end (6 calls a filter before).
    for where in {f for f, _ in made}:
        sizes = [n for f, n in made if f == where]
        assert sum(sizes) == 6 and len(sizes) <= 2 * in_flight < 6, made


def test_a_scroll_cursor_no_id_could_be_is_refused(backend):
    """The HTTP and gRPC cursors are base64 JSON, so a forged one may decode to any string:
    a lone surrogate reached SQLite (faiss) or protobuf (milvus) and was INTERNAL."""
    backend.create("c", model="m", dim=DIM)
    col = backend.get("c")
    col.upsert(documents(3))
    for bad in ("\ud800", "a\x00b"):
        with pytest.raises(InvalidArgument, match="cursor"):
            col.scroll(None, 2, bad)
    assert [d.id for d in col.scroll(None, 2, "doc-0")[0]] == ["doc-1", "doc-2"]


def test_bad_documents_and_queries_are_refused(backend):
    backend.create("c", model="m", dim=DIM)
    col = backend.get("c")
    with pytest.raises(DimensionMismatch):
        col.upsert([Document(text="x", vector=np.ones(DIM + 1))])
    with pytest.raises(ModelMismatch):
        col.upsert(documents(1), model="another")
    with pytest.raises(InvalidArgument, match="the same id twice"):
        col.upsert(documents(1) * 2)
    with pytest.raises(InvalidArgument, match="k must be"):
        col.search(np.ones(DIM), k=0)
    with pytest.raises(FilterError):
        col.search(np.ones(DIM), where={"a": {"$regex": "."}})


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800"], ids=["NUL", "lone surrogate"])
def test_strings_no_filter_could_match_exactly_are_refused_on_every_backend(backend, bad):
    """U+0000 (SQLite's JSON functions end a string there, so {"a": "x"} matched "x\0y")
    and lone surrogates (no UTF-8 for them) in metadata, ids and filters are
    INVALID_ARGUMENT, and nothing of a refused write is stored."""
    backend.create("c", model="m", dim=DIM)
    col = backend.get("c")
    col.upsert(documents(3))
    vector = documents(1)[0].vector
    for metadata in ({"a": bad}, {bad: 1}, {"a": ["ok", bad]}, {"a": {"b": bad}}):
        with pytest.raises(InvalidArgument, match="U\\+"):
            col.upsert([Document(id="new", text="t", vector=vector, metadata=metadata)])
        with pytest.raises(InvalidArgument, match="U\\+"):
            col.update_metadata(["doc-1"], metadata)
    with pytest.raises(InvalidArgument, match="U\\+"):
        col.upsert([Document(id=bad, text="t", vector=vector)])
    for where in ({"a": bad}, {"a": {"$in": ["ok", bad]}}, {"a": {"$gt": bad}}):
        with pytest.raises(FilterError, match="U\\+"):
            col.count(where)
        with pytest.raises(FilterError, match="U\\+"):
            col.search(vector, k=1, where=where)
    assert col.count() == 3 and col.get(["new", "doc-1"])[0] is None
    assert col.get(["doc-1"])[0].metadata == documents(3)[1].metadata


@pytest.mark.parametrize("where", SHARED_FILTERS, ids=[str(f) for f in SHARED_FILTERS])
def test_filters_mean_the_same_on_every_backend(backend, where):
    backend.create("c", model="m", dim=DIM)
    col = backend.get("c")
    docs = documents(300)
    col.upsert(docs)
    query = unit(np.random.default_rng(8))[0]
    expected = brute_force(docs, query, where, 10)
    assert [h.id for h in col.search(query, k=10, where=where)[0]] == expected


def test_token_vectors_and_word_occurrences(backend):
    backend.create("t", model="m", dim=DIM, store_tokens=True)
    col = backend.get("t")
    rng = np.random.default_rng(3)
    texts = {"a": "我喜欢吃苹果", "b": "苹果手机_100%", "c": "香蕉"}
    docs = []
    for doc_id, text in texts.items():
        tokens = [Token(ch, i, i + 1) for i, ch in enumerate(text)]
        vectors = rng.normal(size=(len(text), DIM))
        docs.append(Document(text=text, vector=unit(rng)[0], id=doc_id, tokens=tokens,
                             token_vectors=vectors))  # fmt: skip
    col.upsert(docs)
    (a,) = col.get(["a"])
    assert [t.text for t in a.tokens] == list(texts["a"]) and a.tokens[4] == Token("苹", 4, 5)
    np.testing.assert_allclose(a.token_vectors, docs[0].token_vectors, atol=1e-6)
    assert sorted(col.ids_containing("苹果", 100)) == ["a", "b"]
    assert col.ids_containing("_100%", 100) == ["b"]  # LIKE's wildcards are escaped
    assert col.ids_containing("100%x", 100) == []
    shorter = Document(text="苹果", vector=unit(rng)[0], id="a", tokens=[Token("苹果", 0, 2)],
                       token_vectors=rng.normal(size=(1, DIM)))  # fmt: skip
    assert col.ids_containing("果", 100) and col.ids_containing("吃苹果", 100) == ["a"]
    assert col.ids_containing("苹果手机_100%x", 100) == []
    col.upsert([shorter])  # a replaced document's old tokens are gone
    assert [t.text for t in col.get(["a"])[0].tokens] == ["苹果"]
    assert col.info().tokens == len(texts["b"]) + len(texts["c"]) + 1
    col.delete(["b"])
    assert col.info().tokens == len(texts["c"]) + 1


def test_inventories_are_stored_listed_and_deleted(backend):
    assert backend.put_inventory("mine", '{"打": {}}', replace=False)
    assert not backend.put_inventory("mine", '{"x": {}}', replace=False)
    assert backend.put_inventory("mine", '{"花": {}}', replace=True)
    assert backend.get_inventory("mine") == '{"花": {}}' and backend.get_inventory("no") is None
    backend.put_inventory("another", "{}", replace=False)
    assert [name for name, _ in backend.inventories()] == ["another", "mine"]
    assert backend.delete_inventory("mine") and not backend.delete_inventory("mine")
    backend.delete_inventory("another")


def tokenized(doc_id: str, text: str) -> Document:
    """A document with one token per character, its vectors a function of its text: any
    mix of two versions' rows shows."""
    rng = np.random.default_rng(zlib.crc32(text.encode()))
    return Document(
        text=text,
        vector=unit(rng)[0],
        id=doc_id,
        tokens=[Token(ch, i, i + 1) for i, ch in enumerate(text)],
        token_vectors=rng.normal(size=(len(text), DIM)),
    )


def assert_own_tokens(doc: Document) -> None:
    expected = tokenized(doc.id, doc.text)
    assert doc.tokens == expected.tokens, doc.id
    np.testing.assert_allclose(doc.token_vectors, expected.token_vectors, atol=1e-5)


def test_words_are_found_in_long_texts_and_by_their_first_and_last_characters(backend):
    """A text with more character pairs than a Milvus ARRAY holds is still found, and the
    grams of a word that occur apart are not an occurrence."""
    backend.create("t", model="m", dim=DIM, store_tokens=True)
    col = backend.get("t")
    long_text = "".join(chr(0x4E00 + i) for i in range(6000)) + "苹果"
    col.upsert([tokenized("long", long_text), tokenized("apart", "苹果 果汁 汁苹")])
    assert sorted(col.ids_containing("苹果", 10)) == ["apart", "long"]
    assert col.ids_containing("苹果汁", 10) == []
    assert col.ids_containing(chr(0x4E00 + 5999), 10) == ["long"]


def test_get_never_returns_a_document_without_its_tokens_while_it_is_rewritten(backend):
    """Before, on milvus: get() read the document row, a writer replaced it and deleted its
    old token rows, and get() came back with no tokens."""
    backend.create("t", model="m", dim=DIM, store_tokens=True)
    col = backend.get("t")
    col.upsert([tokenized("w", "苹果" * 3)])
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        n = 0
        try:
            while not stop.is_set():
                n += 1
                col.upsert([tokenized("w", f"第{n}个" + "苹果" * (n % 5 + 1))])
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    thread = threading.Thread(target=writer)
    thread.start()
    reads, deadline = 0, time.monotonic() + 4
    try:
        while time.monotonic() < deadline and not errors:
            (doc,) = col.get(["w"])
            assert doc is not None and doc.tokens, "a document came back without its tokens"
            assert_own_tokens(doc)
            reads += 1
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors
    assert reads > 3
