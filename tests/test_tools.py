"""The shared pieces: registry, viz, bench."""

import math
import re

import numpy as np
import pytest
import torch

from attnlib import bench, registry, viz


def test_every_registered_method_resolves_and_matches_dense_where_exact():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 512, 16) for _ in range(3))  # BigBird needs 8 blocks of 64
    names = [m.name for m in registry.METHODS]
    assert len(names) == len(set(names)), "registry names must be unique"
    for method in registry.METHODS:
        assert method.category in registry.CATEGORIES
        assert method.module_cls() is not None
        assert method.chapter.endswith(".ipynb"), method.name
        assert method.attention is not None or method.make_mixer is not None, method.name
        if method.attention is None:
            continue
        attention = method.attention_fn()
        out = attention(q, k, v, **method.bench_kwargs)
        assert out.shape == q.shape and torch.isfinite(out).all(), method.name
        if method.exactness == "exact":
            torch.testing.assert_close(out, registry.get("dense").attention_fn()(q, k, v), atol=1e-5, rtol=1e-5)


def test_every_vision_mixer_keeps_the_shape_of_the_map():
    torch.manual_seed(0)
    x = torch.randn(2, 28, 28, 48)  # (B, H, W, C): 28 = 4 windows of 7, as in the benchmarks
    mixers = [m for m in registry.METHODS if m.make_mixer is not None]
    assert {"dense", "sdpa"} <= {m.name for m in mixers}
    for method in mixers:
        mixer = method.mixer_factory()(48, 3, 28, 28)
        with torch.no_grad():
            out = mixer(x)
        assert out.shape == x.shape and torch.isfinite(out).all(), method.name


def test_survey_is_the_notes_table_1():
    """The survey note's Table 1: ten rows, three families, each row implemented by registered methods."""
    assert len(registry.SURVEY) == 10
    families = {category for entry in registry.SURVEY for category in entry.categories}
    assert families == {"sparsification", "approximation", "computation optimization"}
    assert [entry.architecture for entry in registry.SURVEY] == [
        "PVT", "MaxViT", "Swin Transformer", "DAT", "MLP-Mixer", "PoolFormer", "CoaT", "BigBird", "Reformer", "Falcon",
    ]  # fmt: skip
    reformer = next(entry for entry in registry.SURVEY if entry.architecture == "Reformer")
    assert reformer.categories == ("sparsification", "approximation")  # the note lists it under both
    names = {m.name for m in registry.METHODS}
    for entry in registry.SURVEY:
        assert entry.implemented and set(entry.registry_names) <= names, entry
    beyond = {m.name for m in registry.beyond_the_survey()}
    assert beyond and not beyond & {name for entry in registry.SURVEY for name in entry.registry_names}
    with pytest.raises(ValueError, match="category must be one of"):
        registry.SurveyEntry("vision", ("magic",), "x", "y", ())


def test_exactness_is_stated_per_method():
    exact = {m.name for m in registry.METHODS if m.exactness == "exact"}
    assert exact == {"dense", "sdpa", "flash", "ring"}
    # Falcon runs on the exact kernel, but multi-query attention is another model
    assert registry.get("falcon").exactness == "shared heads"
    assert registry.get("falcon").category == "computation optimization"
    with pytest.raises(ValueError, match="exactness must be one of"):
        registry.Method(
            name="x", title="x", category="approximation", domain="any", paper="-", url="-", time_cost="-",
            memory_cost="-", attention=None, module="attnlib.reference:MultiHeadSelfAttention", pattern=None,
            chapter="x.ipynb", exactness="close enough",
        )  # fmt: skip


def test_registry_errors():
    with pytest.raises(ValueError, match="no method named 'nope'"):
        registry.get("nope")
    with pytest.raises(ValueError, match="category must be one of"):
        registry.by_category("magic")
    with pytest.raises(ValueError, match="category must be one of"):
        registry.Method("x", "x", "magic", "any", "", "", "", "", None, "m:M", None, "x.ipynb")


