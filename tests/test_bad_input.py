"""Bad and extreme input, one table for every public attention kernel (issue: "Extreme and bad input").

Every kernel that takes ``q, k, v`` answers the same bad argument with the same kind of error,
naming the argument; extreme values give the reference's answer, never a silent wrong one.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from attnlib import reference
from attnlib.optim.flash import flash_attention
from attnlib.sparse.bigbird import bigbird_attention
from attnlib.sparse.reformer import lsh_attention_qkv

B, H, N, D = 1, 2, 24, 16  # BigBird with 4-token blocks and one random block needs N >= 21


def _bigbird(q, k, v, **options):
    return bigbird_attention(q, k, v, block_size=4, num_random_blocks=1, **options)


def _reformer(q, k, v, **options):
    return lsh_attention_qkv(q, q, v, chunk_size=4, seed=0, **options)  # shared QK: q is also the key


KERNELS = {
    "attention": reference.attention,
    "sdpa_attention": reference.sdpa_attention,
    "flash_attention[torch]": partial(flash_attention, backend="torch"),
    "flash_attention[triton]": partial(flash_attention, backend="triton"),  # Triton's interpreter on a CPU
    "bigbird_attention": _bigbird,
    "lsh_attention_qkv": _reformer,
}


def _qkv(shape=(B, H, N, D), dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(*shape, generator=generator).to(dtype) for _ in range(3))


# (case, inputs, keyword arguments, error type, message pattern)
CASES = [
    ("scale NaN", _qkv, {"scale": math.nan}, ValueError, "scale must be finite"),
    ("scale infinite", _qkv, {"scale": math.inf}, ValueError, "scale must be finite"),
    ("scale a string", _qkv, {"scale": "a"}, TypeError, "scale must be a float or None, got str"),
    ("scale a tensor", _qkv, {"scale": torch.tensor(0.5)}, TypeError, "scale must be a float or None, got Tensor"),
    ("causal a string", _qkv, {"causal": "yes"}, TypeError, "causal must be a bool, got str"),
    ("causal an int", _qkv, {"causal": 1}, TypeError, "causal must be a bool, got int"),
    ("head dimension 0", lambda: _qkv((B, H, N, 0)), {}, ValueError, "head dimension"),
    ("empty batch", lambda: _qkv((0, H, N, D)), {}, ValueError, "batch"),
    ("no heads", lambda: _qkv((B, 0, N, D)), {}, ValueError, "head"),
    ("rank 3", lambda: _qkv((H, N, D)), {}, ValueError, "must have 4 dimensions"),
    ("integer tensors", lambda: _qkv(dtype=torch.int64), {}, TypeError, "floating"),
]


@pytest.mark.parametrize("kernel", KERNELS)
def test_good_input_runs(kernel):
    q, k, v = _qkv()
    out = KERNELS[kernel](q, k, v)
    assert out.shape == (B, H, N, D) and torch.isfinite(out).all()


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
@pytest.mark.parametrize("kernel", KERNELS)
def test_the_same_bad_argument_gets_the_same_error_everywhere(kernel, case):
    _, make_inputs, options, error, pattern = case
    q, k, v = make_inputs()
    with pytest.raises(error, match=pattern):
        KERNELS[kernel](q, k, v, **options)


# ----------------------------------------------------------------------------
# Extreme values and the findings of the issue, one test each
# ----------------------------------------------------------------------------


def test_masked_keys_never_leak_when_an_allowed_score_is_minus_infinity():
    # Finding 4: query -1e30 e0 against key 1e10 e0 scores -inf in float32; with finfo.min as the
    # fill value the masked keys got all the weight (output 2.0, the mean of the masked values).
    q = torch.zeros(1, 1, 1, 4)
    q[..., 0] = -1e30
    k = torch.zeros(1, 1, 3, 4)
    k[0, 0, 0, 0] = 1e10
    v = torch.tensor([0.0, 2.0, 2.0]).view(1, 1, 3, 1).expand(1, 1, 3, 4).contiguous()
    mask = torch.tensor([True, False, False])
    out, lse = reference.attention(q, k, v, mask=mask, return_lse=True)
    assert torch.equal(out, torch.zeros(1, 1, 1, 4))  # the allowed score is -inf: nothing to attend
    assert lse.item() == -math.inf
    # in float64 the same score is finite, and the only allowed key gets all the weight
    out64 = reference.attention(q.double(), k.double(), v.double(), mask=mask)
    assert torch.equal(out64, torch.zeros(1, 1, 1, 4, dtype=torch.float64))  # v of key 0 is 0
    assert not torch.isnan(out).any()


def test_fully_masked_rows_give_zeros_and_finite_gradients():
    q, k, v = (x.requires_grad_(True) for x in _qkv((1, 1, 4, 8)))
    mask = torch.tensor([[True] * 4, [False] * 4, [True, False, False, False], [False] * 4])
    out = reference.attention(q, k, v, mask=mask)
    assert torch.equal(out[0, 0, 1], torch.zeros(8)) and torch.equal(out[0, 0, 3], torch.zeros(8))
    out.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


@pytest.mark.parametrize("N_tokens", [4, 8, 16, 64])
def test_sdpa_propagates_a_nan_query_row_as_attention_does(N_tokens):
    # Finding 7: SDPA's CPU kernels returned zeros for N <= 8 and NaN for N >= 16
    q, k, v = _qkv((1, 1, N_tokens, 8))
    q[0, 0, 1, 3] = math.nan
    for kernel in (reference.attention, reference.sdpa_attention):
        out = kernel(q, k, v)
        assert torch.isnan(out[0, 0, 1]).all(), kernel.__name__
        assert torch.isfinite(out[0, 0, 0]).all() and torch.isfinite(out[0, 0, 2:]).all(), kernel.__name__


def test_expand_kv_heads_refuses_a_target_that_is_not_a_multiple():
    # Finding 8: (x, 3) with 2 heads returned 2 heads, (x, 1) returned 0 heads
    x = torch.randn(1, 2, 5, 4)
    assert reference.expand_kv_heads(x, 4).shape == (1, 4, 5, 4)
    for target in (3, 1):
        with pytest.raises(ValueError, match=f"num_heads must be a multiple .* got num_heads={target}"):
            reference.expand_kv_heads(x, target)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        reference.expand_kv_heads(x, 0)


def test_a_one_dimensional_key_mask_is_broadcast():
    # Finding 12: a (N_k,) mask was refused although it broadcasts to (B, H, N_q, N_k)
    q, k, v = _qkv((2, 2, 5, 8))
    keys = torch.tensor([True, False, True, True, False])
    for kernel in (reference.attention, reference.sdpa_attention):
        torch.testing.assert_close(kernel(q, k, v, mask=keys), kernel(q, k, v, mask=keys.expand(5, 5)))
    with pytest.raises(ValueError, match=r"broadcastable to \(B, H, N_q, N_k\)"):
        reference.attention(q, k, v, mask=torch.ones(4, dtype=torch.bool))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_flash_attention_refuses_double_backward(backend):
    # Finding 3: the second-order gradient silently lost every attention term
    q, k, v = (x.requires_grad_(True) for x in _qkv((1, 1, 16, 16)))
    out = flash_attention(q, k, v, backend=backend)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad((out * out).sum(), q, create_graph=True)
    # the first-order gradient is unaffected
    out = flash_attention(q, k, v, backend=backend)
    (grad,) = torch.autograd.grad((out * out).sum(), q)
    expected = reference.attention(q, k, v)
    (expected_grad,) = torch.autograd.grad((expected * expected).sum(), q)
    torch.testing.assert_close(grad, expected_grad, atol=1e-4, rtol=1e-4)
