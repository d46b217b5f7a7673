"""Chapter 07 (MLP-Mixer): the token-mixing MLP against SDPA, from benchmarks/results/cpu_vision_approx.csv.

The chapter never printed acceptance targets for the Mixer; these two hold it to the same kind of
targets as the other approximation mixers (chapter 09's thresholds, the weaker of the family's):
at least 10x faster than SDPA on a 112 x 112 map, and a time slope of at most 1.15.
"""

from __future__ import annotations

import math
from pathlib import Path

from attnlib import bench

from . import Target, at_least, at_most

CHAPTER = "07_mlp_mixer"
TOKENS = 12544  # a 112 x 112 map


def targets(results: Path) -> list[Target]:
    rows = [
        row
        for row in bench.read_results(results / "cpu_vision_approx.csv")
        if row["status"] == "ok" and row["kind"] == "vision"
    ]

    def median(method: str, N: int) -> float:
        return next((row["median_s"] for row in rows if row["method"] == method and row["N"] == N), math.nan)

    mixer = [row for row in rows if row["method"] == "mixer"]
    slope = math.nan
    if len(mixer) >= 2:
        slope = bench.fit_slope([row["N"] for row in mixer], [row["median_s"] for row in mixer])
    speedup = median("sdpa", TOKENS) / median("mixer", TOKENS)
    return [
        at_least(CHAPTER, "Mixer speedup over SDPA at 12,544 tokens", speedup, 10),
        at_most(CHAPTER, "Mixer time slope (log time vs log N)", slope, 1.15),
    ]
