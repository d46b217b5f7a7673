"""Chapter 10 (FlashAttention in PyTorch tiles): memory and time of the tiled path on the CPU.

Read from ``cpu_attention.csv`` (non-causal rows of ``dense``, ``sdpa`` and ``flash``).
"""

from __future__ import annotations

import math
from pathlib import Path

from attnlib import bench

from . import Target, at_most

CHAPTER = "10_flash_attention"


def targets(results: Path) -> list[Target]:
    path = results / "cpu_attention.csv"
    rows = bench.read_results(path) if path.exists() else []
    rows = [r for r in rows if r["method"] in ("dense", "sdpa", "flash") and not r["causal"] and not r["error"]]

    def lookup(method: str, N: int) -> dict | None:
        return next((r for r in rows if r["method"] == method and r["N"] == N), None)

    def ratio(key: str, other: str, N: int) -> float:
        """The tiled path's time or peak memory divided by another method's, at N (NaN without data)."""
        mine, theirs = lookup("flash", N), lookup(other, N)
        return mine[key] / theirs[key] if mine and theirs else math.nan

    flash_rows = [r for r in rows if r["method"] == "flash"]
    slope = (
        bench.fit_slope([r["N"] for r in flash_rows], [r["peak_mib"] for r in flash_rows])
        if len({r["N"] for r in flash_rows}) > 1
        else math.nan
    )
    return [
        at_most(CHAPTER, "tiled path: peak memory / dense's at N=16384", ratio("peak_mib", "dense", 16384), 1 / 20),
        at_most(CHAPTER, "tiled path: peak memory / sdpa's at N=16384", ratio("peak_mib", "sdpa", 16384), 2),
        at_most(CHAPTER, "tiled path: time / dense's at N=4096", ratio("median_s", "dense", 4096), 1.5),
        at_most(CHAPTER, "tiled path: slope of peak memory against N", slope, 1.2),
    ]