def test_slider_heatmap_has_one_step_per_frame():
    frames = [np.eye(4), np.ones((4, 4)), torch.zeros(4, 4, dtype=torch.bool)]
    figure = viz.slider_heatmap(frames, ["a", "b", "c"], titles=["A", "B", "C"])
    steps = figure.layout.sliders[0].steps
    assert [s.label for s in steps] == ["a", "b", "c"]
    assert steps[1].args[0]["z"][0] == np.ones((4, 4)).tolist()
    assert steps[2].args[1]["title.text"] == "C"
    categorical = viz.slider_heatmap([np.array([[0, 1], [2, 3]])], ["x"], categories=["none", "g", "w", "r"])
    assert list(categorical.data[0].colorbar.ticktext) == ["none", "g", "w", "r"]


def test_figure_html_loads_no_library_and_is_deterministic():
    figure = viz.slider_heatmap([np.eye(3)], ["only"])
    first = viz.figure_html(figure, "fig-1").data
    assert first == viz.figure_html(figure, "fig-1").data
    assert 'id="fig-1"' in first
    assert "<script src" not in first and "cdn" not in first.lower()
    with pytest.raises(ValueError, match="div_id"):
        viz.figure_html(figure, "1 bad id")


def test_explore_precomputes_every_combination_when_static(monkeypatch, capsys):
    monkeypatch.setenv("ATTNLIB_STATIC", "1")
    assert not viz.in_live_kernel()
    calls = []

    def compute(size, shift):
        calls.append((size, shift))
        return np.roll(np.eye(size), shift, axis=1)

    viz.explore(compute, {"size": [3], "shift": [0, 1, 2]}, div_id="explore-test")
    assert calls == [(3, 0), (3, 1), (3, 2)]
    with pytest.raises(ValueError, match="params"):
        viz.explore(compute, {}, div_id="x")


def test_viz_bad_frames():
    with pytest.raises(ValueError, match="2-D array"):
        viz.slider_heatmap([np.zeros(3)], ["a"])
    with pytest.raises(ValueError, match="one entry per frame"):
        viz.slider_heatmap([np.zeros((2, 2))], ["a", "b"])
    # frames of different shapes would mislabel every frame but the first
    with pytest.raises(ValueError, match=r"every frame must have the shape of the first, \(2, 2\), got \(3, 3\)"):
        viz.slider_heatmap([np.zeros((2, 2)), np.zeros((3, 3))], ["a", "b"])
    with pytest.raises(ValueError, match=r"x_ticks must have one label per column \(3\), got 2"):
        viz.slider_heatmap([np.zeros((2, 3))], ["a"], x_ticks=["p", "q"])
    with pytest.raises(ValueError, match=r"y_ticks must have one label per row \(2\), got 3"):
        viz.slider_heatmap([np.zeros((2, 3))], ["a"], y_ticks=["p", "q", "r"])
    too_many = [f"c{i}" for i in range(len(viz.CATEGORY_COLORS) + 1)]
    with pytest.raises(ValueError, match="categories must name between 1 and"):
        viz.slider_heatmap([np.zeros((2, 2), dtype=int)], ["a"], categories=too_many)
    with pytest.raises(ValueError, match="categories must name between 1 and"):
        viz.explore(lambda: np.zeros((2, 2)), {"x": [1]}, div_id="ok", categories=too_many)
    # twelve categories have twelve colours
    twelve = viz.slider_heatmap([np.arange(12).reshape(3, 4)], ["a"], categories=[str(i) for i in range(12)])
    assert len(twelve.data[0].colorbar.ticktext) == 12


def test_explore_checks_the_div_id_before_computing_any_frame():
    calls = []
    with pytest.raises(ValueError, match="div_id"):
        viz.explore(lambda x: calls.append(x) or np.eye(2), {"x": [1, 2]}, div_id="not valid")
    assert calls == []


