"""Chapter 08 (PoolFormer): the pooling mixer against SDPA, from benchmarks/results/cpu_vision_approx.csv."""

from __future__ import annotations

from pathlib import Path

from . import Target, vision_mixer_targets


def targets(results: Path) -> list[Target]:
    return vision_mixer_targets(results, "08_poolformer", "poolformer", "PoolFormer", 50)
