"""Sphinx extension: serve plotly.js from the installed plotly package, never from a CDN.

The interactive figures in the notebooks are stored as plotly HTML without the
library (``include_plotlyjs=False``); every page loads one local copy of
``plotly.min.js``, copied here from the plotly package so that the version in the
page is the version that drew the figures and the book works offline.
"""

import shutil
from pathlib import Path


def _copy_plotly(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    import plotly

    source = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    target = Path(app.outdir) / "_static" / "plotly.min.js"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def setup(app):
    app.add_js_file("plotly.min.js")
    app.connect("build-finished", _copy_plotly)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
