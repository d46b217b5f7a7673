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
  (added twice by Jupyter Book, the second copy throws), and sets the theme's default colour mode;
* keeps every page light (tests/test_page_weight.py holds the budgets): the font subset is WOFF2;
  the theme's Font Awesome script (1.5 MB, every icon of three packs) is cut down to the icons the
  pages use; MathJax is loaded as its separate components without the 0.4 MB context menu; the
  sphinx-design style sheet and script go only to pages that use sphinx-design.
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
ALWAYS_IN_SUBSET = [*range(0x3000, 0x3100), *range(0xFF01, 0xFF5F)]  # every kana and punctuation mark
JAPANESE_CHARACTER = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")
ESCAPED_CHARACTER = re.compile(r"\\u([0-9a-fA-F]{4})")  # JSON in the pages (figure labels) escapes them
TWIN_TARGET = re.compile(r"chapters/(en|ja)/([\w-]+)")  # MyST resolves ../ja/NAME.ipynb to this document name
FONT_CSS = """\
@font-face {{
  font-family: "{family}";
  src: url("data:font/woff2;base64,{data}") format("woff2");
  font-weight: 100 900; /* one face for every weight: bold is synthesized from it */
  font-display: block;
}}
html {{
  /* The embedded subset first: it holds Japanese characters only, so Latin text falls through to
     the fonts after it. Placed after a Latin font, Chromium drew a text's Japanese characters as
     empty boxes with that font (on a machine without Japanese fonts) before the subset was used. */
  --pst-font-family-base: "{family}", -apple-system, BlinkMacSystemFont, "Segoe UI", "Helvetica Neue", Arial,
    "Noto Sans JP", "Hiragino Sans", "Yu Gothic", sans-serif;
  --pst-font-family-heading: var(--pst-font-family-base);
  --pst-font-family-monospace: "{family}", SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
}}
/* The same for the figures' text (plotly writes its font list, attnlib.viz.PLOTLY_FONT, on each text). */
.js-plotly-plot svg text {{
  font-family: "{family}", "Open Sans", verdana, arial, "Noto Sans JP", sans-serif !important;
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
# MathJax 3.2.2 (_assets/mathjax: its LICENSE, and the components below as published in the
# package's es5/ folder). The combined tex-svg.js would add the context menu (0.4 MB, loading more
# on use); these components typeset the same TeX. TeX extensions beyond input/tex's (ams,
# newcommand, ...) load from input/tex/extensions/ when a formula uses one of their macros: scripts,
# which file:// allows.
MATHJAX_ENTRY = "mathjax/startup.js"
MATHJAX_COMPONENTS = ["input/tex", "output/svg", "a11y/assistive-mml"]  # assistive MathML: for screen readers
# The theme's icons (Font Awesome 6, three packs registered in this order in its fontawesome.js).
ICON_PACK_OF_CLASS = {"fab": "fab", "fa-brands": "fab", "far": "far", "fa-regular": "far"}  # else solid
ICON_PACK_REGISTRATION = re.compile(r'\w+\("(fa[bsr])",(\w+)\),\w+\("fa-\w+",\2\)')
CLASS_ATTRIBUTE = re.compile(r'class="([^"]*\bfa-[^"]*)"')
ICON_CLASSES_IN_SCRIPT = re.compile(r'"((?:fa[bsr]?|fa-solid|fa-regular|fa-brands) fa-[\w-]+)"')
ICON_BEFORE_RULE = re.compile(r'((?:\.fa-[\w-]+:before,?)+)\{content:"([^"]*)"\}')  # the web font's glyph of an icon
ICON_CODEPOINT = re.compile(r'"\\([ef][0-9a-f]{3})\b')  # a private-use codepoint in a style sheet's string
LAYOUT_CSS = """\
/* Code and printed output at 0.8rem: 84 columns fit the column at 1280 px (tools/chapter_format.py). */
.cell_input pre, .cell_output pre { font-size: 0.8rem; }
/* Printed text wraps inside its box, never the page: chapters print at most 84 columns
   (tests/test_notebooks.py); what may be wider is printed library source, which wraps. */
.cell_output pre, .output pre { white-space: pre-wrap; overflow-wrap: anywhere; }
/* Printed tables in the output's size too; on a phone a wide one scrolls inside its own box. */
.bd-article .cell_output table { font-size: 0.8rem; }
.bd-article .cell_output .output { overflow-x: auto; max-width: 100%; }
.bd-article img { max-width: 100%; height: auto; }
/* No word left alone on a heading's last line (the front page's title ended in a lone character). */
h1, h2, .navbar-brand { text-wrap: balance; }
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


GLOSSARY = "glossary"


