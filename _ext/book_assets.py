"""Sphinx extension: the book's offline assets and its two languages.

The book is built once per language (``tools/build_book.py``): English at the site's root,
Japanese under ``ja/``. This extension

* links each chapter to its twin in the other build: the notebooks link to their twin as
  ``../ja/NAME.ipynb`` (which works in Jupyter and on GitHub); in the book that document belongs
  to the other build, so the link is rewritten to the twin's page there;
* serves ``plotly.min.js`` (copied from the plotly package that drew the figures, so the book
  needs no CDN) only to the pages that hold an interactive figure: 4.8 MB a page saved elsewhere;
* embeds a subset of IPAexGothic (shipped by matplotlib-fontja) in the style sheet, holding the
  Japanese characters this build's pages use (subset with fontTools at build time: a few hundred
  KB instead of 6 MB). Japanese text and figure labels then render on machines without a Japanese
  font, also from ``file://``, where a separately fetched font file is refused by the browser;
* removes what the book does not use and that only logs console errors: sphinx-thebe's scripts
  (added twice by Jupyter Book, the second copy throws), and sets the theme's default colour mode.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

from docutils import nodes
from sphinx import addnodes

FONT_FAMILY = "IPAexGothic"
# Japanese punctuation, kana, CJK ideographs, full-width forms: the font is used only for these.
UNICODE_RANGE = "U+3000-30FF, U+3400-4DBF, U+4E00-9FFF, U+F900-FAFF, U+FF00-FFEF"
ALWAYS_IN_SUBSET = [*range(0x3000, 0x3100), *range(0xFF01, 0xFF5F)]  # every kana and punctuation mark
JAPANESE_CHARACTER = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
ESCAPED_CHARACTER = re.compile(r"\\u([0-9a-fA-F]{4})")  # JSON in the pages (figure labels) escapes them
TWIN_TARGET = re.compile(r"chapters/(en|ja)/([\w-]+)")  # MyST resolves ../ja/NAME.ipynb to this document name
FONT_CSS = """\
@font-face {{
  font-family: "{family}";
  src: url("data:font/ttf;base64,{data}") format("truetype");
  font-weight: 100 900; /* one face for every weight: bold is synthesized from it */
  unicode-range: {unicode_range};
  font-display: block;
}}
html {{
  --pst-font-family-base: -apple-system, BlinkMacSystemFont, "Segoe UI", "Helvetica Neue", Arial, "Noto Sans JP",
    "Hiragino Sans", "Yu Gothic", "{family}", sans-serif;
  --pst-font-family-heading: var(--pst-font-family-base);
  --pst-font-family-monospace: SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace, "{family}";
}}
"""
# The theme's interface strings that it writes in English whatever the language (hard-coded in its
# templates, or missing from its Japanese catalogue), as the Japanese build shows them.
JAPANESE_INTERFACE = {
    "Toggle primary sidebar": "目次を開く・閉じる",
    "Toggle secondary sidebar": "このページの見出しを開く・閉じる",
    "Search this book...": "本書を検索…",
    "Color mode": "配色",
    "Launch interactive content": "ノートブックを開く",
    "Main": "本書の目次",
    "Page": "ページ内の見出し",
    "Link to this heading": "この見出しへのリンク",
    "Toggle hidden content": "隠れた内容を表示・非表示",
}
INTERFACE_ATTRIBUTE = re.compile(
    r'((?:title|aria-label|placeholder|data-bs-title|data-bs-original-title)=")('
    + "|".join(map(re.escape, JAPANESE_INTERFACE))
    + r')"'
)
LAYOUT_CSS = """\
/* Wide outputs wrap or scroll inside their own box, never the page. */
.cell_output pre, .output pre { white-space: pre-wrap; overflow-wrap: anywhere; }
.bd-article .cell_output .output.text_html { overflow-x: auto; max-width: 100%; }
.bd-article img { max-width: 100%; height: auto; }
.bd-article mjx-container[display="true"] { overflow-x: auto; overflow-y: hidden; max-width: 100%; }
"""


def book_language(app) -> str:
    return "ja" if (app.config.language or "en").startswith("ja") else "en"


def twin_url(language: str, docname: str, twin_language: str, twin_name: str) -> str:
    """The relative URL, from page ``docname`` of the ``language`` build, of a chapter in the other build."""
    up = "../" * docname.count("/")  # from the page to its build's root
    if language == "en":  # English at the site's root, Japanese under ja/
        return f"{up}ja/chapters/{twin_language}/{twin_name}.html"
    return f"{up}../chapters/{twin_language}/{twin_name}.html"


def _link_twins(app, doctree) -> None:
    """Point the links to the other language's notebooks at their pages in the other build."""
    language = book_language(app)
    for node in list(doctree.findall(addnodes.pending_xref)):
        match = TWIN_TARGET.fullmatch(node.get("reftarget", ""))
        if node.get("refdomain") != "doc" or match is None or match.group(1) == language:
            continue
        url = twin_url(language, app.env.docname, match.group(1), match.group(2))
        reference = nodes.reference("", "", *node.children, refuri=url, classes=["twin-link"])
        node.replace_self(reference)


