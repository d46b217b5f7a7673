"""attnlib.viz.diagrams.kernels: the schematics run in both languages and agree with the library."""

from __future__ import annotations

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from diagram_checks import check_language, gids, texts  # noqa: E402

from attnlib import reference, viz  # noqa: E402
from attnlib.models import falcon  # noqa: E402
from attnlib.optim import flash  # noqa: E402
from attnlib.viz.diagrams import kernels  # noqa: E402

# ---------------------------------------------------------------- memory hierarchy


def test_memory_hierarchy_shows_the_papers_numbers_in_both_languages():
    check_language(lambda lang: kernels.memory_hierarchy(lang=lang))
    # FA-1, Fig. 1 left (A100): SRAM 19 TB/s (20 MB), HBM 1.5 TB/s (40 GB), CPU DRAM 12.8 GB/s (> 1 TB)
    assert [(level.bandwidth, level.size) for level in kernels.MEMORY_HIERARCHY] == [
        (19e12, 20e6), (1.5e12, 40e9), (12.8e9, 1e12)
    ]  # fmt: skip
    shown = " ".join(texts(kernels.memory_hierarchy(lang="en")))
    for label in ("19 TB/s (20 MB)", "1.5 TB/s (40 GB)", "12.8 GB/s (> 1 TB)", "163 KiB"):
        assert label in shown, shown
    assert kernels.SHARED_MEMORY_PER_BLOCK_BYTES == 163 * 1024


# ---------------------------------------------------------------- tile loops


