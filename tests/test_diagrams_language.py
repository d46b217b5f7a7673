"""attnlib.viz.diagrams.language: the schematics run in both languages and agree with the library."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from diagram_checks import check_language  # noqa: E402

from attnlib.sparse import bigbird as bb  # noqa: E402
from attnlib.sparse import reformer as rf  # noqa: E402
from attnlib.viz import figure_images  # noqa: E402
from attnlib.viz.diagrams import language  # noqa: E402


def cells(figure, prefix: str) -> set[tuple[int, ...]]:
    """The ``(a, b)`` of every artist with ``gid="prefix a,b"`` (or ``(a,)`` for ``"prefix a"``)."""
    found = set()
    for artist in figure.findobj():
        gid = artist.get_gid() or ""
        if gid.startswith(prefix + " "):
            found.add(tuple(int(part) for part in gid[len(prefix) + 1 :].split(",")))
    return found


def nonzero(mask: torch.Tensor) -> set[tuple[int, int]]:
    return {tuple(pair) for pair in mask.nonzero().tolist()}


# ---------------------------------------------------------------- BigBird


@pytest.mark.parametrize("num_blocks,r,seed", [(8, 3, 0), (7, 2, 5), (3, 0, 1), (13, 4, 2), (6, 1, 7)])
def test_bigbird_blocks_are_the_librarys(num_blocks, r, seed):
    figure = language.bigbird_blocks(num_blocks, r, seed=seed)
    table = bb.bigbird_random_blocks(num_blocks, r, seed=seed)[0]  # (nb-2, r)
    drawn_random = {(i + 1, j) for i, row in enumerate(table.tolist()) for j in row}
    assert cells(figure, "random") == drawn_random
    assert len(drawn_random) == (num_blocks - 2) * r  # distinct blocks in every middle row
    idx = torch.arange(num_blocks)
    assert cells(figure, "window") == nonzero((idx[:, None] - idx[None, :]).abs() <= 1)
    edge = (idx == 0) | (idx == num_blocks - 1)
    assert cells(figure, "global") == nonzero(edge[:, None] | edge[None, :])
    # the union at block granularity is the library's token pattern with one token per block
    pattern = bb.bigbird_pattern(num_blocks * 5, block_size=5, num_random_blocks=r, seed=seed)[0]
    assert cells(figure, "bigbird") == nonzero(pattern[::5, ::5])
    assert cells(figure, "bigbird") == cells(figure, "random") | cells(figure, "window") | cells(figure, "global")
    plt.close(figure)


def test_bigbird_seed_changes_only_the_random_blocks():
    first, second = language.bigbird_blocks(10, 3, seed=0), language.bigbird_blocks(10, 3, seed=1)
    assert cells(first, "random") != cells(second, "random")
    assert cells(first, "window") == cells(second, "window")
    plt.close("all")


def test_bigbird_blocks_in_both_languages():
    check_language(lambda lang: language.bigbird_blocks(9, 3, seed=4, lang=lang))


# ---------------------------------------------------------------- Reformer


@pytest.mark.parametrize(
    "N,n_buckets,chunk_size,seed", [(24, 4, 4, 3), (13, 6, 5, 0), (7, 2, 3, 1), (5, 1, 5, 2), (9, 8, 2, 9)]
)
def test_lsh_steps_are_the_librarys(N, n_buckets, chunk_size, seed):
    figure = language.lsh_steps(N, n_buckets, chunk_size, seed=seed)
    # the library, called on its own with the same tokens and seed
    qk = torch.randn(1, 1, N, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    layout = rf.lsh_layout(qk, n_hashes=1, n_buckets=n_buckets, chunk_size=chunk_size, seed=seed)
    buckets = layout.buckets[0, 0, 0]
    # step 1: every token, coloured by its bucket
    assert cells(figure, "token") == {(t,) for t in range(N)}
    colors = {}
    for artist in figure.findobj():
        if (artist.get_gid() or "").startswith("token "):
            colors[int(artist.get_gid().split()[1])] = artist.get_facecolor()
    for t in range(N):
        for u in range(N):
            assert (colors[t] == colors[u]) == (buckets[t] == buckets[u]), (t, u)
    # step 2: the sorted order is the library's (bucket, then position)
    order = layout.sort_indices[0, 0, 0].tolist()
    assert cells(figure, "slot") == set(enumerate(order))
    sorted_buckets = [int(buckets[t]) for t in order]
    assert sorted_buckets == sorted(sorted_buckets)
    # step 3: the chunks
    assert cells(figure, "chunk") == {(c,) for c in range(-(-N // chunk_size))}
    # step 4: the attended pairs are the library's pattern (one round)
    assert cells(figure, "pair") == nonzero(rf.lsh_pattern(qk, n_hashes=1, n_buckets=n_buckets,
                                                           chunk_size=chunk_size, seed=seed)[0, 0])  # fmt: skip
    plt.close(figure)


def test_lsh_example_is_what_is_drawn():
    qk, layout = language.lsh_example(12, 4, 3, seed=5)
    assert qk.shape == (1, 1, 12, 8)
    assert cells(language.lsh_steps(12, 4, 3, seed=5), "pair") == nonzero(layout.pattern()[0, 0])
    plt.close("all")


def test_lsh_steps_in_both_languages():
    check_language(lambda lang: language.lsh_steps(11, 4, 3, seed=2, lang=lang))


# ---------------------------------------------------------------- errors and bytes


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: language.bigbird_blocks(0), "num_blocks"),
        (lambda: language.bigbird_blocks(7, 3), "num_blocks must be at least 8"),
        (lambda: language.bigbird_blocks(17, 3), "at most 16"),
        (lambda: language.bigbird_blocks(8, -1), "num_random_blocks"),
        (lambda: language.bigbird_blocks(8, 2.0), "num_random_blocks"),
        (lambda: language.bigbird_blocks(8, 3, seed=1.5), "seed"),
        (lambda: language.bigbird_blocks(8, 3, lang="fr"), "language"),
        (lambda: language.lsh_steps(0, 4, 4), "N"),
        (lambda: language.lsh_steps(33, 4, 4), "N must be at most 32"),
        (lambda: language.lsh_steps(12, 3, 4), "n_buckets must be 1 or even"),
        (lambda: language.lsh_steps(12, 12, 4), "n_buckets must be at most 10"),
        (lambda: language.lsh_steps(12, 4, 0), "chunk_size"),
        (lambda: language.lsh_steps(12, 4, 4, seed=True), "seed"),
        (lambda: language.lsh_steps(12, 4, 4, lang="de"), "language"),
    ],
)
def test_refused_parameters_name_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize(
    "draw",
    [
        lambda lang: language.bigbird_blocks(9, 2, seed=3, lang=lang),
        lambda lang: language.lsh_steps(15, 4, 4, seed=1, lang=lang),
    ],
)
def test_the_stored_pngs_are_the_same_bytes_every_time(draw):
    first, second = figure_images(draw), figure_images(draw)
    assert first.images == second.images
    assert first.images["en"] != first.images["ja"]
