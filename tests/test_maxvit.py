"""Tests for attnlib.sparse.maxvit: block and grid attention equal dense attention under their patterns."""

from __future__ import annotations

import pytest
import torch

from attnlib import registry
from attnlib.reference import attention
from attnlib.sparse import maxvit as maxvit_module
from attnlib.sparse.maxvit import (
    MaxViTPartitionAttention2d,
    block_attention,
    grid_attention,
    maxvit_groups,
    maxvit_pattern,
)
from attnlib.sparse.windows import (
    dense_biased_attention,
    dense_relative_position_bias,
    from_groups,
    grid_partition,
    grid_reverse,
    to_groups,
)


def make_qkv(B, h, N, d, *, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, h, N, d, generator=g, dtype=dtype).requires_grad_(requires_grad) for _ in range(3))


def make_table(size, h, *, dtype=torch.float32, seed=1, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((2 * size - 1) ** 2, h, generator=g, dtype=dtype).requires_grad_(requires_grad)


def oracle(q, k, v, table, *, height, width, partition_type, size):
    """Dense attention + the same relative position bias, with the MaxViT pattern as mask (builds N x N)."""
    mask = maxvit_pattern(height, width, partition_type, size)  # (N, N)
    if table is None:
        return attention(q, k, v, mask=mask)
    rows = torch.arange(height).repeat_interleave(width)  # (N,)
    cols = torch.arange(width).repeat(height)  # (N,)
    if partition_type == "grid":  # positions inside the grid: i // (H/G), j // (W/G)
        rows, cols = rows // (height // size), cols // (width // size)
    bias = dense_relative_position_bias(table, rows, cols, size)  # (h, N, N)
    return dense_biased_attention(q, k, v, mask=mask, bias=bias)


def run(partition_type, q, k, v, *, height, width, size, **kwargs):
    if partition_type == "block":
        return block_attention(q, k, v, height=height, width=width, window_size=size, **kwargs)
    return grid_attention(q, k, v, height=height, width=width, grid_size=size, **kwargs)


CASES = [
    # height, width, size
    (14, 14, 7),
    (12, 18, 3),  # non-square
    (8, 8, 4),
    (6, 6, 6),  # one group covers the map
]

# ----------------------------------------------------------------------------
# Equality with the dense reference
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("partition_type", ["block", "grid"])
@pytest.mark.parametrize("height, width, size", CASES)
def test_matches_reference_with_bias(height, width, size, partition_type, fused):
    q, k, v = make_qkv(2, 3, height * width, 8)
    table = make_table(size, 3)
    out = run(partition_type, q, k, v, height=height, width=width, size=size,
              relative_position_bias_table=table, fused=fused)  # fmt: skip
    expected = oracle(q, k, v, table, height=height, width=width, partition_type=partition_type, size=size)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("partition_type", ["block", "grid"])
@pytest.mark.parametrize("height, width, size", CASES)
def test_without_bias_equals_reference_attention_with_the_pattern(height, width, size, partition_type):
    q, k, v = make_qkv(2, 2, height * width, 8, seed=4)
    out = run(partition_type, q, k, v, height=height, width=width, size=size)
    mask = maxvit_pattern(height, width, partition_type, size)
    torch.testing.assert_close(out, attention(q, k, v, mask=mask), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("partition_type", ["block", "grid"])
def test_gradients_match_reference(partition_type, fused):
    height, width, size = 12, 18, 3
    q, k, v = make_qkv(2, 2, height * width, 4, dtype=torch.float64, requires_grad=True)
    table = make_table(size, 2, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 2, height * width, 4, dtype=torch.float64)
    out = run(partition_type, q, k, v, height=height, width=width, size=size,
              relative_position_bias_table=table, fused=fused)  # fmt: skip
    grads = torch.autograd.grad(out, (q, k, v, table), grad_out)
    expected = oracle(q, k, v, table, height=height, width=width, partition_type=partition_type, size=size)
    expected_grads = torch.autograd.grad(expected, (q, k, v, table), grad_out)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-8)


# ----------------------------------------------------------------------------
# The patterns
# ----------------------------------------------------------------------------


def test_grid_groups_are_dilated():
    """Pixel (i, j) joins group (i mod H/G, j mod W/G): its group mates are H/G rows and W/G columns apart."""
    height, width, G = 12, 18, 3
    groups = maxvit_groups(height, width, "grid", G)
    for i, j in [(0, 0), (5, 7), (11, 17)]:
        mates = torch.nonzero(groups == groups[i, j])
        assert len(mates) == G * G
        assert set(mates[:, 0].tolist()) == {i % 4 + 4 * a for a in range(G)}  # H/G = 4 rows apart
        assert set(mates[:, 1].tolist()) == {j % 6 + 6 * b for b in range(G)}  # W/G = 6 columns apart


def test_block_groups_are_windows():
    groups = maxvit_groups(14, 21, "block", 7)
    assert torch.equal(groups[:7, 7:14], torch.full((7, 7), 1))
    assert groups.unique().numel() == 6


def test_block_then_grid_reaches_every_pixel_and_neither_alone_does():
    block = maxvit_pattern(14, 14, "block", 7).double()
    grid = maxvit_pattern(14, 14, "grid", 7).double()
    assert bool(((grid @ block) > 0).all())
    assert bool(((block @ grid) > 0).all())
    assert not bool((block > 0).all()) and not bool((grid > 0).all())


def test_partition_matches_the_official_grid_partition_and_round_trips():
    """timm's grid_partition: view (B, G, H/G, G, W/G, C), permute (0, 2, 4, 1, 3, 5)."""
    x = torch.randn(2, 12, 18, 5)
    ours = grid_partition(x, 3)  # (2, nW, 9, 5)
    official = x.view(2, 3, 4, 3, 6, 5).permute(0, 2, 4, 1, 3, 5).reshape(2, 24, 9, 5)
    assert torch.equal(ours, official)
    assert torch.equal(grid_reverse(ours, 3, 12, 18), x)


@pytest.mark.parametrize("partition_type", ["block", "grid"])
def test_gather_plan_round_trip(partition_type):
    plan = maxvit_module.maxvit_plan(12, 18, partition_type, 3)
    x = torch.randn(2, 12 * 18, 4)
    assert bool(plan.real.all())
    assert torch.equal(from_groups(to_groups(x, plan), plan), x)


# ----------------------------------------------------------------------------
# Structure: the library path never builds an N x N tensor
# ----------------------------------------------------------------------------


def _square_tensors(shapes, N):
    return [(op, s) for op, s in shapes if len(s) >= 2 and s[-1] >= N and s[-2] >= N]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("partition_type", ["block", "grid"])
def test_no_n_by_n_tensor(partition_type, fused, record_shapes):
    height = width = 28
    N = height * width
    q, k, v = make_qkv(1, 2, N, 8, requires_grad=True)
    table = make_table(7, 2, requires_grad=True)
    layer = MaxViTPartitionAttention2d(16, 2, partition_type=partition_type, fused=fused)
    x = torch.randn(1, height, width, 16, requires_grad=True)
    with record_shapes() as recorder:
        out = run(partition_type, q, k, v, height=height, width=width, size=7,
                  relative_position_bias_table=table, fused=fused)  # fmt: skip
        out.sum().backward()
        layer(x).sum().backward()
    assert len(recorder.shapes) > 20
    assert _square_tensors(recorder.shapes, N) == []
    assert q.grad is not None and table.grad is not None and x.grad is not None


def test_shape_recorder_catches_the_oracle(record_shapes):
    q, k, v = make_qkv(1, 1, 196, 8)
    with record_shapes() as recorder:
        oracle(q, k, v, make_table(7, 1), height=14, width=14, partition_type="grid", size=7)
    assert _square_tensors(recorder.shapes, 196)


# ----------------------------------------------------------------------------
# The nn.Module, bad input, the registry
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("partition_type", ["block", "grid"])
def test_module_matches_dense_oracle_with_its_weights(partition_type):
    torch.manual_seed(0)
    layer = MaxViTPartitionAttention2d(24, 3, partition_type=partition_type, partition_size=3)
    x = torch.randn(2, 12, 18, 24, requires_grad=True)
    y = layer(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in layer.parameters())

    B, H, W, C = x.shape
    q, k, v = layer.qkv(x.reshape(B, H * W, C)).view(B, H * W, 3, 3, 8).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
    table = layer.relative_position_bias_table
    core = oracle(q, k, v, table, height=H, width=W, partition_type=partition_type, size=3)
    expected = layer.proj(core.transpose(1, 2).reshape(B, H * W, C)).view(B, H, W, C)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    assert f"partition_type='{partition_type}'" in repr(layer)


def test_module_weights_have_the_official_names_and_shapes():
    layer = MaxViTPartitionAttention2d(96, 3, partition_type="grid", partition_size=7)
    shapes = {name: tuple(p.shape) for name, p in layer.named_parameters()}
    assert shapes == {
        "relative_position_bias_table": (169, 3),
        "qkv.weight": (288, 96),
        "qkv.bias": (288,),
        "proj.weight": (96, 96),
        "proj.bias": (96,),
    }


def test_module_textbook_and_fused_paths_agree():
    torch.manual_seed(0)
    fused = MaxViTPartitionAttention2d(16, 2, partition_type="grid", partition_size=4)
    textbook = MaxViTPartitionAttention2d(16, 2, partition_type="grid", partition_size=4, fused=False)
    textbook.load_state_dict(fused.state_dict())
    x = torch.randn(2, 8, 12, 16)
    torch.testing.assert_close(fused(x), textbook(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: MaxViTPartitionAttention2d(30, 4), "dim must be divisible by num_heads, got dim=30"),
        (lambda: MaxViTPartitionAttention2d(32, 4, partition_type="axial"), "partition_type must be one of"),
        (lambda: MaxViTPartitionAttention2d(32, 4, partition_size=0), "partition_size must be a positive int"),
    ],
)
def test_module_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_module_bad_input():
    block = MaxViTPartitionAttention2d(32, 4, partition_type="block")
    grid = MaxViTPartitionAttention2d(32, 4, partition_type="grid")
    with pytest.raises(ValueError, match="x must have 4 dimensions, got 3"):
        block(torch.zeros(1, 196, 32))
    with pytest.raises(ValueError, match=r"channels-last \(B, H, W, C\) with C = 32.*looks channels-first"):
        grid(torch.zeros(1, 32, 14, 14))
    with pytest.raises(ValueError, match="window_size must divide the map's height and width.*got window_size=7"):
        block(torch.zeros(1, 14, 15, 32))
    with pytest.raises(ValueError, match="grid_size must divide the map's height and width.*10 x 14 map"):
        grid(torch.zeros(1, 10, 14, 32))


