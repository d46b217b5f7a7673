"""Schematics of the kernel chapters: FlashAttention's memory and tiles, and shared key/value heads.

* :func:`memory_hierarchy` - the GPU's memories with FA-1's numbers for an A100 (its Fig. 1, left).
* :func:`flash_tile_loops` - the tiles of the score matrix in the order FA-1 and FA-2 visit them.
* :func:`attention_heads` - multi-head, grouped-query and multi-query attention (the GQA paper, Fig. 2).
* :func:`kv_cache_decoding` - the KV cache filling up: the prefill, then one token per decoding step;
  :func:`kv_cache_slider` the same as a plotly slider, one forward pass per step.
* :func:`row_block_slider` - FA-2's inner loop for one query block, step by step (a plotly slider),
  with the running max ``m`` and sum ``l`` of :func:`attnlib.optim.flash.online_softmax` after each tile.
* :func:`triton_program` - one program of the Triton forward kernel: its query block, the key tiles
  it streams (where its loop ends), what stays on chip and what goes back to HBM.
* :func:`decoder_blocks` - the sequential decoder block beside Falcon's parallel one.

The drawings come from the same code as the library: :func:`tile_schedule` is the loop order of
:func:`attnlib.optim.flash.tiled_attention_forward` (FA-2's order) and of its backward pass (the
order of FA-1's forward pass), and :func:`kv_head_of` is the map of
:func:`attnlib.reference.expand_kv_heads`. Every drawn tile and head link carries a ``gid``
(``"tile i,j"``, ``"link h,g"``) so that tests can read the figure back.

The Triton program's tiles follow the rule of :mod:`attnlib.optim.flash_triton`'s ``_key_range``
(:func:`program_tiles`), its tile sizes are that module's ``kernel_config``, and the decoder block is
read from :class:`attnlib.models.falcon.FalconDecoderLayer` (:func:`decoder_block_graph`).

Chapters: "FlashAttention" (chapters/*/10_flash_attention.ipynb), "FlashAttention in Triton"
(11_flash_triton.ipynb) and "Falcon" (12_falcon.ipynb).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

from ..._checks import check_flag, check_positive_int
from ...optim.flash import A100_SHARED_MEMORY_PER_BLOCK_BYTES
from .. import CATEGORY_COLORS
from .._text import check_language, in_language, text
from ._common import new_figure, score_matrix_axes

if TYPE_CHECKING:
    import torch

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
    "CACHE_CATEGORIES",
    "kv_cache_frames",
    "kv_cache_slider",
    "ROW_BLOCK_CATEGORIES",
    "RowBlockStep",
    "row_block_steps",
    "row_block_frames",
    "row_block_slider",
    "ProgramTiles",
    "forward_grid",
    "program_tiles",
    "triton_program",
    "decoder_block_graph",
    "decoder_blocks",
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


# ---------------------------------------------------------------- FlashAttention: one query block, step by step

# the values of row_block_frames, index = value (the colours of chapter 10's tile-by-tile figure)
ROW_BLOCK_CATEGORIES = (
    text(en="not read yet", ja="未読"),
    text(en="read earlier", ja="読み終えた"),
    text(en="read now", ja="いま読む"),
    text(en="never read", ja="読まない"),
    text(en="read, masked (-inf)", ja="読むがマスク (-inf)"),
)
NOT_READ, READ_EARLIER, READ_NOW, NEVER_READ, READ_MASKED = range(5)


class RowBlockStep(NamedTuple):
    """The state of one query block after one key tile of FA-2's inner loop."""

    tile: int  # key tile j
    start: int  # its first key
    stop: int  # one past its last key (the library cuts the last tile where the causal mask ends)
    row_max: tuple[float, ...]  # m of each query row of the block, after the tile
    row_sum: tuple[float, ...]  # l of each query row, relative to m


def _check_matrix(name: str, x) -> torch.Tensor:
    import torch

    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point() or 0 in x.shape:
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty 2-D floating tensor (tokens, d), got {got}")
    return x.detach().cpu().double()