def library_order(N: int, block_q: int, block_k: int, causal: bool, backward: bool, monkeypatch) -> list[tuple]:
    """The (i, j) tiles in the order flash's forward (FA-2) or backward (FA-1's order) computes them.

    Query row i and key j carry their index in feature 0 (scale 1), so each tile names itself.
    """
    positions = torch.arange(N, dtype=torch.float64)
    q = torch.zeros(1, 1, N, 2, dtype=torch.float64)
    q[..., 0] = positions
    k = torch.zeros(1, 1, N, 2, dtype=torch.float64)
    k[..., 0] = positions
    v = torch.randn(1, 1, N, 2, dtype=torch.float64)
    seen = []
    name = "_backward_tile_" if backward else "_forward_tile_"
    original = getattr(flash, name)

    def record(q_tile, k_tile, *rest):
        seen.append((int(q_tile[0, 0, 0, 0]) // block_q, int(k_tile[0, 0, 0, 0]) // block_k))
        return original(q_tile, k_tile, *rest)

    options = dict(causal=causal, scale=1.0, block_q=block_q, block_k=block_k)
    out, lse = flash.tiled_attention_forward(q, k * 1e-3, v, **options) if backward else (None, None)
    monkeypatch.setattr(flash, name, record)
    if backward:
        flash.tiled_attention_backward(q, k, v, out, lse, torch.ones_like(out), **options)
    else:
        flash.tiled_attention_forward(q, k, v, **options)
    return seen


@pytest.mark.parametrize("N, block_q, block_k", [(48, 16, 8), (1, 1, 1), (7, 3, 2), (10, 4, 5), (9, 9, 4)])
@pytest.mark.parametrize("causal", [False, True])
def test_tile_schedule_is_the_order_flash_computes(N, block_q, block_k, causal, monkeypatch):
    fa2 = kernels.tile_schedule(N, block_q, block_k, version=2, causal=causal)
    fa1 = kernels.tile_schedule(N, block_q, block_k, version=1, causal=causal)
    assert fa2 == library_order(N, block_q, block_k, causal, False, monkeypatch)
    monkeypatch.undo()
    assert fa1 == library_order(N, block_q, block_k, causal, True, monkeypatch)
    assert sorted(fa1) == sorted(fa2)  # the same tiles, in another order


@pytest.mark.parametrize("N, block_q, block_k, causal", [(48, 16, 8, True), (7, 3, 2, False), (1, 1, 1, True)])
def test_drawn_tiles_are_numbered_in_the_librarys_order(N, block_q, block_k, causal):
    figure = kernels.flash_tile_loops(N, block_q, block_k, causal=causal)
    assert figure.get_figwidth() <= 7
    for ax, version in zip(figure.axes, (1, 2)):
        order = kernels.tile_schedule(N, block_q, block_k, version=version, causal=causal)
        numbers = {(round(t.get_position()[1], 6), round(t.get_position()[0], 6)): t.get_text() for t in ax.texts}
        drawn = {}
        for patch in ax.patches:
            if (patch.get_gid() or "").startswith("tile "):
                i, j = map(int, patch.get_gid()[5:].split(","))
                x, y = patch.get_xy()
                assert (x, y) == (j * block_k, i * block_q)  # the tile's keys and queries
                centre = (round(y + patch.get_height() / 2, 6), round(x + patch.get_width() / 2, 6))
                drawn[(i, j)] = int(numbers[centre])
        assert drawn == {tile: step for step, tile in enumerate(order, start=1)}
    plt.close(figure)


@pytest.mark.parametrize("N, block_q, block_k", [(48, 16, 8), (5, 2, 3), (1, 1, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_tile_loops_in_both_languages(N, block_q, block_k, causal):
    check_language(lambda lang: kernels.flash_tile_loops(N, block_q, block_k, causal=causal, lang=lang))


# ---------------------------------------------------------------- heads


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 2), (1, 1), (3, 3), (6, 3), (5, 1), (16, 4), (9, 3)])
def test_heads_map_is_the_librarys(n_heads, n_kv_heads):
    heads = kernels.kv_head_of(n_heads, n_kv_heads)
    # reference: expand_kv_heads copies key/value head g to the query heads that read it
    labelled = torch.arange(n_kv_heads, dtype=torch.float64).view(1, n_kv_heads, 1, 1)
    assert reference.expand_kv_heads(labelled, n_heads).flatten().long().tolist() == heads
    # flash: with v = g everywhere in key/value head g, query head h outputs the g it reads
    q = torch.randn(1, n_heads, 3, 2, dtype=torch.float64)
    k = torch.randn(1, n_kv_heads, 3, 2, dtype=torch.float64)
    v = labelled.expand(1, n_kv_heads, 3, 2).clone()
    out, _ = flash.tiled_attention_forward(q, k, v, block_q=2, block_k=2)
    assert out[0, :, 0, 0].round().long().tolist() == heads
    # the figure: one link from each query head to its key/value head, in every panel
    figure = kernels.attention_heads(n_heads, n_kv_heads)
    links = gids(figure, "link ")
    plt.close(figure)
    expected = [f"link {h},{h}" for h in range(n_heads)]  # multi-head
    expected += [f"link {h},{g}" for h, g in enumerate(heads)]  # grouped
    expected += [f"link {h},0" for h in range(n_heads)]  # multi-query
    assert links == expected


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 2), (4, 1), (8, 8)])
def test_falcon_layout_groups_the_heads_as_drawn(n_heads, n_kv_heads):
    """Falcon's fused layout [q.., k_g, v_g] per group puts query head h with key head kv_head_of(h)."""
    d = 2
    config = falcon.FalconConfig(
        vocab_size=8, hidden_size=n_heads * d, num_attention_heads=n_heads, num_kv_heads=n_kv_heads,
        new_decoder_architecture=True,
    )  # fmt: skip
    slots = n_heads + 2 * n_kv_heads
    fused = torch.arange(slots, dtype=torch.float64).repeat_interleave(d).view(1, 1, slots * d)  # slot numbers
    q, k, _ = falcon.split_fused_qkv(fused, config)
    group_slots = n_heads // n_kv_heads + 2  # each group's query heads, then its key and value head
    q_group = [int(q[0, h, 0, 0]) // group_slots for h in range(n_heads)]
    k_group = [int(k[0, g, 0, 0]) // group_slots for g in range(n_kv_heads)]
    assert [k_group[g] for g in kernels.kv_head_of(n_heads, n_kv_heads)] == q_group


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 2), (1, 1), (6, 3), (7, 1)])
def test_attention_heads_in_both_languages(n_heads, n_kv_heads):
    check_language(lambda lang: kernels.attention_heads(n_heads, n_kv_heads, lang=lang))


