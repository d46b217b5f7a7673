"""Tests for attnlib.approx.poolformer: Eq. (4) pooling mixer and the MetaFormer block."""

from __future__ import annotations

import math

import pytest
import torch

from attnlib import registry
from attnlib.approx.poolformer import GroupNorm1, PoolFormerBlock, Pooling, make_mixer, pooling_mixing_matrix


def loop_pooling(x: torch.Tensor, pool_size: int) -> torch.Tensor:
    """Eq. (4) pixel by pixel: the mean over the K x K window's pixels inside the map, minus the pixel."""
    B, H, W, C = x.shape
    r = pool_size // 2
    out = torch.zeros_like(x)
    for b in range(B):
        for i in range(H):
            for j in range(W):
                total, count = torch.zeros(C, dtype=x.dtype), 0
                for p in range(-r, r + 1):
                    for q in range(-r, r + 1):
                        if 0 <= i + p < H and 0 <= j + q < W:
                            total = total + x[b, i + p, j + q]
                            count += 1
                out[b, i, j] = total / count - x[b, i, j]
    return out


def loop_group_norm(x: torch.Tensor, weight, bias, eps=1e-5) -> torch.Tensor:
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        mean = x[b].mean()
        var = ((x[b] - mean) ** 2).mean()
        out[b] = (x[b] - mean) / torch.sqrt(var + eps) * weight + bias
    return out


def loop_gelu(h):
    return 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))


@pytest.mark.parametrize("H, W, pool_size", [(4, 5, 3), (6, 3, 5), (1, 7, 3), (2, 2, 7)])
def test_pooling_matches_loop_transcription(H, W, pool_size):
    x = torch.randn(2, H, W, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(Pooling(pool_size)(x), loop_pooling(x, pool_size), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("H, W, pool_size", [(5, 7, 3), (8, 8, 5), (1, 1, 3), (3, 9, 7)])
def test_constant_image_mixes_to_zero_borders_included(H, W, pool_size):
    x = torch.full((2, H, W, 4), 3.25) + torch.arange(4.0)  # constant per channel
    out = Pooling(pool_size)(x)
    assert out.abs().max().item() < 1e-6


def test_counted_padding_would_not_be_zero_at_the_border():
    """The check above can fail: with the padding counted, the border of a constant image is not zero."""
    x = torch.ones(1, 4, 4, 1)
    counted = torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 3, 1, 1, count_include_pad=True) - 1
    assert counted[0, 0, 0, 0].item() == pytest.approx(4 / 9 - 1)


def test_mixing_matrix_is_the_kernel_minus_identity():
    H, W = 4, 5
    M = pooling_mixing_matrix(H, W)  # (20, 20)
    x = torch.randn(1, H, W, 3, dtype=torch.float64)
    torch.testing.assert_close(Pooling()(x).reshape(H * W, 3), M @ x.reshape(H * W, 3), atol=1e-12, rtol=0)
    torch.testing.assert_close(M.sum(dim=1), torch.zeros(H * W, dtype=torch.float64), atol=1e-12, rtol=0)
    # corner token 0 averages 4 pixels, an interior token 9, an edge token 6
    assert M[0, 0].item() == pytest.approx(1 / 4 - 1) and M[0, 1].item() == pytest.approx(1 / 4)
    assert M[6, 6].item() == pytest.approx(1 / 9 - 1)
    assert M[1, 0].item() == pytest.approx(1 / 6)
    assert int((M != 0).sum(dim=1)[6]) == 9 and M[0, 7].item() == 0.0  # local: 3 x 3 only


def test_not_permutation_equivariant_but_translation_equivariant_inside():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 6, 6, 2, generator=g)
    mix = Pooling()
    perm = torch.randperm(36, generator=g)
    permuted_then_mixed = mix(x.reshape(1, 36, 2)[:, perm].reshape(1, 6, 6, 2)).reshape(1, 36, 2)
    mixed_then_permuted = mix(x).reshape(1, 36, 2)[:, perm]
    assert (permuted_then_mixed - mixed_then_permuted).abs().max().item() > 0.1
    shifted = torch.roll(x, shifts=(1, 1), dims=(1, 2))
    inner = (slice(None), slice(2, -1), slice(2, -1))  # pixels whose window stays inside after the shift
    torch.testing.assert_close(mix(shifted)[inner], torch.roll(mix(x), (1, 1), (1, 2))[inner])


def test_block_matches_loop_transcription():
    torch.manual_seed(0)
    block = PoolFormerBlock(6, mlp_ratio=2.0, layer_scale_init_value=0.5)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, 4, 3, 6)
    norm1 = loop_group_norm(x, block.norm1.weight, block.norm1.bias)
    y = x + block.layer_scale_1 * loop_pooling(norm1, 3)  # Eq. (2)
    norm2 = loop_group_norm(y, block.norm2.weight, block.norm2.bias)
    hidden = loop_gelu(norm2 @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
    z = y + block.layer_scale_2 * (hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias)  # Eq. (3)
    torch.testing.assert_close(block(x), z, atol=1e-5, rtol=1e-5)


def test_group_norm_is_one_group_over_c_h_w():
    x = torch.randn(3, 4, 5, 6)
    norm = GroupNorm1(6)
    expected = torch.nn.GroupNorm(1, 6)(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(norm(x), expected)


def test_block_options_and_gradients():
    block = PoolFormerBlock(8, use_layer_scale=False)
    assert not hasattr(block, "layer_scale_1") and block.mlp.fc1.out_features == 32
    x = torch.randn(1, 5, 5, 8, requires_grad=True)
    block(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    scaled = PoolFormerBlock(8)
    assert torch.allclose(scaled.layer_scale_1, torch.full((8,), 1e-5))


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: Pooling(4), ValueError, "pool_size must be odd"),
        (lambda: Pooling(0), ValueError, "pool_size must be a positive int, got 0"),
        (lambda: Pooling()(torch.zeros(2, 3, 4)), ValueError, "x must have 4 dimensions"),
        (lambda: Pooling()([[1.0]]), TypeError, "x must be a torch.Tensor"),
        (lambda: PoolFormerBlock(8)(torch.zeros(1, 3, 3, 6)), ValueError, "x must have C=8 channels"),
        (lambda: PoolFormerBlock(8, mlp_ratio=0), ValueError, "mlp_ratio must be positive"),
        (lambda: pooling_mixing_matrix(0, 3), ValueError, "height must be a positive int"),
        (lambda: make_mixer(8, 0, 4, 4), ValueError, "num_heads must be a positive int"),
    ],
)
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_registry_row():
    method = registry.get("poolformer")
    assert method.category == "approximation" and method.domain == "vision"
    mixer = method.mixer_factory()(96, 3, 7, 9)
    assert isinstance(mixer, Pooling)
    assert mixer(torch.randn(2, 7, 9, 96)).shape == (2, 7, 9, 96)
    assert method.module_cls() is PoolFormerBlock
