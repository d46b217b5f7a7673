"""attnlib.viz.diagrams.linear: the two product orders follow the library, to scale, in both languages."""

from __future__ import annotations

import re

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from diagram_checks import ENGLISH_WORD, JAPANESE, texts  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from attnlib.approx import linear  # noqa: E402
from attnlib.viz import figure_images  # noqa: E402
from attnlib.viz.diagrams import linear as diagram  # noqa: E402

MATH = re.compile(r"\$[^$]*\$")  # mathtext is the same in both languages
SIZES = [(16, 4, 8), (5, 3, 2), (48, 16, 16), (1, 1, 1), (7, 12, 3)]  # N, d, m


def check_language(draw) -> None:
    english = [MATH.sub("", t) for t in texts(draw("en"))]
    japanese = [MATH.sub("", t) for t in texts(draw("ja"))]
    assert english and not any(JAPANESE.search(t) for t in english), english
    assert any(JAPANESE.search(t) for t in japanese), japanese
    assert not [t for t in japanese if ENGLISH_WORD.search(t)], japanese


@pytest.mark.parametrize("N,d,m", SIZES)
def test_the_product_order_is_the_librarys(N, d, m, record_shapes):
    orders = diagram.product_order(N, d, m)
    q, k, v = (torch.randn(1, 1, N, d, dtype=torch.float64) for _ in range(3))
    columns = torch.arange(m) % d  # m features picked from the d channels: no product inside the feature map
    for name, function in (("quadratic", linear.linear_attention_quadratic),
                           ("reordered", linear.linear_attention_noncausal)):  # fmt: skip
        with record_shapes() as recorder:
            function(q, k, v, feature_map=lambda x: torch.exp(x[..., columns]))
        # the batched products the library ran, as (rows, cols) of their output, in order
        outputs = [s[-2:] for op, s in recorder.shapes if "bmm" in op][2::3]  # aten.bmm records (left, right, out)
        assert [step.out for step in orders[name]] == outputs
    assert orders["quadratic"] == [
        diagram.Product((N, m), (m, N), (N, N)),
        diagram.Product((N, N), (N, d), (N, d)),
    ]
    assert orders["reordered"] == [
        diagram.Product((m, N), (N, d), (m, d)),
        diagram.Product((N, m), (m, d), (N, d)),
        diagram.Product((N, m), (m, 1), (N, 1)),  # the normalizer
    ]


@pytest.mark.parametrize("lang", ["en", "ja"])
@pytest.mark.parametrize("N,d,m", SIZES)
def test_the_figure_draws_the_shapes(N, d, m, lang):
    figure = diagram.reordered_products(N, d, m, lang=lang)
    assert figure.get_figwidth() <= 7
    orders = diagram.product_order(N, d, m)
    drawn = {a.get_gid(): a for a in figure.findobj(Rectangle) if a.get_gid()}
    for name, steps in orders.items():
        for index, step in enumerate(steps[:2]):  # the numerator; the normalizer is not drawn
            roles = {"left": step.left, "right": step.right, "out": step.out}
            if name == "quadratic" and index == 1:
                assert f"{name}:1:left" not in drawn  # it is the first product's output, drawn once
                del roles["left"]
            for role, (rows, cols) in roles.items():
                patch = drawn.pop(f"{name}:{index}:{role}")
                assert (patch.get_height(), patch.get_width()) == (rows, cols), (name, index, role)
    assert drawn == {}
    joined = " ".join(texts(figure))
    assert f"{N}×{N}" in joined and f"{m}×{d}" in joined
    assert f"{N * N * (m + d):,}" in joined and f"{2 * N * m * d:,}" in joined


def test_labels_in_both_languages():
    check_language(lambda lang: diagram.reordered_products(lang=lang))
    check_language(lambda lang: diagram.reordered_products(9, 3, 5, lang=lang))


def test_the_global_random_state_is_left_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    plt.close(diagram.reordered_products())
    assert torch.equal(torch.rand(3), expected)


def test_the_stored_pngs_are_the_same_bytes_every_time():
    draw = lambda lang: diagram.reordered_products(16, 4, 8, lang=lang)  # noqa: E731
    first, second = figure_images(draw), figure_images(draw)
    assert first.images == second.images
    assert first.images["en"] != first.images["ja"]


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: diagram.reordered_products(0, 4, 8), "N"),
        (lambda: diagram.reordered_products(49, 4, 8), "N must be at most 48"),
        (lambda: diagram.reordered_products(16, 0, 8), "d"),
        (lambda: diagram.reordered_products(16, 17, 8), "d must be at most 16"),
        (lambda: diagram.reordered_products(16, 4, 0), "m"),
        (lambda: diagram.reordered_products(16, 4, 17), "m must be at most 16"),
        (lambda: diagram.product_order(16, 4, 2.5), "m"),
        (lambda: diagram.reordered_products(16, 4, 8, lang="de"), "language"),
    ],
)
def test_refused_parameters_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
    plt.close("all")
