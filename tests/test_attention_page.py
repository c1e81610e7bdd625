"""The explanation page in a real headless browser: Debian's Chromium, driven by Playwright
(.ci/run installs it; without a browser these tests skip, saying why).

Two kinds of page: the real model's (a server, 苹果 in a fruit sentence), and synthetic
explanations whose attention is chosen so that a drawing bug shows (82 tokens, every head
attending to one token; hostile texts). Every figure a test checks is computed here from
the data the page was given, never copied from a run."""

from __future__ import annotations

import io
import shutil
from dataclasses import replace

import numpy as np
import pytest

from embedsense.client import Client
from embedsense.client.attention_page import render, sense_profile
from embedsense.client.types import Explanation, Neuron, Tokens

FRUIT = "我喜欢吃苹果，尤其是刚摘下来的红富士。"
PHONE = "我买了最新的苹果手机，拍照效果特别好。"
PHONE2 = "我买了最新的苹果手机，电池很耐用。"  # begins like PHONE
OTHER = "苹果和香蕉都是水果"
SENSES = {"fruit": ["这个苹果又红又甜", "果园里的苹果熟了"],
          "company": ["苹果发布了新款手机", "苹果公司的股价上涨"]}  # fmt: skip
HOSTILE = ["苹果<!--<script>", "</script><script>alert(1)</script>苹果",
           '苹果<img src=x onerror="window.__pwned=1">', "x" + "🍎" * 30 + " 苹果"]  # fmt: skip
NEURON = (6, 4)  # the neuron view's head on the real page (layer 1-based, head 0-based)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The flags a sandboxed root session on a closed network needs (see the machine notes).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if CHROMIUM is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium); .ci/run installs it")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def made(server, tmp_path_factory):
    """The page for 苹果 in a fruit sentence, with three other contexts and two senses."""
    with Client(server.target, timeout=120) as c:
        explanation = c.explain(FRUIT, "苹果", neuron=NEURON)
        contexts = {text: c.compare_layers(FRUIT, text, "苹果") for text in (PHONE, PHONE2, OTHER)}
        compared = {text: c.explain(text, "苹果") for text in (PHONE, OTHER)}
        senses = sense_profile({label: [c.compare_layers(FRUIT, x, "苹果") for x in examples]
                                for label, examples in SENSES.items()})  # fmt: skip
        partial = c.explain(FRUIT, "苹果", layers=[12], heads=[0, 1])
        num_layers = c.info().num_layers
    folder = tmp_path_factory.mktemp("page")
    path = folder / "explain.html"
    render(explanation, path, contexts, senses, title=FRUIT, num_layers=num_layers, text=FRUIT,
           compared=compared)  # fmt: skip
    render(partial, folder / "partial.html", title=FRUIT, num_layers=num_layers, num_heads=12)
    return {"path": path, "partial": folder / "partial.html", "explanation": explanation,
            "contexts": contexts, "senses": senses, "compared": compared}  # fmt: skip


def synthetic(text: str, layers: int = 12, heads: int = 12, seed: int = 0) -> Explanation:
    """One token per character between <s> and </s>, random attention rows."""
    T = len(text) + 2
    rng = np.random.default_rng(seed)
    att = rng.dirichlet(np.full(T, 0.3), size=(layers, heads, T)).astype(np.float32)
    tokens = Tokens(["<s>", *text, "</s>"], list(range(T)),
                    [(0, 0)] + [(i, i + 1) for i in range(len(text))] + [(0, 0)],
                    [False] + [True] * len(text) + [False])  # fmt: skip
    return Explanation(tokens, list(range(1, layers + 1)), list(range(heads)), att, None, [], [],
                       1_000_000)  # fmt: skip


def with_neuron(e: Explanation, layer: int, head: int, d: int = 8) -> Explanation:
    """`e` with random query and key vectors for one head, for every token."""
    rng = np.random.default_rng(layer * 100 + head)
    T = len(e.tokens.tokens)
    queries, keys = (rng.normal(size=(T, d)).astype(np.float32) for _ in range(2))
    return replace(e, neuron=Neuron(layer, head, list(range(T)), queries, keys))


def opened(browser, path, width: int = 1100):
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.problems = []  # console errors, page errors, dialogs, any request but the file itself
    page.on("console", lambda m: page.problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda err: page.problems.append(str(err)))
    page.on("dialog", lambda d: (page.problems.append("dialog: " + d.message), d.dismiss()))
    page.on("request", lambda r: None if r.url == path.as_uri() else page.problems.append(r.url))
    page.goto(path.as_uri())
    return page


