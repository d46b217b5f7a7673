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

__all__ = [
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
):
    """Static heatmap of a ``(rows, cols)`` pattern or weight matrix; returns the Axes.

    With ``categories`` (names for the values 0, 1, 2, ...), the values are drawn in
    :data:`CATEGORY_COLORS` with a legend instead of a colour bar. A boolean pattern is drawn
    on the fixed range [0, 1] (True at the top of the colour map), so that an all-True pattern
    (dense attention) does not come out as the bottom colour; ``vmin``/``vmax`` set the range
    of other matrices (default: their own minimum and maximum).
    """
    import matplotlib.pyplot as plt
    import matplotlib_fontja  # noqa: F401  (registers IPAexGothic for Japanese labels)
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    _check_categories(categories)
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
):
    """The plotly heatmap of one frame: what the static page and a live kernel both show.

    :func:`slider_heatmap` adds a slider over more frames; :func:`explore` in a live kernel
    draws each recomputed frame with it, so both show the same ticks, colours and titles.
    """
    import plotly.graph_objects as go

    rows, cols = array.shape
    heat = dict(colorscale=colorscale, zmin=zmin, zmax=zmax)
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
            colorbar=dict(tickvals=list(range(count)), ticktext=list(categories)),
        )
    x = list(range(cols))
    y = list(range(rows))
    figure = go.Figure(go.Heatmap(z=array.tolist(), x=x, y=y, **heat))
    figure.update_layout(
        title=dict(text=title, y=0.98, yref="container"),
        font=dict(family=PLOTLY_FONT),
        width=size + 140,
        height=size + 200 if height is None else height,  # a wide frame needs less height
        margin=dict(l=60, r=20, t=130, b=40),
        xaxis=dict(title=dict(text=xlabel), side="top", constrain="domain"),
        yaxis=dict(title=dict(text=ylabel), autorange="reversed", scaleanchor="x"),
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
):
    """A plotly heatmap with one slider step per frame (all frames precomputed).

    Args:
        frames: 2-D arrays of one shape, one per slider step.
        labels: the slider's label for each frame.
        titles: the figure title for each frame (defaults to the label).
        categories: names of integer values 0..K-1, drawn in discrete colours.
        size: the plot's width in pixels; height: the figure's height (default ``size + 200``,
            for square frames; a wide frame needs less).
    """
    _check_categories(categories)
    arrays = [_as_array(frame) for frame in frames]
    _check_frames(arrays, x_ticks, y_ticks)
    if len(labels) != len(arrays):
        raise ValueError(f"labels must have one entry per frame ({len(arrays)}), got {len(labels)}")
    titles = list(labels) if titles is None else list(titles)
    if len(titles) != len(arrays):
        raise ValueError(f"titles must have one entry per frame ({len(arrays)}), got {len(titles)}")

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
    )
    steps = [
        dict(method="update", label=str(label), args=[{"z": [array.tolist()]}, {"title.text": title}])
        for array, label, title in zip(arrays, labels, titles)
    ]
    figure.update_layout(
        sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix=slider_prefix), pad=dict(t=40))],
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
}


def figure_html(figure, div_id: str):
    """HTML for a plotly figure that loads nothing: the page provides plotly.js.

    ``div_id`` is fixed by the caller so that the stored notebook output is the
    same on every run (nbval compares it).
    """
    _check_div_id(div_id)
    from IPython.display import HTML

    # No mode bar: its icons would cover the title, and the static page needs no zoom tools.
    config = {"responsive": True, "displayModeBar": False}
    html = figure.to_html(include_plotlyjs=False, full_html=False, div_id=div_id, config=config)
    # Plotly's default template writes its colour scales with 16 digits (0.1111111111111111) into
    # every figure: the same rounding as the frames keeps pages light.
    html = _LONG_DECIMAL.sub(lambda match: f"{float(match.group()):.{SIGNIFICANT_DIGITS}g}", html)
    if len(html) > FIGURE_BYTES_LIMIT:
        warnings.warn(
            f"figure {div_id!r} is {len(html) / 1e6:.1f} MB of HTML (limit {FIGURE_BYTES_LIMIT / 1e6:.0f} MB): "
            "use fewer or smaller frames",
            stacklevel=2,
        )
    return HTML(html)


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
    **figure_options,
):
    """Show ``compute(**params) -> 2-D frame`` with controls over ``params``.

    In a live kernel with ipywidgets: one control per parameter, recomputing on change, each frame
    drawn as the static figure draws it (same ticks, colour range and scale, titles).
    Otherwise: every combination of ``params`` is precomputed into a
    :func:`slider_heatmap` (keep the grid small) and displayed as static HTML.
    Displays the figure and returns None (so a notebook shows it exactly once).
    """
    from IPython.display import display

    _check_div_id(div_id)  # before any frame is computed
    unknown = sorted(set(figure_options) - FIGURE_OPTIONS)
    if unknown:
        raise TypeError(f"explore got unknown figure options {unknown}; expected some of {sorted(FIGURE_OPTIONS)}")
    _check_categories(figure_options.get("categories"))
    names = list(params)
    if not names:
        raise ValueError("params must name at least one parameter with a list of values")
    for name, values in params.items():
        if len(values) == 0:
            raise ValueError(f"params[{name!r}] must list at least one value, got none")
    label = label or (lambda **kw: ", ".join(f"{k}={v}" for k, v in kw.items()))
    title = title or label

    if in_live_kernel():
        try:
            import ipywidgets as widgets
        except ImportError:  # no controls without ipywidgets: the static slider figure below
            widgets = None
        if widgets is not None:
            figure_options = dict(figure_options)
            figure_options.pop("slider_prefix", None)  # a live figure has controls, not a slider

            def redraw(**kwargs):
                """One frame as the static figure draws it (ticks, colour range and scale, titles)."""
                array = _as_array(compute(**kwargs))
                _check_frames([array], figure_options.get("x_ticks"), figure_options.get("y_ticks"))
                display(_heatmap_figure(array, title(**kwargs), **figure_options))

            controls = {
                name: widgets.SelectionSlider(options=list(values), description=name) for name, values in params.items()
            }
            display(widgets.interactive(redraw, **controls))
            return None

    combos = [dict(zip(names, values)) for values in itertools.product(*params.values())]
    frames = [compute(**combo) for combo in combos]
    figure = slider_heatmap(
        frames,
        [label(**combo) for combo in combos],
        titles=[title(**combo) for combo in combos],
        **figure_options,
    )
    display(figure_html(figure, div_id))
    return None
