"""Schematics of the vision chapters' partitions: Swin's windows, MaxViT's block and grid, PVT's reduction.

Each function takes the method's own parameters and ``lang`` ("en" or "ja") and returns a
matplotlib Figure. The groups drawn are the library's, never recomputed here:

* :func:`swin_windows` - :func:`attnlib.sparse.swin.swin_groups` (regular and shifted windows) and
  :func:`~attnlib.sparse.swin.swin_region_labels` (the masked sub-windows of the rolled map);
  the paper's Figs. 2 and 4. Chapter: "Swin" (chapters/*/01_swin.ipynb).
* :func:`maxvit_partitions` - :func:`attnlib.sparse.maxvit.maxvit_groups`, block and grid; the paper's
  Fig. 3. Chapter: "MaxViT" (chapters/*/02_maxvit.ipynb).
* :func:`pvt_reduction` - :func:`attnlib.sparse.pvt.pvt_cell_index`: every pixel a query, one key and
  one value per ``R x R`` cell. Chapter: "PVT" (chapters/*/03_pvt.ipynb).
* :func:`dat_sampling` - :func:`attnlib.sparse.dat.reference_points` and
  :func:`~attnlib.sparse.dat.bounded_offsets`: the reference grid, its offsets and the sampled keys that
  all queries share, beside Deformable DETR's few points per query. Chapter: "DAT"
  (chapters/*/04_dat.ipynb).

How a cell is drawn: one ``Rectangle`` per pixel, its ``gid`` ``"panel:row:col:group"`` (``group`` is
the library's group renumbered ``0, 1, ...`` in row-major order of first appearance, -1 for padding or
a pixel that feeds no key), its face colour and hatch picked from the group by :func:`group_style`
(Okabe-Ito colours, lightened; a hatch every seven groups, so that neighbours differ in greyscale
too). Thick lines are drawn wherever two neighbouring pixels belong to different windows. The tests
read the gids and colours back and compare them with the library.
"""

from __future__ import annotations

import matplotlib_fontja  # noqa: F401  (registers IPAexGothic: Japanese labels in Jupyter and Colab)
import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import blended_transform_factory

from ..._checks import check_fits_map, check_positive_finite, check_positive_int, check_tensor
from ...sparse import dat, maxvit, pvt, swin
from .. import CATEGORY_COLORS
from .._text import check_language, in_language, text

__all__ = [
    "MAX_SIDE",
    "group_style",
    "swin_windows",
    "maxvit_partitions",
    "pvt_reduction",
    "dat_points",
    "dat_sampling",
]

MAX_SIDE = 64  # the largest map side drawn (one patch per pixel)
WIDTH = 7.0  # inches: the book's widest matplotlib figure
_GROUP_COLORS = CATEGORY_COLORS[1:8]  # the seven Okabe-Ito colours (not the light grey of "none")
_HATCHES = ("", "///", "...", "xxx", "\\\\\\", "ooo")
_PADDING = ("#ffffff", "xx")  # face colour and hatch of padding (Swin) or a pixel that feeds no key (PVT)
_TITLE_SIZE = 11
_CAPTION_SIZE = 9.5


