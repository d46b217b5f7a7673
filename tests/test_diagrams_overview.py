"""attnlib.viz.diagrams.overview: the introduction's schematic runs in both languages and agrees with the library."""

from __future__ import annotations

import math
import re

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from diagram_checks import ENGLISH_WORD, JAPANESE, texts  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from attnlib import reference  # noqa: E402
from attnlib.approx import poolformer  # noqa: E402
from attnlib.sparse import bigbird as bb  # noqa: E402
from attnlib.viz import figure_images  # noqa: E402
from attnlib.viz.diagrams import kernels, overview  # noqa: E402

MATH = re.compile(r"\$[^$]*\$")  # mathtext ($K^\top$) is the same in both languages


def cells(figure, prefix: str) -> dict[tuple[int, int], Rectangle]:
    """``{(a, b): artist}`` of every artist with ``gid="prefix a,b"``."""
    found = {}
    for artist in figure.findobj():
        gid = artist.get_gid() or ""
        if gid.startswith(prefix + " "):
            a, b = gid[len(prefix) + 1 :].split(",")
            found[int(a), int(b)] = artist
    return found


def nonzero(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(pair) for pair in mask.nonzero().tolist()}


def check_language(draw) -> None:
    english = [MATH.sub("", t) for t in texts(draw("en"))]
    japanese = [MATH.sub("", t) for t in texts(draw("ja"))]
    assert english and not any(JAPANESE.search(t) for t in english), english
    assert any(JAPANESE.search(t) for t in japanese), japanese
    assert not [t for t in japanese if ENGLISH_WORD.search(t)], japanese


CASES = [  # N, d, block_size, num_random_blocks, pool_size, tile, seed
    (16, 4, 1, 1, 3, 4, 0),
    (7, 3, 1, 0, 3, 3, 1),
    (13, 5, 2, 1, 5, 4, 2),
    (5, 1, 1, 0, 1, 2, 3),
    (20, 2, 3, 0, 3, 7, 4),
]


@pytest.mark.parametrize("N,d,block_size,r,pool_size,tile,seed", CASES)
def test_the_example_is_the_librarys(N, d, block_size, r, pool_size, tile, seed):
    ex = overview.families_example(
        N, d, block_size=block_size, num_random_blocks=r, pool_size=pool_size, tile=tile, seed=seed
    )
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(1, 1, N, d, generator=generator, dtype=torch.float64)
    k = torch.randn(1, 1, N, d, generator=generator, dtype=torch.float64)
    # the weights are softmax(q k^T / sqrt(d)): each row sums to one
    expected = torch.softmax(q[0, 0] @ k[0, 0].T / math.sqrt(d), dim=-1)
    torch.testing.assert_close(ex.weights, expected)
    pattern = bb.bigbird_pattern(N, block_size=block_size, num_random_blocks=r, seed=seed)[0]
    assert torch.equal(ex.pattern, pattern)
    # sparse weights: softmax over the pattern only, i.e. the reference with the mask
    v = torch.eye(N, dtype=torch.float64)[None, None]  # attention applied to the identity: the weights
    torch.testing.assert_close(ex.sparse_weights, reference.attention(q, k, v, mask=pattern)[0, 0])
    assert (ex.sparse_weights[~pattern] == 0).all()
    # pooling: the library's mixer plus the identity (the residual), every row an average
    torch.testing.assert_close(
        ex.pooling - torch.eye(N, dtype=torch.float64), poolformer.pooling_mixing_matrix(1, N, pool_size)
    )
    x = torch.randn(1, 1, N, 2, dtype=torch.float64)
    pooled = poolformer.Pooling(pool_size)(x)[0, 0] + x[0, 0]  # (N, 2): AvgPool(x)
    torch.testing.assert_close(ex.pooling @ x[0, 0], pooled)
    assert ex.schedule == kernels.tile_schedule(N, tile, tile, version=2)


