"""`make pictures`, part two: the README's pictures of the explanation page, taken by the
same headless Chromium the tests drive. 苹果 in a fruit sentence, against a phone sentence
and another fruit one (the contrast view), with two senses; the page opens on 苹果.

    python tests/ops/screenshots.py client/data
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from playwright.sync_api import sync_playwright  # noqa: E402
from test_attention_page import CHROMIUM, CHROMIUM_ARGS, FRUIT, OTHER, PHONE, SENSES  # noqa: E402

from embedsense.client import Client  # noqa: E402
from embedsense.client.attention_page import render, sense_profile  # noqa: E402
from ops.serverproc import ServerProcess  # noqa: E402

# (file, the element it shows)
PICTURES = [
    ("page_strip_view.png", "#strip-section"),
    ("page_head_view.png", "#head-section"),
    ("page_contrast_view.png", "#contrast-section"),
    ("page_sense_view.png", "#sense-section"),
    ("page_model_view.png", "#model-section"),
]


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="embedsense-pictures-") as tmp:
        server = ServerProcess(Path(tmp) / "data")
        server.start()
        try:
            with Client(server.target, timeout=120) as c:
                explanation = c.explain(FRUIT, "苹果")
                contexts = {t: c.compare_layers(FRUIT, t, "苹果") for t in (PHONE, OTHER)}
                compared = {t: c.explain(t, "苹果") for t in (PHONE, OTHER)}
                senses = sense_profile({label: [c.compare_layers(FRUIT, x, "苹果") for x in xs]
                                        for label, xs in SENSES.items()})  # fmt: skip
                page_path = Path(tmp) / "explain.html"
                page_text = render(explanation, page_path, contexts, senses, title=FRUIT,
                       num_layers=c.info().num_layers, text=FRUIT, compared=compared)  # fmt: skip
        finally:
            server.stop()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 1500})
            page.goto(page_path.as_uri())
            page.add_style_tag(content=".controls{position:static}")  # not over the pictures
            page.check("#hide-prefix")
            page.check("#hide-special")
            page.check("#rescale")
            # Hidden state 6, chosen on the sense chart: where the senses start to part.
            page.click('#senseview circle[data-series="fruit"][data-layer="6"]')
            page.mouse.move(2, 2)
            written = []
            for name, selector in PICTURES:
                page.locator(selector).screenshot(path=folder / name)
                written.append(folder / name)
            browser.close()
    print("wrote " + ", ".join(map(str, written)))
    print(f"(the page itself: {len(page_text.encode()) / 1000:.0f} KB)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "client/data"))
