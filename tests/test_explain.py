"""Explanations: attention maps over gRPC, the layer trajectory, and the pictures."""

from __future__ import annotations

import concurrent.futures
import json
import re
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from embedsense.client import InvalidArgument
from embedsense.client._api import Call
from embedsense.proto.v1 import embedsense_pb2 as pb


def test_attention_maps_are_distributions_of_the_requested_shape(client):
    e = client.explain("我喜欢吃苹果", "苹果")
    T = len(e.tokens.tokens)
    assert e.layers == list(range(1, 13)) and e.heads == list(range(12))
    assert e.attentions.shape == (12, 12, T, T)
    np.testing.assert_allclose(e.attentions.sum(axis=-1), 1.0, atol=1e-4)
    assert (e.attentions >= 0).all()
    assert e.span == (4, 6) and [e.tokens.tokens[i] for i in e.target_tokens] == ["苹果"]
    means = [f for f in e.focus if f.head is None]
    assert [f.layer for f in means] == e.layers and len(e.focus) == 12 * 13
    for f in means:  # heaviest first, and the mean over heads of the word's rows
        weights = [w for _, w in f.tokens]
        assert weights == sorted(weights, reverse=True)
        row = e.attentions[f.layer - 1, :, e.target_tokens[0], :].mean(axis=0)
        assert f.tokens[0] == (int(row.argmax()), pytest.approx(float(row.max()), abs=1e-5))


def test_a_text_over_the_model_positions_is_a_clear_error_or_a_truncated_window(client):
    long = "我喜欢吃苹果。" * 120 + "最后一个香蕉"  # about 700 tokens
    with pytest.raises(InvalidArgument, match='the model takes 512: ask for long_text="truncate"'):
        client.explain(long, "苹果", layers=[1], heads=[0])
    with pytest.raises(InvalidArgument, match="text_a is .* the model takes 512"):
        client.compare_layers(long, "我买了苹果手机", "苹果")
    window = client.explain(long, "苹果", layers=[1], heads=[0], long_text="truncate")
    assert len(window.tokens.tokens) == 512 and window.span == (4, 6)
    comparison = client.compare_layers(long, "我买了苹果手机", "苹果", long_text="truncate")
    assert len(comparison.cosines) == 13
    with pytest.raises(InvalidArgument, match="past the truncated window"):
        client.explain(long, "香蕉", layers=[1], heads=[0], long_text="truncate")


def test_a_chosen_layer_and_head_and_the_response_bound(client):
    e = client.explain("我买了最新的苹果手机", layers=[12, 3], heads=[0])
    assert e.layers == [3, 12] and e.heads == [0] and e.attentions.shape[:2] == (2, 1)
    assert e.span is None and e.focus == []
    long = "苹果" * 150
    with pytest.raises(InvalidArgument, match="fewer layers or heads"):
        client.explain(long)
    assert client.explain(long, layers=[12], heads=[0]).attentions.shape[:2] == (1, 1)
    with pytest.raises(InvalidArgument, match="layer 13 does not exist"):
        client.explain("苹果", layers=[13])
    with pytest.raises(InvalidArgument, match="does not occur"):
        client.explain("我喜欢吃苹果", "香蕉")


def test_a_layer_or_head_named_twice_and_an_occurrence_of_no_word_are_refused(client):
    """They were dropped unsaid (Disambiguate and Embed refuse a hidden state twice), and an
    occurrence without a word or span explained no word at all."""
    with pytest.raises(InvalidArgument, match="layers: 3 is named twice"):
        client.explain("我喜欢吃苹果", "苹果", layers=[3, 12, 3])
    with pytest.raises(InvalidArgument, match="heads: 0 is named twice"):
        client.explain("我喜欢吃苹果", heads=[0, 0])
    request = pb.ExplainRequest(text="苹果苹果", occurrence=1)
    with pytest.raises(InvalidArgument, match="occurrence 1: of which word"):
        client._call(Call("Explain", request, str))
    assert client.explain("苹果苹果", "苹果", occurrence=1).span == (2, 4)


