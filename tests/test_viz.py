"""attnlib.viz: rounding at the ends of the float range, categories, and the live figure against the static one."""

from __future__ import annotations

import re
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


# Figures in both languages, following the column (issue: the built book as a reader meets it).

T = viz.text


def _stored(html: str) -> tuple[dict, list]:
    """The figure's JSON and its Japanese substitution, as the page's script reads them."""
    import json
    import re

    figure = re.search(r"f = (\{.*?\}), ja = ", html, re.DOTALL).group(1)
    patch = re.search(r", ja = (\[.*?\]), c = ", html, re.DOTALL).group(1)
    return json.loads(figure), json.loads(patch)


def _apply(figure: dict, patch: list) -> dict:
    """What the script does on a page with <html lang="ja">."""
    for path, value in patch:
        node = figure
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return figure


def _strings(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return []


def _bilingual_figure(bilingual: bool = True, frames: int = 4, side: int = 32):
    pick = (lambda en, ja: T(en, ja)) if bilingual else (lambda en, ja: en)
    rng = np.random.default_rng(0)
    return viz.slider_heatmap(
        [rng.integers(0, 3, (side, side)) for _ in range(frames)],
        [pick(f"step {i}", f"ステップ{i}") for i in range(frames)],
        titles=[pick(f"round {i}: keys seen", f"ラウンド{i}：見えるキー") for i in range(frames)],
        slider_prefix=pick("view: ", "表示："),
        xlabel=pick("key", "キー"),
        ylabel=pick("query", "クエリ"),
        x_ticks=[pick(f"k{i}", f"キー{i}") if i % 8 == 0 else "" for i in range(side)],
        y_ticks=[str(i) if i % 8 == 0 else "" for i in range(side)],
        categories=[pick("none", "なし"), pick("window", "ウィンドウ"), pick("global", "グローバル")],
    )


def test_text_is_a_str_in_english_that_keeps_its_japanese():
    key = T(en="key", ja="キー")
    assert key == "key" and isinstance(key, str) and key.ja == "キー"
    assert viz.in_language(key, "ja") == "キー" and viz.in_language(key, "en") == "key"
    assert viz.in_language(["a", key], "ja") == ["a", "キー"]
    both = key + " 3"
    assert both == "key 3" and both.ja == "キー 3"
    import copy

    assert copy.deepcopy(key).ja == "キー"  # plotly copies its properties
    with pytest.raises(ValueError, match="language must be one of"):
        viz.in_language(key, "fr")
    with pytest.raises(TypeError, match=r"text\(ja=...\) must be a str"):
        T(en="key", ja=None)


def test_a_stored_figure_holds_english_and_a_complete_japanese_substitution():
    html = viz.figure_html(_bilingual_figure(), "bilingual").data
    figure, patch = _stored(html)
    english = _strings(figure)
    for text in ("round 0: keys seen", "round 3: keys seen", "view: ", "step 2", "key", "query", "k8", "window"):
        assert text in english, text
    assert not any(re.search(r"[\u3040-\u30ff]", s) for s in english), "English is the default"
    japanese = _strings(_apply(figure, patch))
    for text in (
        "ラウンド0：見えるキー",
        "ラウンド3：見えるキー",
        "表示：",
        "ステップ2",
        "キー",
        "クエリ",
        "キー8",
        "ウィンドウ",
    ):
        assert text in japanese, text
    for english_only in ("round 0: keys seen", "round 3: keys seen", "view: ", "step 2", "query", "k8", "window"):
        assert english_only not in japanese, f"{english_only!r} has no Japanese on a Japanese page"
    # the script swaps the strings only on a Japanese page
    assert 'getAttribute("lang")' in html and 'indexOf("ja") === 0' in html


def test_the_english_default_is_unchanged_by_the_japanese_and_the_data_is_stored_once():
    bilingual = viz.figure_html(_bilingual_figure(True, frames=6, side=48), "fig").data
    english = viz.figure_html(_bilingual_figure(False, frames=6, side=48), "fig").data
    figure, patch = _stored(bilingual)
    assert figure == _stored(english)[0]  # the same figure, Japanese aside
    assert _stored(english)[1] == []
    assert len(bilingual) < 1.1 * len(english), (len(bilingual), len(english))
    assert not any("z" in path for path, _ in patch)  # only texts are substituted


def test_a_live_kernel_draws_the_chosen_language(monkeypatch):
    pytest.importorskip("ipywidgets")
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **kwargs: shown.extend(objects))
    monkeypatch.setattr(viz, "in_live_kernel", lambda: True)
    options = dict(xlabel=T("key", "キー"), categories=[T("none", "なし"), T("seen", "見える")])
    title = lambda shift: T(f"shift {shift}", f"ずらし{shift}")  # noqa: E731
    compute = lambda shift: np.roll(np.eye(3, dtype=int), shift, axis=1)  # noqa: E731
    viz.explore(compute, {"shift": [0, 1]}, div_id="live", title=title, language="ja", **options)
    (figure,) = [item for item in shown if item.__class__.__name__ == "Figure"]
    assert figure.layout.title.text == "ずらし0" and figure.layout.xaxis.title.text == "キー"
    assert list(figure.data[0].colorbar.ticktext) == ["なし", "見える"]
    assert figure.data[0].text[0][0].endswith("見える")  # hover names the category
    shown.clear()
    monkeypatch.setattr(viz, "LANGUAGE", "en")
    viz.explore(compute, {"shift": [0, 1]}, div_id="live", title=title, **options)
    (figure,) = [item for item in shown if item.__class__.__name__ == "Figure"]
    assert figure.layout.title.text == "shift 0" and type(figure.layout.title.text) is str
    with pytest.raises(ValueError, match="language must be one of"):
        viz.explore(compute, {"shift": [0]}, div_id="live", language="de")


