"""Schematics of the approximation chapters: the MetaFormer block's token-mixer slot, and CoaT's product order.

* :func:`metaformer_block` - Norm, token mixer, add; Norm, channel MLP, add; beside the four mixers
  that fill the slot (attention, MLP-Mixer's MLP, PoolFormer's pooling, CoaT's factorized
  attention), each described by the module the registry builds (:func:`mixer_cards`).
* :func:`factorized_product_order` - softmax attention's ``Q K^T`` first (an ``N x N``
  intermediate) against CoaT's ``softmax(K)^T V`` first (``d x d`` per head), drawn to scale from
  the shapes of the products the library computes (:func:`product_order`).

The numbers come from the library, not from typing: the card of each mixer is built from the
module ``registry.get(name).mixer_factory()(dim, num_heads, height, width)`` (its class, its
parameters, its output shape and the matrix product it forms), and the product order from the
matrix products that :func:`attnlib.reference.attention` and
:func:`attnlib.approx.coat.factorized_attention` run, recorded as they run. Drawn pieces carry a
``gid`` (``"card NAME"``, ``"slot NAME"``, ``"ROW:STEP:ROLE"``) so that tests can read them back.

Chapters: "MLP-Mixer" (chapters/*/07_mlp_mixer.ipynb), "PoolFormer" (08_poolformer.ipynb) and
"CoaT" (09_coat.ipynb).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ... import registry
from ..._checks import check_heads, check_positive_int
from ...approx import coat
from ...reference import attention
from .. import CATEGORY_COLORS
from .._text import check_language, in_language, text
from ._common import light, new_figure
from ._products import Product, ProductRecorder, draw_product_orders

__all__ = [
    "MIXERS",
    "MixerCard",
    "mixer_cards",
    "metaformer_block",
    "Product",
    "product_order",
    "factorized_product_order",
]

FONT_SIZE = 10
MAX_MAP_SIDE = 16  # the cards' modules are built and run once on a (1, H, W, C) map
MAX_TOKENS = 64  # the product-order figure stays readable
MAX_HEAD_DIM = 32

# The four mixers of the slot: key -> (registry name, title, colour, hatch). Okabe-Ito colours with a
# hatch each, so that the slot and its card match in greyscale too.
MIXERS = {
    "attention": ("dense", text("attention", "attention"), CATEGORY_COLORS[1], ""),
    "mlp": ("mixer", text("MLP (MLP-Mixer)", "MLP（MLP-Mixer）"), CATEGORY_COLORS[2], "//"),
    "pooling": ("poolformer", text("pooling (PoolFormer)", "プーリング（PoolFormer）"), CATEGORY_COLORS[3], ".."),
    "factorized": ("coat", text("factorized attention (CoaT)", "分解型attention（CoaT）"), CATEGORY_COLORS[4], "xx"),
}
_FORMULAS = {  # what the mixer computes (mathtext, the same in both languages)
    "attention": r"$\mathrm{softmax}(QK^\top/\sqrt{d})\,V$",
    "mlp": r"$W_2\,\sigma(W_1 X)$",
    "pooling": r"$\mathrm{AvgPool}(X) - X$",
    "factorized": r"$Q\,(\mathrm{softmax}(K)^\top V)/\sqrt{d} + \mathrm{conv}$",
}
_SHORT = {  # the mixer's name in the slot
    "attention": text("attention", "attention"),
    "mlp": text("MLP", "MLP"),
    "pooling": text("pooling", "プーリング"),
    "factorized": text("factorized attention", "分解型attention"),
}


class MixerCard(NamedTuple):
    """What the library's module for one mixer is, on a ``(1, H, W, C)`` map."""

    key: str  # a key of MIXERS
    class_name: str  # the module's class, e.g. "Pooling"
    parameters: int  # its number of parameters
    output_shape: tuple  # (1, H, W, C)
    products: list  # [(left, right, out), ...] the matrix products it runs (shapes)
    details: dict  # what the card prints: "heads", "tokens", "pool_size", "tokens_mlp_dim", "head_dim"


def _check_map(height, width, dim, num_heads) -> None:
    for name, value in (("height", height), ("width", width)):
        check_positive_int(name, value)
        if value > MAX_MAP_SIDE:
            raise ValueError(f"{name} must be at most {MAX_MAP_SIDE} (the modules run once on the map), got {value}")
    check_heads(dim, num_heads)


