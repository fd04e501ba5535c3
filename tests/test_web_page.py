"""The web page in real headless Chromium (Debian's): pick or drop photos, see captions, tags and scores."""
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
SETTLED = "#grid .tile.done, #grid .tile.failed"
# Counts the caption requests in flight, and the most there were at once: the page sends at most 4 at a time.
COUNT_IN_FLIGHT = """
window.inFlight = 0; window.mostInFlight = 0;
const originalFetch = window.fetch;
window.fetch = async (url, options) => {
  if (!String(url).startsWith("/v1/captions")) return originalFetch(url, options);
  window.mostInFlight = Math.max(window.mostInFlight, ++window.inFlight);
  try { return await originalFetch(url, options); } finally { window.inFlight -= 1; }
};
"""


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
    page.add_init_script(COUNT_IN_FLIGHT)
    page.goto(server + "/")
    yield page
    page.close()


def settle(page, count: int, timeout: float = 60_000) -> None:
    """Wait until `count` tiles have their caption or their error."""
    page.wait_for_function(f"document.querySelectorAll({SETTLED!r}).length === {count}", timeout=timeout)


def wait_until(page, condition, timeout_s: float = 10) -> None:
    """Poll what the test's own event handlers make true: they run while Playwright waits."""
    for _ in range(int(timeout_s * 20)):
        if condition():
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"not true within {timeout_s} s")


def photo_files(tmp_path, colours) -> list[str]:
    paths = []
    for colour in colours:
        scene(colour=colour).save(path := tmp_path / f"{colour}.png")
        paths.append(str(path))
    return paths


def test_one_photo_shows_its_caption_large_and_first_with_confidence_in_words(page, tmp_path):
    assert page.title() == "captioner"
    page.set_input_files("#file", photo_files(tmp_path, ["green"]))
    page.fill("#beam", "4")
    page.fill("#count", "2")
    with page.expect_response("**/v1/captions?*") as answer:
        page.click("#submit")
    assert "beam_size=4&num_captions=2" in answer.value.url
    data = answer.value.json()
    settle(page, 1)
    tile = page.locator("#grid.single .tile.done")
    # The caption, large, comes before the photo; the words for its confidence carry the number on hover.
    assert tile.locator(".caption").inner_text() == data["captions"][0]["text"]
    assert tile.locator(".caption").evaluate("node => parseFloat(getComputedStyle(node).fontSize)") >= 24
    assert tile.locator(".result, .photo").evaluate_all("nodes => nodes.map(node => node.className)") == ["result", "photo"]
    verdict = tile.locator(".verdict")
    assert verdict.inner_text() == ("may be wrong" if data["low_confidence"] else "likely right")
    assert verdict.get_attribute("title") == f"confidence {round(data['captions'][0]['confidence'] * 100)}%"
    # Tags as chips, where the service sends them (older services send none).
    tags = data.get("tags") or []
    assert tile.locator(".chip").all_inner_texts() == [tag["word"] for tag in tags]
    # Log p, the model id: collapsed until asked for.
    details = tile.locator("details.scores")
    assert not details.evaluate("node => node.open") and not details.locator("ol").is_visible()
    details.locator("summary").click()
    assert details.locator(".score").count() == 2 and "log p = -" in details.locator(".score").first.inner_text()
    assert "confidence" in details.locator(".score").first.inner_text()
    assert data["model"] in details.locator(".model").inner_text()
    assert page.locator("#status").inner_text().startswith("Captioned in ")


def test_tags_show_as_chips_with_their_class_and_probability_on_hover(page, tmp_path):
    """The caption response as the service gives it with tags, and as an older one gives it, without."""
    answer = {"captions": [{"text": "a cat on a sofa", "log_prob": -4.2, "confidence": 0.81}], "low_confidence": False,
              "model": "captioner-test", "elapsed_ms": 12.0,
              "tags": [{"word": "cat", "class_name": "Egyptian cat", "probability": 0.83},
                       {"word": "sofa", "class_name": "studio couch", "probability": 0.41}]}
    answers = [answer, {key: value for key, value in answer.items() if key != "tags"}]
    page.route("**/v1/captions?*", lambda route: route.fulfill(json=answers.pop(0)))
    page.set_input_files("#file", photo_files(tmp_path, ["red"]))
    page.click("#submit")
    settle(page, 1)
    chips = page.locator(".tile .chip")
    assert chips.all_inner_texts() == ["cat", "sofa"]
    assert [chips.nth(i).get_attribute("title") for i in range(2)] == ["Egyptian cat, 83%", "studio couch, 41%"]
    assert page.locator(".verdict").inner_text() == "likely right" and page.locator(".verdict").get_attribute("title") == "confidence 81%"
    page.click("#submit")  # again: now without tags
    page.wait_for_function("document.querySelectorAll('.tile .chip').length === 0 && document.querySelector('.tile.done')")
    assert page.locator(".tile .caption").inner_text() == "a cat on a sofa"


def test_a_new_photo_clears_the_last_result_and_its_warning(page, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (320, 240), (128, 128, 128)).save(blank)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a picture")
    page.set_input_files("#file", str(blank))
    page.click("#submit")
    settle(page, 1)
    assert page.locator(".verdict.unsure").inner_text() == "may be wrong"
    # A new pick: the old caption and its warning go at once.
    page.set_input_files("#file", str(text_file))
    assert page.locator(".verdict, .caption, .error").count() == 0 and page.locator("#status").inner_text() == ""
    page.click("#submit")
    settle(page, 1)
    assert page.locator(".tile.failed .error").inner_text().startswith("Error 415: not an image")
    assert page.locator(".verdict").count() == 0
    assert page.locator("#status.error").inner_text() == "The photo could not be captioned."
    # And after an error, a new photo leaves no error behind.
    page.set_input_files("#file", photo_files(tmp_path, ["blue"]))
    assert page.locator(".error, #status.error").count() == 0
    page.click("#submit")
    settle(page, 1)
    assert page.locator(".tile.done .caption").inner_text() and page.locator(".error").count() == 0


