"""Chapter 05 (BigBird): BigBird against dense attention and SDPA, from ``cpu_attention.csv``.

The thresholds are the ones the chapter used to print as verdicts (non-causal rows, B=1, H=4,
d=64, float32, 2 threads):

* BigBird at least 5x faster than dense attention at N = 4096, and 17x at N = 16384;
* faster than PyTorch's fused ``scaled_dot_product_attention`` at every N >= 4096;
* peak memory at most a quarter of dense attention's at N = 4096;
* time slope (log-log fit over every committed N) at most 1.2.
"""

from __future__ import annotations

import math
from pathlib import Path

from . import Target, at_least, at_most, attention_rows, lookup, memory_ratio, speedup, time_slope

CHAPTER = "05_bigbird"
METHOD = "bigbird"


def targets(results: Path) -> list[Target]:
    rows = attention_rows(results, ("dense", "sdpa", METHOD))
    large = sorted({row["N"] for row in rows if row["N"] >= 4096 and row["method"] == METHOD})
    large = [N for N in large if lookup(rows, "sdpa", N)]
    sdpa_speedups = [speedup(rows, METHOD, "sdpa", N) for N in large]
    smallest_sdpa = min(sdpa_speedups) if sdpa_speedups else math.nan
    return [
        at_least(CHAPTER, "BigBird speedup over dense at N=4096", speedup(rows, METHOD, "dense", 4096), 5),
        at_least(CHAPTER, "BigBird speedup over dense at N=16384", speedup(rows, METHOD, "dense", 16384), 17),
        Target(
            CHAPTER,
            "BigBird speedup over sdpa > 1 at every N >= 4096 (smallest)",
            smallest_sdpa,
            bool(sdpa_speedups) and all(value > 1 for value in sdpa_speedups),
        ),
        at_most(CHAPTER, "BigBird peak memory / dense's at N=4096", memory_ratio(rows, METHOD, "dense", 4096), 0.25),
        at_most(CHAPTER, "BigBird time slope over the committed N", time_slope(rows, METHOD), 1.2),
    ]
