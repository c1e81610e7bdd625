"""Word senses: the method on vectors, and every senses RPC end to end on the real model."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from eval_senses import PADDED, evaluate, load

from embedsense.client import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from embedsense.client.cli import width
from embedsense.proto.v1 import embedsense_pb2 as pb
from embedsense.proto.v1 import embedsense_pb2_grpc as pb_grpc
from embedsense.server.config import EngineConfig
from embedsense.server.senses import method
from embedsense.server.senses.words import SentencePieces, locate, word_vectors

FRUIT = ["我喜欢吃苹果", "这个苹果又红又甜", "果园里的苹果熟了", "她削了一个苹果给孩子",
         "苹果和香蕉都是水果", "冰箱里还有两个苹果"]  # fmt: skip
COMPANY = ["苹果发布了新款手机", "我的苹果电脑坏了", "苹果公司的股价上涨", "他在苹果做软件工程师",
           "苹果的新系统很流畅", "这款苹果平板很轻"]  # fmt: skip


# ------------------------------------------------------------------ the method, on vectors


def synthetic(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Occurrences that share a big common component (like one word's vectors do) plus a
    small sense direction: raw cosines are all high, the sense hides in the remainder."""
    rng = np.random.default_rng(seed)
    common, a, b = rng.normal(size=(3, 32))
    make = lambda d, n: 10 * common + d + 0.3 * rng.normal(size=(n, 32))  # noqa: E731
    return make(a, 1)[0], {"a": make(a, 5), "b": make(b, 5)}


def test_centring_separates_senses_that_raw_cosine_barely_does():
    target, examples = synthetic()
    centred = method.disambiguate(target, examples, centre=True)
    raw = method.disambiguate(target, examples, centre=False)
    assert centred.label == "a" and centred.probabilities["a"] > 0.95
    margin = lambda d: d.similarities["a"] - d.similarities["b"]  # noqa: E731
    assert margin(centred) > 10 * margin(raw) > 0
    assert sum(centred.probabilities.values()) == pytest.approx(1.0)
    assert centred.nearest[0][0] == "a"


def test_induction_recovers_planted_senses_and_chooses_k():
    rng = np.random.default_rng(1)
    common = rng.normal(size=32) * 10
    directions = rng.normal(size=(3, 32))
    vectors = np.concatenate([common + d + 0.2 * rng.normal(size=(20, 32)) for d in directions])
    truth = np.repeat(np.arange(3), 20)
    result = method.induce(vectors)
    assert result.k == 3
    for cluster in range(3):  # every cluster is one planted sense
        assert len(set(truth[result.labels == cluster])) == 1
    assert method.induce(vectors, k=2).k == 2


def test_occurrences_alike_up_to_rounding_are_one_sense():
    """The same sentence stored several times: centring left only rounding noise, which
    unit vectors turned into directions, and induction split identical occurrences (or
    reported two senses, one of them empty)."""
    rng = np.random.default_rng(2)
    one = rng.normal(size=384).astype(np.float32)
    for noise in (0.0, 1e-6):
        vectors = np.tile(one, (6, 1)) + noise * rng.normal(size=(6, 384)).astype(np.float32)
        result = method.induce(vectors)
        assert result.k == 1 and set(result.labels) == {0}, noise
    assert method.induce(np.tile(one, (6, 1)), k=2).k == 2  # as asked, when asked


def test_features_are_unit_rows_as_documented():
    rng = np.random.default_rng(3)
    words, contexts = 5 * rng.normal(size=(4, 16)), 3 * rng.normal(size=(4, 16))
    for weight in (0.0, 1.0, method.CONTEXT_WEIGHT):
        rows = method.features(words, contexts, weight)
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-6)


def test_the_silhouette_is_the_textbook_one_without_an_n_by_n_matrix():
    rng = np.random.default_rng(5)
    x = method.unit(rng.normal(size=(120, 8)))
    labels = rng.integers(0, 3, 120)
    distance = 1 - x @ x.T  # the definition, pairwise (fine at this size)
    expected = []
    for i in range(len(x)):
        own = labels == labels[i]
        a = distance[i, own].sum() / (own.sum() - 1)
        b = min(distance[i, labels == c].mean() for c in set(labels) if c != labels[i])
        expected.append((b - a) / max(a, b))
    assert method._silhouette(x, labels) == pytest.approx(np.mean(expected), abs=1e-6)


