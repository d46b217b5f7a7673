"""The introduction's schematic: where the N x N matrix comes from, and what each family does to it.

* :func:`families_example` - one small example computed by the library: the softmax weights of
  ``Q K^T`` (:func:`attnlib.reference.attention_weights`), a BigBird pattern
  (:func:`attnlib.sparse.bigbird.bigbird_pattern`) and the weights left on it, the average pooling
  of PoolFormer (:func:`attnlib.approx.poolformer.pooling_mixing_matrix`), and the order of the
  tiles of FlashAttention-2 (:func:`attnlib.viz.diagrams.kernels.tile_schedule`).
* :func:`score_matrix_families` - four panels drawn from it: ``Q`` (N x d) times ``K^T`` (d x N)
  gives the N x N scores; sparsification skips pairs; approximation changes the mixer (weights
  that do not come from ``q . k``); computation optimization keeps every pair and changes the
  schedule.

Every drawn cell carries a ``gid`` (``"q i,c"``, ``"k c,j"``, ``"dense i,j"``, ``"sparse i,j"``,
``"pooling i,j"``, ``"tiled i,j"``, ``"tile a,b"``, ``"step a,b"``) and its colour is
:func:`weight_color` of the weight it shows, so that tests can read the figure back.

Chapter: "Introduction" (chapters/*/00_introduction.ipynb).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ..._checks import check_positive_int
from ...approx import poolformer
from ...reference import attention_weights
from ...sparse import bigbird as bb
from .. import CATEGORY_COLORS
from .._text import check_language, in_language, text
from ._common import new_figure
from .kernels import tile_schedule

__all__ = ["MAX_TOKENS", "MAX_HEAD_DIM", "FamiliesExample", "families_example", "weight_color", "score_matrix_families"]

MAX_TOKENS = 32  # the N x N grid stays readable
MAX_HEAD_DIM = 16  # Q and K^T stay thin strips beside the scores
MAX_TILES_PER_SIDE = 8  # each tile keeps room for its number
FONT_SIZE = 11
_INK = CATEGORY_COLORS[1]  # Okabe-Ito blue: a weight's darkness
_HIGHLIGHT = CATEGORY_COLORS[6]  # Okabe-Ito vermilion: one query row, one key column, their score
_Q_COLOR, _K_COLOR = "#cfe3f1", "#f7e0b0"  # light blue, light orange (Q and K^T strips)


class FamiliesExample(NamedTuple):
    """One small example, every matrix ``(N, N)`` in float64, each from the library."""

    q: torch.Tensor  # (N, d) queries
    k: torch.Tensor  # (N, d) keys
    weights: torch.Tensor  # (N, N) softmax(Q K^T / sqrt(d)), every pair
    pattern: torch.Tensor  # (N, N) bool, the BigBird pattern: True = the pair is computed
    sparse_weights: torch.Tensor  # (N, N) softmax over the pattern's pairs, 0 elsewhere
    pooling: torch.Tensor  # (N, N) average pooling of pool_size neighbours (PoolFormer's mixer + the identity)
    schedule: list  # [(a, b), ...] the tiles in FA-2's order
    tile: int  # tile side


def _check_nonnegative_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def families_example(
    N: int = 16,
    d: int = 4,
    *,
    block_size: int = 1,
    num_random_blocks: int = 1,
    pool_size: int = 3,
    tile: int = 4,
    seed: int = 0,
) -> FamiliesExample:
    """The example :func:`score_matrix_families` draws, computed by the library.

    ``q, k``: ``(N, d)`` normal draws (float64) from ``torch.Generator().manual_seed(seed)``.
    ``weights = reference.attention_weights(q, k)``; ``pattern = bigbird_pattern(N, block_size=...,
    num_random_blocks=..., seed=seed)[0]``; ``sparse_weights = attention_weights(q, k, mask=pattern)``;
    ``pooling = pooling_mixing_matrix(1, N, pool_size) + I``: the tokens as a ``1 x N`` map, each
    averaged over its ``pool_size`` neighbours that exist (PoolFormer's mixer subtracts the token,
    and its residual adds it back); ``schedule = tile_schedule(N, tile, tile, version=2)``.
    """
    check_positive_int("N", N)
    if N > MAX_TOKENS:
        raise ValueError(f"N must be at most {MAX_TOKENS} to draw the N x N pairs apart, got {N}")
    check_positive_int("d", d)
    if d > MAX_HEAD_DIM:
        raise ValueError(f"d must be at most {MAX_HEAD_DIM} (Q and K^T are drawn cell by cell), got {d}")
    check_positive_int("tile", tile)
    if math.ceil(N / tile) > MAX_TILES_PER_SIDE:
        raise ValueError(
            f"tile must give at most {MAX_TILES_PER_SIDE} tiles per side to number them, got ceil({N} / {tile}) "
            f"= {math.ceil(N / tile)}"
        )
    _check_nonnegative_int("seed", seed)
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(N, d, generator=generator, dtype=torch.float64)  # (N, d)
    k = torch.randn(N, d, generator=generator, dtype=torch.float64)  # (N, d)
    pattern = bb.bigbird_pattern(N, block_size=block_size, num_random_blocks=num_random_blocks, seed=seed)[0]
    weights = attention_weights(q[None, None], k[None, None])[0, 0]  # (N, N)
    sparse_weights = attention_weights(q[None, None], k[None, None], mask=pattern)[0, 0]  # (N, N)
    pooling = poolformer.pooling_mixing_matrix(1, N, pool_size) + torch.eye(N, dtype=torch.float64)  # (N, N)
    schedule = tile_schedule(N, tile, tile, version=2)
    return FamiliesExample(q, k, weights, pattern, sparse_weights, pooling, schedule, tile)


def weight_color(weight: float, vmax: float) -> tuple[float, float, float]:
    """The colour of a weight: white at 0, Okabe-Ito blue at ``vmax`` (darker = larger, in greyscale too).

    The darkness grows as the square root of the weight, so that the small weights of a long row stay visible.
    """
    from matplotlib.colors import to_rgb

    t = math.sqrt(min(max(float(weight) / vmax, 0.0), 1.0))
    return tuple(round(1.0 - t * (1.0 - channel), 6) for channel in to_rgb(_INK))


def _matrix_axes(ax, rows: float, cols: float, title) -> None:
    ax.set_xlim(-0.2, cols + 0.2)
    ax.set_ylim(rows + 0.2, -0.2)  # row 0 on top, as in the score matrix
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(title, fontsize=FONT_SIZE - 1, linespacing=1.3)


def _cells(ax, name: str, values: torch.Tensor, vmax: float, *, shown=None, x0: float = 0, y0: float = 0) -> None:
    """One square per ``(i, j)`` coloured by its weight; where ``shown`` is False, a blank square (no gid)."""
    from matplotlib.patches import Rectangle

    rows, cols = values.shape
    for i in range(rows):
        for j in range(cols):
            if shown is not None and not shown[i, j]:
                ax.add_patch(Rectangle((x0 + j, y0 + i), 1, 1, facecolor="white", edgecolor="0.85", linewidth=0.4))
                continue
            ax.add_patch(
                Rectangle((x0 + j, y0 + i), 1, 1, facecolor=weight_color(values[i, j], vmax), edgecolor="0.7",
                          linewidth=0.4, gid=f"{name} {i},{j}")
            )  # fmt: skip


def score_matrix_families(
    N: int = 16,
    d: int = 4,
    *,
    block_size: int = 1,
    num_random_blocks: int = 1,
    pool_size: int = 3,
    tile: int = 4,
    seed: int = 0,
    lang: str = "en",
):
    """Where the ``N x N`` matrix comes from and what each family does to it; returns the Figure.

    Four panels of :func:`families_example`, all on one colour scale (darker = larger weight):
    (1) ``Q`` (``N x d``, left) times ``K^T`` (``d x N``, top) gives the ``N x N`` scores, shown
    as their softmax weights; one query row, one key column and the score they make are outlined;
    (2) sparsification: only the pairs of a BigBird pattern are computed (blank: skipped);
    (3) approximation: another mixer, here average pooling, whose weights do not come from
    ``q . k``; (4) computation optimization: the same weights as (1), every pair, computed tile
    by tile in the numbered order.
    """
    from matplotlib.patches import Rectangle

    check_language(lang)
    ex = families_example(
        N, d, block_size=block_size, num_random_blocks=num_random_blocks, pool_size=pool_size, tile=tile, seed=seed
    )
    vmax = float(max(ex.weights.max(), ex.sparse_weights.max(), ex.pooling.max()))
    pairs, kept = N * N, int(ex.pattern.sum())
    figure, axes = new_figure(6.4, 7.0, rows=2, columns=2)

    # (1) Q times K^T: Q on the left of the scores, K^T above them
    ax = axes[0]
    gap = 0.8
    left = top = d + gap  # the scores' corner
    row, col = N // 3, (2 * N) // 3  # the outlined query and key
    for i in range(N):
        for c in range(d):
            ax.add_patch(Rectangle((c, top + i), 1, 1, facecolor=_Q_COLOR, edgecolor="0.6", linewidth=0.4,
                                   gid=f"q {i},{c}"))  # fmt: skip
    for c in range(d):
        for j in range(N):
            ax.add_patch(Rectangle((left + j, c), 1, 1, facecolor=_K_COLOR, edgecolor="0.6", linewidth=0.4,
                                   gid=f"k {c},{j}"))  # fmt: skip
    _cells(ax, "dense", ex.weights, vmax, x0=left, y0=top)
    outline = {"facecolor": "none", "edgecolor": _HIGHLIGHT, "linewidth": 2.0, "zorder": 3}
    ax.add_patch(Rectangle((0, top + row), d, 1, **outline))
    ax.add_patch(Rectangle((left + col, 0), 1, d, **outline))
    ax.add_patch(Rectangle((left + col, top + row), 1, 1, **outline))
    ax.text(d / 2, top - 0.25, "$Q$", ha="center", va="bottom", fontsize=FONT_SIZE)
    ax.text(left - 0.25, d / 2, "$K^\\top$", ha="right", va="center", fontsize=FONT_SIZE)
    title = text(
        f"$Q$ ({N}×{d}) times $K^\\top$ ({d}×{N}):\n{N}×{N} = {pairs} scores",
        f"$Q$（{N}×{d}）と$K^\\top$（{d}×{N}）の積：\n{N}×{N} = {pairs}個のスコア",
    )
    _matrix_axes(ax, top + N, left + N, in_language(title, lang))

    # (2) sparsification: the pattern's pairs only
    ax = axes[1]
    _cells(ax, "sparse", ex.sparse_weights, vmax, shown=ex.pattern)
    title = text(
        f"sparsification: skip pairs\nBigBird pattern, {kept} of {pairs} pairs",
        f"attentionの間引き：組を飛ばす\nBigBirdのパターン、{pairs}組中{kept}組",
    )
    _matrix_axes(ax, N, N, in_language(title, lang))

    # (3) approximation: a mixer whose weights are not computed from q . k
    ax = axes[2]
    _cells(ax, "pooling", ex.pooling, vmax)
    title = text(
        f"approximation: another mixer\naverage over a window of {pool_size}, not q·k",
        f"近似計算：ミキサーを替える\n幅{pool_size}のウィンドウの平均（q·kを使わない）",
    )
    _matrix_axes(ax, N, N, in_language(title, lang))

    # (4) computation optimization: every pair, tile by tile
    ax = axes[3]
    _cells(ax, "tiled", ex.weights, vmax)
    for step, (a, b) in enumerate(ex.schedule, start=1):
        x0, y0 = b * tile, a * tile
        width, height = min(tile, N - x0), min(tile, N - y0)
        ax.add_patch(Rectangle((x0, y0), width, height, facecolor="none", edgecolor="black", linewidth=1.6,
                               gid=f"tile {a},{b}", zorder=3))  # fmt: skip
        box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.9}
        ax.text(x0 + width / 2, y0 + height / 2, str(step), ha="center", va="center", fontsize=FONT_SIZE - 2,
                bbox=box, zorder=4, gid=f"step {a},{b}")  # fmt: skip
    tiles = len(ex.schedule)
    title = text(
        f"computation optimization: new order\nall {pairs} pairs, {tiles} tiles in turn",
        f"計算過程の最適化：順序を替える\n全{pairs}組を{tiles}個のタイルで順に",
    )
    _matrix_axes(ax, N, N, in_language(title, lang))

    note = text(
        "rows: queries, columns: keys. darker = larger weight (one scale for all); white = pair not computed",
        "行はクエリ、列はキー。色が濃いほど重みが大きい（全図で共通）。白は計算しない組",
    )
    figure.subplots_adjust(left=0.02, right=0.98, top=0.92, bottom=0.06, hspace=0.25, wspace=0.1)
    figure.text(0.5, 0.015, in_language(note, lang), ha="center", va="bottom", fontsize=FONT_SIZE - 2.5)
    return figure