def glossary_id(term: str) -> str:
    """The anchor of a glossary row: its English term, lower case, words joined by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", term.lower()).strip("-")


def _anchor_glossary_rows(app, doctree) -> None:
    """Give every row of the glossary's table an id (its English term), so that a link lands on it."""
    if app.env.docname != GLOSSARY:
        return
    for table in doctree.findall(nodes.table):
        for row in table.findall(nodes.row):
            if isinstance(row.parent, nodes.thead):
                continue
            first = row.children[0].astext().strip()
            if first:
                row["ids"].append(glossary_id(first))


def _link_across_builds(app, doctree) -> None:
    """Links MyST cannot resolve inside one build, made plain links to their page.

    * ``../ja/NAME.ipynb`` (a chapter's twin): the page of the other language's build;
    * ``../../glossary.md#term-id``: the glossary's row (see :func:`_anchor_glossary_rows`).
    """
    language = book_language(app)
    up = "../" * app.env.docname.count("/")  # from the page to its build's root
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("refdomain") != "doc":
            continue
        target, classes = node.get("reftarget", ""), []
        twin = TWIN_TARGET.fullmatch(target)
        if twin is not None and twin.group(1) != language:
            url, classes = twin_url(language, app.env.docname, twin.group(1), twin.group(2)), ["twin-link"]
        elif target == GLOSSARY and node.get("reftargetid"):
            url = f"{up}{GLOSSARY}.html#{node['reftargetid']}"
        else:
            continue
        node.replace_self(nodes.reference("", "", *node.children, refuri=url, classes=classes))


def _page_context(app, pagename, templatename, context, doctree):
    body = context.get("body", "")
    if "Plotly.newPlot" in body:
        app.add_js_file("plotly.min.js")  # called here, for this page only
    # sphinx-thebe's scripts (the book does not use thebe; Jupyter Book adds them twice and the second
    # copy throws), and sphinx-design's 55 KB style sheet and tab script where a page has no sd- class
    unused = ["thebe", "THEBE_JS_URL"] + ([] if "sd-" in body else ["sphinx-design", "design-tabs"])
    for key in ("script_files", "css_files"):
        context[key] = [item for item in context.get(key, []) if not any(m in _asset_text(item) for m in unused)]


def _asset_text(item) -> str:
    """A page's script or style sheet as text to search: its file name, or its inline body."""
    return f"{getattr(item, 'filename', item) or ''} {getattr(item, 'attributes', {}).get('body', '')}"


def _configure_mathjax(app, config) -> None:
    """Load MathJax as components (see MATHJAX_COMPONENTS), keeping the page's other MathJax settings."""
    config.mathjax_path = MATHJAX_ENTRY
    settings = dict(config.mathjax3_config or {})
    settings["loader"] = {**settings.get("loader", {}), "load": MATHJAX_COMPONENTS}
    config.mathjax3_config = settings


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
    """The glyphs of ``characters`` from the font at ``font_path``, as WOFF2 bytes."""
    from fontTools import subset

    options = subset.Options()
    options.layout_features = ["*"]  # vertical forms and the like: cheap, and kept correct
    options.name_IDs = ["*"]
    options.notdef_outline = True
    options.flavor = "woff2"  # Brotli-compressed (needs the brotli package): about half the TrueType bytes
    font = subset.load_font(str(font_path), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=sorted(characters))
    subsetter.subset(font)
    buffer = io.BytesIO()
    subset.save_font(font, buffer, options)
    return buffer.getvalue()


def icons_used(outdir: Path) -> set[tuple[str, str]]:
    """Every (pack, icon) that this build's pages and the theme's scripts name, e.g. ("fab", "github")."""
    used = set()
    classes = [m for path in outdir.rglob("*.html") for m in CLASS_ATTRIBUTE.findall(path.read_text(encoding="utf-8"))]
    for script in (outdir / "_static" / "scripts").glob("*.js"):
        if script.name != "fontawesome.js":
            classes += ICON_CLASSES_IN_SCRIPT.findall(script.read_text(encoding="utf-8"))
    for names in classes:
        names = names.split()
        pack = next((ICON_PACK_OF_CLASS[name] for name in names if name in ICON_PACK_OF_CLASS), "fas")
        used.update((pack, name[3:]) for name in names if name.startswith("fa-"))
    return used  # holds non-icon classes too (fa-lg, fa-solid): they match no icon


