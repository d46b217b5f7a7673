"""Chapter 17 (state-space models): the chunked SSD algorithm and decoding, from ``cpu_ssm.csv``.

The CSV is written by ``benchmarks/ssm_cpu.py`` (B = 1, H = 4, d = 64, state 64, float32, 2 threads,
N from 1K to 32K), not by ``attnlib.bench.run``, so it is read with ``csv``.

* The chunked form's time slope (log time against log N over every measured N) is at most 1.1.
* At N = 16K the chunked form is at least 10x faster than causal SDPA (same run).
* Decoding memory: the SSM state has the same size at every N, while the KV cache grows
  linearly (its bytes against N have slope 1; both are byte counts, so exact).
* Decoding cost per token is flat in N: the SSM step's time slope in N is at most 0.1 in absolute value.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from . import Target, at_least, at_most

CHAPTER = "17_state_space"
FILE = "cpu_ssm.csv"


def _rows(results: Path) -> list[dict]:
    path = results / FILE
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(line for line in handle if not line.startswith("#"))]
    rows = [row for row in rows if row["status"] == "ok"]
    for row in rows:
        row["N"] = int(row["N"])
        for key in ("median_s", "per_token_s", "state_bytes"):
            row[key] = float(row[key]) if row[key] else math.nan
    return rows


def _series(rows: list[dict], kind: str, method: str, key: str) -> tuple[list[int], list[float]]:
    mine = sorted((row["N"], row[key]) for row in rows if row["kind"] == kind and row["method"] == method)
    return [N for N, _ in mine], [value for _, value in mine]


def _slope(sizes: list[int], values: list[float]) -> float:
    from attnlib import bench  # imported on use: the package imports nothing heavy

    return bench.fit_slope(sizes, values) if len(set(sizes)) >= 2 else math.nan


def targets(results: Path) -> list[Target]:
    rows = _rows(results)
    sizes, times = _series(rows, "forward", "chunked", "median_s")
    chunked_slope = _slope(sizes, times)
    at_16k = {row["method"]: row["median_s"] for row in rows if row["kind"] == "forward" and row["N"] == 16384}
    speedup = at_16k["sdpa"] / at_16k["chunked"] if {"sdpa", "chunked"} <= at_16k.keys() else math.nan

    state_sizes, state = _series(rows, "decode", "ssm_step", "state_bytes")
    state_ratio = max(state) / min(state) if state else math.nan
    cache_sizes, cache = _series(rows, "decode", "kv_cache", "state_bytes")
    cache_slope = _slope(cache_sizes, cache)
    step_sizes, step = _series(rows, "decode", "ssm_step", "per_token_s")
    step_slope = abs(_slope(step_sizes, step))
    return [
        at_most(CHAPTER, "chunked SSD time slope (log time vs log N)", chunked_slope, 1.1),
        at_least(CHAPTER, "chunked SSD speedup over causal SDPA at N = 16K", speedup, 10),
        Target(
            CHAPTER,
            "SSM decoding state: largest / smallest bytes over N == 1",
            state_ratio,
            state_ratio == 1.0 and len(set(state_sizes)) >= 2,
        ),
        Target(
            CHAPTER,
            "KV cache bytes grow linearly: slope in N == 1",
            cache_slope,
            abs(cache_slope - 1) < 1e-9,
        ),
        at_most(CHAPTER, "SSM decoding cost per token: |slope in N|", step_slope, 0.1),
    ]
