"""Tests for attnlib.approx.linformer: keys and values projected along the sequence (Wang et al., 2020)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlib import registry
from attnlib.approx.linformer import (
    LinformerSelfAttention,
    linformer_attention,
    make_mixer,
    random_projections,
)
from attnlib.reference import attention


def make_qkv(B, H, N, d, *, seed=0, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, N, d, generator=g, dtype=dtype).requires_grad_(requires_grad) for _ in range(3))


def test_identity_projections_with_k_equal_n_are_dense_attention():
    q, k, v = make_qkv(2, 3, 33, 8)
    eye = torch.eye(33, dtype=torch.float64)
    out = linformer_attention(q, k, v, eye, eye)
    assert (out - attention(q, k, v)).abs().max() < 1e-12
    per_head = eye.expand(3, 33, 33)
    assert (linformer_attention(q, k, v, per_head) - attention(q, k, v)).abs().max() < 1e-12


def test_a_permutation_of_the_keys_is_still_dense_attention():
    """Softmax attention does not care about the order of the keys, if keys and values move together."""
    q, k, v = make_qkv(1, 2, 20, 4)
    P = torch.eye(20, dtype=torch.float64)[torch.randperm(20, generator=torch.Generator().manual_seed(0))]
    assert (linformer_attention(q, k, v, P, P) - attention(q, k, v)).abs().max() < 1e-12


def test_equation_7_by_hand():
    """softmax(Q (E K)^T / sqrt(d)) (F V), head by head, with projections per head."""
    q, k, v = make_qkv(2, 2, 30, 4)
    g = torch.Generator().manual_seed(1)
    E, F = (torch.randn(2, 6, 30, generator=g, dtype=torch.float64) for _ in range(2))
    out = linformer_attention(q, k, v, E, F)
    for b in range(2):
        for h in range(2):
            scores = q[b, h] @ (E[h] @ k[b, h]).T / 2.0  # (N, k), sqrt(d) = 2
            expected = scores.softmax(-1) @ (F[h] @ v[b, h])
            assert (out[b, h] - expected).abs().max() < 1e-12
    assert (linformer_attention(q, k, v, E[0]) - linformer_attention(q, k, v, E[0], E[0])).abs().max() == 0


def test_seeded_projections_are_random_projections_drawn_in_blocks():
    q, k, v = make_qkv(1, 2, 2500, 4)  # three blocks of 1024 columns, the last one short
    E, F = random_projections(64, 2500, seed=3, dtype=torch.float64)
    assert E.shape == F.shape == (64, 2500) and not torch.equal(E, F)
    out = linformer_attention(q, k, v, proj_len=64, seed=3)
    assert (out - linformer_attention(q, k, v, E, F)).abs().max() < 1e-10
    assert abs(E.var().item() * 64 - 1) < 0.02  # entries N(0, 1/k), Theorem 2


def test_random_projections_approach_dense_attention_as_k_grows():
    """Theorem 2's regime: random N(0, 1/k) projections; the error falls as k grows (and is 0 at k = N with I)."""
    q, k, v = make_qkv(1, 2, 512, 8, seed=4)
    q = q * 0.3
    reference = attention(q, k, v)
    errors = []
    for proj in (16, 64, 256):
        outs = [linformer_attention(q, k, v, proj_len=proj, seed=s) for s in range(4)]
        errors.append(sum((o - reference).square().mean().sqrt().item() for o in outs) / 4)
    assert errors[0] > errors[1] > errors[2], errors


def test_gradcheck_and_gradients_reach_the_projections():
    q, k, v = make_qkv(1, 2, 7, 3, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    E, F = (torch.randn(4, 7, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    assert torch.autograd.gradcheck(linformer_attention, (q, k, v, E, F))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    q, k, v = make_qkv(1, 2, 64, 16, dtype=torch.float32)
    expected = linformer_attention(q, k, v, proj_len=32, seed=0)
    out = linformer_attention(q.to(dtype), k.to(dtype), v.to(dtype), proj_len=32, seed=0)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)


def test_large_logits_stay_finite():
    q, k, v = make_qkv(1, 2, 64, 8, dtype=torch.float32)
    out = linformer_attention(q * 1e3, k * 1e3, v, proj_len=16, seed=0)
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda q, k, v: linformer_attention(q, k, v, proj_len=4, seed=0, causal=True), ValueError,
         "Linformer cannot be causal: each projected key .* mixes all N tokens, the future"),
        (lambda q, k, v: linformer_attention(q, k, v, proj_len=0, seed=0), ValueError, "proj_len \\(k, the projected"),
        (lambda q, k, v: linformer_attention(q, k, v, proj_len=17, seed=0), ValueError,
         "proj_len \\(k\\) must be at most the sequence length N"),
        (lambda q, k, v: linformer_attention(q, k, v, torch.randn(20, 16, dtype=torch.float64)), ValueError,
         "must be at most the sequence length"),
        (lambda q, k, v: linformer_attention(q, k, v, torch.zeros(0, 16, dtype=torch.float64)), ValueError,
         "E must have at least one row"),
        (lambda q, k, v: linformer_attention(q, k, v, torch.randn(4, 15, dtype=torch.float64)), ValueError,
         "E must have N=16 columns"),
        (lambda q, k, v: linformer_attention(q, k, v, torch.randn(3, 4, 16, dtype=torch.float64)), ValueError,
         "must have H=2 heads"),
        (lambda q, k, v: linformer_attention(q, k, v, torch.randn(4, 16)), TypeError, "E must have the dtype of q"),
        (lambda q, k, v: linformer_attention(q, k, v, torch.randn(4, 16, dtype=torch.float64),
                                             torch.randn(5, 16, dtype=torch.float64)), ValueError,
         "E and F must project to the same k rows"),
        (lambda q, k, v: linformer_attention(q, k, v), ValueError, "give proj_len \\(k\\) and seed"),
        (lambda q, k, v: linformer_attention(q, k, v, None, torch.eye(16, dtype=torch.float64)), ValueError,
         "F was given without E"),
        (lambda q, k, v: linformer_attention(q, k, v, torch.eye(16, dtype=torch.float64), proj_len=4), ValueError,
         "not both"),
        (lambda q, k, v: linformer_attention(q, k.float(), v, proj_len=4, seed=0), TypeError,
         "q, k, v must share one dtype"),
        (lambda q, k, v: linformer_attention(q, k[..., :3], v, proj_len=4, seed=0), ValueError,
         "head dimension mismatch"),
        (lambda q, k, v: linformer_attention(q, k, v, proj_len=4, seed=1.5), TypeError, "seed must be an int"),
        (lambda q, k, v: random_projections(0, 16, seed=0), ValueError, "proj_len"),
    ],
)  # fmt: skip
def test_bad_input_raises_clear_errors(call, error, match):
    q, k, v = make_qkv(1, 2, 16, 4)
    with pytest.raises(error, match=match):
        call(q, k, v)


