"""attnlib.viz.diagrams.mixers: the MetaFormer and product-order schematics follow the library, in both languages."""

from __future__ import annotations

import re

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from diagram_checks import ENGLISH_WORD, JAPANESE, gids, texts  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from attnlib import reference  # noqa: E402
from attnlib.approx import coat, mixer, poolformer  # noqa: E402
from attnlib.viz import figure_images  # noqa: E402
from attnlib.viz.diagrams import mixers  # noqa: E402

MATH = re.compile(r"\$[^$]*\$")  # mathtext is the same in both languages
CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9]+$")  # the library's class names, printed as they are
KEPT = re.compile(r"\b(attention|softmax)\b")  # the book's Japanese keeps these words (the glossary)
MAPS = [(4, 4, 8, 2), (3, 5, 6, 3), (1, 1, 2, 1), (7, 2, 12, 4), (2, 3, 5, 5)]  # height, width, dim, heads


def library_mixers(height, width, dim, heads):
    """The four mixers, built here from the modules themselves (not through the registry)."""
    return {
        "attention": reference.dense_global_mixer(dim, heads, height, width),
        "mlp": mixer.make_mixer(dim, heads, height, width),
        "pooling": poolformer.make_mixer(dim, heads, height, width),
        "factorized": coat.make_mixer(dim, heads, height, width),
    }


def check_language(draw) -> None:
    english = [MATH.sub("", t) for t in texts(draw("en"))]
    japanese = [KEPT.sub("", MATH.sub("", t)) for t in texts(draw("ja")) if not CLASS_NAME.match(t)]
    assert english and not any(JAPANESE.search(t) for t in english), english
    assert any(JAPANESE.search(t) for t in japanese), japanese
    assert not [t for t in japanese if ENGLISH_WORD.search(t)], japanese


@pytest.mark.parametrize("height,width,dim,heads", MAPS)
def test_the_cards_describe_the_library_modules(height, width, dim, heads, record_shapes):
    cards = mixers.mixer_cards(height, width, dim, heads)
    assert list(cards) == list(mixers.MIXERS)
    N, d = height * width, dim // heads
    x = torch.randn(1, height, width, dim, dtype=torch.float64)
    for key, module in library_mixers(height, width, dim, heads).items():
        card = cards[key]
        module = module.double()
        assert card.class_name == type(module).__name__
        assert card.parameters == sum(p.numel() for p in module.parameters())
        with torch.no_grad(), record_shapes() as recorder:
            out = module(x)
        assert card.output_shape == tuple(out.shape) == (1, height, width, dim)
        products = [s for op, s in recorder.shapes if "bmm" in op or "matmul" in op]
        if key == "attention":  # the N x N weights of every head: a batched product of (h, N, N)
            assert card.products[0][2] == (1, heads, N, N)
            assert (heads, N, N) in products
        elif key == "factorized":  # a d x d context per head, and nothing N x N
            assert card.products[0][2] == (1, heads, d, d) and card.details["head_dim"] == d
            assert (heads, d, d) in products
            if N > d:
                assert not [s for _, s in recorder.shapes if sum(size == N for size in s[-2:]) == 2]
        elif key == "mlp":  # W_1: (D_S, N), learned per position
            assert (card.details["tokens_mlp_dim"], card.details["tokens"]) == tuple(module.mlp.fc1.weight.shape)
            assert card.details["tokens"] == N and card.products == []
        else:
            assert card.details["pool_size"] == module.pool_size == 3 and card.parameters == 0


@pytest.mark.parametrize("lang", ["en", "ja"])
@pytest.mark.parametrize("highlight", [None, *mixers.MIXERS])
@pytest.mark.parametrize("height,width,dim,heads", MAPS[:3])
def test_the_block_prints_the_cards(height, width, dim, heads, highlight, lang):
    figure = mixers.metaformer_block(highlight, height=height, width=width, dim=dim, num_heads=heads, lang=lang)
    assert figure.get_figwidth() <= 7
    assert sorted(gids(figure, "card ")) == sorted(f"card {key}" for key in mixers.MIXERS)
    assert gids(figure, "slot ") == [f"slot {'open' if highlight is None else highlight}"]
    widths = {gid: a.get_linewidth() for a in figure.findobj() if (gid := a.get_gid() or "").startswith("card ")}
    if highlight is not None:  # the chosen card, and only it, is outlined
        assert widths[f"card {highlight}"] > max(w for g, w in widths.items() if g != f"card {highlight}")
    shown = texts(figure)
    N, d = height * width, dim // heads
    modules = library_mixers(height, width, dim, heads)
    for key, module in modules.items():
        assert type(module).__name__ in shown
        count = f"{sum(p.numel() for p in module.parameters()):,}"
        assert any(line.endswith(count) for line in shown), (key, count)
    joined = " ".join(shown)
    assert f"{heads}" in joined and f"{N}×{N}" in joined and f"{d}×{d}" in joined
    assert f"(1, {height}, {width}, {dim})" in joined