def test_several_photos_give_a_grid_and_a_non_image_fails_in_its_own_tile(page, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a picture")
    photos = photo_files(tmp_path, ["red", "green", "blue", "yellow", "purple"])
    page.set_input_files("#file", photos[:2] + [str(text_file)] + photos[2:])
    assert page.locator("#grid:not(.single) .tile").count() == 6 and "6 files chosen" in page.locator("#drop").inner_text()
    page.click("#submit")
    settle(page, 6)
    tiles = page.locator("#grid .tile")
    failed = page.locator("#grid .tile.failed")
    assert failed.count() == 1 and tiles.nth(2).evaluate("node => node.classList.contains('failed')")
    assert failed.locator(".error").inner_text().startswith("Error 415: not an image")
    assert failed.locator(".name").inner_text() == "notes.txt"
    captions = page.locator("#grid .tile.done .caption")
    assert captions.count() == 5 and all(text.strip() for text in captions.all_inner_texts())
    assert page.locator("#status.error").inner_text() == "1 of 6 files could not be captioned."
    assert page.evaluate("window.mostInFlight") == 4


def test_photos_dropped_on_the_page_are_captioned(page):
    """A drop of several files at once: the DataTransfer a browser hands the page, made here from canvases."""
    page.evaluate("""async () => {
        const transfer = new DataTransfer();
        for (const [i, colour] of ["red", "teal", "orange"].entries()) {
            const canvas = document.createElement("canvas");
            canvas.width = 160; canvas.height = 120;
            const context = canvas.getContext("2d");
            context.fillStyle = colour;
            context.fillRect(40, 30, 80, 60);
            const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
            transfer.items.add(new File([blob], `dropped-${i}.png`, { type: "image/png" }));
        }
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }""")
    page.wait_for_selector("#grid .tile >> nth=2")
    page.click("#submit")
    settle(page, 3)
    assert page.locator("#grid .tile.done .caption").count() == 3
    assert page.locator("#grid .tile .name").all_inner_texts() == ["dropped-0.png", "dropped-1.png", "dropped-2.png"]


def test_the_drop_zone_works_from_the_keyboard(page, tmp_path):
    choosers = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))  # from now on, Playwright answers the picker
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "docs-link"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "drop"
    assert page.locator("#drop").evaluate("node => getComputedStyle(node).outlineStyle") == "solid"  # the focus shows
    for key, colours in (("Enter", ["red"]), (" ", ["green", "blue"])):
        page.keyboard.press(key)
        wait_until(page, lambda: choosers)
        [chooser] = choosers
        assert chooser.is_multiple()
        chooser.set_files(photo_files(tmp_path, colours))
        choosers.clear()
        assert page.locator("#grid .tile").count() == len(colours)
        assert page.evaluate("document.activeElement.id") == "drop"
    assert page.locator("#results").get_attribute("aria-live") == "polite"


def test_the_beam_box_is_empty_until_the_model_default_is_known(browser, server):
    info = httpx.get(f"{server}/v1/model").json()
    page = browser.new_page()
    held = []
    page.route("**/v1/model", lambda route: held.append(route))  # /v1/model answers only when the test lets it
    page.goto(server + "/")
    wait_until(page, lambda: held)
    assert len(held) == 1
    beam = page.locator("#beam")
    assert beam.input_value() == "" and beam.get_attribute("placeholder") is None
    held[0].continue_()
    page.wait_for_function("document.getElementById('beam').placeholder !== ''")
    assert beam.get_attribute("placeholder") == str(info["decoding"]["beam_size"]) and beam.input_value() == ""
    page.close()


def test_the_page_says_what_the_model_was_trained_on_and_how_it_scores(page, server):
    info = httpx.get(f"{server}/v1/model").json()
    page.wait_for_selector("#model-note:not([hidden])", timeout=10_000)
    assert page.locator("#model-note").inner_text() == info["note"]
    assert "Flickr8k" in info["note"] and "Weak at" in info["note"]
    details = page.locator("#model-details")
    assert not details.evaluate("node => node.open")  # the scores and the model id: collapsed
    details.locator("summary").click()
    scores = page.locator("#model-scores").inner_text()
    assert scores.startswith("Flickr8k validation split: BLEU-4 ") and f"CIDEr {info['scores']['val']['CIDEr']:.3f}" in scores
    assert info["model"] in page.locator("#model-id").inner_text()


def test_the_page_links_the_api_docs_and_has_an_icon(browser, server):
    page = browser.new_page()
    answers = []
    page.on("response", lambda response: answers.append((response.url, response.status)))
    page.goto(server + "/")
    page.wait_for_load_state("networkidle")
    assert [answer for answer in answers if answer[1] >= 400] == []
    icon = page.locator("link[rel=icon]").get_attribute("href")
    for path in (icon, "/favicon.ico"):
        response = page.request.get(server + path)
        assert response.status == 200 and response.headers["content-type"] == "image/svg+xml"
        assert response.text().startswith("<svg")
    page.click("#docs-link")
    page.wait_for_selector(".opblock-summary-path[data-path='/v1/captions']", timeout=30_000)
    assert page.url == server + "/docs"
    page.close()


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