def group_style(group: int, *, numbered: bool = False) -> tuple[tuple[float, float, float], str]:
    """``(face colour, hatch)`` of group ``0, 1, ...``; ``-1`` is padding (white, cross-hatched).

    ``numbered``: the cell carries its group's number, which tells the groups apart in greyscale;
    no hatch then (it would cross the digits).
    """
    if group < 0:
        return to_rgb(_PADDING[0]), _PADDING[1]
    red, green, blue = to_rgb(_GROUP_COLORS[group % len(_GROUP_COLORS)])
    lighten = 0.35  # mixed with white: hatches, outlines and numbers stay visible on every colour
    color = tuple(round(value + (1 - value) * lighten, 6) for value in (red, green, blue))
    return color, "" if numbered else _HATCHES[(group // len(_GROUP_COLORS)) % len(_HATCHES)]


def _renumber(groups: torch.Tensor, keep_negative: bool = True) -> np.ndarray:
    """``(H, W)`` groups as ``0, 1, ...`` in row-major order of first appearance (negative stays -1)."""
    flat = groups.flatten().tolist()
    numbers: dict[int, int] = {}
    out = []
    for value in flat:
        if value < 0 and keep_negative:
            out.append(-1)
            continue
        numbers.setdefault(value, len(numbers))
        out.append(numbers[value])
    return np.array(out, dtype=np.int64).reshape(groups.shape)


def _check_side(name: str, side) -> None:
    check_positive_int(name, side)
    if side > MAX_SIDE:
        raise ValueError(f"{name} must be at most {MAX_SIDE} to be drawn (one square per pixel), got {side}")


def _boundaries(labels: np.ndarray) -> list[list[tuple[float, float]]]:
    """Line segments between neighbouring cells whose labels differ (x = column, y = row)."""
    rows, cols = labels.shape
    segments = []
    for r, c in zip(*np.nonzero(labels[:, 1:] != labels[:, :-1])):
        segments.append([(c + 1, r), (c + 1, r + 1)])  # between columns c and c + 1
    for r, c in zip(*np.nonzero(labels[1:, :] != labels[:-1, :])):
        segments.append([(c, r + 1), (c + 1, r + 1)])  # between rows r and r + 1
    return segments


def _draw_cells(ax, panel: str, groups: np.ndarray, *, numbers: bool = False, hatched: bool = True) -> None:
    """One square per pixel, styled by its group; thin grey pixel edges; optional group numbers.

    ``hatched=False``: colours only (another panel or the outlines tell the groups apart).
    """
    rows, cols = groups.shape
    for r in range(rows):
        for c in range(cols):
            group = int(groups[r, c])
            color, hatch = group_style(group, numbered=numbers or not hatched)
            ax.add_patch(
                Rectangle(
                    (c, r), 1, 1, facecolor=color, hatch=hatch, edgecolor="#6e6e6e", linewidth=0.3,
                    gid=f"{panel}:{r}:{c}:{group}",
                )
            )  # fmt: skip
            if numbers and group >= 0:
                ax.text(c + 0.5, r + 0.5, str(group), ha="center", va="center", fontsize=6.5, color="black")


def _outline(ax, labels: np.ndarray, *, width: float = 2.2, style: str = "solid", color: str = "black") -> None:
    """Lines where neighbouring labels differ, and the frame of the whole map."""
    rows, cols = labels.shape
    segments = _boundaries(labels)
    segments += [[(0, 0), (cols, 0)], [(cols, 0), (cols, rows)], [(cols, rows), (0, rows)], [(0, rows), (0, 0)]]
    ax.add_collection(LineCollection(segments, colors=color, linewidths=width, linestyles=style, capstyle="round"))


def _frame(ax, rows: int, cols: int, title: str) -> None:
    ax.set_xlim(-0.3, cols + 0.3)
    ax.set_ylim(rows + 0.3, -0.3)  # row 0 at the top, as an image
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title, fontsize=_TITLE_SIZE)


def _figure(panels: int, height: float) -> tuple[Figure, list]:
    figure = Figure(figsize=(WIDTH if panels == 3 else 6.0, height))
    axes = figure.subplots(1, panels)
    return figure, list(axes)


def _caption(figure: Figure, ax, caption: str) -> None:
    """``caption`` centred on the figure, just below ``ax`` (placed after the equal aspect shrinks it)."""
    where = blended_transform_factory(figure.transFigure, ax.transAxes)
    figure.text(0.5, -0.03, caption, ha="center", va="top", fontsize=_CAPTION_SIZE, transform=where)


# --------------------------------------------------------------------------------------------------
# Swin
# --------------------------------------------------------------------------------------------------


def swin_windows(side: int, window_size: int = 7, shift_size: int | None = None, *, lang: str = "en") -> Figure:
    """Swin's regular windows, shifted windows and the cyclic roll with its masked sub-windows.

    Three panels of a ``side x side`` map: (1) W-MSA's ``M x M`` windows; (2) SW-MSA's windows,
    displaced by ``s`` (``shift_size``, default ``M // 2``): the groups of pixels that attend to one
    another, cut by the image border; (3) the map rolled by ``-s`` (padded to a multiple of ``M``
    first, as the library does), cut into ``M x M`` windows (thick lines); inside a window, the
    sub-windows that the mask keeps apart have different colours (dashed lines). Panels 2 and 3 give
    a group the same colour, so the roll can be followed pixel by pixel. Window and shift are clipped
    as the library (and the official code) do on small maps: :func:`swin.swin_window_and_shift`.
    """
    check_language(lang)
    _check_side("side", side)
    check_positive_int("window_size", window_size)
    shift = window_size // 2 if shift_size is None else shift_size
    M, s = swin.swin_window_and_shift(side, side, window_size, shift)  # ValueError for a bad shift
    Hp = -(-side // M) * M  # padded side, a multiple of M
    windows_plain = _renumber(swin.swin_groups(side, side, M, 0))  # (side, side)
    groups = swin.swin_groups(side, side, M, s)  # (side, side): 9 * window + region, in the map's frame
    shifted = _renumber(groups)  # (side, side)
    # the rolled, padded map: rolled cell (r, c) holds pixel ((r + s) mod Hp, (c + s) mod Hp)
    source = (torch.arange(Hp) + s) % Hp  # (Hp,)
    real = (source[:, None] < side) & (source[None, :] < side)  # (Hp, Hp)
    rolled = np.full((Hp, Hp), -1, dtype=np.int64)  # (Hp, Hp): the group of each rolled cell, -1 padding
    rows, cols = np.nonzero(real.numpy())
    rolled[rows, cols] = shifted[source[rows].numpy(), source[cols].numpy()]
    window_of = (np.arange(Hp)[:, None] // M) * (Hp // M) + np.arange(Hp)[None, :] // M  # (Hp, Hp)
    regions = swin.swin_region_labels(side, side, M, s).numpy()  # (Hp, Hp): the official img_mask

    figure, axes = _figure(3, 3.3)
    _draw_cells(axes[0], "plain", windows_plain)
    _outline(axes[0], windows_plain)
    _frame(axes[0], side, side, in_language(text(f"W-MSA: {M}x{M} windows", f"W-MSA：{M}x{M}のウィンドウ"), lang))
    _draw_cells(axes[1], "shifted", shifted)
    _outline(axes[1], shifted)
    shifted_title = text(f"SW-MSA: shifted by {s}", f"SW-MSA：{s}ずらしたウィンドウ")
    _frame(axes[1], side, side, in_language(shifted_title, lang))
    _draw_cells(axes[2], "rolled", rolled)
    _outline(axes[2], np.where(real.numpy(), regions + 9 * window_of, -1), width=1.3, style="dashed")
    _outline(axes[2], window_of)
    rolled_title = text(f"roll by -{s}, then mask", f"-{s}の巡回シフトとマスク")
    _frame(axes[2], Hp, Hp, in_language(rolled_title, lang))
    if s and Hp > 0:
        # an arrow on the rolled panel from where the top-left window's first pixel came from
        axes[1].annotate(
            "", xy=(s, s), xytext=(0, 0), arrowprops={"arrowstyle": "->", "color": "black", "linewidth": 1.2}
        )
    caption = text(
        "colour = pixels that attend to one another; thick line = window; dashed = masked apart",
        "同じ色 = 互いに注目するピクセル、太線 = ウィンドウ、破線 = マスクで分けた境界",
    )
    if Hp > side:
        caption = caption + text("; crossed = padding", "、斜交線 = パディング")
    _caption(figure, axes[0], in_language(caption, lang))
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.06, top=0.9, wspace=0.08)
    return figure


# --------------------------------------------------------------------------------------------------
# MaxViT
# --------------------------------------------------------------------------------------------------


def maxvit_partitions(side: int, window_size: int = 4, grid_size: int | None = None, *, lang: str = "en") -> Figure:
    """MaxViT's block and grid partitions of one ``side x side`` map, one colour per group.

    Left: block attention, ``P x P`` windows (``window_size``). Right: grid attention, ``G x G``
    groups (``grid_size``, default ``P``) of pixels ``side / G`` apart. Each pixel carries its
    group's number (when ``side <= 16``); both are :func:`maxvit.maxvit_groups`. The sizes must
    divide ``side`` (MaxViT does not pad): the library's ``ValueError`` otherwise.
    """
    check_language(lang)
    _check_side("side", side)
    G = window_size if grid_size is None else grid_size
    block = _renumber(maxvit.maxvit_groups(side, side, "block", window_size))  # (side, side)
    grid = _renumber(maxvit.maxvit_groups(side, side, "grid", G))  # (side, side)
    numbers = side <= 16
    figure, axes = _figure(2, 3.6)
    _draw_cells(axes[0], "block", block, numbers=numbers)
    _outline(axes[0], block)
    block_title = text(
        f"block: {window_size}x{window_size} windows", f"ブロック：{window_size}x{window_size}のウィンドウ"
    )
    _frame(axes[0], side, side, in_language(block_title, lang))
    _draw_cells(axes[1], "grid", grid, numbers=numbers)
    _outline(axes[1], grid, width=0.6)
    first = [[(c, r), (c + 1, r), (c + 1, r + 1), (c, r + 1), (c, r)] for r, c in zip(*np.nonzero(grid == 0))]
    axes[1].add_collection(LineCollection(first, colors="black", linewidths=2.0))  # one group, in bold
    stride = side // G
    grid_title = text(f"grid: {G}x{G} pixels, {stride} apart", f"グリッド：{stride}間隔の{G}x{G}ピクセル")
    _frame(axes[1], side, side, in_language(grid_title, lang))
    caption = text(
        "same colour and number = one group (group 0 in bold): attention runs inside each group",
        "同じ色・同じ番号 = 一つのグループ（太枠はグループ0）。attentionは各グループの中で計算する",
    )
    _caption(figure, axes[0], in_language(caption, lang))
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.05, top=0.91, wspace=0.08)
    return figure


# --------------------------------------------------------------------------------------------------
# PVT
# --------------------------------------------------------------------------------------------------


def pvt_reduction(side: int, sr_ratio: int = 4, *, lang: str = "en") -> Figure:
    """PVT's spatial reduction: every pixel of the ``side x side`` map is a query (left); the map
    reduced by ``R`` (``sr_ratio``) in each direction gives the keys and values (right), one per
    ``R x R`` cell, drawn over the cell it summarizes. Colours match a pixel to the key its cell
    becomes (:func:`pvt.pvt_cell_index`); the last ``side mod R`` rows and columns feed no key
    (cross-hatched) but are still queries. Up to 64 keys carry their number (and no hatch); the
    query panel has colours only, its thick lines part the cells. ``R`` larger than the map: the
    library's ``ValueError``.
    """
    check_language(lang)
    _check_side("side", side)
    index = pvt.pvt_cell_index(side, side, sr_ratio)  # (side, side), -1 for the remainder
    Hr, Wr = pvt.reduced_size(side, side, sr_ratio)
    R = sr_ratio
    cells = index.numpy()  # already 0 .. Nr - 1 in row-major order
    N, Nr = side * side, Hr * Wr
    figure, axes = _figure(2, 3.6)
    _draw_cells(axes[0], "queries", cells, hatched=False)  # the thick outlines part the cells
    columns, rows = np.tile(np.arange(side), side), np.repeat(np.arange(side), side)  # every pixel
    axes[0].scatter(columns + 0.5, rows + 0.5, s=max(1.0, 60.0 / side), color="black", linewidths=0)  # a query each
    _outline(axes[0], cells, width=1.8)
    queries_title = text(f"queries: all {N} pixels", f"クエリ：全{N}ピクセル")
    _frame(axes[0], side, side, in_language(queries_title, lang))
    ax = axes[1]
    for key in range(Nr):
        a, b = divmod(key, Wr)
        color, hatch = group_style(key, numbered=Nr <= 64)
        ax.add_patch(
            Rectangle(
                (b * R, a * R), R, R, facecolor=color, hatch=hatch, edgecolor="black", linewidth=1.8,
                gid=f"keys:{a}:{b}:{key}",
            )
        )  # fmt: skip
        if Nr <= 64:
            box = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"}
            ax.text(b * R + R / 2, a * R + R / 2, str(key), ha="center", va="center", fontsize=8, bbox=box)
    if Hr * R < side or Wr * R < side:
        color, hatch = group_style(-1)
        remainder = np.ones((side, side), dtype=bool)
        remainder[: Hr * R, : Wr * R] = False
        for r, c in zip(*np.nonzero(remainder)):
            ax.add_patch(Rectangle((c, r), 1, 1, facecolor=color, hatch=hatch, edgecolor="#6e6e6e", linewidth=0.3))
    keys_title = text(f"keys, values: {Hr}x{Wr} = {Nr}", f"キー・バリュー：{Hr}x{Wr} = {Nr}")
    _frame(ax, side, side, in_language(keys_title, lang))
    caption = text(
        f"each {R}x{R} cell becomes one key and one value; scores {N} x {Nr}",
        f"{R}x{R}のセルごとにキーとバリューが一つ。スコアは{N} x {Nr}",
    )
    if Hr * R < side or Wr * R < side:
        caption = caption + text("; crossed: no key", "。斜交線：キーにならない")
    _caption(figure, axes[0], in_language(caption, lang))
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.05, top=0.91, wspace=0.08)
    return figure