def _row_block_scores(q, k, block_q: int, row_block: int, causal: bool, scale):
    """The block's scaled scores (float64, -inf where causal hides a key), its first row and keys_stop."""
    import torch

    q, k = _check_matrix("q", q), _check_matrix("k", k)
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must have the same feature dimension d, got {q.shape[1]} and {k.shape[1]}")
    check_positive_int("block_q", block_q)
    check_flag("causal", causal)
    N_q, N_k = q.shape[0], k.shape[0]
    blocks = math.ceil(N_q / block_q)
    if isinstance(row_block, bool) or not isinstance(row_block, int) or not 0 <= row_block < blocks:
        raise ValueError(f"row_block must be an int in [0, {blocks}) (N_q / block_q query blocks), got {row_block!r}")
    scale = 1 / math.sqrt(q.shape[1]) if scale is None else float(scale)
    q_start, q_stop = row_block * block_q, min((row_block + 1) * block_q, N_q)
    scores = (q[q_start:q_stop] * scale) @ k.T  # (B_r, N_k)
    offset = N_k - N_q  # causal: query i sees key j <= i + offset
    keys_stop = N_k
    if causal:
        hidden = torch.arange(N_k)[None, :] > torch.arange(q_start, q_stop)[:, None] + offset  # (B_r, N_k)
        scores = scores.masked_fill(hidden, float("-inf"))
        keys_stop = max(0, min(N_k, q_stop + offset))  # no query of the block sees a later key
    return scores, q_start, keys_stop


def row_block_steps(q, k, block_q: int, block_k: int, row_block: int, *, causal: bool = False,
                    scale=None) -> list[RowBlockStep]:  # fmt: skip
    """FA-2's inner loop for query block ``row_block``: ``m`` and ``l`` of its rows after each key tile.

    ``q: (N_q, d)``, ``k: (N_k, d)`` (one head; computed in float64). The key tiles are those
    :func:`attnlib.optim.flash.tiled_attention_forward` reads (with ``causal``, the loop stops after
    the last key that a query of the block sees), and the running statistics are
    :func:`attnlib.optim.flash.online_softmax`'s over them: after the last tile ``m`` is each row's
    max and ``l`` the sum of ``exp(s - m)``.
    """
    from ...optim import flash

    check_positive_int("block_k", block_k)
    scores, _, keys_stop = _row_block_scores(q, k, block_q, row_block, causal, scale)
    if keys_stop == 0:  # no query of the block sees a key: the loop reads nothing
        return []
    _, trace = flash.online_softmax(scores[:, :keys_stop], block_k)
    return [
        RowBlockStep(step.start // block_k, step.start, step.stop, tuple(step.row_max.tolist()),
                     tuple(step.row_sum.tolist()))
        for step in trace
    ]  # fmt: skip


def row_block_frames(q, k, block_q: int, block_k: int, row_block: int, *, causal: bool = False,
                     scale=None) -> list[list[list[int]]]:  # fmt: skip
    """``(B_r, N_k)`` frames of :data:`ROW_BLOCK_CATEGORIES`: before the loop, then after each key tile.

    A key that no query of the block may see and that the loop never loads is ``NEVER_READ``; one
    hidden by the causal mask inside a tile that is read is ``READ_MASKED`` once read.
    """
    steps = row_block_steps(q, k, block_q, block_k, row_block, causal=causal, scale=scale)
    scores, _, keys_stop = _row_block_scores(q, k, block_q, row_block, causal, scale)
    rows, N_k = scores.shape
    hidden = (scores == float("-inf")).tolist()
    frames = [[[NOT_READ if j < keys_stop else NEVER_READ for j in range(N_k)] for _ in range(rows)]]
    for step in steps:
        frame = [list(row) for row in frames[-1]]
        for i in range(rows):
            for j in range(N_k):
                if frame[i][j] == READ_NOW:
                    frame[i][j] = READ_EARLIER
                if step.start <= j < step.stop:
                    frame[i][j] = READ_MASKED if hidden[i][j] else READ_NOW
        frames.append(frame)
    return frames


def _numbers(values, digits: int) -> str:
    return "(" + ", ".join("-inf" if v == float("-inf") else f"{v:.{digits}f}" for v in values) + ")"


