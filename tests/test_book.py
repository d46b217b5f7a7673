"""The built book in _build/html (built by scripts/build-book before the tests run)."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
NAMES = sorted(p.stem for p in (ROOT / "chapters" / "en").glob("*.ipynb"))

pytestmark = pytest.mark.skipif(
    not (HTML / "index.html").exists(), reason="the book is not built: run scripts/build-book first"
)


def page(path: str) -> str:
    return (HTML / path).read_text(encoding="utf-8")


def search_index() -> dict:
    text = page("searchindex.js")
    return json.loads(text[text.index("(") + 1 : text.rindex(")")])


@pytest.mark.parametrize("term", ["注意", "計算", "系列", "間引き"])
def test_japanese_search_finds_the_japanese_pages(term):
    index = search_index()
    hits = index["terms"].get(term)
    assert hits is not None, f"searching {term} finds nothing"
    hits = hits if isinstance(hits, list) else [hits]
    pages = {index["docnames"][i] for i in hits}
    assert any(p.startswith("chapters/ja/") or p == "glossary" for p in pages), pages


def test_math_uses_the_local_mathjax_and_nothing_loads_from_a_cdn():
    assert (HTML / "_static" / "mathjax" / "tex-svg-full.js").exists()
    assert (HTML / "_static" / "plotly.min.js").exists()
    for html_file in HTML.rglob("*.html"):
        text = html_file.read_text(encoding="utf-8")
        for src in re.findall(r'<script[^>]+src="([^"]+)"', text):
            assert not src.startswith(("http:", "https:", "//")), f"{html_file.relative_to(HTML)} loads {src}"
        assert "cdn.plot.ly" not in text


@pytest.mark.parametrize("name", NAMES)
def test_chapter_pages_have_colab_buttons_and_twin_links(name):
    for language, twin in (("en", "ja"), ("ja", "en")):
        text = page(f"chapters/{language}/{name}.html")
        assert "colab.research.google.com/github/" in text and f"chapters/{language}/{name}.ipynb" in text
        assert f'href="../{twin}/{name}.html"' in text, f"{language}/{name} does not link to its twin"
        assert 'class="math' in text or "\\(" in text or "$$" in text or "math notranslate" in text


def test_interactive_figures_are_in_the_pages():
    for language in ("en", "ja"):
        text = page(f"chapters/{language}/00_introduction.html")
        assert 'id="intro-weights-en"' in text and 'id="intro-weights-ja"' in text
        assert "Plotly.newPlot" in text