# --------------------------------------------------------------------------------------------------
# DAT
# --------------------------------------------------------------------------------------------------

_QUERY_COLORS = ("#D55E00", "#0072B2", "#009E73")  # Okabe-Ito vermilion, blue, green: one per query
_DETR_POINTS = 4  # Deformable DETR's sampling points per query, head and level (the paper's K = 4)


def _queries(side: int) -> list[tuple[int, int]]:
    """Up to three query pixels ``(row, col)`` spread over a ``side x side`` map (distinct)."""
    picks = [(side // 4, side // 4), (side // 2, (3 * side) // 4), ((3 * side) // 4, side // 3)]
    return list(dict.fromkeys(picks))


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def dat_points(side: int, stride: int = 4, offset_range_factor: float = 2.0, *, seed: int = 0, raw_offsets=None):
    """``(reference, positions)``, each ``(Hk, Wk, 2)`` normalized ``(y, x)``, as :mod:`attnlib.sparse.dat` computes.

    ``reference = dat.reference_points(Hk, Wk)`` with ``Hk = Wk = ceil(side / stride)``;
    ``positions = reference + dat.bounded_offsets(raw_offsets, offset_range_factor)``. ``raw_offsets``
    ``(2, Hk, Wk)`` stands for the offset network's output (before the tanh bound); without it, a
    normal draw (standard deviation 0.6) from ``torch.Generator().manual_seed(seed)``.
    """
    _check_side("side", side)
    check_positive_int("stride", stride)
    check_fits_map("stride", stride, side, side)
    check_positive_finite("offset_range_factor", offset_range_factor)
    Hk = -(-side // stride)
    if raw_offsets is None:
        _check_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        raw_offsets = 0.6 * torch.randn(2, Hk, Hk, generator=generator, dtype=torch.float64)
    check_tensor("raw_offsets", raw_offsets)
    if tuple(raw_offsets.shape) != (2, Hk, Hk):
        raise ValueError(
            f"raw_offsets must be (2, Hk, Wk) = (2, {Hk}, {Hk}) (y and x offsets for the ceil({side} / {stride}) "
            f"grid), got shape {tuple(raw_offsets.shape)}"
        )
    raw = raw_offsets.double()
    reference = dat.reference_points(Hk, Hk, dtype=torch.float64)  # (Hk, Wk, 2)
    return reference, reference + dat.bounded_offsets(raw, offset_range_factor)  # each (Hk, Wk, 2)


def _to_pixels(points: torch.Tensor, side: int) -> np.ndarray:
    """Normalized ``(y, x)`` -> drawn ``(x, y)``: the pixel ``grid_sample`` reads (``align_corners=True``),
    whose centre is drawn at ``pixel + 0.5``."""
    pixels = (points.reshape(-1, 2) + 1) / 2 * (side - 1) + 0.5  # (n, 2) (row, col) + 0.5
    return pixels.flip(-1).numpy()  # (n, 2) as (x, y)


def dat_sampling(
    side: int = 16,
    stride: int = 4,
    offset_range_factor: float = 2.0,
    *,
    seed: int = 0,
    raw_offsets=None,
    lang: str = "en",
) -> Figure:
    """DAT's shared sampled keys (left) beside Deformable DETR's points per query (right).

    Left: the ``ceil(side / stride)`` squared reference points (hollow circles, where a zero offset
    reads the map), an arrow along each bounded offset and the sampled point (filled), from
    :func:`dat_points`; up to three queries (stars) are joined to every sampled point, in their
    colour: all queries attend to the same keys. Right: the same queries, each with its own
    ``K = 4`` points (one head, one level); these are drawn at random (``seed``), an illustration
    of the pattern, not a model's output. Points outside the map read zeros; they are drawn where
    they fall (the axes leave room for ``s / 2`` grid spacings).

    Gids: ``"dat:reference:i"``, ``"dat:sampled:i"`` (collections of all points, row-major
    ``i``), ``"dat:query:j"``, ``"detr:query:j"``, ``"detr:points:j"``.
    """
    check_language(lang)
    _check_seed(seed)
    reference, positions = dat_points(side, stride, offset_range_factor, seed=seed, raw_offsets=raw_offsets)
    Hk = reference.shape[0]
    Ns = Hk * Hk
    ref_xy, pos_xy = _to_pixels(reference, side), _to_pixels(positions, side)  # (Ns, 2) each
    queries = _queries(side)
    generator = torch.Generator().manual_seed(seed + 1)
    spread = max(1.0, side / 5)
    detr = [
        np.array([c + 0.5, r + 0.5]) + spread * (2 * torch.rand(_DETR_POINTS, 2, generator=generator).numpy() - 1)
        for r, c in queries
    ]  # (K, 2) (x, y) per query
    margin = max(0.6, offset_range_factor / 2 * side / Hk * 0.6)
    low = min(-margin, float(pos_xy.min()) - 0.6)
    high = max(side + margin, float(pos_xy.max()) + 0.6)

    figure, axes = _figure(2, 3.7)
    for ax in axes:
        ax.add_patch(Rectangle((0, 0), side, side, facecolor="#f4f4f4", edgecolor="black", linewidth=1.2))
        if side <= 32:
            lines = [[(i, 0), (i, side)] for i in range(1, side)] + [[(0, i), (side, i)] for i in range(1, side)]
            ax.add_collection(LineCollection(lines, colors="#d0d0d0", linewidths=0.4))
    ax = axes[0]
    for j, (r, c) in enumerate(queries):
        color = _QUERY_COLORS[j]
        ax.add_collection(
            LineCollection([[(c + 0.5, r + 0.5), tuple(p)] for p in pos_xy], colors=color, linewidths=0.5, alpha=0.45)
        )
    for (x0, y0), (x1, y1) in zip(ref_xy, pos_xy):
        if abs(x1 - x0) + abs(y1 - y0) > 1e-9:
            ax.annotate(
                "", xy=(x1, y1), xytext=(x0, y0),
                arrowprops={"arrowstyle": "->", "color": "black", "linewidth": 0.9, "shrinkA": 0, "shrinkB": 2},
            )  # fmt: skip
    ax.scatter(ref_xy[:, 0], ref_xy[:, 1], s=28, facecolors="white", edgecolors="black", linewidths=1.0, zorder=3,
               gid="dat:reference")  # fmt: skip
    ax.scatter(pos_xy[:, 0], pos_xy[:, 1], s=22, color="black", zorder=4, gid="dat:sampled")
    for j, (r, c) in enumerate(queries):
        ax.scatter([c + 0.5], [r + 0.5], s=120, marker="*", color=_QUERY_COLORS[j], edgecolors="black",
                   linewidths=0.6, zorder=5, gid=f"dat:query:{j}")  # fmt: skip
    dat_title = text(f"DAT: {Hk}x{Hk} = {Ns} keys for every query", f"DAT：全クエリが同じ{Hk}x{Hk} = {Ns}個のキー")
    ax = axes[1]
    for j, ((r, c), points) in enumerate(zip(queries, detr)):
        color = _QUERY_COLORS[j]
        ax.add_collection(
            LineCollection([[(c + 0.5, r + 0.5), tuple(p)] for p in points], colors=color, linewidths=0.9)
        )
        ax.scatter(points[:, 0], points[:, 1], s=26, color=color, edgecolors="black", linewidths=0.5, zorder=4,
                   gid=f"detr:points:{j}")  # fmt: skip
        ax.scatter([c + 0.5], [r + 0.5], s=120, marker="*", color=color, edgecolors="black",
                   linewidths=0.6, zorder=5, gid=f"detr:query:{j}")  # fmt: skip
    detr_title = text(
        f"Deformable DETR: {_DETR_POINTS} points per query", f"Deformable DETR：クエリごとに{_DETR_POINTS}点"
    )
    for ax, title in ((axes[0], dat_title), (axes[1], detr_title)):
        ax.set_xlim(low, high)
        ax.set_ylim(high, low)  # row 0 at the top, as an image
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(in_language(title, lang), fontsize=_TITLE_SIZE)
    caption = text(
        f"{side}x{side}, r = {stride}, s = {offset_range_factor:g}. circle: reference point, arrow: offset, "
        "dot: sampled key, star: query (right: random points)",
        f"{side}x{side}、r = {stride}、s = {offset_range_factor:g}。丸：参照点、矢印：オフセット、"
        "黒点：サンプリングしたキー、星：クエリ（右は無作為な点）",
    )
    _caption(figure, axes[0], in_language(caption, lang))
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.07, top=0.91, wspace=0.06)
    return figure