def mixer_cards(height: int = 4, width: int = 4, dim: int = 8, num_heads: int = 2) -> dict[str, MixerCard]:
    """Each mixer of :data:`MIXERS`, built by its registry factory for a ``height x width`` map of ``dim``
    channels and ``num_heads`` heads, and run once on zeros ``(1, height, width, dim)`` (float64).

    The global random state is left as it was (the modules draw their initial weights inside
    :func:`torch.random.fork_rng`).
    """
    _check_map(height, width, dim, num_heads)
    cards = {}
    for key, (name, *_) in MIXERS.items():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = registry.get(name).mixer_factory()(dim, num_heads, height, width).double()
        recorder = ProductRecorder()
        with torch.no_grad(), recorder:
            out = module(torch.zeros(1, height, width, dim, dtype=torch.float64))
        details = {"tokens": height * width}
        if key == "attention":
            details["heads"] = module.attn.num_heads
        elif key == "mlp":
            details["tokens_mlp_dim"], details["tokens"] = tuple(module.mlp.fc1.weight.shape)  # W_1: (D_S, N)
        elif key == "pooling":
            details["pool_size"] = module.pool_size
        else:
            details["heads"], details["head_dim"] = module.attn.num_heads, module.attn.head_dim
        cards[key] = MixerCard(
            key, type(module).__name__, sum(p.numel() for p in module.parameters()), tuple(out.shape),
            recorder.shapes, details,
        )  # fmt: skip
    return cards


def _card_lines(card: MixerCard) -> list:
    """The card's lines after its title and class: what it forms, and its parameters."""
    n = card.details["tokens"]
    if card.key == "attention":
        (_, _, scores), *_ = card.products  # (1, h, N, N): the weights q . k makes
        h, rows, cols = scores[1], scores[2], scores[3]
        formed = text(f"{h} heads × {rows}×{cols} weights", f"ヘッド{h}個 × {rows}×{cols}の重み")
    elif card.key == "mlp":
        D = card.details["tokens_mlp_dim"]
        formed = text(f"$W_1$: {D}×{n}, a column per position", f"$W_1$：{D}×{n}、位置ごとに1列")
    elif card.key == "pooling":
        K = card.details["pool_size"]
        formed = text(f"{K}×{K} window, fixed weights", f"{K}×{K}のウィンドウ、固定の重み")
    else:
        (_, _, context), *_ = card.products  # (1, h, d, d): softmax(K)^T V
        h, rows, cols = context[1], context[2], context[3]
        formed = text(f"{h} heads × {rows}×{cols}, no {n}×{n}", f"ヘッド{h}個 × {rows}×{cols}（{n}×{n}なし）")
    return [formed, text(f"parameters: {card.parameters:,}", f"パラメータ数：{card.parameters:,}")]


