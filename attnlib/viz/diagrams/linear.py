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

import torch

from ..._checks import check_positive_int
from ...approx import linear, performer
from .._text import check_language, text
from ._products import Product, ProductRecorder, draw_product_orders

__all__ = ["Product", "product_order", "reordered_products"]  # Product: from ._products, shared with .mixers

MAX_TOKENS = 48  # the figure stays readable
MAX_DIM = 16  # head dimension d and features m
ORDERS = ("quadratic", "reordered")


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
        recorder = ProductRecorder()

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
    check_language(lang)
    orders = {name: _numerator(steps) for name, steps in product_order(N, d, m).items()}
    titles = {
        "quadratic": lambda size, per_step, total: text(
            f"left to right: $\\phi(Q)\\phi(K)^\\top$ first, {size} in the middle\n"
            f"multiply-adds: {per_step} = {total:,}",
            f"左から順に：$\\phi(Q)\\phi(K)^\\top$ が先、途中に{size}\n積和演算：{per_step} = {total:,}回",
        ),
        "reordered": lambda size, per_step, total: text(
            f"reordered: $S = \\phi(K)^\\top V$ first, {size} in the middle\nmultiply-adds: {per_step} = {total:,}",
            f"順序を変えて：$S = \\phi(K)^\\top V$ が先、途中に{size}\n積和演算：{per_step} = {total:,}回",
        ),
    }
    note = text(
        f"one head: N = {N} tokens, d = {d}, m = {m} features; one unit per row and column "
        "(normalizer and feature map not counted)",
        f"1ヘッド分：N = {N}トークン、d = {d}、特徴数m = {m}。行と列を一つずつ1マスで描く"
        "（正規化の分母と特徴写像は数えない）",
    )
    return draw_product_orders({name: orders[name] for name in ORDERS}, chained="quadratic", operands=_OPERANDS,
                               titles=titles, note=note, N=N, lang=lang)  # fmt: skip