@pytest.fixture
def page(browser, made):
    opened_page = opened(browser, made["path"])
    yield opened_page
    opened_page.context.close()


def lines(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#lines line",
        """els => els.map(e => ({from: +e.dataset.from, to: +e.dataset.to,
        head: +e.dataset.head, weight: +e.dataset.weight,
        opacity: +e.getAttribute("stroke-opacity"), colour: e.getAttribute("stroke")}))""",
    )


def test_the_page_loads_offline_with_no_errors_and_no_requests(page, made):
    assert page.locator("#models canvas").count() == 12 * 12
    # It opens on the word: pinned, so only the word's lines are drawn.
    target = made["explanation"].target_tokens[0]
    assert {x["from"] for x in lines(page)} == {target}
    assert page.problems == []


def test_hostile_texts_and_labels_render_as_text_and_run_nothing(browser, tmp_path):
    text = HOSTILE[1]
    e = with_neuron(synthetic(text, layers=2, heads=2), 2, 1)
    contexts = {h: type("C", (), {"cosines": [1.0, 0.9, 0.8]})() for h in HOSTILE}
    senses = {h: [1.0, 0.5, 0.25] for h in HOSTILE}
    path = tmp_path / "hostile.html"
    render(e, path, contexts, senses, title=HOSTILE[0] + HOSTILE[1], text=text)
    source = path.read_text(encoding="utf-8")
    assert source.count("<script") == 1 and "<!--" not in source
    page = opened(browser, path)
    try:
        assert page.locator("#lines line").count() > 0  # not a blank page
        neuron_keys = page.eval_on_selector_all('table.neuron[data-query="0"] tr[data-token] th',
                                                "els => els.map(e => e.textContent)")  # fmt: skip
        assert neuron_keys == ["<s>", *text, "</s>"]  # drawn as text, one row a key
        assert page.evaluate("window.__pwned") is None
        legend = page.eval_on_selector_all(".legend li", "els => els.map(e => e.title)")
        assert sorted(set(legend)) == sorted(HOSTILE)
        assert page.text_content("h1") == HOSTILE[0] + HOSTILE[1]
        shown = page.eval_on_selector_all(".legend li", "els => els.map(e => e.textContent)")
        lone = page.evaluate(
            r"""xs => xs.filter(x => /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|"""
            r"""(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(x))""", shown)  # fmt: skip
        assert lone == []  # a cut label never splits an emoji
        assert page.problems == []
    finally:
        page.context.close()


def test_sizes_demo_under_300kb_and_82_tokens_every_head_under_3mb(made, tmp_path):
    assert made["path"].stat().st_size <= 300_000
    e = synthetic("字" * 80)
    assert e.attentions.shape == (12, 12, 82, 82)
    page = render(e, tmp_path / "big.html", title="big")
    assert len(page.encode()) <= 3_000_000
    assert "0.0001" in page  # the page states its precision


def test_the_model_view_at_82_tokens_shows_every_heads_attended_column(browser, tmp_path):
    from PIL import Image

    e = synthetic("字" * 80)
    att = np.zeros_like(e.attentions)
    column = {}
    for li in range(12):
        for hi in range(12):
            column[li, hi] = j = (7 * hi + 11 * li + 1) % 82
            att[li, hi, :, j] = 1.0
    e = Explanation(e.tokens, e.layers, e.heads, att, None, [], [], 1_000_000)
    path = tmp_path / "columns.html"
    render(e, path, title="one column per head")
    page = opened(browser, path, width=1300)
    try:
        page.add_style_tag(content=".controls{position:static}")  # nothing over the maps
        shot = Image.open(io.BytesIO(page.locator("#models").screenshot())).convert("RGB")
        origin = page.locator("#models").bounding_box()
        blank = []
        for canvas in page.locator("#models canvas").all():
            box = canvas.bounding_box()
            li, hi = int(canvas.get_attribute("data-layer")), int(canvas.get_attribute("data-head"))
            # Inside the 1-pixel border: the canvas's own 56 x 56 pixels as displayed.
            left, top = round(box["x"] - origin["x"]) + 1, round(box["y"] - origin["y"]) + 1
            pixels = np.asarray(shot.crop((left, top, left + round(box["width"]) - 2,
                                           top + round(box["height"]) - 2)))  # fmt: skip
            bright = (pixels[:, :, 0] > 150).mean(axis=0)  # per displayed column
            if bright.max() < 0.8:
                blank.append((li, hi, column[li, hi]))
        assert blank == []
        assert page.problems == []
    finally:
        page.context.close()


