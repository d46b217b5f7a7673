"""attnlib.viz: rounding at the ends of the float range, categories, and the live figure against the static one."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from attnlib import viz


def test_rounding_keeps_tiny_huge_subnormal_and_zero_values():
    values = [1e-306, 2.2250738585072014e-308, 1.23456e-310, 5e-324, -4.9406564584124654e-322, 1.23456e-20, 9.87654e30]
    rounded = viz.round_significant(np.array(values + [0.0, -0.0]))
    assert np.isfinite(rounded).all(), rounded
    assert rounded[: len(values)].tolist() == [float(f"{value:.3e}") for value in values]  # four digits
    assert rounded[-2:].tolist() == [0.0, 0.0] and np.signbit(rounded[-1])  # zero stays zero, with its sign
    # the largest double would round up past the range: it keeps its value instead of becoming inf
    largest = np.finfo(np.float64).max
    assert viz.round_significant(np.array([largest, -largest])).tolist() == [largest, -largest]
    # NaN and infinities pass through
    special = viz.round_significant(np.array([np.nan, np.inf, -np.inf]))
    assert np.isnan(special[0]) and special[1:].tolist() == [np.inf, -np.inf]


def test_a_static_heatmap_refuses_more_categories_than_colours():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    thirteen = [f"c{i}" for i in range(len(viz.CATEGORY_COLORS) + 1)]
    with pytest.raises(ValueError, match=r"categories must name between 1 and 12 values .* got 13"):
        viz.heatmap(np.arange(13).reshape(1, 13), categories=thirteen)
    with pytest.raises(ValueError, match="categories must name between 1 and 12"):
        viz.heatmap(np.zeros((2, 2), dtype=int), categories=[])
    ax = viz.heatmap(np.arange(12).reshape(3, 4), categories=thirteen[:12])  # twelve still draw
    assert len(ax.get_legend().get_texts()) == 12
    plt.close(ax.figure)


def _settings(figure, frame: int = 0) -> dict:
    """What a viewer sees of one heatmap figure: data, colours, ticks, titles."""
    heat = figure.data[0]
    layout = figure.layout
    title = layout.title.text
    z = heat.z
    if frame > 0:  # the static figure's later frames are in its slider steps
        step = layout.sliders[0].steps[frame]
        z, title = step.args[0]["z"][0], step.args[1]["title.text"]
    return {
        "z": [list(row) for row in z],
        "title": title,
        "colorscale": heat.colorscale,
        "zmin": heat.zmin,
        "zmax": heat.zmax,
        "colorbar ticktext": heat.colorbar.ticktext,
        "x ticks": (layout.xaxis.tickvals, layout.xaxis.ticktext),
        "y ticks": (layout.yaxis.tickvals, layout.yaxis.ticktext),
        "axis titles": (layout.xaxis.title.text, layout.yaxis.title.text),
        "y reversed": layout.yaxis.autorange,
        "size": (layout.width, layout.height),
    }


OPTIONS = [
    dict(x_ticks=["the", "cat", "sat"], y_ticks=["the", "cat", "sat"], zmin=0.0, zmax=1.0, xlabel="キー"),
    dict(colorscale="RdBu", zmin=-1.0, zmax=1.0, size=300),
    dict(categories=["none", "window", "global"], ylabel="query token"),
]


@pytest.mark.parametrize("options", OPTIONS, ids=["ticks-and-range", "diverging", "categories"])
def test_the_live_figure_shows_what_the_static_figure_shows(options, monkeypatch):
    """In a live kernel (forced here) explore draws each frame as the static page draws it."""
    pytest.importorskip("ipywidgets")
    import IPython.display

    def compute(shift, sign):
        frame = np.roll(np.eye(3), shift, axis=1) * sign
        return np.abs(frame).astype(int) * (1 + shift % 2) if "categories" in options else frame * 0.75

    params = {"shift": [0, 1], "sign": [1, -1]}
    title = lambda shift, sign: f"shift {shift}, sign {sign}"  # noqa: E731

    static_figures = []
    make_static = viz.slider_heatmap
    monkeypatch.setattr(
        viz, "slider_heatmap", lambda *a, **k: static_figures.append(make_static(*a, **k)) or static_figures[-1]
    )
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **kwargs: None)
    monkeypatch.setenv("ATTNLIB_STATIC", "1")
    viz.explore(compute, params, div_id="static", title=title, **options)
    (static,) = static_figures

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **kwargs: shown.extend(objects))
    monkeypatch.setattr(viz, "in_live_kernel", lambda: True)
    viz.explore(compute, params, div_id="live", title=title, **options)
    widgets = [item for item in shown if hasattr(item, "kwargs_widgets")]
    assert len(widgets) == 1, shown
    (widget,) = widgets
    live_figures = [item for item in shown if item.__class__.__name__ == "Figure"]
    assert len(live_figures) == 1, shown  # the first frame, drawn as the widget appears
    assert _settings(live_figures[0]) == _settings(static)
    # move the controls to the last combination: the live frame is the static figure's last frame
    for control in widget.kwargs_widgets:
        control.value = params[control.description][-1]
    live_figures = [item for item in shown if item.__class__.__name__ == "Figure"]
    assert len(live_figures) == 3  # one redraw per moved control
    last = len(static.layout.sliders[0].steps) - 1
    assert _settings(live_figures[-1]) == _settings(static, frame=last)
    assert live_figures[-1].layout.title.text == "shift 1, sign -1"
    if "x_ticks" in options:
        assert list(live_figures[-1].layout.xaxis.ticktext) == options["x_ticks"]


def test_without_ipywidgets_a_live_kernel_gets_the_static_figure(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **kwargs: shown.extend(objects))
    monkeypatch.setattr(viz, "in_live_kernel", lambda: True)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets now fails
    viz.explore(lambda shift: np.roll(np.eye(3), shift, axis=1), {"shift": [0, 1]}, div_id="no-widgets")
    (html,) = shown
    assert 'id="no-widgets"' in html.data


def test_explore_refuses_an_unknown_figure_option_before_computing():
    calls = []
    with pytest.raises(TypeError, match=r"unknown figure options \['colourscale'\]"):
        viz.explore(lambda x: calls.append(x) or np.eye(2), {"x": [1]}, div_id="ok", colourscale="RdBu")
    assert calls == []


def test_heatmap_draws_an_all_true_pattern_as_attended_not_as_empty():
    """Dense attention's pattern (all True) was drawn in the colour map's bottom colour: white in Greys."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = torch.ones(6, 6, dtype=torch.bool)
    ax = viz.heatmap(dense, cmap="Greys", colorbar=False)
    image = ax.get_images()[0]
    assert (image.norm.vmin, image.norm.vmax) == (0.0, 1.0)
    assert image.cmap(image.norm(1.0))[:3] != image.cmap(image.norm(0.0))[:3]
    assert image.cmap(image.norm(1.0))[0] < 0.1  # True is black in Greys
    weights = viz.heatmap(torch.full((3, 3), 0.5), colorbar=False).get_images()[0]
    assert weights.norm.vmin == weights.norm.vmax == 0.5  # a float matrix keeps its own range unless told
    plt.close("all")


def test_a_wide_frame_can_have_a_lower_figure():
    wide = np.zeros((4, 20))
    default = viz.slider_heatmap([wide], ["a"])
    lower = viz.slider_heatmap([wide], ["a"], size=600, height=400)
    assert default.layout.height == 520 + 200 and lower.layout.height == 400 and lower.layout.width == 740
    assert "height" in viz.FIGURE_OPTIONS  # explore passes it on