def row_block_slider(q, k, block_q: int, block_k: int, row_block: int, *, causal: bool = False, scale=None,
                     digits: int = 2):  # fmt: skip
    """A plotly slider over FA-2's inner loop for one query block; returns the figure (``viz.show_plotly``).

    Frame 0 is the block before the loop; frame ``s`` shows the key tile read at step ``s`` and,
    in its title, ``m`` and ``l`` of every row of the block after it (:func:`row_block_steps`,
    rounded to ``digits`` decimals). The block has at most 8 rows.
    """
    from .. import slider_heatmap

    check_positive_int("digits", digits)
    frames = row_block_frames(q, k, block_q, block_k, row_block, causal=causal, scale=scale)
    steps = row_block_steps(q, k, block_q, block_k, row_block, causal=causal, scale=scale)
    _, q_start, _ = _row_block_scores(q, k, block_q, row_block, causal, scale)
    rows, N_k = len(frames[0]), len(frames[0][0])
    if rows > 8 or N_k > 64:
        raise ValueError(f"the block must have at most 8 query rows and 64 keys to draw, got {rows} x {N_k}")
    count = len(steps)
    titles = [text(en=f"before the loop: m = -inf, l = 0 in every row (rows {q_start}..{q_start + rows - 1})",
                   ja=f"ループの前：どの行も m = -inf, l = 0（行{q_start}〜{q_start + rows - 1}）")]  # fmt: skip
    for n, step in enumerate(steps, start=1):
        numbers = f"m = {_numbers(step.row_max, digits)}<br>l = {_numbers(step.row_sum, digits)}"
        keys = f"{step.start}..{step.stop - 1}"
        titles.append(text(en=f"step {n}/{count}: key tile {step.tile} (keys {keys})<br>{numbers}",
                           ja=f"ステップ{n}/{count}：キーのタイル{step.tile}（キー{keys}）<br>{numbers}"))  # fmt: skip
    every = max(1, block_k)
    return slider_heatmap(
        frames, [str(n) for n in range(len(frames))], titles=titles,
        categories=list(ROW_BLOCK_CATEGORIES),
        x_ticks=[str(j) if j % every == 0 else "" for j in range(N_k)],
        y_ticks=[str(q_start + i) for i in range(rows)],
        xlabel=text(en="key", ja="キー"), ylabel=text(en="query", ja="クエリ"),
        slider_prefix=text(en="step ", ja="ステップ "), size=520, height=round(520 * rows / N_k) + 300,
        grid=block_k if block_k < N_k else None,
    )  # fmt: skip


# ---------------------------------------------------------------- the Triton kernel: one program's tiles


class ProgramTiles(NamedTuple):
    """What one program of the Triton forward kernel covers (tiles as indices of key tiles)."""

    rows: range  # the query rows it owns: program_id(0) * BLOCK_M ...
    unmasked: range  # key tiles of its first stage (no mask)
    masked: range  # key tiles of its second stage (causal diagonal, ragged last tile)
    skipped: range  # key tiles it never loads


def forward_grid(N_q: int, batch_heads: int, block_m: int) -> tuple[int, int]:
    """The launch grid of :func:`attnlib.optim.flash_triton.flash_forward`: ``(ceil(N_q / BLOCK_M), B * H)``."""
    check_positive_int("N_q", N_q)
    check_positive_int("batch_heads", batch_heads)
    check_positive_int("block_m", block_m)
    return math.ceil(N_q / block_m), batch_heads


