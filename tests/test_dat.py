"""Tests for attnlib.sparse.dat: deformable attention against its definition, written the long way."""

from __future__ import annotations

import math

import pytest
import torch

from attnlib import registry
from attnlib.sparse.dat import (
    DeformableAttention,
    bilinear_weights,
    bounded_offsets,
    dat_mixer,
    deformable_attention,
    reference_points,
    relative_position_bias,
    sample_at,
)


def make_block(C=16, heads=2, H=12, W=12, *, dtype=torch.float64, seed=0, **options):
    torch.manual_seed(seed)
    block = DeformableAttention(C, heads, H, W, **options).to(dtype)
    with torch.no_grad():  # a bias table and offsets large enough to matter
        if block.rpe_table is not None:
            block.rpe_table.normal_(0, 0.5)
        block.conv_offset[-1].weight.mul_(3.0)
    return block


def bilinear_long_way(image: torch.Tensor, y: float, x: float) -> torch.Tensor:
    """Bilinear value of ``image: (C, H, W)`` at normalized (y, x), align_corners=True, zeros outside."""
    C, H, W = image.shape
    py, px = (y + 1) / 2 * (H - 1), (x + 1) / 2 * (W - 1)  # pixel coordinates
    value = image.new_zeros(C)
    for row in (math.floor(py), math.floor(py) + 1):
        for col in (math.floor(px), math.floor(px) + 1):
            if 0 <= row < H and 0 <= col < W:
                value = value + (1 - abs(py - row)) * (1 - abs(px - col)) * image[:, row, col]
    return value


