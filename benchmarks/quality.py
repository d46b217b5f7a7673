"""What each method costs in accuracy: a small arena of generated tasks, every registered method, several seeds.

Tasks (generated in code by :mod:`attnlib.tasks`, nothing to download):

* language: multi-query associative recall (Zoology), ListOps (LRA's rules), selective copying (Mamba);
* vision: two far-apart shapes that are the same or not; a Pathfinder-like connectivity map (LRA),
  outside the default run (see the calibration).

Methods: every method of :data:`attnlib.registry.METHODS` of the task's kind, found there at run
time, so that a method added to the registry joins without a change here:

* language: every method with an ``attention`` kernel, run inside the same small Transformer
  (:class:`LanguageModel`: token and position embeddings; ``LAYERS`` pre-norm blocks, each a short
  depthwise causal convolution, multi-head self-attention with the method's kernel and an MLP;
  a readout per position, or of the mean over positions). The kernel gets the registry's
  ``bench_kwargs``, with the overrides of :data:`SHORT_SEQUENCE_KWARGS` where the registry's
  setting is sized for long sequences (BigBird's 64-token blocks need N >= 449). Attention sees
  the whole sequence, except in a method marked ``causal_only`` in the registry (SSD, a scan
  forward in time), which runs causal: each position sees only itself and the positions before it.
* vision: every method with a ``make_mixer``, as the token mixer of the same small isotropic
  model (:class:`VisionModel`: an overlapping patch embedding, one token per 2 x 2 pixels,
  ``LAYERS`` pre-norm blocks of mixer and MLP, the mean over the tokens, a linear head). The
  width is chosen per method so that every model has the dense model's parameter count within
  :data:`PARAM_TOLERANCE` (10 %): a mixer without parameters (PoolFormer) gets wider channels.
  The registry's mixer is used as it is, except in :data:`ARENA_MIXERS`: PVT's key reduction
  and DAT's reference grid, set as their papers set them on a map of this size, and Swin and
  MaxViT, whose blocks alternate two kinds of attention (regular and shifted windows; block and
  grid attention).

The short convolution lets a token see its left neighbour (as the short convolutions of H3 and
Based do), so that MQAR's key and value are bound in every method alike; reaching
the right pair across the sequence is left to the mixer.

Budget: the same steps, batch and learning-rate schedule (AdamW, linear warm-up over the first
10 % of the steps, then cosine decay to 0) for every method of a task; ``--seeds`` seeds (model
initialization and training data; the test set of a (task, size) is the same for every method
and seed). Accuracy is measured on ``--test-examples`` fresh examples: per scored token for MQAR
and selective copying (the answers), per example for ListOps and the vision tasks.

The run: one row per (task, size, method, seed), written to the CSV as soon as it finishes; a run
started again with the same command skips the rows already there (``--restart`` starts afresh).
The file's first line names the date, the machine and the versions. ::

    python benchmarks/quality.py --out benchmarks/results/cpu_arena.csv
    python benchmarks/quality.py --out /tmp/arena.csv --tiny          # seconds: a smoke test
    python benchmarks/quality.py --out gpu_arena.csv --device cuda

CALIBRATION. The budget asks dense attention to reach 0.9 at the smallest size, and the whole
default run to fit 90 minutes on 2 CPU cores. Measured with dense attention, seed 0, batch 32,
256 test examples (December 2026, on a shared 2-core machine):

* MQAR, N = 64, 4 pairs: 1.00 after 400 steps with seed 0, but 0.73 with seed 1 (1.00 after 600:
  the default);
* selective copying, N = 64: 8 tokens, 0.47 after 400 steps and 0.63 after 1000; 4 tokens (the
  default at N = 64), 0.88 after 1000 and 0.94 after 1400;
* ListOps, N = 64, depth 3, up to 5 arguments, LRA's four operators: 0.47 after 400 steps, 0.55
  after 1000, 0.60 after 4000 (up to 3 arguments: 0.55; 4 layers: 0.55; without nesting, depth 2:
  0.76; the root token as the readout: 0.57). By operator: MIN and MAX only, 0.93 after 1000
  steps (the default); MIN, MAX and MED, 0.75; SM alone without nesting, 0.15: the sum modulo 10
  is what this budget does not learn;
* vision, 28 x 28, first model (a 2 x 2 patch embedding, the maximum over the tokens as the
  readout): same shape 0.91 after 600 steps (256 test examples; with 512, seeds 0, 1 and 2 gave
  0.89, 0.85 and 0.86; 1500 steps in the first run); but PoolFormer reached 1.00 with a reach
  smaller than the gap between the shapes: the maximum compares by itself (see
  :class:`VisionModel`). That run also gave PVT and DAT their first-stage settings, one key cell
  and four sampled keys on this map (:data:`ARENA_MIXERS` now). With the mean over the
  tokens and a linear head instead: dense attention 0.81 after 1000 steps, 0.88 after 2000 (0.76
  after 1500 at lr 5e-3; 0.79 after 1000 with batch 64; 3 shapes instead of 6, 0.90 after 1500),
  and PoolFormer 0.46 after 1000. With the overlapping patch embedding (``STEM``, the model now):
  dense attention 0.96 (seed 0) and 0.97 (seed 1) after 1000 steps (the default), PoolFormer
  0.47 after 1000.

  Pathfinder-like, first model: 0.50 (chance) after 1000 steps with the mean readout of a 2 x 2
  patch embedding; with the maximum, 0.75 after 600 and 0.76 after 1200 (paths of 14 cells: 0.66;
  of 20 cells turning half as often: 0.76; straight paths of 14 cells: 0.74; 4 layers: 0.76; after
  600). Those maps had a shortcut: their dashes started at a path's first cell, so its two ends
  looked different, and a model that says "not connected" whenever both dots sit on ends of the
  same kind is right on 0.75 of the maps without following any path. With the dashes laid from
  both ends (the generator now), with the maximum: 0.69 after 600 steps, 0.76 after 2000; on 16 x
  16 maps with paths of 10 cells, 0.67 after 1500. The model now (the stem, the mean): 0.49 after
  1000, its loss still log 2; with 4 layers, 0.49 after 2000 (loss log 2); the stem with the
  maximum readout, 0.54 after 2000. Two more constructions, each against a shortcut, built by
  ``benchmarks/pathfinder_variants.py`` (the model now, 1000 steps, seed 0). With the distance
  between the dots matched in the two classes (``matched``), paths of 14 cells gave 0.51 (the mean
  readout) and 0.57 (the maximum), paths of 8 cells 0.51 and 0.78 (the maximum with 4 layers:
  0.60). With the dots always on the two ends of one path and one of two paths cut by a gap of 3
  cells (``cut``: the dots' positions tell nothing), paths of 12 cells: dense attention 0.98, but
  PoolFormer 0.93, and the script's rule on where the gap lies relative to the dots is right on
  0.99 of the maps; paths of 16 cells (that rule: 0.94), dense attention 0.52, its loss log 2
  (after 3000 steps: 0.49; with 4 layers: 0.50, both still at log 2). With both places a gap can
  take 3 px apart (``twin``), the rule falls to 0.90 with paths of 12 cells (dense attention 0.97,
  PoolFormer 0.94) and 0.78 with 16 (dense attention 0.61). A threshold on the distance between
  the two dots alone is right on 0.64 of the default maps (0.89 with paths of 8 cells, which is
  why short paths do not make a fair task). No variant gave dense attention 0.9 where neither a
  shortcut nor local mixing does nearly as well: Pathfinder is left out of the default run
  (``--tasks pathfinder`` runs it), as a task that this model and budget cannot calibrate; LRA's
  Transformer reaches 71.4 % on its Pathfinder (Table 1).

One training step of every registered method together (one thread, CPU time) cost about
0.6 s on a language task at N = 64 (2.4 s at N = 256) and 0.9 s on a vision task at 28 x 28.
The default run takes about 75 minutes with 2 workers on 2 cores (December 2026: the three
language tasks took about 40; the vision task, trained again with the model now, about 32);
each row's ``train_s`` says what its training took.

A vision method whose model cannot meet the parameter rule at any width (a mixer whose own
parameters are sized by the map and exceed the whole dense model) is recorded as ``skipped``,
with the closest count in ``error``.

Exit status: 0 when every row is ``ok`` or ``skipped``, 1 when a row failed (its ``error`` says why), 2 for bad
arguments, 130 when interrupted (the finished rows stay in the file).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import attnlib  # noqa: E402
from attnlib import bench, compare, registry, tasks  # noqa: E402
from attnlib.sparse.dat import DeformableAttention  # noqa: E402
from attnlib.sparse.maxvit import MaxViTPartitionAttention2d, maxvit_mixer  # noqa: E402
from attnlib.sparse.pvt import SpatialReductionAttention  # noqa: E402
from attnlib.sparse.swin import SwinWindowAttention2d, swin_mixer  # noqa: E402
from attnlib.tasks import IGNORE  # noqa: E402
from attnlib.tasks.listops import VOCAB_SIZE as LISTOPS_VOCAB  # noqa: E402

LAYERS = 2
DIM, HEADS = 64, 2  # the dense model's width and heads (language: every method's)
MLP_RATIO = 2
PATCH = 2  # vision: one token per 2 x 2 pixels
STEM = 6  # vision: each token embeds the 6 x 6 pixels around its patch (an overlapping patch embedding)
PARAM_TOLERANCE = 0.10
WARMUP_FRACTION = 0.1
TEST_SEED = 2**20  # the test set's generator seed (train data: the run's seed)

# Settings of the registry's bench_kwargs that are sized for long sequences, scaled to these lengths
# (a value may be a function of N): BigBird's 64-token blocks need N >= 449, Linformer's k = 256 needs N >= 256.
SHORT_SEQUENCE_KWARGS = {
    "bigbird": {"block_size": 8, "num_random_blocks": 2},  # 7 blocks: N >= 56
    "bigbird_flash": {"block_size": 8, "num_random_blocks": 2},
    "reformer": {"chunk_size": 32},
    "linformer": {"proj_len": lambda N: min(256, N // 4)},
}


def _pvt_on_a_small_map(dim: int, heads: int, height: int, width: int) -> SpatialReductionAttention:
    # PVT-Small reduces its keys to a 7 x 7 map in every stage (R = 8, 4, 2, 1 on maps of 56, 28, 14
    # and 7 tokens a side). The registry's R = 8 is its first stage's: on the arena's 14 x 14 tokens it
    # would leave one key cell, the top-left 8 x 8 tokens, and never show the other rows and columns.
    return SpatialReductionAttention(dim, heads, sr_ratio=max(1, min(height, width) // 7))


def _dat_on_a_small_map(dim: int, heads: int, height: int, width: int) -> DeformableAttention:
    # DAT++-Tiny (configs/dat_tiny.yaml of the official code) samples a 7 x 7 reference grid in every
    # stage too: strides 8, 4, 2, 1 with offset kernels 9, 7, 5, 3 on maps of 56 .. 7 tokens a side. The
    # registry's stride 8 and kernel 9 are its first stage's: on 14 x 14 tokens they would sample 4 keys.
    stride = max(1, min(height, width) // 7)
    kernel = {8: 9, 4: 7, 2: 5, 1: 3}.get(stride, 2 * stride + 1)
    return DeformableAttention(dim, heads, height, width, n_groups=1, stride=stride, offset_kernel_size=kernel)


def _swin_regular_windows(dim: int, heads: int, height: int, width: int) -> SwinWindowAttention2d:
    return SwinWindowAttention2d(dim, heads, window_size=7, shift_size=0, input_resolution=(height, width))


def _maxvit_block_attention(dim: int, heads: int, height: int, width: int) -> MaxViTPartitionAttention2d:
    return MaxViTPartitionAttention2d(dim, heads, partition_type="block", partition_size=7)


# The vision mixers the arena does not take from the registry as they are: method -> the mixer
# factory of each layer, repeated over the LAYERS blocks. The registry's setting is one benchmark
# layer, sized for a larger map; here each is set as its paper sets it on the arena's 14 x 14 tokens:
# * PVT's key reduction and DAT's reference grid, for a map of this size (one factory, every layer);
# * Swin alternates regular windows (W-MSA) and shifted ones (SW-MSA, the registry's) in consecutive
#   blocks (Liu et al. 2021, Eq. (3)): shifted windows alone keep every token inside one window;
# * MaxViT's block runs block attention (local windows), then grid attention (the registry's)
#   (Tu et al. 2022, Sec. 3.2).
ARENA_MIXERS = {
    "pvt": [_pvt_on_a_small_map],
    "dat": [_dat_on_a_small_map],
    "swin": [_swin_regular_windows, swin_mixer],
    "maxvit": [_maxvit_block_attention, maxvit_mixer],
}


def mixer_factories(method: registry.Method) -> list[Callable]:
    """The method's token-mixer factory for each of the ``LAYERS`` vision blocks."""
    per_layer = ARENA_MIXERS.get(method.name) or [method.mixer_factory()]
    return [per_layer[layer % len(per_layer)] for layer in range(LAYERS)]


