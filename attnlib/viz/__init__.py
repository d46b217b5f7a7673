"""Figures of attention patterns and weights, for the book and for a live kernel.

Three kinds of figure, one call to pick:

* :func:`heatmap` - a static matplotlib heatmap (Japanese labels render through
  matplotlib-fontja, imported here).
* :func:`slider_heatmap` - a plotly heatmap with a slider over precomputed frames
  (query position, head, seed...). It is stored in the notebook as HTML that
  needs no kernel and no network: the book serves one local copy of plotly.js
  (see ``_ext/book_assets.py``); the HTML itself never includes or fetches it.
* :func:`explore` - *one call in a notebook*: in a live kernel (Jupyter, Colab) it
  shows ipywidgets controls that recompute the figure; when the notebook is
  executed for the book (``ATTNLIB_STATIC=1``, set by ``tools/nbbuild.py`` and
  the test command) or outside a kernel it precomputes every frame and shows
  the slider figure.

Text in both languages: every label (titles, axis titles, slider labels, ticks, categories) may be
:func:`text` ``(en=..., ja=...)``. A stored figure shows English, and Japanese on a page whose
``<html lang>`` starts with ``ja`` (the figure's own script swaps the strings: the data is stored
once); a live kernel shows :data:`LANGUAGE`. :func:`show_figure` does the same for a matplotlib
figure drawn once per language. Stored figures follow the column's width, down to a phone's.

Frames are 2-D arrays ``(rows, cols)``: a boolean pattern ``(N_q, N_k)``, weights,
or small integer categories (e.g. 0 none, 1 global, 2 window, 3 random).

Stored figures are the same on every machine: float frames are rounded to
:data:`SIGNIFICANT_DIGITS` significant digits before they are written into the page
(what the eye can tell apart on a colour scale; another CPU's last-digit rounding then
disappears), which also keeps pages light. A figure whose HTML exceeds
:data:`FIGURE_BYTES_LIMIT` gets a warning: use fewer or smaller frames.
Chapter: "Introduction" (chapters/*/00_introduction.ipynb).
"""

from __future__ import annotations

import itertools
import os
import re
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from ._static import StaticFigure, figure_images, show_figure
from ._text import Bilingual, in_language, japanese_patch, text
from ._text import check_language as _check_language

__all__ = [
    "text",
    "Bilingual",
    "in_language",
    "LANGUAGE",
    "show_figure",
    "figure_images",
    "StaticFigure",
    "show_plotly",
    "heatmap",
    "slider_heatmap",
    "explore",
    "figure_html",
    "in_live_kernel",
    "round_significant",
    "CATEGORY_COLORS",
    "SIGNIFICANT_DIGITS",
    "FIGURE_BYTES_LIMIT",
]

# Figure text falls back to the book's Japanese web font (see _ext/book_assets.py).
PLOTLY_FONT = '"Open Sans", verdana, arial, sans-serif, "Noto Sans JP", "IPAexGothic"'
# Colours for categorical patterns, index = category value. Colour-blind friendly (Okabe-Ito).
CATEGORY_COLORS = [
    "#f2f2f2", "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00",
    "#f0e442", "#000000", "#999999", "#8c564b", "#17becf",
]  # fmt: skip
SIGNIFICANT_DIGITS = 4  # float figure data is stored with this many significant digits
FIGURE_BYTES_LIMIT = 2_000_000  # a figure's HTML above this (2 MB) gets a warning
LANGUAGE = "en"  # the language of figures drawn in a live kernel ("en" or "ja"); a stored page picks its own
GRID_COLOR = "rgba(90, 90, 90, 0.7)"  # tile grid lines: visible on light and dark cells alike


def _language(language: str | None) -> str:
    return _check_language(LANGUAGE if language is None else language)