def long_way(block: DeformableAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. (6)-(9) one group, one point, one head and one query at a time (the test oracle)."""
    B, H, W, C = x.shape
    nh, d, g = block.num_heads, block.head_dim, block.n_groups
    Cg, hg = C // g, nh // g
    Hk, Wk = block.grid_size
    s = block.offset_range_factor
    out = torch.zeros(B, H * W, C, dtype=x.dtype)
    for b in range(B):
        q = x[b].reshape(H * W, C) @ block.proj_q.weight.T + block.proj_q.bias  # (N, C)
        points, sampled = [], []  # per group: Ns normalized (y, x) points and (Ns, Cg) features
        for group in range(g):
            channels = slice(group * Cg, (group + 1) * Cg)
            raw = block.conv_offset(q.T[channels].reshape(1, Cg, H, W))[0]  # (2, Hk, Wk): theta_offset
            assert raw.shape == (2, Hk, Wk)
            image = x[b, :, :, channels].permute(2, 0, 1)  # (Cg, H, W)
            group_points = []
            for i in range(Hk):
                for j in range(Wk):
                    py = (i + 0.5) / Hk * 2 - 1 + s * math.tanh(raw[0, i, j].item()) / Hk  # Eq. (6)
                    px = (j + 0.5) / Wk * 2 - 1 + s * math.tanh(raw[1, i, j].item()) / Wk
                    group_points.append((py, px))
            points.append(group_points)
            sampled.append(torch.stack([bilinear_long_way(image, py, px) for py, px in group_points]))  # Eq. (7)
        features = torch.cat(sampled, dim=1)  # (Ns, C): point n of every group, channels side by side
        k = features @ block.proj_k.weight.T + block.proj_k.bias  # (Ns, C)
        v = features @ block.proj_v.weight.T + block.proj_v.bias  # (Ns, C)
        for head in range(nh):
            group, channels = head // hg, slice(head * d, (head + 1) * d)
            table = block.rpe_table[head][None] if block.use_pe else None  # (1, 2H-1, 2W-1)
            for query in range(H * W):
                qy, qx = (query // W + 0.5) / H * 2 - 1, (query % W + 0.5) / W * 2 - 1
                scores = []
                for n, (py, px) in enumerate(points[group]):
                    score = (q[query, channels] @ k[n, channels]) / math.sqrt(d)
                    if table is not None:  # Eq. (9): the bias at the displacement, halved into [-1, 1]
                        score = score + bilinear_long_way(table, (qy - py) / 2, (qx - px) / 2)[0]
                    scores.append(score)
                weights = torch.softmax(torch.stack(scores), dim=0)  # (Ns,)
                out[b, query, channels] = weights @ v[:, channels]
    out = out @ block.proj_out.weight.T + block.proj_out.bias
    return out.view(B, H, W, C)


LONG_WAY_CASES = [
    # C, heads, H, W, options
    (8, 2, 8, 8, dict(stride=4, offset_kernel_size=3)),
    (8, 2, 10, 9, dict(stride=4, offset_kernel_size=5)),  # H, W not multiples of r: a 3 x 3 grid
    (16, 4, 6, 6, dict(stride=2, n_groups=2, offset_kernel_size=3)),  # two groups of two heads
    (8, 1, 7, 7, dict(stride=3, offset_kernel_size=3, use_pe=False)),
]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("C, heads, H, W, options", LONG_WAY_CASES)
def test_matches_definition_long_way(C, heads, H, W, options, fused):
    block = make_block(C, heads, H, W, **options)
    x = torch.randn(1, H, W, C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = block(x, fused=fused)
        expected = long_way(block, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("C, heads, H, W, options", LONG_WAY_CASES[:3])
def test_query_blocks_match_definition(C, heads, H, W, options, monkeypatch):
    """The forward's blocks of queries (8 here, the last one ragged) change nothing, gradients included."""
    import attnlib.sparse.dat as dat_module

    block = make_block(C, heads, H, W, **options)
    x = torch.randn(2, H, W, C, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    whole = block(x)
    whole_grads = torch.autograd.grad(whole.square().sum(), [x, *block.parameters()])
    monkeypatch.setattr(dat_module, "_BIAS_BLOCK_ELEMENTS", 1)  # blocks of 8 queries
    blocked = block(x)
    blocked_grads = torch.autograd.grad(blocked.square().sum(), [x, *block.parameters()])
    torch.testing.assert_close(blocked, whole, atol=1e-12, rtol=1e-10)
    for a, b in zip(blocked_grads, whole_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(blocked[:1], long_way(block, x[:1].detach()), atol=1e-10, rtol=1e-8)


def test_float32_matches_float64():
    block = make_block(16, 2, 16, 16, stride=4, offset_kernel_size=5)
    x = torch.randn(1, 16, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = block(x)
        out = block.float()(x.float())
    assert (out.double() - expected).abs().max().item() < 1e-5


def test_reference_points_are_cell_centres():
    ref = reference_points(3, 4, dtype=torch.float64)  # (3, 4, 2), (y, x)
    assert ref.shape == (3, 4, 2)
    torch.testing.assert_close(ref[:, 0, 0], torch.tensor([-2 / 3, 0.0, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(ref[0, :, 1], torch.tensor([-0.75, -0.25, 0.25, 0.75], dtype=torch.float64))


def test_zero_offsets_sample_the_reference_grid():
    """With the last offset layer at zero, the points are the reference grid, and sampling reads it exactly."""
    block = make_block(8, 2, 13, 11, stride=4, offset_kernel_size=3)
    with torch.no_grad():
        block.conv_offset[-1].weight.zero_()
    x = torch.randn(1, 13, 11, 8, dtype=torch.float64)
    positions, reference = block.sampling_positions(x)
    assert positions.shape == (1, 1, 4, 3, 2)
    assert torch.equal(positions[0, 0], reference)
    image = x[0].permute(2, 0, 1)  # (C, H, W)
    sampled = sample_at(image[None], positions[:, 0])[0]  # (C, Hk, Wk)
    for i in range(4):
        for j in range(3):
            y, xx = reference[i, j].tolist()
            torch.testing.assert_close(sampled[:, i, j], bilinear_long_way(image, y, xx), atol=1e-12, rtol=0)
    # features linear in the pixel position are reproduced exactly at the reference points
    rows = torch.arange(13, dtype=torch.float64)[:, None].expand(13, 11)
    cols = torch.arange(11, dtype=torch.float64)[None, :].expand(13, 11)
    linear = torch.stack((rows, cols))[None]  # (1, 2, H, W)
    read = sample_at(linear, reference[None])[0]  # (2, Hk, Wk)
    torch.testing.assert_close(read[0], (reference[..., 0] + 1) / 2 * 12, atol=1e-12, rtol=0)
    torch.testing.assert_close(read[1], (reference[..., 1] + 1) / 2 * 10, atol=1e-12, rtol=0)


def test_bilinear_weights_are_the_sampling():
    """The pattern (weights over pixels) reproduces grid_sample, inside and outside the map."""
    positions = torch.rand(2, 7, 2, dtype=torch.float64) * 2.4 - 1.2  # (Bg, Ns, 2), some outside [-1, 1]
    features = torch.randn(2, 3, 6, 5, dtype=torch.float64)  # (Bg, C, H, W)
    weights = bilinear_weights(positions, 6, 5)  # (Bg, Ns, N)
    assert weights.shape == (2, 7, 30)
    assert (weights >= 0).all() and (weights > 0).sum(-1).max() <= 4
    expected = sample_at(features, positions[:, :, None, :])[..., 0]  # (Bg, C, Ns)
    torch.testing.assert_close(weights @ features.flatten(2).transpose(1, 2), expected.transpose(1, 2))
    inside = (positions.abs() <= 1).all(-1)
    torch.testing.assert_close(weights.sum(-1)[inside], torch.ones(int(inside.sum()), dtype=torch.float64))


def test_bounded_offsets():
    raw = torch.tensor([[[[100.0, 0.0]], [[-100.0, 0.5]]]], dtype=torch.float64)  # (1, 2, Hk=1, Wk=2)
    offsets = bounded_offsets(raw, 3.0)  # (1, 1, 2, 2)
    assert offsets.shape == (1, 1, 2, 2)
    torch.testing.assert_close(offsets[0, 0, 0], torch.tensor([3.0, -1.5], dtype=torch.float64))
    torch.testing.assert_close(offsets[0, 0, 1], torch.tensor([0.0, 1.5 * math.tanh(0.5)], dtype=torch.float64))


def test_groups_share_points_across_their_heads():
    block = make_block(16, 4, 8, 8, stride=2, n_groups=2, offset_kernel_size=3)
    x = torch.randn(1, 8, 8, 16, dtype=torch.float64)
    positions, _ = block.sampling_positions(x)
    assert positions.shape == (1, 2, 4, 4, 2)
    assert not torch.allclose(positions[:, 0], positions[:, 1])  # each group its own points


def test_gradients_reach_the_offset_network():
    block = make_block(8, 2, 12, 12, dtype=torch.float32, stride=4, offset_kernel_size=5)
    x = torch.randn(2, 12, 12, 8)
    before = [p.detach().clone() for p in block.conv_offset.parameters()]
    positions_before, _ = block.sampling_positions(x)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    block(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.conv_offset.parameters())
    optimizer.step()
    after = list(block.conv_offset.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    positions_after, _ = block.sampling_positions(x)
    assert not torch.equal(positions_before, positions_after)


def test_gradcheck_float64():
    block = make_block(4, 2, 5, 5, stride=2, offset_kernel_size=3)
    x = torch.randn(1, 5, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = block.conv_offset[-1].weight
    assert torch.autograd.gradcheck(lambda t: block(t, fused=False), (x,), fast_mode=True)

    def through_offset_weight(w):
        return torch.func.functional_call(block, {"conv_offset.3.weight": w}, (x.detach(),))

    assert torch.autograd.gradcheck(through_offset_weight, (weight.detach().clone().requires_grad_(),), fast_mode=True)


def test_fused_and_textbook_gradients_agree():
    block = make_block(8, 2, 8, 8, stride=4, offset_kernel_size=3)
    x = torch.randn(1, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    grads = []
    for fused in (True, False):
        block.zero_grad()
        x.grad = None
        block(x, fused=fused).square().sum().backward()
        grads.append((x.grad.clone(), block.conv_offset[0].weight.grad.clone(), block.rpe_table.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_attention_weights_rows_sum_to_one():
    block = make_block(8, 2, 8, 8, stride=4, offset_kernel_size=3)
    weights = block.attention_weights(torch.randn(2, 8, 8, 8, dtype=torch.float64))
    assert weights.shape == (2, 2, 64, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 64, dtype=torch.float64))


def test_relative_position_bias_at_zero_displacement_is_the_table_centre():
    table = torch.randn(2, 7, 9, dtype=torch.float64)  # (nh, 2H-1, 2W-1) for H=4, W=5
    queries = reference_points(4, 5, dtype=torch.float64)  # (4, 5, 2)
    bias = relative_position_bias(table, queries, queries.view(1, 1, 20, 2))  # points at the queries: (1, 2, 20, 20)
    torch.testing.assert_close(bias.diagonal(dim1=-2, dim2=-1), table[:, 3, 4][None, :, None].expand(1, 2, 20))


def _square_tensors(shapes, N):
    return [(op, s) for op, s in shapes if len(s) >= 2 and s[-1] >= N and s[-2] >= N]


@pytest.mark.parametrize("fused", [True, False])
def test_no_n_by_n_tensor(fused, record_shapes):
    block = make_block(16, 2, 32, 32, dtype=torch.float32, stride=4, offset_kernel_size=5)
    x = torch.randn(1, 32, 32, 16, requires_grad=True)  # N = 1024 queries, 64 sampled keys
    with record_shapes() as recorder:
        block(x, fused=fused).sum().backward()
    assert len(recorder.shapes) > 10
    assert _square_tensors(recorder.shapes, 32 * 32) == []
    assert x.grad is not None and block.conv_offset[0].weight.grad is not None


def test_deformable_attention_with_zero_bias_is_softmax_attention():
    from attnlib.reference import attention

    q, k, v = torch.randn(1, 2, 30, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    for fused in (True, False):
        torch.testing.assert_close(deformable_attention(q, k, v, fused=fused), attention(q, k, v))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: DeformableAttention(30, 4, 16, 16), ValueError, "dim must be divisible by num_heads"),
        (lambda: DeformableAttention(32, 4, 16, 16, n_groups=3), ValueError, "num_heads must be divisible by n_groups"),
        (lambda: DeformableAttention(32, 4, 16, 6, stride=8), ValueError, "stride must be at most"),
        (lambda: DeformableAttention(32, 4, 16, 16, offset_kernel_size=4), ValueError, "must be odd"),
        (lambda: DeformableAttention(32, 4, 16, 16, offset_range_factor=0), ValueError, "must be positive"),
        (lambda: DeformableAttention(32, 4, 16, 16, offset_range_factor="2"), TypeError, "must be a number"),
        (lambda: DeformableAttention(32, 4, 0, 16), ValueError, "height must be a positive int"),
        (lambda: make_block(8, 2, 8, 8, stride=4)(torch.zeros(8, 8, 8)), ValueError, "x must have 4 dimensions"),
        (lambda: make_block(8, 2, 8, 8, stride=4)(torch.zeros(1, 8, 9, 8)), ValueError, r"\(B, 8, 8, 8\)"),
        (lambda: deformable_attention(torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 4, 4)),
         ValueError, "k, v"),
    ],
)  # fmt: skip
def test_bad_input_raises_clear_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_map_not_divisible_by_stride_uses_the_ceiling_grid():
    block = make_block(8, 2, 30, 20, dtype=torch.float32, stride=8)
    assert block.grid_size == (4, 3)
    x = torch.randn(1, 30, 20, 8)
    positions, reference = block.sampling_positions(x)
    assert positions.shape == (1, 1, 4, 3, 2) and reference.shape == (4, 3, 2)
    assert block(x).shape == x.shape


def test_registry_entry():
    method = registry.get("dat")
    assert method.category == "sparsification" and method.domain == "vision"
    assert method.chapter == "04_dat.ipynb"
    assert method.module_cls() is DeformableAttention
    mixer = method.mixer_factory()(64, 2, 56, 56)
    assert isinstance(mixer, DeformableAttention) and mixer.stride == 8 and mixer.grid_size == (7, 7)
    assert mixer(torch.zeros(1, 56, 56, 64)).shape == (1, 56, 56, 64)
    assert dat_mixer(64, 2, 28, 28).grid_size == (4, 4)
