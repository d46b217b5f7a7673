"""The built book in _build/html (built by scripts/build-book before the tests run).

Two builds under one site (tools/build_book.py): English at _build/html, Japanese at _build/html/ja.
"""

import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# BOOK_HTML: test a copy of the built book elsewhere (the default is the one scripts/build-book writes)
HTML = Path(os.environ.get("BOOK_HTML", ROOT / "_build" / "html"))
NAMES = sorted(p.stem for p in (ROOT / "chapters" / "en").glob("*.ipynb"))
BOOKS = {"en": HTML, "ja": HTML / "ja"}  # each language's build
sys.path.insert(0, str(ROOT / "_ext"))
import book_assets  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (HTML / "index.html").exists(), reason="the book is not built: run scripts/build-book first"
)


def page(path: str) -> str:
    return (HTML / path).read_text(encoding="utf-8")


def chapter_page(language: str, name: str) -> Path:
    return BOOKS[language] / "chapters" / language / f"{name}.html"


def pages(language: str) -> list[Path]:
    """The book's pages of one language (the theme's own template fragments aside)."""
    book = BOOKS[language]
    found = [p for p in book.rglob("*.html") if "_static" not in p.parts]
    if language == "en":
        found = [p for p in found if not p.is_relative_to(BOOKS["ja"])]
    return sorted(found)


def search_index(language: str) -> dict:
    text = (BOOKS[language] / "searchindex.js").read_text(encoding="utf-8")
    return json.loads(text[text.index("(") + 1 : text.rindex(")")])


@pytest.mark.parametrize("term", ["注意", "計算", "系列", "間引き"])
def test_japanese_search_finds_the_japanese_pages(term):
    index = search_index("ja")
    hits = index["terms"].get(term)
    assert hits is not None, f"searching {term} finds nothing"
    hits = hits if isinstance(hits, list) else [hits]
    found = {index["docnames"][i] for i in hits}
    assert any(p.startswith("chapters/ja/") for p in found), found


@pytest.mark.parametrize("language", ["en", "ja"])
def test_each_search_index_holds_only_its_language(language):
    other = "ja" if language == "en" else "en"
    docnames = search_index(language)["docnames"]
    assert any(d.startswith(f"chapters/{language}/") for d in docnames)
    assert not any(d.startswith(f"chapters/{other}/") for d in docnames), "a search finds the other language"


def test_math_uses_the_local_mathjax_and_nothing_loads_from_a_cdn():
    for book in BOOKS.values():
        assert (book / "_static" / "plotly.min.js").exists()
    for html_file in HTML.rglob("*.html"):
        text = html_file.read_text(encoding="utf-8")
        for src in re.findall(r'<script[^>]+src="([^"]+)"', text):
            assert not src.startswith(("http:", "https:", "//")), f"{html_file.relative_to(HTML)} loads {src}"
        assert "cdn.plot.ly" not in text and "THEBE_JS_URL" not in text, html_file.relative_to(HTML)
    assert 'src="../../_static/mathjax/startup.js' in page("chapters/en/10_flash_attention.html")


@pytest.mark.parametrize("name", NAMES)
def test_chapter_pages_have_colab_buttons_and_link_to_their_twin_in_the_other_build(name):
    for language, twin in (("en", "ja"), ("ja", "en")):
        path = chapter_page(language, name)
        text = path.read_text(encoding="utf-8")
        assert "colab.research.google.com/github/" in text and f"chapters/{language}/{name}.ipynb" in text
        links = re.findall(r'<a class="[^"]*twin-link[^"]*" href="([^"]+)"', text)
        assert len(links) == 1, f"{language}/{name}: expected one link to the twin, found {links}"
        target = (path.parent / links[0]).resolve()
        assert target == chapter_page(twin, name).resolve() and target.exists(), links[0]
        assert f'<html lang="{language}"' in text


@pytest.mark.parametrize("language", ["en", "ja"])
def test_previous_and_next_stay_in_the_pages_language(language):
    """From the first page to the last, a reader following next/previous stays in one build."""
    book = BOOKS[language].resolve()
    other = BOOKS["ja"].resolve() if language == "en" else None
    steps = 0
    for path in pages(language):
        text = path.read_text(encoding="utf-8")
        for relation in ("next", "prev"):
            for href in re.findall(rf'<link rel="{relation}" title="[^"]*" href="([^"]+)"', text):
                target = (path.parent / href).resolve()
                assert target.exists(), f"{path.relative_to(HTML)}: {relation} -> {href} is missing"
                assert target.is_relative_to(book), f"{path.relative_to(HTML)}: {relation} leaves the book"
                assert other is None or not target.is_relative_to(other), f"{path.relative_to(HTML)}: {relation} -> ja"
                assert f'<html lang="{language}"' in target.read_text(encoding="utf-8")
                steps += 1
    assert steps >= 2 * len(NAMES)


