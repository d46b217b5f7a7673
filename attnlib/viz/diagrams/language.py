"""Schematics of the sparse language-model chapters: BigBird's blocks and Reformer's LSH steps.

* :func:`bigbird_blocks` - random + window + global = BigBird, block by block (the paper's Fig. 1).
* :func:`lsh_steps` - Reformer's hash, sort by bucket, chunk, and attend within the chunk and the
  one before (the paper's Fig. 2).

The drawings come from the library itself: the blocks are :func:`attnlib.sparse.bigbird.
bigbird_block_categories` (whose random blocks are :func:`~attnlib.sparse.bigbird.
bigbird_random_blocks`), and the buckets, the sorted order, the chunks and the attended pairs are
those of :func:`attnlib.sparse.reformer.lsh_layout` (:func:`lsh_example`). Every drawn block,
token and pair carries a ``gid`` (``"bigbird i,j"``, ``"token t"``, ``"pair i,j"``, ...) so that
tests can read the figure back.

Chapters: "BigBird" (chapters/*/05_bigbird.ipynb) and "Reformer" (06_reformer.ipynb).
"""

from __future__ import annotations

import torch

from ..._checks import check_positive_int
from ...sparse import bigbird as bb
from ...sparse import reformer as rf
from .. import CATEGORY_COLORS
from .._text import check_language, in_language, text
from ._common import new_figure

__all__ = ["bigbird_blocks", "lsh_example", "lsh_steps"]

FONT_SIZE = 12  # readable when a 6-inch figure shrinks to a phone's column
MAX_BLOCKS = 16  # BigBird: blocks per side that can still be told apart
MAX_TOKENS = 32  # Reformer: tokens in one strip
MAX_BUCKETS = 10  # Reformer: one colour (and hatch) per bucket

# One colour and hatch per BigBird part: the same in the parts and in their union.
_PART_STYLE = {
    bb.GLOBAL: (CATEGORY_COLORS[2], ""),  # orange
    bb.WINDOW: (CATEGORY_COLORS[1], "//"),  # blue
    bb.RANDOM: (CATEGORY_COLORS[3], ".."),  # green
}
_BUCKET_COLORS = [CATEGORY_COLORS[index] for index in (1, 2, 3, 4, 5, 6, 7, 9, 10, 11)]
_BUCKET_HATCHES = ["", "//", "..", "xx", "\\\\"]


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")


# ---------------------------------------------------------------------------- BigBird


def bigbird_blocks(num_blocks: int, num_random_blocks: int = 3, *, seed: int = 0, lang: str = "en"):
    """Random + window + global = BigBird, on a grid of ``num_blocks x num_blocks`` blocks; returns the Figure.

    As in the library (BigBird-ITC, blocked): the window is three blocks (the block and its two
    neighbours), the global blocks are the first and the last, and every middle query block
    draws ``num_random_blocks`` key blocks outside its window and the global blocks, from
    ``seed``. The last panel is :func:`attnlib.sparse.bigbird.bigbird_block_categories` with one
    token per block; cells have ``gid="random i,j"``, ``"window i,j"``, ``"global i,j"`` and
    ``"bigbird i,j"`` (query block ``i``, key block ``j``).
    """
    from matplotlib.patches import Rectangle

    check_language(lang)
    check_positive_int("num_blocks", num_blocks)
    if isinstance(num_random_blocks, bool) or not isinstance(num_random_blocks, int) or num_random_blocks < 0:
        raise ValueError(f"num_random_blocks must be a non-negative int, got {num_random_blocks!r}")
    _check_seed(seed)
    needed = 3 if num_random_blocks == 0 else bb.GLOBAL_BLOCKS + bb.WINDOW_BLOCKS + num_random_blocks
    if num_blocks < needed:
        raise ValueError(
            f"num_blocks must be at least {needed} for num_random_blocks={num_random_blocks} "
            f"(2 global, 3 window and the random blocks), got {num_blocks}"
        )
    if num_blocks > MAX_BLOCKS:
        raise ValueError(f"num_blocks must be at most {MAX_BLOCKS} to draw the blocks apart, got {num_blocks}")
    cats = bb.bigbird_block_categories(num_blocks, block_size=1, num_random_blocks=num_random_blocks, seed=seed)[0]
    rows = torch.arange(num_blocks)[:, None]
    cols = torch.arange(num_blocks)[None, :]
    parts = [
        ("random", bb.RANDOM, cats == bb.RANDOM,
         text(en=f"random\n({num_random_blocks} per row)", ja=f"ランダム\n（各行{num_random_blocks}個）")),
        ("window", bb.WINDOW, (rows - cols).abs() <= 1, text(en="window\n(3 blocks)", ja="ウィンドウ\n（3ブロック）")),
        ("global", bb.GLOBAL, (rows == 0) | (rows == num_blocks - 1) | (cols == 0) | (cols == num_blocks - 1),
         text(en="global\n(first, last)", ja="グローバル\n（最初と最後）")),
        ("bigbird", None, cats > bb.NONE, text(en="BigBird", ja="BigBird")),
    ]  # fmt: skip
    figure, axes = new_figure(6.8, 2.6, columns=4)
    for ax, (name, part, shown, title) in zip(axes, parts):
        for i in range(num_blocks):
            for j in range(num_blocks):
                if not shown[i, j]:
                    ax.add_patch(Rectangle((j, i), 1, 1, facecolor="white", edgecolor="0.85", linewidth=0.5))
                    continue
                color, hatch = _PART_STYLE[part if part is not None else int(cats[i, j])]
                ax.add_patch(
                    Rectangle((j, i), 1, 1, facecolor=color, edgecolor="black", hatch=hatch, linewidth=0.6,
                              gid=f"{name} {i},{j}")
                )  # fmt: skip
        ax.set_xlim(0, num_blocks)
        ax.set_ylim(num_blocks, 0)  # query block 0 on top, as in the score matrix
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(in_language(title, lang), fontsize=FONT_SIZE - 1, y=-0.05, va="top")
    figure.subplots_adjust(left=0.05, right=0.99, wspace=0.3)
    for left, right, sign in zip(axes, axes[1:], "++="):  # between the panels
        x = (left.get_position().x1 + right.get_position().x0) / 2
        figure.text(x, left.get_position().y0 + left.get_position().height / 2, sign, ha="center", va="center",
                    fontsize=FONT_SIZE + 4)  # fmt: skip
    axes[0].set_ylabel(in_language(text(en="query blocks", ja="クエリのブロック"), lang), fontsize=FONT_SIZE - 2)
    note = text(
        en=f"{num_blocks} x {num_blocks} blocks; rows: query blocks, columns: key blocks; seed {seed}",
        ja=f"{num_blocks} x {num_blocks}ブロック。行はクエリ、列はキーのブロック。シード{seed}",
    )
    figure.text(0.5, 0.98, in_language(note, lang), ha="center", va="top", fontsize=FONT_SIZE - 2)
    return figure


