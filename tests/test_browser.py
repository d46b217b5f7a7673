"""Open the built book in Debian's Chromium, driven by Playwright, as a reader would.

The book is served on localhost; every request that goes anywhere else is recorded
(and refused), and the test fails if there was one. Screenshots go to artifacts/.
"""

import functools
import http.server
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium")

pytestmark = [
    pytest.mark.skipif(not (HTML / "index.html").exists(), reason="the book is not built: run scripts/build-book"),
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is missing: scripts/test installs it"),
]
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        profile = tmp_path_factory.mktemp("chromium-profile")
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True,
            viewport={"width": 1280, "height": 1800},
        )  # fmt: skip
        yield context
        context.close()


@pytest.mark.parametrize("language", ["en", "ja"])
def test_introduction_figure_slider_and_math_offline(server, browser, language):
    outside = []

    def guard(route):
        host = urlparse(route.request.url).hostname
        if host in ("127.0.0.1", "localhost") or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page = browser.new_page()
    page.route("**/*", guard)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server}/chapters/{language}/00_introduction.html", wait_until="load")

    figure = page.locator("#intro-weights-en")
    figure.wait_for(state="attached", timeout=30_000)
    figure.scroll_into_view_if_needed()
    page.wait_for_function("document.getElementById('intro-weights-en').data !== undefined", timeout=30_000)
    before = page.evaluate("document.getElementById('intro-weights-en').data[0].z")
    title_before = page.evaluate("document.getElementById('intro-weights-en').layout.title.text")
    ARTIFACTS.mkdir(exist_ok=True)
    figure.screenshot(path=str(ARTIFACTS / f"intro-{language}-figure-before.png"))

    rail = figure.locator(".slider-rail-touch-rect").first
    box = rail.bounding_box()
    assert box is not None, "the figure has no slider"
    page.mouse.click(box["x"] + box["width"] * 0.97, box["y"] + box["height"] / 2)
    page.wait_for_timeout(500)
    after = page.evaluate("document.getElementById('intro-weights-en').data[0].z")
    title_after = page.evaluate("document.getElementById('intro-weights-en').layout.title.text")
    figure.screenshot(path=str(ARTIFACTS / f"intro-{language}-figure-after.png"))
    assert after != before, "moving the slider did not change the heat map"
    assert title_after != title_before and "causal content" in title_after

    page.wait_for_function("document.querySelectorAll('mjx-container svg').length > 0", timeout=30_000)
    assert page.locator("mjx-container svg").count() >= 3, "math was not typeset"
    page.screenshot(path=str(ARTIFACTS / f"intro-{language}-page.png"), full_page=False)
    assert page.evaluate("document.documentElement.lang") == language
    assert_japanese_text_has_a_japanese_font(page)
    page.close()

    assert not outside, f"requests left localhost: {outside}"
    assert not [e for e in errors if "THEBE" not in e], errors


JAPANESE_FONTS = {"IPAexGothic", "Noto Sans JP", "Hiragino Sans", "Yu Gothic"}  # the book's font list (book-fonts.css)
HAN_OR_KANA = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def assert_japanese_text_has_a_japanese_font(page):
    """Every sidebar entry, caption and heading with Japanese characters is drawn with a Japanese font.

    Chromium reports the fonts that drew a node's text; on a machine without Japanese fonts, a text
    laid out before the web font arrived kept a Latin font and showed empty boxes (tofu), as the
    bold sidebar captions once did.
    """
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    checked = 0
    for selector in (".caption-text", ".bd-sidenav a", "h1", "h2"):
        for node in cdp.send("DOM.querySelectorAll", {"nodeId": root, "selector": selector})["nodeIds"]:
            text = cdp.send("DOM.getOuterHTML", {"nodeId": node})["outerHTML"]
            if not HAN_OR_KANA.search(re.sub(r"<[^>]+>", "", text)):
                continue
            fonts = {font["familyName"] for font in cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]}
            if not fonts:  # not drawn (hidden, e.g. the copy of the title in the collapsed header)
                continue
            assert fonts & JAPANESE_FONTS, f"{selector} {text[:80]!r} drawn with {fonts} only"
            checked += 1
    cdp.detach()
    assert checked >= 3, "no Japanese text found in the sidebar and headings"
