"""Chapter 12 (Falcon): the KV cache and decoding speed, from ``cpu_falcon_decode.csv``.

The CSV is written by ``benchmarks/falcon_decode.py`` (one row per head setting and prompt
length P), not by ``attnlib.bench.run``, so it is read with ``csv`` rather than
``attnlib.bench.read_results`` (which expects the columns of a ``bench.run`` file).

* The multi-query cache is exactly H times smaller than the multi-head cache at every P (the
  cache sizes are byte counts, so this is exact, not a measurement).
* Decoding with the cache is at least 5x faster than recomputing the prefix at P = 512, and at
  least 20x at P = 2048, for every head setting (ratios of times measured in the same process).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from . import Target, at_least

CHAPTER = "12_falcon"
FILE = "cpu_falcon_decode.csv"
SETTINGS = ("mha", "gqa", "mqa")


def _rows(results: Path) -> list[dict]:
    path = results / FILE
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(line for line in handle if not line.startswith("#"))]
    rows = [row for row in rows if not row.get("error")]
    for row in rows:
        for key in ("H", "H_kv", "prompt_len", "cache_bytes"):
            row[key] = int(row[key])
        row["speedup"] = float(row["speedup"])
    return rows


def _smallest_speedup(rows: list[dict], prompt_len: int) -> float:
    """The smallest cached-vs-recompute speed-up over the head settings at this P (NaN: no data)."""
    found = [r["speedup"] for r in rows if r["prompt_len"] == prompt_len and r["setting"] in SETTINGS]
    return min(found) if found else math.nan


def targets(results: Path) -> list[Target]:
    rows = _rows(results)
    cache = {(r["setting"], r["prompt_len"]): r["cache_bytes"] for r in rows}
    lengths = sorted({P for setting, P in cache if setting == "mha" and ("mqa", P) in cache})
    ratios = [cache["mha", P] / cache["mqa", P] for P in lengths]
    heads = rows[0]["H"] if rows else 0
    cache_ratio = min(ratios) if ratios else math.nan
    return [
        Target(
            CHAPTER,
            "MQA cache exactly H times smaller than MHA's, at every P" + (f" (H = {heads})" if rows else ""),
            cache_ratio,
            bool(ratios) and all(ratio == heads for ratio in ratios),
        ),
        at_least(CHAPTER, "cached decoding at P = 512, x faster than recompute (all)", _smallest_speedup(rows, 512), 5),
        at_least(
            CHAPTER, "cached decoding at P = 2048, x faster than recompute (all)", _smallest_speedup(rows, 2048), 20
        ),
    ]