def program_tiles(N_q: int, N_k: int, block_m: int, block_n: int, program: int, *,
                  causal: bool = False) -> ProgramTiles:  # fmt: skip
    """The rows and key tiles of program ``program`` (its ``tl.program_id(0)``) of the forward kernel.

    The rule of the kernel's ``_key_range``: keys ``[0, n_full)`` in whole tiles that every query
    of the block sees (no mask), then the tiles up to ``n_hi``, the last key some query of the block
    sees (masked: the causal diagonal, the ragged last tile); tiles from ``n_hi`` on are skipped.
    """
    for name, value in (("N_q", N_q), ("N_k", N_k), ("block_m", block_m), ("block_n", block_n)):
        check_positive_int(name, value)
    check_flag("causal", causal)
    programs = math.ceil(N_q / block_m)
    if isinstance(program, bool) or not isinstance(program, int) or not 0 <= program < programs:
        raise ValueError(f"program must be an int in [0, {programs}) (ceil(N_q / block_m) programs), got {program!r}")
    start_m = program * block_m
    if causal:
        offset = N_k - N_q  # query i sees key j <= i + offset
        n_full = min(max(start_m + offset + 1, 0), N_k)
        n_hi = min(max(min(start_m + block_m, N_q) + offset, 0), N_k)
    else:
        n_full = n_hi = N_k
    first_masked = n_full // block_n  # whole tiles only
    stop = max(first_masked, math.ceil(n_hi / block_n))
    return ProgramTiles(
        range(start_m, min(start_m + block_m, N_q)), range(first_masked), range(first_masked, stop),
        range(stop, math.ceil(N_k / block_n)),
    )  # fmt: skip


_DTYPE_NAMES = {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}