def test_japanese_pages_show_japanese_interface_strings():
    for path in pages("ja"):
        text = path.read_text(encoding="utf-8")
        left = [english for english in book_assets.JAPANESE_INTERFACE if f'"{english}"' in text]
        assert not left, f"{path.relative_to(HTML)} keeps the theme's English {left}"
    text = chapter_page("ja", "01_swin").read_text(encoding="utf-8")
    assert "前へ" in text and "次へ" in text and "クリックして表示" in text
    assert "Click to show" not in text and "previous" not in text.lower().split("</head>")[1]


def test_plotly_loads_only_on_pages_with_an_interactive_figure():
    with_figures = 0
    for language in BOOKS:
        for path in pages(language):
            text = path.read_text(encoding="utf-8")
            has_figure = "Plotly.newPlot" in text
            assert ("plotly.min.js" in text) == has_figure, path.relative_to(HTML)
            with_figures += has_figure
    assert with_figures >= 2 * 10


def test_interactive_figures_are_in_the_pages():
    for language in BOOKS:
        text = chapter_page(language, "00_introduction").read_text(encoding="utf-8")
        assert 'id="intro-weights-en"' in text and 'id="intro-weights-ja"' in text
        assert "Plotly.newPlot" in text


MATH_OR_CODE = re.compile(
    r"<(script|style|pre|code|textarea)\b.*?</\1>|<(span|div) class=\"math[^\"]*\"[^>]*>.*?</\2>", re.S
)
RAW_TEX = re.compile(r"\\(frac|sqrt|sum|mathrm|times|cdot|top|log|exp|le|ge|in|to)\b|\$[^$\s][^$]*\$")


@pytest.mark.parametrize("language", ["en", "ja"])
def test_no_raw_tex_in_the_prose(language):
    """Every formula reaches MathJax: TeX left in the page text (outside math, code and scripts) is a
    formula that the markdown parser broke (e.g. a line inside $...$ starting with '+ ' became a list)."""
    for path in pages(language):
        body = path.read_text(encoding="utf-8").split("<body", 1)[-1]
        text = re.sub(r"<[^>]+>", " ", MATH_OR_CODE.sub(" ", body))
        found = RAW_TEX.search(text)
        assert found is None, (
            f"{path.relative_to(HTML)}: raw TeX {text[max(found.start() - 60, 0) : found.end() + 20]!r}"
        )


def test_the_raw_tex_check_finds_a_broken_formula():
    broken = "<p>the count is $12 d^2$ per layer</p><ul><li><p>4d^2 \\frac{a}{b}$</p></li></ul>"
    text = re.sub(r"<[^>]+>", " ", MATH_OR_CODE.sub(" ", broken))
    assert RAW_TEX.search(text)
    typeset = '<p>the count is <span class="math notranslate nohighlight">\\(12 \\frac{d}{2}\\)</span></p>'
    assert not RAW_TEX.search(re.sub(r"<[^>]+>", " ", MATH_OR_CODE.sub(" ", typeset)))


def test_links_to_a_glossary_term_land_on_its_row():
    links = 0
    for language, book in BOOKS.items():
        glossary = (book / "glossary.html").read_text(encoding="utf-8")
        rows = set(re.findall(r'<tr[^>]* id="([^"]+)"', glossary))
        assert book_assets.glossary_id("inverse temperature") in rows and len(rows) > 50, sorted(rows)[:5]
        for path in pages(language):
            for href in re.findall(r'href="([^"#]*glossary\.html)#([^"]+)"', path.read_text(encoding="utf-8")):
                assert (path.parent / href[0]).resolve() == (book / "glossary.html").resolve(), href
                assert href[1] in rows, f"{path.relative_to(HTML)} links to a glossary row that is not there: {href}"
                links += 1
    assert links >= 2


def test_no_empty_index_page():
    for book in BOOKS.values():
        assert not (book / "genindex.html").exists()
        assert "genindex.html" not in (book / "index.html").read_text(encoding="utf-8")