def test_explain_and_compare_layers_read_a_text_in_the_role_asked(client, server):
    """A stored document is embedded as a passage; its explanation and layer comparison
    could only be of the text read as a query, except over raw gRPC's Explain."""
    text, other = "我喜欢吃苹果", "我买了最新的苹果手机"
    as_query = client.explain(text, "苹果")
    as_passage = client.explain(text, "苹果", role="passage")
    assert "query" in "".join(as_query.tokens.tokens)
    assert "passage" in "".join(as_passage.tokens.tokens)
    assert as_passage.span == as_query.span == (4, 6)  # offsets into the text as given
    query = client.compare_layers(text, other, "苹果")
    passage = client.compare_layers(text, other, "苹果", role="passage")
    assert query.span_a == passage.span_a and len(passage.cosines) == 13
    assert not np.allclose(query.cosines[1:], passage.cosines[1:], atol=1e-4)
    with pytest.raises(ValueError, match="role 'document'"):
        client.explain(text, role="document")
    odd = pb.ExplainRequest(text=text, role=7)
    with pytest.raises(InvalidArgument, match=r"role: 7 is not one of \[0, 1, 2\]"):
        client._call(Call("Explain", odd, str))
    done = _explain_cli(server, "explain", text, "--word", "苹果", "--layers", "12", "--heads",
                        "0", "--compare", other, "--role", "passage", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "▁passage" in json.loads(done.stdout)["explanation"]["tokens"]["tokens"]


def softmax_rows(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The scaled dot-product attention of queries over keys, computed here in float32."""
    scores = (queries @ keys.T / np.float32(np.sqrt(keys.shape[1]))).astype(np.float32)
    exps = np.exp(scores - scores.max(axis=1, keepdims=True))
    return exps / exps.sum(axis=1, keepdims=True)


def test_the_neuron_vectors_give_that_heads_attention_rows(client):
    e = client.explain("我喜欢吃苹果，尤其是红富士", "苹果", neuron=(6, 4))
    n, T = e.neuron, len(e.tokens.tokens)
    assert (n.layer, n.head) == (6, 4) and n.query_tokens == e.target_tokens
    assert n.queries.shape == (1, 32) and n.keys.shape == (T, 32)
    assert n.queries.dtype == np.float32 and n.keys.dtype == np.float32
    np.testing.assert_allclose(softmax_rows(n.queries, n.keys),
                               e.attentions[5, 4][e.target_tokens], atol=1e-5)  # fmt: skip
    # It is that head's slice: its neighbour's attention is another distribution.
    assert (
        np.abs(softmax_rows(n.queries, n.keys) - e.attentions[5, 5][e.target_tokens]).max() > 0.01
    )
    # Without a word, every token's query: the whole map of that head, whatever was asked.
    whole = client.explain("我买了最新的苹果手机", layers=[1], heads=[11], neuron=(1, 11))
    assert whole.neuron.query_tokens == list(range(len(whole.tokens.tokens)))
    np.testing.assert_allclose(softmax_rows(whole.neuron.queries, whole.neuron.keys),
                               whole.attentions[0, 0], atol=1e-5)  # fmt: skip
    assert client.explain("苹果", layers=[1], heads=[0]).neuron is None


def test_a_neurons_vectors_are_its_own_while_the_engine_embeds_other_texts(client, server):
    """They were caught by a hook on the shared encoder's layer, which the engine's forwards
    for other callers ran through too: another batch's rows came back as this neuron's (or a
    reshape failed, INTERNAL)."""
    import threading

    from embedsense.client import Client

    done = threading.Event()

    def others() -> None:
        with Client(server.target) as other:
            while not done.is_set():
                other.encode(["他讨厌喝咖啡", "我买了最新的苹果手机，还有一副耳机"])

    background = threading.Thread(target=others)
    background.start()
    try:
        for _ in range(25):
            e = client.explain("我喜欢吃苹果", "苹果", layers=[1], heads=[0], neuron=(1, 0))
            np.testing.assert_allclose(softmax_rows(e.neuron.queries, e.neuron.keys),
                                       e.attentions[0, 0][e.target_tokens], atol=1e-5)  # fmt: skip
    finally:
        done.set()
        background.join(60)


def test_a_neuron_outside_the_model_is_invalid_argument_naming_the_range(client):
    with pytest.raises(InvalidArgument, match="neuron.layer 13 does not exist: the model has "
                                              "layers 1-12"):  # fmt: skip
        client.explain("我喜欢吃苹果", "苹果", neuron=(13, 0))
    with pytest.raises(InvalidArgument, match="neuron.layer 0 does not exist"):
        client.explain("我喜欢吃苹果", "苹果", neuron=(0, 0))
    with pytest.raises(InvalidArgument, match="neuron.head 12 does not exist: the model has "
                                              "heads 0-11"):  # fmt: skip
        client.explain("我喜欢吃苹果", "苹果", neuron=(1, 12))


def test_the_async_client_asks_for_a_neuron_too(server):
    import asyncio

    from embedsense.client import AsyncClient

    async def ask():
        async with AsyncClient(server.target, timeout=120) as c:
            return await c.explain("我喜欢吃苹果", "苹果", layers=[12], heads=[3], neuron=(12, 3))

    e = asyncio.run(ask())
    np.testing.assert_allclose(softmax_rows(e.neuron.queries, e.neuron.keys),
                               e.attentions[0, 0][e.target_tokens], atol=1e-5)  # fmt: skip


def test_an_explanation_its_caller_gave_up_on_is_not_computed(server):
    """Explanations run one at a time. One whose deadline passed while it waited for its
    turn ran anyway, after its caller had gone, and made every later one wait for it."""
    from embedsense.server.engine import DeadlineExceeded
    from embedsense.server.explain import Explainer

    engine = server.server.engine
    explainer = Explainer(engine.model, engine.runner)
    forwards = []

    class CountingRunner:  # the real runner, its forwards counted
        def __getattr__(self, name):
            return getattr(engine.runner, name)

        def computing(self):
            forwards.append(1)
            return engine.runner.computing()

    explainer.runner = CountingRunner()
    with explainer._lock:  # another explanation is computing
        late = concurrent.futures.ThreadPoolExecutor(2)
        explaining = late.submit(explainer.explain, "我喜欢吃苹果", "苹果", timeout=0.2)
        comparing = late.submit(explainer.compare_layers, "吃苹果", "苹果手机", "苹果", timeout=0.2)
        time.sleep(0.5)
    for waited in (explaining, comparing):
        with pytest.raises(DeadlineExceeded, match="0.200 s deadline"):
            waited.result(timeout=30)
    late.shutdown()
    assert forwards == []
    assert explainer.explain("我喜欢吃苹果", "苹果", timeout=30).layers and forwards == [1]


@pytest.fixture
def forwards(server):
    """The explainer's forwards, counted: its runner is the real one behind a counter."""
    explainer = server.server.explainer
    real_runner, counted = explainer.runner, []

    class CountingRunner:
        def __getattr__(self, name):
            return getattr(real_runner, name)

        def computing(self):
            counted.append(1)
            return real_runner.computing()

    explainer.runner = CountingRunner()
    yield counted
    explainer.runner = real_runner


def test_an_explanation_cancelled_while_it_waits_for_its_turn_is_not_computed(server, forwards):
    """Explanations run one at a time. One whose caller cancelled it (Ctrl-C in the CLI)
    while another computed went on waiting in its thread, then ran for nobody, and every
    later one waited for it too."""
    import grpc

    from embedsense.proto.v1 import embedsense_pb2 as pb
    from embedsense.proto.v1.embedsense_pb2_grpc import EmbedSenseStub

    explainer = server.server.explainer
    request = pb.ExplainRequest(text="我喜欢吃苹果", word="苹果")
    with grpc.insecure_channel(server.target) as channel:
        explain = EmbedSenseStub(channel).Explain
        with explainer._lock:  # an explanation is computing
            first = explain.future(request, timeout=60)
            time.sleep(0.3)
            second = explain.future(request, timeout=60)
            time.sleep(0.3)
            assert second.cancel()
            time.sleep(0.3)
        assert first.result(timeout=30).layers
        time.sleep(1.0)  # time enough for the cancelled one to compute, if it would
    assert forwards == [1]


def test_explanations_cancelled_while_computing_do_not_pile_up_in_threads(server, forwards):
    """The one holding the turn, cancelled, gave the turn up while its thread went on: the
    next took it and started a thread behind it, and each cancelled one added another, all
    computing later for nobody (and holding threads every other call needs)."""
    import grpc

    from embedsense.proto.v1 import embedsense_pb2 as pb
    from embedsense.proto.v1.embedsense_pb2_grpc import EmbedSenseStub

    explainer = server.server.explainer
    request = pb.ExplainRequest(text="我喜欢吃苹果", word="苹果")
    with grpc.insecure_channel(server.target) as channel:
        explain = EmbedSenseStub(channel).Explain
        with explainer._lock:  # the first one's thread waits here, as if computing
            first = explain.future(request, timeout=60)
            time.sleep(0.3)
            second = explain.future(request, timeout=60)
            time.sleep(0.3)
            assert first.cancel()
            time.sleep(0.3)
            assert second.cancel()
            time.sleep(0.3)
        time.sleep(1.0)  # time enough for both to compute, if they would
        assert explain(request, timeout=60).layers  # and the turn is free again
    assert forwards == [1, 1]  # the first one's thread, already started, and the last call


def test_the_wait_for_a_turn_counts_against_an_explanations_deadline(server):
    """The deadline an API call passes runs from when it asked, not from when its turn
    came: one that waited its whole deadline behind another is not computed."""
    import asyncio

    from embedsense.server.engine import DeadlineExceeded
    from embedsense.server.explain import Explainer

    engine = server.server.engine
    explainer = Explainer(engine.model, engine.runner)

    async def behind_another() -> None:
        async with explainer._turn:  # another explanation's turn
            waiting = asyncio.ensure_future(
                explainer.in_turn("explain", "我喜欢吃苹果", "苹果", timeout=0.2)
            )
            await asyncio.sleep(0.4)
        await waiting

    with pytest.raises(DeadlineExceeded):
        asyncio.run(behind_another())


def test_a_failed_explain_forward_is_a_status_not_internal(client, server):
    """The explanation's own forward let the model's exception through: out of memory on a
    device (its attention maps are the largest forward the server runs) was INTERNAL, with
    torch's text, where an embed answers RESOURCE_EXHAUSTED."""
    from types import SimpleNamespace

    from embedsense.client import ResourceExhausted, Retry, Unavailable

    explainer = server.server.explainer
    real, raised = explainer.runner, []

    def failing(*args, **kwargs):
        raise raised.pop()

    explainer.runner = SimpleNamespace(encoder=failing, device=real.device,
                                       computing=real.computing)  # fmt: skip
    try:
        raised.append(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
        with pytest.raises(ResourceExhausted, match="out of memory"):
            client.explain("我喜欢吃苹果", word="苹果")
        from embedsense.client import Client

        with Client(server.target, retry=Retry(attempts=1), timeout=60) as once:
            raised.append(ValueError("something nobody foresaw"))
            with pytest.raises(Unavailable, match="model failure"):
                once.compare_layers("我喜欢吃苹果", "我买了苹果手机", "苹果")
    finally:
        explainer.runner = real
    assert client.explain("我喜欢吃苹果", word="苹果", layers=[1]).attentions.shape[0] == 1


def test_the_layer_trajectory_shows_contexts_separating(client):
    c = client.compare_layers("我喜欢吃苹果", "我买了最新的苹果手机", "苹果")
    assert len(c.cosines) == 13 and c.span_a == (4, 6) and c.span_b == (6, 8)
    assert c.cosines[0] > 0.9  # the same word before any context is mixed in
    assert min(c.cosines[6:]) < c.cosines[0] - 0.1  # the contexts pull it apart
    same = client.compare_layers("我喜欢吃苹果", "我喜欢吃苹果", "苹果")
    np.testing.assert_allclose(same.cosines, 1.0, atol=1e-5)


def test_compare_layers_takes_the_words_characters_in_either_text(client):
    """A word written inside a longer one ("apple" in "apples") is no whole word there: a span
    names it in either text, as Explain's and Disambiguate's span does."""
    with pytest.raises(InvalidArgument, match="part of a longer word"):
        client.compare_layers("I like apples", "an apple pie", "apple")
    spans = client.compare_layers("I like apples", "an apple pie", span_a=(7, 12), span_b=(3, 8))
    by_word = client.compare_layers("I like apples", "an apple pie", "apple", span_a=(7, 12))
    assert (spans.span_a, spans.span_b) == (by_word.span_a, by_word.span_b) == ((7, 12), (3, 8))
    np.testing.assert_allclose(spans.cosines, by_word.cosines, atol=1e-6)
    # A span names the same occurrence the word does: the same answer.
    by_occurrence = client.compare_layers("苹果和苹果", "我喜欢吃苹果", "苹果", 1)
    by_span = client.compare_layers("苹果和苹果", "我喜欢吃苹果", "苹果", span_a=(3, 5))
    np.testing.assert_allclose(by_span.cosines, by_occurrence.cosines, atol=1e-6)
    for one_span in ({"span_a": (7, 12)}, {}):  # the server refuses it too (test_http_explain)
        with pytest.raises(ValueError, match="or give both spans"):
            client.compare_layers("I like apples", "an apple pie", **one_span)
    with pytest.raises(InvalidArgument, match=r"text_b: span \[3, 9\) is 'apple ', not 'apple'"):
        client.compare_layers("I like apples", "an apple pie", "apple", span_a=(7, 12),
                              span_b=(3, 9))  # fmt: skip
    with pytest.raises(ValueError, match="span_a and occurrence_a"):
        client.compare_layers("苹果和苹果", "苹果", "苹果", 1, span_a=(3, 5))


def png_size(path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_cli_writes_a_png_and_an_html_page(server, tmp_path):
    png, page = tmp_path / "explain.png", tmp_path / "explain.html"
    done = subprocess.run(
        [sys.executable, "-m", "embedsense.client.cli", "--target", server.target, "explain",
         "我喜欢吃苹果", "--word", "苹果", "--compare", "我买了最新的苹果手机",
         "--out", str(png), "--html", str(page)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    width, height = png_size(png)
    assert width > 1000 and height > 400 and png.stat().st_size > 20_000
    text = page.read_text(encoding="utf-8")
    assert "苹果" in text and "喜欢" in text and "<script>" in text
    # Nothing fetched from anywhere: the only URL is SVG's namespace name, an identifier.
    assert text.replace("http://www.w3.org/2000/svg", "").count("http") == 0
    assert "attends to (mean over heads)" in done.stdout

    # A compared text too long for every layer and head in one reply: the command failed
    # ("ask for fewer layers or heads", flags the user never gave); it is left out of the
    # contrast view, and said so.
    longer = "这个苹果又红又甜，" * 12  # ~100 tokens: all 144 maps of it are over the bound
    both = subprocess.run(
        [sys.executable, "-m", "embedsense.client.cli", "--target", server.target, "explain",
         "我喜欢吃苹果", "--word", "苹果", "--compare", "我买了最新的苹果手机",
         "--compare", longer, "--html", str(page)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert both.returncode == 0, both.stderr
    assert "leaves out 1 compared text(s)" in both.stdout and longer[:10] in both.stdout
    assert "我买了最新的苹果手机" in page.read_text(encoding="utf-8")
    as_json = subprocess.run(  # and --json says which: it said nothing of them
        [sys.executable, "-m", "embedsense.client.cli", "--target", server.target, "--json",
         "explain", "我喜欢吃苹果", "--word", "苹果", "--compare", longer, "--html", str(page)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["left_out_of_contrast"] == [longer]

    layer_png = tmp_path / "layer.png"
    one = subprocess.run(
        [sys.executable, "-m", "embedsense.client.cli", "--target", server.target, "explain",
         "我买了最新的苹果手机", "--layer", "12", "--head", "3", "--out", str(layer_png)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert png_size(layer_png)[0] > 400


def test_a_truncated_explanation_says_how_much_of_the_text_it_left_out(client, server, tmp_path):
    """Before: nothing said a text was cut, and the page said "This text is 512 tokens" of a
    text of 1,600, under a title of the whole text."""
    long = "苹果很好吃。" * 400
    whole = len(client.tokenize(long, "query").tokens)
    e = client.explain(long, "苹果", layers=[12], heads=[0], long_text="truncate")
    assert len(e.tokens.tokens) == 512 and e.truncated_tokens == whole - 512 > 1000
    assert client.explain("我喜欢吃苹果", "苹果", layers=[1]).truncated_tokens == 0
    page = tmp_path / "cut.html"
    done = _explain_cli(server, "explain", long, "--word", "苹果", "--truncate",
                        "--html", str(page))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"the first 512 of its {whole:,} tokens" in done.stdout, done.stdout
    assert f'"truncated":{whole - 512}' in page.read_text(encoding="utf-8").replace(" ", "")


def test_the_cli_tells_a_token_that_occurs_twice_by_its_position(server):
    """Before: rows read "苹果 0.30  苹果 0.20", two tokens no reader could tell apart."""
    from embedsense.client.cli import token_names

    assert token_names(["<s>", "苹果", "很", "苹果", "</s>"]) == ["<s>", "苹果#1", "很",
                                                                  "苹果#3", "</s>"]  # fmt: skip
    done = _explain_cli(server, "explain", "苹果很好吃，我买了苹果", "--word", "苹果",
                        "--occurrence", "1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert re.search(r"苹果#\d+ 0\.\d\d", done.stdout), done.stdout
    assert "#N: the token at position N" in done.stdout


def _explain_cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embedsense.client.cli", "--target",
                           server.target, *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_cli_shows_every_compared_text_and_sense_not_just_the_first(client, server, tmp_path):
    """--compare is repeatable and --sense makes a call per example. Before: the table,
    --json and the PNG showed the first --compare alone, and the senses only on the page."""
    text, phone, sweet = "我喜欢吃苹果", "我买了最新的苹果手机", "这个苹果又红又甜"
    flags = ["explain", text, "--word", "苹果", "--compare", phone, "--compare", sweet,
             "--sense", "fruit=苹果很甜", "--sense", "fruit=削苹果",
             "--sense", "company=苹果手机"]  # fmt: skip
    as_json = _explain_cli(server, "--json", *flags)
    assert as_json.returncode == 0, as_json.stderr
    got = json.loads(as_json.stdout)
    for shown, compared in zip(got["comparisons"], (phone, sweet), strict=True):
        expected = client.compare_layers(text, compared, "苹果").cosines
        assert shown["text"] == compared
        np.testing.assert_allclose(shown["cosines"], expected, atol=1e-5)
    fruit = [client.compare_layers(text, t, "苹果").cosines for t in ("苹果很甜", "削苹果")]
    np.testing.assert_allclose(got["senses"]["fruit"], np.mean(fruit, axis=0), atol=1e-5)
    assert len(got["senses"]["company"]) == 13
    readable = _explain_cli(server, *flags, "--out", str(tmp_path / "all.png"))
    assert readable.returncode == 0, readable.stderr
    header = next(line for line in readable.stdout.splitlines() if "hidden state" in line)
    assert all(column in header for column in ("vs 1", "vs 2", "fruit", "company")), header
    assert f"vs 1: {phone}" in readable.stdout and f"vs 2: {sweet}" in readable.stdout
    assert png_size(tmp_path / "all.png")[0] > 1000


def test_a_sense_needs_a_label_and_an_example_in_every_command(server):
    """Before: `explain --sense =EXAMPLE` drew a sense with no name on the page."""
    for command in (["explain", "我喜欢吃苹果", "--word", "苹果"],
                    ["disambiguate", "我喜欢吃苹果", "苹果"]):  # fmt: skip
        for item in ("=苹果很甜", " =苹果很甜"):
            done = _explain_cli(server, *command, "--sense", item, "--sense", "company=苹果手机")
            assert done.returncode == 2 and "a label" in done.stderr, (command, done.stderr)


def test_a_sense_profile_of_a_sense_without_examples_names_it():
    """Before: its mean over nothing was NaN, and the page's render failed on it later with
    "'float' object is not iterable"."""
    from embedsense.client.attention_page import sense_profile
    from embedsense.client.types import LayerComparison

    one = LayerComparison([1.0, 0.5], (0, 1), (0, 1))
    assert sense_profile({"a": [one, one]}) == {"a": [1.0, 0.5]}
    with pytest.raises(ValueError, match="'b'.*no examples"):
        sense_profile({"a": [one], "b": []})


def test_labels_fall_back_to_code_points_without_a_cjk_font():
    from embedsense.client.render import token_labels

    assert token_labels(["▁我", "苹果", "ok"], can_draw_cjk=False) == [
        "▁U+6211",
        "U+82F9U+679C",
        "ok",
    ]
    assert token_labels(["苹果"], can_draw_cjk=True) == ["苹果"]


def test_a_character_no_font_draws_is_labelled_by_its_code_point(client, tmp_path):
    """Emoji were drawn as boxes beside a CJK font that has none, and a token of a
    zero-width joiner was a blank label (docs/explain.md: never as empty boxes)."""
    import warnings

    pytest.importorskip("matplotlib")
    from embedsense.client import render

    drawable = {ord(c) for c in "我苹果"}
    assert render.token_labels(["🍎", "苹果", "\u200d", "ok"], True, drawable.__contains__) == [
        "U+1F34E", "苹果", "U+200D", "ok"]  # fmt: skip
    text = "🍎😀苹果👨\u200d👩\u200d👧"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        render.render_png(
            client.explain(text, "苹果"),
            tmp_path / "e.png",
            title=text,
            text=text,
            curves={f"vs 1: {text}": [1.0] * 13},
        )  # the legend too
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert not missing, missing[:3]


def page_data(path) -> dict:
    """The data a page was built from: the JSON literal after `const D = `."""
    import json

    source = path.read_text(encoding="utf-8")
    start = source.index("const D = ") + len("const D = ")
    return json.JSONDecoder().raw_decode(source, start)[0]


def run_cli(server, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "embedsense.client.cli", "--target", server.target, "explain",
         *args], capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_cli_page_says_what_was_left_out_and_opens_on_the_chosen_view(server, tmp_path):
    page = tmp_path / "heads.html"
    done = run_cli(server, "我喜欢吃苹果，苹果很甜", "--word", "苹果", "--occurrence", "1",
                   "--heads", "0", "7", "--layer", "12", "--head", "7",
                   "--html", str(page))  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = page_data(page)
    assert data["omitted"]["heads"] == [2, 12] and data["omitted"]["layers"] == [12, 12]
    assert data["open"] == {"layer": 11, "head": 1}  # layer 12, head 7: its place in the page
    neuron = data["neuron"]  # the neuron view: the head the page opens on, the word's rows
    assert (neuron["layer"], neuron["head"]) == (12, 7) and len(neuron["rows"]) == 1
    assert neuron["rows"][0]["token"] == data["target"][0]
    assert len(neuron["rows"][0]["dots"]) == len(data["tokens"])
    tokens = data["tokens"]
    assert [tokens[i] for i in data["target"]] == ["苹果"]
    assert data["target"][0] > tokens.index("苹果")  # the second 苹果
    bad = run_cli(server, "我喜欢吃苹果", "--heads", "0", "--layer", "12", "--head", "7",
                  "--html", str(tmp_path / "bad.html"))  # fmt: skip
    assert bad.returncode == 2 and "--head 7: the explanation has heads 0 " in bad.stderr


def test_cli_fits_a_long_text_into_the_layers_that_fit_and_says_so(server, tmp_path):
    page = tmp_path / "long.html"
    text = "我喜欢吃苹果。" * 25  # about 180 tokens: every head of every layer does not fit
    done = run_cli(server, text, "--word", "苹果", "--html", str(page))
    assert done.returncode == 0, done.stderr
    data = page_data(page)
    T = len(data["tokens"])
    shown, total = data["omitted"]["layers"]
    assert data["fitted"] and total == 12 and 1 <= shown < 12
    assert shown * 12 * T * T <= data["omitted"]["bound"] < (shown + 1) * 12 * T * T
    assert data["layers"][-1] == 12
    long = "我喜欢吃苹果。" * 120
    cut = run_cli(server, long, "--word", "苹果", "--truncate", "--layers", "12", "--heads", "0",
                  "--html", str(tmp_path / "cut.html"))  # fmt: skip
    assert cut.returncode == 0, cut.stderr
    assert len(page_data(tmp_path / "cut.html")["tokens"]) == 512


def test_page_pieces_escape_fit_and_draw_tokens_as_typed():
    """No browser, no server: the page's pure parts."""
    import json

    from embedsense.client.attention_page.fitting import fit
    from embedsense.client.attention_page.page import script_json
    from embedsense.client.attention_page.payload import display_tokens, quantize, separation
    from embedsense.client.types import Explanation, Tokens

    hostile = {"t": "</script><!--<script>&\u2028"}
    literal = script_json(hostile)
    assert not any(ch in literal for ch in "<>&\u2028") and json.loads(literal) == hostile

    weights = np.array([0.0, 0.12344, 0.12346, 1.0], dtype=np.float32)
    import base64

    back = np.frombuffer(base64.b64decode(quantize(weights)), dtype="<u2") / 10_000
    np.testing.assert_allclose(back, weights, atol=5e-5)

    # 12 heads of 82 tokens: every layer fits in a million values; 180 tokens: only 2 do.
    assert fit(82, 12, 12, 1_000_000) == (list(range(1, 13)), list(range(12)))
    assert fit(180, 12, 12, 1_000_000) == ([11, 12], list(range(12)))
    assert fit(400, 12, 12, 1_000_000) == ([12], [0, 1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="explain a shorter part"):
        fit(1100, 12, 12, 1_000_000)

    assert separation({}, {"a": [1, 0.9, 0.5], "b": [1, 0.9, 0.9]}) == {"chart": "senses", "k": 2}
    assert separation({"x": [1, 0.7, 0.8]}, {}) == {"chart": "contexts", "k": 1}

    text = "我喜欢吃苹果，很甜"
    pieces = ["<s>", "▁que", "ry", ":", "▁我", "喜欢", "吃", "苹果", ",", "很", "甜", "</s>"]
    offsets = [(0, 0)] * 4 + [(0, 1), (1, 3), (3, 4), (4, 6), (6, 7), (7, 8), (8, 9), (0, 0)]
    tokens = Tokens(pieces, list(range(12)), offsets, [False] * 4 + [True] * 7 + [False])
    e = Explanation(tokens, [1], [0], np.zeros((1, 1, 12, 12)), None, [], [], 1_000_000)
    assert display_tokens(e, text) == ["<s>", "que", "ry", ":", "我", "喜欢", "吃", "苹果",
                                       "，", "很", "甜", "</s>"]  # fmt: skip
    assert display_tokens(e, None)[4] == "我" and display_tokens(e, None)[8] == ","


def test_without_a_cjk_font_the_png_draws_no_empty_boxes(client, tmp_path, monkeypatch):
    """The tokens fell back to code points, but the figure's title (the sentence) did not:
    it was drawn as boxes, with a "Glyph ... missing" warning per character."""
    import warnings

    pytest.importorskip("matplotlib")
    from embedsense.client import render

    monkeypatch.setattr(render, "cjk_font", lambda: None)
    explanation = client.explain("我喜欢吃苹果", "苹果")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        render.render_png(explanation, tmp_path / "a.png", title="我喜欢吃苹果")
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message)]
    assert not missing, missing[:3]
    assert any("no CJK font" in str(w.message) for w in caught)
