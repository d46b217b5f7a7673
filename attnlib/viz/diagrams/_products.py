"""Matrix products recorded as the library runs them, and two product orders drawn to scale.

CoaT's factorized attention (:mod:`.mixers`) and linear attention (:mod:`.linear`) make the same
point with the same picture: one order forms an ``N x N`` intermediate, the other a small ``d x d``
(or ``m x d``) one. Both record the products the library runs (:class:`ProductRecorder`) and draw
them with :func:`draw_product_orders`; each module says which operands the products are.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from .. import CATEGORY_COLORS
from .._text import in_language, text
from ._common import light, new_figure

__all__ = ["Product", "ProductRecorder", "draw_product_orders"]

FONT_SIZE = 10
INTERMEDIATE_FACE = light(CATEGORY_COLORS[6], 0.35)  # Okabe-Ito vermilion, lightened: what an order forms in the middle
OPERAND_FACE = "#e8e8e8"
MATRIX_PRODUCTS = (torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.bmm)


class Product(NamedTuple):
    """One matrix product of one head: ``left (rows x inner) @ right (inner x cols) -> out (rows x cols)``."""

    left: tuple[int, int]
    right: tuple[int, int]
    out: tuple[int, int]

    @property
    def multiply_adds(self) -> int:
        return self.left[0] * self.left[1] * self.right[1]


class ProductRecorder(TorchFunctionMode):
    """Records every matrix product run inside it, except while :attr:`paused`.

    ``shapes``: the full shapes ``(left, right, out)``; ``products``: their last two dimensions,
    one :class:`Product` per product (the matrices of one head).
    """

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[tuple[int, ...], ...]] = []
        self.products: list[Product] = []
        self.paused = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        if not self.paused and func in MATRIX_PRODUCTS:
            shapes = tuple(tuple(t.shape) for t in (args[0], args[1], result))
            self.shapes.append(shapes)
            self.products.append(Product(*(shape[-2:] for shape in shapes)))
        return result


def _layout(steps: list[Product], *, chained: bool, reordered: bool, gap: float):
    """x positions of one order's matrices, left to right, and of the operators between them."""
    pieces, operators, x = [], [], 0.0
    for index, step in enumerate(steps):
        # the first product's output is the second's left operand: drawn once, where it was made
        is_chained = chained and index > 0 and step.left == steps[index - 1].out
        roles = [("right", step.right), ("out", step.out)]
        if is_chained:
            operators.append((x - gap / 2, step.left[0], "·"))
        else:
            roles.insert(0, ("left", step.left))
        for role, (rows, cols) in roles:
            # the intermediate: what the first product makes, and (reordered) where the second reads it
            intermediate = (index == 0 and role == "out") or (reordered and index == 1 and role == "right")
            pieces.append((x, rows, cols, intermediate, index, role))
            x += cols + gap
            if role != "out":
                operators.append((x - gap / 2, rows, "·" if role == "left" else "="))
        x += gap
    return pieces, operators, x - 2 * gap


def draw_product_orders(orders: dict[str, list[Product]], *, chained: str, operands: dict, titles: dict, note,
                        N: int, lang: str):  # fmt: skip
    """Draw each order's products as rectangles of their shapes, one order per row; returns the Figure.

    ``orders``: name -> its two products, in the order drawn (top first). ``chained``: the order
    whose second product reads the first one's output (drawn once); the other order is the
    reordered one, whose intermediate is also the second product's right operand. ``operands``:
    name -> per product, the (left, right, out) labels (mathtext; ``"out"`` is the output, None
    for a chained left operand). ``titles``: name -> a function ``(size, per_step, total) -> text``.
    Pieces carry a ``gid`` ``"ORDER:STEP:ROLE"`` so that tests can read them back.
    """
    from matplotlib.patches import Rectangle

    gap = max(2.5, N / 6)
    layout = {
        name: _layout(steps, chained=name == chained, reordered=name != chained, gap=gap)
        for name, steps in orders.items()
    }
    width_units = max(right for _, _, right in layout.values()) + 1.0
    unit = max(width_units / 6.9, 64.0 / 6.9)  # units per inch: the titles need about 6 inches
    title_room, label_room = 0.62 * unit, 0.5 * unit  # two lines of title, two lines of label
    tops, top = {}, 0.0
    for name in orders:
        tops[name] = top
        top += title_room + max(rows for _, rows, *_ in layout[name][0]) + label_room
    figure, (ax,) = new_figure(7.0, min(9.0, top / unit + 0.3))
    for name, steps in orders.items():
        pieces, operators, _ = layout[name]
        size = f"{steps[0].out[0]}×{steps[0].out[1]}"
        total = sum(step.multiply_adds for step in steps)
        per_step = " + ".join(f"{s.left[0]}×{s.left[1]}×{s.right[1]}" for s in steps)
        title = titles[name](size, per_step, total)
        ax.text(0, tops[name], in_language(title, lang), ha="left", va="top", fontsize=FONT_SIZE, linespacing=1.4)
        y0 = tops[name] + title_room
        for x, rows, cols, intermediate, index, role in pieces:
            face, hatch = (INTERMEDIATE_FACE, "//") if intermediate else (OPERAND_FACE, "")
            ax.add_patch(Rectangle((x, y0), cols, rows, facecolor=face, hatch=hatch, edgecolor="black",
                                   linewidth=1.0, gid=f"{name}:{index}:{role}"))  # fmt: skip
            label = operands[name][index][("left", "right", "out").index(role)]
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
    figure.text(0.5, 0.005, in_language(note, lang), ha="center", va="bottom", fontsize=FONT_SIZE - 2)
    figure.subplots_adjust(left=0.0, right=1.0, top=1.0, bottom=0.3 / figure.get_figheight())
    return figure
