"""Chapter 11 (FlashAttention in Triton): the kernels against PyTorch's FlashAttention-2 backend on a GPU.

Read from ``flash_gpu.csv`` (written by ``benchmarks/flash_gpu.py`` on an H100/H200): at d = 128
and N >= 4096, the forward at least 0.9x and the backward at least 0.7x the speed of
``scaled_dot_product_attention`` restricted to its FlashAttention backend, in every setting
(dtype, causal) measured. The worst setting is the value checked.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from . import Target, at_least

CHAPTER = "11_flash_triton"


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    for r in rows:
        r.update(d=int(r["d"]), N=int(r["N"]), ms=float(r["ms"]))
    return rows


def targets(results: Path) -> list[Target]:
    rows = next(
        (_read(p) for p in (results / "flash_gpu.csv", results / "flash_gpu" / "flash_gpu.csv") if p.exists()), []
    )

    def ms(setting: tuple, method: str, pass_: str) -> float:
        hit = [
            r["ms"]
            for r in rows
            if (r["dtype"], r["d"], r["causal"], r["N"], r["method"], r["pass"]) == (*setting, method, pass_)
        ]
        return hit[0] if hit else math.nan

    forward, backward = [], []
    for setting in sorted(
        {(r["dtype"], r["d"], r["causal"], r["N"]) for r in rows if r["d"] == 128 and r["N"] >= 4096}
    ):
        t_f, t_fb = ms(setting, "triton", "fwd"), ms(setting, "triton", "fwd+bwd")
        s_f, s_fb = ms(setting, "sdpa_flash", "fwd"), ms(setting, "sdpa_flash", "fwd+bwd")
        forward.append(s_f / t_f)  # > 1: the Triton kernel is faster
        backward.append((s_fb - s_f) / (t_fb - t_f))  # backward time = (fwd+bwd) - fwd
    worst_forward = min(forward, default=math.nan)
    worst_backward = min(backward, default=math.nan)
    return [
        at_least(CHAPTER, "forward speed / SDPA flash's, d=128, N>=4096 (worst)", worst_forward, 0.9, needs_gpu=True),
        at_least(CHAPTER, "backward speed / SDPA flash's, d=128, N>=4096 (worst)", worst_backward, 0.7, needs_gpu=True),
    ]