# ---------------------------------------------------------------------------- Reformer


def _check_lsh(N: int, n_buckets: int, chunk_size: int, seed: int, head_dim: int) -> None:
    check_positive_int("N", N)
    check_positive_int("n_buckets", n_buckets)
    check_positive_int("chunk_size", chunk_size)
    check_positive_int("head_dim", head_dim)
    _check_seed(seed)
    if n_buckets != 1 and n_buckets % 2:
        raise ValueError(f"n_buckets must be 1 or even (angular LSH uses +-x R), got {n_buckets}")
    if N > MAX_TOKENS:
        raise ValueError(f"N must be at most {MAX_TOKENS} to draw the tokens apart, got {N}")
    if n_buckets > MAX_BUCKETS:
        raise ValueError(f"n_buckets must be at most {MAX_BUCKETS} to give each bucket its colour, got {n_buckets}")


def lsh_example(N: int, n_buckets: int, chunk_size: int, *, seed: int = 0, head_dim: int = 8):
    """The tokens :func:`lsh_steps` draws and their one-round :class:`~attnlib.sparse.reformer.LSHLayout`.

    ``qk`` is ``(1, 1, N, head_dim)`` standard normal from ``seed``; the layout is
    :func:`attnlib.sparse.reformer.lsh_layout` with one hash round, ``n_buckets`` and
    ``chunk_size``, its rotations drawn from ``seed`` too. Returns ``(qk, layout)``.
    """
    _check_lsh(N, n_buckets, chunk_size, seed, head_dim)
    qk = torch.randn(1, 1, N, head_dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    layout = rf.lsh_layout(qk, n_hashes=1, n_buckets=n_buckets, chunk_size=chunk_size, seed=seed)
    return qk, layout


def _bucket_style(bucket: int, n_buckets: int) -> dict:
    if bucket >= n_buckets:  # padding
        return dict(facecolor="white", edgecolor="0.5", linestyle=":", hatch="")
    return dict(facecolor=_BUCKET_COLORS[bucket], edgecolor="black", hatch=_BUCKET_HATCHES[bucket % 5])


def lsh_steps(N: int, n_buckets: int, chunk_size: int, *, seed: int = 0, lang: str = "en"):
    """Reformer's LSH attention in four steps, for ``N`` tokens of :func:`lsh_example`; returns the Figure.

    Top: 1. the tokens in their order, coloured by bucket (``gid="token t"``); 2. sorted by
    bucket, ties by position (``gid="slot s,t"``: token ``t`` at sorted slot ``s``); 3. the sorted
    sequence cut into chunks of ``chunk_size`` (``gid="chunk c"``; padding tokens, dotted, fill
    the last chunk). Bottom: 4. the pairs each query attends in sorted order (``gid="pair i,j"``,
    tokens ``i`` and ``j``): same bucket, in its chunk or the one before (wrap-around), as
    :meth:`~attnlib.sparse.reformer.LSHLayout.pattern` computes.
    """
    from matplotlib.patches import Rectangle

    check_language(lang)
    _, layout = lsh_example(N, n_buckets, chunk_size, seed=seed)
    buckets = layout.buckets[0, 0, 0].tolist()  # (N_pad,)
    order = layout.sort_indices[0, 0, 0].tolist()  # (N_pad,): token at each sorted slot
    slot_of = layout.undo_sort[0, 0, 0].tolist()  # (N_pad,)
    pattern = layout.pattern()[0, 0]  # (N, N)
    N_pad = layout.N_pad
    figure, (top, bottom) = new_figure(6.6, 7.4, rows=2, height_ratios=[1.0, 1.6])
    steps = [
        text(en="1. hash: tokens in order,\ncolour = bucket", ja="1. ハッシュ：元の順の\nトークン、色 = バケット"),
        text(en="2. sort by bucket\n(ties by position)", ja="2. バケットで並べ替え\n（同じなら位置の順）"),
        text(en=f"3. cut into chunks\nof {chunk_size}", ja=f"3. {chunk_size}個ずつの\nチャンクに切る"),
    ]
    for row, step in enumerate(steps):
        y = -row * 1.6
        top.text(-0.6, y + 0.5, in_language(step, lang), ha="right", va="center", fontsize=FONT_SIZE - 2)
        for place in range(N_pad if row else N):
            token = order[place] if row else place
            gid = f"token {token}" if row == 0 else (f"slot {place},{token}" if row == 1 else None)
            x = place + (place // chunk_size) * 0.4 * (row == 2)  # step 3: gaps between chunks
            top.add_patch(Rectangle((x, y), 0.9, 1, linewidth=0.8, gid=gid, **_bucket_style(buckets[token], n_buckets)))
            if token < N:
                top.text(x + 0.45, y + 0.5, str(token), ha="center", va="center", fontsize=FONT_SIZE - 5,
                         bbox=dict(boxstyle="square,pad=0.05", facecolor="white", edgecolor="none"))  # fmt: skip
    for c in range(layout.n_chunks):
        x0 = c * (chunk_size + 0.4)
        top.add_patch(Rectangle((x0 - 0.1, -3.2 - 0.1), chunk_size - 0.1 + 0.2, 1.2, fill=False, edgecolor="black",
                                linewidth=1.6, gid=f"chunk {c}"))  # fmt: skip
    top.set_xlim(-0.5, N_pad + 0.4 * layout.n_chunks)
    top.set_ylim(-3.5, 1.2)
    top.set_axis_off()
    legend = text(
        en=f"N = {N} tokens, {n_buckets} buckets, seed {seed}; numbers: token positions",
        ja=f"N = {N}トークン、{n_buckets}バケット、シード{seed}。数字はトークンの位置",
    )
    top.set_title(in_language(legend, lang), fontsize=FONT_SIZE - 2)
    for i in range(N):  # query token i in row slot_of[i], key token j in column slot_of[j]
        for j in range(N):
            if pattern[i, j]:
                bottom.add_patch(Rectangle((slot_of[j], slot_of[i]), 1, 1, linewidth=0.4, gid=f"pair {i},{j}",
                                           **_bucket_style(buckets[i], n_buckets)))  # fmt: skip
    for boundary in layout.chunk_boundaries:
        bottom.axhline(boundary, color="black", linewidth=1.2)
        bottom.axvline(boundary, color="black", linewidth=1.2)
    bottom.set_xlim(0, N_pad)
    bottom.set_ylim(N_pad, 0)
    bottom.set_aspect("equal")
    ticks = [c * chunk_size + chunk_size / 2 for c in range(layout.n_chunks)]
    bottom.set_xticks(ticks, [str(c) for c in range(layout.n_chunks)], fontsize=FONT_SIZE - 3)
    bottom.set_yticks(ticks, [str(c) for c in range(layout.n_chunks)], fontsize=FONT_SIZE - 3)
    bottom.set_xlabel(in_language(text(en="key chunks (sorted order)", ja="キーのチャンク（並べ替えた順）"), lang),
                      fontsize=FONT_SIZE - 2)  # fmt: skip
    bottom.set_ylabel(in_language(text(en="query chunks", ja="クエリのチャンク"), lang), fontsize=FONT_SIZE - 2)
    bottom.set_title(
        in_language(text(en="4. attend: same bucket, in its chunk or the one before",
                         ja="4. 注目：同じバケットで、自分のチャンクか一つ前のチャンク"), lang),
        fontsize=FONT_SIZE - 1,
    )  # fmt: skip
    figure.subplots_adjust(left=0.22, right=0.98, top=0.95, bottom=0.06, hspace=0.25)
    return figure
