"""Chapter 03 (PVT): stage-1 spatial reduction (R = 8) against global attention, from cpu_vision_pvt_dat.csv."""

from __future__ import annotations

import math
from pathlib import Path

from attnlib import bench

from . import Target, at_least

CHAPTER = "03_pvt"
SIDE = 112  # 12,544 tokens


def targets(results: Path) -> list[Target]:
    rows = [
        row
        for row in bench.read_results(results / "cpu_vision_pvt_dat.csv")
        if row["status"] == "ok" and row["H"] == 1 and row["C"] == 64
    ]

    def value(method: str, key: str) -> float:
        return next((row[key] for row in rows if row["method"] == method and row["side"] == SIDE), math.nan)

    speedup = value("sdpa", "median_s") / value("pvt", "median_s")
    memory = value("dense", "peak_mib") / value("pvt", "peak_mib")
    return [
        at_least(CHAPTER, "PVT speedup over sdpa at 12,544 tokens", speedup, 20),
        at_least(CHAPTER, "dense's peak memory / PVT's at 12,544 tokens", memory, 20),
    ]
