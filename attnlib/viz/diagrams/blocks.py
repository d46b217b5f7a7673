"""Schematics of the block chapters: the tiles of a block mask, and the ring of devices.

* :func:`block_mask_tiles` - the empty, full and partial tiles of a block mask over its element mask.
* :func:`ring_steps` - ``P`` devices in a ring; the key/value shards move one device per step.
* :func:`ring_layouts` - which chunks of the sequence each device holds: plain and zigzag.
* :func:`ring_slider` - the same ring step by step (a plotly slider): which shard each rank holds.

The drawings come from the same rules as the library: :func:`tile_kinds` is the classification
of :mod:`attnlib.optim.block_mask` (a ragged last tile is never full), :func:`shard_source` the
ring step of :func:`attnlib.optim.ring.ring_schedule` and :func:`chunk_owners` the layouts of
:func:`attnlib.optim.ring.chunks_of_rank`. Drawn tiles, shards and chunks carry a ``gid``
(``"tile i,j,KIND"``, ``"shard s,r,SOURCE"``, ``"chunk LAYOUT,c,RANK"``) so that tests can read the
figure back.

Chapters: "Block masks" (chapters/*/14_block_sparse_flash.ipynb) and "Ring attention"
(15_ring_attention.ipynb).
"""

from __future__ import annotations

import math

import torch

from ..._checks import check_positive_int
from .. import CATEGORY_COLORS
from .._text import check_language, in_language, text
from ._common import new_figure, score_matrix_axes

__all__ = [
    "TILE_KINDS",
    "tile_kinds",
    "block_mask_tiles",
    "shard_source",
    "ring_steps",
    "HOLD_CATEGORIES",
    "ring_hold_frames",
    "ring_slider",
    "chunk_owners",
    "ring_layouts",
]

FONT_SIZE = 12  # readable when a 6-inch figure shrinks to a phone's column
TILE_KINDS = ("empty", "partial", "full")  # index = the value stored in BlockMask.kinds
RANK_COLORS = [CATEGORY_COLORS[index] for index in (1, 2, 3, 4, 5, 6, 7, 10)]
RANK_HATCHES = ["", "//", "..", "xx", "\\\\", "++", "oo", "--"]  # a second cue besides the colour


# ---------------------------------------------------------------- block masks


def _check_mask(mask) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim != 2:
        got = f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a 2-D torch.bool tensor (N_q, N_k), True = may attend, got {got}")
    if mask.numel() == 0:
        raise ValueError(f"mask must have at least one query and one key, got shape {tuple(mask.shape)}")
    return mask.cpu()


def tile_kinds(mask: torch.Tensor, block_q: int, block_k: int) -> list[list[str]]:
    """The kind of each ``block_q x block_k`` tile of the element ``mask`` ``(N_q, N_k)``: rows of names.

    ``"empty"``: no pair of the tile is allowed; ``"full"``: every pair is, and the tile lies wholly
    inside the mask; ``"partial"``: otherwise (a ragged last tile, cut by ``N_q`` or ``N_k``, is
    never full). The kinds are :func:`attnlib.optim.block_mask.block_mask_from_dense`'s.
    """
    from ...optim import block_mask

    mask = _check_mask(mask)
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    kinds = block_mask.block_mask_from_dense(mask, block_q=block_q, block_k=block_k).kinds[0, 0]  # (T_q, T_k)
    names = {block_mask.EMPTY: "empty", block_mask.PARTIAL: "partial", block_mask.FULL: "full"}
    return [[names[int(kind)] for kind in row] for row in kinds]