def round_significant(array, digits: int = SIGNIFICANT_DIGITS) -> np.ndarray:
    """``array`` as float64 rounded to ``digits`` significant digits (zero, NaN and infinities kept).

    Rounded through exact powers of ten, so that ``tolist()`` prints the short decimal
    (0.04802, not 0.048020000000000004). Powers of ten are exact doubles only up to 1e22, so values
    further from 1 (below about 1e-19 or above 1e25, subnormals included) are rounded by Python's
    decimal formatting instead; a value that would round past the largest double keeps its value.
    """
    array = np.asarray(array, dtype=np.float64)
    rounded = array.copy()
    finite = np.isfinite(array) & (array != 0)
    values = array[finite]
    shift = digits - 1 - np.floor(np.log10(np.abs(values))).astype(np.int64)  # decimal places to keep
    exact = np.abs(shift) <= 22  # 10.0 ** 22 is the largest exact power of ten
    powers = 10.0 ** np.abs(np.where(exact, shift, 0))
    result = np.where(shift >= 0, np.round(values * powers) / powers, np.round(values / powers) * powers)
    result[~exact] = [float(f"{value:.{digits - 1}e}") for value in values[~exact]]
    overflowed = ~np.isfinite(result)  # 1.7977e308 rounds up to 1.798e308, beyond the largest double
    result[overflowed] = values[overflowed]
    rounded[finite] = result
    return rounded


_LONG_DECIMAL = re.compile(r"-?\d+\.\d{5,}(?:[eE][-+]?\d+)?")  # a number written with 5 or more decimals


def _check_div_id(div_id: str) -> None:
    if not isinstance(div_id, str) or not re.fullmatch(r"[A-Za-z][\w-]*", div_id):
        raise ValueError(f"div_id must be letters, digits, '-' or '_' starting with a letter, got {div_id!r}")


def _as_array(frame) -> np.ndarray:
    """A frame as a 2-D numpy array: booleans and integers as int, floats rounded (see the module docstring)."""
    if hasattr(frame, "detach"):
        frame = frame.detach().cpu()
        if frame.is_floating_point():
            frame = frame.double()  # numpy has no bfloat16
        frame = frame.numpy()
    array = np.asarray(frame)
    if array.ndim != 2:
        raise ValueError(f"a frame must be a 2-D array (rows, cols), got shape {array.shape}")
    if array.dtype == bool:
        return array.astype(np.int8)
    if np.issubdtype(array.dtype, np.integer):
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"a frame must hold booleans, integers or floats, got dtype {array.dtype}")
    return round_significant(array)


def _check_categories(categories) -> None:
    if categories is not None and not 1 <= len(categories) <= len(CATEGORY_COLORS):
        raise ValueError(
            f"categories must name between 1 and {len(CATEGORY_COLORS)} values (one colour each), got "
            f"{len(categories)}: merge some categories, or leave categories out to draw the values on a colour scale"
        )


def _check_grid(grid, name: str = "grid") -> None:
    if grid is not None and (isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or grid < 1):
        raise ValueError(f"{name} must be a positive number of cells between grid lines, or None, got {grid!r}")


def _grid_shapes(rows: int, cols: int, every: int | None) -> list[dict]:
    """Plotly line shapes between every ``every`` cells (a block mask's tiles), none for ``None``."""
    if every is None:
        return []
    line = dict(color=GRID_COLOR, width=1)
    shapes = [
        dict(type="line", xref="x", yref="y", x0=k - 0.5, x1=k - 0.5, y0=-0.5, y1=rows - 0.5, line=line)
        for k in range(every, cols, every)
    ]
    shapes += [
        dict(type="line", xref="x", yref="y", x0=-0.5, x1=cols - 0.5, y0=k - 0.5, y1=k - 0.5, line=line)
        for k in range(every, rows, every)
    ]
    return shapes


