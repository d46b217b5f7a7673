"""Chapter 05 (BigBird): BigBird against dense attention and SDPA, from ``cpu_attention.csv``.

The thresholds are the ones the chapter used to print as verdicts (non-causal rows, B=1, H=4,
d=64, float32, 2 threads):

* BigBird at least 5x faster than dense attention at N = 4096, and 17x at N = 16384;
* faster than PyTorch's fused ``scaled_dot_product_attention`` at every N >= 4096;
* peak memory at most a quarter of dense attention's at N = 4096;
* time slope (log-log fit over every committed N) at most 1.2.
"""

from __future__ import annotations

import math
from pathlib import Path

from attnlib import bench

from . import Target, at_least, at_most

CHAPTER = "05_bigbird"
FILE = "cpu_attention.csv"
METHOD = "bigbird"


def _rows(results: Path, methods: tuple[str, ...]) -> list[dict]:
    path = results / FILE
    if not path.exists():
        return []
    return [
        row
        for row in bench.read_results(path)
        if row["method"] in methods and not row["causal"] and not row["error"] and row["status"] == "ok"
    ]


def _lookup(rows: list[dict], method: str, N: int) -> dict | None:
    return next((row for row in rows if row["method"] == method and row["N"] == N), None)


def _speedup(rows: list[dict], method: str, other: str, N: int) -> float:
    mine, theirs = _lookup(rows, method, N), _lookup(rows, other, N)
    return theirs["median_s"] / mine["median_s"] if mine and theirs else math.nan


def _memory_ratio(rows: list[dict], method: str, other: str, N: int) -> float:
    mine, theirs = _lookup(rows, method, N), _lookup(rows, other, N)
    return mine["peak_mib"] / theirs["peak_mib"] if mine and theirs else math.nan


def _time_slope(rows: list[dict], method: str) -> float:
    mine = [row for row in rows if row["method"] == method]
    if len({row["N"] for row in mine}) < 2:
        return math.nan
    return bench.fit_slope([row["N"] for row in mine], [row["median_s"] for row in mine])


def targets(results: Path) -> list[Target]:
    rows = _rows(results, ("dense", "sdpa", METHOD))
    large = sorted({row["N"] for row in rows if row["N"] >= 4096 and row["method"] == METHOD})
    large = [N for N in large if _lookup(rows, "sdpa", N)]
    sdpa_speedups = [_speedup(rows, METHOD, "sdpa", N) for N in large]
    smallest_sdpa = min(sdpa_speedups) if sdpa_speedups else math.nan
    return [
        at_least(CHAPTER, "BigBird speedup over dense at N=4096", _speedup(rows, METHOD, "dense", 4096), 5),
        at_least(CHAPTER, "BigBird speedup over dense at N=16384", _speedup(rows, METHOD, "dense", 16384), 17),
        Target(
            CHAPTER,
            "BigBird speedup over sdpa > 1 at every N >= 4096 (smallest)",
            smallest_sdpa,
            bool(sdpa_speedups) and all(value > 1 for value in sdpa_speedups),
        ),
        at_most(CHAPTER, "BigBird peak memory / dense's at N=4096", _memory_ratio(rows, METHOD, "dense", 4096), 0.25),
        at_most(CHAPTER, "BigBird time slope over the committed N", _time_slope(rows, METHOD), 1.2),
    ]
