"""attnlib.viz.diagrams.blocks: the schematics run in both languages and agree with the library."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")


from diagram_checks import ENGLISH_WORD, JAPANESE, check_language, gids  # noqa: E402

from attnlib import viz  # noqa: E402
from attnlib.optim import block_mask as bmk  # noqa: E402
from attnlib.optim import ring  # noqa: E402
from attnlib.viz.diagrams import blocks  # noqa: E402


def dense(mask_mod, N_q: int, N_k: int) -> torch.Tensor:
    q = torch.arange(N_q).view(1, 1, -1, 1)
    k = torch.arange(N_k).view(1, 1, 1, -1)
    return mask_mod(torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1, 1, dtype=torch.long), q, k)[0, 0]


PATTERNS = [  # (mask_mod, N_q, N_k, block_q, block_k)
    (bmk.causal_mask_mod(256, 256), 256, 256, 64, 64),
    (bmk.causal_mask_mod(7, 7), 7, 7, 3, 2),
    (bmk.causal_mask_mod(5, 9), 5, 9, 2, 4),
    (bmk.sliding_window_mask_mod(24), 256, 256, 32, 32),
    (bmk.sliding_window_mask_mod(3, causal=True), 13, 13, 4, 5),
    (bmk.sliding_window_mask_mod(1), 1, 1, 1, 1),
    (bmk.sliding_window_mask_mod(2), 10, 10, 5, 5),
]


# ---------------------------------------------------------------- block masks


@pytest.mark.parametrize("mask_mod, N_q, N_k, block_q, block_k", PATTERNS)
def test_drawn_tile_kinds_are_the_block_masks(mask_mod, N_q, N_k, block_q, block_k):
    library = bmk.block_mask_from_mask_mod(mask_mod, None, None, N_q, N_k, block_q=block_q, block_k=block_k)
    expected = [[blocks.TILE_KINDS[int(kind)] for kind in row] for row in library.kinds[0, 0]]
    mask = dense(mask_mod, N_q, N_k)
    from_dense = bmk.block_mask_from_dense(mask, block_q=block_q, block_k=block_k).kinds[0, 0]
    assert torch.equal(from_dense, library.kinds[0, 0])
    assert blocks.tile_kinds(mask, block_q, block_k) == expected
    drawn = gids(blocks.block_mask_tiles(mask, block_q, block_k), "tile ")
    assert sorted(drawn) == sorted(
        f"tile {i},{j},{kind}" for i, row in enumerate(expected) for j, kind in enumerate(row)
    )
    assert blocks.TILE_KINDS[bmk.EMPTY] == "empty" and blocks.TILE_KINDS[bmk.FULL] == "full"


def test_the_three_kinds_appear_in_the_chapters_causal_mask():
    kinds = blocks.tile_kinds(dense(bmk.causal_mask_mod(256, 256), 256, 256), 64, 64)
    assert kinds[0] == ["partial", "empty", "empty", "empty"]
    assert kinds[3] == ["full", "full", "full", "partial"]


def test_a_ragged_full_tile_is_partial():
    assert blocks.tile_kinds(torch.ones(5, 5, dtype=torch.bool), 4, 4) == [["full", "partial"], ["partial", "partial"]]


@pytest.mark.parametrize("mask_mod, N_q, N_k, block_q, block_k", PATTERNS[:5])
def test_block_mask_tiles_in_both_languages(mask_mod, N_q, N_k, block_q, block_k):
    mask = dense(mask_mod, N_q, N_k)
    title = viz.text(en="a causal mask", ja="因果マスク")
    check_language(lambda lang: blocks.block_mask_tiles(mask, block_q, block_k, title=title, lang=lang))


# ---------------------------------------------------------------- the ring


@pytest.mark.parametrize("P", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("layout", ["plain", "zigzag"])
def test_ring_steps_are_the_schedules(P, layout):
    schedule = ring.ring_schedule(P, layout, 2 * P * 3)
    expected = [f"shard {s},{r},{ranks[r]['source']}" for s, ranks in enumerate(schedule) for r in range(P)]
    assert [blocks.shard_source(r, s, P) for s in range(P) for r in range(P)] == [
        ranks[r]["source"] for ranks in schedule for r in range(P)
    ]
    assert sorted(gids(blocks.ring_steps(P), "shard ")) == sorted(expected)


@pytest.mark.parametrize("P", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("layout", ["plain", "zigzag"])
def test_chunk_owners_are_the_librarys_layout(P, layout):
    owners = blocks.chunk_owners(P, layout)
    from_library = {c: r for r in range(P) for c in ring.chunks_of_rank(r, P, layout)}
    assert owners == [from_library[c] for c in range(len(owners))]
    N = 2 * P * 3
    tokens = torch.arange(N).view(1, 1, N, 1)
    size = N // len(owners)
    for r in range(P):  # shard() gives each rank the tokens of the chunks drawn with its number
        held = ring.shard(tokens, r, P, layout=layout).flatten().tolist()
        assert held == [t for c, owner in enumerate(owners) if owner == r for t in range(c * size, (c + 1) * size)]
    drawn = gids(blocks.ring_layouts(P, N), f"chunk {layout},")
    assert drawn == [f"chunk {layout},{c},{r}" for c, r in enumerate(owners)]


@pytest.mark.parametrize("P", [1, 2, 3, 4, 6])
def test_ring_figures_in_both_languages(P):
    check_language(lambda lang: blocks.ring_steps(P, lang=lang))
    check_language(lambda lang: blocks.ring_layouts(P, 2 * P * 2, lang=lang))


# ---------------------------------------------------------------- bad input, determinism


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: blocks.tile_kinds(torch.ones(4, 4), 2, 2), "mask must be a 2-D torch.bool"),
        (lambda: blocks.tile_kinds(torch.ones(2, 4, 4, dtype=torch.bool), 2, 2), "mask must be a 2-D"),
        (lambda: blocks.tile_kinds([[True]], 1, 1), "mask"),
        (lambda: blocks.tile_kinds(torch.ones(0, 4, dtype=torch.bool), 1, 1), "mask must have at least one"),
        (lambda: blocks.tile_kinds(torch.ones(4, 4, dtype=torch.bool), 0, 2), "block_q"),
        (lambda: blocks.tile_kinds(torch.ones(4, 4, dtype=torch.bool), 2, 2.0), "block_k"),
        (lambda: blocks.block_mask_tiles(torch.ones(512, 512, dtype=torch.bool), 16, 16), "at most 256 tiles"),
        (lambda: blocks.block_mask_tiles(torch.ones(4, 4, dtype=torch.bool), 2, 2, lang="de"), "language"),
        (lambda: blocks.ring_steps(0), "world_size"),
        (lambda: blocks.ring_steps(9), "world_size must be at most 8"),
        (lambda: blocks.ring_steps(4, lang="EN"), "language"),
        (lambda: blocks.shard_source(4, 0, 4), "rank"),
        (lambda: blocks.shard_source(0, -1, 4), "step"),
        (lambda: blocks.chunk_owners(4, "ring"), "layout"),
        (lambda: blocks.ring_layouts(4, 12), "N must be divisible by 2 \\* world_size = 8"),
        (lambda: blocks.ring_layouts(4, 0), "N"),
        (lambda: blocks.ring_layouts(4, 256), "N must be at most 128"),
        (lambda: blocks.ring_layouts(True, 8), "world_size"),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_stored_images_are_the_same_bytes_every_time():
    mask = dense(bmk.sliding_window_mask_mod(3, causal=True), 13, 13)

    def draw_all():
        return [
            viz.figure_images(lambda lang: blocks.block_mask_tiles(mask, 4, 5, lang=lang)).images,
            viz.figure_images(lambda lang: blocks.ring_steps(4, lang=lang)).images,
            viz.figure_images(lambda lang: blocks.ring_layouts(4, 16, lang=lang)).images,
        ]

    first = draw_all()
    assert first == draw_all()
    for images in first:
        assert images["en"] != images["ja"]


# ---------------------------------------------------------------- the ring, step by step (a slider)


@pytest.mark.parametrize("P", [1, 2, 3, 4, 5, 8])
def test_ring_slider_frames_are_the_schedules(P):
    schedule = ring.ring_schedule(P, "plain", 2 * P)
    figure = blocks.ring_slider(P)
    frames = [step.args[0]["z"][0] for step in figure.layout.sliders[0].steps]
    assert frames == blocks.ring_hold_frames(P)
    for s, frame in enumerate(frames):
        for r in range(P):
            held = [j for j, value in enumerate(frame[r]) if value == 2]
            assert held == [schedule[s][r]["source"]] == [ring.source_rank(r, s, P)]
            earlier = sorted(j for j, value in enumerate(frame[r]) if value == 1)
            assert earlier == sorted(schedule[t][r]["source"] for t in range(s))
    assert all(value > 0 for row in frames[-1] for value in row)  # every rank has held every shard
    titles = [step.args[1]["title.text"] for step in figure.layout.sliders[0].steps]
    for s, title in enumerate(titles):
        held = ", ".join(f"KV{schedule[s][r]['source']}" for r in range(P))
        assert held in title.en and held in title.ja
        assert not JAPANESE.search(title.en) and JAPANESE.search(title.ja) and not ENGLISH_WORD.search(title.ja)


def test_ring_slider_labels_in_both_languages():
    figure = blocks.ring_slider(4)
    layout = figure.layout
    for label in [layout.xaxis.title.text, layout.yaxis.title.text, layout.sliders[0].currentvalue.prefix]:
        assert isinstance(label, viz.Bilingual) and JAPANESE.search(label.ja) and not JAPANESE.search(label.en)
    assert [c.ja for c in blocks.HOLD_CATEGORIES] == [viz.in_language(c, "ja") for c in layout.meta["attnlib"]["cat"]]


def test_source_rank_is_the_rings_step():
    assert [ring.source_rank(r, 1, 4) for r in range(4)] == [3, 0, 1, 2]
    with pytest.raises(ValueError, match="rank"):
        ring.source_rank(4, 0, 4)
    with pytest.raises(ValueError, match="step"):
        ring.source_rank(0, 4, 4)
    with pytest.raises(ValueError, match="world_size"):
        ring.source_rank(0, 0, 0)
    with pytest.raises(ValueError, match="world_size must be at most 8"):
        blocks.ring_slider(9)
