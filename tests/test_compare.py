"""attnlib.compare: the comparison chapter's tables come from the registry and the benchmark rows."""

from __future__ import annotations

import math

import pytest

from attnlib import bench, compare, registry


def rows_for(methods_and_costs, sizes=(1024, 2048, 4096)):
    """Benchmark rows where method m at size N takes factor * N^power seconds and mem * N MiB."""
    rows = []
    for name, factor, power, memory in methods_and_costs:
        for N in sizes:
            rows.append({"method": name, "N": N, "median_s": factor * N**power, "peak_mib": memory * N,
                         "status": "ok", "error": ""})  # fmt: skip
    return rows


def test_ratios_and_slopes_come_from_the_rows():
    rows = rows_for([("dense", 1e-9, 2.0, 0.01), ("sdpa", 0.5e-9, 2.0, 0.001), ("fast", 1e-6, 1.0, 0.002)])
    table = compare.ratio_table(rows, baseline="dense")
    speed, memory = table["fast"][4096]
    assert speed == pytest.approx(1e-9 * 4096**2 / (1e-6 * 4096)) and memory == pytest.approx(0.2)
    assert set(table) == {"sdpa", "fast"}  # the baseline is not compared with itself
    slopes = compare.slope_table(rows)
    assert slopes["dense"][0] == pytest.approx(2.0) and slopes["fast"][0] == pytest.approx(1.0)


def test_a_size_the_baseline_could_not_take_has_no_ratio():
    rows = rows_for([("dense", 1e-9, 2.0, 0.01), ("fast", 1e-6, 1.0, 0.002)])
    rows[2] = dict(rows[2], status="skipped", median_s=math.nan, peak_mib=math.nan)  # dense at 4096
    assert 4096 not in compare.ratio_table(rows)["fast"]


def test_a_method_added_to_the_registry_appears_without_touching_the_chapter(monkeypatch):
    toy = registry.Method(
        name="toy", title="A toy", category="approximation", domain="language", paper="-", url="-",
        time_cost="O(N)", memory_cost="O(N)", attention="attnlib.reference:attention",
        module="attnlib.reference:MultiHeadSelfAttention", pattern=None, chapter="13_comparison.ipynb",
        exactness="another mixer",
    )  # fmt: skip
    monkeypatch.setattr(registry, "METHODS", [*registry.METHODS, toy])
    rows = rows_for([("dense", 1e-9, 2.0, 0.01), ("toy", 1e-6, 1.0, 0.001)])
    slopes = compare.slope_table(rows)
    properties = {row["method"]: row for row in compare.properties_table(slopes)}
    assert properties["toy"]["time_slope"] == pytest.approx(1.0) and properties["toy"]["exact"] is False
    assert properties["toy"]["loses"] == "-"
    assert "toy" in compare.ratio_table(rows)
    html = compare.interactive_cost_figure(rows, div_id="cmp-test").data
    assert '"name":"toy"' in html and '"name":"dense"' in html


def test_every_registered_method_is_in_the_properties_table():
    assert [row["method"] for row in compare.properties_table()] == [m.name for m in registry.METHODS]


def test_the_committed_results_read_back():
    rows = bench.read_results(bench.results_path("cpu_attention.csv"))
    assert {"dense", "sdpa"} <= {row["method"] for row in rows}
    assert compare.ratio_table(rows)["sdpa"]


def test_format_ratio():
    assert [compare.format_ratio(x) for x in (3.14159, 0.01234, 64.4, math.nan, None)] == [
        "3.1x",
        "0.012x",
        "64x",
        "-",
        "-",
    ]
    with pytest.raises(ValueError, match="quantity"):
        compare.interactive_cost_figure([], div_id="x", quantity="speed")


def with_setting(rows, **setting):
    return [dict(row, **setting) for row in rows]


def test_rows_of_two_configurations_are_paired_by_the_whole_configuration():
    """A resumed run can hold a causal and a non-causal run in one file: neither may hide the other."""
    plain = with_setting(rows_for([("dense", 1e-9, 2.0, 0.01), ("flash", 0.5e-9, 2.0, 0.001)]), causal=False)
    causal = with_setting(rows_for([("dense", 1e-9, 2.0, 0.01), ("flash", 3e-9, 2.0, 0.001)]), causal=True)
    assert compare.ratio_table(plain)["flash"][1024][0] == pytest.approx(2.0)
    assert compare.ratio_table(causal)["flash"][1024][0] == pytest.approx(1 / 3)
    for table in (compare.ratio_table, compare.slope_table):
        with pytest.raises(ValueError, match=r"more than one configuration.*causal"):
            table(plain + causal)
    # each method in one configuration, the baseline in two: each row meets the baseline of its own
    pvt = with_setting(rows_for([("dense", 1e-9, 2.0, 0.01), ("pvt", 1e-9, 1.0, 0.001)]), H=1, d=64)
    dat = with_setting(rows_for([("dense", 4e-9, 2.0, 0.02), ("dat", 1e-9, 1.0, 0.001)]), H=2, d=32)
    table = compare.ratio_table(pvt + dat)
    assert table["pvt"][2048][0] == pytest.approx(2048)
    assert table["dat"][2048][0] == pytest.approx(4 * 2048)
    assert table["dat"][2048][1] == pytest.approx(0.05)