def _page_context(app, pagename, templatename, context, doctree):
    body = context.get("body", "")
    if "Plotly.newPlot" in body:
        app.add_js_file("plotly.min.js")  # called here, for this page only
    scripts = context.get("script_files", [])
    context["script_files"] = [
        script for script in scripts
        if "thebe" not in str(getattr(script, "filename", script) or "")
        and "THEBE_JS_URL" not in str(getattr(script, "attributes", {}).get("body", ""))
    ]  # fmt: skip
    context["css_files"] = [
        css for css in context.get("css_files", []) if "thebe" not in str(getattr(css, "filename", css))
    ]


def _characters_used(outdir: Path, language: str) -> set[int]:
    """Every Japanese character in this build's pages and scripts (figure labels included).

    The Japanese build also keeps every kana and punctuation mark, for what a reader types.
    """
    used: set[int] = set(ALWAYS_IN_SUBSET if language == "ja" else ())
    for path in [*outdir.rglob("*.html"), *outdir.rglob("*.js")]:
        if "mathjax" in path.parts or path.name == "plotly.min.js":
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        text += "".join(chr(int(code, 16)) for code in ESCAPED_CHARACTER.findall(text))
        used.update(ord(character) for character in JAPANESE_CHARACTER.findall(text))
    return used


def subset_font(font_path: Path, characters: set[int]) -> bytes:
    """The glyphs of ``characters`` from the font at ``font_path``, as TrueType bytes."""
    from fontTools import subset

    options = subset.Options()
    options.layout_features = ["*"]  # vertical forms and the like: cheap, and kept correct
    options.name_IDs = ["*"]
    options.notdef_outline = True
    font = subset.load_font(str(font_path), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=sorted(characters))
    subsetter.subset(font)
    buffer = io.BytesIO()
    font.flavor = None
    subset.save_font(font, buffer, options)
    return buffer.getvalue()


def translate_interface(outdir: Path) -> None:
    """Write the theme's English interface strings of every page (and the toggle script) in Japanese."""
    for path in outdir.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        translated = INTERFACE_ATTRIBUTE.sub(lambda m: f'{m.group(1)}{JAPANESE_INTERFACE[m.group(2)]}"', text)
        if translated != text:
            path.write_text(translated, encoding="utf-8")
    toggle = outdir / "_static" / "togglebutton.js"
    if toggle.exists():
        text = toggle.read_text(encoding="utf-8")
        toggle.write_text(
            text.replace("Toggle hidden content", JAPANESE_INTERFACE["Toggle hidden content"]), encoding="utf-8"
        )


def _copy_assets(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    import matplotlib_fontja
    import plotly

    outdir = Path(app.outdir)
    static = outdir / "_static"
    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", static / "plotly.min.js")
    fonts = Path(matplotlib_fontja.__file__).parent / "fonts"
    (static / "fonts").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fonts / "IPA_Font_License_Agreement_v1.0.txt", static / "fonts" / "IPA_Font_License.txt")
    if book_language(app) == "ja":
        translate_interface(outdir)
    font = subset_font(fonts / "ipaexg.ttf", _characters_used(outdir, book_language(app)))
    css = FONT_CSS.format(family=FONT_FAMILY, data=base64.b64encode(font).decode("ascii"), unicode_range=UNICODE_RANGE)
    (static / "book-fonts.css").write_text(css + LAYOUT_CSS, encoding="utf-8")


def setup(app):
    app.connect("doctree-read", _link_twins)
    app.connect("html-page-context", _page_context)
    app.add_css_file("book-fonts.css")
    app.connect("build-finished", _copy_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
