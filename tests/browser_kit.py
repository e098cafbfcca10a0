"""One headless-Chromium page load for the HTML report tests (Debian chromium driven by playwright-core):
console errors, failed requests, the title, element counts and a full-page screenshot."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
# without the background-networking flags Chromium's connections are refused by this closed network
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@dataclass
class Rendered:
    errors: list[str]
    failed: list[str]
    title: str
    counts: dict[str, int]       # CSS selector -> elements found


def render(index: Path, shot: Path, selectors: tuple[str, ...] = ("svg",)) -> Rendered:
    """Open `index` in headless Chromium, count `selectors`, screenshot the whole page to `shot`."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    errors, failed = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: failed.append(r.url))
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        counts = {s: page.locator(s).count() for s in selectors}
        title = page.title()
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    return Rendered(errors, failed, title, counts)
