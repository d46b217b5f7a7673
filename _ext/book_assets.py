"""Sphinx extension: the book's offline assets, taken from the installed packages.

* ``plotly.min.js``: the interactive figures are stored as plotly HTML without the
  library (``include_plotlyjs=False``); every page loads one local copy, copied here
  from the plotly package, so the version in the page is the one that drew the
  figures and the book needs no CDN.
* ``ipaexg.ttf`` (IPAexGothic, shipped by matplotlib-fontja): a web font used only for
  Japanese characters (``unicode-range``), so Japanese text and figure labels render
  on machines without a Japanese font; the static figures use the same font.
* ``<html lang="ja">`` on the Japanese chapters (the book's language is English): screen
  readers then read them with a Japanese voice, and browsers pick Japanese glyph shapes
  and fonts for the Han characters.
"""

import shutil
from pathlib import Path

FONT_CSS = """\
@font-face {
  font-family: "IPAexGothic";
  src: url("fonts/ipaexg.ttf") format("truetype");
  font-weight: 100 900; /* one file for every weight: bold is synthesized from it */
  unicode-range: U+3000-30FF, U+3400-4DBF, U+4E00-9FFF, U+F900-FAFF, U+FF00-FFEF;
  font-display: swap;
}
html {
  --pst-font-family-base: -apple-system, BlinkMacSystemFont, "Segoe UI", "Helvetica Neue", Arial, "Noto Sans JP",
    "Hiragino Sans", "Yu Gothic", "IPAexGothic", sans-serif;
  --pst-font-family-heading: var(--pst-font-family-base);
  --pst-font-family-monospace: SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace, "IPAexGothic";
}
"""


def _copy_assets(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    import matplotlib_fontja
    import plotly

    static = Path(app.outdir) / "_static"
    (static / "fonts").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", static / "plotly.min.js")
    fonts = Path(matplotlib_fontja.__file__).parent / "fonts"
    shutil.copyfile(fonts / "ipaexg.ttf", static / "fonts" / "ipaexg.ttf")
    shutil.copyfile(fonts / "IPA_Font_License_Agreement_v1.0.txt", static / "fonts" / "IPA_Font_License.txt")
    (static / "book-fonts.css").write_text(FONT_CSS, encoding="utf-8")


def _page_context(app, pagename, templatename, context, doctree):
    if pagename.startswith("chapters/ja/"):
        context["language"] = "ja"
    # Fetch the Japanese font with the page: a text laid out before the font arrives may keep
    # a Latin fallback font (seen in Chromium on a machine without Japanese fonts).
    font = context["pathto"]("_static/fonts/ipaexg.ttf", 1)
    preload = f'<link rel="preload" href="{font}" as="font" type="font/ttf" crossorigin>\n'
    context["metatags"] = context.get("metatags", "") + preload


def setup(app):
    app.connect("html-page-context", _page_context)
    app.add_js_file("plotly.min.js")
    app.add_css_file("book-fonts.css")
    app.connect("build-finished", _copy_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
