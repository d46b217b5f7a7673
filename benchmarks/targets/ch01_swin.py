"""Chapter 01 (Swin): the shifted-window layer against global attention, from cpu_vision_windows.csv."""

from __future__ import annotations

import math
from pathlib import Path

from attnlib import bench

from . import Target, at_least, at_most

CHAPTER = "01_swin"
SIDE = 112  # 12,544 tokens


def window_targets(chapter: str, method: str, results: Path) -> list[Target]:
    """Speedup over SDPA and memory against dense attention at 112 x 112, time slope over sides 28..112."""
    rows = [row for row in bench.read_results(results / "cpu_vision_windows.csv") if row["status"] == "ok"]

    def value(name: str, key: str, side: int = SIDE) -> float:
        return next((row[key] for row in rows if row["method"] == name and row["side"] == side), math.nan)

    mine = [row for row in rows if row["method"] == method and 28 <= row["side"] <= SIDE]
    slope = (
        bench.fit_slope([row["N"] for row in mine], [row["median_s"] for row in mine]) if len(mine) >= 2 else math.nan
    )
    speedup = value("sdpa", "median_s") / value(method, "median_s")
    memory = value(method, "peak_mib") / value("dense", "peak_mib")
    return [
        at_least(chapter, f"{method} speedup over sdpa at 112 x 112", speedup, 20),
        at_most(chapter, f"{method} time slope, side 28..112", slope, 1.15),
        at_most(chapter, f"{method} peak memory / dense's at 112 x 112", memory, 1 / 20),
    ]


def targets(results: Path) -> list[Target]:
    return window_targets(CHAPTER, "swin", results)