@pytest.mark.parametrize("N,d", [(16, 4), (5, 3), (49, 7), (1, 1), (64, 32), (7, 12)])
def test_the_product_order_is_the_librarys(N, d, record_shapes):
    orders = mixers.product_order(N, d)
    q, k, v = (torch.randn(1, 1, N, d, dtype=torch.float64) for _ in range(3))
    for name, function in (("softmax", reference.attention), ("factorized", coat.factorized_attention)):
        with record_shapes() as recorder:
            function(q, k, v)
        # the batched products the library ran, as (rows, cols) of their output, in order
        outputs = [s[-2:] for op, s in recorder.shapes if "bmm" in op]
        outputs = outputs[2::3]  # aten.bmm records (left, right, out)
        assert [step.out for step in orders[name]] == outputs
    softmax, factorized = orders["softmax"], orders["factorized"]
    assert softmax[0] == mixers.Product((N, d), (d, N), (N, N))
    assert factorized[0] == mixers.Product((d, N), (N, d), (d, d))
    assert sum(s.multiply_adds for s in softmax) == 2 * N * N * d
    assert sum(s.multiply_adds for s in factorized) == 2 * N * d * d


@pytest.mark.parametrize("lang", ["en", "ja"])
@pytest.mark.parametrize("N,d", [(16, 4), (5, 3), (49, 7), (1, 1), (7, 12)])
def test_the_product_order_draws_the_shapes(N, d, lang):
    figure = mixers.factorized_product_order(N, d, lang=lang)
    assert figure.get_figwidth() <= 7
    orders = mixers.product_order(N, d)
    drawn = {a.get_gid(): a for a in figure.findobj(Rectangle) if a.get_gid()}
    for name, steps in orders.items():
        for index, step in enumerate(steps):
            roles = {"left": step.left, "right": step.right, "out": step.out}
            if name == "softmax" and index == 1:
                assert f"{name}:1:left" not in drawn  # it is the first product's output, drawn once
                del roles["left"]
            for role, (rows, cols) in roles.items():
                patch = drawn.pop(f"{name}:{index}:{role}")
                assert (patch.get_height(), patch.get_width()) == (rows, cols), (name, index, role)
    assert drawn == {}
    joined = " ".join(texts(figure))
    assert f"{N}×{N}" in joined and f"{d}×{d}" in joined
    assert f"{2 * N * N * d:,}" in joined and f"{2 * N * d * d:,}" in joined


def test_labels_in_both_languages():
    check_language(lambda lang: mixers.metaformer_block(lang=lang))
    check_language(lambda lang: mixers.metaformer_block("pooling", height=3, width=5, dim=6, num_heads=3, lang=lang))
    check_language(lambda lang: mixers.factorized_product_order(9, 3, lang=lang))


def test_the_block_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    plt.close(mixers.metaformer_block("factorized"))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "draw",
    [
        lambda lang: mixers.metaformer_block("pooling", lang=lang),
        lambda lang: mixers.factorized_product_order(16, 4, lang=lang),
    ],
)
def test_the_stored_pngs_are_the_same_bytes_every_time(draw):
    first, second = figure_images(draw), figure_images(draw)
    assert first.images == second.images
    assert first.images["en"] != first.images["ja"]


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: mixers.metaformer_block("conv"), "highlight"),
        (lambda: mixers.metaformer_block(height=0), "height"),
        (lambda: mixers.metaformer_block(width=17), "width must be at most 16"),
        (lambda: mixers.metaformer_block(dim=10, num_heads=3), "num_heads"),
        (lambda: mixers.metaformer_block(lang="fr"), "language"),
        (lambda: mixers.factorized_product_order(0, 4), "N"),
        (lambda: mixers.factorized_product_order(65, 4), "N must be at most 64"),
        (lambda: mixers.factorized_product_order(16, 0), "d"),
        (lambda: mixers.factorized_product_order(16, 33), "d must be at most 32"),
        (lambda: mixers.factorized_product_order(16, 4, lang="de"), "language"),
    ],
)
def test_refused_parameters_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
    plt.close("all")
