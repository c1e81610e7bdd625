"""Explanations: attention maps over gRPC, the layer trajectory, and the pictures."""

from __future__ import annotations

import struct
import subprocess
import sys

import numpy as np
import pytest

from embedsense.client import InvalidArgument


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


def test_the_layer_trajectory_shows_contexts_separating(client):
    c = client.compare_layers("我喜欢吃苹果", "我买了最新的苹果手机", "苹果")
    assert len(c.cosines) == 13 and c.span_a == (4, 6) and c.span_b == (6, 8)
    assert c.cosines[0] > 0.9  # the same word before any context is mixed in
    assert min(c.cosines[6:]) < c.cosines[0] - 0.1  # the contexts pull it apart
    same = client.compare_layers("我喜欢吃苹果", "我喜欢吃苹果", "苹果")
    np.testing.assert_allclose(same.cosines, 1.0, atol=1e-5)


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

    layer_png = tmp_path / "layer.png"
    one = subprocess.run(
        [sys.executable, "-m", "embedsense.client.cli", "--target", server.target, "explain",
         "我买了最新的苹果手机", "--layer", "12", "--head", "3", "--out", str(layer_png)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert one.returncode == 0, one.stderr
    assert png_size(layer_png)[0] > 400


def test_labels_fall_back_to_code_points_without_a_cjk_font():
    from embedsense.client.render import token_labels

    assert token_labels(["▁我", "苹果", "ok"], can_draw_cjk=False) == [
        "▁U+6211",
        "U+82F9U+679C",
        "ok",
    ]
    assert token_labels(["苹果"], can_draw_cjk=True) == ["苹果"]
