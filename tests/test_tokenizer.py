"""Tokenization: parity with transformers' fast BERT tokenizer, the length contract, the
text prefixes, and offsets that always point into the caller's text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import BertTokenizerFast

from embedsense.model.spans import SpanError, find_word, word_spans
from embedsense.model.tokenizer import TextRole, TextTooLongError, Tokenizer, wordpiece_backend

VOCAB = (
    ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    + list("我喜欢吃苹果手机买了最新的杜鹃花开山坡，。！？、a")
    + [
        "hello",
        "world",
        "iphone",
        "##s",
        "##phone",
        "i",
        "apple",
        "un",
        "##believ",
        "##able",
        "!",
        ",",
        ".",
    ]
    + ["1", "##2", "##3", "caf", "##e", "é"]
)
SAMPLES = [
    "我喜欢吃苹果",
    "我买了最新的苹果手机！",
    "Hello, World! 我喜欢 iPhones。",
    "unbelievable apple 🍎🍏 emoji 😀 here",
    "  runs   of\t\twhitespace\n\n\nand\u3000ideographic space  ",
    "Café CAFE cafe 123",
    "杜鹃花开满了山坡？",
    "",
    "zzz 未知字 ✓",
]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("lowercase", [True, False])
def test_wordpiece_matches_transformers_fast_tokenizer(vocab_file, lowercase):
    reference = BertTokenizerFast.from_pretrained(vocab_file.parent, do_lower_case=lowercase)
    ours = Tokenizer(wordpiece_backend(VOCAB, lowercase=lowercase), max_tokens=512, pad_id=0)
    for text in SAMPLES:
        expected = reference(text, return_offsets_mapping=True)
        got = ours.encode(text)
        assert got.ids == expected["input_ids"], text
        assert got.tokens == reference.convert_ids_to_tokens(expected["input_ids"]), text
        assert got.offsets == [tuple(o) for o in expected["offset_mapping"]], text


def test_chinese_splits_per_character_and_offsets_index_the_text(vocab_file):
    ours = Tokenizer(wordpiece_backend(VOCAB), max_tokens=512, pad_id=0)
    text = "我买了最新的苹果手机"
    enc = ours.encode(text)
    assert enc.tokens[1:-1] == list(text)
    assert [
        text[s:e] for (s, e), real in zip(enc.offsets, enc.from_text, strict=True) if real
    ] == list(text)
    start, end = find_word(text, "苹果")
    assert [enc.tokens[i] for i in enc.token_indices(start, end)] == ["苹", "果"]


def test_too_long_is_an_error_with_length_and_limit():
    tok = Tokenizer(wordpiece_backend(VOCAB), max_tokens=8, pad_id=0)
    with pytest.raises(TextTooLongError) as err:
        tok.encode_batch(["我喜欢", "我喜欢吃苹果手机"])  # 8 characters + 2 specials = 10
    assert (err.value.index, err.value.n_tokens, err.value.limit) == (1, 10, 8)
    assert "text 1 is 10 tokens; the model takes 8 (pass truncate=True" in str(err.value)


def test_truncation_keeps_specials_and_reports_what_was_dropped():
    tok = Tokenizer(wordpiece_backend(VOCAB), max_tokens=8, pad_id=0)
    short, cut = tok.encode_batch(["我喜欢", "我喜欢吃苹果手机"], truncate=True)
    assert short.truncated_tokens == 0 and len(short) == 5
    assert cut.tokens == ["[CLS]", "我", "喜", "欢", "吃", "苹", "果", "[SEP]"]
    assert cut.truncated_tokens == 2
    exact = tok.encode("我喜欢吃苹果")  # exactly at the limit is fine
    assert len(exact) == 8


def test_e5_prefix_is_added_but_offsets_refer_to_the_callers_text(e5):
    text = "我喜欢吃苹果"
    query = e5.tokenizer.encode(text, TextRole.QUERY)
    passage = e5.tokenizer.encode(text, TextRole.PASSAGE)
    assert query.tokens[:4] == ["<s>", "▁que", "ry", ":"] and query.tokens[-1] == "</s>"
    assert passage.tokens[1:4] != query.tokens[1:4]
    for enc, prefix in ((query, "query:"), (passage, "passage:")):
        pieces = [
            text[s:e] for (s, e), real in zip(enc.offsets, enc.from_text, strict=True) if real
        ]
        assert "".join(pieces) == text
        first_real = enc.from_text.index(True)
        assert "".join(enc.tokens[1:first_real]).replace("▁", "") == prefix


# Parked characters (kept though NFKC changes them), a parking place, combining marks,
# controls, odd spaces, full-width forms, CJK, Latin and emoji: what tells the pipelines apart.
E5_ALPHABET = "～㋿\U0001fbf1\U00100000\u0301\u0308e\x07\x1f\u3000\u200b ＦＵ１苹果手机a.😀\n"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(st.text(E5_ALPHABET, min_size=1, max_size=12), min_size=1, max_size=3))
def test_e5_shortcut_tokenizes_exactly_as_the_full_pipeline(e5, texts):
    full = Tokenizer(
        e5.tokenizer.backend, e5.tokenizer.max_tokens, e5.tokenizer.pad_id, e5.tokenizer.prefixes
    )
    for role in TextRole:
        assert e5.tokenizer.encode_batch(texts, role) == full.encode_batch(texts, role)


def test_e5_common_text_takes_the_shortcut_and_parked_characters_do_not(e5):
    tokenizer = e5.tokenizer
    assert tokenizer._pipeline_for(["passage: 我喜欢吃苹果，Apple 也是。"]) is not tokenizer.backend
    for text in ("容量：256GB～512GB", "令和㋿", "\U00100000"):
        assert tokenizer._pipeline_for(["passage: 我喜欢吃苹果", text]) is tokenizer.backend
    assert [t for t in tokenizer.encode("256GB～512GB").tokens if "～" in t], "～ kept, not ~"


def test_e5_length_limit_counts_the_prefix(e5):
    limit = e5.tokenizer.max_tokens
    assert limit == 512
    with pytest.raises(TextTooLongError, match="the model takes 512"):
        e5.tokenizer.encode("苹果 " * 600, TextRole.QUERY)
    enc = e5.tokenizer.encode("苹果 " * 600, TextRole.QUERY, truncate=True)
    assert len(enc) == 512 and enc.tokens[-1] == "</s>" and enc.truncated_tokens > 0


def test_span_helper_one_token_and_several(e5):
    enc = e5.tokenizer.encode("我喜欢吃苹果", TextRole.QUERY)
    assert [enc.tokens[i] for i in enc.token_indices(4, 6)] == ["苹果"]
    text = "山上的杜鹃花开了，杜鹃鸟在叫"
    enc = e5.tokenizer.encode(text, TextRole.PASSAGE)
    first = enc.token_indices(*find_word(text, "杜鹃", 0))
    second = enc.token_indices(*find_word(text, "杜鹃", 1))
    assert len(first) >= 2 and len(second) >= 2 and max(first) < min(second)
    assert "".join(enc.tokens[i] for i in first).replace("▁", "").startswith("杜鹃")


def test_occurrences_are_numbered_by_one_rule_everywhere():
    from embedsense.server.senses.words import locate, occurrences_of

    text = "哈哈哈哈，哈哈"
    listed = occurrences_of("哈哈", text)
    assert [(o.start, o.end) for o in listed] == [(0, 2), (2, 4), (5, 7)]  # not overlapping
    for n, occurrence in enumerate(listed):
        assert find_word(text, "哈哈", n) == (occurrence.start, occurrence.end)
        assert locate(text, "哈哈", occurrence=n) == occurrence


def test_a_word_of_a_spaced_script_is_found_as_a_whole_word_only():
    """The word "apple" was found inside "Pineapple" (its first occurrence: disambiguate judged
    the pineapple), and "bank" in "embankment"; words of unspaced scripts stay substrings."""
    assert find_word("Pineapple and apple pie", "apple") == (14, 19)
    assert word_spans("apples, apple. embankment bank", "apple") == [(8, 13)]
    assert word_spans("embankment bank banks", "bank") == [(11, 15)]
    assert word_spans("我吃apple了", "apple") == [(2, 7)]  # beside CJK: a boundary
    assert word_spans("我喜欢吃苹果和苹果派", "苹果") == [(4, 6), (7, 9)]
    assert word_spans("사과를 먹었다", "사과") == [(0, 2)]  # Hangul: particles attach


def test_span_errors_name_the_problem():
    with pytest.raises(SpanError, match="does not occur"):
        find_word("我喜欢吃香蕉", "苹果")
    # "occurrence 1 asked for, but the text has only 1" read as a contradiction.
    with pytest.raises(
        SpanError, match=r"occurrence 1 of '苹果' asked for, but the text has 1 \(counted from 0"
    ):
        find_word("我喜欢吃苹果", "苹果", occurrence=1)
    with pytest.raises(
        SpanError, match="word is empty: give the word, or its characters as a span"
    ):
        find_word("我喜欢吃苹果", "")
    from embedsense.server.senses.errors import SenseInputError
    from embedsense.server.senses.words import locate

    # An empty or reversed span was "not within the text's 6 characters", though it was.
    for span in ((3, 3), (4, 2)):
        with pytest.raises(SenseInputError, match=r"is empty: a span's end comes after its"):
            locate("我喜欢吃苹果", span=span)
    with pytest.raises(SenseInputError, match="not within the text's 6 characters"):
        locate("我喜欢吃苹果", span=(4, 9))


def _text_offsets(enc) -> list[tuple[int, int]]:
    return [o for o, real in zip(enc.offsets, enc.from_text, strict=True) if real]


# NFKC composes a base and the marks after it into one character, which `tokenizers` aligns
# with the base alone: the marks were read by the model but lay in no token's span.
@pytest.mark.parametrize(
    ("text", "offsets"),
    [
        ("e\u0301te", [(0, 2), (2, 4)]),  # e + combining acute -> é
        ("Cafe\u0301s", [(0, 5), (5, 6)]),
        ("ｶﾞｷﾞ", [(0, 2), (2, 4)]),  # half-width kana + voiced sound mark -> ガギ
        ("\u1100\u1161\u11a8 苹果", [(0, 3), (3, 4), (4, 6)]),  # conjoining jamo -> 각
        ("a\u0316\u0301b", [(0, 2), (2, 3), (3, 4)]),  # reordered marks: á then U+0316
        ("a\x07\u0301b", [(0, 3), (3, 4)]),  # the control is deleted, then a + ◌́ compose
    ],
)
def test_e5_offsets_cover_marks_that_nfkc_composes(e5, text, offsets):
    for role in TextRole:
        enc = e5.tokenizer.encode(text, role)
        assert _text_offsets(enc) == offsets, (text, enc.tokens)
        assert enc.token_indices(offsets[0][1] - 1, offsets[0][1])  # the mark has a token


@pytest.mark.parametrize(
    ("text", "offsets"),
    [
        ("a\x07", [(0, 1)]),  # a deleted control after a token stays outside it
        ("a\x07 b", [(0, 1), (2, 4)]),
        ("a  b", [(0, 1), (2, 4)]),  # a collapsed space is not part of "a"
        ("～\u0301", [(0, 1), (1, 2)]),  # kept characters do not compose
    ],
)
def test_e5_uncovered_characters_outside_a_composition_stay_outside(e5, text, offsets):
    assert _text_offsets(e5.tokenizer.encode(text)) == offsets


# Marks, voiced sound marks, jamo, and what may stand between them and their base.
COMPOSING_ALPHABET = "e\u0301\u0316\u0308ｶﾞﾟ\u1100\u1161\u11a8가\x07\u200b ～㋿\U00100000a苹\n"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(COMPOSING_ALPHABET, min_size=1, max_size=10))
def test_e5_every_character_the_model_reads_is_in_a_token(e5, text):
    normalize = e5.tokenizer.backend.normalizer.normalize_str
    enc = e5.tokenizer.encode(text)
    for i, char in enumerate(text):
        if normalize(char).strip():  # neither deleted nor a space
            assert enc.token_indices(i, i + 1), (text, i)


def test_e5_parking_places_in_the_callers_text_are_unknown(e5):
    # Kept characters (～) are parked on U+100000+ while NFKC runs; one already in the text
    # there must not come back as a kept character.
    unk = e5.tokenizer.backend.token_to_id("<unk>")
    enc = e5.tokenizer.encode("价格\U00100005元")
    real = [(enc.ids[i] == unk, o) for i, o in enumerate(enc.offsets) if enc.from_text[i]]
    assert real == [(False, (0, 2)), (True, (2, 3)), (False, (3, 4))]
    assert "～" not in "".join(enc.tokens)