def block_mask_tiles(mask: torch.Tensor, block_q: int, block_k: int, *, title=None, lang: str = "en"):
    """The element ``mask`` (dark cells: allowed pairs) with its tiles coloured by kind; returns the Figure.

    Empty tiles are white (the kernel never loads them), full ones blue (no mask work), partial
    ones orange and hatched (the element mask is applied). ``title``: a ``viz.text`` or ``str``.
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch, Rectangle

    check_language(lang)
    kinds = tile_kinds(mask, block_q, block_k)
    N_q, N_k = mask.shape
    if N_q > 1024 or N_k > 1024 or len(kinds) * len(kinds[0]) > 256:
        raise ValueError(
            f"mask must be at most 1024 x 1024 with at most 256 tiles to draw, got shape {tuple(mask.shape)} "
            f"and {len(kinds)} x {len(kinds[0])} tiles (block_q={block_q}, block_k={block_k})"
        )
    styles = {  # colour, hatch, label
        "empty": ("white", "", text(en="empty: skipped", ja="空：読み込まない")),
        "full": (CATEGORY_COLORS[5], "", text(en="full: no mask", ja="マスクなし")),
        "partial": (CATEGORY_COLORS[2], "//", text(en="partial: masked", ja="一部マスクあり")),
    }
    figure, (ax,) = new_figure(5.0, 5.4)
    for i, row in enumerate(kinds):
        for j, kind in enumerate(row):
            color, hatch, _ = styles[kind]
            x0, y0 = j * block_k, i * block_q
            ax.add_patch(
                Rectangle((x0, y0), min(block_k, N_k - x0), min(block_q, N_q - y0), facecolor=color, hatch=hatch,
                          edgecolor="0.35", linewidth=0.8, gid=f"tile {i},{j},{kind}", zorder=1)
            )  # fmt: skip
    cells = ListedColormap([(0, 0, 0, 0), (0, 0, 0, 0.3)])  # masked: clear, allowed: dark
    ax.imshow(mask.to(torch.uint8).numpy(), cmap=cells, vmin=0, vmax=1, extent=(0, N_k, N_q, 0),
              interpolation="nearest", zorder=2)  # fmt: skip
    for i in range(len(kinds) + 1):
        ax.axhline(min(i * block_q, N_q), color="black", linewidth=1.0, zorder=3)
    for j in range(len(kinds[0]) + 1):
        ax.axvline(min(j * block_k, N_k), color="black", linewidth=1.0, zorder=3)
    score_matrix_axes(
        ax, N_q, N_k, block_q, block_k, lang=lang, font_size=FONT_SIZE,
        xlabel=text(en=f"keys (tiles of {block_k})", ja=f"キー（タイル {block_k}）"),
        ylabel=text(en=f"queries (tiles of {block_q})", ja=f"クエリ（タイル {block_q}）"),
    )  # fmt: skip
    if title is not None:
        ax.set_title(in_language(title, lang), fontsize=FONT_SIZE, y=-0.08, va="top")
    handles = [Patch(facecolor=c, hatch=h, edgecolor="0.35", label=in_language(name, lang))
               for c, h, name in styles.values()]  # fmt: skip
    handles.append(Patch(facecolor=(0, 0, 0, 0.3), label=in_language(
        text(en="allowed pair", ja="注目できる組"), lang)))  # fmt: skip
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1 if title is None else -0.16),
              ncol=2, frameon=False, fontsize=FONT_SIZE - 2)  # fmt: skip
    return figure


# ---------------------------------------------------------------- the ring


def _check_ring(world_size: int) -> None:
    check_positive_int("world_size", world_size)
    if world_size > 8:
        raise ValueError(f"world_size must be at most 8 to draw the ring, got {world_size}")


def shard_source(rank: int, step: int, world_size: int) -> int:
    """The rank whose key/value shard ``rank`` holds at ``step``: ``(rank - step) mod P``.

    Rank ``r`` sends to ``r + 1`` and receives from ``r - 1``: :func:`attnlib.optim.ring.source_rank`,
    the step of the ring's own loops and of :func:`attnlib.optim.ring.ring_schedule`.
    """
    from ...optim import ring

    return ring.source_rank(rank, step, world_size)


def ring_steps(world_size: int, *, lang: str = "en"):
    """``world_size`` devices in a ring, one panel per step; returns the Figure.

    Each device keeps its queries ``Q_r`` and holds the key/value shard ``KV_{(r - s) mod P}`` at
    step ``s``, coloured by the rank it came from; arrows show where each shard goes next.
    """
    from matplotlib.patches import Circle, FancyArrowPatch, Rectangle

    check_language(lang)
    _check_ring(world_size)
    P = world_size
    columns = min(P, 2) if P <= 4 else 4
    rows = math.ceil(P / columns)
    figure, axes = new_figure(6.0 if columns == 2 else 6.6, 0.5 + (2.7 if columns == 2 else 1.7) * rows,
                           rows=rows, columns=columns)  # fmt: skip
    shrink = 24 if columns == 2 else 13  # points from a device's centre to its arrow's ends
    radius = 1.0
    for step, ax in enumerate(axes):
        ax.set_axis_off()
        ax.set_xlim(-1.45, 1.45)
        ax.set_ylim(-1.45, 1.45)
        ax.set_aspect("equal")
        if step >= P:
            continue
        places = [(radius * math.sin(2 * math.pi * r / P), radius * math.cos(2 * math.pi * r / P)) for r in range(P)]
        if P > 1:
            ax.add_patch(Circle((0, 0), radius, fill=False, edgecolor="0.7", linewidth=0.8, linestyle=":"))
            for r in range(P):  # the shard r holds now goes to r + 1 at the next step
                start, end = places[r], places[(r + 1) % P]
                bend = 0.45 if P == 2 else -0.2  # two ranks: two arcs, one each way
                ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, color="0.35",
                                             connectionstyle=f"arc3,rad={bend}", shrinkA=shrink,
                                             shrinkB=shrink))  # fmt: skip
        for r, (x, y) in enumerate(places):
            source = shard_source(r, step, P)
            ax.add_patch(Rectangle((x - 0.3, y), 0.6, 0.3, facecolor="white", edgecolor="black",
                                   linewidth=0.8))  # fmt: skip
            ax.text(x, y + 0.15, f"Q{r}", ha="center", va="center", fontsize=FONT_SIZE - 3)
            ax.add_patch(Rectangle((x - 0.3, y - 0.3), 0.6, 0.3, facecolor=RANK_COLORS[source],
                                   hatch=RANK_HATCHES[source], edgecolor="black", linewidth=0.8,
                                   gid=f"shard {step},{r},{source}"))  # fmt: skip
            ax.text(x, y - 0.15, f"KV{source}", ha="center", va="center", fontsize=FONT_SIZE - 3,
                    bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none"))  # fmt: skip
        ax.set_title(in_language(text(en=f"step {step}", ja=f"ステップ{step}"), lang), fontsize=FONT_SIZE - 1)
    note = text(
        en=f"P = {P} ranks; rank r keeps its queries Qr,\nthe key/value shards KV move one rank on per step",
        ja=f"P = {P}ランク。ランクrはクエリQrを持ち続け、\nキー・バリューの断片KVが1ステップに1ランクずつ進む",
    )
    figure.text(0.5, 0.01, in_language(note, lang), ha="center", va="bottom", fontsize=FONT_SIZE - 3)
    return figure


def chunk_owners(world_size: int, layout: str) -> list[int]:
    """The rank that holds each chunk of the sequence: ``P`` chunks (plain) or ``2P`` (zigzag).

    Plain: rank ``r`` holds chunk ``r``; zigzag: chunks ``r`` and ``2P - 1 - r``
    (:func:`attnlib.optim.ring.chunks_of_rank`).
    """
    from ...optim import ring

    owner = {chunk: rank for rank in range(world_size) for chunk in ring.chunks_of_rank(rank, world_size, layout)}
    return [owner[chunk] for chunk in range(len(owner))]


def ring_layouts(world_size: int, N: int, *, lang: str = "en"):
    """The ``N`` tokens of the sequence cut into chunks, coloured by the rank that holds them; returns the Figure.

    Top row: plain (``P`` chunks); bottom row: zigzag (``2P`` chunks). ``N`` must be divisible
    by ``2P`` (both layouts cut it evenly). Each chunk has ``gid="chunk LAYOUT,c,RANK"``.
    """
    from matplotlib.patches import Rectangle

    check_language(lang)
    _check_ring(world_size)
    check_positive_int("N", N)
    P = world_size
    if N % (2 * P):
        raise ValueError(f"N must be divisible by 2 * world_size = {2 * P} (zigzag cuts {2 * P} chunks), got N={N}")
    if N > 128:
        raise ValueError(f"N must be at most 128 to draw the tokens, got {N}")
    figure, (ax,) = new_figure(6.6, 2.3)
    labels = {"plain": text(en="plain", ja="plainの配置"), "zigzag": text(en="zigzag", ja="zigzagの配置")}
    for row, layout in enumerate(("plain", "zigzag")):
        owners = chunk_owners(P, layout)
        size = N // len(owners)
        y = 1.4 * (1 - row)
        for c, rank in enumerate(owners):
            ax.add_patch(Rectangle((c * size, y), size, 0.8, facecolor=RANK_COLORS[rank], hatch=RANK_HATCHES[rank],
                                   edgecolor="black", linewidth=1.0, gid=f"chunk {layout},{c},{rank}"))  # fmt: skip
            ax.text(c * size + size / 2, y + 0.4, str(rank), ha="center", va="center", fontsize=FONT_SIZE - 1,
                    bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none"))  # fmt: skip
        ax.text(-0.4, y + 0.4, in_language(labels[layout], lang), ha="right", va="center", fontsize=FONT_SIZE - 1)
    ax.set_xlim(-0.12 * N - 1, N + 0.5)
    ax.set_ylim(-0.1, 2.3)
    ax.set_yticks([])
    ticks = sorted(set(range(0, N + 1, N // (2 * P))))
    ax.set_xticks(ticks)
    ax.tick_params(labelsize=FONT_SIZE - 3)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel(
        in_language(text(en=f"token position (N = {N}); number: the rank that holds the chunk (P = {P})",
                         ja=f"トークンの位置（N = {N}）。数字はそのチャンクを持つランク（P = {P}）"), lang),
        fontsize=FONT_SIZE - 2,
    )  # fmt: skip
    return figure


# ---------------------------------------------------------------- the ring, step by step

HOLD_CATEGORIES = (
    text(en="not held yet", ja="まだ受け取っていない"),
    text(en="held at an earlier step", ja="前のステップで持っていた"),
    text(en="held now", ja="いま持っている"),
)


def ring_hold_frames(world_size: int) -> list[list[list[int]]]:
    """One ``(P, P)`` frame per step: ``frames[s][r][j]`` for rank ``r`` and key/value shard ``j``.

    2: rank ``r`` holds shard ``j`` at step ``s`` (:func:`shard_source`); 1: it held it at an
    earlier step; 0: not yet. After the last step every rank has held every shard once.
    """
    _check_ring(world_size)
    P = world_size
    frames = []
    for step in range(P):
        frame = [[0] * P for _ in range(P)]
        for r in range(P):
            for earlier in range(step):
                frame[r][shard_source(r, earlier, P)] = 1
            frame[r][shard_source(r, step, P)] = 2
        frames.append(frame)
    return frames


def ring_slider(world_size: int):
    """The ring passing its shards, one slider step per ring step; returns the plotly figure (``viz.show_plotly``).

    Rows are ranks, columns key/value shards (:func:`ring_hold_frames`); each title lists the shard
    every rank holds at that step.
    """
    from .. import slider_heatmap

    frames = ring_hold_frames(world_size)
    P = world_size
    titles = []
    for step in range(P):
        held = ", ".join(f"KV{shard_source(r, step, P)}" for r in range(P))
        ranks = ", ".join(str(r) for r in range(P))
        titles.append(text(en=f"step {step}: ranks {ranks} hold {held}",
                           ja=f"ステップ{step}：ランク{ranks}が{held}を持つ"))  # fmt: skip
    return slider_heatmap(
        frames, [str(step) for step in range(P)], titles=titles, categories=list(HOLD_CATEGORIES),
        x_ticks=[f"KV{j}" for j in range(P)], y_ticks=[str(r) for r in range(P)],
        xlabel=text(en="key/value shard", ja="キー・バリューの断片"), ylabel=text(en="rank", ja="ランク"),
        slider_prefix=text(en="step ", ja="ステップ "), size=360,
    )  # fmt: skip