def metaformer_block(
    highlight: str | None = None,
    *,
    height: int = 4,
    width: int = 4,
    dim: int = 8,
    num_heads: int = 2,
    lang: str = "en",
):
    """The MetaFormer block with its token-mixer slot, beside the four mixers that fill it; returns the Figure.

    Left: input, Norm, the token-mixer slot, add (residual), Norm, channel MLP, add. Right: one
    card per mixer of :data:`MIXERS` (:func:`mixer_cards` for the given map): its name, the
    library's class, what it computes, the matrix it forms or the weights it holds, and its
    parameters. ``highlight`` (a key of :data:`MIXERS`) puts that mixer in the slot and outlines
    its card; None leaves the slot open to all four.
    """
    from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Rectangle

    check_language(lang)
    if highlight is not None and highlight not in MIXERS:
        raise ValueError(f"highlight must be None or one of {list(MIXERS)}, got {highlight!r}")
    cards = mixer_cards(height, width, dim, num_heads)
    shapes = {card.output_shape for card in cards.values()}
    (shape,) = shapes  # every mixer maps the map to its own shape
    figure, (ax,) = new_figure(7.0, 4.7)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 67)
    ax.set_aspect("equal")
    ax.set_axis_off()

    def arrow(x0, y0, x1, y1, **style):
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=9, color="black",
                                     linewidth=1.0, shrinkA=0, shrinkB=0, **style))  # fmt: skip

    def box(y, label, *, gid=None, face="white", hatch="", dashed=False, h=5.2):
        ax.add_patch(
            FancyBboxPatch((5, y - h / 2), 24, h, boxstyle="round,pad=0.2,rounding_size=0.8", facecolor=face,
                           hatch=hatch, edgecolor="black", linewidth=1.4 if dashed else 1.0,
                           linestyle="--" if dashed else "-", gid=gid)
        )  # fmt: skip
        bbox = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"} if hatch else None
        ax.text(17, y, in_language(label, lang), ha="center", va="center", fontsize=FONT_SIZE, bbox=bbox)

    def add(y):
        ax.add_patch(Circle((17, y), 1.6, facecolor="white", edgecolor="black", linewidth=1.0))
        ax.text(17, y, "+", ha="center", va="center", fontsize=FONT_SIZE + 1)

    shape_text = f"({', '.join(str(s) for s in shape)})"
    ax.text(17, 64.5, in_language(text(f"input {shape_text}", f"入力 {shape_text}"), lang), ha="center",
            va="center", fontsize=FONT_SIZE - 1)  # fmt: skip
    levels = {"norm1": 56, "slot": 46, "add1": 37.5, "norm2": 29, "mlp": 20, "add2": 11.5}
    box(levels["norm1"], text("Norm", "正規化"))
    slot_label = text("token mixer", "トークンミキサー")
    if highlight is None:
        box(levels["slot"], slot_label, gid="slot open", dashed=True, h=7)
    else:
        _, title, color, hatch = MIXERS[highlight]
        short = _SHORT[highlight]
        label = text(f"{slot_label.en}:\n{short.en}", f"{slot_label.ja}：\n{short.ja}")
        box(levels["slot"], label, gid=f"slot {highlight}", face=light(color), hatch=hatch, dashed=True, h=7)
    add(levels["add1"])
    box(levels["norm2"], text("Norm", "正規化"))
    box(levels["mlp"], text("channel MLP", "チャンネル方向のMLP"))
    add(levels["add2"])
    ax.text(17, 4, in_language(text(f"output {shape_text}", f"出力 {shape_text}"), lang), ha="center",
            va="center", fontsize=FONT_SIZE - 1)  # fmt: skip
    for top, bottom in ((63, 58.8), (53.2, 49.7), (42.3, 39.1), (35.9, 31.8), (26.2, 22.8), (17.2, 13.1), (9.9, 5.6)):
        arrow(17, top, 17, bottom)
    for start, end in ((61, levels["add1"]), (levels["add1"] - 2.2, levels["add2"])):  # the two residuals
        ax.plot([17, 3, 3], [start, start, end], color="black", linewidth=1.0)
        arrow(3, end, 15.4, end)
    ax.text(2.2, 49, in_language(text("residual", "残差接続"), lang), rotation=90, ha="right", va="center",
            fontsize=FONT_SIZE - 2)  # fmt: skip

    # the four cards, two by two
    spots = {"attention": (36, 35), "mlp": (68, 35), "pooling": (36, 3), "factorized": (68, 3)}
    card_w, card_h = 31, 28
    for key, card in cards.items():
        x, y = spots[key]
        _, title, color, hatch = MIXERS[key]
        chosen = key == highlight
        ax.add_patch(
            FancyBboxPatch((x, y), card_w, card_h, boxstyle="round,pad=0.2,rounding_size=1.0", facecolor="white",
                           edgecolor="black" if chosen or highlight is None else "0.55",
                           linewidth=2.6 if chosen else 1.0, gid=f"card {key}")
        )  # fmt: skip
        ax.add_patch(Rectangle((x, y + card_h - 6), card_w, 6, facecolor=light(color), hatch=hatch,
                               edgecolor="none"))  # fmt: skip
        ax.text(x + card_w / 2, y + card_h - 3, in_language(title, lang), ha="center", va="center",
                fontsize=FONT_SIZE + 0.5,
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"})  # fmt: skip
        lines = [card.class_name, _FORMULAS[key], *(in_language(line, lang) for line in _card_lines(card))]
        for row, line in enumerate(lines):
            ax.text(x + 1.5, y + card_h - 10 - 4.6 * row, line, ha="left", va="center",
                    fontsize=FONT_SIZE - (1 if row else 0.5), family="monospace" if row == 0 else None)  # fmt: skip
    arrow(34.5, levels["slot"], 29.6, levels["slot"])  # one of the cards fills the slot
    if highlight is None:
        ax.text(31, levels["slot"] + 1.2, "?", fontsize=FONT_SIZE + 2, ha="left", va="bottom")
    n = height * width
    note = text(
        f"a map of {height}×{width} = {n} tokens, C = {dim} channels, {num_heads} heads; "
        "each mixer maps it to the same shape",
        f"{height}×{width} = {n}トークン、C = {dim}チャンネル、ヘッド{num_heads}個のマップ。"
        "どのミキサーも同じ形状に写す",
    )
    figure.text(0.5, 0.01, in_language(note, lang), ha="center", va="bottom", fontsize=FONT_SIZE - 2)
    figure.subplots_adjust(left=0.01, right=0.99, top=0.99, bottom=0.05)
    return figure


# ---------------------------------------------------------------------------- CoaT's product order


def product_order(N: int, d: int) -> dict[str, list[Product]]:
    """The matrix products of one head, in the order the library runs them, recorded as they run.

    ``"softmax"``: :func:`attnlib.reference.attention` (``Q K^T``, then the weights times ``V``);
    ``"factorized"``: :func:`attnlib.approx.coat.factorized_attention` (``softmax(K)^T V``, then
    ``Q`` times it). Inputs: ``q, k, v`` of shape ``(1, 1, N, d)`` (zeros, float64).
    """
    check_positive_int("N", N)
    check_positive_int("d", d)
    if N > MAX_TOKENS:
        raise ValueError(f"N must be at most {MAX_TOKENS} to draw the products to scale, got {N}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"d must be at most {MAX_HEAD_DIM} to draw the products to scale, got {d}")
    q = k = v = torch.zeros(1, 1, N, d, dtype=torch.float64)
    orders = {}
    for name, function in (("softmax", attention), ("factorized", coat.factorized_attention)):
        recorder = ProductRecorder()
        with torch.no_grad(), recorder:
            function(q, k, v)
        orders[name] = recorder.products
    return orders


_OPERANDS = {  # names of the operands of each product: (left, right, out)
    "softmax": [("$Q$", "$K^\\top$", "$\\mathrm{softmax}(QK^\\top)$"), (None, "$V$", "out")],
    "factorized": [("$\\mathrm{softmax}(K)^\\top$", "$V$", "$G$"), ("$Q$", "$G$", "out")],
}


def factorized_product_order(N: int = 16, d: int = 4, *, lang: str = "en"):
    """Softmax attention's product order against CoaT's, for one head, drawn to scale; returns the Figure.

    Top: ``Q K^T`` first, an ``N x N`` intermediate, then its softmax times ``V``. Bottom:
    ``G = softmax(K)^T V`` first, a ``d x d`` intermediate, then ``Q G``. Each matrix is a
    rectangle of its shape (one unit per row and column), the intermediate in vermilion and
    hatched; the row titles give the intermediate's size and the multiply-adds of the two
    products, all from :func:`product_order`. (The ``1 / sqrt(d)`` scale and the softmax are
    left out of the counts.)
    """
    check_language(lang)
    titles = {
        "softmax": lambda size, per_step, total: text(
            f"softmax attention: $QK^\\top$ first, {size} in the middle\nmultiply-adds: {per_step} = {total:,}",
            f"softmax attention：$QK^\\top$ が先、途中に{size}\n積和演算：{per_step} = {total:,}回",
        ),
        "factorized": lambda size, per_step, total: text(
            f"factorized (CoaT): $G = \\mathrm{{softmax}}(K)^\\top V$ first, {size} in the middle\n"
            f"multiply-adds: {per_step} = {total:,}",
            f"分解型（CoaT）：$G = \\mathrm{{softmax}}(K)^\\top V$ が先、途中に{size}\n"
            f"積和演算：{per_step} = {total:,}回",
        ),
    }
    note = text(
        f"one head: N = {N} tokens, d = {d} channels (d = C / heads); one unit per row and column",
        f"1ヘッド分：N = {N}トークン、d = {d}チャンネル（d = C / ヘッド数）。行と列を一つずつ1マスで描く",
    )
    return draw_product_orders(product_order(N, d), chained="softmax", operands=_OPERANDS, titles=titles,
                               note=note, N=N, lang=lang)  # fmt: skip