def _object_entries(text: str, start: int) -> tuple[list[tuple[str, str]], int]:
    """The entries (key, value's source) of the JavaScript object literal whose ``{`` is at ``start``,
    and the index after its ``}``."""
    entries, depth, key_start, colon, quote = [], 0, start + 1, None, None
    index = start + 1
    while True:
        character = text[index]
        if quote:
            if character == "\\":
                index += 1
            elif character == quote:
                quote = None
        elif character in "\"'":
            quote = character
        elif character in "[{(":
            depth += 1
        elif character in ",]})" and depth == 0:
            if colon is not None:
                entries.append((text[key_start:colon].strip('"'), text[colon + 1 : index]))
            if character != ",":
                return entries, index + 1
            key_start, colon = index + 1, None
        elif character in "]})":
            depth -= 1
        elif character == ":" and depth == 0 and colon is None:
            colon = index
        index += 1


def subset_icons(script: str, used: set[tuple[str, str]]) -> str:
    """The theme's fontawesome.js with only the ``used`` icons left in its packs.

    Each pack is an object literal, ``p={name:[width,height,[aliases],"unicode","path"],...}``,
    registered by ``d("fab",p),d("fa-brands",p)``; the script's code (which turns ``<i class="fa-...">``
    into the inline SVG the theme's style expects) is kept whole. An icon is also kept when a page
    names it by one of its aliases.
    """
    pieces, position, found = [], 0, set()
    for registration in ICON_PACK_REGISTRATION.finditer(script):
        pack, variable = registration.groups()
        start = script.rfind(variable + "={", position, registration.start()) + len(variable) + 1
        entries, end = _object_entries(script, start)
        kept = []
        for name, value in entries:
            aliases = set(re.findall(r'"([a-z0-9-]+)"', value.split("]", 1)[0]))
            names = {name} | aliases
            if any((pack, alias) in used for alias in names):
                kept.append(f'"{name}":{value}')
                found.update((pack, alias) for alias in names)
        pieces += [script[position:start], "{" + ",".join(kept) + "}"]
        position = end
    if not pieces:
        raise RuntimeError("fontawesome.js: no icon pack found; has the theme changed its Font Awesome build?")
    pieces.append(script[position:])
    return re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", "".join(pieces))


def trim_icon_fonts(static: Path, used: set[tuple[str, str]]) -> None:
    """Cut the theme's Font Awesome web fonts to the glyphs its style sheets still name.

    The theme draws a few icons with these fonts from its style sheets (admonition titles, external
    links, breadcrumbs); the ``<i class="fa-...">`` icons show the font's glyph for a moment before
    the script swaps them for SVG, which makes the browser load all three fonts (0.3 MB). The rules
    that give each of the 1,900 icons its glyph are dropped for icons no page uses; every glyph that
    a remaining rule or style names stays in the fonts.
    """
    names = {name for _, name in used}
    sheet = static / "styles" / "pydata-sphinx-theme.css"

    def keep_used(rule: re.Match) -> str:
        selectors = rule.group(1).rstrip(",").split(",")
        return rule.group(0) if any(s[4:-7] in names for s in selectors) else ""

    sheet.write_text(ICON_BEFORE_RULE.sub(keep_used, sheet.read_text(encoding="utf-8")), encoding="utf-8")
    codepoints = {int(code, 16) for css in static.rglob("*.css") for code in ICON_CODEPOINT.findall(css.read_text())}
    from fontTools import subset

    for font_path in (static / "vendor" / "fontawesome" / "webfonts").glob("*.*"):
        if font_path.suffix not in (".woff2", ".ttf"):
            continue
        options = subset.Options()
        options.flavor = "woff2" if font_path.suffix == ".woff2" else None
        options.notdef_outline = True
        font = subset.load_font(str(font_path), options)
        subsetter = subset.Subsetter(options)
        subsetter.populate(unicodes=sorted(codepoints & set(font.getBestCmap())))
        subsetter.subset(font)
        subset.save_font(font, str(font_path), options)


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
    fontawesome = static / "scripts" / "fontawesome.js"
    icons = icons_used(outdir)
    fontawesome.write_text(subset_icons(fontawesome.read_text(encoding="utf-8"), icons), encoding="utf-8")
    trim_icon_fonts(static, icons)
    fontawesome.with_name("fontawesome.js.map").unlink(missing_ok=True)  # maps the whole script, no longer this one
    font = subset_font(fonts / "ipaexg.ttf", _characters_used(outdir, book_language(app)))
    css = FONT_CSS.format(family=FONT_FAMILY, data=base64.b64encode(font).decode("ascii"))
    (static / "book-fonts.css").write_text(css + LAYOUT_CSS, encoding="utf-8")


def setup(app):
    app.connect("config-inited", _configure_mathjax)
    app.connect("doctree-read", _anchor_glossary_rows)
    app.connect("doctree-read", _link_across_builds)
    app.connect("html-page-context", _page_context)
    app.add_css_file("book-fonts.css")
    app.connect("build-finished", _copy_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
