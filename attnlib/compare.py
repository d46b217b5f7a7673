"""Every registered method side by side: the tables and figures of the comparison chapter.

Everything here is computed from :data:`attnlib.registry.METHODS` and the committed benchmark
results (``benchmarks/results/*.csv``, written by ``python -m attnlib.bench``), so a method added
to the registry and measured by the benchmark appears in every table and figure without touching
the chapter's code. Chapter: "Comparison" (chapters/*/13_comparison.ipynb).

Conventions: *speed* is ``time(baseline) / time(method)`` (above 1 is faster), *memory* is
``peak(method) / peak(baseline)`` (below 1 is smaller), both measured in the same run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
]

# Long Range Arena (Tay et al., ICLR 2021, Table 2; TPU v3, batch 32): speed relative to the vanilla
# Transformer at 1K, 2K, 3K and 4K tokens, and peak memory at 4K in GB, for the methods the book has.
LRA_SPEED = {
    "bigbird": {1024: 0.9, 2048: 0.8, 3072: 1.2, 4096: 1.1},
    "reformer": {1024: 0.5, 2048: 0.4, 3072: 0.7, 4096: 0.8},
}
LRA_MEMORY_4K_GB = {"dense": 9.48, "bigbird": 2.88, "reformer": 2.28}

# What each family keeps of softmax attention; methods not listed show "-" (see properties_table).
EXACT_CATEGORIES = ("baseline", "computation optimization")
LOSSES = {
    "dense": "nothing (the definition)",
    "sdpa": "nothing (same math, fused)",
    "flash": "nothing (same math, tiled)",
    "falcon": "nothing in attention (multi-query shares K, V across heads)",
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
}


def _ok_rows(rows: Sequence[dict]) -> list[dict]:
    return [row for row in rows if row.get("status", "ok") == "ok" and not row.get("error")]


def ratio_table(rows: Sequence[dict], *, baseline: str = "dense") -> dict[str, dict[int, tuple[float, float]]]:
    """``{method: {N: (speed, memory)}}`` relative to ``baseline`` at the same N, one run's rows.

    A size where the baseline was not measured (skipped: it did not fit) has no entry.
    """
    rows = _ok_rows(rows)
    base = {row["N"]: row for row in rows if row["method"] == baseline}
    table: dict[str, dict[int, tuple[float, float]]] = {}
    for row in rows:
        reference = base.get(row["N"])
        if reference is None or row["method"] == baseline:
            continue
        speed = reference["median_s"] / row["median_s"]
        memory = row["peak_mib"] / reference["peak_mib"] if reference["peak_mib"] > 0 else math.nan
        table.setdefault(row["method"], {})[row["N"]] = (speed, memory)
    return table


def slope_table(rows: Sequence[dict]) -> dict[str, tuple[float, float]]:
    """``{method: (time slope, memory slope)}``: fitted exponents p in cost ~ N^p, over the measured sizes."""
    slopes = {}
    rows = _ok_rows(rows)
    for name in dict.fromkeys(row["method"] for row in rows):
        mine = sorted((row for row in rows if row["method"] == name), key=lambda row: row["N"])
        if len(mine) >= 2:
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
                "exact": method.category in EXACT_CATEGORIES,
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
