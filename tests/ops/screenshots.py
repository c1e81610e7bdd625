"""`make pictures`, part two: the README's pictures of the explanation page, taken by the
same headless Chromium the tests drive. 苹果 in a fruit sentence, against a phone sentence
and another fruit one, with two senses.

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
from embedsense.client.attention_page import sense_profile  # noqa: E402
from ops.serverproc import ServerProcess  # noqa: E402


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="embedsense-pictures-") as tmp:
        server = ServerProcess(Path(tmp) / "data")
        server.start()
        try:
            with Client(server.target, timeout=120) as c:
                explanation = c.explain(FRUIT, "苹果")
                contexts = {t: c.compare_layers(FRUIT, t, "苹果") for t in (PHONE, OTHER)}
                senses = sense_profile({label: [c.compare_layers(FRUIT, x, "苹果") for x in xs]
                                        for label, xs in SENSES.items()})  # fmt: skip
                page_path = Path(tmp) / "explain.html"
                explanation.to_html(str(page_path), contexts, senses, title=FRUIT,
                                    num_layers=c.info().num_layers)  # fmt: skip
        finally:
            server.stop()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(page_path.as_uri())
            page.check("#hide-prefix")
            page.select_option("#layer", "5")  # layer 6: where the senses start to part
            page.hover(
                f'#headview text[data-side="left"][data-token="{explanation.target_tokens[0]}"]'
            )
            written = [folder / "page_head_view.png", folder / "page_model_view.png",
                       folder / "page_sense_view.png"]  # fmt: skip
            page.locator("#headview").screenshot(path=written[0])
            page.mouse.move(2, 2)
            page.locator("#models").screenshot(path=written[1])
            page.locator("#senseview").screenshot(path=written[2])
            browser.close()
    print("wrote " + ", ".join(map(str, written)))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "client/data"))
