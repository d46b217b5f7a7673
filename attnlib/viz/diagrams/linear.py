"""Schematic of the linear-attention chapter: the product ``phi(Q) phi(K)^T V`` in its two orders, drawn to scale.

* :func:`reordered_products` - left to right, ``(phi(Q) phi(K)^T) V`` forms an ``N x N`` matrix
  (the kernel matrix, softmax's place); right to left, ``phi(Q) (phi(K)^T V)`` forms an ``m x d``
  state. Each matrix is a rectangle of its shape, one unit per row and column.

The shapes come from the library, not from typing: :func:`product_order` runs
:func:`attnlib.approx.linear.linear_attention_quadratic` (the kernel matrix first) and
:func:`attnlib.approx.linear.linear_attention_noncausal` (the product reordered) on zeros, with
Performer's positive random features (:func:`attnlib.approx.performer.positive_random_features`,
``m`` of them) as the feature map, and records the matrix products they run. The products inside
the feature map itself (``W x``) are not recorded: they cost the same ``N d m`` in both orders.
Drawn pieces carry a ``gid`` (``"ORDER:STEP:ROLE"``) so that tests can read them back.

Chapter: "Linear attention, Performer and Linformer" (chapters/*/16_linear_attention.ipynb).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from ..._checks import check_positive_int
from ...approx import linear, performer
from .. import CATEGORY_COLORS
from .._text import check_language, in_language, text
from ._common import new_figure

__all__ = ["Product", "product_order", "reordered_products"]

FONT_SIZE = 10
MAX_TOKENS = 48  # the figure stays readable
MAX_DIM = 16  # head dimension d and features m
ORDERS = ("quadratic", "reordered")
_INTERMEDIATE = CATEGORY_COLORS[6]  # Okabe-Ito vermilion: what each order forms in the middle
_OPERAND = "#e8e8e8"


class Product(NamedTuple):
    """One matrix product of one head: ``left (rows x inner) @ right (inner x cols) -> out (rows x cols)``."""

    left: tuple[int, int]
    right: tuple[int, int]
    out: tuple[int, int]

    @property
    def multiply_adds(self) -> int:
        return self.left[0] * self.left[1] * self.right[1]


class _Products(TorchFunctionMode):
    """Records the shapes of the matrix products run inside it, except while :attr:`paused`."""

    def __init__(self):
        super().__init__()
        self.products: list[Product] = []
        self.paused = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if not self.paused and func in (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm):
            left, right, out = (tuple(t.shape[-2:]) for t in (args[0], args[1], result))
            self.products.append(Product(left, right, out))
        return result


def _check_sizes(N, d, m) -> None:
    for name, value, limit in (("N", N, MAX_TOKENS), ("d", d, MAX_DIM), ("m", m, MAX_DIM)):
        check_positive_int(name, value)
        if value > limit:
            raise ValueError(f"{name} must be at most {limit} to draw the products to scale, got {value}")


def product_order(N: int, d: int, m: int) -> dict[str, list[Product]]:
    """The matrix products of one head of linear attention, in the order the library runs them.

    ``"quadratic"``: :func:`~attnlib.approx.linear.linear_attention_quadratic` (``phi(Q) phi(K)^T``,
    then the ``N x N`` result times ``V``); ``"reordered"``:
    :func:`~attnlib.approx.linear.linear_attention_noncausal` (``phi(K)^T V``, then ``phi(Q)``
    times it, then ``phi(Q)`` times ``phi(K)^T 1`` for the normalizer). ``q, k, v``: zeros of shape
    ``(1, 1, N, d)``, float64; the feature map: ``m`` positive random features (seed 0), whose own
    products are not recorded.
    """
    _check_sizes(N, d, m)
    q = k = v = torch.zeros(1, 1, N, d, dtype=torch.float64)
    projection = performer.gaussian_projection(m, d, orthogonal=False, seed=0, dtype=torch.float64)  # (m, d)
    orders = {}
    for name, function in (("quadratic", linear.linear_attention_quadratic),
                           ("reordered", linear.linear_attention_noncausal)):  # fmt: skip
        recorder = _Products()

        def feature_map(x, recorder=recorder):
            recorder.paused = True  # the feature map's own product W x is not the attention's
            try:
                return performer.positive_random_features(x, projection)  # (1, 1, n, m)
            finally:
                recorder.paused = False

        with torch.no_grad(), recorder:
            function(q, k, v, feature_map=feature_map)
        orders[name] = recorder.products
    return orders


def _numerator(steps: list[Product]) -> list[Product]:
    """The two products that build the output's numerator (both orders run them first; the normalizer's comes after)."""
    return steps[:2]


# operand names (mathtext) of the numerator's two products, per order: (left, right, out)
_OPERANDS = {
    "quadratic": [(r"$\phi(Q)$", r"$\phi(K)^\top$", r"$\phi(Q)\phi(K)^\top$"), (None, "$V$", "out")],
    "reordered": [(r"$\phi(K)^\top$", "$V$", "$S$"), (r"$\phi(Q)$", "$S$", "out")],
}


def reordered_products(N: int = 16, d: int = 4, m: int = 8, *, lang: str = "en"):
    """Linear attention's two product orders for one head, drawn to scale; returns the Figure.

    Top: ``phi(Q) phi(K)^T`` first, an ``N x N`` intermediate, then times ``V`` (the order of
    softmax attention). Bottom: ``S = phi(K)^T V`` first, an ``m x d`` intermediate, then
    ``phi(Q) S``. The intermediate is vermilion and hatched; the row titles give its size and the
    multiply-adds of the numerator's two products, from :func:`product_order` (the normalizer, one
    more column, and the feature map are left out of the counts; the note says so).
    """
    from matplotlib.patches import Rectangle

    check_language(lang)
    orders = {name: _numerator(steps) for name, steps in product_order(N, d, m).items()}
    gap = max(2.5, N / 6)
    layout = {}  # name -> (pieces, operators, right edge)
    for name in ORDERS:
        steps = orders[name]
        pieces, operators, x = [], [], 0.0
        for index, step in enumerate(steps):
            # left to right: the first product's output is the second's left operand, drawn once
            chained = name == "quadratic" and index > 0 and step.left == steps[index - 1].out
            roles = [("right", step.right), ("out", step.out)]
            if chained:
                operators.append((x - gap / 2, step.left[0], "·"))
            else:
                roles.insert(0, ("left", step.left))
            for role, (rows, cols) in roles:
                intermediate = (index == 0 and role == "out") or (
                    name == "reordered" and index == 1 and role == "right"
                )
                pieces.append((x, rows, cols, intermediate, index, role))
                x += cols + gap
                if role != "out":
                    operators.append((x - gap / 2, rows, "·" if role == "left" else "="))
            x += gap
        layout[name] = (pieces, operators, x - 2 * gap)
    width_units = max(right for _, _, right in layout.values()) + 1.0
    unit = max(width_units / 6.9, 64.0 / 6.9)  # units per inch: the titles need about 6 inches
    title_room, label_room = 0.62 * unit, 0.5 * unit
    tops, top = {}, 0.0
    for name in ORDERS:
        tops[name] = top
        top += title_room + max(rows for _, rows, *_ in layout[name][0]) + label_room
    figure, (ax,) = new_figure(7.0, min(9.0, top / unit + 0.3))
    for name in ORDERS:
        steps, (pieces, operators, _) = orders[name], layout[name]
        size = f"{steps[0].out[0]}×{steps[0].out[1]}"
        total = sum(step.multiply_adds for step in steps)
        per_step = " + ".join(f"{s.left[0]}×{s.left[1]}×{s.right[1]}" for s in steps)
        if name == "quadratic":
            title = text(
                f"left to right: $\\phi(Q)\\phi(K)^\\top$ first, {size} in the middle\n"
                f"multiply-adds: {per_step} = {total:,}",
                f"左から順に：$\\phi(Q)\\phi(K)^\\top$ が先、途中に{size}\n積和演算：{per_step} = {total:,}回",
            )
        else:
            title = text(
                f"reordered: $S = \\phi(K)^\\top V$ first, {size} in the middle\nmultiply-adds: {per_step} = {total:,}",
                f"順序を変えて：$S = \\phi(K)^\\top V$ が先、途中に{size}\n積和演算：{per_step} = {total:,}回",
            )
        ax.text(0, tops[name], in_language(title, lang), ha="left", va="top", fontsize=FONT_SIZE, linespacing=1.4)
        y0 = tops[name] + title_room
        for x, rows, cols, intermediate, index, role in pieces:
            face, hatch = (_INTERMEDIATE, "//") if intermediate else (_OPERAND, "")
            alpha = 0.45 if intermediate else 1.0
            ax.add_patch(Rectangle((x, y0), cols, rows, facecolor=face, alpha=alpha, hatch=hatch,
                                   edgecolor="black", linewidth=1.0, gid=f"{name}:{index}:{role}"))  # fmt: skip
            label = _OPERANDS[name][index][("left", "right", "out").index(role)]
            if label == "out":
                label = in_language(text("out", "出力"), lang)
            ax.text(x + cols / 2, y0 + rows + 0.08 * unit, f"{label}\n{rows}×{cols}", ha="center", va="top",
                    fontsize=FONT_SIZE - 1, linespacing=1.3)  # fmt: skip
        for x, rows, operator in operators:
            ax.text(x, y0 + min(rows, 0.3 * unit) / 2, operator, ha="center", va="center", fontsize=FONT_SIZE + 4)
    ax.set_xlim(-0.5, unit * 6.9 - 0.5)
    ax.set_ylim(top, -0.5)  # the first order on top
    ax.set_aspect("equal")
    ax.set_axis_off()
    note = text(
        f"one head: N = {N} tokens, d = {d}, m = {m} features; one unit per row and column "
        "(normalizer and feature map not counted)",
        f"1ヘッド分：N = {N}トークン、d = {d}、特徴数m = {m}。行と列を一つずつ1マスで描く"
        "（正規化の分母と特徴写像は数えない）",
    )
    figure.text(0.5, 0.005, in_language(note, lang), ha="center", va="bottom", fontsize=FONT_SIZE - 2)
    figure.subplots_adjust(left=0.0, right=1.0, top=1.0, bottom=0.3 / figure.get_figheight())
    return figure