def triton_program(N: int, *, head_dim: int, dtype, capability, program: int, causal: bool = False,
                   lang: str = "en"):  # fmt: skip
    """One program of the Triton forward kernel: its query block, the key tiles it streams, its memory.

    Top: the ``N x N`` scores in the tiles of ``kernel_config("forward", head_dim, dtype, capability)``
    (:mod:`attnlib.optim.flash_triton`), the program's row block with its key tiles numbered in
    loop order (:func:`program_tiles`), and where its loop ends. Bottom: what stays on chip for the
    whole loop (``Q_i``, the accumulator, ``m`` and ``l`` in registers; the streamed ``K_j, V_j``
    in shared memory, ``num_stages`` buffers) and what goes back to HBM (``O_i`` and ``L_i``).
    Tiles carry ``gid="tile i,j,KIND"``. Needs Triton (imported here).
    """
    from matplotlib.patches import FancyArrowPatch, Patch, Rectangle

    from ...optim import flash_triton

    check_language(lang)
    check_positive_int("N", N)
    config = flash_triton.kernel_config("forward", head_dim, dtype, capability)
    block_m, block_n = config.block_m, config.block_n
    tiles = program_tiles(N, N, block_m, block_n, program, causal=causal)
    T_q, T_k = forward_grid(N, 1, block_m)[0], math.ceil(N / block_n)
    if T_q * T_k > 256:
        raise ValueError(f"N must give at most 256 tiles to draw, got {T_q} x {T_k} (N={N}, tiles "
                         f"{block_m} x {block_n})")  # fmt: skip
    figure, (ax, chip) = new_figure(6.4, 8.6, rows=2, height_ratios=[1.2, 1])
    styles = {  # colour, hatch, edge, label
        "unmasked": (CATEGORY_COLORS[1], "", "black", text(en="loaded, no mask", ja="読み込む（マスクなし）")),
        "masked": (CATEGORY_COLORS[2], "//", "black", text(en="loaded, masked", ja="読み込む（マスクあり）")),
        "skipped": ("white", "", "0.5", text(en="never loaded", ja="読み込まない")),
        "other": ("0.9", "", "0.7", text(en="other programs' rows", ja="ほかのプログラムの行")),
    }
    kind_of = {j: "unmasked" for j in tiles.unmasked} | {j: "masked" for j in tiles.masked}
    order = {j: n for n, j in enumerate(list(tiles.unmasked) + list(tiles.masked), start=1)}
    for i in range(T_q):
        for j in range(T_k):
            kind = kind_of.get(j, "skipped") if i == program else "other"
            color, hatch, edge, _ = styles[kind]
            x0, y0 = j * block_n, i * block_m
            width, height = min(block_n, N - x0), min(block_m, N - y0)
            ax.add_patch(Rectangle((x0, y0), width, height, facecolor=color, hatch=hatch, edgecolor=edge,
                                   linewidth=0.8, linestyle=":" if kind == "skipped" else "-",
                                   gid=f"tile {i},{j},{kind}" if i == program else None))  # fmt: skip
            if i == program and j in order:
                ax.text(x0 + width / 2, y0 + height / 2, str(order[j]), ha="center", va="center",
                        fontsize=FONT_SIZE - 2,
                        bbox=dict(boxstyle="round,pad=0.1", facecolor="white", edgecolor="none"))  # fmt: skip
    end = (tiles.masked.stop if len(tiles.masked) else tiles.unmasked.stop) * block_n
    row0, row1 = tiles.rows.start, tiles.rows.stop
    ax.plot([min(end, N)] * 2, [row0 - 0.15 * block_m, row1 + 0.15 * block_m], color=CATEGORY_COLORS[6],
            linewidth=2.5)  # fmt: skip
    ax.text(min(end, N), row0 - 0.17 * block_m,
            in_language(text(en="the loop ends", ja="ループの終わり"), lang),
            ha="center", va="bottom", fontsize=FONT_SIZE - 2, color=CATEGORY_COLORS[6])  # fmt: skip
    score_matrix_axes(
        ax, N, N, block_m, block_n, lang=lang, font_size=FONT_SIZE,
        xlabel=text(en=f"keys (BLOCK_N = {block_n})", ja=f"キー（BLOCK_N = {block_n}）"),
        ylabel=text(en=f"queries (BLOCK_M = {block_m})", ja=f"クエリ（BLOCK_M = {block_m}）"),
    )  # fmt: skip
    ax.tick_params(axis="x", labelrotation=90)
    owner = text(
        en=f"program_id(0) = {program}: rows {row0}..{row1 - 1}; numbers: the order of the key tiles",
        ja=f"program_id(0) = {program}：{row0}〜{row1 - 1}行。数字はキーのタイルを読む順番",
    )
    ax.set_title(in_language(owner, lang), fontsize=FONT_SIZE - 2, y=-0.04, va="top")
    handles = [Patch(facecolor=c, hatch=h, edgecolor=e, label=in_language(name, lang))
               for c, h, e, name in styles.values()]  # fmt: skip
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.03, 1.0), frameon=False,
              fontsize=FONT_SIZE - 3)  # fmt: skip
    grid = forward_grid(N, 1, block_m)[0]
    launch = text(
        en=f"grid = ({grid}, B x H) programs\n{config.num_warps} warps each",
        ja=f"グリッド = ({grid}, B x H) 個の\nプログラム、各{config.num_warps}ワープ",
    )
    ax.text(1.05, 0.5, in_language(launch, lang), transform=ax.transAxes, ha="left", va="top",
            fontsize=FONT_SIZE - 3)  # fmt: skip

    # bottom: the memories of one program
    dtype_name = _DTYPE_NAMES.get(str(dtype), str(dtype).removeprefix("torch."))
    loaded = len(tiles.unmasked) + len(tiles.masked)
    chip.set_xlim(0, 10)
    chip.set_ylim(0, 10)
    chip.set_axis_off()

    def box(x, y, w, h, color, title, lines, gid):
        chip.add_patch(Rectangle((x, y), w, h, facecolor=color, edgecolor="black", linewidth=1, gid=gid))
        chip.text(x + 0.15, y + h - 0.2, in_language(title, lang), ha="left", va="top", fontsize=FONT_SIZE - 1)
        chip.text(x + 0.15, y + h - 0.95, "\n".join(in_language(line, lang) for line in lines), ha="left", va="top",
                  fontsize=FONT_SIZE - 3, linespacing=1.25)  # fmt: skip

    chip.add_patch(Rectangle((0.05, 4.35), 9.9, 5.6, facecolor="none", edgecolor="0.3", linewidth=1.2,
                             linestyle="--"))  # fmt: skip
    chip.text(0.3, 9.88, in_language(text(en="on chip: one program (a thread block on one SM)",
                                         ja="チップ上：一つのプログラム（一つのSMで動くスレッドブロック）"), lang),
              ha="left", va="top", fontsize=FONT_SIZE - 3, color="0.25")  # fmt: skip
    registers = [
        text(en=f"Q_i: {block_m} x {head_dim} ({dtype_name}),\n   loaded once",
             ja=f"Q_i：{block_m} x {head_dim}（{dtype_name}）、\n   1回だけ読む"),
        text(en=f"acc (O~_i): {block_m} x {head_dim} (fp32)", ja=f"acc (O~_i)：{block_m} x {head_dim}（fp32）"),
        text(en=f"m_i, l_i: {block_m} each (fp32)", ja=f"m_i, l_i：各{block_m}（fp32）"),
        text(en=f"S, P: {block_m} x {block_n} (fp32),\n   one tile at a time",
             ja=f"S, P：{block_m} x {block_n}（fp32）、\n   一度にタイル1枚"),
    ]  # fmt: skip
    box(0.3, 4.55, 5.6, 4.65, CATEGORY_COLORS[7], text(en="registers", ja="レジスタ"), registers, "registers")
    shared = [
        text(en=f"K_j, V_j:\n{block_n} x {head_dim} each", ja=f"K_j, V_j：\n各{block_n} x {head_dim}"),
        text(en=f"{config.num_stages} buffers\n(num_stages)", ja=f"バッファ{config.num_stages}組\n(num_stages)"),
    ]
    box(6.2, 4.55, 3.5, 4.65, CATEGORY_COLORS[5], text(en="shared memory", ja="共有メモリ"), shared, "shared")
    hbm = [
        text(
            en="Q, K, V: read; O, L (logsumexp of each row): written",
            ja="Q, K, V を読む。O と L（行ごとのlogsumexp）を書く",
        )
    ]
    box(0.3, 0.1, 9.4, 1.8, "0.85", text(en="HBM", ja="HBM"), hbm, "hbm")
    arrows = [  # x, upwards (HBM -> chip), label, colour
        (0.9, True, text(en="Q_i:\nonce", ja="Q_i：\n1回"), "black"),
        (3.3, False, text(en="O_i, L_i:\nonce, at the end", ja="O_i, L_i：\n最後に1回"), CATEGORY_COLORS[6]),
        (6.6, True, text(en=f"K_j, V_j: {loaded} tiles,\none per step", ja=f"K_j, V_j：{loaded}枚、\n1ステップに1枚"),
         "black"),
    ]  # fmt: skip
    for x, up, label, color in arrows:
        ends = [(x, 1.9), (x, 4.55)]
        start, stop = ends if up else ends[::-1]
        chip.add_patch(FancyArrowPatch(start, stop, arrowstyle="-|>", mutation_scale=14, color=color, linewidth=1.6))
        chip.text(x + 0.2, 3.3, in_language(label, lang), ha="left", va="center", fontsize=FONT_SIZE - 3,
                  color=color)  # fmt: skip
    figure.subplots_adjust(hspace=0.28)
    return figure


