"""The search page in a real headless browser: Debian's Chromium driven by Playwright (no browser
download: ``executable_path``). Type a query, see result thumbnails, open one and watch the video
load from its span. Skips when Chromium or Playwright is absent (``.ci/run`` installs Chromium in CI).

``TVR_SCREENSHOT=docs/search-page.png`` also saves a screenshot of the page there.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from fake_fusion_api import FakeFusion
from serve_support import indexed_dataset, sample_video

from retrieval.query.search import Searcher
from retrieval.service.app import create_app
from retrieval.service.core import SearchService
from retrieval.service.settings import ServeSettings
from service_thread import serve_in_thread

CHROMIUM = os.environ.get("TVR_CHROMIUM", "/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not shutil.which(CHROMIUM),
                                                    reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")]


def test_type_a_query_see_thumbnails_open_one(tvr_home, monkeypatch, tmp_path):
    FakeFusion().install(monkeypatch)
    indexed_dataset("toy", 12, sample_video(tmp_path))
    service = SearchService(Searcher("toy"), poll_s=0)
    with serve_in_thread(create_app(ServeSettings(dataset="toy"), service)) as base, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--no-first-run", "--mute-audio"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto(base + "/")
            page.wait_for_selector("#banner", state="visible")
            assert "RANDOM WEIGHTS" in page.inner_text("#banner")
            page.fill("#q", "a clip of v4")
            page.fill("#k", "6")
            page.click("button[type=submit]")
            page.wait_for_selector(".hit")
            cards = page.query_selector_all(".hit")
            assert len(cards) == 6 and cards[0].get_attribute("data-video-id") == "v4"
            page.wait_for_function("[...document.querySelectorAll('.hit img')]"
                                   ".every(img => img.complete && img.naturalWidth > 0)", timeout=30_000)
            assert "v4" in cards[0].inner_text() and "caption 0 of v4" in cards[0].inner_text()
            if os.environ.get("TVR_SCREENSHOT"):
                page.screenshot(path=os.environ["TVR_SCREENSHOT"], full_page=True)
            cards[1].click()
            page.wait_for_selector("#player", state="visible")
            page.wait_for_function("document.getElementById('video').readyState >= 1", timeout=30_000)
            src = page.eval_on_selector("#video", "v => v.currentSrc")
            assert src.startswith(base + "/videos/" + cards[1].get_attribute("data-video-id"))
            assert page.eval_on_selector("#video", "v => v.duration") == pytest.approx(4.0, abs=0.3)
            page.fill("#q", "   ")
            page.click("button[type=submit]")
            page.wait_for_selector("#status.error")
            assert "empty query" in page.inner_text("#status")
        finally:
            browser.close()
            service.close()
    assert any(Path(tvr_home, "indexes", "toy", "zero-shot", ".thumbnails").iterdir())
