"""Every registered method side by side: the tables and figures of the comparison chapter.

Everything here is computed from :data:`attnlib.registry.METHODS` and the committed benchmark
results (``benchmarks/results/*.csv``, written by ``python -m attnlib.bench``), so a method added
to the registry and measured by the benchmark appears in every table and figure without touching
the chapter's code. Chapter: "Comparison" (chapters/*/13_comparison.ipynb).

Conventions: *speed* is ``time(baseline) / time(method)`` (above 1 is faster), *memory* is
``peak(method) / peak(baseline)`` (below 1 is smaller), both measured in the same run.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import bench, registry

__all__ = [
    "LRA_SPEED",
    "LRA_MEMORY_4K_GB",
    "ratio_table",
    "slope_table",
    "properties_table",
    "interactive_cost_figure",
    "format_ratio",
    "example_patterns",
    "ARENA_FIELDS",
    "ArenaCell",
    "read_arena",
    "arena_summary",
    "cannot_tell_apart",
    "LRA_ACCURACY",
]

# Long Range Arena (Tay et al., ICLR 2021, Table 2; TPU v3, batch 32): speed relative to the vanilla
# Transformer at 1K, 2K, 3K and 4K tokens, and peak memory at 4K in GB, for the methods the book has.
LRA_SPEED = {
    "bigbird": {1024: 0.9, 2048: 0.8, 3072: 1.2, 4096: 1.1},
    "reformer": {1024: 0.5, 2048: 0.4, 3072: 0.7, 4096: 0.8},
}
LRA_MEMORY_4K_GB = {"dense": 9.48, "bigbird": 2.88, "reformer": 2.28}

# What each method gives up of softmax attention over all pairs; methods not listed show "-".
LOSSES = {
    "dense": "nothing (the definition)",
    "sdpa": "nothing (same math, fused)",
    "flash": "nothing (same math, tiled)",
    "falcon": "a key and value per head (multi-query shares one; the kernel is exact)",
    "ring": "nothing (same math, split across processes)",
    "bigbird": "global reach of most pairs (window + random + global blocks)",
    "bigbird_flash": "global reach of most pairs (BigBird's blocks)",
    "reformer": "keys in other buckets (content-based, may miss)",
    "swin": "global reach per layer (windows; the shift connects them)",
    "maxvit": "direct pairs outside the block or grid group",
    "pvt": "resolution of keys and values (pooled by R x R)",
    "dat": "keys away from the sampled points",
    "mixer": "content-dependence (fixed token weights)",
    "poolformer": "content-dependence and global reach (3 x 3 average)",
    "coat": "the softmax over pairs (softmax over tokens of K instead)",
    "linear": "exp's kernel (elu + 1 features instead; no sharp weights)",
    "performer": "exactness (a random-feature estimate of exp's kernel; noisy where weights are sharp)",
    "linformer": "causality and the full rank of the weights (k keys projected from all N)",
    "ssd": "the softmax over pairs (a decayed scan over a fixed-size state)",
}


def _ok_rows(rows: Sequence[dict]) -> list[dict]:
    return [row for row in rows if row.get("status", "ok") == "ok" and not row.get("error")]


# What a row measured rather than how it was configured; "side" follows from N.
NOT_CONFIGURATION = ("method", "N", "side", "median_s", "peak_mib", "status", "error")


def _setting(row: dict) -> tuple:
    """How a row was measured apart from its method and size: ``((field, value), ...)``, e.g. ``causal``, ``H``."""
    return tuple(sorted((key, str(value)) for key, value in row.items() if key not in NOT_CONFIGURATION))


def _refuse_mixed_settings(rows: Sequence[dict], group) -> None:
    """Raise if the rows of one ``group(row)`` (a method, or a method at one size) hold several settings.

    A resumed benchmark can hold, say, a causal and a non-causal run in one file; a table keyed by
    method and N can show only one of them, so it asks for a selection instead of picking one.
    """
    settings: dict[object, dict[tuple, None]] = {}
    for row in rows:
        settings.setdefault(group(row), {})[_setting(row)] = None
    for where, found in settings.items():
        if len(found) < 2:
            continue
        values = [dict(setting) for setting in found]
        differing = [
            key for key in dict.fromkeys(k for v in values for k in v) if len({v.get(key) for v in values}) > 1
        ]
        described = "; ".join(f"{key} in {sorted({str(v.get(key)) for v in values})}" for key in differing)
        key = differing[0]
        raise ValueError(
            f"rows must hold one configuration per method and size, but {where} has more than one configuration "
            f"({described}): select one first, e.g. rows = [row for row in rows if str(row[{key!r}]) == "
            f"{str(values[0].get(key))!r}]"
        )


def ratio_table(rows: Sequence[dict], *, baseline: str = "dense") -> dict[str, dict[int, tuple[float, float]]]:
    """``{method: {N: (speed, memory)}}`` relative to ``baseline`` at the same N, one run's rows.

    Each row is compared with the baseline's row of the same configuration (heads, causal, dtype...:
    every field but the method and the measurements). Rows in which one method at one N was
    measured in more than one configuration are refused (``ValueError``): select one first (the
    baseline itself may be in several, one for each configuration of the others).
    A size where the baseline was not measured (skipped: it did not fit) has no entry; a speed
    from a zero or missing time is NaN (printed as ``-`` by :func:`format_ratio`).
    """
    compared = [row for row in rows if row["method"] != baseline]  # the baseline may be in several
    _refuse_mixed_settings(compared, lambda row: f"{row['method']!r} at N={row['N']}")
    rows = _ok_rows(rows)
    base = {(row["N"], _setting(row)): row for row in rows if row["method"] == baseline}
    table: dict[str, dict[int, tuple[float, float]]] = {}
    for row in rows:
        reference = base.get((row["N"], _setting(row)))
        if reference is None or row["method"] == baseline:
            continue
        times = (reference["median_s"], row["median_s"])
        speed = times[0] / times[1] if all(t > 0 and math.isfinite(t) for t in times) else math.nan
        memory = row["peak_mib"] / reference["peak_mib"] if reference["peak_mib"] > 0 else math.nan
        table.setdefault(row["method"], {})[row["N"]] = (speed, memory)
    return table


def slope_table(rows: Sequence[dict]) -> dict[str, tuple[float, float]]:
    """``{method: (time slope, memory slope)}``: fitted exponents p in cost ~ N^p, over the measured sizes.

    A method needs at least two different sizes; rows holding one method in more than one
    configuration are refused (``ValueError``): a slope across configurations means nothing.
    """
    _refuse_mixed_settings(rows, lambda row: repr(row["method"]))
    slopes = {}
    rows = _ok_rows(rows)
    for name in dict.fromkeys(row["method"] for row in rows):
        mine = sorted((row for row in rows if row["method"] == name), key=lambda row: row["N"])
        if len({row["N"] for row in mine}) >= 2:
            sizes = [row["N"] for row in mine]
            slopes[name] = (
                bench.fit_slope(sizes, [row["median_s"] for row in mine]),
                bench.fit_slope(sizes, [max(row["peak_mib"], 1e-3) for row in mine]),
            )
    return slopes


def properties_table(slopes: dict[str, tuple[float, float]] | None = None) -> list[dict]:
    """One row per registered method: family, domain, exact or not, what is lost, cost, measured slope."""
    slopes = slopes or {}
    table = []
    for method in registry.METHODS:
        slope = slopes.get(method.name)
        table.append(
            {
                "method": method.name,
                "category": method.category,
                "domain": method.domain,
                "exact": method.exactness == "exact",
                "exactness": method.exactness,
                "loses": LOSSES.get(method.name, "-"),
                "time_cost": method.time_cost,
                "time_slope": None if slope is None else round(slope[0], 2),
                "chapter": method.chapter,
            }
        )
    return table


def format_ratio(value: float) -> str:
    """A ratio as the book prints it: two significant digits (``3.1x``, ``0.012x``), ``-`` when missing."""
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.2g}x" if value < 10 else f"{value:.0f}x"


def interactive_cost_figure(rows: Sequence[dict], *, div_id: str, title: str = "", quantity: str = "time"):
    """Log-log cost against N, one trace per method; click a legend entry to hide or show it.

    ``quantity`` is ``"time"`` (ms) or ``"memory"`` (MiB). Returns the static HTML (no network).
    """
    import plotly.graph_objects as go

    from . import viz

    if quantity not in ("time", "memory"):
        raise ValueError(f"quantity must be 'time' or 'memory', got {quantity!r}")
    key, scale, label = ("median_s", 1e3, "time [ms]") if quantity == "time" else ("peak_mib", 1.0, "peak memory [MiB]")
    figure = go.Figure()
    rows = _ok_rows(rows)
    for name in dict.fromkeys(row["method"] for row in rows):
        mine = sorted((row for row in rows if row["method"] == name), key=lambda row: row["N"])
        values = viz.round_significant([max(row[key] * scale, 1e-3) for row in mine]).tolist()
        figure.add_trace(go.Scatter(x=[row["N"] for row in mine], y=values, mode="lines+markers", name=name))
    figure.update_layout(
        title=dict(text=title, y=0.97, yref="container"),
        font=dict(family=viz.PLOTLY_FONT),
        width=680,
        height=460,
        margin=dict(l=60, r=20, t=70, b=50),
        xaxis=dict(title=dict(text="N (tokens)"), type="log"),
        yaxis=dict(title=dict(text=label), type="log"),
        legend=dict(title=dict(text="click to hide / show")),
    )
    return viz.figure_html(figure, div_id)


def example_patterns(side: int = 14) -> dict[str, object]:
    """Boolean ``(N, N)`` patterns at one size, ``N = side * side``, for the small multiples.

    Language methods see the ``N`` tokens as a sequence, vision methods as a ``side x side`` map
    (row-major). Only methods whose pattern is a fixed query-key mask are drawn: PVT and DAT
    attend to pooled or sampled keys, not to pixels, and the approximations have mixing
    matrices instead (their chapters draw them).
    """
    import torch

    from .sparse.bigbird import bigbird_pattern
    from .sparse.maxvit import maxvit_pattern
    from .sparse.reformer import lsh_pattern
    from .sparse.swin import swin_pattern

    N = side * side
    generator = torch.Generator().manual_seed(0)
    qk = torch.randn(1, 1, N, 16, generator=generator, dtype=torch.float64)  # (1, 1, N, d)
    window = side // 2
    return {
        "dense": torch.ones(N, N, dtype=torch.bool),
        "bigbird": bigbird_pattern(N, block_size=side, num_random_blocks=2, seed=0)[0],
        "reformer": lsh_pattern(qk, n_hashes=2, chunk_size=side, seed=0)[0, 0],
        "swin": swin_pattern(side, side, window_size=window, shift_size=0),
        "swin (shifted)": swin_pattern(side, side, window_size=window, shift_size=window // 2),
        "maxvit (block)": maxvit_pattern(side, side, "block", window),
        "maxvit (grid)": maxvit_pattern(side, side, "grid", window),
    }


# --------------------------------------------------------------------------- accuracy (the arena)
# Long Range Arena (Tay et al., ICLR 2021, Table 1): test accuracy in % on ListOps and Pathfinder,
# for the methods the book has (Linear Trans. is Katharopoulos et al.'s linear attention); the same numbers are the
# leaderboard of the released repository's README (google-research/long-range-arena, as of 8 November 2020)
LRA_ACCURACY = {
    "dense": {"ListOps": 36.37, "Pathfinder": 71.40},
    "reformer": {"ListOps": 37.27, "Pathfinder": 68.50},
    "bigbird": {"ListOps": 36.05, "Pathfinder": 74.87},
    "linear": {"ListOps": 16.13, "Pathfinder": 75.30},
    "performer": {"ListOps": 18.01, "Pathfinder": 77.05},
    "linformer": {"ListOps": 35.70, "Pathfinder": 76.34},
}

# The columns of the arena's CSV (``benchmarks/quality.py``): the configuration, then the results
ARENA_KEY_FIELDS = [
    "task",
    "kind",
    "size",
    "tokens",
    "method",
    "seed",
    "steps",
    "batch",
    "lr",
    "test_examples",
    "device",
]
ARENA_FIELDS = ARENA_KEY_FIELDS + ["params", "accuracy", "final_loss", "train_s", "status", "error"]


def read_arena(path) -> tuple[str, list[dict]]:
    """The provenance line (date, machine, versions) and the rows of an arena CSV.

    ValueError when the file is not one written by ``benchmarks/quality.py``.
    """
    path = Path(path)
    with path.open(newline="") as handle:
        first = handle.readline()
        reader = csv.DictReader(handle)
        if not first.startswith("#") or reader.fieldnames != ARENA_FIELDS:
            raise ValueError(f"{path.name!r} is not a results file of benchmarks/quality.py (columns {ARENA_FIELDS})")
        return first.lstrip("# ").strip(), list(reader)


@dataclass(frozen=True)
class ArenaCell:
    """One method on one task: its test accuracy over the seeds, and its training time."""

    mean: float  # mean accuracy over the seeds
    low: float  # the lowest and the highest seed: the spread
    high: float
    seeds: int
    seconds_per_step: float  # mean training time per step over the seeds (CPU, in the run's workers)


def arena_summary(rows: Sequence[dict]) -> dict[str, dict[str, ArenaCell | str]]:
    """task -> method -> :class:`ArenaCell`, at the largest size every method of the task trained.

    A method the run skipped there (the parameter rule could not be met) maps to its reason, a str.
    ValueError if a row failed, or if a task has no size that every one of its methods trained.
    """
    failed = [row for row in rows if row["status"] == "error"]
    if failed:
        row = failed[0]
        raise ValueError(f"rows failed, e.g. {row['task']} {row['method']} seed {row['seed']}: {row['error']}")
    summary: dict[str, dict[str, ArenaCell | str]] = {}
    for task in dict.fromkeys(row["task"] for row in rows):
        mine = [row for row in rows if row["task"] == task]
        methods = list(dict.fromkeys(row["method"] for row in mine))
        finished = {(row["method"], row["size"]) for row in mine if row["status"] in ("ok", "skipped")}
        sizes = {row["size"] for row in mine}
        trained = [int(size) for size in sizes if all((name, size) in finished for name in methods)]
        if not trained:
            raise ValueError(f"task {task!r} has no size that every one of its methods trained")
        size = str(max(trained))
        cells: dict[str, ArenaCell | str] = {}
        for name in methods:
            at_size = [row for row in mine if row["method"] == name and row["size"] == size]
            ok = [row for row in at_size if row["status"] == "ok"]
            if not ok:
                cells[name] = at_size[0]["error"]
                continue
            accuracies = [float(row["accuracy"]) for row in ok]
            per_step = [float(row["train_s"]) / int(row["steps"]) for row in ok]
            cells[name] = ArenaCell(
                mean=sum(accuracies) / len(accuracies),
                low=min(accuracies),
                high=max(accuracies),
                seeds=len(ok),
                seconds_per_step=sum(per_step) / len(per_step),
            )
        summary[task] = cells
    return summary


def cannot_tell_apart(a: ArenaCell, b: ArenaCell) -> bool:
    """True when the two methods' ranges over the seeds overlap: these seeds do not separate them."""
    return a.low <= b.high and b.low <= a.high
