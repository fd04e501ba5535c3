"""The web page in real headless Chromium (Debian's): pick an image, see captions and their scores."""
from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import scene

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="/usr/bin/chromium is absent: apt-get install chromium (make test does)"
)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page()
    page.goto(server + "/")
    yield page
    page.close()


def test_upload_shows_captions_and_scores(page, tmp_path):
    image_path = tmp_path / "scene.png"
    scene(colour="green").save(image_path)
    assert page.title() == "captioner"
    page.set_input_files("#file", str(image_path))
    # Waited for, not read at once: the preview has no size, so is not visible, until the browser has loaded it.
    page.locator("#preview").wait_for(state="visible", timeout=10_000)
    page.fill("#beam", "4")
    page.fill("#count", "2")
    page.click("#submit")
    page.wait_for_selector("#captions li.caption", timeout=30_000)
    captions = page.locator("#captions li.caption .text")
    assert captions.count() == 2
    assert all(text.strip() for text in captions.all_inner_texts())
    assert "log p = -" in page.locator("#captions .score").first.inner_text()
    assert "confidence" in page.locator("#captions .score").first.inner_text()
    assert "captioner-" in page.locator("#status").inner_text()


def test_a_low_confidence_caption_says_it_may_be_wrong(page, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (320, 240), (128, 128, 128)).save(blank)
    assert not page.locator("#low-confidence").is_visible()
    page.set_input_files("#file", str(blank))
    page.click("#submit")
    page.wait_for_selector("#low-confidence:not([hidden])", timeout=30_000)
    assert "This may be wrong" in page.locator("#low-confidence").inner_text()


def test_the_page_says_what_the_model_was_trained_on_and_how_it_scores(page, server):
    info = httpx.get(f"{server}/v1/model").json()
    page.wait_for_selector("#model-note:not([hidden])", timeout=10_000)
    assert page.locator("#model-note").inner_text() == info["note"]
    assert "Flickr8k" in info["note"] and "Weak at" in info["note"]
    scores = page.locator("#model-scores").inner_text()
    assert scores.startswith("Flickr8k validation split: BLEU-4 ") and f"CIDEr {info['scores']['val']['CIDEr']:.3f}" in scores
    assert page.locator("#beam").input_value() == str(info["decoding"]["beam_size"])


def test_a_4xx_is_shown_as_an_error(page, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a picture")
    page.set_input_files("#file", str(text_file))
    page.click("#submit")
    page.wait_for_selector("#status.error", timeout=30_000)
    assert page.locator("#status").inner_text().startswith("Error 415: not an image")


@pytest.mark.parametrize("docs, operation", [("/docs", ".opblock-summary-path[data-path='/v1/captions']"),
                                             ("/redoc", "[data-section-id='tag/captions/operation/create_captions_v1_captions_post']")])
def test_api_docs_render_with_the_network_cut_off(browser, server, docs, operation):
    """Every request but those to the service is refused, as on a machine without internet."""
    page = browser.new_page()
    refused = []

    def only_the_service(route):
        if route.request.url.startswith(server):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    page.route("**/*", only_the_service)
    page.goto(server + docs)
    page.wait_for_selector(operation, timeout=30_000)  # the /v1/captions operation, rendered from /openapi.json
    assert page.locator(operation).first.is_visible()
    # Nothing else was asked of another host but ReDoc's "API docs by Redocly" footer logo.
    assert [url for url in refused if url != "https://cdn.redoc.ly/redoc/logo-mini.svg"] == []
    page.close()
