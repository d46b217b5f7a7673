"""The book's acceptance targets, checked against the committed results in benchmarks/results.

Chapters show what a result looks like and why; whether a measurement meets the number the
project set for it is a maintainer's question, answered here. One module per chapter
(``chNN_name.py``) defines ``targets(results: pathlib.Path) -> list[Target]``;
``python benchmarks/check_targets.py`` prints them all and fails when one does not hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    """One acceptance target: ``value`` measured from the committed CSVs, ``holds`` its verdict.

    ``value`` is NaN when the committed results have no data for it (a GPU run not made yet);
    ``needs_gpu`` marks the targets that only a GPU run can answer.
    """

    chapter: str
    description: str
    value: float
    holds: bool
    needs_gpu: bool = False

    @property
    def verdict(self) -> str:
        if math.isnan(self.value):
            return "no data"
        return "holds" if self.holds else "DOES NOT HOLD"


def at_least(chapter: str, description: str, value: float, threshold: float, **kw) -> Target:
    return Target(chapter, f"{description} >= {threshold:g}", value, value >= threshold, **kw)


def at_most(chapter: str, description: str, value: float, threshold: float, **kw) -> Target:
    return Target(chapter, f"{description} <= {threshold:g}", value, value <= threshold, **kw)


def vision_mixer_targets(
    results, chapter: str, method: str, label: str, min_speedup: float, *, max_slope: float = 1.15
) -> list[Target]:
    """A token mixer of ``cpu_vision_approx.csv`` against SDPA on a 112 x 112 map (12,544 tokens).

    Two targets: at least ``min_speedup`` times faster than SDPA there, and a time slope (log time
    against log N over every measured size) of at most ``max_slope``.
    """
    from attnlib import bench  # imported on use: the package imports nothing heavy

    tokens = 112 * 112
    rows = [
        row
        for row in bench.read_results(results / "cpu_vision_approx.csv")
        if row["status"] == "ok" and row["kind"] == "vision"
    ]

    def median(name: str) -> float:
        return next((row["median_s"] for row in rows if row["method"] == name and row["N"] == tokens), math.nan)

    mine = [row for row in rows if row["method"] == method]
    slope = math.nan
    if len({row["N"] for row in mine}) >= 2:
        slope = bench.fit_slope([row["N"] for row in mine], [row["median_s"] for row in mine])
    return [
        at_least(chapter, f"{label} speedup over SDPA at 12,544 tokens", median("sdpa") / median(method), min_speedup),
        at_most(chapter, f"{label} time slope (log time vs log N)", slope, max_slope),
    ]


# Language benchmarks (chapters 05 and 06): rows of cpu_attention.csv and the ratios read from them.


def attention_rows(results: Path, methods: tuple[str, ...], file: str = "cpu_attention.csv") -> list[dict]:
    """The non-causal rows of ``methods`` that ran, from a language benchmark's committed CSV."""
    from attnlib import bench

    path = results / file
    if not path.exists():
        return []
    return [
        row
        for row in bench.read_results(path)
        if row["method"] in methods and not row["causal"] and not row["error"] and row["status"] == "ok"
    ]


def lookup(rows: list[dict], method: str, N: int) -> dict | None:
    return next((row for row in rows if row["method"] == method and row["N"] == N), None)


def speedup(rows: list[dict], method: str, other: str, N: int) -> float:
    mine, theirs = lookup(rows, method, N), lookup(rows, other, N)
    return theirs["median_s"] / mine["median_s"] if mine and theirs else math.nan


def memory_ratio(rows: list[dict], method: str, other: str, N: int) -> float:
    mine, theirs = lookup(rows, method, N), lookup(rows, other, N)
    return mine["peak_mib"] / theirs["peak_mib"] if mine and theirs else math.nan


def time_slope(rows: list[dict], method: str) -> float:
    from attnlib import bench

    mine = [row for row in rows if row["method"] == method]
    if len({row["N"] for row in mine}) < 2:
        return math.nan
    return bench.fit_slope([row["N"] for row in mine], [row["median_s"] for row in mine])
