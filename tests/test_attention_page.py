"""The explanation page in a real headless browser: Debian's Chromium, driven by Playwright
(.ci/run installs it; without a browser these tests skip, saying why)."""

from __future__ import annotations

import shutil

import pytest

from embedsense.client import Client
from embedsense.client.attention_page import sense_profile

FRUIT = "我喜欢吃苹果，尤其是刚摘下来的红富士。"
PHONE = "我买了最新的苹果手机，拍照效果特别好。"
OTHER = "苹果和香蕉都是水果"
SENSES = {"fruit": ["这个苹果又红又甜", "果园里的苹果熟了"],
          "company": ["苹果发布了新款手机", "苹果公司的股价上涨"]}  # fmt: skip
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
    """The page for 苹果 in a fruit sentence, with two other contexts and two senses."""
    with Client(server.target, timeout=120) as c:
        explanation = c.explain(FRUIT, "苹果")
        contexts = {text: c.compare_layers(FRUIT, text, "苹果") for text in (PHONE, OTHER)}
        senses = sense_profile({label: [c.compare_layers(FRUIT, x, "苹果") for x in examples]
                                for label, examples in SENSES.items()})  # fmt: skip
        partial = c.explain(FRUIT, "苹果", layers=[12])
        num_layers = c.info().num_layers
    folder = tmp_path_factory.mktemp("page")
    path = folder / "explain.html"
    explanation.to_html(str(path), contexts, senses, title=FRUIT, num_layers=num_layers)
    partial.to_html(str(folder / "partial.html"), title=FRUIT, num_layers=num_layers)
    return {"path": path, "partial": folder / "partial.html", "explanation": explanation,
            "contexts": contexts, "senses": senses}  # fmt: skip


@pytest.fixture
def page(browser, made):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    opened.problems = []  # console errors, page errors, and any request but the file itself
    opened.on("console", lambda m: opened.problems.append(m.text) if m.type == "error" else None)
    opened.on("pageerror", lambda err: opened.problems.append(str(err)))
    opened.on("request", lambda r: None if r.url == made["path"].as_uri()
              or r.url == made["partial"].as_uri() else opened.problems.append(r.url))  # fmt: skip
    opened.goto(made["path"].as_uri())
    yield opened
    context.close()


def lines(page) -> list[dict]:
    return page.eval_on_selector_all(
        "#lines line",
        """els => els.map(e => ({
        from: +e.dataset.from, to: +e.dataset.to, head: +e.dataset.head,
        weight: +e.dataset.weight}))""",
    )


def test_the_page_loads_offline_with_no_errors_and_no_requests(page):
    assert page.locator("#lines line").count() > 100
    assert page.locator("#models canvas").count() == 12 * 12
    assert page.problems == []


def test_layer_and_head_controls_change_the_lines(page, made):
    e = made["explanation"]
    last = lines(page)
    page.select_option("#layer", "0")  # layer 1
    first = lines(page)
    assert first != last
    target = e.target_tokens[0]
    drawn = {(x["from"], x["to"], x["head"]): x["weight"] for x in first}
    for (i, j, head), weight in list(drawn.items())[:50]:  # the lines are the data's weights
        assert weight == pytest.approx(float(e.attentions[0, head, i, j]), abs=1e-4)
    for box in page.locator("#heads input").all()[1:]:  # only head 0 left on
        box.uncheck()
    only = lines(page)
    assert only and {x["head"] for x in only} == {0}
    assert any(x["from"] == target for x in only)
    assert page.problems == []


def test_hovering_a_token_leaves_only_its_lines(page, made):
    target = made["explanation"].target_tokens[0]
    page.hover(f'#headview text[data-side="left"][data-token="{target}"]')
    shown = lines(page)
    assert shown and {x["from"] for x in shown} == {target}
    page.mouse.move(5, 5)
    assert len({x["from"] for x in lines(page)}) > 1


def test_the_model_view_opens_a_head_in_the_head_view(page):
    page.click('#models canvas[data-layer="2"][data-head="5"]')
    assert page.input_value("#layer") == "2"
    checked = page.eval_on_selector_all("#heads input", "els => els.map(e => e.checked)")
    assert checked == [i == 5 for i in range(12)]
    assert {x["head"] for x in lines(page)} == {5}


def test_the_sense_view_shows_the_compare_layers_answers(page, made):
    values = page.eval_on_selector_all(
        "#senseview circle",
        """els => els.map(e => [
        e.dataset.series, +e.dataset.layer, +e.dataset.value])""",
    )
    by_series: dict = {}
    for series, layer, value in values:
        by_series.setdefault(series, {})[layer] = value
    for text, comparison in made["contexts"].items():
        assert [by_series[text][i] for i in range(13)] == pytest.approx(comparison.cosines)
    for label, profile in made["senses"].items():
        assert [by_series[label][i] for i in range(13)] == pytest.approx(profile)
    page.hover('#senseview circle[data-series="fruit"][data-layer="7"]')
    assert page.text_content("#tip").startswith("fruit: hidden state 7, ")


def test_special_and_prefix_tokens_can_be_hidden(page):
    texts = lambda: page.eval_on_selector_all(  # noqa: E731
        '#headview text[data-side="left"]', "els => els.map(e => e.textContent)"
    )
    assert "<s>" in texts() and "ry" in texts()
    page.check("#hide-special")
    assert "<s>" not in texts() and "</s>" not in texts() and "ry" in texts()
    page.check("#hide-prefix")
    assert "ry" not in texts() and "苹果" in texts()


def test_a_bounded_explanation_says_what_was_left_out(browser, made):
    opened = browser.new_page()
    opened.goto(made["partial"].as_uri())
    assert "Left out: 11 of 12 layers" in opened.text_content("#omitted")
    opened.close()
