"""Chapter 16 (linear attention, Performer, Linformer): speed and memory against SDPA at N = 16384.

Read from ``cpu_linear.csv`` (non-causal: dense, sdpa, linear, performer with m = 256, linformer with
k = 256) and ``cpu_linear_causal.csv`` (causal: dense, sdpa, linear in its chunked form, performer),
both written by ``benchmarks/run_cpu.sh`` (B=1, H=4, d=64, float32, 2 threads, N = 1K .. 16K):

* linear attention (non-causal) at least 50x faster than SDPA at N = 16384, time slope at most 1.1;
* Performer (m = 256) at least 10x faster, Linformer (k = 256) at least 20x faster;
* causal chunked linear attention at least 20x faster than causal SDPA at N = 16384;
* every method's peak memory at N = 16384 at most twice SDPA's (in the same file).
"""

from __future__ import annotations

from pathlib import Path

from . import Target, at_least, at_most, attention_rows, memory_ratio, speedup, time_slope

CHAPTER = "16_linear_attention"
N = 16384


def causal_rows(results: Path, methods: tuple[str, ...]) -> list[dict]:
    """The causal rows of ``methods`` that ran, from ``cpu_linear_causal.csv``."""
    from attnlib import bench

    path = results / "cpu_linear_causal.csv"
    if not path.exists():
        return []
    return [
        row
        for row in bench.read_results(path)
        if row["method"] in methods and row["causal"] and not row["error"] and row["status"] == "ok"
    ]


def targets(results: Path) -> list[Target]:
    plain = attention_rows(results, ("sdpa", "linear", "performer", "linformer"), file="cpu_linear.csv")
    causal = causal_rows(results, ("sdpa", "linear", "performer"))
    found = [
        at_least(CHAPTER, "linear attention speedup over sdpa at N=16384", speedup(plain, "linear", "sdpa", N), 50),
        at_most(CHAPTER, "linear attention time slope over the committed N", time_slope(plain, "linear"), 1.1),
        at_least(CHAPTER, "Performer (m=256) speedup over sdpa at N=16384", speedup(plain, "performer", "sdpa", N), 10),
        at_least(CHAPTER, "Linformer (k=256) speedup over sdpa at N=16384", speedup(plain, "linformer", "sdpa", N), 20),
        at_least(
            CHAPTER,
            "causal chunked linear attention speedup over causal sdpa at N=16384",
            speedup(causal, "linear", "sdpa", N),
            20,
        ),
    ]
    for method in ("linear", "performer", "linformer"):
        found.append(
            at_most(CHAPTER, f"{method} peak memory / sdpa's at N=16384", memory_ratio(plain, method, "sdpa", N), 2)
        )
    for method in ("linear", "performer"):
        found.append(
            at_most(
                CHAPTER, f"causal {method} peak memory / sdpa's at N=16384", memory_ratio(causal, method, "sdpa", N), 2
            )
        )
    return found