def test_induction_of_20000_occurrences_stays_under_a_memory_ceiling():
    import tracemalloc

    rng = np.random.default_rng(6)
    directions = rng.normal(size=(4, 384))
    vectors = np.concatenate([d + 0.2 * rng.normal(size=(5000, 384)) for d in directions])
    vectors = vectors.astype(np.float32)  # 20,000 x 384: 30 MB
    tracemalloc.start()
    try:
        result = method.induce(vectors, max_k=method.MAX_SENSES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The n x n distance matrix alone would be 1.6 GB (float32) or 3.2 GB (float64).
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert result.k == 4
    with pytest.raises(ValueError, match="max_k is 21"):
        method.induce(vectors[:10], max_k=method.MAX_SENSES + 1)


def test_occurrences_are_ranked_as_their_feature_rows_would_be_in_a_fraction_of_the_memory():
    """The occurrence search built a sentence vector per occurrence and the (n, 2 * dim)
    feature rows several times over: ~700 MB at 50,000 occurrences of 384 dims."""
    import tracemalloc

    rng = np.random.default_rng(8)
    for n, documents, weight in ((1, 1, 2.0), (40, 6, 2.0), (300, 25, 0.5), (300, 25, 0.0)):
        words = (rng.normal(size=(n, 32)) + 2).astype(np.float32)
        contexts = (rng.normal(size=(documents, 32)) + 1).astype(np.float32)
        owner = rng.integers(0, documents, n)
        query_word, query_context = words[0] + 0.1, contexts[owner[0]] - 0.1
        rows = method.rank_by_sense(
            method.features(query_word[None], query_context[None], weight)[0],
            method.features(words, contexts[owner], weight),
        )
        ranked = method.rank_occurrences(query_word, query_context, words, contexts, owner, weight)
        np.testing.assert_allclose(ranked, rows, atol=1e-5)

    n = 50_000
    words = rng.normal(size=(n, 384)).astype(np.float32)  # 77 MB
    for sentences in (5_000, n):  # n: each occurrence in a sentence of its own
        contexts = rng.normal(size=(sentences, 384)).astype(np.float32)
        owner = np.repeat(np.arange(sentences), n // sentences)
        tracemalloc.start()
        try:
            method.rank_occurrences(words[0], contexts[0], words, contexts, owner)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB with {sentences} sentences"


def test_a_text_is_cut_into_sentences_that_hold_words():
    """Whitespace after a sentence's mark is no sentence of its own: a text of one sentence
    and a last line break has no pieces (its own encoding is its sentence's), and a blank
    line costs no engine row. Before: "苹果很甜。\\n" was two pieces, the second "\\n"."""
    pieces = SentencePieces(["苹果很甜。\n", "你好。\n\n再见。", "苹果很甜。", "我喜欢吃苹果"])
    assert pieces.texts == ["你好。\n\n", "再见。"] and pieces.pieces == [(1, 0, 5), (1, 5, 8)]


def _encoded(tokens: list[str], offsets: list[tuple[int, int]], dim: int = 4) -> SimpleNamespace:
    """An engine's encoding of a text, as SentencePieces reads it: specials at (0, 0)."""
    from_text = [end > start for start, end in offsets]
    tokenized = SimpleNamespace(tokens=tokens, offsets=offsets, from_text=from_text)
    vectors = np.arange(len(tokens) * dim, dtype=np.float32).reshape(len(tokens), dim)
    return SimpleNamespace(tokenized=tokenized, token_vectors=vectors)


def test_a_text_of_several_sentences_is_stored_with_each_sentences_tokens_in_place():
    """Its pieces' tokens of the text, their offsets moved into the whole text; where no
    piece holds a token of the text, the text's own encoding (an empty token list would
    read back from Milvus as no token vectors at all)."""
    pieces = SentencePieces(["你好。再见。", "苹果。"])
    whole = [_encoded(["<s>", "你好", "。", "再见", "。", "</s>"],
                      [(0, 0), (0, 2), (2, 3), (3, 5), (5, 6), (0, 0)]),
             _encoded(["<s>", "苹果", "。", "</s>"], [(0, 0), (0, 2), (2, 3), (0, 0)])]  # fmt: skip
    first = _encoded(["<s>", "你好", "。", "</s>"], [(0, 0), (0, 2), (2, 3), (0, 0)])
    second = _encoded(["<s>", "再见", "。", "</s>"], [(0, 0), (0, 2), (2, 3), (0, 0)])
    (tokens, vectors), (one, one_vectors) = pieces.stored(whole, [first, second])
    assert [(t.text, t.start, t.end) for t in tokens] == [
        ("你好", 0, 2), ("。", 2, 3), ("再见", 3, 5), ("。", 5, 6)]  # fmt: skip
    assert np.array_equal(vectors, np.concatenate([first.token_vectors[1:3],
                                                   second.token_vectors[1:3]]))  # fmt: skip
    assert len(one) == 4 and one_vectors is whole[1].token_vectors  # one sentence: as encoded
    bare = _encoded(["<s>", "</s>"], [(0, 0), (0, 0)])  # a tokenizer that kept nothing of it
    (tokens, vectors), _ = pieces.stored(whole, [bare, bare])
    assert len(tokens) == 6 and vectors is whole[0].token_vectors


def test_stored_occurrences_are_read_with_their_own_sentence_once_per_sentence():
    """No model: each character is a token whose vector marks its position, so a sentence's
    vector shows which characters it averaged. Before: every occurrence of a document got
    the whole document's vector."""
    from embedsense.server.index.store import Document, Token
    from embedsense.server.senses.senses import gather_occurrences

    def doc(doc_id: str, text: str) -> Document:
        tokens = [Token("", 0, 0)] + [Token(c, i, i + 1) for i, c in enumerate(text)]
        vectors = np.vstack([np.zeros(32), np.eye(32)[: len(text)]]).astype(np.float32)
        return Document(text, vectors[1], doc_id, {}, tokens, vectors)

    docs = {"a": doc("a", "苹果很甜。我吃苹果，也吃梨。"), "b": doc("b", "他买了苹果手机。"),
            "c": doc("c", "Apple\n苹果和苹果 see it! 是吗")}  # fmt: skip
    collection = SimpleNamespace(
        ids_containing=lambda word, limit: list(docs),
        get=lambda ids: [docs[i] for i in ids],
    )
    found = gather_occurrences(collection, "苹果")
    where = [(doc_id, o.start) for doc_id, o, _ in found.items]
    assert where == [("a", 0), ("a", 7), ("b", 3), ("c", 6), ("c", 9)]
    owner, contexts = np.concatenate(found.owners), np.concatenate(found.contexts)
    assert owner.tolist() == [0, 1, 2, 3, 3]  # c's two share their sentence's row
    sentences = [np.flatnonzero(row).tolist() for row in contexts]
    # c's first sentence runs to "! ": a single line break ends none.
    assert sentences == [list(range(0, 5)), list(range(5, 14)), list(range(8)), list(range(19))]
    # Clustering reads the word vectors alone: the same, and no sentence rows.
    words_only = gather_occurrences(collection, "苹果", with_sentences=False)
    assert [(doc_id, o.start) for doc_id, o, _ in words_only.items] == where
    np.testing.assert_array_equal(np.concatenate(words_only.words), np.concatenate(found.words))
    assert words_only.contexts == words_only.owners == [] and words_only.sentences == 0


# ------------------------------------------------------------------ end to end


def test_default_inventory_tells_the_two_apples_apart(client):
    fruit = client.disambiguate("我喜欢吃苹果", "苹果")
    company = client.disambiguate("苹果发布了新款手机", "苹果")
    assert fruit.label != company.label
    assert (fruit.label, company.label) == ("fruit", "company")
    assert fruit.span == (4, 6) and fruit.layers == [-1] and fruit.centred
    assert fruit.scores[0].label == "fruit" and fruit.scores[0].probability > 0.5
    assert sum(s.probability for s in fruit.scores) == pytest.approx(1.0, abs=1e-5)
    assert fruit.nearest and all("苹果" in text for _, text, _ in fruit.nearest)
    again = client.disambiguate("我喜欢吃苹果", "苹果")  # deterministic
    assert again.scores == fruit.scores and again.label == fruit.label


def test_disambiguate_with_given_senses_spans_and_occurrences(client):
    senses = {"grain": ["早上喝一碗小米粥", "地里的小米熟了"],
              "company": ["小米发布了新手机", "我买了小米的电视"]}  # fmt: skip
    assert client.disambiguate("奶奶熬了一锅小米粥", "小米", senses).label == "grain"
    text = "他用小米手机拍了一碗小米粥"
    second = client.disambiguate(text, "小米", senses, occurrence=1)
    assert second.span == (10, 12) and second.label == "grain"
    # Two senses in one sentence share its sentence vector: the word's own vectors decide.
    by_span = client.disambiguate(text, senses=senses, span=(2, 4), with_sentence=False)
    assert by_span.label == "company" and not by_span.with_sentence
    layered = client.disambiguate(text, "小米", senses, layers=[-1, -2], centre=False)
    assert layered.layers == [-1, -2] and not layered.centred


def test_a_span_with_an_occurrence_is_refused_by_every_call_that_takes_both(client, server):
    """Each names the occurrence. Before: the SDK and the server took the span and dropped
    the occurrence without a word, even one the text does not have; the CLI refused them."""
    text, senses = "我喜欢吃苹果", {"fruit": ["苹果很甜"], "company": ["苹果手机"]}
    for call in (
        lambda: client.disambiguate(text, "苹果", senses, occurrence=7, span=(4, 6)),
        lambda: client.explain(text, "苹果", occurrence=7, span=(4, 6)),
        lambda: client.search_occurrences("any", text, "苹果", occurrence=3, span=(4, 6)),
    ):
        with pytest.raises(ValueError, match="span and occurrence"):
            call()
    with grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.EmbedSenseStub(channel)
        span = pb.Span(start=4, end=6)
        for call, request in (
            (stub.Disambiguate, pb.DisambiguateRequest(text=text, span=span, occurrence=2)),
            (stub.Explain, pb.ExplainRequest(text=text, word="苹果", span=span, occurrence=2)),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                call(request)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "span and occurrence" in refused.value.details()
    assert client.disambiguate(text, senses=senses, span=(4, 6)).label == "fruit"


def test_an_example_holding_the_word_twice_stands_for_both_occurrences(client, server):
    """Each occurrence of the word in an example is of the example's sense: the example's
    word vector is their mean. Before: only its first occurrence counted (in the default
    inventory, 打 in 他打了好几次都没打通 and 花 in 花园里的花开得正好)."""
    twice = "他打了好几次都没打通。"
    senses = {"call": [twice, "我给妈妈打了个电话。"], "hit": ["他打了我一拳。", "别打孩子。"]}
    target = "晚上记得给我打电话。"
    got = client.disambiguate(target, "打", senses)
    occurrences = [locate(target, "打"), locate(twice, "打", occurrence=0),
                   locate(twice, "打", occurrence=1)] + [
                   locate(e, "打") for e in senses["call"][1:] + senses["hit"]]  # fmt: skip
    found = server.run(word_vectors(server.server.engine, occurrences))

    def similarities(twice_word: np.ndarray) -> dict[str, float]:
        words = np.vstack([found.words[:1], twice_word[None], found.words[3:]])
        contexts = np.delete(found.contexts, 2, axis=0)
        vectors = method.features(words, contexts)
        examples = {"call": vectors[1:3], "hit": vectors[3:]}
        return method.disambiguate(vectors[0], examples).similarities

    both, first = similarities(found.words[1:3].mean(axis=0)), similarities(found.words[1])
    assert {s.label: s.similarity for s in got.scores} == pytest.approx(both, abs=1e-4)
    assert abs(both["call"] - first["call"]) > 1e-3  # the second occurrence makes a difference


def test_sense_errors_name_the_offending_input(client):
    two = {"a": ["苹果很甜"], "b": ["苹果手机"]}
    with pytest.raises(InvalidArgument, match="does not occur"):
        client.disambiguate("我喜欢吃香蕉", "苹果", two)
    with pytest.raises(InvalidArgument, match="occurrence 2"):
        client.disambiguate("苹果和苹果", "苹果", two, occurrence=2)
    with pytest.raises(InvalidArgument, match="'b' has no examples"):
        client.disambiguate("苹果很好", "苹果", {"a": ["苹果很甜"], "b": []})
    with pytest.raises(InvalidArgument, match="does not contain the word: '香蕉很甜'"):
        client.disambiguate("苹果很好", "苹果", {"a": ["香蕉很甜"], "b": ["苹果手机"]})
    # As a word, as the text's own is found: the example was embedded at "pineapple".
    # ...and why, where it is one of the common slips, as for the text's own word.
    with pytest.raises(InvalidArgument, match=r"does not contain the word as a whole word: it "
                       r"is part of a longer word there \(.*\): 'a pineapple pie'"):  # fmt: skip
        pineapple = {"fruit": ["a pineapple pie"], "company": ["apple stock fell"]}
        client.disambiguate("an apple a day", "apple", pineapple)
    with pytest.raises(InvalidArgument, match=r"with other capitals .*: 'Apple stock fell'"):
        capitals = {"fruit": ["an apple pie"], "company": ["Apple stock fell"]}
        client.disambiguate("an apple a day", "apple", capitals)
    with pytest.raises(InvalidArgument, match="at least two senses"):
        client.disambiguate("苹果很好", "苹果", {"a": ["苹果很甜"]})
    with pytest.raises(InvalidArgument, match="a sense needs a label"):  # as "" is
        client.disambiguate("苹果很好", "苹果", {" ": ["苹果很甜"], "b": ["苹果手机"]})
    # Two labels that read as one ("a" and "a "), and a word of whitespace alone, were
    # taken, in a disambiguation and in a stored inventory alike.
    with pytest.raises(InvalidArgument, match=r"sense 'a ': whitespace around the label"):
        client.disambiguate("苹果很好", "苹果", {"a": ["苹果很甜"], "a ": ["苹果手机"]})
    with pytest.raises(InvalidArgument, match="word: empty or only whitespace"):
        client.create_inventory("blank-word", {" ": {"a": ["a b"], "b": ["c d"]}})
    with pytest.raises(InvalidArgument, match="word: only whitespace"):
        client.disambiguate("a b", " ", {"a": ["a b"], "b": ["c d"]})
    # What looks like the word, and is not it: say why, not just "does not occur".
    with pytest.raises(InvalidArgument, match="'苹果 ' does not occur.*whitespace around it"):
        client.disambiguate("我吃苹果", "苹果 ", two)
    cafe = {"drink": ["un café noir"], "place": ["le café est fermé"]}
    with pytest.raises(InvalidArgument, match="another Unicode form.*NFC"):
        client.disambiguate("cafe\u0301 noir", "café", cafe)  # e + a combining accent
    for text, word, why in (("我买了ＡＰＰＬＥ手机", "APPLE", "full-width"),
                            ("I love Apple pie", "apple", "other capitals"),
                            ("a Pineapple pie", "apple", "part of a longer word")):  # fmt: skip
        with pytest.raises(InvalidArgument, match=f"{word!r} does not occur.*{why}"):
            client.disambiguate(text, word, {"a": [f"{word} x"], "b": [f"{word} y"]})
    with pytest.raises(InvalidArgument, match="span"):
        client.disambiguate("苹果很好", senses=two, span=(3, 10))
    with pytest.raises(NotFound, match="no entry for '西瓜'"):
        client.disambiguate("西瓜很甜", "西瓜")
    with pytest.raises(NotFound, match="no inventory named 'nope'"):
        client.disambiguate("苹果很甜", "苹果", inventory="nope")
    with pytest.raises(InvalidArgument, match="layer"):
        client.disambiguate("苹果很甜", "苹果", layers=[99])


def test_inventories_are_created_used_listed_and_deleted(client):
    words = {"小米": {"grain": ["小米粥很香", "种小米"], "company": ["小米手机", "小米公司"]}}
    made = client.create_inventory("mine", words)
    assert made.words == words and not made.builtin
    with pytest.raises(AlreadyExists):
        client.create_inventory("mine", words)
    words["小米"]["grain"].append("一袋小米")
    assert client.create_inventory("mine", words, replace=True).words == words
    assert client.disambiguate("喝小米粥", "小米", inventory="mine").label == "grain"
    listed = {i.name: i for i in client.list_inventories()}
    assert listed["default"].builtin and "苹果" in listed["default"].words
    assert listed["mine"].words == words
    with pytest.raises(InvalidArgument, match="stays"):
        client.delete_inventory("default")
    with pytest.raises(AlreadyExists, match="ships with the server"):
        client.create_inventory("default", words)
    with pytest.raises(InvalidArgument, match="does not contain"):
        client.create_inventory("bad", {"小米": {"a": ["大米"], "b": ["小米"]}})
    with pytest.raises(InvalidArgument, match="inventory name"):  # "$" let it through
        client.create_inventory("mine\n", words)
    client.delete_inventory("mine")
    with pytest.raises(NotFound):
        client.delete_inventory("mine")


def test_an_inventorys_examples_are_checked_as_given_senses_are(client, server):
    """A stored example the model cannot take was accepted, then failed every Disambiguate
    that used it (as "overloaded: retry later" for one too long)."""
    limit = server.settings.max_text_chars
    for example, why in ((f"苹果{'很' * limit}", f"{limit + 2} characters; the limit is {limit}"),
                         ("苹果\x00很甜", "control character")):  # fmt: skip
        words = {"苹果": {"a": [example], "b": ["苹果手机"]}}
        with pytest.raises(
            InvalidArgument, match=rf"words\['苹果'\]\.senses\['a'\]\.examples\[0\].*{why}"
        ):
            client.create_inventory("unusable", words)
        with pytest.raises(NotFound):
            client.disambiguate("我喜欢吃苹果", "苹果", inventory="unusable")


def test_an_inventory_word_with_whitespace_around_it_is_refused_as_a_label_is(client):
    """The word " 苹果" was stored, which no lookup of 苹果 finds, while a label " a" was
    refused."""
    spaced = {" 苹果": {"fruit": ["我喜欢吃 苹果"], "company": ["我买了 苹果手机"]}}
    with pytest.raises(InvalidArgument, match=r"word ' 苹果': whitespace around it"):
        client.create_inventory("spaced", spaced)
    with pytest.raises(NotFound):
        client.get_inventory("spaced")
    with pytest.raises(InvalidArgument, match=r"word '苹果\\u3000': whitespace around it"):
        client.disambiguate("我喜欢吃苹果\u3000", "苹果\u3000", spaced[" 苹果"])


def test_the_sdk_names_a_label_word_or_example_of_the_wrong_kind(client):
    """A label or an inventory's word that was not a str raised protobuf's TypeError, its
    message a dump of the request; an example that was not a str was "a list of example
    texts", said of a list."""
    text, fruit = "我喜欢吃苹果", ["苹果很甜"]
    for senses, said in (
        ({1: fruit, 2: ["苹果手机"]}, r"senses: the label 1 is an int; a label is a str"),
        ({"a": [1], "b": fruit}, r"senses\['a'\]\[0\]: an example text \(a str\), not int"),
        ({"a": "苹果很甜", "b": fruit}, r"senses\['a'\]: a list of example texts, not str"),
    ):
        with pytest.raises(TypeError, match=said):
            client.disambiguate(text, "苹果", senses)
    with pytest.raises(TypeError, match=r"words: the word 7 is an int; a word is a str"):
        client.create_inventory("typed", {7: {"a": fruit, "b": fruit}})
    # No senses at all went on the wire as none given: judged against the default inventory.
    with pytest.raises(ValueError, match="senses: empty; give two senses or more, or leave"):
        client.disambiguate(text, "苹果", {})


@pytest.fixture(scope="module")
def apples(server):
    from embedsense.client import Client

    with Client(server.target, timeout=120) as c:
        c.create_collection("apples", store_tokens=True)
        c.create_collection("no-tokens")
        docs = [{"id": f"fruit-{i}", "text": t, "metadata": {"sense": "fruit"}}
                for i, t in enumerate(FRUIT)]  # fmt: skip
        docs += [{"id": f"company-{i}", "text": t, "metadata": {"sense": "company"}}
                 for i, t in enumerate(COMPANY)]  # fmt: skip
        docs.append({"id": "both", "text": "他一边吃苹果一边用苹果手机看新闻"})
        c.upsert("apples", docs, show_progress_bar=False)
        c.upsert("no-tokens", FRUIT[:2], show_progress_bar=False)
        yield "apples"
        c.drop_collection("apples")
        c.drop_collection("no-tokens")


def test_a_word_of_whitespace_alone_is_invalid_in_every_call_that_takes_a_word(client, apples):
    """As the inventories and given senses refuse it. Before: Disambiguate answered NOT_FOUND
    (no inventory entry for ' '), SearchOccurrences an empty answer, Explain and
    CompareLayers an answer about the space between two words."""
    text = "我 喜欢吃苹果"
    for word in (" ", "\t", "\u3000"):
        for call, args in (
            (client.disambiguate, (text, word)),
            (client.search_occurrences, (apples, text, word)),
            (client.induce_senses, (apples, word)),
            (client.explain, (text, word)),
            (client.compare_layers, (text, text, word)),
        ):
            with pytest.raises(InvalidArgument, match="word: .*only whitespace"):
                call(*args)
    assert client.explain(text, "苹果").span == (5, 7)  # a word beside the space still is one


def test_search_occurrences_finds_the_same_sense(client, apples):
    found = client.search_occurrences(apples, "我买了最新的苹果手机", "苹果", k=5)
    assert all(o.text[o.span[0] : o.span[1]] == "苹果" for o in found)
    assert [o.score for o in found] == sorted((o.score for o in found), reverse=True)
    company = [o for o in found if o.metadata.get("sense") == "company" or o.span[0] > 5]
    assert len(company) >= 4  # of the 5 best, at least 4 are the company
    fruit = client.search_occurrences(apples, "超市里的苹果很新鲜", "苹果", k=3)
    assert all(o.metadata.get("sense") == "fruit" or o.span[0] < 5 for o in fruit)
    with pytest.raises(FailedPrecondition, match="store_tokens"):
        client.search_occurrences("no-tokens", "我喜欢吃苹果", "苹果")
    with pytest.raises(NotFound):
        client.search_occurrences("nope", "苹果", "苹果")


def test_occurrences_in_a_document_of_two_senses_are_ranked_by_their_own_sentence(client):
    """Documents each joining two held-out sentences of the evaluation that use the word in
    two senses: every support example of a sense, searched, ranks that sense's occurrences
    first (mean average precision over 11 words): 0.84, each occurrence read in its own
    sentence encoded alone. Before: 0.70, where the word's vector had seen the whole document
    (the sentence vector its own sentence's tokens'); and before that 0.59, with the whole
    document's vector, which its two occurrences share."""
    precisions = []
    for word, senses in load().items():
        name = f"two-senses-{len(precisions)}"
        client.create_collection(name, store_tokens=True)
        try:
            labels = list(senses)
            docs, where = [], {}  # doc id -> (length of its first sentence, its two senses)
            for first, second in itertools.permutations(labels, 2):
                pairs = zip(senses[first]["test"], senses[second]["test"], strict=True)
                for i, (a, b) in enumerate(pairs):
                    docs.append({"id": f"{first}-{second}-{i}", "text": a + b})
                    where[docs[-1]["id"]] = (len(a), first, second)
            client.upsert(name, docs, show_progress_bar=False)
            for label in labels:
                for example in senses[label]["support"]:
                    found = client.search_occurrences(name, example, word, k=1000)
                    relevant = np.array([where[o.id][1 if o.span[0] < where[o.id][0] else 2]
                                         == label for o in found])  # fmt: skip
                    hits = np.cumsum(relevant)
                    ranks = np.arange(1, len(found) + 1)
                    precisions.append(float((hits / ranks)[relevant].mean()))
        finally:
            client.drop_collection(name)
    assert np.mean(precisions) >= 0.78, np.mean(precisions)


def test_an_occurrence_is_read_in_its_own_sentence_however_long_its_document(client):
    """Each of FRUIT and COMPANY stored twice, alone and inside 30 neutral sentences: the
    search ranks by sense, and induction splits by sense, not by the documents' length.
    Before, an occurrence's vectors had seen its whole document: 6 of the search's best 12
    were of the other sense, and the two induced senses were the short and the long
    documents (6 of each sense in each); and a sentence before the word's could turn its
    sense in a call's text."""
    before, after = PADDED
    docs = [{"id": f"{sense}-{i}-{long}", "text": before + text + "。" + after if long else text,
             "metadata": {"sense": sense}}
            for sense, texts in (("fruit", FRUIT), ("company", COMPANY))
            for i, text in enumerate(texts) for long in ("long", "")]  # fmt: skip
    client.create_collection("padded", store_tokens=True)
    try:
        client.upsert("padded", docs, show_progress_bar=False)
        for query, sense in (("我买了最新的苹果手机", "company"), ("超市里的苹果很新鲜", "fruit")):
            best = client.search_occurrences("padded", query, "苹果", k=12)
            assert [o.metadata["sense"] for o in best].count(sense) >= 9, [o.id for o in best]
        induced = client.induce_senses("padded", "苹果", k=2, central=12)
        for found in induced.senses:
            assert len({o.metadata["sense"] for o in found.central}) == 1, found
        # A text given in a call: its sentence alone settles the word's sense (was: fruit).
        judged = client.disambiguate("我喜欢吃水果。我买了最新的苹果手机。", "苹果")
        assert judged.label == "company"
    finally:
        client.drop_collection("padded")


def test_inducing_senses_reads_no_sentence(client, apples, monkeypatch):
    """Clustering reads the word vectors alone (method.induce), so InduceSenses finds no
    sentence and averages none. Before: every occurrence's sentence was found and averaged,
    then left unused."""
    from embedsense.server.senses import words

    def no_sentences(text: str) -> None:
        raise AssertionError(f"a sentence read to induce senses: {text[:20]}")

    monkeypatch.setattr(words, "Sentences", no_sentences)
    induced = client.induce_senses(apples, "苹果", k=2)
    assert induced.occurrences == 14 and sum(s.size for s in induced.senses) == 14


def test_induce_senses_splits_fruit_from_company(client, apples):
    induced = client.induce_senses(apples, "苹果", k=2)
    assert induced.occurrences == 14 and len(induced.senses) == 2
    assert sum(s.size for s in induced.senses) == 14
    for sense in induced.senses:
        labels = [o.metadata.get("sense") for o in sense.central if "sense" in o.metadata]
        assert len(set(labels)) <= 1, labels  # the central members agree on one sense
    auto = client.induce_senses(apples, "苹果")
    assert len(auto.senses) >= 2 and -1 <= auto.silhouette <= 1
    with pytest.raises(FailedPrecondition):
        client.induce_senses("no-tokens", "苹果")
    for bound in ({"k": 10**6}, {"max_k": 2**31}, {"k": 21}):
        with pytest.raises(InvalidArgument, match="senses"):
            client.induce_senses(apples, "苹果", **bound)


def test_more_occurrences_than_a_reply_holds_are_refused_not_cut(client, apples):
    """k past 1,000 occurrences, or central past 1,000 per sense, is INVALID_ARGUMENT, as a
    search's k past its bound is (and HTTP's 422): gRPC answered 1,000 without a word."""
    with pytest.raises(InvalidArgument, match="k must be within 1-1,000, got 1001"):
        client.search_occurrences(apples, "我喜欢吃苹果", "苹果", k=1001)
    with pytest.raises(InvalidArgument, match="central must be within 1-1,000, got 5000"):
        client.induce_senses(apples, "苹果", central=5000)
    assert len(client.search_occurrences(apples, "我喜欢吃苹果", "苹果", k=1000)) == 14
    assert client.induce_senses(apples, "苹果", k=2, central=1000).occurrences == 14


# A document that holds its word 1,500 times in ~6,000 tokens (windows of the model's 512).
LONG = "苹果很甜。" * 1500


@pytest.fixture(scope="module")
def small_replies(e5, tmp_path_factory):
    """A server whose replies may be at most 1 MiB, with the long document stored."""
    from conftest import ServerThread

    from embedsense.client import Client

    running = ServerThread(e5, tmp_path_factory.mktemp("small-replies"), max_message_bytes=2**20)
    with Client(running.target, timeout=120) as c:
        c.create_collection("long", store_tokens=True)
        c.upsert("long", [{"id": "long", "text": LONG}, {"id": "ws", "text": "hello   world"}],
                 show_progress_bar=False)  # fmt: skip
    yield running
    running.stop()


def test_a_sense_search_through_a_long_document_leaves_the_server_serving(small_replies):
    """The occurrences' vectors are read off the event loop, once per document: the search
    through 1,500 occurrences held the loop for seconds, and Info waited past 5 s."""
    from embedsense.client import Client, DeadlineExceeded

    with (
        Client(small_replies.target, timeout=120) as c,
        Client(small_replies.target, timeout=5) as hurried,
    ):
        found: list = []
        searching = threading.Thread(
            target=lambda: found.extend(c.search_occurrences("long", "我喜欢吃苹果", "苹果", k=3))
        )
        searching.start()
        time.sleep(0.5)  # the search is under way
        try:
            assert hurried.info().dim == 384  # answered while the search runs
        except DeadlineExceeded:
            pytest.fail("Info waited for the sense search: the event loop was blocked")
        finally:
            searching.join()
        assert len(found) == 3 and all(o.text[o.span[0] : o.span[1]] == "苹果" for o in found)
        induced = c.induce_senses("long", "苹果", k=2, central=2)
        assert induced.occurrences == 1500


def test_a_sense_search_compares_at_most_its_bound_of_occurrences(small_replies, monkeypatch):
    from embedsense.client import Client
    from embedsense.server.senses import senses

    monkeypatch.setattr(senses, "MAX_COMPARED", 100)
    with grpc.insecure_channel(small_replies.target) as channel:
        search = pb_grpc.EmbedSenseStub(channel).SearchOccurrences
        asked = pb.SearchOccurrencesRequest(collection="long", text="我吃苹果", word="苹果", k=5)
        reply = search(asked)
    assert (len(reply.occurrences), reply.compared) == (5, 100)
    with Client(small_replies.target, timeout=120) as c:
        assert c.induce_senses("long", "苹果", k=2).occurrences == 100


def test_a_sense_reply_over_the_message_limit_is_refused_in_words(small_replies):
    """Each occurrence carries its document's text: 1,000 of LONG are 22 MB, over the
    server's 1 MiB. The caller is told to ask for fewer, where gRPC's own "Sent message
    larger than max" came after all the work."""
    from embedsense.client import Client, ResourceExhausted

    with Client(small_replies.target, timeout=120) as c:
        with pytest.raises(ResourceExhausted, match=r"reply.*max_message_bytes.*fewer"):
            c.search_occurrences("long", "我喜欢吃苹果", "苹果", k=1000)
        with pytest.raises(ResourceExhausted, match=r"reply.*max_message_bytes.*fewer"):
            c.induce_senses("long", "苹果", k=2, central=1000)
        assert len(c.search_occurrences("long", "我喜欢吃苹果", "苹果", k=5)) == 5


def test_inventories_too_large_to_list_at_once_are_refused_in_words(small_replies):
    """Two inventories of ~0.6 MB each fit one by one and not together in the 1 MiB reply:
    ListInventories failed in gRPC core ("Sent message larger than max"), no word of why."""
    from embedsense.client import Client, ResourceExhausted

    example = "苹果" + "甜" * 5_000  # ~15 KB of UTF-8
    words = {"苹果": {"fruit": [example] * 20, "company": [example] * 20}}
    with Client(small_replies.target, timeout=120) as c:
        try:
            for name in ("big-1", "big-2"):
                c.create_inventory(name, words)
            with pytest.raises(ResourceExhausted, match=r"max_message_bytes.*delete one"):
                c.list_inventories()
            c.delete_inventory("big-2")
            assert "big-1" in {i.name for i in c.list_inventories()}
        finally:
            for name in ("big-1", "big-2"):
                with contextlib.suppress(NotFound):
                    c.delete_inventory(name)


def test_an_inventory_stored_under_a_larger_limit_is_refused_in_words(e5, tmp_path):
    """A server restarted with a smaller max_message_bytes than an inventory it stores: the
    reply is refused with what to do, and the inventory can still be deleted."""
    from conftest import ServerThread

    from embedsense.client import Client, ResourceExhausted

    example = "苹果" + "甜" * 5_000  # ~15 KB of UTF-8: the inventory is ~0.6 MB
    words = {"苹果": {"fruit": [example] * 20, "company": [example] * 20}}
    roomy = ServerThread(e5, tmp_path)
    try:
        with Client(roomy.target, timeout=120) as c:
            c.create_inventory("big", words)
    finally:
        roomy.stop()
    tight = ServerThread(e5, tmp_path, max_message_bytes=2**19)
    try:
        with Client(tight.target, timeout=120) as c:
            with pytest.raises(ResourceExhausted, match=r"max_message_bytes.*larger"):
                c.get_inventory("big")
            assert c.get_inventory("default").builtin  # the server goes on serving
            c.delete_inventory("big")
            with pytest.raises(NotFound):
                c.get_inventory("big")
    finally:
        tight.stop()


def test_a_word_of_whitespace_is_refused_though_the_collection_holds_it(small_replies):
    """It was read from the collection ("hello   world"), to be told that no token covers
    it: whitespace is no word, whether a collection holds it or not."""
    from embedsense.client import Client

    with Client(small_replies.target, timeout=120) as c:
        with pytest.raises(InvalidArgument, match="word: only whitespace"):
            c.induce_senses("long", "  ")


def _cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embedsense.client.cli", "--target",
                           server.target, *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_cli_senses_commands(server, apples):
    cli = functools.partial(_cli, server)
    shown = cli("disambiguate", "我买了最新的苹果手机", "苹果")
    assert shown.returncode == 0 and "-> company" in shown.stdout
    given = cli("--json", "disambiguate", "喝小米粥", "小米", "--sense", "grain=小米粥",
                "--sense", "company=小米手机")  # fmt: skip
    assert json.loads(given.stdout)["label"] == "grain"
    assert "default" in cli("inventory", "list").stdout
    occurrences = cli("occurrences", apples, "我喜欢吃苹果", "苹果", "-k", "2")
    assert occurrences.returncode == 0 and "[苹果]" in occurrences.stdout
    assert "sense 1" in cli("induce", apples, "苹果", "-k", "2").stdout
    one = cli("induce", apples, "苹果", "-k", "1")
    assert one.returncode == 0 and ", 1 sense (silhouette" in one.stdout, one  # "1 senses"
    # The SDK's options, on the command line too (the second 苹果 of the text: the fruit).
    second = cli("--json", "occurrences", apples, "苹果公司的员工都爱吃苹果", "苹果", "-k", "3",
                 "--occurrence", "1")  # fmt: skip
    assert second.returncode == 0, second.stderr
    first = cli("--json", "occurrences", apples, "苹果公司的员工都爱吃苹果", "苹果", "-k", "3")
    assert json.loads(second.stdout) != json.loads(first.stdout)
    induced = json.loads(cli("--json", "induce", apples, "苹果", "--max-k", "2",
                             "--central", "1").stdout)  # fmt: skip
    assert len(induced["senses"]) == 2 and all(len(s["central"]) == 1 for s in induced["senses"])


def test_the_cli_shows_an_occurrence_in_a_long_document_with_its_surroundings(server, client):
    """Before: the table row held the whole document (here 1,507 characters, its 100
    line breaks breaking the table); --json keeps the whole text."""
    text = "今天天气很好。\n" * 100 + "我喜欢吃苹果。" + "明天可能下雨。" * 100
    client.create_collection("long-cli", store_tokens=True)
    try:
        client.upsert("long-cli", [{"id": "long-cli", "text": text}], show_progress_bar=False)
        shown = _cli(server, "occurrences", "long-cli", "我喜欢吃苹果", "苹果", "-k", "1")
        assert shown.returncode == 0, shown.stderr
        row = next(line for line in shown.stdout.splitlines() if "[苹果]" in line)
        assert "好。 今天天气很好。 我喜欢吃[苹果]。明天可能下雨。" in row
        assert row.count("…") == 2 and len(row) < 150
        found = _cli(server, "--json", "occurrences", "long-cli", "我喜欢吃苹果", "苹果", "-k", "1")
        assert json.loads(found.stdout)[0]["text"] == text
    finally:
        client.drop_collection("long-cli")


def test_an_inventory_is_read_alone_by_name(client, server):
    """GetInventory: one inventory's senses, without listing every inventory's examples.
    Before: the only way to read one was ListInventories, all of them in one reply."""
    words = {"小米": {"grain": ["小米粥很香"], "company": ["小米手机"]}}
    client.create_inventory("read-alone", words)
    try:
        got = client.get_inventory("read-alone")
        assert got.name == "read-alone" and got.words == words and not got.builtin
        default = client.get_inventory("default")
        assert default.builtin and "苹果" in default.words
        with pytest.raises(NotFound, match="no inventory named 'nope'"):
            client.get_inventory("nope")
        shown = _cli(server, "inventory", "show", "read-alone")
        assert shown.returncode == 0, shown.stderr
        assert "grain" in shown.stdout and "小米粥很香" in shown.stdout
        as_json = json.loads(_cli(server, "--json", "inventory", "show", "read-alone").stdout)
        assert as_json == {"name": "read-alone", "words": words, "builtin": False}
        assert _cli(server, "inventory", "show").returncode == 2  # no NAME
        assert _cli(server, "inventory", "show", "read-alone", "words.json").returncode == 2
    finally:
        client.delete_inventory("read-alone")


def test_a_name_no_inventory_can_have_is_refused_alike_by_every_inventory_call(client):
    """Before: create refused "" and "a b" as names (INVALID_ARGUMENT), while delete answered
    NOT_FOUND for them, as if such an inventory might have existed."""
    for name in ("", "a b", "x" * 65):
        with pytest.raises(InvalidArgument, match="inventory name"):
            client.create_inventory(name, {"小米": {"a": ["小米粥"], "b": ["小米手机"]}})
        with pytest.raises(InvalidArgument, match="inventory name"):
            client.delete_inventory(name)
        with pytest.raises(InvalidArgument, match="inventory name"):
            client.get_inventory(name)
        if name:  # "" is no inventory given: the default
            with pytest.raises(InvalidArgument, match="inventory name"):
                client.disambiguate("我喜欢吃苹果", "苹果", inventory=name)


def test_the_inventory_table_keeps_each_inventory_to_one_short_line(server, client):
    """Before: the words column held every word of an inventory, one line of any length."""
    words = {f"词{i}": {"a": [f"词{i}甲"], "b": [f"词{i}乙"]} for i in range(200)}
    client.create_inventory("wide", words)
    try:
        shown = _cli(server, "inventory", "list")
        assert shown.returncode == 0, shown.stderr
        row = next(line for line in shown.stdout.splitlines() if line.startswith("wide"))
        assert "200" in row and width(row) < 120, row
        listed = json.loads(_cli(server, "--json", "inventory", "list").stdout)
        assert len(next(i for i in listed if i["name"] == "wide")["words"]) == 200
    finally:
        client.delete_inventory("wide")


def test_an_occurrence_search_says_how_many_occurrences_it_compared(client, server, apples):
    """SearchOccurrences' `compared` reached gRPC callers only: the SDK returned a bare list.
    The list it returns carries it, and the CLI prints it."""
    from embedsense.client import AsyncClient

    found = client.search_occurrences(apples, "我买了最新的苹果手机", "苹果", k=3)
    assert len(found) == 3 and found.compared == 14  # 12 documents, "both" holds two

    async def through_aio() -> int:
        async with AsyncClient(server.target) as c:
            return (await c.search_occurrences(apples, "我喜欢吃苹果", "苹果", k=2)).compared

    assert asyncio.run(through_aio()) == 14
    shown = _cli(server, "occurrences", apples, "我喜欢吃苹果", "苹果", "-k", "2")
    assert shown.returncode == 0 and "best 2 of 14 occurrences" in shown.stdout, shown.stdout


def test_a_word_the_collection_lacks_has_no_occurrences_rather_than_an_error(
    client, server, apples
):
    """A search that finds nothing answers nothing, as Search does with a filter no document
    matches. Before: INVALID_ARGUMENT, as if the request were malformed, so a program
    searching a list of words had to catch an error for each one the collection lacks."""
    none = client.search_occurrences(apples, "我喜欢吃西瓜", "西瓜")
    assert (list(none), none.compared) == ([], 0)
    with grpc.insecure_channel(server.target) as channel:
        search = pb_grpc.EmbedSenseStub(channel).SearchOccurrences
        reply = search(pb.SearchOccurrencesRequest(collection=apples, text="西瓜", word="西瓜"))
    assert (list(reply.occurrences), reply.compared) == ([], 0)
    shown = _cli(server, "occurrences", apples, "我喜欢吃西瓜", "西瓜")
    assert shown.returncode == 0, shown.stderr
    assert f"'西瓜' does not occur in {apples!r}" in shown.stdout, shown.stdout
    with pytest.raises(InvalidArgument, match="does not occur in collection"):
        client.induce_senses(apples, "西瓜")  # nothing to split is still an error


def test_a_word_stored_once_is_one_sense_as_too_few_to_split(client):
    """As two occurrences were, and as docs/senses.md says; one was INVALID_ARGUMENT
    ("occurs once: nothing to split"), as if the request were malformed."""
    client.create_collection("durian", store_tokens=True)
    client.upsert("durian", ["我喜欢吃榴莲", "今天天气很好"])
    induced = client.induce_senses("durian", "榴莲")
    assert induced.occurrences == 1 and [s.size for s in induced.senses] == [1]
    assert induced.senses[0].central[0].text == "我喜欢吃榴莲"
    one = client.induce_senses("durian", "榴莲", k=1)  # the same answer: k=1 scored it 0
    assert one.senses[0].central[0].score == pytest.approx(induced.senses[0].central[0].score)
    assert one.senses[0].central[0].score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(InvalidArgument, match="k: 2 senses of 1 occurrences"):
        client.induce_senses("durian", "榴莲", k=2)


def test_the_cli_judges_the_occurrence_a_span_names_and_the_word_alone(server):
    """The SDK's `span` and `with_sentence`, on the command line too."""
    text = "苹果公司的员工都爱吃苹果"
    first = json.loads(_cli(server, "--json", "disambiguate", text, "苹果").stdout)
    second = json.loads(_cli(server, "--json", "disambiguate", text, "苹果",
                             "--span", "10:12").stdout)  # fmt: skip
    assert first["span"] == [0, 2] and second["span"] == [10, 12]
    assert second["scores"] != first["scores"]
    alone = json.loads(_cli(server, "--json", "disambiguate", text, "苹果", "--word-only").stdout)
    assert alone["with_sentence"] is False and first["with_sentence"] is True
    for bad in ("10", "12:10", "a:b"):
        refused = _cli(server, "disambiguate", text, "苹果", "--span", bad)
        assert refused.returncode == 2 and "--span" in refused.stderr, (bad, refused.stderr)
    twice = _cli(server, "disambiguate", text, "苹果", "--span", "10:12", "--occurrence", "1")
    assert twice.returncode == 2 and "--span" in twice.stderr
    # A span names the word: WORD was required beside it, and "" printed " -> company".
    by_span = _cli(server, "disambiguate", text, "--span", "10:12")
    assert by_span.returncode == 0 and "\n苹果 -> " in by_span.stdout, by_span.stderr
    spanned_only = _cli(server, "disambiguate", text, "", "--span", "0:2")
    assert spanned_only.returncode == 0 and "\n苹果 -> " in spanned_only.stdout
    neither = _cli(server, "disambiguate", text)
    assert neither.returncode == 2 and "WORD or --span" in neither.stderr, neither.stderr


def test_the_sdk_refuses_k_with_max_k_as_the_cli_does(client, apples):
    """Before: induce_senses(k=3, max_k=2) gave 3 senses, max_k dropped without a word."""
    with pytest.raises(ValueError, match="max_k"):
        client.induce_senses(apples, "苹果", k=3, max_k=2)
    with pytest.raises(ValueError, match="max_k"):  # was sent as 0, "not given": 6
        client.induce_senses(apples, "苹果", max_k=0)
    assert len(client.induce_senses(apples, "苹果", max_k=2).senses) == 2


def test_the_server_refuses_a_k_past_max_k_from_any_caller(server, apples):
    """A caller other than this SDK (grpcurl, another language) sending k=3 with max_k=2:
    the server took k and dropped max_k without a word. A k within max_k agrees with it, and
    is what every SDK before sent (max_k=6 beside each k)."""
    with grpc.insecure_channel(server.target) as channel:
        induce = pb_grpc.EmbedSenseStub(channel).InduceSenses
        with pytest.raises(grpc.RpcError) as refused:
            induce(pb.InduceSensesRequest(collection=apples, word="苹果", k=3, max_k=2))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_k" in refused.value.details() and "give one" in refused.value.details()
        chosen = induce(pb.InduceSensesRequest(collection=apples, word="苹果", max_k=2))
        assert len(chosen.senses) == 2
        assert len(induce(pb.InduceSensesRequest(collection=apples, word="苹果", k=3)).senses) == 3
        earlier_sdk = pb.InduceSensesRequest(collection=apples, word="苹果", k=2, max_k=6)
        assert len(induce(earlier_sdk).senses) == 2


def test_evaluation_on_a_slice_is_well_above_chance(e5):
    data = load(["苹果", "打", "花"], per_sense=4)
    fp32 = EngineConfig(dtype="float32", warmup=False)
    results = asyncio.run(evaluate(e5, data, layer_choices={"last": [-1]}, config=fp32))
    accuracy = results["accuracy"]["word + sentence, last, centred"]["overall"]
    assert accuracy >= 0.85  # chance: 1/2 for 苹果 and 花, 1/3 for 打
    for word, ways in results["long documents"].items():  # stored alone and inside 30 others
        alone, whole = ways["each sentence alone"], ways["whole document"]
        assert alone["purity_by_length"] <= 0.6 <= 0.9 <= whole["purity_by_length"], word
        assert alone["map"] > whole["map"] and alone["purity"] > whole["purity"], word


def test_sense_calls_on_another_models_vectors_or_more_senses_than_occurrences_are_refused(
    e5, tmp_path
):
    """A collection made under another model (a server restarted with another --model on
    the same data): the occurrence search compared the served model's vectors with its
    token vectors (numpy's broadcast error, INTERNAL, or at one size meaningless scores).
    And k above the occurrences was cut to their number in silence."""
    import sqlite3

    from conftest import ServerThread

    from embedsense.client import Client

    running = ServerThread(e5, tmp_path)
    try:
        with Client(running.target, timeout=120) as c:
            c.create_collection("few", store_tokens=True)
            c.upsert("few", FRUIT[:3], show_progress_bar=False)
            with pytest.raises(InvalidArgument, match="k: 5 senses of 3 occurrences"):
                c.induce_senses("few", "苹果", k=5)
            assert sum(s.size for s in c.induce_senses("few", "苹果", k=3).senses) == 3
    finally:
        running.stop()
    with sqlite3.connect(tmp_path / "embedsense.sqlite3") as store:
        store.execute("UPDATE collections SET model = 'another-model' WHERE name = 'few'")
    store.close()
    running = ServerThread(e5, tmp_path)
    try:
        with Client(running.target, timeout=120) as c:
            for call in (lambda: c.search_occurrences("few", "我喜欢吃苹果", "苹果"),
                         lambda: c.induce_senses("few", "苹果")):  # fmt: skip
                with pytest.raises(FailedPrecondition, match="'another-model'"):
                    call()
    finally:
        running.stop()


@pytest.fixture(scope="module")
def many_apples(small_replies):
    """120 short documents holding 苹果, read one at a time by the tests below."""
    from embedsense.client import Client

    with Client(small_replies.target, timeout=120) as c:
        c.create_collection("many", store_tokens=True)
        c.upsert("many", numbered_apples(120), show_progress_bar=False)
    return small_replies.target


def numbered_apples(n: int) -> list[dict[str, str]]:
    return [{"id": f"m{i}", "text": f"{FRUIT[i % 6]}，第{i}个"} for i in range(n)]


@pytest.fixture
def slow_reads(monkeypatch):
    """Each sense call reads its documents one at a time, 50 ms each: the times of the reads."""
    from embedsense.server.index.collection import Collection
    from embedsense.server.senses import senses

    monkeypatch.setattr(senses, "DOCUMENTS_PER_READ", 1)
    reads: list[float] = []
    read = Collection.get

    def slowly(self, ids):
        reads.append(time.monotonic())
        time.sleep(0.05)
        return read(self, ids)

    monkeypatch.setattr(Collection, "get", slowly)
    return reads


def test_a_sense_call_past_its_deadline_stops_its_work(many_apples, slow_reads):
    """Before: the call ended with DEADLINE_EXCEEDED and its thread read on through every
    document (here 6 s), for nobody."""
    with grpc.insecure_channel(many_apples) as channel:
        search = pb_grpc.EmbedSenseStub(channel).SearchOccurrences
        asked = pb.SearchOccurrencesRequest(collection="many", text="我吃苹果", word="苹果")
        with pytest.raises(grpc.RpcError) as failed:
            search(asked, timeout=0.5)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(0.5)
    stopped_at = len(slow_reads)
    time.sleep(1.0)
    assert len(slow_reads) == stopped_at < 40


def test_sense_calls_leave_the_threads_of_other_calls_free(many_apples, slow_reads):
    """Before: sense calls read on asyncio's default threads, which every call's index work
    shares (at most 32; 6 on two cores): 40 of them at once held them all for seconds, and
    a search waited behind them past its deadline."""
    from embedsense.client import Client, Retry

    with grpc.insecure_channel(many_apples) as channel:
        search = pb_grpc.EmbedSenseStub(channel).SearchOccurrences
        asked = pb.SearchOccurrencesRequest(collection="many", text="我吃苹果", word="苹果")
        calls = [search.future(asked, timeout=60) for _ in range(40)]
        try:
            time.sleep(0.5)  # every one of them started
            with Client(many_apples, timeout=3, retry=Retry(attempts=1)) as hurried:
                assert len(hurried.search("many", "苹果", k=3)) == 3
            assert not any(call.done() for call in calls)  # the sense calls were still at work
        finally:
            for call in calls:
                call.cancel()
    time.sleep(0.5)
    stopped_at = len(slow_reads)
    time.sleep(0.5)
    assert len(slow_reads) == stopped_at  # the cancelled ones stopped reading


def test_a_stopped_server_ends_its_sense_threads_before_closing_the_index(e5, tmp_path, slow_reads):
    """Before: the senses' threads outlived the server (idle until the process ended), and
    the index was closed while a call cut off by the stop could still be reading on them."""
    from conftest import ServerThread

    from embedsense.client import Client

    others = set(threading.enumerate())  # other tests' servers' threads, left alone
    running = ServerThread(e5, tmp_path)
    try:
        with Client(running.target, timeout=120) as c:
            c.create_collection("many", store_tokens=True)
            c.upsert("many", numbered_apples(120), show_progress_bar=False)
        closed_at: list[float] = []
        catalog = running.server.catalog
        close = catalog.close

        def closing() -> None:
            closed_at.append(time.monotonic())
            close()

        catalog.close = closing
        with grpc.insecure_channel(running.target) as channel:
            search = pb_grpc.EmbedSenseStub(channel).SearchOccurrences
            asked = pb.SearchOccurrencesRequest(collection="many", text="我吃苹果", word="苹果")
            call = search.future(asked, timeout=60)  # 120 reads of 50 ms: past the stop's grace
            reading_by = time.monotonic() + 30
            while not slow_reads and time.monotonic() < reading_by:
                time.sleep(0.01)
            assert slow_reads and not call.done()
            running.stop()  # grace: 5 s
            assert call.exception() is not None  # cut off by the stop
    finally:
        if running.thread.is_alive():  # not stopped above
            running.stop()
    ours = set(threading.enumerate()) - others
    assert not [t.name for t in ours if t.name.startswith("embedsense-senses")]
    assert closed_at and max(slow_reads) + 0.05 <= closed_at[0]  # the last read ended first