class ParameterBudgetError(ValueError):
    """No width gives a method's model the dense model's parameter count within PARAM_TOLERANCE."""


# --------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class TaskSetting:
    """How the arena draws one task: its generator at a size, its classes, its sizes, its budget."""

    name: str
    kind: str  # "language" or "vision"
    make: Callable  # (batch, size, generator) -> (inputs, labels)
    classes: int
    vocab: int = 0  # language: token ids 0 .. vocab - 1
    per_token: bool = False  # labels per position (IGNORE where unscored) instead of one per example
    sizes: tuple[int, ...] = ()  # language: N tokens; vision: side in pixels
    steps: int = 1000
    lr: float = 3e-3
    note: str = ""
    in_default_run: bool = True  # False: dense attention does not reach 0.9 in the budget (the calibration)
    readout: str = "mean"  # vision: "mean" over the tokens, or "max" (the first model's; see VisionModel)


MQAR_VOCAB = 64
COPY_VOCAB = 16


def _mqar(batch, N, generator):
    # 1 pair per 16 tokens: Zoology's smallest setting (N = 64, 4 pairs) and its ratio; a small vocabulary
    # (Zoology: 8192) for a CPU budget, so the filler is 0 instead of random tokens, which would repeat keys
    kv = max(2, N // 16)
    return tasks.mqar(batch, N, num_kv_pairs=kv, vocab_size=MQAR_VOCAB, random_non_queries=False, generator=generator)


def _listops(batch, N, generator):
    return tasks.listops(
        batch,
        N,
        max_depth=LISTOPS_DEPTH,
        max_args=LISTOPS_ARGS,
        min_length=N // 8,
        operators=LISTOPS_OPERATORS,
        generator=generator,
    )


# Nested MIN and MAX only: with LRA's SM (sum modulo 10) and MED, dense attention stays far below
# 0.9 in this budget (the calibration), so the task would measure arithmetic, not the nesting
LISTOPS_DEPTH, LISTOPS_ARGS, LISTOPS_OPERATORS = 3, 5, ("[MIN", "[MAX")


def _copying(batch, N, generator):
    # Mamba's 16 tokens from N = 256 on; fewer below (4 at N = 64), in the same proportion
    return tasks.selective_copying(batch, N, num_tokens=min(16, N // 16), vocab_size=COPY_VOCAB, generator=generator)


def _same_shape(batch, side, generator):
    return tasks.same_shape(batch, side, grid=PATCH, generator=generator)  # shapes cut into patches alike


# Sizes and steps of the default run: one size per task, the steps from the calibration (module
# docstring); --sizes adds longer sequences and larger maps (each size multiplies the run).
TASK_SETTINGS = {
    "mqar": TaskSetting("mqar", "language", _mqar, MQAR_VOCAB, MQAR_VOCAB, True, (64,), steps=600),
    "listops": TaskSetting("listops", "language", _listops, 10, LISTOPS_VOCAB, False, (64,), steps=1000),
    "selective_copying": TaskSetting(
        "selective_copying", "language", _copying, COPY_VOCAB, COPY_VOCAB + 1, True, (64,), steps=1400
    ),
    "pathfinder": TaskSetting(
        "pathfinder",
        "vision",
        lambda b, s, g: tasks.pathfinder(b, s, generator=g),
        2,
        sizes=(28,),
        steps=600,
        in_default_run=False,
    ),
    "same_shape": TaskSetting("same_shape", "vision", _same_shape, 2, sizes=(28,), steps=1000),
}
# The tasks of the default run: those on which dense attention reaches 0.9 in the budget
DEFAULT_TASKS = [name for name, setting in TASK_SETTINGS.items() if setting.in_default_run]
TINY = {"sizes": {"language": (64,), "vision": (28,)}, "steps": 3, "seeds": 1, "batch": 4, "test_examples": 8}


# --------------------------------------------------------------------------- models
class MLP(nn.Sequential):
    def __init__(self, dim: int):
        super().__init__(nn.Linear(dim, MLP_RATIO * dim), nn.GELU(), nn.Linear(MLP_RATIO * dim, dim))


class ShortConv(nn.Module):
    """Depthwise causal convolution over the sequence, kernel 3: ``(B, N, C) -> (B, N, C)``."""

    def __init__(self, dim: int, kernel: int = 3):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(dim, dim, kernel, groups=dim)

    def forward(self, x):
        x = F.pad(x.transpose(1, 2), (self.kernel - 1, 0))  # (B, C, N + k - 1): causal padding
        return self.conv(x).transpose(1, 2)


class LanguageBlock(nn.Module):
    def __init__(self, dim: int, heads: int, kernel: Callable, causal: bool = False):
        super().__init__()
        from attnlib.reference import MultiHeadSelfAttention

        self.norm0, self.conv = nn.LayerNorm(dim), ShortConv(dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, causal=causal, attention_fn=kernel)
        self.norm2, self.mlp = nn.LayerNorm(dim), MLP(dim)

    def forward(self, x):
        x = x + self.conv(self.norm0(x))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LanguageModel(nn.Module):
    """Token ids ``(B, N)`` -> logits ``(B, N, classes)`` (``per_token``) or ``(B, classes)`` (mean over positions)."""

    def __init__(
        self, vocab: int, N: int, classes: int, per_token: bool, kernel: Callable, dim=DIM, heads=HEADS, causal=False
    ):
        super().__init__()
        self.per_token = per_token
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(torch.randn(N, dim) * 0.02)
        self.blocks = nn.ModuleList(LanguageBlock(dim, heads, kernel, causal) for _ in range(LAYERS))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, ids):
        x = self.embed(ids) + self.position  # (B, N, C)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x if self.per_token else x.mean(dim=1))


class VisionBlock(nn.Module):
    def __init__(self, dim: int, mixer: nn.Module):
        super().__init__()
        self.norm1, self.mixer = nn.LayerNorm(dim), mixer
        self.norm2, self.mlp = nn.LayerNorm(dim), MLP(dim)

    def forward(self, x):  # (B, h, w, C)
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionModel(nn.Module):
    """Images ``(B, 1, side, side)`` -> logits ``(B, classes)``: a stem, ``LAYERS`` mixer blocks, mean, linear head.

    The stem is an overlapping patch embedding (as PVT v2's, Wang et al. 2022, though not its
    7 x 7 kernel with stride 4): one token per 2 x 2 patch, computed from the ``STEM x STEM``
    pixels around it, so that a 5 x 5 shape lies inside one token's view. Recognizing a shape is
    then the stem's job, and reaching across the map the mixer's.

    The readout is the mean over the tokens followed by one linear layer, so the logits are a sum
    of one term per token: whatever compares one part of the map with another has to happen in the
    mixer. A maximum over the tokens would compare by itself: with a mixer that mixes nothing, a
    model reading the maximum still tells "one shape" from "two shapes" (the first arena run,
    which read the maximum, measured that: PoolFormer solved the same-shape task with a reach of
    10 x 10 px, smaller than the gap between the shapes). ``readout="max"`` builds that first
    readout, for the calibration runs that compare the two.
    """

    READOUTS = ("mean", "max")

    def __init__(
        self, side: int, classes: int, factory: Callable | list[Callable], dim: int, heads=HEADS, readout="mean"
    ):
        """``factory``: the token mixer's factory, ``(dim, heads, height, width) -> module``, or one per layer."""
        super().__init__()
        if readout not in self.READOUTS:
            raise ValueError(f"readout must be one of {self.READOUTS}, got {readout!r}")
        self.readout = readout
        tokens = side // PATCH
        factories = list(factory) if isinstance(factory, (list, tuple)) else [factory] * LAYERS
        self.patch = nn.Conv2d(1, dim, STEM, stride=PATCH, padding=(STEM - PATCH) // 2)  # (B, C, side/2, side/2)
        self.position = nn.Parameter(torch.randn(tokens, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(VisionBlock(dim, make(dim, heads, tokens, tokens)) for make in factories)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def forward(self, images):
        x = self.patch(images).permute(0, 2, 3, 1) + self.position  # (B, h, w, C)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        if self.readout == "max":
            return self.head(x.amax(dim=(1, 2)))  # (B, classes): the largest value of each channel
        return self.head(x.mean(dim=(1, 2)))  # (B, classes): one term per token, summed


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def language_kernel(method: registry.Method, N: int) -> Callable:
    """The method's kernel with its benchmark keywords, those of SHORT_SEQUENCE_KWARGS taking precedence."""
    overrides = SHORT_SEQUENCE_KWARGS.get(method.name, {})
    kwargs = {**method.bench_kwargs, **{k: v(N) if callable(v) else v for k, v in overrides.items()}}
    return partial(method.attention_fn(), **kwargs)


def build_model(setting: TaskSetting, method: registry.Method, size: int) -> nn.Module:
    """The task's model with the method as its mixer, the width matched to the dense model's parameters.

    Vision: the parameter count grows with the width, so the width (a multiple of the heads) is
    found by bisection; :class:`ParameterBudgetError` when even the narrowest model is too large
    (a mixer whose own parameters are sized by the map, not by the width).
    """
    if setting.kind == "language":
        kernel = language_kernel(method, size)
        # attention sees the whole sequence, except in a method with no bidirectional form (a scan)
        return LanguageModel(setting.vocab, size, setting.classes, setting.per_token, kernel, causal=method.causal_only)
    model_of = partial(VisionModel, size, setting.classes, readout=setting.readout)  # (factory, width) -> model
    dense = model_of(mixer_factories(registry.get("dense")), DIM)
    if method.name == "dense":
        return dense
    target = parameter_count(dense)
    factory = mixer_factories(method)

    def count(units: int) -> int:
        return parameter_count(model_of(factory, units * HEADS))

    low, high = 2, 4 * DIM // HEADS  # widths 2 HEADS .. 4 DIM
    while high - low > 1:  # the last width below the target, and the next one
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) <= target else (low, middle)
    units = min((low, high), key=lambda u: abs(count(u) - target))
    gap = abs(count(units) - target)
    if gap > PARAM_TOLERANCE * target:
        raise ParameterBudgetError(
            f"no width gives {method.name} within {PARAM_TOLERANCE:.0%} of the dense model's {target} parameters "
            f"(closest: {count(units)} at C = {units * HEADS})"
        )
    return model_of(factory, units * HEADS)


# --------------------------------------------------------------------------- training
def schedule(step: int, steps: int) -> float:
    """The learning-rate factor: linear warm-up over the first 10 % of the steps, then cosine decay to 0."""
    warmup = max(1, int(WARMUP_FRACTION * steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def loss_and_correct(setting: TaskSetting, logits, labels):
    """Cross-entropy, and (correct, scored) counts: scored tokens (per_token) or examples."""
    if setting.per_token:
        flat_logits, flat_labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        scored = flat_labels != IGNORE
        loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE)
        correct = (flat_logits.argmax(-1) == flat_labels)[scored].sum().item()
        return loss, correct, scored.sum().item()
    loss = F.cross_entropy(logits, labels)
    return loss, (logits.argmax(-1) == labels).sum().item(), labels.numel()


def train_and_test(
    task: str, method: str, size: int, seed: int, *, steps: int, batch: int, lr: float, test_examples: int, device
) -> dict:
    """Train one model and measure its test accuracy; the row of the CSV (without status)."""
    setting = TASK_SETTINGS[task]
    device = torch.device(device)
    torch.manual_seed(seed)
    model = build_model(setting, registry.get(method), size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step, steps))
    train_generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    losses = []
    model.train()
    for _ in range(steps):
        inputs, labels = setting.make(batch, size, train_generator)
        loss, _, _ = loss_and_correct(setting, model(inputs.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_s = time.perf_counter() - started
    test_generator = torch.Generator().manual_seed(TEST_SEED)
    correct = scored = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, test_examples, 64):
            inputs, labels = setting.make(min(64, test_examples - start), size, test_generator)
            _, c, n = loss_and_correct(setting, model(inputs.to(device)), labels.to(device))
            correct, scored = correct + c, scored + n
    tail = losses[-max(1, steps // 10) :]
    return {
        "params": parameter_count(model),
        "accuracy": round(correct / scored, 4),
        "final_loss": round(sum(tail) / len(tail), 4),
        "train_s": round(train_s, 2),
    }


# --------------------------------------------------------------------------- the CSV
KEY_FIELDS, FIELDS = compare.ARENA_KEY_FIELDS, compare.ARENA_FIELDS  # one definition, read by the chapter too


def header_line() -> str:
    versions = f"python {platform.python_version()}, attnlib {attnlib.__version__}"  # torch: in the machine's part
    return f"# measured {datetime.date.today().isoformat()} on {bench.machine_description()}; {versions}"


def _key(row: dict) -> tuple:
    return tuple(str(row[field]) for field in KEY_FIELDS)


def read_rows(path: Path) -> list[dict]:
    """The rows of an arena CSV (its first line a '#' header); ValueError if it is not one."""
    return compare.read_arena(path)[1]


def write_rows(rows: list[dict], out: Path) -> None:
    """Write all rows through a temporary file and a rename: the CSV is never half-written."""
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", newline="") as handle:
            handle.write(header_line() + "\n")
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, out)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- the run
@dataclass
class Plan:
    tasks: list[str]
    methods: dict[str, list[str]]  # kind -> method names
    sizes: dict[str, tuple[int, ...]]  # task -> sizes
    seeds: list[int]
    steps: dict[str, int]  # task -> steps
    batch: int = 32
    test_examples: int = 512
    device: str = "cpu"
    configs: list[dict] = field(default_factory=list)

    def __post_init__(self):
        for task in self.tasks:
            setting = TASK_SETTINGS[task]
            for size in self.sizes[task]:
                tokens = size if setting.kind == "language" else (size // PATCH) ** 2
                for method in self.methods[setting.kind]:
                    for seed in self.seeds:
                        self.configs.append(
                            dict(task=task, kind=setting.kind, size=size, tokens=tokens, method=method, seed=seed,
                                 steps=self.steps[task], batch=self.batch, lr=setting.lr,
                                 test_examples=self.test_examples, device=self.device)
                        )  # fmt: skip


def methods_of_kind(kind: str) -> list[str]:
    """Every registered method of a kind: language methods with an attention kernel, vision ones with a mixer."""
    return [m.name for m in registry.METHODS if (m.make_mixer if kind == "vision" else m.attention)]


def run_one(config: dict) -> dict:
    """One row: the configuration, its results and status ("ok", "skipped" or "error" with the reason)."""
    row = dict(config)
    arguments = {k: config[k] for k in ("task", "method", "size", "seed", "steps", "batch", "lr", "test_examples")}
    try:
        row.update(train_and_test(**arguments, device=config["device"]), status="ok", error="")
    except ParameterBudgetError as error:  # the budget's rule cannot be met: recorded as skipped
        row.update(params="", accuracy="", final_loss="", train_s="", status="skipped", error=str(error)[:300])
    except Exception as error:  # a method that cannot run this configuration: recorded, the run goes on
        row.update(params="", accuracy="", final_loss="", train_s="", status="error",
                   error=f"{type(error).__name__}: {error}"[:300])  # fmt: skip
    return row


def _start_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run(plan: Plan, out: Path, *, resume: bool = True, progress: bool = True, workers: int = 1, threads: int = 2):
    """Train every configuration of ``plan`` not yet in ``out``; each row is written as it finishes.

    ``workers > 1`` trains that many configurations at once, each in a process of its own with
    ``threads`` threads (on 2 CPU cores, 2 workers of 1 thread keep both cores busy: these small
    models run many short operations, which a second thread barely speeds up). Returns the rows
    of the plan, in its order.
    """
    from tqdm.auto import tqdm

    with bench.results_lock(out):
        done: dict[tuple, dict] = {}
        if resume and out.exists() and out.stat().st_size > 0:
            done = {_key(row): row for row in read_rows(out) if row["status"] in ("ok", "skipped")}
        todo = [config for config in plan.configs if _key(config) not in done]
        bar = tqdm(total=len(plan.configs), initial=len(plan.configs) - len(todo), desc="arena", disable=not progress)
        order = [_key(config) for config in plan.configs]

        def finished(row: dict) -> None:
            done[_key(row)] = row
            planned = [done[key] for key in order if key in done]
            write_rows(planned + [row for key, row in done.items() if key not in set(order)], out)
            bar.set_postfix_str(f"{row['task']} {row['method']} {row['size']} seed {row['seed']}: {row['status']}")
            bar.update(1)

        if workers == 1:
            torch.set_num_threads(threads)
            for config in todo:
                finished(run_one(config))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            context = multiprocessing.get_context("spawn")  # a fresh interpreter: no threads inherited by a fork
            with ProcessPoolExecutor(
                workers, mp_context=context, initializer=_start_worker, initargs=(threads,)
            ) as pool:
                futures = [pool.submit(run_one, config) for config in todo]
                try:
                    for future in as_completed(futures):
                        finished(future.result())
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
        bar.close()
        return [done[key] for key in order]


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(value < 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative integers, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="CSV file; rows are written as they finish, and resumed")
    parser.add_argument(
        "--tasks", type=_names, default=DEFAULT_TASKS, help=f"of {list(TASK_SETTINGS)} (default {DEFAULT_TASKS})"
    )
    parser.add_argument("--methods", type=_names, help="registry names (default: every method of each task's kind)")
    parser.add_argument("--sizes", type=_int_list, help="language: N; vision: side in pixels (default: per task)")
    parser.add_argument("--seeds", type=_int_list, help="default 0,1,2")
    parser.add_argument("--steps", type=_int_list, help="training steps (default: per task)")
    parser.add_argument("--batch", type=_int_list, help="examples per step (default 32)")
    parser.add_argument("--test-examples", type=_int_list, help="default 512")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--workers", type=_int_list, help="configurations trained at once (default: 2 on cpu, 1 on cuda)"
    )
    parser.add_argument("--threads", type=_int_list, help="threads per worker (default: 2 / workers, at least 1)")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration")
    parser.add_argument("--restart", action="store_true", help="train everything again instead of resuming")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _single(parser, name: str, values, default: int) -> int:
    if values is None:
        return default
    if len(values) != 1 or values[0] < 1:
        parser.error(f"--{name}: expected one positive integer, got {values}")
    return values[0]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [task for task in args.tasks if task not in TASK_SETTINGS]
    if unknown or not args.tasks:
        parser.error(f"--tasks: expected names of {list(TASK_SETTINGS)}, got {args.tasks}")
    kinds = {TASK_SETTINGS[task].kind for task in args.tasks}
    methods = {kind: methods_of_kind(kind) for kind in ("language", "vision")}
    if args.methods is not None:
        for name in args.methods:
            try:
                method = registry.get(name)
            except ValueError as error:
                parser.error(f"--methods: {error}")
            if not any(name in methods[kind] for kind in kinds):
                parser.error(f"--methods: {method.name!r} has neither an attention kernel nor a mixer for these tasks")
        methods = {kind: [name for name in names if name in args.methods] for kind, names in methods.items()}
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        parser.error(f"--device: expected cpu or cuda, got {args.device!r}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device: cuda was asked for, but torch sees no GPU")
    tiny = TINY if args.tiny else None
    sizes = {}
    for task in args.tasks:
        setting = TASK_SETTINGS[task]
        sizes[task] = tuple(args.sizes) if args.sizes else (tiny["sizes"][setting.kind] if tiny else setting.sizes)
        if any(size < 1 for size in sizes[task]):
            parser.error(f"--sizes: expected positive sizes, got {sizes[task]}")
    if args.steps is not None and len(args.steps) not in (1, len(args.tasks)):
        parser.error(f"--steps: expected one number or one per task ({len(args.tasks)}), got {args.steps}")
    if args.steps is not None and min(args.steps) < 1:
        parser.error(f"--steps: expected positive numbers, got {args.steps}")
    steps = {}
    for index, task in enumerate(args.tasks):
        default = tiny["steps"] if tiny else TASK_SETTINGS[task].steps
        steps[task] = default if args.steps is None else args.steps[index if len(args.steps) > 1 else 0]
    seeds = args.seeds or list(range(tiny["seeds"] if tiny else 3))
    plan = Plan(
        tasks=args.tasks,
        methods=methods,
        sizes=sizes,
        seeds=seeds,
        steps=steps,
        batch=_single(parser, "batch", args.batch, tiny["batch"] if tiny else 32),
        test_examples=_single(parser, "test-examples", args.test_examples, tiny["test_examples"] if tiny else 512),
        device=args.device,
    )
    workers = _single(parser, "workers", args.workers, 2 if args.device == "cpu" and not args.tiny else 1)
    threads = _single(parser, "threads", args.threads, max(1, 2 // workers))
    try:
        out = bench.check_writable(args.out)
    except ValueError as error:
        parser.error(f"--out: {error}")
    if out.exists() and out.stat().st_size > 0:
        try:
            read_rows(out)
        except ValueError as error:
            parser.error(f"--out: {error}")
    try:
        rows = run(plan, out, resume=not args.restart, progress=not args.no_progress, workers=workers, threads=threads)
    except bench.ResultsFileError as error:
        parser.error(f"--out: {error}")
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished rows are in {out}; run the same command again to resume", file=sys.stderr)
        return 130
    failed = [row for row in rows if row["status"] == "error"]
    for row in failed:
        print(f"{row['task']} {row['method']} {row['size']} seed {row['seed']}: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