def test_hover_shows_the_strongest_head_on_top_and_honest_opacity(page, made):
    e = made["explanation"]
    page.select_option("#layer", "5")  # layer 6
    shown = lines(page)
    assert shown
    heads_on = 12
    last: dict = {}
    for x in shown:  # drawn in order: the last line of a pair is the one the eye sees
        last[x["from"], x["to"]] = x
        assert x["opacity"] == pytest.approx(x["weight"] / heads_on, abs=1e-3)
    for (i, j), top in last.items():
        weights = e.attentions[5, :, i, j]
        assert top["head"] == int(weights.argmax())
        assert top["colour"] == page.evaluate(f"D.colours[{int(weights.argmax())}]")
    assert page.problems == []


def test_layer_and_head_controls_change_the_lines(page, made):
    e = made["explanation"]
    page.click("#unpin")
    last = lines(page)
    page.select_option("#layer", "0")  # layer 1
    first = lines(page)
    assert first != last
    for x in first[:80]:  # the lines are the data's weights, to the page's stated precision
        assert x["weight"] == pytest.approx(
            float(e.attentions[0, x["head"], x["from"], x["to"]]), abs=1e-4
        )
    page.click("#none")
    assert lines(page) == []
    page.select_option("#only", "3")
    only = lines(page)
    assert only and {x["head"] for x in only} == {3}
    page.click("#all")
    assert {x["head"] for x in lines(page)} == set(range(12))


def test_hover_and_pin_a_token_from_either_column(page, made):
    target = made["explanation"].target_tokens[0]
    page.click("#unpin")
    other = target + 2
    page.hover(f'#headview text[data-side="left"][data-token="{other}"]')
    assert {x["from"] for x in lines(page)} == {other}
    page.hover(f'#headview text[data-side="right"][data-token="{other}"]')
    into = lines(page)
    assert into and {x["to"] for x in into} == {other} and len({x["from"] for x in into}) > 1
    page.click(f'#headview text[data-side="left"][data-token="{other}"]')
    page.mouse.move(5, 5)
    assert {x["from"] for x in lines(page)} == {other}  # pinned: stays after the pointer left
    page.keyboard.press("Escape")
    assert len({x["from"] for x in lines(page)}) > 1


def test_the_word_strip_is_the_mean_over_heads_of_the_words_rows(page, made):
    e = made["explanation"]
    cells = page.eval_on_selector_all(
        "#strip td[data-token]", "els => els.map(e => [+e.dataset.layer, +e.dataset.token, "
        "+e.dataset.value])")  # fmt: skip
    assert len(cells) == 12 * len(e.tokens.tokens)
    for li, j, value in cells:
        want = e.attentions[li][:, e.target_tokens, j].mean()
        assert value == pytest.approx(float(want), abs=2e-4)
    # Special tokens hidden and rescaled: each layer's row sums to 1 over what is shown.
    page.check("#hide-special")
    page.check("#rescale")
    cells = page.eval_on_selector_all(
        "#strip td[data-token]", "els => els.map(e => [+e.dataset.layer, +e.dataset.value])"
    )
    sums = np.zeros(12)
    for li, value in cells:
        sums[li] += value
    np.testing.assert_allclose(sums, 1.0, atol=2e-3)


def test_the_model_view_click_opens_and_marks_the_head_and_keeps_the_controls(page):
    page.click('#models canvas[data-layer="2"][data-head="5"]')
    assert page.input_value("#layer") == "2"
    checked = page.eval_on_selector_all("#heads input", "els => els.map(e => e.checked)")
    assert checked == [i == 5 for i in range(12)]
    assert {x["head"] for x in lines(page)} == {5}
    assert page.locator("#models canvas.open").count() == 1
    assert page.get_attribute("#models canvas.open", "data-head") == "5"
    top = page.locator(".controls").bounding_box()["y"]
    assert 0 <= top < 900  # the controls are still on screen
    page.hover('#models canvas[data-layer="2"][data-head="5"]', position={"x": 20, "y": 30})
    assert "→" in page.text_content("#model-tip")


