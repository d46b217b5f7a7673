"""Schematics of each mechanism, drawn by code from the method's own parameters.

Each function takes the method's parameters and ``lang`` ("en" or "ja") and returns a matplotlib
Figure; a chapter shows one with ``viz.show_figure(lambda lang: diagrams.NAME(..., lang=lang))``,
so the picture is drawn in the page's language and always agrees with the code beside it.

* :mod:`.overview` - the introduction's N x N matrix and what each family does to it.
* :mod:`.vision` - the vision chapters' partitions (Swin, MaxViT, PVT) and DAT's shared sampling points.
* :mod:`.language` - BigBird's blocks, Reformer's hash, sort and chunk.
* :mod:`.mixers` - the MetaFormer block's token-mixer slot and its four mixers; CoaT's product order.
* :mod:`.linear` - linear attention's reordered product, drawn with the shapes of the library's products.
* :mod:`.kernels` - FlashAttention's memory hierarchy and tile loops, one Triton program's tiles, the
  online softmax step by step, attention heads (MHA/GQA/MQA), the parallel block, the KV cache.
* :mod:`.blocks` - a block mask's empty, full and partial tiles; the ring's steps, layouts and slider.
* :mod:`.ssm` - the state-space chapter's decay mask beside a causal mask, and the chunked algorithm's steps.
"""

from . import blocks, kernels, language, linear, mixers, overview, ssm, vision

__all__ = ["blocks", "kernels", "language", "linear", "mixers", "overview", "ssm", "vision"]