def test_one_size_measured_twice_refused_not_divided_by_zero():
    rows = [dict(row, causal=causal) for row in rows_for([("flash", 1e-9, 2.0, 0.01)], sizes=(1024,))
            for causal in (False, True)]  # fmt: skip
    with pytest.raises(ValueError, match="more than one configuration"):
        compare.slope_table(rows)
    with pytest.raises(ValueError, match="two different sizes"):
        bench.fit_slope([1024, 1024], [1.0, 2.0])


def test_a_zero_time_gives_no_ratio_instead_of_dividing_by_zero():
    rows = rows_for([("dense", 1e-9, 2.0, 0.01), ("fast", 1e-6, 1.0, 0.002), ("odd", 1e-6, 1.0, 0.002)])
    rows = [dict(row, median_s=0.0) if row["method"] == "fast" or (row["method"] == "dense" and row["N"] == 4096)
            else row for row in rows]  # fmt: skip
    table = compare.ratio_table(rows)
    assert all(math.isnan(speed) for speed, _ in table["fast"].values())
    assert math.isnan(table["odd"][4096][0])  # a zero baseline time gives no ratio, not 0x
    assert table["odd"][1024][0] == pytest.approx(1e-9 * 1024**2 / (1e-6 * 1024))
    assert compare.format_ratio(table["fast"][1024][0]) == "-"


# ---------------------------------------------------------------- the accuracy arena
def arena_row(task, method, seed, accuracy, *, size=64, status="ok", train_s=10.0, steps=100, error=""):
    row = dict.fromkeys(compare.ARENA_FIELDS, "")
    row.update(task=task, kind="language", size=str(size), method=method, seed=str(seed), steps=str(steps),
               accuracy="" if accuracy is None else str(accuracy), train_s=str(train_s), status=status,
               error=error)  # fmt: skip
    return row


def test_arena_summary_gives_mean_spread_and_time_per_step():
    rows = [arena_row("mqar", "dense", seed, acc, train_s=10.0 + seed) for seed, acc in enumerate((0.9, 1.0, 0.95))]
    rows += [arena_row("mqar", "linear", seed, acc) for seed, acc in enumerate((0.1, 0.3, 0.2))]
    cells = compare.arena_summary(rows)["mqar"]
    dense, linear = cells["dense"], cells["linear"]
    assert dense.mean == pytest.approx(0.95) and (dense.low, dense.high, dense.seeds) == (0.9, 1.0, 3)
    assert dense.seconds_per_step == pytest.approx(0.11)  # (10 + 11 + 12) / 3 s over 100 steps
    assert linear.mean == pytest.approx(0.2)
    assert not compare.cannot_tell_apart(dense, linear)
    assert compare.cannot_tell_apart(linear, compare.ArenaCell(0.35, 0.3, 0.4, 3, 0.1))  # 0.3 in both ranges
    assert compare.cannot_tell_apart(dense, dense)


def test_arena_summary_takes_the_largest_size_every_method_trained_and_keeps_skips():
    rows = [arena_row("mqar", name, 0, 0.5, size=size) for name in ("dense", "bigbird") for size in (64, 128)]
    rows += [arena_row("mqar", "dense", 0, 0.9, size=256)]  # bigbird has no row at 256
    rows += [arena_row("mqar", "wide", 0, None, size=size, status="skipped", error="too many parameters")
             for size in (64, 128)]  # fmt: skip
    cells = compare.arena_summary(rows)["mqar"]
    assert cells["dense"].mean == 0.5  # at 128, not 256
    assert cells["wide"] == "too many parameters"


def test_arena_summary_refuses_failed_rows_and_untrained_tasks():
    with pytest.raises(ValueError, match="failed"):
        compare.arena_summary([arena_row("mqar", "dense", 0, None, status="error", error="boom")])
    rows = [arena_row("mqar", "dense", 0, 0.9, size=64), arena_row("mqar", "linear", 0, 0.2, size=128)]
    with pytest.raises(ValueError, match="no size"):
        compare.arena_summary(rows)


def test_read_arena_refuses_another_csv(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("# a header\nmethod,N\n")
    with pytest.raises(ValueError, match="quality.py"):
        compare.read_arena(other)


def test_the_committed_arena_has_every_registered_method_of_each_kind():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import quality

    provenance, rows = compare.read_arena(bench.results_path("cpu_arena.csv"))
    assert provenance.startswith("measured ") and "torch" in provenance
    assert {row["task"] for row in rows} == set(quality.DEFAULT_TASKS)
    for task in quality.DEFAULT_TASKS:
        kind = quality.TASK_SETTINGS[task].kind
        mine = [row for row in rows if row["task"] == task]
        assert {row["method"] for row in mine} == set(quality.methods_of_kind(kind)), task
        for method in {row["method"] for row in mine}:
            seeds = {row["seed"] for row in mine if row["method"] == method and row["status"] in ("ok", "skipped")}
            assert len(seeds) >= 3, (task, method)
    summary = compare.arena_summary(rows)
    for task, cells in summary.items():  # the calibration holds in the committed run: dense reaches 0.9
        assert cells["dense"].mean >= 0.9, (task, cells["dense"])
