"""Chapter 08 (PoolFormer): the pooling mixer against SDPA, from benchmarks/results/cpu_vision_approx.csv."""

from __future__ import annotations

import math
from pathlib import Path

from attnlib import bench

from . import Target, at_least, at_most

CHAPTER = "08_poolformer"
TOKENS = 12544  # a 112 x 112 map


def targets(results: Path) -> list[Target]:
    rows = [
        row
        for row in bench.read_results(results / "cpu_vision_approx.csv")
        if row["status"] == "ok" and row["kind"] == "vision"
    ]

    def median(method: str, N: int) -> float:
        return next((row["median_s"] for row in rows if row["method"] == method and row["N"] == N), math.nan)

    pooling = [row for row in rows if row["method"] == "poolformer"]
    slope = math.nan
    if len(pooling) >= 2:
        slope = bench.fit_slope([row["N"] for row in pooling], [row["median_s"] for row in pooling])
    speedup = median("sdpa", TOKENS) / median("poolformer", TOKENS)
    return [
        at_least(CHAPTER, "PoolFormer speedup over SDPA at 12,544 tokens", speedup, 50),
        at_most(CHAPTER, "PoolFormer time slope (log time vs log N)", slope, 1.15),
    ]
