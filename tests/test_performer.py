"""Tests for attnlib.approx.performer: FAVOR+ (Choromanski et al., ICLR 2021).

The statistical tests use fixed seeds, so they are deterministic; their tolerances are chosen so
that they would also hold, with high probability, for another seed (each says why).
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from attnlib import registry
from attnlib.approx.performer import (
    PerformerSelfAttention,
    gaussian_projection,
    make_mixer,
    performer_attention,
    positive_random_features,
    softmax_kernel_estimate,
)
from attnlib.reference import attention


def make_qkv(B, H, N, d, *, seed=0, dtype=torch.float64, std=0.5, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(B, H, N, d, generator=g, dtype=dtype) * std).requires_grad_(requires_grad)
                 for _ in range(3))  # fmt: skip


def pair(d: int, norm: float, seed: int = 0):
    """Two fixed vectors x, y of length ``norm`` in R^d."""
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.randn(d, generator=g, dtype=torch.float64) for _ in range(2))
    return x / x.norm() * norm, y / y.norm() * norm


def draws(x, y, m: int, D: int, *, orthogonal: bool, seed: int = 1) -> torch.Tensor:
    """D independent estimates of exp(x.y), each with m features: one (D m, d) projection cut into D groups.

    For i.i.d. rows that is D independent m-row projections; for orthogonal rows with m = d each group
    is one block (gaussian_projection draws the blocks independently).
    """
    d = x.shape[0]
    W = gaussian_projection(D * m, d, orthogonal=orthogonal, seed=seed, dtype=torch.float64)  # (D m, d)
    fx = positive_random_features(x[None], W)[0].view(D, m)  # each feature divided by sqrt(D m)
    fy = positive_random_features(y[None], W)[0].view(D, m)
    return (fx * fy).sum(-1) * D  # (D,): (1/m) sum_r exp(w_r.x - |x|^2/2) exp(w_r.y - |y|^2/2)


def lemma2_variance(x, y, m: int) -> float:
    """Lemma 2 of the paper: Var of the m-feature positive estimate = (1/m) SM^2 (exp(|x + y|^2) - 1)."""
    sm = math.exp(float(x @ y))
    return sm**2 * (math.exp(float((x + y).square().sum())) - 1) / m


# ----------------------------------------------------------------------------
# The estimator of exp(x.y)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("orthogonal", [False, True])
def test_kernel_estimate_is_unbiased(orthogonal):
    """The mean of D = 20,000 estimates is within 4 standard errors of exp(x.y).

    By the central limit theorem the mean of D independent estimates is close to normal with standard
    error sqrt(Var / D), Var from Lemma 2 (an upper bound for orthogonal features, Theorem 2): a
    4-sigma band is left by chance with probability below 1e-4, so the test is not tuned to the seed.
    A biased estimator (e.g. the features without the -|x|^2/2 term) misses by hundreds of errors.
    """
    x, y = pair(16, 1.0)
    D, m = 20_000, 16
    estimates = draws(x, y, m, D, orthogonal=orthogonal)
    sm = math.exp(float(x @ y))
    standard_error = math.sqrt(lemma2_variance(x, y, m) / D)
    assert abs(estimates.mean().item() - sm) < 4 * standard_error
    assert (estimates > 0).all()  # positive features: every estimate is positive, unlike sin/cos features


def test_error_falls_at_the_rate_of_lemma_2():
    """Mean squared error x m stays at Lemma 2's constant SM^2 (exp(|x+y|^2) - 1) for m = 4 .. 256: MSE ~ 1/m.

    Tolerance 20%: with D = 20,000 draws the sample MSE has a relative standard deviation of a few
    percent here (|x + y|^2 < 4, so the estimate's tails are moderate).
    """
    x, y = pair(8, 0.8)
    sm = math.exp(float(x @ y))
    constant = lemma2_variance(x, y, 1)
    for m in (4, 16, 64, 256):
        D = 20_000 if m <= 64 else 5_000
        mse = ((draws(x, y, m, D, orthogonal=False, seed=m) - sm) ** 2).mean().item()
        assert abs(mse * m / constant - 1) < 0.2, m


def test_orthogonal_features_have_lower_variance_than_iid():
    """Theorem 2: on the same x, y, orthogonal features give a smaller MSE (here about 0.8x of i.i.d.)."""
    for d, norm in ((8, 1.0), (16, 1.0)):
        x, y = pair(d, norm)
        sm = math.exp(float(x @ y))
        mse = {
            orthogonal: ((draws(x, y, d, 20_000, orthogonal=orthogonal) - sm) ** 2).mean().item()
            for orthogonal in (False, True)
        }
        assert mse[True] < 0.9 * mse[False], (d, mse)


def test_orthogonal_projection_structure():
    d, m = 8, 20  # two full blocks and four rows of a third
    W = gaussian_projection(m, d, orthogonal=True, seed=3, dtype=torch.float64)
    assert W.shape == (m, d)
    directions = W / W.norm(dim=1, keepdim=True)
    for start in (0, 8, 16):
        block = directions[start : start + d]
        torch.testing.assert_close(block @ block.T, torch.eye(block.shape[0], dtype=torch.float64))
    # each row is marginally N(0, I_d): coordinates of mean 0, variance 1 over many rows
    many = gaussian_projection(40_000, d, orthogonal=True, seed=4, dtype=torch.float64)
    assert many.mean().abs() < 0.01 and abs(many.var().item() - 1) < 0.02
    assert abs(many.square().sum(1).mean().item() - d) < 0.05 * d  # E |w|^2 = d (chi-squared with d degrees)


def test_draws_are_seeded():
    a = gaussian_projection(64, 16, seed=0)
    assert torch.equal(a, gaussian_projection(64, 16, seed=0))
    assert not torch.equal(a, gaussian_projection(64, 16, seed=1))
    g = torch.Generator().manual_seed(0)
    first, second = gaussian_projection(64, 16, generator=g), gaussian_projection(64, 16, generator=g)
    assert torch.equal(first, a) and not torch.equal(first, second)  # a generator redraws as it advances
    q, k, v = make_qkv(1, 2, 10, 16)
    assert torch.equal(performer_attention(q, k, v, seed=5), performer_attention(q, k, v, seed=5))
    assert not torch.equal(performer_attention(q, k, v, seed=5), performer_attention(q, k, v, seed=6))


# ----------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------


def test_attention_approaches_softmax_as_features_grow():
    """Averaged over 4 draws, the error against softmax attention falls with m (roughly as 1/sqrt(m))."""
    q, k, v = make_qkv(1, 2, 64, 16)
    for causal in (False, True):
        reference = attention(q, k, v, causal=causal)
        errors = []
        for m in (16, 256, 2048):
            outs = [performer_attention(q, k, v, causal=causal, num_features=m, seed=s) for s in range(4)]
            errors.append(sum((o - reference).square().mean().sqrt().item() for o in outs) / 4)
        assert errors[0] > 2 * errors[1] > 4 * errors[2], (causal, errors)  # 1/sqrt(m): 4x, then 2.8x
        assert errors[2] < 0.03


def test_causal_forms_agree_and_the_quadratic_form_is_the_kernel_matrix():
    q, k, v = make_qkv(2, 2, 45, 8)
    W = gaussian_projection(32, 8, seed=0, dtype=torch.float64)
    for causal in (False, True):
        fast = performer_attention(q, k, v, causal=causal, projection=W, chunk_size=8)
        quadratic = performer_attention(q, k, v, causal=causal, projection=W, form="quadratic")
        assert (fast - quadratic).abs().max() < 1e-10
    # the quadratic form, by hand: features of q/d^(1/4) and k/d^(1/4), their products, masked, normalized
    root = 8**-0.25
    A = softmax_kernel_estimate(q * root, k * root, W)  # (B, H, N, N): estimates of exp(q.k / sqrt(d))
    A = A.tril()
    expected = (A @ v) / A.sum(-1, keepdim=True)
    assert (performer_attention(q, k, v, causal=True, projection=W) - expected).abs().max() < 1e-10


def test_stabilizer_cancels():
    q, k, v = make_qkv(1, 2, 30, 8)
    W = gaussian_projection(64, 8, seed=2, dtype=torch.float64)
    for causal in (False, True):
        plain = performer_attention(q, k, v, causal=causal, projection=W, stabilize=False)
        stable = performer_attention(q, k, v, causal=causal, projection=W)
        assert (plain - stable).abs().max() < 1e-12


def test_large_logits_need_the_stabilizer():
    """Logits in the hundreds (float32): without the stabilizer every feature underflows, every row is zeros
    (all mass lost); with it the rows are convex combinations of the values again. Logits in the thousands
    stay finite (the estimate itself is poor there: the chapter's "where it breaks")."""
    q, k, v = make_qkv(1, 2, 40, 16, dtype=torch.float32, std=1.0)
    W = gaussian_projection(256, 16, seed=0)
    lo, hi = v.amin(dim=2, keepdim=True), v.amax(dim=2, keepdim=True)  # per head and channel
    for causal in (False, True):
        plain = performer_attention(q * 10, k * 10, v, causal=causal, projection=W, stabilize=False)
        assert (plain.abs().sum(-1) == 0).all()
        out = performer_attention(q * 10, k * 10, v, causal=causal, projection=W)
        assert torch.isfinite(out).all() and (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
        empty = (out.abs().sum(-1) == 0).sum().item()
        assert empty == 0 if not causal else empty < 10  # causal: a few early rows with few keys may underflow
        assert torch.isfinite(performer_attention(q * 30, k * 30, v, causal=causal, projection=W)).all()


def test_custom_scale_and_grouped_heads():
    q, k, v = make_qkv(1, 4, 20, 8)
    W = gaussian_projection(8192, 8, seed=0, dtype=torch.float64)
    out = performer_attention(q, k, v, projection=W, scale=0.2)
    assert (out - attention(q, k, v, scale=0.2)).abs().max() < 0.05
    k2, v2 = k[:, :2], v[:, :2]
    expanded = performer_attention(q, k2.repeat_interleave(2, 1), v2.repeat_interleave(2, 1), projection=W, causal=True)
    torch.testing.assert_close(performer_attention(q, k2, v2, projection=W, causal=True), expanded)


def test_gradcheck():
    q, k, v = make_qkv(1, 2, 6, 4, requires_grad=True)
    W = gaussian_projection(8, 4, seed=0, dtype=torch.float64)
    for causal in (False, True):
        fn = partial(performer_attention, projection=W, causal=causal, chunk_size=4)
        assert torch.autograd.gradcheck(fn, (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_in_float32(dtype):
    q, k, v = make_qkv(1, 2, 32, 16, dtype=torch.float32)
    out = performer_attention(q.to(dtype), k.to(dtype), v.to(dtype), seed=0)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), performer_attention(q, k, v, seed=0), rtol=0.05, atol=0.05)


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda q, k, v: performer_attention(q, k, v, num_features=0, seed=0), ValueError, "num_features must be a"),
        (lambda q, k, v: performer_attention(q, k, v, num_features=2.5, seed=0), ValueError, "num_features must be"),
        (lambda q, k, v: performer_attention(q, k, v), ValueError, "seed must be an int"),
        (lambda q, k, v: performer_attention(q, k, v, seed="0"), TypeError, "seed must be an int"),
        (lambda q, k, v: performer_attention(q, k, v, seed=0, generator=torch.Generator()), ValueError,
         "seed or generator, not both"),
        (lambda q, k, v: performer_attention(q, k, v, generator=3), TypeError, "generator must be a torch.Generator"),
        (lambda q, k, v: performer_attention(q, k.float(), v, seed=0), TypeError, "q, k, v must share one dtype"),
        (lambda q, k, v: performer_attention(q, k[..., :3], v, seed=0), ValueError, "head dimension mismatch"),
        (lambda q, k, v: performer_attention(q[0], k, v, seed=0), ValueError, "q must have 4 dimensions"),
        (lambda q, k, v: performer_attention(q, k, v, projection=torch.randn(16, 5)), ValueError,
         "projection must be \\(m, d\\) with d = 8"),
        (lambda q, k, v: performer_attention(q, k, v, projection=torch.randn(0, 8)), ValueError,
         "at least one row"),
        (lambda q, k, v: performer_attention(q, k, v, seed=0, scale=-1.0), ValueError, "scale must be non-negative"),
        (lambda q, k, v: performer_attention(q, k, v, seed=0, form="linear"), ValueError, "form must be"),
        (lambda q, k, v: performer_attention(q, k, v, seed=0, stabilize=1), TypeError, "stabilize must be a bool"),
        (lambda q, k, v: performer_attention(q[:, :, :4], k, v, seed=0, causal=True), ValueError,
         "as many queries as keys"),
        (lambda q, k, v: gaussian_projection(0, 8, seed=0), ValueError, "num_features must be a positive int"),
        (lambda q, k, v: gaussian_projection(8, 8, seed=0, orthogonal="yes"), TypeError, "orthogonal must be a bool"),
    ],
)  # fmt: skip
def test_bad_input_raises_clear_errors(call, error, match):
    q, k, v = make_qkv(1, 2, 8, 8)
    with pytest.raises(error, match=match):
        call(q, k, v)


