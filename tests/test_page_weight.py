"""What a reader's browser loads for each page of the built book (both languages), and its budget.

A page's weight is its HTML plus every local script, style sheet, image and web font it references
(style sheets' url() and @import followed; a data: URL counts as part of the file holding it), each
file counted once. MathJax loads its components from its startup script: a page with math is charged
with every component shipped in _static/mathjax/ (TeX extensions, loaded only for the rare formula
that uses one, 1-40 KB each, are left out).

Budgets:
- a page without an interactive figure: 3 MB (MathJax 1.7 MB of it, on pages with math);
- a page with one: the same 3 MB, plus plotly.min.js (the library that draws the figures, 4.8 MB,
  shipped as the plotly package has it), plus 1.5 MB for the figures' data in the page.
"""

import base64
import io
import re
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
BUILDS = {"en": HTML, "ja": HTML / "ja"}
MB = 1_000_000
PAGE_BUDGET = 3 * MB
FIGURE_DATA_BUDGET = 1.5 * MB

pytestmark = pytest.mark.skipif(
    not (HTML / "index.html").exists(), reason="the book is not built: run scripts/build-book first"
)

SCRIPT = re.compile(r'<script\b[^>]*?\bsrc="([^"]+)"')
IMAGE = re.compile(r'<img\b[^>]*?\bsrc="([^"]+)"')
LINK = re.compile(r"<link\b([^>]*)>")
CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+)""")
CSS_IMPORT = re.compile(r"""@import\s+["']([^"']+)""")
FONT_FACE = re.compile(r"@font-face\s*\{[^}]*\}")
# Font Awesome's classes that style an icon rather than name one
ICON_MODIFIER = re.compile(
    r"fa-(solid|regular|brands|fw|lg|xs|sm|xl|2xs|2xl|\d+x|spin|pulse|beat|fade|bounce|shake|flip"
    r"|rotate-\d+|border|inverse|stack|stack-\dx|li|ul|pull-(left|right))"
)
JAPANESE = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
ESCAPED = re.compile(r"\\u([0-9a-fA-F]{4})")


def pages() -> list[Path]:
    """Every page of both builds (the redirect ja/index.html included: it weighs what it weighs)."""
    return sorted(p for p in HTML.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)


def local_file(base: Path, url: str) -> Path | None:
    if url.startswith(("data:", "http:", "https:", "//", "#", "mailto:", "javascript:")):
        return None
    path = (base.parent / unquote(urlsplit(url).path)).resolve()
    return path if path.is_file() else None


def references(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    found = SCRIPT.findall(text) + IMAGE.findall(text)
    for attributes in LINK.findall(text):
        rel = re.search(r'rel="([^"]+)"', attributes)
        href = re.search(r'href="([^"]+)"', attributes)
        if rel and href and {"stylesheet", "preload", "icon"} & set(rel.group(1).split()):
            found.append(href.group(1))
    return found


def style_references(sheet: str) -> list[str]:
    """What a style sheet makes the browser load: imports, images, and each web font's first source
    (a browser takes the first format it reads; all of today's read WOFF2, listed first)."""
    fonts = FONT_FACE.findall(sheet)
    found = [url for face in fonts for url in CSS_URL.findall(face)[:1]]
    for face in fonts:
        sheet = sheet.replace(face, "")
    return found + CSS_URL.findall(sheet) + CSS_IMPORT.findall(sheet)


def loaded_files(page: Path) -> set[Path]:
    files = {page.resolve()}
    pending = [(page, url) for url in references(page)]
    while pending:
        base, url = pending.pop()
        path = local_file(base, url)
        if path is None or path in files:
            continue
        files.add(path)
        if path.suffix == ".css":
            pending += [(path, ref) for ref in style_references(path.read_text(encoding="utf-8", errors="ignore"))]
        if path.name == "startup.js" and path.parent.name == "mathjax":
            extensions = path.parent / "input" / "tex" / "extensions"
            files.update(p.resolve() for p in path.parent.rglob("*.js") if extensions not in p.parents)
    return files


def weight(page: Path) -> tuple[int, bool]:
    """(bytes, whether the page holds an interactive figure)."""
    files = loaded_files(page)
    return sum(f.stat().st_size for f in files), any(f.name == "plotly.min.js" for f in files)


def test_every_page_is_within_its_budget():
    plotly = HTML / "_static" / "plotly.min.js"
    figure_budget = PAGE_BUDGET + plotly.stat().st_size + FIGURE_DATA_BUDGET
    weights = {page.relative_to(HTML).as_posix(): weight(page) for page in pages()}
    assert len(weights) >= 30, weights
    for figures in (False, True):
        kind = {name: size for name, (size, has) in weights.items() if has == figures}
        heaviest = max(kind, key=kind.get)
        label = "with figures" if figures else "without figures"
        print(f"heaviest page {label}: {heaviest}, {kind[heaviest] / MB:.2f} MB ({len(kind)} pages)")
    over = [
        f"{name}: {size / MB:.2f} MB"
        for name, (size, figures) in weights.items()
        if size > (figure_budget if figures else PAGE_BUDGET)
    ]
    assert not over, f"over budget ({PAGE_BUDGET / MB:.1f} MB, {figure_budget / MB:.1f} MB with figures): {over}"


def test_weight_counts_what_a_page_loads():
    """The measure itself: a chapter with math is charged with MathJax, its style sheets' fonts and plotly."""
    names = {p.relative_to(HTML).as_posix() for p in loaded_files(HTML / "chapters" / "en" / "00_introduction.html")}
    assert {"_static/plotly.min.js", "_static/mathjax/startup.js", "_static/mathjax/output/svg/fonts/tex.js"} <= names
    assert "_static/book-fonts.css" in names and any(n.endswith(".woff2") for n in names), names
    assert weight(HTML / "search.html")[0] < weight(HTML / "glossary.html")[0]  # no math, no figure


def icons_in_subset(script: str) -> dict[str, set[str]]:
    """The icon names (aliases included) of each pack in the built fontawesome.js."""
    sys.path.insert(0, str(ROOT / "_ext"))
    from book_assets import ICON_PACK_REGISTRATION, _object_entries

    packs: dict[str, set[str]] = {}
    for registration in ICON_PACK_REGISTRATION.finditer(script):
        pack, variable = registration.groups()
        start = script.rfind(variable + "={", 0, registration.start()) + len(variable) + 1
        entries, _ = _object_entries(script, start)
        names = packs.setdefault(pack, set())
        for name, value in entries:
            names |= {name, *re.findall(r'"([a-z0-9-]+)"', value.split("]", 1)[0])}
    return packs


@pytest.mark.parametrize("language", BUILDS)
def test_the_icon_subset_covers_every_icon_of_the_pages(language):
    build = BUILDS[language]
    script = (build / "_static" / "scripts" / "fontawesome.js").read_text(encoding="utf-8")
    assert len(script) < 150_000, "fontawesome.js holds every icon again"
    packs = icons_in_subset(script)
    assert set(packs) == {"fab", "far", "fas"}, packs
    pack_of = {"fab": "fab", "fa-brands": "fab", "far": "far", "fa-regular": "far"}
    missing, seen = set(), set()
    for page in build.rglob("*.html"):
        if page.is_relative_to(HTML / "ja") and build == HTML:
            continue
        for classes in re.findall(r'class="([^"]*\bfa-[^"]*)"', page.read_text(encoding="utf-8")):
            classes = classes.split()
            pack = next((pack_of[c] for c in classes if c in pack_of), "fas")
            for icon in (c[3:] for c in classes if c.startswith("fa-") and not ICON_MODIFIER.fullmatch(c)):
                seen.add((pack, icon))
                if icon not in packs[pack]:
                    missing.add((pack, icon))
    assert {("fas", "bars"), ("fab", "github"), ("fas", "magnifying-glass")} <= seen, seen
    assert not missing, f"icons used but not in the subset: {sorted(missing)}"


@pytest.mark.parametrize("language", BUILDS)
def test_the_font_subset_covers_every_japanese_character_of_the_pages(language):
    from fontTools.ttLib import TTFont

    build = BUILDS[language]
    css = (build / "_static" / "book-fonts.css").read_text(encoding="utf-8")
    data = re.search(r'url\("data:font/woff2;base64,([^"]+)"\)', css)
    assert data, "book-fonts.css holds no WOFF2 data: URL"
    cmap = set(TTFont(io.BytesIO(base64.b64decode(data.group(1)))).getBestCmap())
    used = set()
    for page in build.rglob("*.html"):
        if page.is_relative_to(HTML / "ja") and build == HTML:
            continue
        text = page.read_text(encoding="utf-8")
        text += "".join(chr(int(code, 16)) for code in ESCAPED.findall(text))  # figure labels in JSON
        used |= {ord(c) for c in JAPANESE.findall(text)}
    assert len(used) > (500 if language == "ja" else 10), len(used)
    # what the whole font has: a range's end in a script (\u9fff) is no character to draw
    import matplotlib_fontja

    font = Path(matplotlib_fontja.__file__).parent / "fonts" / "ipaexg.ttf"
    missing = "".join(sorted(chr(c) for c in used & set(TTFont(font).getBestCmap()) - cmap))
    assert not missing, f"characters of the {language} pages missing from the font subset: {missing}"