# ---------------------------------------------------------------- the KV cache, step by step

CACHE_CATEGORIES = (
    text(en="empty", ja="空き"),
    text(en="cached earlier", ja="キャッシュ済み"),
    text(en="written in this pass", ja="この順伝播で書き込む"),
)


def kv_cache_frames(prompt_tokens: int, new_tokens: int) -> list[list[list[int]]]:
    """One ``(2, prompt_tokens + new_tokens)`` frame per forward pass (rows: keys, values).

    0: empty, 1: written by an earlier pass, 2: written by this one (:func:`cache_schedule`).
    """
    schedule = cache_schedule(prompt_tokens, new_tokens)
    slots = prompt_tokens + new_tokens
    frames = []
    for start, stop in schedule:
        row = [1 if p < start else 2 if p < stop else 0 for p in range(slots)]
        frames.append([row, list(row)])
    return frames


def kv_cache_slider(prompt_tokens: int, new_tokens: int):
    """The KV cache growing, one slider step per forward pass; returns the plotly figure (``viz.show_plotly``).

    The title of each step names the queries of the pass and the keys they read.
    """
    from .. import slider_heatmap

    frames = kv_cache_frames(prompt_tokens, new_tokens)
    if len(frames) > 33 or prompt_tokens + new_tokens > 64:
        raise ValueError(
            f"new_tokens must be at most 32 and prompt_tokens + new_tokens at most 64 to draw, got "
            f"prompt_tokens={prompt_tokens}, new_tokens={new_tokens}"
        )
    titles, labels = [], []
    for s, (start, stop) in enumerate(cache_schedule(prompt_tokens, new_tokens)):
        if s == 0:
            titles.append(text(
                en=f"prefill: {stop} tokens written; {stop} queries read up to {stop} keys each (causal)",
                ja=f"プリフィル：{stop}トークンを書き込む。{stop}個のクエリがそれぞれ{stop}個までのキーを読む（因果）",
            ))  # fmt: skip
            labels.append(text(en="prefill", ja="プリフィル"))
        else:
            titles.append(text(
                en=f"decoding step {s}: token {start} written; 1 query reads {stop} keys",
                ja=f"デコードのステップ{s}：トークン{start}を書き込む。1個のクエリが{stop}個のキーを読む",
            ))  # fmt: skip
            labels.append(str(s))
    slots = prompt_tokens + new_tokens
    return slider_heatmap(
        frames, labels, titles=titles, categories=list(CACHE_CATEGORIES),
        x_ticks=[str(p) for p in range(slots)], y_ticks=["K", "V"],
        xlabel=text(en="cache position (token)", ja="キャッシュの位置（トークン）"),
        ylabel=text(en="cache", ja="キャッシュ"), slider_prefix=text(en="pass: ", ja="順伝播："),
        size=520, height=round(520 * 2 / slots) + 300,
    )  # fmt: skip