def test_bfloat16_frames_are_drawn():
    weights = torch.softmax(torch.randn(4, 4), dim=-1).to(torch.bfloat16)
    figure = viz.slider_heatmap([weights], ["bf16"])
    assert np.allclose(np.array(figure.data[0].z), weights.float().numpy(), atol=1e-3)


def test_figure_data_is_rounded_to_four_significant_digits():
    assert viz.round_significant(np.array([0.04801643639802933, 123456.7, -0.000123449, 0.0])).tolist() == [
        0.04802,
        123500.0,
        -0.0001234,
        0.0,
    ]
    # last-digit differences between machines vanish
    a = np.array([[0.04801643639802933, 0.5]])
    b = np.array([[0.04801642522215843, 0.5]])
    html_a = viz.figure_html(viz.slider_heatmap([a], ["x"]), "fig-a").data
    html_b = viz.figure_html(viz.slider_heatmap([b], ["x"]), "fig-a").data
    assert html_a == html_b and "0.04802" in html_a and "0.048016" not in html_a
    assert "displayModeBar" in html_a  # no mode bar over the title
    # nor 16-digit numbers from plotly's template (its colour scales)
    assert not re.search(r"\d\.\d{8,}", html_a)


def test_a_heavy_figure_warns():
    frames = [np.random.default_rng(i).random((256, 256)) for i in range(6)]
    with pytest.warns(UserWarning, match="MB of HTML"):
        viz.figure_html(viz.slider_heatmap(frames, [str(i) for i in range(6)]), "heavy")


def test_static_heatmap_with_japanese_labels_has_no_missing_glyphs(recwarn):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = viz.heatmap(np.eye(3), title="注意の重み", xlabel="キー", ylabel="クエリ", categories=["なし", "窓", "全体"])
    ax.figure.canvas.draw()
    assert not [w for w in recwarn if "missing from" in str(w.message)]  # "Glyph ... missing from font"
    plt.close(ax.figure)


def test_fit_slope_recovers_exponents():
    sizes = [256, 512, 1024, 2048]
    assert bench.fit_slope(sizes, [3 * n**2 for n in sizes]) == pytest.approx(2.0)
    assert bench.fit_slope(sizes, [n for n in sizes]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least two"):
        bench.fit_slope([1, 2], [0.0, math.nan])


def test_median_time_and_bad_arguments():
    seconds = bench.median_time(lambda: sum(range(1000)), repeats=3, warmup=1)
    assert seconds > 0
    with pytest.raises(ValueError, match="repeats"):
        bench.median_time(lambda: None, repeats=0)


def test_fresh_process_measures_dense_memory_as_two_n_by_n_buffers(tmp_path):
    rows = bench.run(["dense", "sdpa"], [2048], repeats=1, progress=False, out=tmp_path / "r.csv")
    by_method = {row["method"]: row for row in rows}
    assert not by_method["dense"]["error"], by_method["dense"]["error"]
    two_buffers_mib = 2 * 4 * 2048 * 2048 * 4 / 2**20  # H=4, float32
    assert by_method["dense"]["peak_mib"] == pytest.approx(two_buffers_mib, rel=0.15)
    assert by_method["sdpa"]["peak_mib"] < two_buffers_mib / 4
    # The warm-up call on a short input keeps one-time setup (thread pools, BLAS buffers, about
    # 10 MB) out of the peak: the fused kernel's peak is then about its output, not output + setup.
    output_mib = 4 * 2048 * 64 * 4 / 2**20
    assert by_method["sdpa"]["peak_mib"] < 2.5 * output_mib
    assert [r["method"] for r in bench.read_results(tmp_path / "r.csv")] == ["dense", "sdpa"]


def test_fresh_process_reports_errors():
    row = bench.measure_in_fresh_process("dense", 16, d=8, dtype="float32", device="no-such-device", repeats=1)
    assert row["error"] and math.isnan(row["median_s"])
    with pytest.raises(ValueError, match="dtype must be one of"):
        bench.measure_in_fresh_process("dense", 16, dtype="int8")