# ----------------------------------------------------------------------------
# The module and its sharing modes
# ----------------------------------------------------------------------------


def count(module: nn.Module, name: str) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if n.split(".")[-1] == name)


def test_sharing_modes_hold_the_papers_numbers_of_projections():
    N, k, H = 40, 8, 4
    none = LinformerSelfAttention(32, H, N, k, sharing="none")
    headwise = LinformerSelfAttention(32, H, N, k, sharing="headwise")
    key_value = LinformerSelfAttention(32, H, N, k, sharing="key-value")
    assert (count(none, "E"), count(none, "F")) == (H * k * N, H * k * N)
    assert (count(headwise, "E"), count(headwise, "F")) == (k * N, k * N)
    assert (count(key_value, "E"), count(key_value, "F")) == (k * N, 0)
    shared = LinformerSelfAttention.shared_projection(N, k)
    layers = nn.ModuleList([LinformerSelfAttention(32, H, N, k, sharing="layerwise", shared=shared) for _ in range(3)])
    assert sum(p.numel() for p in layers.parameters() if p.shape == (k, N)) == k * N  # one matrix for all layers
    assert all(layer.E is shared and layer.F is None for layer in layers)


@pytest.mark.parametrize("sharing", ["none", "headwise", "key-value"])
def test_module_equals_its_kernel(sharing):
    torch.manual_seed(0)
    block = LinformerSelfAttention(16, 2, 12, 5, sharing=sharing).double()
    x = torch.randn(3, 12, 16, dtype=torch.float64, requires_grad=True)
    out = block(x)
    q, k, v = block.qkv(x).view(3, 12, 3, 2, 8).permute(2, 0, 3, 1, 4)
    F = block.E if block.F is None else block.F
    heads = attention(q, block.E @ k, F @ v)  # softmax over the k projected keys
    torch.testing.assert_close(out, block.out_proj(heads.transpose(1, 2).reshape(3, 12, 16)))
    out.sum().backward()
    assert block.E.grad is not None and torch.isfinite(x.grad).all()


def test_module_bad_arguments():
    with pytest.raises(ValueError, match="Linformer cannot be causal"):
        LinformerSelfAttention(16, 2, 12, 4, causal=True)
    with pytest.raises(ValueError, match="sharing must be one of"):
        LinformerSelfAttention(16, 2, 12, 4, sharing="all")
    with pytest.raises(ValueError, match="needs shared="):
        LinformerSelfAttention(16, 2, 12, 4, sharing="layerwise")
    with pytest.raises(ValueError, match="shared must be an nn.Parameter of shape"):
        LinformerSelfAttention(16, 2, 12, 4, sharing="layerwise", shared=nn.Parameter(torch.zeros(4, 13)))
    with pytest.raises(ValueError, match="proj_len \\(k\\) must be at most the sequence length"):
        LinformerSelfAttention(16, 2, 12, 13)
    with pytest.raises(ValueError, match="proj_len \\(k, the projected length\\) must be a positive int"):
        LinformerSelfAttention(16, 2, 12, 0)
    block = LinformerSelfAttention(16, 2, 12, 4)
    with pytest.raises(ValueError, match="x must have seq_len=12 tokens"):
        block(torch.randn(1, 11, 16))
    with pytest.raises(TypeError, match="x must have the dtype of the module's parameters"):
        block(torch.randn(1, 12, 16, dtype=torch.float64))


def test_registry_entry_and_mixer():
    method = registry.get("linformer")
    assert method.attention_fn() is linformer_attention
    assert method.approximates_softmax == "yes" and method.bench_kwargs["proj_len"] == 256
    mixer = method.mixer_factory()(24, 3, 5, 7)  # 35 pixels: k = min(256, 35)
    x = torch.randn(2, 5, 7, 24)
    assert mixer(x).shape == x.shape
    assert mixer.attn.proj_len == 35
    with pytest.raises(ValueError, match="height must be a positive int"):
        make_mixer(24, 3, 0, 7)