def test_the_sense_view_shows_the_answers_in_distinct_colours(page, made):
    values = page.eval_on_selector_all(
        "#senseview circle",
        "els => els.map(e => [e.dataset.series, +e.dataset.layer, +e.dataset.value])",
    )
    by_series: dict = {}
    for series, layer, value in values:
        by_series.setdefault(series, {})[layer] = value
    for text, comparison in made["contexts"].items():
        assert [by_series[text][i] for i in range(13)] == pytest.approx(
            comparison.cosines, abs=1e-4
        )
    for label, profile in made["senses"].items():
        assert [by_series[label][i] for i in range(13)] == pytest.approx(profile, abs=1e-4)
    legend = page.eval_on_selector_all(
        ".legend li", "els => els.map(e => [e.title, e.textContent, e.dataset.colour])"
    )
    assert len(legend) == len(made["contexts"]) + len(made["senses"])
    assert len({x[1] for x in legend}) == len(legend)  # two texts that begin alike differ
    assert len({x[2] for x in legend}) == len(legend)  # no colour means two things
    page.hover('#senseview circle[data-series="fruit"][data-layer="7"]')
    assert "fruit" in page.text_content("#tip") and "7" in page.text_content("#tip")
    # Each point is a named button for a screen reader, as the tip names it on sight.
    point = page.locator('#senseview circle[data-series="fruit"][data-layer="7"]')
    assert point.get_attribute("role") == "button"
    assert point.get_attribute("aria-label") == page.text_content("#tip")


def test_choosing_a_hidden_state_moves_the_contrast_and_head_views(page, made):
    page.click('#senseview circle[data-series="fruit"][data-layer="7"]')
    assert page.input_value("#layer") == "6"  # hidden state 7 is layer 7's output
    assert page.get_attribute("#contrast", "data-layer") == "7"
    marks = page.eval_on_selector_all(".chart .now", "els => els.map(e => +e.dataset.layer)")
    assert marks and set(marks) == {7}
    for text, e in [(FRUIT, made["explanation"]), *made["compared"].items()]:
        row = page.locator(f'#contrast .row[data-text="{text}"] [data-token]')
        got = row.evaluate_all("els => els.map(e => [+e.dataset.token, +e.dataset.value])")
        want = e.attentions[6][:, e.target_tokens, :].mean(axis=(0, 1))
        assert got and all(v == pytest.approx(float(want[j]), abs=2e-4) for j, v in got)
    # The separation mark: the hidden state where the two senses differ most.
    profile = made["senses"]
    spread = np.abs(np.subtract(profile["fruit"], profile["company"]))
    spread[0] = -1
    assert page.get_attribute(".chart .separate", "data-layer") == str(int(spread.argmax()))


def test_tokens_are_drawn_from_the_users_text(page):
    texts = page.eval_on_selector_all(
        '#headview text[data-side="left"]', "els => els.map(e => e.textContent)"
    )
    assert not any("▁" in t for t in texts)
    assert "，" in texts and "苹果" in texts and "<s>" in texts
    page.check("#hide-special")
    page.check("#hide-prefix")
    texts = page.eval_on_selector_all(
        '#headview text[data-side="left"]', "els => els.map(e => e.textContent)"
    )
    assert "<s>" not in texts and texts[0] == "我"


def test_chinese_and_english_interface(page, browser, tmp_path):
    assert page.get_attribute("html", "lang") == "zh"
    zh = page.text_content("#how-head")
    page.click("#lang")
    assert page.get_attribute("html", "lang") == "en"
    assert page.text_content("#how-head") != zh and "hover" in page.text_content("#how-head")
    path = tmp_path / "en.html"
    render(synthetic("apple pie"), path, title="apple pie", text="apple pie")
    english = opened(browser, path)
    try:
        assert english.get_attribute("html", "lang") == "en"
    finally:
        english.context.close()


def test_a_narrow_screen_keeps_everything_in_view(browser, made):
    page = opened(browser, made["path"], width=420)
    try:
        overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
        assert overflow <= 0
    finally:
        page.context.close()


def test_keyboard_reaches_the_tokens_and_the_model_view(page, made):
    target = made["explanation"].target_tokens[0]
    page.focus(f'#headview text[data-side="left"][data-token="{target + 1}"]')
    page.keyboard.press("Enter")
    assert {x["from"] for x in lines(page)} == {target + 1}
    page.focus('#models canvas[data-layer="4"][data-head="2"]')
    page.keyboard.press("Enter")
    assert page.input_value("#layer") == "4"


def test_a_bounded_explanation_says_what_was_left_out(browser, made):
    page = opened(browser, made["partial"])
    try:
        told = page.text_content("#omitted")
        assert "11" in told and "12" in told and "10" in told
    finally:
        page.context.close()


def test_the_opening_layer_and_head_are_the_callers(browser, made, tmp_path):
    path = tmp_path / "open.html"
    render(made["explanation"], path, title=FRUIT, text=FRUIT, layer=3, head=7)
    page = opened(browser, path)
    try:
        assert page.input_value("#layer") == "2"
        assert {x["head"] for x in lines(page)} == {7}
    finally:
        page.context.close()


def neuron_column(page, column: str) -> list[float]:
    return page.eval_on_selector_all(
        f"table.neuron tr[data-token] td:nth-of-type({column})",
        "els => els.map(e => +e.dataset.value)",
    )