@pytest.mark.parametrize("lang", ["en", "ja"])
@pytest.mark.parametrize("N,d,block_size,r,pool_size,tile,seed", CASES)
def test_the_figure_draws_the_example(N, d, block_size, r, pool_size, tile, seed, lang):
    kwargs = dict(block_size=block_size, num_random_blocks=r, pool_size=pool_size, tile=tile, seed=seed)
    ex = overview.families_example(N, d, **kwargs)
    figure = overview.score_matrix_families(N, d, **kwargs, lang=lang)
    assert figure.get_figwidth() <= 7
    vmax = float(max(ex.weights.max(), ex.sparse_weights.max(), ex.pooling.max()))
    every = {(i, j) for i in range(N) for j in range(N)}
    assert set(cells(figure, "q")) == {(i, c) for i in range(N) for c in range(d)}
    assert set(cells(figure, "k")) == {(c, j) for c in range(d) for j in range(N)}
    for name, values, drawn in (
        ("dense", ex.weights, every),
        ("sparse", ex.sparse_weights, nonzero(ex.pattern)),  # the skipped pairs are not drawn as weights
        ("pooling", ex.pooling, every),
        ("tiled", ex.weights, every),
    ):
        found = cells(figure, name)
        assert set(found) == drawn, name
        for (i, j), patch in found.items():
            assert np.allclose(patch.get_facecolor()[:3], overview.weight_color(values[i, j], vmax)), (name, i, j)
    # the tiles: each covers its queries and keys, numbered in the library's order
    tiles, steps = cells(figure, "tile"), cells(figure, "step")
    assert set(tiles) == set(steps) == set(ex.schedule)
    for number, (a, b) in enumerate(ex.schedule, start=1):
        assert steps[a, b].get_text() == str(number)
        patch = tiles[a, b]
        assert patch.get_xy() == (b * tile, a * tile)
        assert patch.get_width() == min(tile, N - b * tile) and patch.get_height() == min(tile, N - a * tile)
    shown = " ".join(texts(figure))
    assert f"{N * N}" in shown and f"{int(ex.pattern.sum())}" in shown and f"{len(ex.schedule)}" in shown


def test_a_darker_cell_is_a_larger_weight():
    greys = [sum(overview.weight_color(w, 1.0)) for w in (0.0, 0.01, 0.1, 0.5, 1.0, 2.0)]
    assert greys[0] == 3.0 and all(a > b for a, b in zip(greys, greys[1:-1])) and greys[-1] == greys[-2]


def test_the_example_changes_with_the_seed_only_where_it_should():
    first, second = overview.families_example(seed=0), overview.families_example(seed=1)
    assert not torch.equal(first.weights, second.weights)
    assert torch.equal(first.pooling, second.pooling) and first.schedule == second.schedule


def test_labels_in_both_languages():
    check_language(lambda lang: overview.score_matrix_families(9, 3, block_size=1, num_random_blocks=1, tile=4,
                                                               lang=lang))  # fmt: skip


def test_the_stored_pngs_are_the_same_bytes_every_time():
    draw = lambda lang: overview.score_matrix_families(9, 3, block_size=1, num_random_blocks=0, tile=4, lang=lang)  # noqa: E731
    first, second = figure_images(draw), figure_images(draw)
    assert first.images == second.images
    assert first.images["en"] != first.images["ja"]


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: overview.score_matrix_families(33), "N must be at most 32"),
        (lambda: overview.score_matrix_families(0), "N"),
        (lambda: overview.score_matrix_families(12, 0), "d"),
        (lambda: overview.score_matrix_families(12, 17), "d must be at most"),
        (lambda: overview.score_matrix_families(32, tile=3), "tile"),
        (lambda: overview.score_matrix_families(12, tile=0), "tile"),
        (lambda: overview.score_matrix_families(12, pool_size=2), "pool_size"),
        (lambda: overview.score_matrix_families(12, num_random_blocks=-1), "num_random_blocks"),
        (lambda: overview.score_matrix_families(6, num_random_blocks=2), "num_random_blocks"),
        (lambda: overview.score_matrix_families(12, seed=-1), "seed"),
        (lambda: overview.score_matrix_families(12, lang="fr"), "language"),
    ],
)
def test_refused_parameters_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()
    plt.close("all")
