"""Chapter 07 (MLP-Mixer): the token-mixing MLP against SDPA, from benchmarks/results/cpu_vision_approx.csv.

The chapter never printed acceptance targets for the Mixer; these two hold it to the same kind of
targets as the other approximation mixers (chapter 09's thresholds, the weaker of the family's):
at least 10x faster than SDPA on a 112 x 112 map, and a time slope of at most 1.15.
"""

from __future__ import annotations

from pathlib import Path

from . import Target, vision_mixer_targets


def targets(results: Path) -> list[Target]:
    return vision_mixer_targets(results, "07_mlp_mixer", "mixer", "Mixer", 10)
