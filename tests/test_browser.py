"""Open the built book in Debian's Chromium, driven by Playwright, as a reader would.

The book is served on localhost; every request that goes anywhere else is recorded
(and refused), and the test fails if there was one. Screenshots go to artifacts/.
"""

import functools
import http.server
import os
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
# BOOK_HTML: test a copy of the built book elsewhere (the default is the one scripts/build-book writes)
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
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
    book = "" if language == "en" else "/ja"
    page.goto(f"{server}{book}/chapters/{language}/00_introduction.html", wait_until="load")

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
    assert title_after != title_before
    if language == "en":
        assert "causal content" in title_after
    else:  # the figure speaks the page's language
        assert HAN_OR_KANA.search(title_after) and HAN_OR_KANA.search(title_before), (title_before, title_after)

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
    """Every sidebar entry, caption, heading and figure text with Japanese characters is drawn with a Japanese font.

    Chromium reports the fonts that drew a node's text; on a machine without Japanese fonts, a text
    laid out before the web font arrived kept a Latin font and showed empty boxes (tofu), as the
    bold sidebar captions once did.
    """
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    checked = 0
    for selector in (".caption-text", ".bd-sidenav a", "h1", "h2", ".js-plotly-plot svg text"):
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


# ----------------------------------------------------------------------------------------------
# Every page, as a reader meets it: from file:// (the offline book), on a desktop and on a phone.

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
BOOKS = {"en": HTML, "ja": HTML / "ja"}


def book_pages(language: str) -> list[Path]:
    found = [p for p in BOOKS[language].rglob("*.html") if "_static" not in p.parts]
    if language == "en":
        found = [p for p in found if not p.is_relative_to(BOOKS["ja"])]
    return sorted(p for p in found if p.name != "index.html" or p.parent in BOOKS.values())


def open_page(context, path: Path, viewport):
    """Open ``path`` from file:// and collect its console errors and any request that leaves the machine."""
    page = context.new_page()
    page.set_viewport_size(viewport)
    errors, outside = [], []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))

    def guard(route):
        if route.request.url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", guard)
    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_timeout(300)
    return page, errors, outside


# A box "overflows" when its content is wider than the box (the reader would scroll sideways).
OVERFLOWING_OUTPUTS = """() => {
  const wide = [];
  const boxes = document.querySelectorAll(
    '.cell_output pre, .cell_output .output, .cell_output table, .cell_input pre, '
    + 'article .table-wrapper, article table');
  for (const box of boxes) {
    if (box.scrollWidth > box.clientWidth + 1 && box.offsetParent !== null)
      wide.push(box.tagName + '.' + box.className + ': ' + box.scrollWidth + ' > ' + box.clientWidth + ' px: '
                + box.innerText.slice(0, 60));
  }
  const article = document.querySelector('.bd-article');
  for (const box of document.querySelectorAll('.cell_output, .cell_input')) {
    if (box.getBoundingClientRect().right > article.getBoundingClientRect().right + 1)
      wide.push('a cell wider than the article: ' + box.innerText.slice(0, 60));
  }
  return wide;
}"""

CUT_FIGURES = """(width) => {
  const cut = [];
  for (const figure of document.querySelectorAll('.js-plotly-plot, .bd-article img, .bd-article svg.main-svg')) {
    const box = figure.getBoundingClientRect();
    if (box.width > 0 && (box.right > width + 1 || box.left < -1))
      cut.push((figure.id || figure.className.baseVal || figure.className || figure.tagName) + ': '
               + Math.round(box.left) + '..' + Math.round(box.right) + ' px');
  }
  return cut;
}"""


@pytest.mark.parametrize("language", ["en", "ja"])
def test_every_page_has_no_console_error_and_nothing_wider_than_the_column(browser, language):
    problems = []
    for path in book_pages(language):
        page, errors, outside = open_page(browser, path, DESKTOP)
        name = path.relative_to(HTML)
        problems += [f"{name}: console error {e!r}" for e in errors]
        problems += [f"{name}: request left the machine {u}" for u in outside]
        if page.locator(".bd-article").count():
            problems += [f"{name}: {w}" for w in page.evaluate(OVERFLOWING_OUTPUTS)]
        page.close()
    assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} problems)"


@pytest.mark.parametrize("language", ["en", "ja"])
def test_every_figure_fits_a_phone(browser, language):
    checked, problems = 0, []
    for path in book_pages(language):
        if "Plotly.newPlot" not in path.read_text(encoding="utf-8") and "<img" not in path.read_text(encoding="utf-8"):
            continue
        page, errors, _ = open_page(browser, path, PHONE)
        page.wait_for_timeout(500)  # figures resize to the column
        name = path.relative_to(HTML)
        cut = page.evaluate(CUT_FIGURES, PHONE["width"])
        problems += [f"{name}: {c}" for c in cut]
        problems += [f"{name}: console error {e!r}" for e in errors]
        checked += 1
        page.close()
    assert checked >= 10
    assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} problems)"


@pytest.mark.parametrize("language", ["en", "ja"])
def test_the_phone_menu_opens_and_navigates(browser, language):
    book = BOOKS[language]
    page, errors, _ = open_page(browser, book / "chapters" / language / "01_swin.html", PHONE)
    # pydata-sphinx-theme 0.16 opens each sidebar on a phone as a modal dialog holding its content
    sidebar = page.locator("dialog#pst-primary-sidebar-modal")
    assert not sidebar.is_visible(), "the chapter list is open before a tap"
    page.locator("button.primary-toggle:visible").first.click()
    page.wait_for_timeout(500)
    box = sidebar.bounding_box()
    assert sidebar.is_visible() and box["x"] >= 0 and box["width"] > 200, f"the chapter list did not open: {box}"
    page.screenshot(path=str(ARTIFACTS / f"phone-menu-{language}.png"))
    sidebar.locator('a[href$="02_maxvit.html"]').first.click()
    page.wait_for_url(re.compile(r".*/02_maxvit\.html$"), timeout=10_000)
    assert page.evaluate("document.documentElement.lang") == language

    contents = page.locator("dialog#pst-secondary-sidebar-modal")  # the page's contents
    assert not contents.is_visible()
    page.locator("button.secondary-toggle:visible").first.click()
    page.wait_for_timeout(500)
    box = contents.bounding_box()
    assert contents.is_visible() and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 1, box
    assert contents.locator("a").count() >= 3, "the page's contents are empty"
    page.screenshot(path=str(ARTIFACTS / f"phone-contents-{language}.png"))
    page.close()
    assert not errors, errors
