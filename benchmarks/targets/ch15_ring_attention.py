"""Chapter 15 (ring attention): peak memory per process against 1/P of one process's, on the CPU.

Read from ``cpu_ring.csv`` (written by ``benchmarks/ring_cpu.py``): at the largest N measured for
every run, each rank's peak memory for P > 1 processes, relative to P = 1's, must be within 20% of
the ideal 1/P. The target is checked on the memory-lean schedule (``prefetch=False``), the one the
library offers for this purpose: the default schedule prefetches the next key/value shard during the
backward and so holds one shard more by design (at P = 4 that is 21% above 1/P at N = 32K); the
chapter shows and asserts that difference instead.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from . import Target, at_most

CHAPTER = "15_ring_attention"


def targets(results: Path) -> list[Target]:
    path = results / "cpu_ring.csv"
    rows = []
    if path.exists():
        with path.open() as handle:
            rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    runs = sorted({(int(r["P"]), r["prefetch"] == "True") for r in rows})

    def peak(P: int, prefetch: bool, N: int) -> float:
        hit = [float(r["peak_mib_max"]) for r in rows
               if (int(r["P"]), r["prefetch"] == "True", int(r["N"])) == (P, prefetch, N)]  # fmt: skip
        return hit[0] if hit else math.nan

    sizes = sorted({int(r["N"]) for r in rows})
    common = [N for N in sizes if all(not math.isnan(peak(P, f, N)) for P, f in runs)]
    largest = max(common, default=None)
    found = []
    for P, prefetch in runs:
        if P == 1 or prefetch:
            continue
        off = abs(peak(P, prefetch, largest) / peak(1, True, largest) * P - 1) if largest else math.nan
        schedule = "prefetch" if prefetch else "no prefetch"
        found.append(at_most(CHAPTER, f"P={P} {schedule}: |peak / P=1's x P - 1| at N={largest}", off, 0.2))
    if not found:
        found.append(Target(CHAPTER, "peak memory per process within 20% of 1/P", math.nan, False))
    return found