def test_the_neuron_view_steps_from_q_dot_k_to_the_heads_attention(page, made):
    e = made["explanation"]
    n, (layer, head) = e.neuron, NEURON
    dots = (n.queries.astype(np.float64) @ n.keys.astype(np.float64).T)[0]
    np.testing.assert_allclose(neuron_column(page, "1"), dots, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(neuron_column(page, "2"), dots / np.sqrt(n.keys.shape[1]),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    # The page's softmax is the head's attention row of the word, as the server computed it.
    softmax = neuron_column(page, "3")
    np.testing.assert_allclose(softmax, e.attentions[layer - 1, head, e.target_tokens[0]],
                               atol=1e-5)  # fmt: skip
    assert abs(sum(softmax) - 1) < 1e-5
    widths = page.eval_on_selector_all(
        "table.neuron td.softmax .bar", "els => els.map(e => parseFloat(e.style.width))"
    )
    np.testing.assert_allclose(widths, np.array(softmax) * 100, atol=0.06)
    # The page opens on all heads of the last layer: it says which head this was computed for.
    which = page.locator("#neuron-which")
    assert which.get_attribute("data-here") == "false"
    assert f"{layer}" in which.text_content() and f"{head}" in which.text_content()
    page.click("#neuron-open")
    assert page.input_value("#layer") == str(layer - 1)
    assert {x["head"] for x in lines(page)} == {head}
    assert which.get_attribute("data-here") == "true"
    zh = page.text_content("#how-neuron")
    page.click("#lang")
    assert page.text_content("#how-neuron") != zh and "softmax" in page.text_content("#how-neuron")
    assert page.problems == []


def test_the_neuron_note_tells_all_heads_shown_from_another_head(browser, made, tmp_path):
    """Opened on the neuron's layer with every head, the note said the head view showed
    "another head", though the neuron's head was among those shown."""
    path = tmp_path / "neuron-layer.html"
    render(made["explanation"], path, title=FRUIT, text=FRUIT, layer=NEURON[0])
    page = opened(browser, path)
    try:
        which = page.locator("#neuron-which")
        assert which.get_attribute("data-here") == "among"
        assert "another" not in which.text_content() and str(NEURON[1]) in which.text_content()
        page.click("#neuron-open")
        assert {x["head"] for x in lines(page)} == {NEURON[1]}
        assert which.get_attribute("data-here") == "true"
        page.click("#all")
        assert which.get_attribute("data-here") == "among"
        assert page.problems == []
    finally:
        page.context.close()


def test_choosing_a_hidden_state_the_page_lacks_says_so(browser, made, tmp_path):
    """A page of layer 12 alone: a click on hidden state 7 changed nothing, and said nothing."""
    e = made["explanation"]
    only_12 = replace(e, layers=[12], attentions=e.attentions[11:], focus=[], neuron=None)
    path = tmp_path / "layer-12.html"
    render(only_12, path, made["contexts"], made["senses"], title=FRUIT, text=FRUIT,
           num_layers=12)  # fmt: skip
    page = opened(browser, path)
    try:
        page.click('#senseview circle[data-series="fruit"][data-layer="7"]')
        told = page.text_content("#tip")
        assert "7" in told and "12" in told and "--layers 7" in told, told
        assert page.input_value("#layer") == "0"  # still layer 12, the page's one
        page.click('#senseview circle[data-series="fruit"][data-layer="12"]')
        assert page.input_value("#layer") == "0" and "--layers" not in page.text_content("#tip")
        assert page.problems == []
    finally:
        page.context.close()


def test_a_page_without_neuron_data_hides_the_neuron_view(browser, made):
    page = opened(browser, made["partial"])
    try:
        assert page.locator("#neuron-section").is_hidden()
        assert page.problems == []
    finally:
        page.context.close()


@pytest.mark.parametrize(
    ("text", "lang"),
    [("我喜欢吃苹果", "zh"), ("苹果（水果）", "zh"), ("I like apples", "en"),
     # Full-width punctuation or letters, and Japanese with its kanji, made the page Chinese.
     ("I like apples（really）", "en"), ("Price：100 dollars", "en"), ("ＡＢＣ", "en"),
     ("りんごが好きです", "en"), ("林檎が好きです", "en"),
     ("列奥纳多・达・芬奇很有名", "zh")],  # Chinese writes foreign names with katakana's dot
)  # fmt: skip
def test_the_page_is_in_chinese_for_chinese_text_alone(text, lang):
    from embedsense.client.attention_page.payload import language

    assert language(text) == lang