def test_hover_text_names_rows_columns_and_categories():
    """Not 'z: 3' with blank x and y: the page writes each cell's labels and category."""
    array = np.array([[0, 2], [1, 0]])
    meta = {"x": "key", "y": "query", "xt": ["the", ""], "yt": None, "cat": ["none", "window", "global"]}
    text = viz._hover_text(array, meta)
    assert text[0][0] == "key: the (0)<br>query: 0<br>none"
    assert text[0][1] == "key: 1<br>query: 0<br>global"
    # the stored page computes the same text in its script from the figure's meta
    html = viz.figure_html(viz.slider_heatmap([array], ["a"], categories=meta["cat"], x_ticks=["the", ""]), "h").data
    figure, _ = _stored(html)
    stored = figure["layout"]["meta"]["attnlib"]
    assert stored["cat"] == ["none", "window", "global"] and stored["xt"] == ["the", ""]
    assert 'hovertemplate = "%{text}<extra></extra>"' in html and "plotly_sliderchange" in html


def test_grid_lines_every_few_cells_and_per_frame():
    frame = np.zeros((64, 48))
    figure = viz.slider_heatmap([frame], ["a"], grid=16)
    shapes = figure.layout.shapes
    vertical = [s for s in shapes if s.x0 == s.x1]
    horizontal = [s for s in shapes if s.y0 == s.y1]
    assert sorted(s.x0 for s in vertical) == [15.5, 31.5]  # 48 columns: lines after 16 and 32
    assert sorted(s.y0 for s in horizontal) == [15.5, 31.5, 47.5]
    assert len(viz.slider_heatmap([frame], ["a"]).layout.shapes) == 0
    per_frame = viz.slider_heatmap([frame, frame], ["a", "b"], grid=[16, None])
    steps = per_frame.layout.sliders[0].steps
    assert len(steps[0].args[1]["shapes"]) == 5 and steps[1].args[1]["shapes"] == []
    with pytest.raises(ValueError, match="grid must be a positive number"):
        viz.slider_heatmap([frame], ["a"], grid=0)
    with pytest.raises(ValueError, match=r"one entry per frame \(2\), got 1"):
        viz.slider_heatmap([frame, frame], ["a", "b"], grid=[4])


def test_a_stored_figure_follows_the_column():
    html = viz.figure_html(viz.slider_heatmap([np.eye(4)], ["a"], size=400), "col").data
    figure, _ = _stored(html)
    assert "width" not in figure["layout"] and "height" not in figure["layout"] and figure["layout"]["autosize"]
    assert "max-width:540px" in html and "width:100%" in html and "aspect-ratio:540/600" in html
    assert "height:calc(200px + (100cqw - 140px) * 1)" in html  # the square plot stays square
    assert '"responsive":true' in html.replace(" ", "")
    assert 'id="col"' in html and "<script src" not in html


def _draw(language):
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(3, 2))
    axis.plot([0, 1, 4])
    axis.set_title(viz.in_language(T("loss", "損失"), language))
    return figure


def test_a_static_figure_holds_both_languages_and_shows_the_pages():
    import matplotlib

    matplotlib.use("Agg")
    static = viz.figure_images(_draw, alt=T("a loss curve", "損失の曲線"))
    html = static._repr_html_()
    assert html.count("data:image/png;base64,") == 2 and set(static.images) == {"en", "ja"}
    assert static.images["en"] != static.images["ja"]
    assert 'class="attnlib-en"' in html and 'class="attnlib-ja"' in html and 'alt="損失の曲線"' in html
    assert "html:lang(ja) .attnlib-static .attnlib-ja{display:block}" in html
    assert ".attnlib-static .attnlib-ja{display:none}" in html and "max-width:100%;height:auto" in html
    assert b"Software" not in static.images["en"] and b"matplotlib" not in static.images["en"]


def test_a_static_figure_is_the_same_bytes_on_every_run(monkeypatch):
    import IPython.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **kwargs: shown.extend(objects))
    viz.show_figure(_draw)
    viz.show_figure(_draw)
    assert shown[0]._repr_html_() == shown[1]._repr_html_()
    assert plt.get_fignums() == []  # drawn figures are closed: the backend shows nothing twice
    with pytest.raises(TypeError, match=r"draw\('en'\) must return a matplotlib Figure"):
        viz.figure_images(lambda language: "not a figure")


def test_show_plotly_stores_or_draws_in_the_chosen_language(monkeypatch):
    import IPython.display
    import plotly.graph_objects as go

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objects, **kwargs: shown.extend(objects))
    figure = go.Figure(go.Scatter(x=[0, 1], y=[1, 0], name=T("positions", "位置")), layout=dict(width=500))
    monkeypatch.setattr(viz, "in_live_kernel", lambda: False)
    viz.show_plotly(figure, "custom")
    stored, patch = _stored(shown[-1].data)
    assert stored["data"][0]["name"] == "positions" and patch == [[["data", 0, "name"], "位置"]]
    monkeypatch.setattr(viz, "in_live_kernel", lambda: True)
    viz.show_plotly(figure, "custom", language="ja")
    assert shown[-1].data[0].name == "位置"
