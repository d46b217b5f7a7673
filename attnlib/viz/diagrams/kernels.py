"""Schematics of the kernel chapters: FlashAttention's memory and tiles, and shared key/value heads.

* :func:`memory_hierarchy` - the GPU's memories with FA-1's numbers for an A100 (its Fig. 1, left).
* :func:`flash_tile_loops` - the tiles of the score matrix in the order FA-1 and FA-2 visit them.
* :func:`attention_heads` - multi-head, grouped-query and multi-query attention (the GQA paper, Fig. 2).
* :func:`kv_cache_decoding` - the KV cache filling up: the prefill, then one token per decoding step.

The drawings come from the same code as the library: :func:`tile_schedule` is the loop order of
:func:`attnlib.optim.flash.tiled_attention_forward` (FA-2's order) and of its backward pass (the
order of FA-1's forward pass), and :func:`kv_head_of` is the map of
:func:`attnlib.reference.expand_kv_heads`. Every drawn tile and head link carries a ``gid``
(``"tile i,j"``, ``"link h,g"``) so that tests can read the figure back.

Chapters: "FlashAttention" (chapters/*/10_flash_attention.ipynb) and "Falcon" (12_falcon.ipynb).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..._checks import check_flag, check_positive_int
from ...optim.flash import A100_SHARED_MEMORY_PER_BLOCK_BYTES
from .. import CATEGORY_COLORS
from .._text import check_language, in_language, text
from ._common import new_figure, score_matrix_axes

__all__ = [
    "MemoryLevel",
    "MEMORY_HIERARCHY",
    "SHARED_MEMORY_PER_BLOCK_BYTES",
    "memory_hierarchy",
    "tile_schedule",
    "flash_tile_loops",
    "kv_head_of",
    "attention_heads",
    "cache_schedule",
    "kv_cache_decoding",
]

FONT_SIZE = 12  # readable when a 6-inch figure shrinks to a phone's column


class MemoryLevel(NamedTuple):
    """One level of the memory hierarchy: its name, bandwidth (bytes/s) and size (bytes)."""

    name: object  # a viz.text
    bandwidth: float
    size: float
    at_least: bool = False  # the size is a lower bound ("> 1 TB")


# FA-1 (Dao et al. 2022, arXiv:2205.14135), Fig. 1 left, for an A100 40GB: SRAM 19 TB/s (20 MB),
# HBM 1.5 TB/s (40 GB), main memory (CPU DRAM) 12.8 GB/s (> 1 TB). Decimal units, as in the paper;
# the 20 MB of SRAM are the 108 SMs' 192 KB of L1 cache and shared memory together.
MEMORY_HIERARCHY = (
    MemoryLevel(text(en="GPU SRAM (on chip)", ja="GPUのSRAM（チップ上）"), 19e12, 20e6),
    MemoryLevel(text(en="GPU HBM", ja="GPUの高帯域メモリ (HBM)"), 1.5e12, 40e9),
    MemoryLevel(text(en="CPU DRAM (main memory)", ja="CPUのDRAM（主記憶）"), 12.8e9, 1e12, at_least=True),
)
# The SRAM of the book's traffic model (chapter 10): one constant, with its source, in attnlib.optim.flash.
SHARED_MEMORY_PER_BLOCK_BYTES = A100_SHARED_MEMORY_PER_BLOCK_BYTES


def _bytes_label(size: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size / 1e3:g} KB"


def _rate_label(bandwidth: float) -> str:
    unit, scale = ("TB/s", 1e12) if bandwidth >= 1e12 else ("GB/s", 1e9)
    return f"{bandwidth / scale:g} {unit}"


def memory_hierarchy(*, lang: str = "en"):
    """The GPU's memories as a pyramid: fast and small on top, with FA-1's A100 numbers; returns the Figure.

    Each level is labelled with its bandwidth and size from :data:`MEMORY_HIERARCHY`; the SRAM level
    also names :data:`SHARED_MEMORY_PER_BLOCK_BYTES`, what one thread block may use of it.
    """
    from matplotlib.patches import Polygon

    check_language(lang)
    figure, (ax,) = new_figure(6.0, 3.4)
    colors = [CATEGORY_COLORS[2], CATEGORY_COLORS[1], CATEGORY_COLORS[9]]  # orange, blue, grey
    hatches = ["", "//", ".."]  # a second cue besides the colour (greyscale prints)
    levels = len(MEMORY_HIERARCHY)
    for index, level in enumerate(MEMORY_HIERARCHY):
        top, bottom = levels - index, levels - index - 1  # the fastest level on top
        half_top, half_bottom = 0.15 + 0.28 * index, 0.15 + 0.28 * (index + 1)
        corners = [(-half_bottom, bottom), (half_bottom, bottom), (half_top, top - 0.06), (-half_top, top - 0.06)]
        ax.add_patch(
            Polygon(corners, closed=True, facecolor=colors[index], edgecolor="black", hatch=hatches[index],
                    linewidth=1, gid=f"level {index}")
        )  # fmt: skip
        lines = [
            in_language(level.name, lang),
            f"{_rate_label(level.bandwidth)} ({'> ' if level.at_least else ''}{_bytes_label(level.size)})",
        ]
        if index == 0:
            kib = SHARED_MEMORY_PER_BLOCK_BYTES // 1024
            lines.append(
                in_language(
                    text(en=f"one thread block: up to {kib} KiB", ja=f"スレッドブロック1個あたり{kib} KiBまで"), lang
                )
            )
        ax.text(1.05, bottom + 0.47, "\n".join(lines), va="center", ha="left", fontsize=FONT_SIZE)
    ax.annotate(
        "", xy=(-1.05, levels - 0.1), xytext=(-1.05, 0.1),
        arrowprops=dict(arrowstyle="->", color="black", linewidth=1.2),
    )  # fmt: skip
    ax.text(
        -1.15, levels / 2, in_language(text(en="faster, smaller", ja="速く、小さい"), lang),
        rotation=90, va="center", ha="right", fontsize=FONT_SIZE,
    )  # fmt: skip
    ax.set_xlim(-1.5, 3.2)
    ax.set_ylim(-0.05, levels + 0.05)
    ax.set_axis_off()
    ax.set_title(
        in_language(text(en="Memory of an A100 GPU (FlashAttention paper, Fig. 1)",
                         ja="A100 GPUのメモリ（FlashAttentionの論文のFig. 1）"), lang),
        fontsize=FONT_SIZE,
    )  # fmt: skip
    return figure


def _check_tiles(N: int, block_q: int, block_k: int) -> None:
    check_positive_int("N", N)
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    rows, cols = math.ceil(N / block_q), math.ceil(N / block_k)
    if rows * cols > 64:
        raise ValueError(
            f"N / block_q times N / block_k must be at most 64 tiles to draw, got {rows} x {cols} "
            f"(N={N}, block_q={block_q}, block_k={block_k}): use larger blocks or a smaller N"
        )


def tile_schedule(N: int, block_q: int, block_k: int, *, version: int = 2, causal: bool = False) -> list[tuple]:
    """The ``(i, j)`` tiles of an ``N x N`` score matrix in the order FA-``version`` visits them.

    Tile ``(i, j)`` holds queries ``i * block_q ...`` and keys ``j * block_k ...`` (the last ones
    shorter). FA-2 (``version=2``, :func:`attnlib.optim.flash.tiled_attention_forward`): query
    blocks outside, key blocks inside. FA-1 (``version=1``, its Algorithm 1, and the order of the
    library's backward pass): key blocks outside, query blocks inside. With ``causal``, tiles that
    no query of the tile may see (every key after every query) are skipped, as the library does.
    """
    check_positive_int("N", N)
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    check_flag("causal", causal)
    if version not in (1, 2):
        raise ValueError(f"version must be 1 (FA-1's loop order) or 2 (FA-2's), got {version!r}")
    rows, cols = range(math.ceil(N / block_q)), range(math.ceil(N / block_k))

    def visited(i: int, j: int) -> bool:  # the last query of the tile sees the first key
        return not causal or j * block_k <= min(N, (i + 1) * block_q) - 1

    if version == 2:
        return [(i, j) for i in rows for j in cols if visited(i, j)]
    return [(i, j) for j in cols for i in rows if visited(i, j)]


def flash_tile_loops(N: int, block_q: int, block_k: int, *, causal: bool = False, lang: str = "en"):
    """FA-1's and FA-2's loops over the tiles of the ``N x N`` scores, side by side; returns the Figure.

    Each tile is numbered in the order it is computed (:func:`tile_schedule`) and coloured by the
    outer loop's block: FA-1 walks down one column of key tiles while ``K_j, V_j`` stay on chip,
    FA-2 along one row of query tiles while ``Q_i`` stays. Skipped tiles (``causal``) are blank.
    """
    from matplotlib.patches import Rectangle

    check_language(lang)
    _check_tiles(N, block_q, block_k)
    check_flag("causal", causal)
    figure, axes = new_figure(6.6, 3.9, columns=2)
    palette = [CATEGORY_COLORS[index] for index in (5, 2, 3, 4, 7, 6, 1)]
    titles = {
        1: text(en="FA-1: outer loop over\nK, V blocks (columns)", ja="FA-1：外側のループは\nK, Vのブロック（列）"),
        2: text(en="FA-2: outer loop over\nQ blocks (rows)", ja="FA-2：外側のループは\nQのブロック（行）"),
    }
    for ax, version in zip(axes, (1, 2)):
        order = tile_schedule(N, block_q, block_k, version=version, causal=causal)
        step_of = {tile: step for step, tile in enumerate(order, start=1)}
        for i in range(math.ceil(N / block_q)):
            for j in range(math.ceil(N / block_k)):
                x0, y0 = j * block_k, i * block_q
                width, height = min(block_k, N - x0), min(block_q, N - y0)
                if (i, j) not in step_of:
                    ax.add_patch(Rectangle((x0, y0), width, height, facecolor="white", edgecolor="0.6",
                                           linewidth=0.8, linestyle=":"))  # fmt: skip
                    continue
                outer = j if version == 1 else i
                ax.add_patch(
                    Rectangle((x0, y0), width, height, facecolor=palette[outer % len(palette)], edgecolor="black",
                              linewidth=1, hatch="//" if outer % 2 else "", gid=f"tile {i},{j}")
                )  # fmt: skip
                ax.text(x0 + width / 2, y0 + height / 2, str(step_of[(i, j)]), ha="center", va="center",
                        fontsize=FONT_SIZE - 1,
                        bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none"))  # fmt: skip
        score_matrix_axes(
            ax, N, N, block_q, block_k, lang=lang, font_size=FONT_SIZE,
            xlabel=text(en=f"keys (B_c = {block_k})", ja=f"キー（B_c = {block_k}）"),
            ylabel=text(en=f"queries (B_r = {block_q})", ja=f"クエリ（B_r = {block_q}）"),
        )  # fmt: skip
        ax.set_title(in_language(titles[version], lang), fontsize=FONT_SIZE, y=-0.2, va="top")
    note = text(en=f"N = {N}; numbers: the order in which tiles are computed",
                ja=f"N = {N}。数字はタイルを計算する順番")  # fmt: skip
    if causal:
        note += text(en="; blank: skipped (causal mask)", ja="。空白は因果マスクでスキップ")
    figure.text(0.5, -0.1, in_language(note, lang), ha="center", va="top", fontsize=FONT_SIZE - 2)
    figure.subplots_adjust(wspace=0.35)
    return figure


def kv_head_of(n_heads: int, n_kv_heads: int) -> list[int]:
    """The key/value head that each query head reads: ``h // (n_heads // n_kv_heads)``.

    The map of :func:`attnlib.reference.expand_kv_heads`, of the grouped tiles of
    :mod:`attnlib.optim.flash` and of :mod:`attnlib.models.falcon`'s grouped layout.
    """
    check_positive_int("n_heads", n_heads)
    check_positive_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads:
        raise ValueError(
            f"n_heads must be divisible by n_kv_heads (each key/value head serves n_heads / n_kv_heads "
            f"query heads), got n_heads={n_heads}, n_kv_heads={n_kv_heads}"
        )
    group = n_heads // n_kv_heads
    return [h // group for h in range(n_heads)]


def attention_heads(n_heads: int, n_kv_heads: int, *, lang: str = "en"):
    """Multi-head, grouped-query (``n_kv_heads``) and multi-query attention, as in the GQA paper's Fig. 2.

    Three panels of ``n_heads`` query heads (bottom) linked to the key/value heads they read (top),
    one colour (and hatch) per group; returns the Figure. Each link has ``gid="link h,g"``.
    """
    from matplotlib.patches import Rectangle

    check_language(lang)
    kv_head_of(n_heads, n_kv_heads)  # checks the arguments
    if n_heads > 16:
        raise ValueError(f"n_heads must be at most 16 to draw the heads apart, got {n_heads}")
    panels = [
        (text(en="Multi-head", ja="マルチヘッド"), n_heads),
        (
            text(en=f"Grouped-query\n({n_kv_heads} groups)", ja=f"グループ化クエリ\n（{n_kv_heads}グループ）"),
            n_kv_heads,
        ),
        (text(en="Multi-query", ja="マルチクエリ"), 1),
    ]
    figure, axes = new_figure(6.6, 3.0, columns=3)
    palette = [CATEGORY_COLORS[index] for index in (1, 2, 3, 4, 5, 6, 7)]
    hatches = ["", "//", "..", "xx", "\\\\", "++", "oo"]
    box = 0.8  # width of a head's box, in query-head slots
    for ax, (title, kv_heads) in zip(axes, panels):
        heads = kv_head_of(n_heads, kv_heads)
        group = n_heads // kv_heads
        for g in range(kv_heads):  # key/value heads centred over their query heads
            x = g * group + (group - 1) / 2
            style = dict(facecolor=palette[g % 7], hatch=hatches[g % 7], edgecolor="black", linewidth=1)
            ax.add_patch(Rectangle((x - box / 2, 2.0), box, 0.45, gid=f"value {g}", **style))
            ax.add_patch(Rectangle((x - box / 2, 2.55), box, 0.45, gid=f"key {g}", **style))
        for h, g in enumerate(heads):
            style = dict(facecolor=palette[g % 7], hatch=hatches[g % 7], edgecolor="black", linewidth=1)
            ax.add_patch(Rectangle((h - box / 2, 0.0), box, 0.45, gid=f"query {h}", **style))
            ax.plot([h, g * group + (group - 1) / 2], [0.45, 2.0], color="black", linewidth=1, gid=f"link {h},{g}")
        ax.text(-0.7, 2.775, "K", ha="right", va="center", fontsize=FONT_SIZE - 1)
        ax.text(-0.7, 2.225, "V", ha="right", va="center", fontsize=FONT_SIZE - 1)
        ax.text(-0.7, 0.225, "Q", ha="right", va="center", fontsize=FONT_SIZE - 1)
        ax.set_xlim(-1.3, n_heads - 0.4)
        ax.set_ylim(-0.1, 3.1)
        ax.set_axis_off()
        ax.set_title(in_language(title, lang), fontsize=FONT_SIZE, va="bottom")
    note = text(
        en=f"{n_heads} query heads (Q) each read one key/value head (K, V)",
        ja=f"{n_heads}個のクエリヘッド (Q) がそれぞれ一つのキー・バリューヘッド (K, V) を読む",
    )
    figure.text(0.5, 0.02, in_language(note, lang), ha="center", va="top", fontsize=FONT_SIZE - 1)
    return figure


def cache_schedule(prompt_tokens: int, new_tokens: int) -> list[tuple[int, int]]:
    """The cache positions ``(start, stop)`` each forward pass writes: the prefill, then one per decoding step.

    The prefill writes the prompt's ``prompt_tokens`` keys and values at once; each of the
    ``new_tokens`` decoding steps feeds one token and appends its key and value
    (:class:`attnlib.models.falcon.KVCache`).
    """
    check_positive_int("prompt_tokens", prompt_tokens)
    check_positive_int("new_tokens", new_tokens)
    return [(0, prompt_tokens)] + [(prompt_tokens + s, prompt_tokens + s + 1) for s in range(new_tokens)]


def kv_cache_decoding(prompt_tokens: int, new_tokens: int, *, lang: str = "en"):
    """The KV cache filling up: one row per forward pass (prefill, then decoding steps); returns the Figure.

    Each row shows the cache slots already filled, the ones the pass writes (:func:`cache_schedule`)
    and the empty ones; the pass's queries attend to every filled slot. Written cells carry
    ``gid="write s,p"`` (pass ``s``, position ``p``).
    """
    from matplotlib.patches import Patch, Rectangle

    check_language(lang)
    schedule = cache_schedule(prompt_tokens, new_tokens)
    slots = prompt_tokens + new_tokens
    if slots > 24 or new_tokens > 8:
        raise ValueError(
            f"prompt_tokens + new_tokens must be at most 24 and new_tokens at most 8 to draw, got "
            f"prompt_tokens={prompt_tokens}, new_tokens={new_tokens}"
        )
    figure, (ax,) = new_figure(6.0, 0.9 + 0.42 * len(schedule))
    kinds = [  # colour, hatch, label
        (CATEGORY_COLORS[1], "", text(en="cached earlier", ja="キャッシュ済み")),
        (CATEGORY_COLORS[2], "//", text(en="written in this pass", ja="この順伝播で書き込む")),
        ("white", "", text(en="empty", ja="空き")),
    ]
    for row, (start, stop) in enumerate(schedule):
        for position in range(slots):
            kind = 0 if position < start else 1 if position < stop else 2
            color, hatch, _ = kinds[kind]
            gid = f"write {row},{position}" if kind == 1 else None
            ax.add_patch(
                Rectangle((position, row), 1, 0.8, facecolor=color, hatch=hatch, gid=gid,
                          edgecolor="black" if kind < 2 else "0.6", linewidth=0.8)
            )  # fmt: skip
        queries = stop - start
        reads = text(en=f"{queries} × {stop}", ja=f"{queries} × {stop}")
        ax.text(slots + 0.3, row + 0.4, in_language(reads, lang), va="center", ha="left", fontsize=FONT_SIZE - 2)
    labels = [text(en="prefill", ja="プリフィル")]
    labels += [text(en=f"step {s}", ja=f"ステップ{s}") for s in range(1, new_tokens + 1)]
    ax.set_yticks([row + 0.4 for row in range(len(schedule))], [in_language(label, lang) for label in labels])
    ax.set_xticks([p + 0.5 for p in range(slots)], [str(p) for p in range(slots)])
    ax.tick_params(length=0, labelsize=FONT_SIZE - 3)
    ax.set_xlim(0, slots + 2.2)
    ax.set_ylim(len(schedule), -0.2)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel(
        in_language(text(en="cache position (token)", ja="キャッシュの位置（トークン）"), lang), fontsize=FONT_SIZE - 1
    )
    ax.set_title(
        in_language(text(en="KV cache during decoding (queries × keys per forward pass)",
                         ja="デコード中のKVキャッシュ（順伝播ごとのクエリ数 × キー数）"), lang),
        fontsize=FONT_SIZE,
    )  # fmt: skip
    handles = [Patch(facecolor=c, hatch=h, edgecolor="black", label=in_language(name, lang)) for c, h, name in kinds]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.45, -0.15 - 0.5 / len(schedule)), ncol=3,
              frameon=False, fontsize=FONT_SIZE - 2)  # fmt: skip
    return figure
