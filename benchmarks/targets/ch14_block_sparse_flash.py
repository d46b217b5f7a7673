"""Chapter 14 (block-sparse FlashAttention): the PyTorch path on the CPU, the Triton kernels on a GPU.

CPU (``cpu_block_sparse.csv``, written by ``benchmarks/block_sparse_cpu.py``):

1. time proportional to the visited tiles: fitted slope of time against visited tiles in 0.8 .. 1.2;
2. within 1.5x of BigBird's own gather algorithm at the largest N;
3. at least as fast as compiled FlexAttention on the same mask at the largest N of the flex
   experiment (the median of the fresh processes' ratios).

GPU (``gpu_block_sparse.csv``, written by ``benchmarks/block_sparse_gpu.py``): at N >= 4096 and
d = 128, the Triton kernels at least 0.9x FlexAttention's forward speed and 0.8x its backward
speed, in every pattern measured (the worst is the value checked).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from attnlib import bench

from . import Target, at_least, at_most

CHAPTER = "14_block_sparse_flash"


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as handle:
        return [r for r in csv.DictReader(line for line in handle if not line.startswith("#"))
                if r.get("median_s", "x") not in ("", "nan")]  # fmt: skip


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2] if values else math.nan


def targets(results: Path) -> list[Target]:
    rows = _rows(results / "cpu_block_sparse.csv")

    def seconds(experiment: str, method: str, N: int) -> float:
        found = [
            float(r["median_s"]) for r in rows if (r["experiment"], r["method"], int(r["N"])) == (experiment, method, N)
        ]
        return _median(found)

    tile_rows = [r for r in rows if r["experiment"] == "tiles"]
    slope = (
        bench.fit_slope([int(r["visited_tiles"]) for r in tile_rows], [float(r["median_s"]) for r in tile_rows])
        if len(tile_rows) > 1
        else math.nan
    )
    sizes = sorted({int(r["N"]) for r in rows if r["experiment"] == "size"})
    gather = seconds("size", "bigbird_flash", sizes[-1]) / seconds("size", "bigbird", sizes[-1]) if sizes else math.nan
    flex_sizes = sorted({int(r["N"]) for r in rows if r["experiment"] == "flex" and r["method"] == "flex_compiled"})
    flex = math.nan
    if flex_sizes:
        rounds: dict = {}
        for r in rows:
            if r["experiment"] == "flex" and int(r["N"]) == flex_sizes[-1]:
                rounds.setdefault(r["round"], {})[r["method"]] = float(r["median_s"])
        flex = _median([p["flex_compiled"] / p["bigbird_flash"] for p in rounds.values() if len(p) == 2])
    found = [
        Target(CHAPTER, "CPU: slope of time against visited tiles in 0.8 .. 1.2", slope, 0.8 <= slope <= 1.2),
        at_most(CHAPTER, "CPU: time / BigBird gather's at the largest N", gather, 1.5),
        at_least(CHAPTER, "CPU: compiled FlexAttention's time / ours (median process)", flex, 1.0),
    ]

    gpu_path = results / "gpu_block_sparse.csv"
    speeds: dict[str, list[float]] = {"forward": [], "backward": []}
    if gpu_path.exists():
        with gpu_path.open() as handle:
            gpu = list(csv.DictReader(handle))
        for row in gpu:
            if row["method"] == "triton" and int(row["N"]) >= 4096 and int(row["d"]) == 128:
                flex_row = next(
                    r
                    for r in gpu
                    if r["method"] == "flex_compiled" and (r["pattern"], r["N"]) == (row["pattern"], row["N"])
                )
                for p in speeds:
                    speeds[p].append(float(flex_row[f"{p}_ms"]) / float(row[f"{p}_ms"]))  # > 1: Triton faster
    found += [
        at_least(
            CHAPTER,
            "GPU: forward speed / FlexAttention's, N>=4096 (worst)",
            min(speeds["forward"], default=math.nan),
            0.9,
            needs_gpu=True,
        ),
        at_least(
            CHAPTER,
            "GPU: backward speed / FlexAttention's, N>=4096 (worst)",
            min(speeds["backward"], default=math.nan),
            0.8,
            needs_gpu=True,
        ),
    ]
    return found