def heatmap(
    matrix,
    *,
    ax=None,
    title: str | None = None,
    xlabel: str = "key",
    ylabel: str = "query",
    xticklabels: Sequence[str] | None = None,
    yticklabels: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    cmap: str = "viridis",
    colorbar: bool = True,
    vmin: float | None = None,
    vmax: float | None = None,
    grid: int | None = None,
    language: str | None = None,
):
    """Static heatmap of a ``(rows, cols)`` pattern or weight matrix; returns the Axes.

    With ``categories`` (names for the values 0, 1, 2, ...), the values are drawn in
    :data:`CATEGORY_COLORS` with a legend instead of a colour bar. A boolean pattern is drawn
    on the fixed range [0, 1] (True at the top of the colour map), so that an all-True pattern
    (dense attention) does not come out as the bottom colour; ``vmin``/``vmax`` set the range
    of other matrices (default: their own minimum and maximum). ``grid`` draws lines every
    ``grid`` cells (a block mask's tiles). Labels given as :func:`text` are drawn in
    ``language`` (default :data:`LANGUAGE`); :func:`show_figure` draws one figure per language.
    """
    import matplotlib.pyplot as plt
    import matplotlib_fontja  # noqa: F401  (registers IPAexGothic for Japanese labels)
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    language = _language(language)
    _check_categories(categories)
    _check_grid(grid)
    title, xlabel, ylabel, xticklabels, yticklabels, categories = in_language(
        (title, xlabel, ylabel, xticklabels, yticklabels, categories), language
    )
    is_boolean = str(getattr(matrix, "dtype", "")) in ("torch.bool", "bool")  # a torch or numpy mask
    array = _as_array(matrix)
    if is_boolean and vmin is None and vmax is None:
        vmin, vmax = 0.0, 1.0
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4))
    if categories is not None:
        colors = ListedColormap(CATEGORY_COLORS[: len(categories)])
        ax.imshow(array, cmap=colors, vmin=-0.5, vmax=len(categories) - 0.5, interpolation="nearest")
        handles = [Patch(color=CATEGORY_COLORS[i], label=name) for i, name in enumerate(categories)]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    else:
        image = ax.imshow(array, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        if colorbar:
            ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if grid is not None:
        rows, cols = array.shape
        for k in range(grid, cols, grid):
            ax.axvline(k - 0.5, color="0.35", alpha=0.7, linewidth=0.8)
        for k in range(grid, rows, grid):
            ax.axhline(k - 0.5, color="0.35", alpha=0.7, linewidth=0.8)
    if xticklabels is not None:
        ax.set_xticks(range(len(xticklabels)), list(xticklabels), rotation=90)
    if yticklabels is not None:
        ax.set_yticks(range(len(yticklabels)), list(yticklabels))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return ax


def _check_frames(arrays: list[np.ndarray], x_ticks, y_ticks) -> None:
    """Every frame of one shape, one tick label per column and per row."""
    if not arrays:
        raise ValueError("frames must hold at least one 2-D array, got none")
    for index, array in enumerate(arrays):
        if array.shape != arrays[0].shape:
            raise ValueError(
                f"every frame must have the shape of the first, {arrays[0].shape}, got {array.shape} for frame {index}"
            )
    rows, cols = arrays[0].shape
    for name, ticks, count in (("x_ticks", x_ticks, cols), ("y_ticks", y_ticks, rows)):
        if ticks is not None and len(ticks) != count:
            raise ValueError(f"{name} must have one label per {'column' if name == 'x_ticks' else 'row'} "
                             f"({count}), got {len(ticks)}")  # fmt: skip


def _hover_label(name: str, ticks, index: int) -> str:
    tick = ticks[index] if ticks is not None else ""
    return f"{name}: {tick} ({index})" if tick else f"{name}: {index}"


def _hover_text(array: np.ndarray, meta: dict) -> list[list[str]]:
    """What the page's script writes for each cell (see ``_FIGURE_SCRIPT``): row, column, value or category."""
    categories = meta["cat"]
    rows = []
    for i, row in enumerate(array.tolist()):
        y = _hover_label(meta["y"], meta["yt"], i)
        cells = []
        for j, value in enumerate(row):
            shown = categories[value] if categories is not None and 0 <= value < len(categories) else value
            cells.append(f"{_hover_label(meta['x'], meta['xt'], j)}<br>{y}<br>{shown}")
        rows.append(cells)
    return rows


def _heatmap_figure(
    array: np.ndarray,
    title: str,
    *,
    xlabel: str = "key",
    ylabel: str = "query",
    x_ticks: Sequence[str] | None = None,
    y_ticks: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    colorscale: str = "Viridis",
    zmin: float | None = None,
    zmax: float | None = None,
    size: int = 520,
    height: int | None = None,
    grid: int | None = None,
    hover_text: bool = False,
):
    """The plotly heatmap of one frame: what the static page and a live kernel both show.

    :func:`slider_heatmap` adds a slider over more frames; :func:`explore` in a live kernel
    draws each recomputed frame with it (``hover_text``: with each cell's text, which the
    stored page's script writes itself), so both show the same ticks, colours and titles.
    ``layout.meta["attnlib"]`` keeps what the page needs for hover text, the categories' legend
    and the figure's height at other widths.
    """
    import plotly.graph_objects as go

    rows, cols = array.shape
    colorbar = dict(thickness=14, tickfont=dict(size=11))
    heat = dict(colorscale=colorscale, zmin=zmin, zmax=zmax, colorbar=colorbar)
    if categories is not None:
        count = len(categories)
        scale = []
        for value in range(count):  # a stepped colour scale: value i -> colour i
            low, high = round(value / count, SIGNIFICANT_DIGITS), round((value + 1) / count, SIGNIFICANT_DIGITS)
            scale += [[low, CATEGORY_COLORS[value]], [high, CATEGORY_COLORS[value]]]
        heat = dict(
            colorscale=scale,
            zmin=-0.5,
            zmax=count - 0.5,
            colorbar=dict(colorbar, tickvals=list(range(count)), ticktext=list(categories)),
        )
    meta = {
        "x": xlabel,
        "y": ylabel,
        "xt": None if x_ticks is None else list(x_ticks),
        "yt": None if y_ticks is None else list(y_ticks),
        "cat": None if categories is None else list(categories),
        "colors": None if categories is None else CATEGORY_COLORS[: len(categories)],
        "plot": [size, round(rows / cols, SIGNIFICANT_DIGITS)],  # the plot's width, its height / width
    }
    x = list(range(cols))
    y = list(range(rows))
    if hover_text:
        heat.update(text=_hover_text(array, meta), hovertemplate="%{text}<extra></extra>")
    figure = go.Figure(go.Heatmap(z=array.tolist(), x=x, y=y, **heat))
    figure.update_layout(
        title=dict(text=title, font=dict(size=15), yref="container", y=1, yanchor="top", pad=dict(t=8)),
        font=dict(family=PLOTLY_FONT),
        width=size + 140,
        height=size + 200 if height is None else height,  # a wide frame needs less height
        margin=dict(l=60, r=20, t=130, b=40),
        xaxis=dict(title=dict(text=xlabel), side="top", constrain="domain"),
        yaxis=dict(title=dict(text=ylabel), autorange="reversed", scaleanchor="x", constrain="domain"),
        shapes=_grid_shapes(rows, cols, grid),
        meta={"attnlib": meta},
    )
    if x_ticks is not None:
        figure.update_xaxes(tickvals=x, ticktext=list(x_ticks), tickangle=-60)
    if y_ticks is not None:
        figure.update_yaxes(tickvals=y, ticktext=list(y_ticks))
    return figure


def slider_heatmap(
    frames: Sequence,
    labels: Sequence[str],
    *,
    titles: Sequence[str] | None = None,
    slider_prefix: str = "",
    xlabel: str = "key",
    ylabel: str = "query",
    x_ticks: Sequence[str] | None = None,
    y_ticks: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
    colorscale: str = "Viridis",
    zmin: float | None = None,
    zmax: float | None = None,
    size: int = 520,
    height: int | None = None,
    grid: int | Sequence[int | None] | None = None,
):
    """A plotly heatmap with one slider step per frame (all frames precomputed).

    Args:
        frames: 2-D arrays of one shape, one per slider step.
        labels: the slider's label for each frame.
        titles: the figure title for each frame (defaults to the label).
        categories: names of integer values 0..K-1, drawn in discrete colours (the stored page
            shows them as a legend above the plot, the colour bar in a live kernel).
        size: the plot's width in pixels; height: the figure's height (default ``size + 200``,
            for square frames; a wide frame needs less). On a narrower page the figure shrinks
            to the column, keeping the plot's proportions.
        grid: lines every ``grid`` cells (a block mask's tiles), or one such number (or None)
            per frame.

    Every text may be :func:`text` ``(en=..., ja=...)``: the stored page shows its own language.
    """
    _check_categories(categories)
    arrays = [_as_array(frame) for frame in frames]
    _check_frames(arrays, x_ticks, y_ticks)
    if len(labels) != len(arrays):
        raise ValueError(f"labels must have one entry per frame ({len(arrays)}), got {len(labels)}")
    titles = list(labels) if titles is None else list(titles)
    if len(titles) != len(arrays):
        raise ValueError(f"titles must have one entry per frame ({len(arrays)}), got {len(titles)}")
    per_frame_grid = grid is not None and not isinstance(grid, (int, np.integer))
    grids = list(grid) if per_frame_grid else [grid] * len(arrays)
    if len(grids) != len(arrays):
        raise ValueError(f"grid must be one number, or one entry per frame ({len(arrays)}), got {len(grids)}")
    for value in grids:
        _check_grid(value)

    figure = _heatmap_figure(
        arrays[0],
        titles[0],
        xlabel=xlabel,
        ylabel=ylabel,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        categories=categories,
        colorscale=colorscale,
        zmin=zmin,
        zmax=zmax,
        size=size,
        height=height,
        grid=grids[0],
    )
    rows, cols = arrays[0].shape
    steps = []
    for array, label, title, every in zip(arrays, labels, titles, grids):
        layout = {"title.text": title}
        if per_frame_grid:
            layout["shapes"] = _grid_shapes(rows, cols, every)
        label = label if isinstance(label, str) else str(label)
        steps.append(dict(method="update", label=label, args=[{"z": [array.tolist()]}, layout]))
    figure.update_layout(
        sliders=[
            dict(
                active=0,
                steps=steps,
                x=0,
                len=1,
                currentvalue=dict(prefix=slider_prefix, font=dict(size=13, color="#444")),
                pad=dict(t=40),
            )
        ],
    )
    return figure


# What explore passes on to the figure (slider_heatmap's keyword arguments but the titles).
FIGURE_OPTIONS = {
    "slider_prefix",
    "xlabel",
    "ylabel",
    "x_ticks",
    "y_ticks",
    "categories",
    "colorscale",
    "zmin",
    "zmax",
    "size",
    "height",
    "grid",
}

# The stored figure's own script. The page provides plotly.js (a global); nothing is fetched.
# It puts the Japanese strings in place on a Japanese page (<html lang="ja...">), wraps titles
# to the column's width, hides slider step labels that would overlap or be cut (the current
# value still names the step), writes each cell's hover text (row and column labels, the
# category's name) and the categories' legend, then draws.
_FIGURE_SCRIPT = """(function () {
var id = "%(id)s", gd = document.getElementById(id), f = %(figure)s, ja = %(japanese)s, c = %(config)s;
if (!gd || !window.Plotly) return;
var lang = (document.documentElement.getAttribute("lang") || "").toLowerCase();
if (lang.indexOf("ja") === 0) ja.forEach(function (p) {
  var o = f, k = p[0];
  for (var i = 0; i < k.length - 1; i++) o = o[k[i]];
  o[k[k.length - 1]] = p[1];
});
var L = f.layout, m = (L.meta || {}).attnlib, w = gd.clientWidth || 600, mg = L.margin || {};
var C = "\\u2e80-\\u9fff\\uf900-\\ufaff\\uff00-\\uffef", BR = /<br\\s*\\/?>/;
var cjk = new RegExp("[" + C + "]", "g"), pieces = new RegExp("[" + C + "]|[^\\\\s" + C + "]+\\\\s*|\\\\s+", "g");
function wide(s) { return String(s).replace(/<[^>]*>/g, "").replace(cjk, "xx").length; }
var fs = (L.title && L.title.font && L.title.font.size) || 17;
var n = Math.max(12, Math.floor((w - 20) / (fs * 0.58)));
function wrap(s) {
  return s.split(BR).map(function (line) {
    var out = [], cur = "";
    (line.match(pieces) || []).forEach(function (piece) {
      if (cur && wide(cur + piece.replace(/\\s+$/, "")) > n) {
        out.push(cur.replace(/\\s+$/, ""));
        cur = piece.replace(/^\\s+/, "");
      } else cur += piece;
    });
    out.push(cur);
    return out.join("<br>");
  }).join("<br>");
}
var before = 1, after = 1;
function title(o, key) {
  if (!o || typeof o[key] !== "string") return;
  before = Math.max(before, o[key].split(BR).length);
  o[key] = wrap(o[key]);
  after = Math.max(after, o[key].split(BR).length);
}
if (L.title) title(L.title, "text");
(L.sliders || []).forEach(function (s) {
  var steps = s.steps || [], longest = 0, span = (w - (mg.l || 80) - (mg.r || 80)) * (s.len || 1);
  steps.forEach(function (st) {
    (st.args || []).forEach(function (a) { title(a, "title.text"); });
    longest = Math.max(longest, wide(st.label || ""));
  });
  var px = longest * 12 * 0.6 + 8, cv = s.currentvalue = s.currentvalue || {}, pw = w - (mg.l || 80) - (mg.r || 80);
  var left = Math.max(0, px / 2 - (mg.l || 80) + 4), right = Math.max(0, px / 2 - (mg.r || 80) + 4);
  if (steps.length > 1 && left + right < pw / 3) {  // inset the rail so that the end labels fit
    s.x = (s.x || 0) + left / pw;
    s.len = (s.len || 1) - (left + right) / pw;
    span -= left + right;
  }
  if (steps.length > 1 && left + right >= pw / 3) {  // plotly itself skips labels that would overlap
    cv.font = Object.assign({color: "#444"}, cv.font);
    s.font = Object.assign({}, s.font, {color: "rgba(0,0,0,0)"});
  }
  var size = (cv.font && cv.font.size) || 14, need = (wide(cv.prefix || "") + longest) * size * 0.6;
  if (need > w - 20) cv.font = Object.assign({}, cv.font, {size: Math.max(10, Math.floor(size * (w - 20) / need))});
});
if (after > before) {  // room for the wrapped title's lines, above the plot
  var extra = Math.round((after - before) * fs * 1.3);
  L.margin = Object.assign({}, mg, {t: (mg.t || 100) + extra});
  if (L.title) L.title.pad = Object.assign({}, L.title.pad, {t: ((L.title.pad || {}).t || 0) + extra});
  if (gd.style.height) gd.style.height = "calc(" + gd.style.height.replace(/^calc/, "") + " + " + extra + "px)";
}
function label(name, ticks, k) { var t = ticks && ticks[k]; return name + ": " + (t ? t + " (" + k + ")" : k); }
function hover(z) {
  return z.map(function (row, i) {
    var y = label(m.y, m.yt, i);
    return row.map(function (v, j) {
      return label(m.x, m.xt, j) + "<br>" + y + "<br>" + (m.cat && m.cat[v] !== undefined ? m.cat[v] : v);
    });
  });
}
if (m) {
  f.data[0].text = hover(f.data[0].z);
  f.data[0].hovertemplate = "%%{text}<extra></extra>";
  var legend = document.getElementById(id + "-legend");
  if (legend && m.cat) m.cat.forEach(function (name, k) {
    var item = document.createElement("span"), swatch = document.createElement("i");
    swatch.style.cssText = "display:inline-block;width:0.9em;height:0.9em;margin-right:0.3em;"
      + "vertical-align:-0.1em;border:1px solid #999;background:" + m.colors[k];
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(name));
    legend.appendChild(item);
  });
}
Plotly.newPlot(gd, f.data, f.layout, c).then(function () {
  if (m) gd.on("plotly_sliderchange", function (e) {
    var a = e.step && e.step.args && e.step.args[0];
    if (a && a.z) Plotly.restyle(gd, {text: [hover(a.z[0])]}, [0]);
  });
});
})();"""


def _json(value) -> str:
    """JSON as plotly writes it ("<", ">", "/" escaped: safe inside a script element)."""
    from plotly.io.json import to_json_plotly

    return to_json_plotly(value)


def figure_html(figure, div_id: str):
    """HTML for a plotly figure that loads nothing: the page provides plotly.js.

    ``div_id`` is fixed by the caller so that the stored notebook output is the
    same on every run (nbval compares it); it is the plotted element's id.

    The figure follows the column: at most its layout's width, narrower on a narrow page, with
    its height scaled (a heatmap from this module keeps its plot's proportions). Texts given as
    :func:`text` are stored once in English, and their Japanese as a short list of substitutions
    that the figure's script applies on a page whose ``<html lang>`` starts with ``ja``.
    """
    _check_div_id(div_id)
    from IPython.display import HTML

    whole = figure.to_plotly_json()
    layout = whole["layout"]
    width, height = layout.pop("width", None), layout.pop("height", None)
    layout["autosize"] = True
    meta = layout.get("meta", {}).get("attnlib") if isinstance(layout.get("meta"), dict) else None
    legend = ""
    if meta is not None and meta.get("cat"):  # the categories as an HTML legend that wraps on a phone
        whole["data"][0]["showscale"] = False
        legend = (
            f'<div id="{div_id}-legend" class="attnlib-legend" style="display:flex;flex-wrap:wrap;gap:2px 14px;'
            f'font-size:13px;line-height:1.5;margin:0 0 4px 60px"></div>'
        )
    figure_json = _json({"data": whole["data"], "layout": layout})
    patch_json = _json(japanese_patch({"data": whole["data"], "layout": layout}))
    # Plotly's default template writes its colour scales with 16 digits (0.1111111111111111) into
    # every figure: the same rounding as the frames keeps pages light.
    figure_json = _LONG_DECIMAL.sub(lambda match: f"{float(match.group()):.{SIGNIFICANT_DIGITS}g}", figure_json)

    outer = "width:100%"
    inner = "width:100%"
    if width:
        outer += f";max-width:{width}px;container-type:inline-size"
    if width and height:
        inner += f";aspect-ratio:{width}/{height}"
        if meta is not None and meta.get("plot"):  # the plot's own proportions at any width
            size, ratio = meta["plot"]
            across, down = width - size, max(height - size * ratio, 0)
            inner += f";height:calc({down:g}px + (100cqw - {across:g}px) * {ratio:g})"
    elif height:
        inner += f";height:{height}px"
    # No mode bar: its icons would cover the title, and the static page needs no zoom tools.
    config = {"responsive": True, "displayModeBar": False}
    script = _FIGURE_SCRIPT % {"id": div_id, "figure": figure_json, "japanese": patch_json, "config": _json(config)}
    html = (
        f'<div class="attnlib-figure" style="{outer}">{legend}'
        f'<div id="{div_id}" class="plotly-graph-div" style="{inner}"></div></div>'
        f'<script type="text/javascript">{script}</script>'
    )
    if len(html) > FIGURE_BYTES_LIMIT:
        warnings.warn(
            f"figure {div_id!r} is {len(html) / 1e6:.1f} MB of HTML (limit {FIGURE_BYTES_LIMIT / 1e6:.0f} MB): "
            "use fewer or smaller frames",
            stacklevel=2,
        )
    return HTML(html)


def show_plotly(figure, div_id: str, *, language: str | None = None) -> None:
    """Display a plotly figure: live in a kernel (in ``language``, default :data:`LANGUAGE`), else stored.

    In a live Jupyter or Colab kernel plotly draws the figure itself, its :func:`text` labels in
    one language; when the notebook is executed for the book, :func:`figure_html` stores it.
    """
    from IPython.display import display

    _check_div_id(div_id)
    language = _language(language)
    if in_live_kernel():
        import plotly.graph_objects as go

        display(go.Figure(in_language(figure.to_plotly_json(), language)))
    else:
        display(figure_html(figure, div_id))


def in_live_kernel() -> bool:
    """True in an interactive Jupyter/Colab kernel, False when executing for the book."""
    if os.environ.get("ATTNLIB_STATIC"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ in ("ZMQInteractiveShell", "Shell")


def explore(
    compute: Callable[..., object],
    params: dict[str, Sequence],
    *,
    div_id: str,
    label: Callable[..., str] | None = None,
    title: Callable[..., str] | None = None,
    language: str | None = None,
    **figure_options,
):
    """Show ``compute(**params) -> 2-D frame`` with controls over ``params``.

    In a live kernel with ipywidgets: one control per parameter, recomputing on change, each frame
    drawn as the static figure draws it (same ticks, colour range and scale, titles), its texts in
    ``language`` (default :data:`LANGUAGE`).
    Otherwise: every combination of ``params`` is precomputed into a
    :func:`slider_heatmap` (keep the grid small) and displayed as static HTML, in the page's language.
    ``label`` and ``title`` may return :func:`text`; so may the figure options hold it.
    ``grid`` may be a function of the parameters (lines every so many cells, or None).
    Displays the figure and returns None (so a notebook shows it exactly once).
    """
    from IPython.display import display

    _check_div_id(div_id)  # before any frame is computed
    language = _language(language)
    unknown = sorted(set(figure_options) - FIGURE_OPTIONS)
    if unknown:
        raise TypeError(f"explore got unknown figure options {unknown}; expected some of {sorted(FIGURE_OPTIONS)}")
    _check_categories(figure_options.get("categories"))
    grid = figure_options.pop("grid", None)
    if not callable(grid):
        _check_grid(grid)
    names = list(params)
    if not names:
        raise ValueError("params must name at least one parameter with a list of values")
    for name, values in params.items():
        if len(values) == 0:
            raise ValueError(f"params[{name!r}] must list at least one value, got none")
    label = label or (lambda **kw: ", ".join(f"{k}={v}" for k, v in kw.items()))
    title = title or label

    def grid_for(**kwargs):
        every = grid(**kwargs) if callable(grid) else grid
        _check_grid(every, "grid(...)")
        return every

    if in_live_kernel():
        try:
            import ipywidgets as widgets
        except ImportError:  # no controls without ipywidgets: the static slider figure below
            widgets = None
        if widgets is not None:
            live_options = in_language(dict(figure_options), language)
            live_options.pop("slider_prefix", None)  # a live figure has controls, not a slider

            def redraw(**kwargs):
                """One frame as the static figure draws it (ticks, colour range and scale, titles)."""
                array = _as_array(compute(**kwargs))
                _check_frames([array], live_options.get("x_ticks"), live_options.get("y_ticks"))
                shown = in_language(title(**kwargs), language)
                display(_heatmap_figure(array, shown, grid=grid_for(**kwargs), hover_text=True, **live_options))

            controls = {
                name: widgets.SelectionSlider(options=list(values), description=name) for name, values in params.items()
            }
            display(widgets.interactive(redraw, **controls))
            return None

    combos = [dict(zip(names, values)) for values in itertools.product(*params.values())]
    frames = [compute(**combo) for combo in combos]
    grids = [grid_for(**combo) for combo in combos]
    figure = slider_heatmap(
        frames,
        [label(**combo) for combo in combos],
        titles=[title(**combo) for combo in combos],
        grid=grids if callable(grid) else grid,
        **figure_options,
    )
    display(figure_html(figure, div_id))
    return None
