"""The dense reference: equal to PyTorch's SDPA, its conventions, and its errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlib import reference
from attnlib.reference import MultiHeadSelfAttention, attention, attention_weights, causal_mask, sdpa_attention


@st.composite
def attention_problems(draw):
    B = draw(st.integers(1, 3))
    H_kv = draw(st.integers(1, 3))
    H = H_kv * draw(st.integers(1, 3))
    N_q = draw(st.integers(1, 24))
    causal = draw(st.booleans())
    N_k = N_q if causal else draw(st.integers(1, 24))  # SDPA's causal is top-left: compare on squares
    d = draw(st.sampled_from([1, 4, 8, 16]))
    d_v = draw(st.sampled_from([d, 3]))
    mask_kind = draw(st.sampled_from(["none", "full", "per_query", "per_head"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return B, H, H_kv, N_q, N_k, d, d_v, causal, mask_kind, seed


@settings(max_examples=120, deadline=None)
@given(attention_problems())
def test_reference_equals_sdpa(problem):
    B, H, H_kv, N_q, N_k, d, d_v, causal, mask_kind, seed = problem
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N_q, d, generator=generator)
    k = torch.randn(B, H_kv, N_k, d, generator=generator)
    v = torch.randn(B, H_kv, N_k, d_v, generator=generator)
    mask = None
    if mask_kind == "full":
        mask = torch.rand(B, H, N_q, N_k, generator=generator) > 0.3
    elif mask_kind == "per_query":
        mask = torch.rand(N_q, N_k, generator=generator) > 0.3
    elif mask_kind == "per_head":
        mask = torch.rand(1, H, 1, N_k, generator=generator) > 0.3
    ours = attention(q, k, v, mask=mask, causal=causal)

    sdpa_mask = mask
    if causal:
        tri = torch.ones(N_q, N_k, dtype=torch.bool).tril()
        sdpa_mask = tri if mask is None else mask & tri
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask, enable_gqa=H != H_kv)
    if sdpa_mask is not None:  # SDPA gives NaN on rows with nothing to attend to; we give zeros
        empty = ~sdpa_mask.expand(B, H, N_q, N_k).any(dim=-1, keepdim=True)
        assert torch.all(ours.masked_select(empty) == 0)
        expected = expected.masked_fill(empty, 0.0)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


def test_five_line_definition():
    q, k, v = (torch.randn(2, 3, 7, 5) for _ in range(3))
    probs = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(5), dim=-1)
    torch.testing.assert_close(attention(q, k, v), probs @ v)
    torch.testing.assert_close(attention_weights(q, k), probs)


def test_causal_aligns_queries_to_the_end_of_the_keys():
    mask = causal_mask(2, 5)
    assert mask.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    q = torch.randn(1, 1, 2, 4)
    k, v = torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    # Decoding with a KV cache: the last two queries of a length-5 sequence.
    full_q = torch.cat([torch.randn(1, 1, 3, 4), q], dim=2)
    torch.testing.assert_close(attention(q, k, v, causal=True), attention(full_q, k, v, causal=True)[:, :, 3:])


def test_fully_masked_rows_are_zero_with_finite_gradients():
    q = torch.randn(1, 2, 4, 8, requires_grad=True)
    k = torch.randn(1, 2, 3, 8, requires_grad=True)
    v = torch.randn(1, 2, 3, 8, requires_grad=True)
    out, lse = attention(q, k, v, causal=True, return_lse=True)  # N_q > N_k: first query sees nothing
    assert torch.all(out[:, :, 0] == 0)
    assert torch.all(lse[:, :, 0] == float("-inf"))
    assert torch.isfinite(lse[:, :, 1:]).all()
    out.sum().backward()
    for tensor in (q, k, v):
        assert torch.isfinite(tensor.grad).all()


def test_lse_is_the_softmax_normalizer():
    q, k, v = (torch.randn(2, 2, 6, 4) for _ in range(3))
    _, lse = attention(q, k, v, return_lse=True)
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-2, -1) / 2.0, dim=-1))


def test_half_precision_is_computed_in_float32():
    q, k, v = (torch.randn(1, 2, 64, 16) * 30 for _ in range(3))
    out = attention(q.half(), k.half(), v.half())
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), attention(q.half().float(), k.half().float(), v.half().float()),
                               atol=2e-2, rtol=2e-3)  # fmt: skip


def test_large_logits_are_stable():
    q, k, v = (torch.randn(1, 1, 16, 8) for _ in range(3))
    out = attention(q * 1e4, k, v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q * 1e4, k, v))


def test_sdpa_wrapper_uses_the_same_causal_convention():
    q = torch.randn(1, 4, 3, 8)
    k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    torch.testing.assert_close(sdpa_attention(q, k, v, causal=True), attention(q, k, v, causal=True))


def test_module_forward_backward_and_mqa():
    torch.manual_seed(0)
    block = MultiHeadSelfAttention(32, 4, num_kv_heads=1, causal=True)
    x = torch.randn(2, 10, 32, requires_grad=True)
    y = block(x)
    assert y.shape == (2, 10, 32)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # causal: the first output does not depend on later tokens
    x2 = x.detach().clone()
    x2[:, 5:] += 1.0
    torch.testing.assert_close(block(x2)[:, :5], y[:, :5])


def test_module_accepts_another_kernel():
    block = MultiHeadSelfAttention(16, 2, attention_fn=sdpa_attention)
    dense = MultiHeadSelfAttention(16, 2)
    dense.load_state_dict(block.state_dict())
    x = torch.randn(1, 5, 16)
    torch.testing.assert_close(block(x), dense(x))


# --- bad input: every case names the argument, what was expected and what came ---

q4 = torch.randn(1, 4, 5, 8)
k2 = torch.randn(1, 2, 5, 8)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(q=torch.randn(4, 5, 8), k=k2, v=k2), ValueError, "q must have 4 dimensions, got 3"),
        (dict(q=q4, k=[1], v=k2), TypeError, "k must be a torch.Tensor, got list"),
        (dict(q=q4, k=torch.randn(2, 2, 5, 8), v=k2), ValueError, "batch size mismatch"),
        (dict(q=q4, k=torch.randn(1, 3, 5, 8), v=torch.randn(1, 3, 5, 8)), ValueError, "must divide"),
        (dict(q=q4, k=k2, v=torch.randn(1, 1, 5, 8)), ValueError, "k and v must have the same number of heads"),
        (dict(q=q4, k=torch.randn(1, 2, 5, 7), v=k2), ValueError, "q has d=8, k has d=7"),
        (dict(q=q4, k=k2, v=torch.randn(1, 2, 6, 8)), ValueError, "k N_k=5, v N_k=6"),
        (dict(q=q4.double(), k=k2, v=k2), TypeError, "q, k, v must share one dtype"),
        (dict(q=q4.long(), k=k2.long(), v=k2.long()), TypeError, "must be a floating tensor"),
        (
            dict(q=q4, k=k2, v=k2, mask=torch.ones(5, 4, dtype=torch.bool)),
            ValueError,
            "broadcastable to (B, H, N_q, N_k)",
        ),
        (dict(q=q4, k=k2, v=k2, mask=torch.ones(5, 5)), TypeError, "mask must have dtype torch.bool"),
        (dict(q=q4, k=k2, v=k2, mask=torch.ones(2, 1, 5, 5, dtype=torch.bool)), ValueError, "got shape (2, 1, 5, 5)"),
    ],
)
def test_bad_input(kwargs, error, message):
    with pytest.raises(error, match=None) as info:
        attention(**kwargs)
    assert message in str(info.value)


def test_bad_input_on_meta_device():
    with pytest.raises(ValueError, match="one device"):
        attention(q4, k2.to("meta"), k2)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", [attention, sdpa_attention])
def test_meta_tensors_give_the_output_shape(kernel, causal):
    # sdpa_attention failed inside Tensor.item() (its check for non-finite queries reads values)
    q = torch.empty(2, 4, 5, 8, device="meta")
    k = torch.empty(2, 2, 7, 8, device="meta")
    v = torch.empty(2, 2, 7, 3, device="meta")
    mask = torch.ones(5, 7, dtype=torch.bool, device="meta")
    for options in ({}, {"mask": mask}):
        out = kernel(q, k, v, causal=causal, **options)
        assert out.device.type == "meta" and out.shape == (2, 4, 5, 3) and out.dtype == q.dtype


def test_module_bad_input():
    with pytest.raises(ValueError, match="dim must be divisible by num_heads"):
        MultiHeadSelfAttention(10, 3)
    with pytest.raises(ValueError, match="num_kv_heads must divide num_heads"):
        MultiHeadSelfAttention(12, 4, num_kv_heads=3)
    with pytest.raises(ValueError, match="x must have 16 channels"):
        MultiHeadSelfAttention(16, 2)(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match="x must have 3 dimensions"):
        MultiHeadSelfAttention(16, 2)(torch.randn(4, 16))
    with pytest.raises(ValueError, match="N_q must be a positive int"):
        causal_mask(0, 3)


def test_expand_kv_heads_matches_sdpa_grouping():
    k = torch.arange(2.0).view(1, 2, 1, 1)
    assert reference.expand_kv_heads(k, 4).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


def test_sdpa_causal_square_uses_the_fused_causal_kernel(monkeypatch):
    # With N_q == N_k and no mask, the end-aligned causal mask is SDPA's own is_causal: passing an
    # explicit (N, N) boolean mask instead builds N^2 bytes and takes SDPA's slower masked path.
    calls = []
    fused = F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    q, k, v = (torch.randn(1, 2, 9, 8, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(sdpa_attention(q, k, v, causal=True), attention(q, k, v, causal=True))
    assert calls[-1]["attn_mask"] is None and calls[-1]["is_causal"] is True
    # N_q < N_k: SDPA's is_causal aligns to the start, so the end-aligned mask is passed explicitly.
    sdpa_attention(q[:, :, :4], k, v, causal=True)
    assert calls[-1]["attn_mask"] is not None and not calls[-1].get("is_causal", False)