@pytest.mark.parametrize(
    "partition_type, changes, match",
    [
        ("block", dict(height=7), r"N = height \* width = 7 \* 14 = 98 tokens, got 196"),
        ("grid", dict(size=5), "grid_size must divide the map's height and width"),
        ("block", dict(size=0), "window_size must be a positive int"),
        ("grid", dict(relative_position_bias_table=torch.zeros(169, 3)), r"must have shape .*\(169, 2\)"),
    ],
)
def test_functional_bad_input(partition_type, changes, match):
    q, k, v = make_qkv(1, 2, 196, 8)
    options = dict(height=14, width=14, size=7) | changes
    with pytest.raises(ValueError, match=match):
        run(partition_type, q, k, v, **options)


def test_pattern_bad_arguments():
    with pytest.raises(ValueError, match="partition_type must be one of"):
        maxvit_pattern(14, 14, "axial", 7)
    with pytest.raises(ValueError, match="grid_size must divide"):
        maxvit_pattern(14, 15, "grid", 7)


def test_registry_entry():
    method = registry.get("maxvit")
    assert method.category == "sparsification" and method.domain == "vision"
    assert method.chapter == "02_maxvit.ipynb"
    assert method.module_cls() is MaxViTPartitionAttention2d
    assert method.pattern_fn() is maxvit_pattern
    mixer = method.mixer_factory()(96, 3, 28, 28)
    assert mixer.partition_type == "grid" and mixer.partition_size == 7
    assert mixer(torch.randn(1, 28, 28, 96)).shape == (1, 28, 28, 96)
