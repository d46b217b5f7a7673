"""Chapter 02 (MaxViT): the grid layer against global attention, from cpu_vision_windows.csv."""

from __future__ import annotations

from pathlib import Path

from . import Target
from .ch01_swin import window_targets

CHAPTER = "02_maxvit"


def targets(results: Path) -> list[Target]:
    return window_targets(CHAPTER, "maxvit", results)
