"""Chapter 09 (CoaT): conv-attention against SDPA, from benchmarks/results/cpu_vision_approx.csv."""

from __future__ import annotations

import math
from pathlib import Path

from attnlib import bench

from . import Target, at_least, at_most

CHAPTER = "09_coat"
TOKENS = 12544  # a 112 x 112 map


def targets(results: Path) -> list[Target]:
    rows = [
        row
        for row in bench.read_results(results / "cpu_vision_approx.csv")
        if row["status"] == "ok" and row["kind"] == "vision"
    ]

    def median(method: str, N: int) -> float:
        return next((row["median_s"] for row in rows if row["method"] == method and row["N"] == N), math.nan)

    coat = [row for row in rows if row["method"] == "coat"]
    slope = math.nan
    if len(coat) >= 2:
        slope = bench.fit_slope([row["N"] for row in coat], [row["median_s"] for row in coat])
    speedup = median("sdpa", TOKENS) / median("coat", TOKENS)
    return [
        at_least(CHAPTER, "CoaT speedup over SDPA at 12,544 tokens", speedup, 10),
        at_most(CHAPTER, "CoaT time slope (log time vs log N)", slope, 1.15),
    ]
