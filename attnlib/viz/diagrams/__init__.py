"""Schematics of each mechanism, drawn by code from the method's own parameters.

Each function takes the method's parameters and ``lang`` ("en" or "ja") and returns a matplotlib
Figure; a chapter shows one with ``viz.show_figure(lambda lang: diagrams.NAME(..., lang=lang))``,
so the picture is drawn in the page's language and always agrees with the code beside it.

* :mod:`.vision` - the vision chapters' partitions (Swin, MaxViT, PVT).
* :mod:`.kernels` - FlashAttention's memory hierarchy and tile loops, attention heads (MHA/GQA/MQA).
"""

from . import kernels, vision

__all__ = ["kernels", "vision"]