# ---------------------------------------------------------------- the decoder block: sequential and parallel


def decoder_block_graph(new_decoder_architecture: bool, *, parallel: bool = True) -> list[tuple[str, str]]:
    """The edges ``(from, to)`` of one decoder layer; nodes are module names, ``"x"``, ``"add..."``, ``"out"``.

    ``parallel=True``: :class:`attnlib.models.falcon.FalconDecoderLayer` (module names read from it):
    attention and MLP read the same input through their LayerNorms (one shared LayerNorm without
    ``new_decoder_architecture``, Falcon-7B; ``ln_attn`` and ``ln_mlp`` with it, Falcon-40B) and
    both outputs join the residual in one addition. ``parallel=False``: the sequential pre-LN block
    that the parallel one replaces (attention, add, a second LayerNorm, MLP, add), with the names
    of the released code's sequential Falcon layers.
    """
    import torch.nn as nn

    from ...models import falcon

    check_flag("new_decoder_architecture", new_decoder_architecture)
    check_flag("parallel", parallel)
    if not parallel:
        return [
            ("x", "input_layernorm"), ("input_layernorm", "self_attention"), ("self_attention", "add_1"),
            ("x", "add_1"), ("add_1", "post_attention_layernorm"), ("post_attention_layernorm", "mlp"),
            ("mlp", "add_2"), ("add_1", "add_2"), ("add_2", "out"),
        ]  # fmt: skip
    config = falcon.FalconConfig(vocab_size=2, hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
                                 new_decoder_architecture=new_decoder_architecture)  # fmt: skip
    layer = falcon.FalconDecoderLayer(config)
    children = dict(layer.named_children())
    norms = [name for name, module in children.items() if isinstance(module, nn.LayerNorm)]
    attention = next(name for name, module in children.items() if isinstance(module, falcon.FalconAttention))
    mlp = next(name for name, module in children.items() if isinstance(module, falcon.FalconMLP))
    attention_norm, mlp_norm = (norms[0], norms[-1])  # one LayerNorm shared, or one per branch
    edges = [("x", attention_norm)] + ([("x", mlp_norm)] if mlp_norm != attention_norm else [])
    edges += [(attention_norm, attention), (mlp_norm, mlp), ("x", "add"), (attention, "add"), (mlp, "add"),
              ("add", "out")]  # fmt: skip
    return edges


def _layout_block(edges, parallel: bool) -> dict[str, tuple[float, float]]:
    """Positions of the nodes: the input at the bottom, the output on top."""
    if not parallel:
        names = ["x", "input_layernorm", "self_attention", "add_1", "post_attention_layernorm", "mlp", "add_2", "out"]
        return {name: (0.0, float(level)) for level, name in enumerate(names)}
    nodes = {n for edge in edges for n in edge}
    norms = sorted(n for n in nodes if n.startswith("ln_") or n.endswith("layernorm"))
    places = {"x": (0.0, 0.0), "add": (0.0, 5.0), "out": (0.0, 7.0)}
    if len(norms) == 1:
        places[norms[0]] = (-1.0, 1.8)  # off the residual path, which runs up the middle
    else:
        places["ln_attn"], places["ln_mlp"] = (-1.0, 1.8), (1.0, 1.8)
    places["self_attention"], places["mlp"] = (-1.0, 3.4), (1.0, 3.4)
    return places