# ----------------------------------------------------------------------------
# Module, mixer, registry
# ----------------------------------------------------------------------------


def test_module_keeps_its_features_and_redraws_them():
    torch.manual_seed(0)
    block = PerformerSelfAttention(16, 2, num_features=32, seed=0)
    x = torch.randn(2, 10, 16)
    first = block(x)
    assert torch.equal(first, block(x))  # the same features at every call
    assert "projection" in block.state_dict()
    before = block.projection.clone()
    block.redraw(seed=1)
    assert not torch.equal(before, block.projection)
    assert not torch.allclose(first, block(x))
    block.redraw(seed=0)
    assert torch.equal(before, block.projection) and torch.equal(first, block(x))
    causal = PerformerSelfAttention(16, 2, num_features=32, causal=True)
    changed = x.clone()
    changed[:, 6:] += 3.0
    torch.testing.assert_close(causal(x)[:, :6], causal(changed)[:, :6])  # no look at later tokens


def test_registry_entry_and_mixer():
    method = registry.get("performer")
    assert method.attention_fn() is performer_attention
    assert method.approximates_softmax == "in expectation" and method.bench_kwargs["num_features"] == 256
    mixer = method.mixer_factory()(24, 3, 5, 7)
    x = torch.randn(2, 5, 7, 24)
    assert mixer(x).shape == x.shape
    with pytest.raises(ValueError, match="width must be a positive int"):
        make_mixer(24, 3, 5, 0)
