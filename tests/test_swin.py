"""Tests for attnlib.sparse.swin: (shifted) window attention equals dense attention under its pattern."""

from __future__ import annotations

import pytest
import torch

from attnlib import registry
from attnlib.reference import attention
from attnlib.sparse import swin as swin_module
from attnlib.sparse.swin import (
    SwinWindowAttention2d,
    swin_attention,
    swin_groups,
    swin_mixer,
    swin_pattern,
    swin_region_labels,
    swin_window_and_shift,
)
from attnlib.sparse.windows import (
    block_partition,
    block_reverse,
    dense_biased_attention,
    dense_relative_position_bias,
    from_groups,
    to_groups,
)


def make_qkv(B, h, N, d, *, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, N, d, generator=g, dtype=dtype).requires_grad_(requires_grad) for _ in range(3))


def make_table(window, h, *, dtype=torch.float32, seed=1, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((2 * window - 1) ** 2, h, generator=g, dtype=dtype).requires_grad_(requires_grad)


def pixel_coords(height, width):
    rows = torch.arange(height).repeat_interleave(width)  # (N,)
    cols = torch.arange(width).repeat(height)  # (N,)
    return rows, cols


def oracle(q, k, v, table, *, height, width, window_size, shift_size, table_window=None):
    """Dense attention + the same relative position bias, with the Swin pattern as mask (builds N x N)."""
    mask = swin_pattern(height, width, window_size, shift_size)  # (N, N)
    if table is None:
        return attention(q, k, v, mask=mask)
    rows, cols = pixel_coords(height, width)
    bias = dense_relative_position_bias(table, rows, cols, table_window or window_size)  # (h, N, N)
    return dense_biased_attention(q, k, v, mask=mask, bias=bias)


# ----------------------------------------------------------------------------
# Equality with the dense reference
# ----------------------------------------------------------------------------

CASES = [
    # height, width, window, shift
    (14, 14, 7, 0),  # multiple of the window, W-MSA
    (14, 14, 7, 3),  # multiple of the window, SW-MSA
    (10, 13, 7, 3),  # padded on both sides, shifted
    (10, 13, 7, 0),  # padded, not shifted
    (9, 20, 4, 2),  # non-square, padded rows, even window
    (12, 8, 4, 1),  # a shift other than M // 2
]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("height, width, window, shift", CASES)
def test_matches_reference_with_bias(height, width, window, shift, fused):
    q, k, v = make_qkv(2, 3, height * width, 8)
    table = make_table(window, 3)
    out = swin_attention(
        q, k, v, height=height, width=width, window_size=window, shift_size=shift,
        relative_position_bias_table=table, fused=fused,
    )  # fmt: skip
    expected = oracle(q, k, v, table, height=height, width=width, window_size=window, shift_size=shift)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("height, width, window, shift", CASES)
def test_without_bias_equals_reference_attention_with_the_pattern(height, width, window, shift):
    q, k, v = make_qkv(2, 2, height * width, 8, seed=3)
    out = swin_attention(q, k, v, height=height, width=width, window_size=window, shift_size=shift)
    mask = swin_pattern(height, width, window, shift)
    torch.testing.assert_close(out, attention(q, k, v, mask=mask), atol=1e-5, rtol=1e-5)


def test_one_window_covering_the_map_is_full_attention():
    q, k, v = make_qkv(1, 2, 49, 8)
    out = swin_attention(q, k, v, height=7, width=7, window_size=7, shift_size=3)  # the shift is dropped
    torch.testing.assert_close(out, attention(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("height, width, window, shift", [(14, 14, 7, 3), (10, 13, 7, 3), (9, 20, 4, 0)])
def test_gradients_match_reference(height, width, window, shift, fused):
    q, k, v = make_qkv(2, 2, height * width, 4, dtype=torch.float64, requires_grad=True)
    table = make_table(window, 2, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 2, height * width, 4, dtype=torch.float64)
    options = dict(height=height, width=width, window_size=window, shift_size=shift)
    out = swin_attention(q, k, v, relative_position_bias_table=table, fused=fused, **options)
    grads = torch.autograd.grad(out, (q, k, v, table), grad_out)
    expected = oracle(q, k, v, table, **options)
    expected_grads = torch.autograd.grad(expected, (q, k, v, table), grad_out)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


def test_fused_and_textbook_paths_agree():
    q, k, v = make_qkv(2, 3, 10 * 13, 8)
    table = make_table(7, 3)
    options = dict(height=10, width=13, window_size=7, shift_size=3, relative_position_bias_table=table)
    torch.testing.assert_close(
        swin_attention(q, k, v, fused=True, **options), swin_attention(q, k, v, fused=False, **options),
        atol=1e-5, rtol=1e-5,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_in_float32(dtype):
    q, k, v = make_qkv(1, 2, 14 * 14, 8)
    out = swin_attention(q.to(dtype), k.to(dtype), v.to(dtype), height=14, width=14, shift_size=3)
    assert out.dtype == dtype
    full = swin_attention(q, k, v, height=14, width=14, shift_size=3)
    torch.testing.assert_close(out.float(), full, atol=2e-2, rtol=2e-2)


# ----------------------------------------------------------------------------
# The pattern: windows, the shift mask, padding, clipping
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("height, width, window, shift", CASES)
def test_shifted_pattern_keeps_only_neighbours_from_before_the_roll(height, width, window, shift):
    """Brute force from the definition: same window of the rolled (padded) map, and not torn apart by the roll."""
    M, s = swin_window_and_shift(height, width, window, shift)
    Hp, Wp = -(-height // M) * M, -(-width // M) * M
    rows, cols = pixel_coords(height, width)
    rolled_rows, rolled_cols = (rows - s) % Hp, (cols - s) % Wp
    same_window = ((rolled_rows // M)[:, None] == (rolled_rows // M)[None, :]) & (
        (rolled_cols // M)[:, None] == (rolled_cols // M)[None, :]
    )  # (N, N)
    close = ((rows[:, None] - rows[None, :]).abs() < M) & ((cols[:, None] - cols[None, :]).abs() < M)  # (N, N)
    pattern = swin_pattern(height, width, window, shift)
    assert torch.equal(pattern, same_window & close)
    assert torch.equal(pattern, pattern.T)
    assert int(pattern.sum(-1).max()) <= M * M


def test_unshifted_pattern_is_plain_windows():
    pattern = swin_pattern(14, 21, 7, 0)
    rows, cols = pixel_coords(14, 21)
    window = (rows // 7) * 3 + cols // 7
    assert torch.equal(pattern, window[:, None] == window[None, :])
    assert pattern.sum().item() == 6 * 49 * 49


def test_region_labels_are_the_official_img_mask():
    labels = swin_region_labels(14, 14, 7, 3)
    official = torch.zeros(14, 14, dtype=torch.long)
    count = 0
    slices = (slice(0, -7), slice(-7, -3), slice(-3, None))
    for h in slices:
        for w in slices:
            official[h, w] = count
            count += 1
    assert torch.equal(labels, official)
    assert torch.equal(swin_region_labels(14, 14, 7, 0), torch.zeros(14, 14, dtype=torch.long))


def test_shifted_windows_count_regions():
    # 14 x 14, M = 7, s = 3: four windows on the rolled map; the corner window mixes four regions
    groups = swin_groups(14, 14, 7, 3)
    assert groups.unique().numel() == 9  # 1 + 2 + 2 + 4 groups
    sizes = [n for n in torch.bincount(groups.flatten()).tolist() if n > 0]
    # the plain window (7 x 7), two edge windows cut 4 | 3 (7 x 4, 7 x 3), the corner window cut in four
    assert sorted(sizes) == sorted([49, 28, 21, 28, 21, 16, 12, 12, 9])


def test_small_map_clips_the_window_and_drops_the_shift():
    assert swin_window_and_shift(5, 12, 7, 3) == (5, 0)
    assert swin_window_and_shift(7, 30, 7, 3) == (7, 0)  # min(H, W) <= M, as the official code
    assert swin_window_and_shift(8, 30, 7, 3) == (7, 3)
    layer = SwinWindowAttention2d(16, 2, window_size=7, shift_size=3, input_resolution=(5, 12))
    assert (layer.window_size, layer.shift_size) == (5, 0)
    assert layer.relative_position_bias_table.shape == (9 * 9, 2)  # (2 * 5 - 1)^2 rows, as official


def test_clipped_window_reads_the_full_table_consistently():
    """Without input_resolution the module clips at call time and reads a sub-square of its table."""
    q, k, v = make_qkv(1, 2, 5 * 12, 8)
    table = make_table(7, 2)
    out = swin_attention(
        q, k, v, height=5, width=12, window_size=7, shift_size=3, relative_position_bias_table=table
    )  # window 5, table for 7
    expected = oracle(q, k, v, table, height=5, width=12, window_size=7, shift_size=3, table_window=7)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_relative_position_index_is_the_official_one():
    index = swin_module.relative_position_index(3)
    assert index.shape == (9, 9)
    assert index[0, 0] == index[4, 4] == 12  # offset (0, 0) is the centre of the 5 x 5 table
    assert index[0, 8] == 0 and index[8, 0] == 24  # query (0, 0) - key (2, 2) = (-2, -2) -> row 0
    assert index[1, 0] == 13  # (0, 1) - (0, 0) = (0, +1)


# ----------------------------------------------------------------------------
# Partition helpers and the gather plan
# ----------------------------------------------------------------------------


def test_partition_round_trip_and_window_contents():
    x = torch.arange(2 * 14 * 21 * 3, dtype=torch.float32).view(2, 14, 21, 3)
    windows = block_partition(x, 7)  # (2, 6, 49, 3)
    assert windows.shape == (2, 6, 49, 3)
    assert torch.equal(windows[:, 1], x[:, :7, 7:14].reshape(2, 49, 3))
    assert torch.equal(block_reverse(windows, 7, 14, 21), x)


@pytest.mark.parametrize("height, width, window, shift", CASES)
def test_gather_plan_is_pad_roll_partition(height, width, window, shift):
    M, s = swin_window_and_shift(height, width, window, shift)
    plan, _ = swin_module.swin_plan(height, width, M, s)
    x = torch.randn(2, height, width, 5)
    textbook = swin_module._shift_pad_partition(x, M, s)  # (2, nW, T, 5), pad with zeros
    gathered = to_groups(x.view(2, height * width, 5), plan)  # padding slots read zeros, as F.pad
    assert torch.equal(gathered, textbook)
    assert torch.equal(from_groups(gathered, plan), x.view(2, height * width, 5))


# ----------------------------------------------------------------------------
# Structure: the library path never builds an N x N tensor
# ----------------------------------------------------------------------------


def _square_tensors(shapes, N):
    return [(op, s) for op, s in shapes if len(s) >= 2 and s[-1] >= N and s[-2] >= N]


@pytest.mark.parametrize("fused", [True, False])
def test_no_n_by_n_tensor(fused, record_shapes):
    height, width = 30, 26  # N = 780, padded and shifted
    N = height * width
    q, k, v = make_qkv(1, 2, N, 8, requires_grad=True)
    table = make_table(7, 2, requires_grad=True)
    layer = SwinWindowAttention2d(16, 2, window_size=7, shift_size=3, fused=fused)
    x = torch.randn(1, height, width, 16, requires_grad=True)
    with record_shapes() as recorder:
        out = swin_attention(
            q, k, v, height=height, width=width, shift_size=3, relative_position_bias_table=table, fused=fused
        )
        out.sum().backward()
        layer(x).sum().backward()
    assert len(recorder.shapes) > 20
    assert _square_tensors(recorder.shapes, N) == []
    assert q.grad is not None and table.grad is not None and x.grad is not None


def test_shape_recorder_catches_the_oracle(record_shapes):
    """The check above is not vacuous: the dense oracle does build N x N."""
    q, k, v = make_qkv(1, 1, 196, 8)
    with record_shapes() as recorder:
        oracle(q, k, v, make_table(7, 1), height=14, width=14, window_size=7, shift_size=3)
    assert _square_tensors(recorder.shapes, 196)


# ----------------------------------------------------------------------------
# The nn.Module, bad input, the registry
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0, 3])
def test_module_matches_dense_oracle_with_its_weights(shift):
    torch.manual_seed(0)
    layer = SwinWindowAttention2d(24, 3, window_size=7, shift_size=shift)
    x = torch.randn(2, 10, 15, 24, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in layer.parameters())

    B, H, W, C = x.shape
    q, k, v = layer.qkv(x.reshape(B, H * W, C)).view(B, H * W, 3, 3, 8).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
    core = oracle(q, k, v, layer.relative_position_bias_table, height=H, width=W, window_size=7, shift_size=shift)
    expected = layer.proj(core.transpose(1, 2).reshape(B, H * W, C)).view(B, H, W, C)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    assert "shift_size=" in repr(layer)


def test_module_weights_have_the_official_names_and_shapes():
    layer = SwinWindowAttention2d(96, 3, window_size=7, shift_size=3)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {
        "relative_position_bias_table": (169, 3),
        "qkv.weight": (288, 96),
        "qkv.bias": (288,),
        "proj.weight": (96, 96),
        "proj.bias": (96,),
    }
    assert layer.relative_position_index.shape == (49, 49)


def test_module_textbook_and_fused_paths_agree():
    torch.manual_seed(0)
    fused = SwinWindowAttention2d(16, 2, window_size=4, shift_size=2)
    textbook = SwinWindowAttention2d(16, 2, window_size=4, shift_size=2, fused=False)
    textbook.load_state_dict(fused.state_dict())
    x = torch.randn(2, 9, 11, 16)
    torch.testing.assert_close(fused(x), textbook(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: SwinWindowAttention2d(30, 4), ValueError, "dim must be divisible by num_heads, got dim=30"),
        (lambda: SwinWindowAttention2d(32, 4, window_size=0), ValueError, "window_size must be a positive int"),
        (
            lambda: SwinWindowAttention2d(32, 4, shift_size=7),
            ValueError,
            r"shift_size must be an int in \[0, window_size\) = \[0, 7\), got",
        ),
        (
            lambda: SwinWindowAttention2d(32, 4, shift_size=-1),
            ValueError,
            r"shift_size must be an int in \[0, window_size\) = \[0, 7\), got",
        ),
        (lambda: SwinWindowAttention2d(32, 4, input_resolution=14), ValueError, "input_resolution must be"),
    ],
)
def test_module_bad_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_module_bad_input():
    layer = SwinWindowAttention2d(32, 4, shift_size=3)
    with pytest.raises(ValueError, match=r"x must have 4 dimensions, got 3"):
        layer(torch.zeros(1, 196, 32))
    with pytest.raises(ValueError, match=r"channels-last \(B, H, W, C\) with C = 32.*looks channels-first"):
        layer(torch.zeros(1, 32, 14, 14))  # channels first: refused, not computed on the wrong axis
    with pytest.raises(ValueError, match=r"channels-last \(B, H, W, C\) with C = 32, got shape \(1, 14, 14, 16\)"):
        layer(torch.zeros(1, 14, 14, 16))
    with pytest.raises(TypeError, match="x must be a floating tensor"):
        layer(torch.zeros(1, 14, 14, 32, dtype=torch.long))
    assert layer(torch.zeros(1, 10, 12, 32)).shape == (1, 10, 12, 32)  # not a multiple of 7: padded


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(height=13), ValueError, r"N = height \* width = 13 \* 14 = 182 tokens, got 196"),
        (dict(height=0), ValueError, "height must be a positive int"),
        (dict(window_size=0), ValueError, "window_size must be a positive int"),
        (dict(shift_size=7), ValueError, r"shift_size must be an int in \[0, window_size\) = \[0, 7\), got"),
        (dict(relative_position_bias_table=torch.zeros(169, 3)), ValueError, r"must have shape .*\(169, 2\)"),
        (dict(relative_position_bias_table=torch.zeros(5, 5, 2)), ValueError, "must have 2 dimensions"),
        (dict(table_window=5, relative_position_bias_table=torch.zeros(81, 2)), ValueError, "table_window must be"),
    ],
)
def test_functional_bad_input(changes, error, match):
    q, k, v = make_qkv(1, 2, 196, 8)
    options = dict(height=14, width=14, window_size=7, shift_size=3) | changes
    with pytest.raises(error, match=match):
        swin_attention(q, k, v, **options)


def test_functional_refuses_cross_attention_and_wrong_rank():
    q, k, v = make_qkv(1, 2, 196, 8)
    with pytest.raises(ValueError, match="same heads and tokens"):
        swin_attention(q, k[:, :, :98], v[:, :, :98], height=14, width=14)
    with pytest.raises(ValueError, match="q must have 4 dimensions"):
        swin_attention(q[0], k[0], v[0], height=14, width=14)


def test_registry_entry():
    method = registry.get("swin")
    assert method.category == "sparsification" and method.domain == "vision"
    assert method.chapter == "01_swin.ipynb"
    assert method.module_cls() is SwinWindowAttention2d
    assert method.pattern_fn() is swin_pattern
    mixer = method.mixer_factory()(96, 3, 28, 28)
    assert isinstance(mixer, SwinWindowAttention2d) and mixer.shift_size == 3
    assert mixer(torch.randn(1, 28, 28, 96)).shape == (1, 28, 28, 96)
    assert swin_mixer(96, 3, 7, 7).shift_size == 0  # the map fits one window
