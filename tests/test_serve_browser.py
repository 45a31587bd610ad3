"""The search page in a real headless browser: Debian's Chromium driven by Playwright (no browser
download: ``executable_path``). Type a query, see result thumbnails, open one and watch the video
load from its span. Skips when Chromium or Playwright is absent (``.ci/run`` installs Chromium in CI).

``TVR_SCREENSHOT=docs/search-page.png`` also saves a screenshot of the page there.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlencode

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


def _launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
        "--no-first-run", "--mute-audio"])


def _ids(page) -> list[str]:
    return [card.get_attribute("data-video-id") for card in page.query_selector_all(".hit")]


def _wait_for_results(page, query: str) -> list[str]:
    """The result cards' video ids once the search for ``query`` (as the answer names it) has answered."""
    page.wait_for_function("q => document.getElementById('status').textContent.includes(` videos for ${q} ·`)",
                           arg=query)
    return _ids(page)


def test_text_image_more_like_this_shared_link_and_two_indexes(examples_home, monkeypatch, tmp_path):
    """Two served indexes (M2HF and zero-shot over a real tiny extraction): open a shared ?q= link,
    search by text, by an uploaded image, by "more like this", go back, switch the index."""
    from test_search_examples import _frame_png

    monkeypatch.setenv("TVR_HOME", str(examples_home))
    services = [SearchService(Searcher("synthetic", run, device="cpu"), poll_s=0) for run in ("m2hf", "zero-shot")]
    settings = ServeSettings(dataset="synthetic", run="m2hf", indexes=["synthetic/zero-shot"])
    searcher = services[0].searcher
    vid = searcher.state.build.ids[3]
    image = tmp_path / "still.png"
    image.write_bytes(_frame_png(searcher.video_path(vid)[0], 1.0))
    expected = searcher.search(["a red ball"], 5)[0]["results"]
    with serve_in_thread(create_app(settings, services)) as base, playwright.sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.goto(base + "/?q=a+red+ball&k=5")                   # a shared link
            assert _wait_for_results(page, "a red ball") == [hit["video_id"] for hit in expected]
            assert page.input_value("#q") == "a red ball" and page.is_visible("#index")
            assert "moments from the heuristic" in page.inner_text("#status")   # this run has no moment head
            moment = page.query_selector_all(".hit")[1].query_selector_all("button.moment")[-1]
            start = float(moment.get_attribute("data-start"))
            moment.click()                                           # plays the video from the moment's start
            page.wait_for_function("s => { const v = document.getElementById('video');"
                                   " return v.readyState >= 1 && Math.abs(v.currentTime - s) < 0.05 }", arg=start)
            page.fill("#q", "a blue cube")
            page.click("button[type=submit]")
            texts = _wait_for_results(page, "a blue cube")
            assert "q=a+blue+cube" in page.url and len(texts) == 5
            page.set_input_files("#image", str(image))
            assert _wait_for_results(page, "image still.png")[0] == vid
            assert "frames" in page.inner_text("#status")
            page.click(f".hit[data-video-id='{vid}'] button.like")
            page.wait_for_url("**like=" + vid + "**")
            liked = _wait_for_results(page, f"like {vid}")
            assert vid not in liked and len(liked) == 5
            page.go_back()                                           # the text search again, from the URL
            page.wait_for_url("**q=a+blue+cube**")
            assert _wait_for_results(page, "a blue cube") == texts
            page.select_option("#index", "synthetic/zero-shot")
            page.wait_for_function("document.getElementById('about').textContent.includes('zero-shot')")
            page.wait_for_url("**index=synthetic%2Fzero-shot**")
            page.wait_for_function("document.querySelector('.hit img')?.src.includes('zero-shot')")  # list redrawn
            zero = _ids(page)
            assert zero == [h["video_id"] for h in services[1].searcher.search(["a blue cube"], 5)[0]["results"]]
            assert "RANDOM WEIGHTS" in page.inner_text("#banner")
        finally:
            browser.close()
            for service in services:
                service.close()


def test_model_moments_on_the_timeline_play_from_their_start(events_home, monkeypatch):
    """A run with a trained moment head (tiny synthetic-events): each result shows the head's
    moments; clicking one plays the video from its start; the moments mode ranks moments."""
    monkeypatch.setenv("TVR_HOME", str(events_home))
    service = SearchService(Searcher("synthetic-events", "m2hf", device="cpu"), poll_s=0)
    query = next(iter(service.searcher.state.captions.values()))
    settings = ServeSettings(dataset="synthetic-events", run="m2hf")
    with serve_in_thread(create_app(settings, service)) as base, playwright.sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.goto(base + "/?" + urlencode({"q": query, "k": 4}))
            _wait_for_results(page, query)
            assert "moments from the moment head" in page.inner_text("#status")
            first = page.query_selector(".hit")
            assert first.query_selector_all(".timeline span") and first.query_selector_all("button.moment")
            button = first.query_selector_all("button.moment")[-1]
            start = float(button.get_attribute("data-start"))
            button.click()
            page.wait_for_function("s => { const v = document.getElementById('video');"
                                   " return v.readyState >= 1 && Math.abs(v.currentTime - s) < 0.05 }", arg=start)
            assert page.eval_on_selector("#video", "v => v.currentSrc").split("#")[0].startswith(
                base + "/videos/" + first.get_attribute("data-video-id"))
            page.select_option("#mode", "moments")
            page.wait_for_url("**mode=moments**")
            page.wait_for_function("document.getElementById('status').textContent.includes(' moments for ')")
            hits = page.query_selector_all(".hit")
            assert len(hits) == 4 and "–" in hits[0].inner_text()
        finally:
            browser.close()
            service.close()
