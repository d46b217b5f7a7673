"""Bad and extreme input for the vision mixers (Swin, MaxViT, the window helpers, DAT, PVT,
MLP-Mixer, PoolFormer, CoaT): every bad argument gets a clear ValueError/TypeError naming it,
and extreme values give the reference's answer, never a silent wrong one.
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlib.approx import coat, mixer, poolformer
from attnlib.reference import attention
from attnlib.sparse import dat, maxvit, pvt, swin, windows


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _qkv(*shape, seed=0, dtype=torch.float32):
    return tuple(_randn(*shape, seed=seed + i, dtype=dtype) for i in range(3))


# ----------------------------------------------------------------------------
# Swin: padding slots and fully masked rows
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("fused", [True, False])
def test_swin_nan_key_reaches_only_the_pixels_that_see_it(shift, fused):
    """5 x 5 map, window 4: a NaN key at pixel (0, 0) reaches the queries that see that pixel, no more.

    The padding slots used to read token 0, so every padded window saw the NaN (25 NaN rows of 25).
    """
    q, k, v = _qkv(1, 2, 25, 4, dtype=torch.float64)
    k[:, :, 0] = math.nan
    out = swin.swin_attention(q, k, v, height=5, width=5, window_size=4, shift_size=shift, fused=fused)
    pattern = swin.swin_pattern(5, 5, 4, shift)  # (N, N)
    expected = attention(q, k, v, mask=pattern)  # NaN exactly in the rows that see pixel 0
    assert torch.equal(out.isnan().any(-1)[0, 0], pattern[:, 0])
    torch.testing.assert_close(out, expected, equal_nan=True)


def test_swin_module_nan_pixel_reaches_its_window_only():
    torch.manual_seed(0)
    layer = swin.SwinWindowAttention2d(8, 2, window_size=4, shift_size=0)
    x = torch.randn(1, 5, 5, 8)
    x[0, 0, 0] = math.nan
    with torch.no_grad():
        nan_pixels = layer(x).isnan().any(-1)[0]  # (5, 5)
    assert int(nan_pixels.sum()) == 16  # the 4 x 4 window of pixel (0, 0), not all 25
    assert nan_pixels[:4, :4].all()


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("fused", [True, False])
def test_swin_row_whose_scores_all_overflow_gives_the_reference_zeros(shift, fused):
    """Every allowed score of pixel (4, 4) overflows to -inf: the reference gives zeros there.

    The padding used to be masked with the lowest finite value, which sits above -inf, so the
    row put all its weight on the padding slots (which read pixel (0, 0)).
    """
    q, k, v = _qkv(1, 1, 25, 4)
    k[..., 0] = -1e30
    k[0, 0, 0] = 0.0  # pixel (0, 0), which pixel (4, 4) does not see, scores 0: finite
    q[0, 0, 24] = torch.tensor([1e30, 0.0, 0.0, 0.0])  # q . k = -1e60 = -inf in float32 for every key it sees
    out = swin.swin_attention(q, k, v, height=5, width=5, window_size=4, shift_size=shift, fused=fused)
    expected = attention(q, k, v, mask=swin.swin_pattern(5, 5, 4, shift))
    assert torch.equal(out[0, 0, 24], torch.zeros(4))
    torch.testing.assert_close(out, expected)


def test_swin_overflow_with_a_bias_table_matches_the_dense_oracle():
    q, k, v = _qkv(1, 2, 25, 4)
    k[..., 0] = -1e30
    k[0, :, 0] = 0.0
    q[0, :, 24] = torch.tensor([1e30, 0.0, 0.0, 0.0])
    table = _randn(49, 2, seed=5)
    rows, cols = torch.arange(5).repeat_interleave(5), torch.arange(5).repeat(5)
    bias = windows.dense_relative_position_bias(table, rows, cols, 4)  # (h, N, N)
    expected = windows.dense_biased_attention(q, k, v, mask=swin.swin_pattern(5, 5, 4, 2), bias=bias)
    assert torch.equal(expected[0, :, 24], torch.zeros(2, 4))  # the oracle follows the reference too
    for fused in (True, False):
        out = swin.swin_attention(
            q, k, v, height=5, width=5, window_size=4, shift_size=2, relative_position_bias_table=table, fused=fused
        )
        torch.testing.assert_close(out, expected)


def test_padding_slots_read_zeros():
    plan, _ = swin.swin_plan(5, 5, 4, 0)
    x = _randn(2, 25, 3) + 10.0  # no zero anywhere
    grouped = windows.to_groups(x, plan)  # (2, nW, T, 3)
    padding = ~plan.real.view(plan.num_groups, plan.group_tokens)
    assert torch.equal(grouped[:, padding], torch.zeros_like(grouped[:, padding]))
    assert torch.equal(windows.from_groups(grouped, plan), x)


def test_swin_gradients_stay_finite_with_padding_and_shift():
    """Guard (it passed before the fix too): -inf masks leave no fully masked row, so no NaN gradient."""
    q, k, v = _qkv(1, 2, 35, 4, dtype=torch.float64)
    for t in (q, k, v):
        t.requires_grad_(True)
    out = swin.swin_attention(q, k, v, height=5, width=7, window_size=4, shift_size=2)
    out.square().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_swin_module_refuses_a_map_other_than_its_input_resolution():
    layer = swin.SwinWindowAttention2d(8, 2, window_size=7, shift_size=3, input_resolution=(6, 6))
    assert layer(torch.randn(1, 6, 6, 8)).shape == (1, 6, 6, 8)
    with pytest.raises(ValueError, match=r"built for input_resolution=\(6, 6\).*got a 14 x 14 map"):
        layer(torch.randn(1, 14, 14, 8))


# ----------------------------------------------------------------------------
# Tables and parameters on another device, or in another dtype
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda q, k, v, **t: maxvit.grid_attention(q, k, v, height=4, width=4, grid_size=2, **t),
        lambda q, k, v, **t: maxvit.block_attention(q, k, v, height=4, width=4, window_size=2, **t),
        lambda q, k, v, **t: swin.swin_attention(q, k, v, height=4, width=4, window_size=2, **t),
    ],
    ids=["grid_attention", "block_attention", "swin_attention"],
)
def test_bias_table_on_another_device_is_refused(call):
    q, k, v = _qkv(1, 2, 16, 4)
    with pytest.raises(ValueError, match=r"relative_position_bias_table must be on the device of q \(cpu\), got meta"):
        call(q, k, v, relative_position_bias_table=torch.zeros(9, 2, device="meta"))


MODULES_AND_INPUTS = {
    "swin": (lambda: swin.SwinWindowAttention2d(8, 2, window_size=4), (1, 8, 8, 8)),
    "maxvit": (lambda: maxvit.MaxViTPartitionAttention2d(8, 2, partition_size=4), (1, 8, 8, 8)),
    "dat": (lambda: dat.DeformableAttention(8, 2, 8, 8, stride=2), (1, 8, 8, 8)),
    "pvt": (lambda: pvt.SpatialReductionAttention(8, 2, 2), (1, 8, 8, 8)),
    "mixer": (lambda: mixer.MixerBlock(8, 64), (1, 8, 8, 8)),
    "poolformer": (lambda: poolformer.PoolFormerBlock(8), (1, 8, 8, 8)),
    "coat": (lambda: coat.CoaTMixer2d(8, 2), (1, 8, 8, 8)),
}


@pytest.mark.parametrize("name", MODULES_AND_INPUTS)
def test_module_refuses_input_of_another_dtype_and_device(name):
    make, shape = MODULES_AND_INPUTS[name]
    module = make()
    with pytest.raises(TypeError, match=r"x must have the dtype of the module's parameters \(torch.float32\), got "
                                        r"torch.float64.*module.to\(torch.float64\)"):  # fmt: skip
        module(torch.zeros(shape, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x must be on the device of the module's parameters \(cpu\), got meta"):
        module(torch.zeros(shape, device="meta"))
    with pytest.raises(ValueError, match="x must have at least one"):
        module(torch.zeros((0, *shape[1:])))
    assert module(torch.zeros(shape)).shape == shape


def test_module_input_of_another_dtype_runs_under_autocast():
    """Guard: the dtype check stands aside under autocast, where mixed dtypes are legitimate."""
    module = pvt.SpatialReductionAttention(8, 2, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module(torch.zeros(1, 8, 8, 8, dtype=torch.bfloat16)).shape == (1, 8, 8, 8)


def test_coat_class_token_of_another_dtype_is_refused():
    module = coat.CoaTMixer2d(8, 2)
    with pytest.raises(TypeError, match="cls_token must have the dtype of x"):
        module(torch.zeros(1, 4, 4, 8), torch.zeros(1, 1, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="cls_token must be on the device of x"):
        module(torch.zeros(1, 4, 4, 8), torch.zeros(1, 1, 8, device="meta"))


# ----------------------------------------------------------------------------
# DAT in half precision on the CPU
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [28, 56])
@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_dat_half_precision_matches_float64(size, dtype, tolerance):
    """float16 gave all-NaN output (grid_sample in half on a strided view); bfloat16 raised."""
    torch.manual_seed(0)
    block = dat.DeformableAttention(64, 2, size, size, stride=8, offset_kernel_size=9).double()
    x = torch.randn(1, size, size, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = block(x)
        half = block.to(dtype)(x.to(dtype))
    assert half.dtype == dtype
    error = (half.double() - expected).abs().max() / expected.abs().max()
    assert error < tolerance, float(error)


# ----------------------------------------------------------------------------
# scale: one rule everywhere (attnlib._checks.resolve_scale)
# ----------------------------------------------------------------------------

_B, _H, _N, _D = 1, 2, 16, 4


def _group_attention(q, k, v, **options):
    def grouped(t):  # (B, h, N, d) -> (B, nW, h, T, d), 4 groups of 4 tokens
        return t.view(_B, _H, 4, 4, _D).transpose(1, 2)

    return windows.group_attention(grouped(q), grouped(k), grouped(v), additive=None, **options)


SCALED_KERNELS = {
    "swin_attention": lambda q, k, v, **o: swin.swin_attention(q, k, v, height=4, width=4, window_size=2, **o),
    "block_attention": lambda q, k, v, **o: maxvit.block_attention(q, k, v, height=4, width=4, window_size=2, **o),
    "grid_attention": lambda q, k, v, **o: maxvit.grid_attention(q, k, v, height=4, width=4, grid_size=2, **o),
    "group_attention": _group_attention,
    "sra_attention": pvt.sra_attention,
    "deformable_attention": dat.deformable_attention,
    "factorized_attention": coat.factorized_attention,
}

SCALE_CASES = [
    ("NaN", math.nan, ValueError, "scale must be finite"),
    ("inf", math.inf, ValueError, "scale must be finite"),
    ("-inf", -math.inf, ValueError, "scale must be finite"),
    ("tensor", torch.tensor(0.5), TypeError, "scale must be a float or None, got Tensor"),
    ("string", "0.5", TypeError, "scale must be a float or None, got str"),
    ("bool", True, TypeError, "scale must be a float or None, got bool"),
]


@pytest.mark.parametrize("case", SCALE_CASES, ids=[c[0] for c in SCALE_CASES])
@pytest.mark.parametrize("kernel", SCALED_KERNELS)
def test_bad_scale_is_refused(kernel, case):
    _, scale, error, match = case
    with pytest.raises(error, match=match):
        SCALED_KERNELS[kernel](*_qkv(_B, _H, _N, _D), scale=scale)


@pytest.mark.parametrize("kernel", [k for k in SCALED_KERNELS if k != "factorized_attention"])
def test_scale_zero_is_uniform_attention(kernel):
    """``scale=0.0`` is a scale like any other (softmax of zeros: the mean of the values seen).

    Guard: the functions kept 0.0 before the fix too; only PVT's ``qk_scale`` dropped it (next tests).
    """
    q, k, v = _qkv(_B, _H, _N, _D)
    out = SCALED_KERNELS[kernel](q, k, v, scale=0.0)
    assert not torch.allclose(out, SCALED_KERNELS[kernel](q, k, v))
    if kernel in ("sra_attention", "deformable_attention"):  # every query sees every key
        torch.testing.assert_close(out, v.mean(dim=2, keepdim=True).expand_as(out))


def test_factorized_attention_scale_zero_gives_zeros():
    q, k, v = _qkv(_B, _H, _N, _D)
    assert torch.equal(coat.factorized_attention(q, k, v, scale=0.0), torch.zeros(_B, _H, _N, _D))


def test_pvt_qk_scale_zero_is_kept_and_bad_qk_scale_is_refused():
    assert pvt.SpatialReductionAttention(8, 2, 2, qk_scale=0.0).scale == 0.0  # was `qk_scale or default`
    assert pvt.SpatialReductionAttention(8, 2, 2).scale == 4**-0.5
    with pytest.raises(ValueError, match="scale must be finite"):
        pvt.SpatialReductionAttention(8, 2, 2, qk_scale=math.nan)
    with pytest.raises(TypeError, match="scale must be a float or None, got Tensor"):
        pvt.SpatialReductionAttention(8, 2, 2, qk_scale=torch.tensor(0.5))


# ----------------------------------------------------------------------------
# Flags: a real bool, never a truthy string
# ----------------------------------------------------------------------------

x8 = torch.zeros(1, 8, 8, 8)

FLAG_CASES = {
    "swin_attention fused": lambda f: SCALED_KERNELS["swin_attention"](*_qkv(_B, _H, _N, _D), fused=f),
    "block_attention fused": lambda f: SCALED_KERNELS["block_attention"](*_qkv(_B, _H, _N, _D), fused=f),
    "grid_attention fused": lambda f: SCALED_KERNELS["grid_attention"](*_qkv(_B, _H, _N, _D), fused=f),
    "group_attention fused": lambda f: _group_attention(*_qkv(_B, _H, _N, _D), fused=f),
    "sra_attention fused": lambda f: pvt.sra_attention(*_qkv(_B, _H, _N, _D), fused=f),
    "deformable_attention fused": lambda f: dat.deformable_attention(*_qkv(_B, _H, _N, _D), fused=f),
    "DeformableAttention.forward fused": lambda f: dat.DeformableAttention(8, 2, 8, 8, stride=2)(x8, fused=f),
    "SpatialReductionAttention.forward fused": lambda f: pvt.SpatialReductionAttention(8, 2, 2)(x8, fused=f),
    "SwinWindowAttention2d fused": lambda f: swin.SwinWindowAttention2d(8, 2, fused=f),
    "SwinWindowAttention2d qkv_bias": lambda f: swin.SwinWindowAttention2d(8, 2, qkv_bias=f),
    "MaxViTPartitionAttention2d fused": lambda f: maxvit.MaxViTPartitionAttention2d(8, 2, fused=f),
    "MaxViTPartitionAttention2d qkv_bias": lambda f: maxvit.MaxViTPartitionAttention2d(8, 2, qkv_bias=f),
    "DeformableAttention use_pe": lambda f: dat.DeformableAttention(8, 2, 8, 8, stride=2, use_pe=f),
    "SpatialReductionAttention qkv_bias": lambda f: pvt.SpatialReductionAttention(8, 2, 2, qkv_bias=f),
    "PoolFormerBlock use_layer_scale": lambda f: poolformer.PoolFormerBlock(8, use_layer_scale=f),
    "FactorAttConvRelPosEnc qkv_bias": lambda f: coat.FactorAttConvRelPosEnc(8, 2, qkv_bias=f),
    "CoaTMixer2d qkv_bias": lambda f: coat.CoaTMixer2d(8, 2, qkv_bias=f),
}


@pytest.mark.parametrize("value", ["no", 1, None], ids=["string", "int", "None"])
@pytest.mark.parametrize("case", FLAG_CASES)
def test_flags_must_be_bools(case, value):
    name = case.split()[-1]
    with pytest.raises(TypeError, match=f"{name} must be a bool, got {type(value).__name__}"):
        FLAG_CASES[case](value)


# ----------------------------------------------------------------------------
# Clear errors for the public functions and modules (the argument named)
# ----------------------------------------------------------------------------

_plan16 = windows.gather_plan(torch.arange(16).view(2, 8))  # 2 groups of 8 tokens, N = 16
_dat = dat.DeformableAttention(8, 2, 8, 8, stride=2)
_pvt = pvt.SpatialReductionAttention(8, 2, 2)
_coat = coat.CoaTMixer2d(8, 2)
_q4 = torch.zeros(1, 2, 4, 3)

BAD_CALLS = [
    # windows: partitions and their inverses
    ("block_partition side", lambda: windows.block_partition(torch.zeros(1, 5, 4, 3), 2), ValueError,
     r"window_size must divide the map's height and width, got window_size=2 for a 5 x 4 map"),
    ("block_partition 0", lambda: windows.block_partition(torch.zeros(1, 4, 4, 3), 0), ValueError,
     "window_size must be a positive int"),
    ("block_partition rank", lambda: windows.block_partition(torch.zeros(4, 4), 2), ValueError,
     r"x must be \(\.\.\., H, W, C\)"),
    ("grid_partition side", lambda: windows.grid_partition(torch.zeros(1, 4, 6, 3), 4), ValueError,
     "grid_size must divide the map's height and width"),
    ("block_reverse height", lambda: windows.block_reverse(torch.zeros(1, 4, 4, 3), 2, 6, 4), ValueError,
     r"windows must have \(height / 2\) \* \(width / 2\) = 6 groups of 2 \* 2 = 4 tokens"),
    ("block_reverse not a multiple", lambda: windows.block_reverse(torch.zeros(1, 4, 4, 3), 2, 3, 4), ValueError,
     "window_size must divide the map's height and width"),
    ("grid_reverse width", lambda: windows.grid_reverse(torch.zeros(1, 4, 4, 3), 2, 4, 8), ValueError,
     r"groups must have \(height / 2\) \* \(width / 2\) = 8 groups"),
    # windows: index, bias, plans
    ("relative_position_index 0", lambda: windows.relative_position_index(0), ValueError,
     "window_size must be a positive int"),
    ("relative_position_index table", lambda: windows.relative_position_index(4, 2), ValueError,
     r"table_window must be >= window_size \(4\), got 2"),
    ("relative_position_bias float index", lambda: windows.relative_position_bias(torch.zeros(9, 2), torch.zeros(4, 4)),
     TypeError, "index must be an integer tensor"),
    ("relative_position_bias index range", lambda: windows.relative_position_bias(torch.zeros(4, 2),
     windows.relative_position_index(2)), ValueError, "index reads row 8 of a table of 4 rows"),
    ("relative_position_bias square", lambda: windows.relative_position_bias(torch.zeros(9, 2),
     torch.zeros(3, 4, dtype=torch.long)), ValueError, r"index must be a square \(T, T\)"),
    ("gather_plan float", lambda: windows.gather_plan(torch.zeros(2, 2)), TypeError,
     "groups must be an integer tensor"),
    ("gather_plan rank", lambda: windows.gather_plan(torch.arange(4)), ValueError, r"groups must be \(nW, T\)"),
    ("gather_plan repeated", lambda: windows.gather_plan(torch.zeros(2, 2, dtype=torch.long)), ValueError,
     r"groups must hold each token 0 \.\. N - 1 exactly once"),
    ("to_groups other N", lambda: windows.to_groups(torch.zeros(1, 25, 3), _plan16), ValueError,
     r"x must have the N = 16 tokens the plan was made for, got 25"),
    ("to_groups rank", lambda: windows.to_groups(torch.zeros(16, 3), _plan16), ValueError, "x must have 3 dimensions"),
    ("to_groups plan", lambda: windows.to_groups(torch.zeros(1, 16, 3), torch.arange(16)), TypeError,
     "plan must be a GatherPlan"),
    ("from_groups other plan", lambda: windows.from_groups(torch.zeros(1, 2, 4, 3), _plan16), ValueError,
     r"groups must be \(B, nW, T, C\) = \(B, 2, 8, C\) for this plan"),
    ("additive_bias_and_mask nothing", lambda: windows.additive_bias_and_mask(None, None, 1, torch.float32, "cpu"),
     ValueError, "bias or blocked"),
    # windows: group attention
    ("group_attention rank", lambda: windows.group_attention(*_qkv(1, 2, 4, 3), additive=None), ValueError,
     "q must have 5 dimensions"),
    ("group_attention k", lambda: windows.group_attention(torch.zeros(1, 2, 1, 4, 3), torch.zeros(1, 2, 1, 5, 3),
     torch.zeros(1, 2, 1, 5, 3), additive=None), ValueError, r"q, k, v must all be \(B, nW, h, T, d\)"),
    ("group_attention dtype", lambda: windows.group_attention(torch.zeros(1, 2, 1, 4, 3),
     torch.zeros(1, 2, 1, 4, 3, dtype=torch.float64), torch.zeros(1, 2, 1, 4, 3), additive=None), TypeError,
     "q, k, v must share one dtype"),
    ("group_attention additive", lambda: windows.group_attention(*(torch.zeros(1, 2, 1, 4, 3) for _ in range(3)),
     additive=torch.zeros(3, 1, 4, 4)), ValueError,
     r"additive must be \(nW or 1, h or 1, T, T\) = \(2 or 1, 1 or 1, 4, 4\), got \(3, 1, 4, 4\)"),
    # Swin, MaxViT
    ("swin_plan window 0", lambda: swin.swin_plan(4, 4, 0, 0), ValueError, "window_size must be a positive int"),
    ("swin_plan shift", lambda: swin.swin_plan(8, 8, 4, 4), ValueError, "shift_size must be an int in"),
    ("Swin input_resolution entries", lambda: swin.SwinWindowAttention2d(8, 2, input_resolution=(6.0, 6)),
     ValueError, "height must be a positive int"),
    ("Swin table dtype", lambda: swin.swin_attention(*_qkv(1, 2, 16, 4), height=4, width=4, window_size=2,
     relative_position_bias_table=torch.zeros(9, 2, dtype=torch.long)), TypeError, "must be a floating tensor"),
    # DAT
    ("DAT offset_range_factor inf", lambda: dat.DeformableAttention(8, 2, 8, 8, stride=2, offset_range_factor=math.inf),
     ValueError, "offset_range_factor must be positive and finite, got inf"),
    ("DAT B=0", lambda: _dat(torch.zeros(0, 8, 8, 8)), ValueError, "x must have at least one image"),
    ("bounded_offsets channels", lambda: dat.bounded_offsets(torch.zeros(1, 3, 4, 4), 2.0), ValueError,
     r"raw must be \(\.\.\., 2, Hk, Wk\)"),
    ("bounded_offsets factor", lambda: dat.bounded_offsets(torch.zeros(1, 2, 4, 4), math.nan), ValueError,
     "offset_range_factor must be positive and finite"),
    ("sample_at rank", lambda: dat.sample_at(torch.zeros(1, 3, 4), torch.zeros(1, 2, 2, 2)), ValueError,
     "features must have 4 dimensions"),
    ("sample_at batch", lambda: dat.sample_at(torch.zeros(2, 3, 4, 4), torch.zeros(1, 2, 2, 2)), ValueError,
     r"positions must be \(Bg, Hk, Wk, 2\) with Bg = 2"),
    ("sample_at pairs", lambda: dat.sample_at(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 2, 3)), ValueError,
     r"positions must be \(Bg, Hk, Wk, 2\)"),
    ("sample_at dtype", lambda: dat.sample_at(torch.zeros(1, 3, 4, 4), torch.zeros(1, 2, 2, 2, dtype=torch.float64)),
     TypeError, "positions must have the dtype of features"),
    ("bilinear_weights height", lambda: dat.bilinear_weights(torch.zeros(3, 2), 0, 4), ValueError,
     "height must be a positive int"),
    ("bilinear_weights pairs", lambda: dat.bilinear_weights(torch.zeros(3, 3), 4, 4), ValueError,
     r"positions must be \(\.\.\., 2\)"),
    ("relative_position_bias groups", lambda: dat.relative_position_bias(torch.zeros(3, 7, 7), torch.zeros(16, 2),
     torch.zeros(1, 2, 4, 2)), ValueError,
     r"the heads of rpe_table \(3\) must be a multiple of the groups of positions \(2\)"),
    ("relative_position_bias rank", lambda: dat.relative_position_bias(torch.zeros(3, 7), torch.zeros(16, 2),
     torch.zeros(1, 1, 4, 2)), ValueError, "rpe_table must have 3 dimensions"),
    ("relative_position_bias queries", lambda: dat.relative_position_bias(torch.zeros(2, 7, 7), torch.zeros(16, 3),
     torch.zeros(1, 1, 4, 2)), ValueError, r"query_positions must be \(\.\.\., 2\)"),
    ("deformable_attention bias shape", lambda: dat.deformable_attention(_q4, _q4, _q4, torch.zeros(1, 2, 3, 3)),
     ValueError, r"bias must be broadcastable to \(B, nh, N, Ns\) = \(1, 2, 4, 4\)"),
    ("deformable_attention bias dtype", lambda: dat.deformable_attention(_q4, _q4, _q4,
     torch.zeros(1, 2, 4, 4, dtype=torch.bool)), TypeError, "bias must be a floating tensor"),
    ("deformable_attention dtypes", lambda: dat.deformable_attention(_q4, _q4.double(), _q4), TypeError,
     "q, k, v must share one dtype"),
    ("deformable_attention head dim", lambda: dat.deformable_attention(*(torch.zeros(1, 2, 4, 0) for _ in range(3))),
     ValueError, "head dimension must be at least 1"),
    ("deformable_attention no keys", lambda: dat.deformable_attention(_q4, torch.zeros(1, 2, 0, 3),
     torch.zeros(1, 2, 0, 3)), ValueError, "at least one token"),
    # PVT
    ("PVT B=0", lambda: _pvt(torch.zeros(0, 8, 8, 8)), ValueError, "x must have at least one image"),
    ("reduce_map channels", lambda: pvt.reduce_map(torch.zeros(1, 8, 8, 7), _pvt.sr, _pvt.norm), ValueError,
     r"x must be \(B, H, W, C\) with C = 8"),
    ("reduce_map sr", lambda: pvt.reduce_map(torch.zeros(1, 8, 8, 8), "sr", _pvt.norm), TypeError,
     "sr must be an nn.Conv2d"),
    ("reduce_map norm", lambda: pvt.reduce_map(torch.zeros(1, 8, 8, 8), _pvt.sr, None), TypeError,
     "norm must be an nn.LayerNorm"),
    ("reduce_map too small", lambda: pvt.reduce_map(torch.zeros(1, 1, 8, 8), _pvt.sr, _pvt.norm), ValueError,
     "sr_ratio must be at most the map's height and width"),
    ("sra_attention dtypes", lambda: pvt.sra_attention(_q4, _q4.double(), _q4), TypeError,
     "q, k, v must share one dtype"),
    ("sra_attention no keys", lambda: pvt.sra_attention(_q4, torch.zeros(1, 2, 0, 3), torch.zeros(1, 2, 0, 3)),
     ValueError, "at least one token"),
    # MLP-Mixer
    ("MlpBlock channels", lambda: mixer.MlpBlock(16, 8)(torch.zeros(2, 15)), ValueError,
     "x must have 16 channels in its last dimension"),
    # PoolFormer
    ("Pooling empty map", lambda: poolformer.Pooling(3)(torch.zeros(1, 0, 4, 3)), ValueError,
     "x must have at least one pixel"),
    ("PoolFormerBlock mlp_ratio inf", lambda: poolformer.PoolFormerBlock(8, mlp_ratio=math.inf), ValueError,
     "mlp_ratio must be positive and finite"),
    ("PoolFormerBlock mlp_ratio str", lambda: poolformer.PoolFormerBlock(8, mlp_ratio="4"), TypeError,
     "mlp_ratio must be a number"),
    ("PoolFormerBlock layer scale nan", lambda: poolformer.PoolFormerBlock(8, layer_scale_init_value=math.nan),
     ValueError, "layer_scale_init_value must be finite"),
    ("PoolFormerBlock layer scale str", lambda: poolformer.PoolFormerBlock(8, layer_scale_init_value="1e-5"),
     TypeError, "layer_scale_init_value must be a number"),
    ("GroupNorm1 eps", lambda: poolformer.GroupNorm1(8, eps=-1.0), ValueError, "eps must be positive and finite"),
    ("GroupNorm1 eps str", lambda: poolformer.GroupNorm1(8, eps="a"), TypeError, "eps must be a number"),
    ("PoolFormerMlp channels", lambda: poolformer.PoolFormerMlp(8, 4)(torch.zeros(1, 4, 4, 3)), ValueError,
     "x must have C=8 channels"),
    ("pooling_mixing_matrix dtype", lambda: poolformer.pooling_mixing_matrix(4, 4, 3, dtype=torch.long), TypeError,
     "dtype must be a floating torch.dtype"),
    # CoaT
    ("factorized_attention dtypes", lambda: coat.factorized_attention(_q4, _q4.double(), _q4), TypeError,
     "q, k, v must share one dtype"),
    ("factorized_attention no tokens", lambda: coat.factorized_attention(*(torch.zeros(1, 2, 0, 3) for _ in range(3))),
     ValueError, "at least one token"),
    ("convolve_values tokens", lambda: _coat.attn.crpe.convolve_values(torch.zeros(1, 2, 60, 4), (8, 8)), ValueError,
     r"v_img must be \(B, h=2, H\*W=64, d=4\)"),
    ("ConvRelPosEnc prefix", lambda: _coat.attn.crpe(torch.zeros(1, 2, 64, 4), torch.zeros(1, 2, 64, 4), (8, 8),
     num_prefix_tokens=-1), ValueError, "num_prefix_tokens must be 0 or 1"),
    ("qkv_heads rank", lambda: _coat.attn.qkv_heads(torch.zeros(65, 8)), ValueError, "x must have 3 dimensions"),
    ("conv_att_mixing_matrix prefix bool", lambda: coat.conv_att_mixing_matrix(_coat.attn, torch.zeros(1, 65, 8),
     (8, 8), num_prefix_tokens=True), ValueError, "num_prefix_tokens must be 0 or 1"),
    ("conv_att_mixing_matrix dtype", lambda: coat.conv_att_mixing_matrix(_coat.attn, torch.zeros(1, 65, 8), (8, 8),
     dtype=torch.long), TypeError, "dtype must be a floating torch.dtype"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CALLS, ids=[case[0] for case in BAD_CALLS])
def test_bad_call_gets_a_clear_error(case):
    _, call, error, match = case
    with pytest.raises(error, match=match):
        call()
