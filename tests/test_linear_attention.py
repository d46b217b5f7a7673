"""Tests for attnlib.approx.linear: the kernel view of attention (Katharopoulos et al., 2020).

The three causal forms (quadratic with a mask, recurrence, chunked) and the two non-causal ones are
one function written three ways: they must agree in float64 to rounding, for any N and chunk size.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from attnlib import registry
from attnlib.approx.linear import (
    LinearAttentionState,
    LinearSelfAttention,
    causal_linear_attention_chunked,
    causal_linear_attention_recurrent,
    elu_feature_map,
    linear_attention,
    linear_attention_noncausal,
    linear_attention_quadratic,
    linear_attention_step,
    make_mixer,
)


def make_qkv(B, H, N, d, d_v=None, *, H_kv=None, seed=0, dtype=torch.float64, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    H_kv = H if H_kv is None else H_kv
    q = torch.randn(B, H, N, d, generator=g, dtype=dtype)
    k = torch.randn(B, H_kv, N, d, generator=g, dtype=dtype)
    v = torch.randn(B, H_kv, N, d_v or d, generator=g, dtype=dtype)
    return tuple(t.requires_grad_(requires_grad) for t in (q, k, v))


def loop_reference(q, k, v, causal):
    """Eq. (2) with sim(q, k) = (elu(q) + 1) . (elu(k) + 1), one query and one key at a time (no eps)."""
    B, H, N, _ = q.shape
    out = torch.zeros(B, H, N, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            for i in range(N):
                weights = [(F.elu(q[b, h, i]) + 1) @ (F.elu(k[b, h, j]) + 1) for j in range(N) if j <= i or not causal]
                total = sum(weights)
                out[b, h, i] = sum(w * v[b, h, j] for j, w in enumerate(weights)) / total
    return out


# ----------------------------------------------------------------------------
# Exact identities
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_quadratic_form_is_equation_2_with_the_elu_kernel(causal):
    q, k, v = make_qkv(2, 2, 9, 4, 3)
    out = linear_attention_quadratic(q, k, v, causal=causal, eps=0.0)
    torch.testing.assert_close(out, loop_reference(q, k, v, causal), rtol=1e-12, atol=1e-12)


SHAPES = [  # (B, H, N, d, d_v, chunk): N a multiple of the chunk or not, one chunk, shorter than a chunk
    (1, 1, 1, 3, 2, 4),
    (2, 3, 37, 5, 4, 8),
    (1, 2, 64, 8, 8, 16),
    (1, 2, 64, 8, 8, 64),
    (2, 1, 50, 16, 7, 64),
    (1, 2, 100, 4, 4, 1),
    (1, 1, 1100, 4, 3, 64),  # more than one group of 16 chunks, the last chunk ragged
]


@pytest.mark.parametrize("B, H, N, d, d_v, chunk", SHAPES)
def test_three_causal_forms_agree_in_float64(B, H, N, d, d_v, chunk):
    q, k, v = make_qkv(B, H, N, d, d_v, seed=N + chunk)
    quadratic = linear_attention_quadratic(q, k, v, causal=True)
    recurrent = causal_linear_attention_recurrent(q, k, v)
    chunked = causal_linear_attention_chunked(q, k, v, chunk_size=chunk)
    assert (recurrent - quadratic).abs().max() < 1e-10
    assert (chunked - quadratic).abs().max() < 1e-10
    # and the registry's entry point picks the same forms
    assert (linear_attention(q, k, v, causal=True, chunk_size=chunk) - quadratic).abs().max() < 1e-10
    assert (linear_attention(q, k, v, causal=True, form="recurrent") - quadratic).abs().max() < 1e-10


def test_three_causal_forms_agree_over_random_shapes():
    g = torch.Generator().manual_seed(1)
    for trial in range(12):
        B, H, d, d_v = (int(x) for x in torch.randint(1, 4, (4,), generator=g))
        N = int(torch.randint(1, 80, (1,), generator=g))
        chunk = int(torch.randint(1, 40, (1,), generator=g))
        q, k, v = make_qkv(B, H, N, d, d_v, seed=trial)
        reference = linear_attention_quadratic(q, k, v, causal=True)
        for other in (
            causal_linear_attention_recurrent(q, k, v),
            causal_linear_attention_chunked(q, k, v, chunk_size=chunk),
        ):
            assert (other - reference).abs().max() < 1e-10, (B, H, N, d, d_v, chunk)


@pytest.mark.parametrize("N, chunk", [(1, 1024), (37, 8), (3000, 1024)])
def test_reordered_product_equals_the_kernel_matrix(N, chunk):
    q, k, v = make_qkv(1, 2, N, 6, 5, seed=N)
    quadratic = linear_attention_quadratic(q, k, v) if N <= 1000 else None
    fast = linear_attention_noncausal(q, k, v, chunk_size=chunk)
    if quadratic is not None:
        assert (fast - quadratic).abs().max() < 1e-10
    assert (linear_attention_noncausal(q, k, v, chunk_size=7) - fast).abs().max() < 1e-10
    torch.testing.assert_close(linear_attention(q, k, v), fast, rtol=0, atol=1e-12)


def test_unnormalized_identity_map_is_the_plain_causal_product():
    """feature_map=None, normalize=False: sum_{j<=i} (q_i . k_j) v_j (a state-space scan with decay 1)."""
    q, k, v = make_qkv(2, 2, 45, 5, 3)
    expected = torch.tril(q @ k.transpose(-2, -1)) @ v
    for chunk in (1, 7, 16, 45, 64):
        out = causal_linear_attention_chunked(q, k, v, chunk_size=chunk, feature_map=None, normalize=False)
        assert (out - expected).abs().max() < 1e-10
    out = causal_linear_attention_recurrent(q, k, v, feature_map=None, normalize=False)
    assert (out - expected).abs().max() < 1e-10


def test_grouped_key_value_heads_are_expanded():
    q, k, v = make_qkv(1, 4, 20, 4, H_kv=2)
    expanded = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    for causal in (False, True):
        torch.testing.assert_close(
            linear_attention(q, k, v, causal=causal), linear_attention(q, *expanded, causal=causal)
        )


def test_noncausal_queries_and_keys_of_different_lengths():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 7, 4, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 13, 4, generator=g, dtype=torch.float64) for _ in range(2))
    assert (linear_attention(q, k, v) - linear_attention_quadratic(q, k, v)).abs().max() < 1e-12


# ----------------------------------------------------------------------------
# Decoding: one step at a time with a constant-size state
# ----------------------------------------------------------------------------


def test_step_by_step_decoding_equals_the_parallel_causal_form():
    q, k, v = make_qkv(2, 3, 30, 4, 5, H_kv=3)
    parallel = causal_linear_attention_chunked(q, k, v, chunk_size=8)
    state, outs, sizes = None, [], set()
    for t in range(q.shape[2]):
        out, state = linear_attention_step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state)
        outs.append(out)
        sizes.add(state.numel())
    assert (torch.cat(outs, dim=2) - parallel).abs().max() < 1e-10
    assert sizes == {2 * 3 * 4 * (5 + 1)}  # B H m (d_v + 1), the same after 1 token as after 30
    assert state.tokens == 30


def test_chunked_prefix_state_continues_with_steps():
    """A prompt through the chunked form (return_state), then decoding steps: the same as all in parallel."""
    q, k, v = make_qkv(1, 2, 40, 4, 4)
    parallel = linear_attention_quadratic(q, k, v, causal=True)
    prefix, state = causal_linear_attention_chunked(q[:, :, :33], k[:, :, :33], v[:, :, :33], chunk_size=8,
                                                    return_state=True)  # fmt: skip
    assert isinstance(state, LinearAttentionState) and state.tokens == 33
    outs = [prefix]
    for t in range(33, 40):
        out, state = linear_attention_step(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], state)
        outs.append(out)
    assert (torch.cat(outs, dim=2) - parallel).abs().max() < 1e-10
    # and a chunked continuation from the same state
    _, first = causal_linear_attention_chunked(q[:, :, :20], k[:, :, :20], v[:, :, :20], return_state=True)
    rest = causal_linear_attention_chunked(q[:, :, 20:], k[:, :, 20:], v[:, :, 20:], chunk_size=6, initial_state=first)
    assert (rest - parallel[:, :, 20:]).abs().max() < 1e-10


# ----------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda q, k, v: linear_attention_quadratic(q, k, v, causal=True),
        lambda q, k, v: causal_linear_attention_recurrent(q, k, v),
        lambda q, k, v: causal_linear_attention_chunked(q, k, v, chunk_size=3),
        lambda q, k, v: linear_attention_noncausal(q, k, v, chunk_size=4),
    ],
    ids=["quadratic", "recurrent", "chunked", "noncausal"],
)
def test_gradcheck(fn):
    q, k, v = make_qkv(1, 2, 7, 3, 2, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_chunked_gradients_equal_the_quadratic_form():
    q, k, v = make_qkv(2, 2, 33, 4, 3, requires_grad=True)
    grads = []
    for fn in (lambda: linear_attention_quadratic(q, k, v, causal=True),
               lambda: causal_linear_attention_chunked(q, k, v, chunk_size=8)):  # fmt: skip
        out = fn()
        grads.append(torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum(),
                                         (q, k, v)))  # fmt: skip
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-10


# ----------------------------------------------------------------------------
# Precision, extremes, structure
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_in_float32(dtype):
    q, k, v = make_qkv(1, 2, 40, 8, dtype=torch.float32)
    expected = linear_attention(q, k, v, causal=True)
    out = linear_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.05)


def test_large_logits_stay_finite_and_within_the_values():
    """elu + 1 grows linearly (no exp of large logits): outputs stay convex combinations of v."""
    q, k, v = make_qkv(1, 2, 50, 8, dtype=torch.float32)
    for scale in (1e3, 1e6):
        for causal in (False, True):
            out = linear_attention(q * scale, k * scale, v, causal=causal)
            assert torch.isfinite(out).all()
            assert (out <= v.max() + 1e-4).all() and (out >= v.min() - 1e-4).all()


def test_underflowed_features_give_zero_rows_not_nan():
    """Very negative inputs: exp underflows, the normalizer is 0; with eps=0 the row is zeros, never NaN."""
    q, k, v = make_qkv(1, 1, 6, 2)
    q = q.abs().neg() * 1e4  # phi(q) = exp(q) = 0 in float64
    out = linear_attention(q, k, v, eps=0.0)
    assert torch.equal(out, torch.zeros_like(out))
    out = causal_linear_attention_chunked(q, k, v, eps=0.0)
    assert torch.equal(out, torch.zeros_like(out))


def test_feature_map_is_elu_plus_one_and_stays_positive():
    x = torch.linspace(-3, 5, 200, dtype=torch.float64)
    torch.testing.assert_close(elu_feature_map(x), F.elu(x) + 1, rtol=1e-12, atol=1e-14)
    far = torch.tensor([-60.0, -100.0])  # float32: elu(x) + 1 rounds to 0 here, exp(x) does not
    assert torch.equal(F.elu(far) + 1, torch.zeros(2)) and (elu_feature_map(far) > 0).all()
    x = torch.tensor([-200.0, -1.0, 0.0, 1.0, 200.0], dtype=torch.float64, requires_grad=True)
    elu_feature_map(x).sum().backward()  # no NaN from the branch not taken
    torch.testing.assert_close(x.grad, torch.tensor([torch.exp(torch.tensor(-200.0)).item(), 0.36787944117144233,
                                                      1.0, 1.0, 1.0], dtype=torch.float64))  # fmt: skip


def test_no_n_by_n_tensor(record_shapes):
    N = 1024
    q, k, v = make_qkv(1, 1, N, 8, dtype=torch.float32, requires_grad=True)
    for causal in (False, True):
        with record_shapes() as recorder:
            out = linear_attention(q, k, v, causal=causal)
            out.sum().backward()
        assert len(recorder.shapes) > 10
        assert [s for _, s in recorder.shapes if len(s) >= 2 and s[-1] >= N and s[-2] >= N] == []
    with record_shapes() as recorder:  # the recorder is not vacuous: the reference form builds N x N
        linear_attention_quadratic(q, k, v)
    assert [s for _, s in recorder.shapes if len(s) >= 2 and s[-1] >= N and s[-2] >= N]


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda q, k, v: linear_attention(q, k.float(), v), TypeError, "q, k, v must share one dtype"),
        (lambda q, k, v: linear_attention(q[0], k, v), ValueError, "q must have 4 dimensions"),
        (lambda q, k, v: linear_attention(q, k[..., :3], v), ValueError, "head dimension mismatch"),
        (lambda q, k, v: linear_attention(q, k, v[:, :, :5]), ValueError, "k and v must have the same number"),
        (lambda q, k, v: linear_attention(q[:, :, :5], k, v, causal=True), ValueError, "as many queries as keys"),
        (lambda q, k, v: linear_attention(q, k, v, causal=1), TypeError, "causal must be a bool"),
        (lambda q, k, v: linear_attention(q, k, v, form="fast"), ValueError, "form must be one of"),
        (lambda q, k, v: linear_attention(q, k, v, form="chunked"), ValueError, "is a causal form"),
        (lambda q, k, v: linear_attention(q, k, v, causal=True, chunk_size=0), ValueError, "chunk_size must be"),
        (lambda q, k, v: linear_attention(q, k, v, eps=-1.0), ValueError, "eps must be a non-negative"),
        (lambda q, k, v: linear_attention(q, k, v, eps=float("nan")), ValueError, "eps must be a finite"),
        (lambda q, k, v: linear_attention(q, k, v, feature_map=3), TypeError, "feature_map must be callable"),
        (lambda q, k, v: linear_attention(q, k, v, feature_map=lambda x: x[..., :0]), ValueError,
         "at least one feature"),
        (lambda q, k, v: linear_attention(q, k, v, feature_map=lambda x: x.sum(-2)), ValueError, "token by token"),
        (lambda q, k, v: linear_attention(q, k, v, key_feature_map=lambda x: torch.cat([x, x], -1)), ValueError,
         "same number of features"),
        (lambda q, k, v: causal_linear_attention_chunked(q, k, v, causal=False), ValueError, "causal must be True"),
        (lambda q, k, v: causal_linear_attention_recurrent(q, k, v, causal=False), ValueError, "causal must be True"),
        (lambda q, k, v: linear_attention_step(q, k, v), ValueError, "takes one token"),
        (lambda q, k, v: causal_linear_attention_chunked(q, k, v, initial_state=(1, 2)), TypeError, "state must be"),
        (lambda q, k, v: causal_linear_attention_chunked(q, k, v, initial_state=LinearAttentionState.zeros(1, 2, 3, 4)),
         ValueError, "state must hold S"),
    ],
)  # fmt: skip
def test_bad_input_raises_clear_errors(call, error, match):
    q, k, v = make_qkv(1, 2, 8, 4)
    with pytest.raises(error, match=match):
        call(q, k, v)


def test_empty_inputs_are_refused():
    q, k, v = make_qkv(1, 2, 8, 4)
    with pytest.raises(ValueError, match="at least one token"):
        linear_attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], causal=True)
    with pytest.raises(ValueError, match="head dimension must be at least 1"):
        linear_attention(q[..., :0], k[..., :0], v)


# ----------------------------------------------------------------------------
# Module, mixer, registry
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_module_equals_its_kernel_on_the_projections(causal):
    torch.manual_seed(0)
    block = LinearSelfAttention(16, 2, causal=causal, chunk_size=4).double()
    x = torch.randn(2, 11, 16, dtype=torch.float64, requires_grad=True)
    out = block(x)
    q = block.q_proj(x).view(2, 11, 2, 8).transpose(1, 2)
    k, v = block.kv_proj(x).view(2, 11, 2, 2, 8).permute(2, 0, 3, 1, 4)
    expected = linear_attention_quadratic(q, k, v, causal=causal).transpose(1, 2).reshape(2, 11, 16)
    torch.testing.assert_close(out, block.out_proj(expected))
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_causal_module_does_not_see_the_future():
    torch.manual_seed(0)
    block = LinearSelfAttention(8, 2, causal=True).double()
    x = torch.randn(1, 12, 8, dtype=torch.float64)
    changed = x.clone()
    changed[:, 7:] += 5.0
    assert torch.allclose(block(x)[:, :7], block(changed)[:, :7], atol=1e-12)


def test_registry_entry_and_mixer():
    method = registry.get("linear")
    assert method.attention_fn() is linear_attention
    assert method.category == "approximation" and method.approximates_softmax == "no"
    assert method.chapter == "16_linear_attention.ipynb"
    mixer = method.mixer_factory()(24, 3, 5, 7)
    x = torch.randn(2, 5, 7, 24)
    assert mixer(x).shape == x.shape
    with pytest.raises(ValueError, match="height must be a positive int"):
        make_mixer(24, 3, 0, 7)
