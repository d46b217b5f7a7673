"""attnlib.viz.diagrams.kernels: the schematics run in both languages and agree with the library."""

from __future__ import annotations

import math

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


# ---------------------------------------------------------------- plotly sliders: texts in both languages


def bilingual_texts(figure) -> list:
    """Every viz.text in a plotly figure (titles, ticks, categories, slider steps)."""
    found = []

    def walk(node):
        if isinstance(node, viz.Bilingual):
            found.append(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(figure.to_plotly_json())
    return found


def check_plotly_language(figure) -> None:
    """English texts have no Japanese; each Japanese text has Japanese and no English word left."""
    from diagram_checks import ENGLISH_WORD, JAPANESE

    found = bilingual_texts(figure)
    assert found
    assert not [t for t in found if JAPANESE.search(t.en)], found
    assert all(JAPANESE.search(t.ja) for t in found), found
    assert not [t.ja for t in found if ENGLISH_WORD.search(t.ja)], found


def slider_titles(figure) -> list:
    return [step.args[1]["title.text"] for step in figure.layout.sliders[0].steps]


def slider_frames(figure) -> list:
    return [step.args[0]["z"][0] for step in figure.layout.sliders[0].steps]


# ---------------------------------------------------------------- one query block, step by step (chapter 10)

ROW_BLOCK_CASES = [  # N_q, N_k, block_q, block_k, row_block, causal
    (20, 20, 4, 4, 3, True),
    (20, 20, 4, 4, 3, False),
    (7, 7, 3, 2, 2, True),
    (5, 9, 2, 4, 1, True),
    (9, 5, 4, 3, 2, True),
    (1, 1, 1, 1, 0, False),
    (11, 13, 5, 3, 0, True),
]


def random_qk(N_q: int, N_k: int, d: int = 6, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N_q, d, generator=gen, dtype=torch.float64), torch.randn(
        N_k, d, generator=gen, dtype=torch.float64
    )


def keys_read_by_flash(N_q, N_k, block_q, block_k, row_block, causal, monkeypatch) -> list[tuple[int, int]]:
    """(first key, one past the last) of each key tile flash.tiled_attention_forward reads for the block."""
    q = torch.zeros(1, 1, N_q, 2, dtype=torch.float64)
    q[0, 0, :, 0] = torch.arange(N_q, dtype=torch.float64)
    k = torch.zeros(1, 1, N_k, 2, dtype=torch.float64)
    k[0, 0, :, 1] = torch.arange(N_k, dtype=torch.float64)
    seen = []
    original = flash._forward_tile_

    def record(q_tile, k_tile, *rest):
        if int(q_tile[0, 0, 0, 0]) // block_q == row_block:
            keys = k_tile[0, 0, :, 1]
            seen.append((int(keys[0]), int(keys[-1]) + 1))
        return original(q_tile, k_tile, *rest)

    monkeypatch.setattr(flash, "_forward_tile_", record)
    flash.tiled_attention_forward(q, k, k, causal=causal, scale=1.0, block_q=block_q, block_k=block_k)
    return seen


@pytest.mark.parametrize("N_q, N_k, block_q, block_k, row_block, causal", ROW_BLOCK_CASES)
def test_row_block_steps_end_at_the_dense_max_and_sum(N_q, N_k, block_q, block_k, row_block, causal, monkeypatch):
    q, k = random_qk(N_q, N_k)
    steps = kernels.row_block_steps(q, k, block_q, block_k, row_block, causal=causal)
    rows = slice(row_block * block_q, min((row_block + 1) * block_q, N_q))
    scores = q @ k.T / math.sqrt(q.shape[1])  # (N_q, N_k), dense
    if causal:
        scores = scores.masked_fill(~reference.causal_mask(N_q, N_k), float("-inf"))
    scores = scores[rows]
    sees = torch.isfinite(scores).any(dim=1)  # rows that see a key
    if not sees.any():
        assert steps == []
        return
    m = scores.amax(dim=1)
    l = torch.exp(scores - m[:, None]).sum(dim=1)
    last = steps[-1]
    assert torch.allclose(torch.tensor(last.row_max, dtype=torch.float64)[sees], m[sees], rtol=0, atol=1e-12)
    assert torch.allclose(torch.tensor(last.row_sum, dtype=torch.float64)[sees], l[sees], rtol=0, atol=1e-12)
    # m + log l is the library's logsumexp, and the tiles are those the library reads
    _, lse = flash.tiled_attention_forward(q[None, None], k[None, None], k[None, None], causal=causal,
                                           block_q=block_q, block_k=block_k)  # fmt: skip
    mine = torch.tensor(last.row_max, dtype=torch.float64) + torch.log(torch.tensor(last.row_sum, dtype=torch.float64))
    assert torch.allclose(mine[sees], lse[0, 0, rows][sees], rtol=0, atol=1e-12)
    read = keys_read_by_flash(N_q, N_k, block_q, block_k, row_block, causal, monkeypatch)
    assert [(step.start, step.stop) for step in steps] == read
    assert [step.tile for step in steps] == [start // block_k for start, _ in read]


@pytest.mark.parametrize("N_q, N_k, block_q, block_k, row_block, causal", ROW_BLOCK_CASES)
def test_row_block_frames_and_titles_follow_the_steps(N_q, N_k, block_q, block_k, row_block, causal):
    q, k = random_qk(N_q, N_k, seed=1)
    steps = kernels.row_block_steps(q, k, block_q, block_k, row_block, causal=causal)
    figure = kernels.row_block_slider(q, k, block_q, block_k, row_block, causal=causal)
    frames = slider_frames(figure)
    assert frames == kernels.row_block_frames(q, k, block_q, block_k, row_block, causal=causal)
    assert len(frames) == len(steps) + 1
    first_row = row_block * block_q
    offset = N_k - N_q
    for frame, step in zip(frames[1:], steps):
        for i, row in enumerate(frame):
            assert [j for j, value in enumerate(row) if value == kernels.READ_NOW] == [
                j for j in range(step.start, step.stop) if not (causal and j > first_row + i + offset)
            ]  # the tile read at this step, less what the causal mask hides in it
            masked = [j for j, value in enumerate(row) if value == kernels.READ_MASKED]  # in the tiles read so far
            assert masked == [j for j in range(step.stop) if causal and j > first_row + i + offset]
    stop = steps[-1].stop if steps else 0
    assert all(
        (value == kernels.NEVER_READ) == (j >= stop) for row in frames[-1] for j, value in enumerate(row)
    )  # fmt: skip
    titles = slider_titles(figure)
    for title, step in zip(titles[1:], steps):  # m and l after the step, rounded, in both languages
        for language in ("en", "ja"):
            shown = viz.in_language(title, language)
            assert ", ".join(f"{v:.2f}" for v in step.row_max) in shown
            assert ", ".join(f"{v:.2f}" for v in step.row_sum) in shown
    check_plotly_language(figure)


def test_row_block_figure_data_is_integer_categories():
    q, k = random_qk(20, 20)
    figure = kernels.row_block_slider(q, k, 4, 4, 3, causal=True)
    for frame in slider_frames(figure):
        assert all(isinstance(v, int) and 0 <= v < len(kernels.ROW_BLOCK_CATEGORIES) for row in frame for v in row)


# ---------------------------------------------------------------- the Triton program (chapter 11)


try:  # the Triton kernel's own helpers (the interpreter runs them on the CPU: conftest sets TRITON_INTERPRET)
    import triton
    import triton.language as tl

    from attnlib.optim import flash_triton as ft
except ImportError:  # no triton: the tests that need it are skipped
    ft = None
else:
    key_range = ft._key_range  # a global: the interpreter resolves the kernel's names in this module

    @triton.jit
    def key_range_probe(Ranges, N_Q, N_K, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        n_full, n_hi = key_range(pid_m * BLOCK_M, N_Q, N_K, CAUSAL, BLOCK_M, BLOCK_N)
        tl.store(Ranges + 2 * pid_m, n_full)
        tl.store(Ranges + 2 * pid_m + 1, n_hi)


needs_triton = pytest.mark.skipif(ft is None, reason="triton is not installed")


def kernel_key_ranges(N_q, N_k, causal, block_m, block_n) -> list[tuple[int, int]]:
    """(n_full, n_hi) of every program, from the forward kernel's own _key_range."""
    ranges = torch.full((triton.cdiv(N_q, block_m), 2), -1, dtype=torch.int32)
    key_range_probe[(len(ranges),)](ranges, N_q, N_k, CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n)
    return [tuple(r) for r in ranges.tolist()]


@needs_triton
@pytest.mark.parametrize("N_q, N_k", [(512, 512), (1, 1), (17, 33), (64, 40), (130, 257), (40, 100)])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("block_m, block_n", [(128, 64), (32, 16), (16, 32)])
def test_program_tiles_are_the_kernels_key_range(N_q, N_k, causal, block_m, block_n):
    for program, (n_full, n_hi) in enumerate(kernel_key_ranges(N_q, N_k, causal, block_m, block_n)):
        tiles = kernels.program_tiles(N_q, N_k, block_m, block_n, program, causal=causal)
        assert tiles.rows == range(program * block_m, min((program + 1) * block_m, N_q))
        assert tiles.unmasked == range(n_full // block_n)  # stage 1: range(0, n_full, BLOCK_N)
        assert list(tiles.masked) == [start // block_n for start in range(n_full, n_hi, block_n)]  # stage 2
        assert tiles.skipped == range(tiles.masked.stop, math.ceil(N_k / block_n))


@needs_triton
def test_forward_grid_and_tiles_are_the_launchs(monkeypatch):
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                launches.append((tuple(grid), kwargs))

            return launch

    monkeypatch.setattr(ft, "_flash_fwd_kernel", Recorder())
    B, H, N_q, N_k, d = 2, 3, 70, 50, 16
    q, k, v = torch.randn(B, H, N_q, d), torch.randn(B, 1, N_k, d), torch.randn(B, 1, N_k, d)
    ft.flash_forward(q, k, v, causal=True)
    config = ft.kernel_config("forward", d, torch.float32, None)  # the interpreter's configuration
    ((grid, options),) = launches
    assert grid == kernels.forward_grid(N_q, B * H, config.block_m)
    assert (options["BLOCK_M"], options["BLOCK_N"]) == (config.block_m, config.block_n)
    assert (options["num_warps"], options["num_stages"]) == (config.num_warps, config.num_stages)


@pytest.mark.parametrize(
    "N, d, capability, program, causal",
    [(512, 64, 80, 2, True), (512, 128, 90, 3, False), (200, 64, 75, 2, True), (64, 16, None, 0, True)],
)
@needs_triton
def test_triton_program_draws_the_programs_tiles(N, d, capability, program, causal):
    config = ft.kernel_config("forward", d, torch.float16, capability)
    tiles = kernels.program_tiles(N, N, config.block_m, config.block_n, program, causal=causal)
    figure = kernels.triton_program(N, head_dim=d, dtype=torch.float16, capability=capability, program=program,
                                    causal=causal)  # fmt: skip
    assert figure.get_figwidth() <= 7
    drawn = sorted(gids(figure, "tile "))
    shown = " ".join(texts(figure))
    kinds = {j: "unmasked" for j in tiles.unmasked} | {j: "masked" for j in tiles.masked}
    expected = [f"tile {program},{j},{kinds.get(j, 'skipped')}" for j in range(math.ceil(N / config.block_n))]
    assert drawn == sorted(expected)
    for label in (f"BLOCK_M = {config.block_m}", f"BLOCK_N = {config.block_n}", f"{config.num_stages} buffers",
                  f"grid = ({math.ceil(N / config.block_m)}, B x H)", f"rows {tiles.rows.start}..{tiles.rows.stop - 1}",
                  f"{len(tiles.unmasked) + len(tiles.masked)} tiles"):  # fmt: skip
        assert label in shown, (label, shown)


@pytest.mark.parametrize("N, program, causal", [(512, 2, True), (48, 0, False), (1, 0, True)])
@needs_triton
def test_triton_program_in_both_languages(N, program, causal):
    check_language(lambda lang: kernels.triton_program(N, head_dim=64, dtype=torch.float16, capability=80,
                                                       program=program, causal=causal, lang=lang))  # fmt: skip


# ---------------------------------------------------------------- the decoder block (chapter 12)


def evaluate_block(edges, modules: dict, x: torch.Tensor) -> torch.Tensor:
    """Run the drawn graph: each node applies its module to its one input, or adds its inputs."""
    inputs: dict[str, list] = {}
    for source, target in edges:
        inputs.setdefault(target, []).append(source)
    values = {"x": x}
    while "out" not in values:
        for node, sources in inputs.items():
            if node in values or not all(s in values for s in sources):
                continue
            if node.startswith("add") or node == "out":
                values[node] = sum(values[s] for s in sources)
            else:
                (source,) = sources
                values[node] = modules[node](values[source])
    return values["out"]


@pytest.mark.parametrize("new_decoder_architecture", [True, False])
def test_drawn_parallel_block_is_falcons(new_decoder_architecture):
    torch.manual_seed(0)
    config = falcon.FalconConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 new_decoder_architecture=new_decoder_architecture)  # fmt: skip
    layer = falcon.FalconDecoderLayer(config).double()
    with torch.no_grad():  # LayerNorms that differ from each other and from the identity
        for module in layer.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    options = dict(start=0, cache=None, layer=0, attention="reference", output_attentions=False)
    modules = {name: module for name, module in layer.named_children()}
    modules["self_attention"] = lambda u: layer.self_attention(u, **options)[0]
    with torch.no_grad():
        expected, _ = layer(x, **options)
        parallel = evaluate_block(kernels.decoder_block_graph(new_decoder_architecture), modules, x)
        norm = "ln_mlp" if new_decoder_architecture else "input_layernorm"
        modules["post_attention_layernorm"] = modules[norm]
        modules.setdefault("input_layernorm", modules.get("ln_attn"))
        sequential = evaluate_block(kernels.decoder_block_graph(new_decoder_architecture, parallel=False), modules, x)
    assert torch.allclose(parallel, expected, rtol=0, atol=1e-12)
    assert not torch.allclose(sequential, expected, atol=1e-3)  # the other block computes something else
    figure = kernels.decoder_blocks(new_decoder_architecture)
    drawn = gids(figure, "edge ")
    plt.close(figure)
    edges = [f"edge {a}->{b}" for parallel in (False, True)
             for a, b in kernels.decoder_block_graph(new_decoder_architecture, parallel=parallel)]  # fmt: skip
    assert drawn == edges


@pytest.mark.parametrize("new_decoder_architecture", [True, False])
def test_decoder_blocks_in_both_languages(new_decoder_architecture):
    check_language(lambda lang: kernels.decoder_blocks(new_decoder_architecture, lang=lang))


# ---------------------------------------------------------------- the KV cache slider (chapter 12)


@pytest.mark.parametrize("prompt_tokens, new_tokens", [(13, 4), (1, 1), (5, 3), (2, 9)])
def test_kv_cache_slider_frames_are_falcons_cache(prompt_tokens, new_tokens):
    config = falcon.FalconConfig(vocab_size=8, hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    model = falcon.FalconForCausalLM(config).eval()
    cache = falcon.KVCache(config, batch_size=1, max_length=prompt_tokens + new_tokens)
    figure = kernels.kv_cache_slider(prompt_tokens, new_tokens)
    frames = slider_frames(figure)
    assert frames == kernels.kv_cache_frames(prompt_tokens, new_tokens)
    with torch.no_grad():
        for frame, (start, stop) in zip(frames, kernels.cache_schedule(prompt_tokens, new_tokens), strict=True):
            before = cache.length
            model(torch.zeros(1, stop - start, dtype=torch.long), cache=cache)
            for row in frame:  # keys and values: filled before, written now, empty
                assert row == [1] * before + [2] * (cache.length - before) + [0] * (cache.max_length - cache.length)
    titles = slider_titles(figure)
    assert f"{prompt_tokens} tokens written" in titles[0]
    assert f"1 query reads {prompt_tokens + new_tokens} keys" in titles[-1]
    check_plotly_language(figure)


# ---------------------------------------------------------------- bad input of the new figures


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: kernels.row_block_steps(torch.randn(8, 4), torch.randn(8, 4), 4, 4, 2), "row_block must be"),
        (lambda: kernels.row_block_steps(torch.randn(8, 4), torch.randn(8, 3), 4, 4, 0), "same feature dimension"),
        (lambda: kernels.row_block_steps(torch.randn(2, 8, 4), torch.randn(8, 4), 4, 4, 0), "q must be"),
        (lambda: kernels.row_block_steps(torch.randn(8, 4), torch.ones(8, 4, dtype=torch.long), 4, 4, 0), "k must be"),
        (lambda: kernels.row_block_steps(torch.randn(8, 4), torch.randn(8, 4), 0, 4, 0), "block_q"),
        (lambda: kernels.row_block_steps(torch.randn(8, 4), torch.randn(8, 4), 4, 0, 0), "block_k"),
        (lambda: kernels.row_block_steps(torch.randn(8, 4), torch.randn(8, 4), 4, 4, 0, causal=1), "causal"),
        (lambda: kernels.row_block_slider(torch.randn(16, 4), torch.randn(8, 4), 16, 4, 0), "at most 8 query rows"),
        (lambda: kernels.row_block_slider(torch.randn(8, 4), torch.randn(8, 4), 4, 4, 0, digits=0), "digits"),
        (lambda: kernels.program_tiles(64, 64, 16, 16, 4), "program must be"),
        (lambda: kernels.program_tiles(64, 0, 16, 16, 0), "N_k"),
        (lambda: kernels.program_tiles(64, 64, 16, 16, 0, causal="yes"), "causal"),
        (lambda: kernels.forward_grid(64, 0, 16), "batch_heads"),
        (
            lambda: kernels.triton_program(4096, head_dim=64, dtype=torch.float16, capability=80, program=0),
            "at most 256 tiles",
        ),
        (
            lambda: kernels.triton_program(512, head_dim=64, dtype=torch.float16, capability=80, program=0, lang="fr"),
            "language",
        ),
        (lambda: kernels.decoder_block_graph(1), "new_decoder_architecture"),
        (lambda: kernels.decoder_blocks(True, lang="de"), "language"),
        (lambda: kernels.kv_cache_slider(40, 30), "at most 64"),
        (lambda: kernels.kv_cache_frames(0, 3), "prompt_tokens"),
    ],
)
def test_new_figures_name_their_bad_arguments(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_new_static_figures_are_the_same_bytes_every_time():
    def draw_all():
        return [
            viz.figure_images(lambda lang: kernels.triton_program(
                512, head_dim=64, dtype=torch.float16, capability=80, program=2, causal=True, lang=lang)).images,
            viz.figure_images(lambda lang: kernels.decoder_blocks(True, lang=lang)).images,
        ]  # fmt: skip

    first = draw_all()
    assert first == draw_all()
    for images in first:
        assert images["en"] != images["ja"]
