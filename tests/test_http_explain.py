"""Explanations over HTTP: the answers gRPC gives (the SDK's, from the same server), in both
encodings, the errors in the REST dialect with their statuses, and the routes in the
OpenAPI document."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from conftest import ServerThread
from test_http_senses import sender

from embedsense.client import Client

KEY = "explain-secret"
TEXT = "我买了最新的苹果手机"


@pytest.fixture(scope="module")
def running(e5, tmp_path_factory):
    server = ServerThread(e5, tmp_path_factory.mktemp("explain"), http_port=0, api_key=KEY)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(running):
    with Client(running.target, api_key=KEY) as c:
        yield c


@pytest.fixture(scope="module")
def send(running):
    return sender(running.server.http_port, KEY)


def f32(values: object, shape: tuple[int, ...]) -> np.ndarray:
    """A tensor of the reply, as nested lists or as base64 float32 bytes."""
    if isinstance(values, str):
        return np.frombuffer(base64.b64decode(values), dtype="<f4").reshape(shape)
    return np.asarray(values, dtype=np.float32).reshape(shape)


def assert_same_explanation(got: dict, grpc) -> None:
    tokens = got["tokens"]
    assert tokens["tokens"] == grpc.tokens.tokens and tokens["ids"] == grpc.tokens.ids
    assert [tuple(o) for o in tokens["offsets"]] == grpc.tokens.offsets
    assert tokens["from_text"] == grpc.tokens.from_text
    assert (got["layers"], got["heads"]) == (grpc.layers, grpc.heads)
    maps = f32(got["attentions"], grpc.attentions.shape)
    np.testing.assert_array_equal(maps, grpc.attentions)  # float32 both ways: exactly
    assert got["target_tokens"] == grpc.target_tokens
    span = None if got["span"] is None else (got["span"]["start"], got["span"]["end"])
    assert span == grpc.span
    assert [(f["layer"], f["head"], [(t["token"], t["weight"]) for t in f["tokens"]])
            for f in got["focus"]] == [(f.layer, f.head, [(i, pytest.approx(w, abs=1e-6))
                                                          for i, w in f.tokens])
                                       for f in grpc.focus]  # fmt: skip
    assert got["max_attention_values"] == grpc.max_attention_values
    assert got["truncated_tokens"] == grpc.truncated_tokens


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_explain_gives_the_grpc_answer_in_either_encoding(send, client, encoding):
    body = {"text": TEXT, "word": "苹果", "layers": [1, 12], "heads": [0, 5],
            "encoding_format": encoding}  # fmt: skip
    status, got = send("POST", "/v1/explain", body)
    assert status == 200, got
    grpc = client.explain(TEXT, "苹果", layers=[1, 12], heads=[0, 5])
    assert_same_explanation(got, grpc)
    assert isinstance(got["attentions"], str) == (encoding == "base64")
    assert got["span"] == {"start": 6, "end": 8} and got["target_tokens"]
    assert len(got["focus"]) == 2 * 3  # per layer: the mean over heads, then each head
    assert got["neuron"] is None


def test_explain_whole_model_role_span_and_neuron(send, client):
    # Every layer and head, no word: what the page draws before a word is picked.
    status, got = send("POST", "/v1/explain", {"text": "苹果很甜"})
    assert status == 200, got
    grpc = client.explain("苹果很甜")
    assert_same_explanation(got, grpc)
    assert len(got["layers"]) == grpc.attentions.shape[0] > 1 and got["focus"] == []
    # A passage, its word by span, and one head's vectors, in base64.
    body = {"text": TEXT, "span": {"start": 6, "end": 8}, "role": "passage", "layers": [3],
            "neuron": {"layer": 3, "head": 2}, "encoding_format": "base64"}  # fmt: skip
    status, got = send("POST", "/v1/explain", body)
    assert status == 200, got
    grpc = client.explain(TEXT, span=(6, 8), layers=[3], neuron=(3, 2), role="passage")
    assert_same_explanation(got, grpc)
    assert got["tokens"]["tokens"] != client.explain(TEXT, layers=[3]).tokens.tokens
    neuron = got["neuron"]
    assert (neuron["layer"], neuron["head"]) == (3, 2)
    assert neuron["query_tokens"] == grpc.neuron.query_tokens == got["target_tokens"]
    np.testing.assert_array_equal(f32(neuron["queries"], grpc.neuron.queries.shape),
                                  grpc.neuron.queries)  # fmt: skip
    np.testing.assert_array_equal(f32(neuron["keys"], grpc.neuron.keys.shape), grpc.neuron.keys)
    # The same vectors as numbers.
    body["encoding_format"] = "float"
    status, got = send("POST", "/v1/explain", body)
    assert status == 200 and np.asarray(got["neuron"]["keys"]).shape == grpc.neuron.keys.shape


def test_a_long_text_is_refused_unless_truncated(send, client):
    long = "苹果" + "很好吃，" * 300
    status, got = send("POST", "/v1/explain", {"text": long, "word": "苹果", "layers": [12],
                                                "heads": [0]})  # fmt: skip
    assert status == 400, got
    # HTTP's field is long_text, as the SDK's argument; gRPC's is truncate, and it says so.
    assert "tokens; the model takes" in got["error"]["message"]
    assert 'long_text="truncate" (gRPC: truncate=true)' in got["error"]["message"]
    assert got["error"]["param"] == "text"
    body = {"text": long, "word": "苹果", "layers": [12], "heads": [0], "long_text": "truncate"}
    status, got = send("POST", "/v1/explain", body)
    assert status == 200, got
    grpc = client.explain(long, "苹果", layers=[12], heads=[0], long_text="truncate")
    assert_same_explanation(got, grpc)
    assert got["truncated_tokens"] > 0
    # A span past the window is the span's fault, and the error says where the window ends.
    end = len(long)
    past = {"start": end, "end": end + 2}
    status, got = send("POST", "/v1/explain", {"text": long + "香蕉", "layers": [12],
                                                "heads": [0], "long_text": "truncate",
                                                "span": past})  # fmt: skip
    assert status == 400 and got["error"]["param"] == "span", got
    window = max(e for (_, e), ours in zip(grpc.tokens.offsets, grpc.tokens.from_text,
                                           strict=True) if ours)  # fmt: skip
    assert f"the truncated window, which ends at character {window}:" in got["error"]["message"]


def test_compare_layers_gives_the_grpc_answer(send, client):
    body = {"text_a": "我喜欢吃苹果", "text_b": "苹果发布了新手机，苹果很贵", "word": "苹果",
            "occurrence_b": 1}  # fmt: skip
    status, got = send("POST", "/v1/compare_layers", body)
    assert status == 200, got
    grpc = client.compare_layers("我喜欢吃苹果", "苹果发布了新手机，苹果很贵", "苹果", 0, 1)
    assert got["cosines"] == pytest.approx(grpc.cosines, abs=1e-6)
    assert len(got["cosines"]) == len(grpc.cosines) > 2
    assert (got["span_a"], got["span_b"]) == ({"start": 4, "end": 6}, {"start": 9, "end": 11})
    status, passage = send("POST", "/v1/compare_layers", {**body, "role": "passage"})
    grpc = client.compare_layers("我喜欢吃苹果", "苹果发布了新手机，苹果很贵", "苹果", 0, 1,
                                 role="passage")  # fmt: skip
    assert status == 200 and passage["cosines"] == pytest.approx(grpc.cosines, abs=1e-6)
    assert passage["cosines"] != pytest.approx(got["cosines"], abs=1e-6)
    # The word's characters instead: "apple" inside "apples", which no word search finds.
    body = {"text_a": "I like apples", "text_b": "an apple pie", "span_a": {"start": 7, "end": 12},
            "span_b": {"start": 3, "end": 8}}  # fmt: skip
    status, got = send("POST", "/v1/compare_layers", body)
    grpc = client.compare_layers("I like apples", "an apple pie", span_a=(7, 12), span_b=(3, 8))
    assert status == 200 and got["cosines"] == pytest.approx(grpc.cosines, abs=1e-6), got
    assert (got["span_a"], got["span_b"]) == ({"start": 7, "end": 12}, {"start": 3, "end": 8})


@pytest.mark.parametrize(
    ("path", "body", "status", "says", "param"),
    [
        ("/v1/explain", {"text": TEXT, "layers": [13]}, 400, "layer 13 does not exist",
         "layers"),
        ("/v1/explain", {"text": TEXT, "heads": [1, 1]}, 400, "1 is named twice", "heads"),
        ("/v1/explain", {"text": TEXT, "occurrence": 1}, 400, "of which word?", "occurrence"),
        ("/v1/explain", {"text": TEXT, "word": "香蕉"}, 400, "香蕉", "word"),
        ("/v1/explain", {"text": TEXT, "word": "苹果", "occurrence": 1}, 400,
         "counted from 0", "occurrence"),
        ("/v1/explain", {"text": TEXT, "span": {"start": 8, "end": 20}}, 400,
         "not within the text", "span"),
        ("/v1/explain", {"text": "   "}, 400, "text", "text"),
        ("/v1/explain", {"text": TEXT, "word": " "}, 400, "only whitespace", "word"),
        ("/v1/explain", {"text": TEXT, "neuron": {"layer": 99, "head": 0}}, 400,
         "neuron.layer 99 does not exist", "neuron"),
        ("/v1/explain", {"text": TEXT, "neuron": {"layer": 0, "head": 0}}, 422, "layer",
         "neuron"),
        ("/v1/explain", {"text": TEXT, "role": "document"}, 422, "query", "role"),
        ("/v1/explain", {"text": TEXT, "long_text": "windows"}, 422, "truncate", "long_text"),
        ("/v1/explain", {"text": TEXT, "encoding_format": "hex"}, 422, "base64",
         "encoding_format"),
        ("/v1/explain", {"text": TEXT, "layer": [1]}, 422, "layer", "layer"),
        # No layers at all is no map to draw (omitted is all of them).
        ("/v1/explain", {"text": TEXT, "layers": []}, 422, "at least 1", "layers"),
        ("/v1/explain", {"text": TEXT, "heads": []}, 422, "at least 1", "heads"),
        ("/v1/explain", {"text": TEXT, "layers": [0]}, 422, "greater than or equal to 1",
         "layers"),
        ("/v1/explain", {"text": TEXT, "heads": [-1]}, 422, "greater than or equal to 0",
         "heads"),
        # Which text lacks the word, and which occurrence field is past its count.
        ("/v1/compare_layers", {"text_a": "苹果", "text_b": "香蕉", "word": "苹果"}, 400,
         "text_b: word '苹果' does not occur", "word"),
        ("/v1/compare_layers", {"text_a": "苹果", "text_b": "苹果", "word": "苹果",
                                "occurrence_a": 2}, 400, "text_a: occurrence 2", "occurrence_a"),
        ("/v1/compare_layers", {"text_a": "苹果", "text_b": "苹果", "word": ""}, 400,
         "name the word to compare", "word"),
        ("/v1/compare_layers", {"text_a": "苹果", "text_b": "苹果",
                                "span_a": {"start": 0, "end": 2}}, 400, "or give both spans",
         "word"),
        ("/v1/compare_layers", {"text_a": "苹果", "text_b": "苹果", "word": "苹果",
                                "span_b": {"start": 0, "end": 3}}, 400, "text_b: span [0, 3)",
         "span_b"),
        ("/v1/compare_layers", {"text_a": "苹果", "text_b": "苹果", "word": "苹果",
                                "occurrence_a": 1, "span_a": {"start": 0, "end": 2}}, 400,
         "each names the occurrence", "span_a"),
        # A span no token covers (the first of two spaces) is the span's fault, not the text's.
        ("/v1/compare_layers", {"text_a": "苹果", "text_b": "苹果  很甜",
                                "span_a": {"start": 0, "end": 2},
                                "span_b": {"start": 2, "end": 3}}, 400,
         "text_b: no token covers", "span_b"),
    ],
)  # fmt: skip
def test_bad_requests_get_the_rest_dialects_errors(send, path, body, status, says, param):
    got_status, got = send("POST", path, body)
    assert got_status == status, got
    error = got["error"]
    assert says in error["message"] and error["param"] == param
    assert send("POST", "/v1/compare_layers", {"text_a": "苹果", "text_b": "苹果很甜",
                                               "word": "苹果"})[0] == 200  # fmt: skip


def test_too_many_attention_values_ask_for_fewer_layers(send):
    long = "苹果" * 200  # every layer and head of it is over the reply's bound
    status, got = send("POST", "/v1/explain", {"text": long})
    assert status == 400, got
    assert "ask for fewer layers or heads" in got["error"]["message"]
    assert got["error"]["param"] == "layers"
    # What would fit: 206 tokens' maps are 42,436 values, so 23 of them.
    assert "(23 maps of 206x206 fit: 1 layer x 12 heads)" in got["error"]["message"], got
    status, got = send("POST", "/v1/explain", {"text": long, "layers": [5], "heads": [0, 1]})
    assert status == 200 and len(got["layers"]) * len(got["heads"]) == 2


def test_a_word_sent_by_mistake_is_not_sent_back_whole(send):
    word = "苹" * 100_000  # a document pasted into the word field
    for path, body in (
        ("/v1/explain", {"text": TEXT, "word": word}),
        ("/v1/compare_layers", {"text_a": TEXT, "text_b": TEXT, "word": word}),
    ):
        status, got = send("POST", path, body)
        assert status == 400 and got["error"]["param"] == "word", got
        assert "(100,000 characters)" in got["error"]["message"]
        assert len(got["error"]["message"]) < 400


def test_a_key_is_needed(running):
    status, got = sender(running.server.http_port, key=None)("POST", "/v1/explain",
                                                             {"text": TEXT})  # fmt: skip
    assert status == 401, got


def test_a_servers_settings_hold_an_explanations_size_and_default_role(e5, tmp_path):
    server = ServerThread(e5, tmp_path, http_port=0, max_message_bytes=2 * 1024 * 1024,
                          default_prompt_name="passage", auto_truncate=True)  # fmt: skip
    try:
        send = sender(server.server.http_port, key=None)
        with Client(server.target) as client:
            passage = client.explain(TEXT, layers=[1], role="passage").tokens.tokens
        for path, body in (("/v1/explain", {"text": TEXT, "layers": [1]}),
                           ("/v1/compare_layers", {"text_a": TEXT, "text_b": "苹果很甜",
                                                   "word": "苹果"})):  # fmt: skip
            status, default = send("POST", path, body)
            status, asked = send("POST", path, {**body, "role": "passage"})
            status, query = send("POST", path, {**body, "role": "query"})
            assert status == 200 and default == asked != query, path
        status, got = send("POST", "/v1/explain", {"text": TEXT, "layers": [1]})
        assert got["tokens"]["tokens"] == passage and passage[1].startswith("▁passage")
        # --auto-truncate cuts a long text the request says nothing of, as on every route.
        long = "苹果" + "很好吃，" * 300
        for path, body in (("/v1/explain", {"text": long, "word": "苹果", "layers": [1],
                                            "heads": [0], "encoding_format": "base64"}),
                           ("/v1/compare_layers", {"text_a": long, "text_b": TEXT,
                                                   "word": "苹果"})):  # fmt: skip
            status, got = send("POST", path, body)
            assert status == 200, got
            status, got = send("POST", path, {**body, "long_text": "error"})
            assert status == 400 and "the model takes" in got["error"]["message"], got
        text = "苹果" * 30  # 35 tokens: 12 x 12 maps of 35 x 35, over 2 MiB as numbers
        status, got = send("POST", "/v1/explain", {"text": text})
        assert status == 413, got
        assert "max_message_bytes" in got["error"]["message"]
        assert 'encoding_format "base64"' in got["error"]["message"]
        assert got["error"]["param"] == "layers"
        status, got = send("POST", "/v1/explain", {"text": text, "encoding_format": "base64"})
        assert status == 200, got
    finally:
        server.stop()


def test_the_routes_are_in_the_openapi_document(send):
    status, document = send("GET", "/openapi.json")
    assert status == 200
    for path in ("/v1/explain", "/v1/compare_layers"):
        operation = document["paths"][path]["post"]
        assert operation["tags"] == ["Explanations"]
        assert "requestBody" in operation and "200" in operation["responses"]
        assert "404" not in operation["responses"]  # their paths name nothing to look up
    schema = document["components"]["schemas"]["ExplainRequest"]["properties"]
    assert schema["encoding_format"]["enum"] == ["float", "base64"]


def test_the_reply_limit_is_checked_against_a_bound_of_the_json_written(running):
    """The limit is checked against a bound on the JSON the reply is written as, focus and
    the lists' brackets included: a bound below it would let a reply over max_message_bytes
    through. And a bound within 2x of it, so that replies well under the limit pass."""
    from embedsense.server.api.explain_routes import _explanation, reply_bytes_at_most
    from embedsense.server.api.http import encode_reply

    explainer = running.server.explainer
    for result in (explainer.explain(TEXT, "苹果"), explainer.explain("苹果很甜"),
                   explainer.explain("苹果" * 40, "苹果", layers=[2], neuron=(2, 3)),
                   explainer.explain("I like apples 🍎", "apples", heads=[0])):  # fmt: skip
        for encoding in ("float", "base64"):
            written = len(encode_reply(_explanation(result, encoding)))
            bound = reply_bytes_at_most(result, encoding)
            assert written <= bound < 2 * written, (encoding, written, bound)