# ---------------------------------------------------------------- bad input, determinism


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: kernels.attention_heads(6, 4), "n_heads must be divisible by n_kv_heads"),
        (lambda: kernels.attention_heads(4, 0), "n_kv_heads"),
        (lambda: kernels.attention_heads(0, 1), "n_heads"),
        (lambda: kernels.attention_heads(32, 8), "n_heads must be at most 16"),
        (lambda: kernels.kv_head_of(3, 2), "n_heads must be divisible by n_kv_heads"),
        (lambda: kernels.flash_tile_loops(0, 4, 4), "N"),
        (lambda: kernels.flash_tile_loops(16, 0, 4), "block_q"),
        (lambda: kernels.flash_tile_loops(16, 4, -1), "block_k"),
        (lambda: kernels.flash_tile_loops(1024, 16, 16), "at most 64 tiles"),
        (lambda: kernels.flash_tile_loops(16, 4, 4, causal=1), "causal"),
        (lambda: kernels.tile_schedule(16, 4, 4, version=3), "version"),
        (lambda: kernels.memory_hierarchy(lang="fr"), "language"),
        (lambda: kernels.attention_heads(4, 2, lang="EN"), "language"),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_stored_images_are_the_same_bytes_every_time():
    def draw_all():
        return [
            viz.figure_images(lambda lang: kernels.memory_hierarchy(lang=lang)).images,
            viz.figure_images(lambda lang: kernels.flash_tile_loops(48, 16, 8, causal=True, lang=lang)).images,
            viz.figure_images(lambda lang: kernels.attention_heads(4, 2, lang=lang)).images,
            viz.figure_images(lambda lang: kernels.kv_cache_decoding(6, 4, lang=lang)).images,
        ]

    first = draw_all()
    assert first == draw_all()
    for images in first:
        assert images["en"] != images["ja"]


# ---------------------------------------------------------------- KV cache


@pytest.mark.parametrize("prompt_tokens, new_tokens", [(6, 4), (1, 1), (5, 3), (16, 8)])
def test_cache_schedule_is_what_falcons_cache_holds(prompt_tokens, new_tokens):
    config = falcon.FalconConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    model = falcon.FalconForCausalLM(config).eval()
    cache = falcon.KVCache(config, batch_size=1, max_length=prompt_tokens + new_tokens)
    written = []
    with torch.no_grad():
        for start, stop in kernels.cache_schedule(prompt_tokens, new_tokens):
            before = cache.length
            model(torch.zeros(1, stop - start, dtype=torch.long), cache=cache)
            written.append((before, cache.length))
    assert written == kernels.cache_schedule(prompt_tokens, new_tokens)
    figure = kernels.kv_cache_decoding(prompt_tokens, new_tokens)
    drawn = gids(figure, "write ")
    plt.close(figure)
    expected = [f"write {row},{p}" for row, (start, stop) in enumerate(written) for p in range(start, stop)]
    assert sorted(drawn) == sorted(expected)


@pytest.mark.parametrize("prompt_tokens, new_tokens", [(6, 4), (1, 1), (3, 8)])
def test_kv_cache_decoding_in_both_languages(prompt_tokens, new_tokens):
    check_language(lambda lang: kernels.kv_cache_decoding(prompt_tokens, new_tokens, lang=lang))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: kernels.kv_cache_decoding(0, 3), "prompt_tokens"),
        (lambda: kernels.kv_cache_decoding(4, 0), "new_tokens"),
        (lambda: kernels.kv_cache_decoding(20, 8), "at most 24"),
        (lambda: kernels.kv_cache_decoding(4, 2, lang="de"), "language"),
    ],
)
def test_kv_cache_bad_arguments_are_named(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
