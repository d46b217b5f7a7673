"""Tests for attnlib.sparse.pvt: spatial-reduction attention equals dense attention on reduced keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlib import registry
from attnlib.reference import attention
from attnlib.sparse.pvt import (
    SpatialReductionAttention,
    pvt_cell_index,
    pvt_key_cells,
    pvt_mixer,
    reduce_map,
    reduced_size,
    sra_attention,
)


def make_block(C, heads, R, *, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    block = SpatialReductionAttention(C, heads, R, qkv_bias=True).to(dtype)
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a wrong norm cannot hide
        if R > 1:
            block.norm.weight.uniform_(0.5, 1.5)
            block.norm.bias.uniform_(-0.5, 0.5)
    return block


def long_way(block: SpatialReductionAttention, x: torch.Tensor) -> torch.Tensor:
    """Eq. (2)-(3) the long way: a loop over reduction cells, then dense attention (the test oracle)."""
    B, H, W, C = x.shape
    R, nh, d = block.sr_ratio, block.num_heads, block.head_dim
    if R == 1:
        reduced = x.reshape(B, H * W, C)
    else:
        tokens = []
        for i in range(H // R):  # reduction cells, row-major
            for j in range(W // R):
                cell = x[:, i * R : (i + 1) * R, j * R : (j + 1) * R, :]  # (B, R, R, C)
                # conv weight (C_out, C_in, R, R) applied to one cell: sum over (C_in, R, R)
                token = torch.einsum("bklc,ockl->bo", cell, block.sr.weight) + block.sr.bias  # (B, C)
                tokens.append(token)
        reduced = torch.stack(tokens, dim=1)  # (B, Nr, C)
        mean = reduced.mean(-1, keepdim=True)
        var = reduced.var(-1, unbiased=False, keepdim=True)
        reduced = (reduced - mean) / torch.sqrt(var + block.norm.eps) * block.norm.weight + block.norm.bias
    q = (x.reshape(B, H * W, C) @ block.q.weight.T + block.q.bias).view(B, -1, nh, d).transpose(1, 2)
    kv = reduced @ block.kv.weight.T + block.kv.bias  # (B, Nr, 2C): keys first, as in the official code
    k = kv[..., :C].reshape(B, -1, nh, d).transpose(1, 2)
    v = kv[..., C:].reshape(B, -1, nh, d).transpose(1, 2)
    out = attention(q, k, v).transpose(1, 2).reshape(B, H, W, C)  # dense attention over the reduced keys
    return out @ block.proj.weight.T + block.proj.bias


CASES = [
    # H, W, C, heads, R
    (16, 16, 32, 2, 4),
    (24, 16, 16, 1, 8),
    (18, 13, 16, 2, 4),  # H, W not multiples of R: the remainder feeds no key
    (8, 8, 16, 4, 1),  # R = 1: ordinary global attention
    (6, 6, 8, 1, 6),  # R = the map: one key
]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("H, W, C, heads, R", CASES)
def test_matches_long_way(H, W, C, heads, R, fused):
    block = make_block(C, heads, R)
    x = torch.randn(2, H, W, C, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = block(x, fused=fused)
        expected = long_way(block, x)
    assert out.shape == x.shape
    assert (out - expected).abs().max().item() < 1e-5


def test_reduce_map_is_the_official_convolution():
    block = make_block(16, 2, 4)
    x = torch.randn(2, 19, 22, 16)
    with torch.no_grad():
        conv = block.sr(x.permute(0, 3, 1, 2)).flatten(2).transpose(1, 2)  # (B, Nr, C)
        torch.testing.assert_close(reduce_map(x, block.sr, block.norm), block.norm(conv), atol=1e-5, rtol=1e-5)
    assert block.reduced_tokens(x).shape == (2, 4 * 5, 16)


def test_gradients_fused_and_textbook_agree():
    block = make_block(16, 2, 4, dtype=torch.float64)
    x = torch.randn(1, 12, 12, 16, dtype=torch.float64, requires_grad=True)
    grads = []
    for fused in (True, False):
        block.zero_grad()
        x.grad = None
        block(x, fused=fused).square().sum().backward()
        grads.append((x.grad.clone(), block.sr.weight.grad.clone(), block.norm.weight.grad.clone()))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_gradcheck_float64():
    block = make_block(4, 2, 2, dtype=torch.float64)
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: block(t, fused=False), (x,), fast_mode=True)


def test_pattern_cells():
    cells = pvt_key_cells(10, 7, 3)  # (Nr, N) = (3 * 2, 70)
    assert cells.shape == (6, 70)
    assert cells.sum(dim=1).tolist() == [9] * 6  # each key reads one R x R cell
    index = pvt_cell_index(10, 7, 3)
    assert index[9].tolist() == [-1] * 7 and index[:, 6].tolist() == [-1] * 10  # the remainder feeds no key
    assert index[4, 5].item() == 1 * 2 + 1
    assert cells.sum(dim=0).max().item() == 1  # no pixel feeds two keys


def test_pattern_is_where_each_key_reads():
    """The pattern is what the computation does: key j depends on pixel p iff pattern[j, p]."""
    block = make_block(4, 1, 3, dtype=torch.float64)
    x = torch.randn(1, 7, 8, 4, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(lambda t: reduce_map(t, block.sr, block.norm), x)
    depends = jacobian[0].abs().sum(dim=(1, 2, 5)).flatten(1) > 0  # (Nr, N): key j reads pixel p
    assert torch.equal(depends, pvt_key_cells(7, 8, 3))


def test_dropped_rows_are_queries_only():
    """With H mod R != 0 the last rows are queries but change no key: other outputs stay the same."""
    block = make_block(8, 1, 4)
    x = torch.randn(1, 10, 8, 8)
    y = x.clone()
    y[:, 8:] += 1.0  # the two remainder rows
    with torch.no_grad():
        a, b = block(x), block(y)
    assert torch.equal(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_attention_weights_rows_sum_to_one():
    block = make_block(16, 2, 4)
    x = torch.randn(2, 16, 12, 16)
    weights = block.attention_weights(x)
    assert weights.shape == (2, 2, 16 * 12, 4 * 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 192))


def _square_tensors(shapes, N):
    return [(op, s) for op, s in shapes if len(s) >= 2 and s[-1] >= N and s[-2] >= N]


@pytest.mark.parametrize("fused", [True, False])
def test_no_n_by_n_tensor(fused, record_shapes):
    block = make_block(16, 2, 4)
    x = torch.randn(1, 32, 32, 16, requires_grad=True)  # N = 1024 queries, 64 keys
    with record_shapes() as recorder:
        block(x, fused=fused).sum().backward()
    assert len(recorder.shapes) > 10
    assert _square_tensors(recorder.shapes, 32 * 32) == []
    assert x.grad is not None


def test_shape_recorder_catches_global_attention(record_shapes):
    block = make_block(16, 2, 1)  # R = 1: global attention builds N x N scores
    with record_shapes() as recorder:
        block(torch.randn(1, 16, 16, 16), fused=False)
    assert _square_tensors(recorder.shapes, 256)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: SpatialReductionAttention(30, 4, 2), ValueError, "dim must be divisible by num_heads"),
        (lambda: SpatialReductionAttention(32, 4, 0), ValueError, "sr_ratio must be a positive int"),
        (lambda: make_block(16, 2, 4)(torch.zeros(16, 16, 16)), ValueError, "x must have 4 dimensions"),
        (lambda: make_block(16, 2, 4)(torch.zeros(1, 16, 16, 8)), ValueError, "C=16 channels"),
        (lambda: make_block(16, 2, 8)(torch.zeros(1, 6, 16, 16)), ValueError, "sr_ratio must be at most"),
        (lambda: make_block(16, 2, 4)(torch.zeros(1, 8, 8, 16, dtype=torch.long)), TypeError, "floating"),
        (lambda: pvt_key_cells(4, 4, 5), ValueError, "sr_ratio must be at most"),
        (lambda: reduced_size(0, 4, 2), ValueError, "height must be a positive int"),
        (lambda: sra_attention(torch.zeros(1, 2, 8, 4), torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 5)),
         ValueError, "k, v"),
    ],
)  # fmt: skip
def test_bad_input_raises_clear_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_sra_attention_equals_dense_reference():
    q, k, v = torch.randn(2, 3, 50, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    for fused in (True, False):
        torch.testing.assert_close(sra_attention(q, k, v, fused=fused), attention(q, k, v), atol=1e-6, rtol=1e-5)
    assert torch.equal(F.scaled_dot_product_attention(q, k, v), sra_attention(q, k, v))


def test_registry_entry():
    method = registry.get("pvt")
    assert method.category == "sparsification" and method.domain == "vision"
    assert method.chapter == "03_pvt.ipynb"
    assert method.module_cls() is SpatialReductionAttention
    mixer = method.mixer_factory()(64, 1, 56, 56)
    assert isinstance(mixer, SpatialReductionAttention) and mixer.sr_ratio == 8
    assert mixer(torch.zeros(1, 56, 56, 64)).shape == (1, 56, 56, 64)
    assert pvt_mixer(64, 1, 28, 28).reduced_tokens(torch.zeros(1, 28, 28, 64)).shape == (1, 9, 64)