def decoder_blocks(new_decoder_architecture: bool = True, *, lang: str = "en"):
    """The sequential block beside Falcon's parallel block, as graphs of modules; returns the Figure.

    The structure is :func:`decoder_block_graph`'s (the parallel one read from
    :class:`attnlib.models.falcon.FalconDecoderLayer`). Boxes carry ``gid="node NAME"`` and arrows
    ``gid="edge FROM->TO"``.
    """
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    check_language(lang)
    check_flag("new_decoder_architecture", new_decoder_architecture)
    figure, axes = new_figure(6.4, 5.6, columns=2)
    colors = {"layernorm": CATEGORY_COLORS[9], "attention": CATEGORY_COLORS[5], "mlp": CATEGORY_COLORS[2]}
    titles = {
        False: text(en="sequential block:\nattention, then MLP", ja="逐次ブロック：\nattentionのあとにMLP"),
        True: text(en="parallel block (Falcon):\nattention and MLP side by side",
                   ja="並列ブロック（Falcon）：\nattentionとMLPを並べる"),
    }  # fmt: skip
    for ax, parallel in zip(axes, (False, True)):
        edges = decoder_block_graph(new_decoder_architecture, parallel=parallel)
        places = _layout_block(edges, parallel)
        for source, target in edges:
            (x0, y0), (x1, y1) = places[source], places[target]
            style = dict(arrowstyle="-|>", mutation_scale=11, linewidth=1.2, gid=f"edge {source}->{target}")
            if not parallel and target.startswith("add") and source in ("x", "add_1"):  # the residual, on the side
                side = -1.75
                ax.plot([x0, side, side], [y0, y0, y1], color="0.35", linewidth=1.2)
                ax.add_patch(FancyArrowPatch((side, y1), (x1, y1), color="0.35", shrinkA=0, shrinkB=10, **style))
                continue
            ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), color="black", shrinkA=12, shrinkB=12, **style))
        for name, (x, y) in places.items():
            if name.startswith("add"):
                ax.text(x, y, "+", ha="center", va="center", fontsize=FONT_SIZE + 2, gid=f"node {name}",
                        bbox=dict(boxstyle="circle,pad=0.2", facecolor="white", edgecolor="black"))  # fmt: skip
                continue
            if name in ("x", "out"):
                ax.text(x, y, "x" if name == "x" else in_language(text(en="output", ja="出力"), lang),
                        ha="center", va="center", fontsize=FONT_SIZE - 1, gid=f"node {name}")  # fmt: skip
                continue
            is_attention = "attention" in name and "norm" not in name
            kind = "mlp" if name == "mlp" else "attention" if is_attention else "layernorm"
            half = 1.35 if not parallel else 0.85 if len(name) < 14 else 1.0
            ax.add_patch(FancyBboxPatch((x - half, y - 0.24), 2 * half, 0.48, boxstyle="round,pad=0.02",
                                        facecolor=colors[kind], edgecolor="black", linewidth=1,
                                        gid=f"node {name}"))  # fmt: skip
            ax.text(x, y, name, ha="center", va="center", fontsize=FONT_SIZE - 2)
        ax.set_xlim(-2.0, 2.0)
        ax.set_ylim(-0.5, 7.5)
        ax.set_axis_off()
        ax.set_title(in_language(titles[parallel], lang), fontsize=FONT_SIZE - 1, y=-0.02, va="top")
    note = text(en="x: the residual stream (input of the layer); +: addition",
                ja="x：残差の流れ（層の入力）。+：足し算")  # fmt: skip
    figure.text(0.5, -0.04, in_language(note, lang), ha="center", va="top", fontsize=FONT_SIZE - 2)
    return figure
