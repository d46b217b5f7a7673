"""Chapter 04 (DAT): deformable attention against global attention, from cpu_vision_pvt_dat.csv."""

from __future__ import annotations

import math
from pathlib import Path

from attnlib import bench

from . import Target, at_least

CHAPTER = "04_dat"
SIDE = 112  # a 112 x 112 map: 12,544 tokens


def targets(results: Path) -> list[Target]:
    rows = [
        row
        for row in bench.read_results(results / "cpu_vision_pvt_dat.csv")
        if row["H"] == 2 and row["C"] == 64 and not row["error"]
    ]

    def value(method: str, key: str) -> float:
        return next((row[key] for row in rows if row["method"] == method and row["side"] == SIDE), math.nan)

    return [
        at_least(
            CHAPTER, "DAT speedup over SDPA at 12,544 tokens", value("sdpa", "median_s") / value("dat", "median_s"), 10
        ),
        at_least(
            CHAPTER,
            "dense's peak memory / DAT's at 12,544 tokens",
            value("dense", "peak_mib") / value("dat", "peak_mib"),
            20,
        ),
    ]
