"""Chapter 06 (Reformer): LSH attention (4 rounds) against dense attention, from ``cpu_attention.csv``.

The thresholds are the ones the chapter used to print as verdicts (non-causal rows, B=1, H=4,
d=64, float32, 2 threads; the benchmark's Reformer: 4 rounds, chunks of 64, 2N/m buckets):

* Reformer at least 2.5x faster than dense attention at N = 4096, and 8x at N = 16384;
* peak memory at most a quarter of dense attention's at N = 4096;
* time slope (log-log fit over every committed N) at most 1.2.
"""

from __future__ import annotations

from pathlib import Path

from . import Target, at_least, at_most, attention_rows, memory_ratio, speedup, time_slope

CHAPTER = "06_reformer"
METHOD = "reformer"


def targets(results: Path) -> list[Target]:
    rows = attention_rows(results, ("dense", METHOD))
    return [
        at_least(CHAPTER, "Reformer speedup over dense at N=4096", speedup(rows, METHOD, "dense", 4096), 2.5),
        at_least(CHAPTER, "Reformer speedup over dense at N=16384", speedup(rows, METHOD, "dense", 16384), 8),
        at_most(CHAPTER, "Reformer peak memory / dense's at N=4096", memory_ratio(rows, METHOD, "dense", 4096), 0.25),
        at_most(CHAPTER, "Reformer time slope over the committed N", time_slope(rows, METHOD), 1.2),
    ]
