"""Tests for attnlib.optim.flash: FlashAttention's tiles equal dense attention, gradients included."""

import functools
import math
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlib import registry
from attnlib.optim import flash
from attnlib.optim.flash import (
    FlashAttentionFunction,
    dense_memory_traffic_bytes,
    flash_attention,
    flash_memory_traffic_bytes,
    online_softmax,
    safe_softmax,
    tiled_attention_backward,
    tiled_attention_forward,
)
from attnlib.reference import MultiHeadSelfAttention, attention


def make_qkv(seed, B, H, H_kv, N_q, N_k, d, d_v=None, dtype=torch.float32, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    d_v = d if d_v is None else d_v
    q = torch.randn(B, H, N_q, d, generator=generator) * scale
    k = torch.randn(B, H_kv, N_k, d, generator=generator) * scale
    v = torch.randn(B, H_kv, N_k, d_v, generator=generator)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def reference_fp32(q, k, v, causal, scale=None):
    """The dense reference on fp32 copies (the ground truth for half-precision inputs)."""
    return attention(q.float(), k.float(), v.float(), causal=causal, scale=scale, return_lse=True)


def reference_grads(q, k, v, dout, causal, scale=None):
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v)]
    out = attention(*leaves, causal=causal, scale=scale)
    return torch.autograd.grad(out, leaves, dout.double())


def flash_grads(q, k, v, dout, causal, block_q, block_k, scale=None):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = FlashAttentionFunction.apply(*leaves, causal, scale, block_q, block_k)
    return out, torch.autograd.grad(out, leaves, dout)


# -- 1. memory traffic ---------------------------------------------------------------------------


def test_dense_memory_traffic_counts_algorithm_0():
    N, d = 1024, 64
    elements = 4 * N * d + 4 * N * N  # Q, K, V, O once; S and P written and read
    assert dense_memory_traffic_bytes(N, d) == 2 * elements
    assert dense_memory_traffic_bytes(N, d, element_bytes=4, batch_heads=8) == 4 * 8 * elements


def test_flash_memory_traffic_counts_algorithm_1_and_theorem_2():
    N, d, sram_bytes = 4096, 64, 192 * 1024
    M = sram_bytes // 2
    block_k = math.ceil(M / (4 * d))  # 384
    expected = 2 * N * d + math.ceil(N / block_k) * (3 * N * d + 4 * N)
    assert flash_memory_traffic_bytes(N, d, sram_bytes=sram_bytes) == 2 * expected
    # Theorem 2: about 12 N^2 d^2 / M, far below the dense 4 N^2 once M >> 3 d^2
    assert flash_memory_traffic_bytes(N, d) < dense_memory_traffic_bytes(N, d) / 5
    ratio = flash_memory_traffic_bytes(4 * N, d) / flash_memory_traffic_bytes(N, d)
    assert 14 < ratio < 17  # quadratic in N (up to the rounding of T_c)
    assert flash_memory_traffic_bytes(N, d, sram_bytes=2 * sram_bytes) < flash_memory_traffic_bytes(N, d)


# -- 2. softmax ------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 3, 16, 37, 100])
def test_online_softmax_equals_torch_softmax(block_size):
    x = torch.randn(3, 5, 37, generator=torch.Generator().manual_seed(0)) * 10
    probs, trace = online_softmax(x, block_size)
    torch.testing.assert_close(probs, torch.softmax(x, dim=-1), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(safe_softmax(x), torch.softmax(x, dim=-1), rtol=1e-6, atol=1e-7)
    assert len(trace) == math.ceil(37 / block_size)
    assert [step.stop for step in trace][-1] == 37
    last = trace[-1]
    torch.testing.assert_close(last.row_max, x.amax(-1))
    torch.testing.assert_close(last.row_sum, torch.exp(x - x.amax(-1, keepdim=True)).sum(-1))


def test_online_softmax_trace_shows_rescaling():
    x = torch.tensor([[0.0, 1.0, 5.0, 2.0]])
    _, trace = online_softmax(x, block_size=2)
    first, second = trace
    assert first.row_max.item() == 1.0 and second.row_max.item() == 5.0
    torch.testing.assert_close(second.rescale, torch.exp(torch.tensor([1.0 - 5.0])))  # exp(m_old - m_new)
    torch.testing.assert_close(second.row_sum, torch.exp(x - 5.0).sum(-1))


def test_softmax_of_a_fully_masked_row_is_zero_and_half_precision_works():
    x = torch.tensor([[float("-inf")] * 4, [1.0, float("-inf"), 2.0, 3.0]])
    expected = torch.stack([torch.zeros(4), torch.softmax(x[1], dim=-1)])
    torch.testing.assert_close(online_softmax(x, 3)[0], expected)
    torch.testing.assert_close(safe_softmax(x), expected)
    big = torch.tensor([[60000.0, 59990.0, -60000.0]], dtype=torch.float16)  # exp would overflow fp16
    torch.testing.assert_close(online_softmax(big, 2)[0].float(), torch.softmax(big.float(), -1), atol=1e-3, rtol=0)


# -- 3. forward -------------------------------------------------------------------------------------

shapes = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**16),
        "B": st.integers(1, 2),
        "H_kv": st.integers(1, 2),
        "G": st.integers(1, 3),
        "N_q": st.integers(1, 70),
        "N_k": st.integers(1, 70),
        "d": st.sampled_from([4, 16]),
        "block_q": st.integers(1, 40),
        "block_k": st.integers(1, 40),
        "causal": st.booleans(),
    }
)


def unpack(shape):
    s = dict(shape)
    s["H"] = s.pop("G") * s["H_kv"]
    return s


@settings(max_examples=60, deadline=None)
@given(shape=shapes, dtype=st.sampled_from([torch.float32, torch.float16]))
def test_tiled_forward_equals_reference(shape, dtype):
    s = unpack(shape)
    q, k, v = make_qkv(s["seed"], s["B"], s["H"], s["H_kv"], s["N_q"], s["N_k"], s["d"], dtype=dtype)
    out, lse = tiled_attention_forward(q, k, v, causal=s["causal"], block_q=s["block_q"], block_k=s["block_k"])
    ref_out, ref_lse = reference_fp32(q, k, v, s["causal"])
    assert out.dtype == dtype and out.shape == ref_out.shape
    assert lse.dtype == torch.float32 and lse.shape == ref_lse.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.float(), ref_out, rtol=tol, atol=tol)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)  # fp32 accumulation either way


def test_tiled_forward_bf16_and_value_dim_and_scale():
    q, k, v = make_qkv(1, 2, 4, 2, 33, 45, 16, d_v=24, dtype=torch.bfloat16)
    out, lse = tiled_attention_forward(q, k, v, causal=True, scale=0.3, block_q=8, block_k=16)
    ref_out, ref_lse = reference_fp32(q, k, v, True, scale=0.3)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 33, 24)
    torch.testing.assert_close(out.float(), ref_out, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)


def test_tiled_forward_float64_is_exact():
    q, k, v = make_qkv(2, 1, 2, 1, 19, 23, 8, dtype=torch.float64)
    out, lse = tiled_attention_forward(q, k, v, causal=True, block_q=4, block_k=5)
    ref_out, ref_lse = attention(q, k, v, causal=True, return_lse=True)
    assert lse.dtype == torch.float64
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-12, atol=1e-12)


def test_tiled_forward_accepts_non_contiguous_inputs():
    q, k, v = make_qkv(3, 2, 4, 2, 21, 21, 8)
    q, k, v = (
        x.transpose(1, 2).contiguous().transpose(1, 2) for x in (q, k, v)
    )  # (B, H, N, d) strides of (B, N, H, d)
    assert not q.is_contiguous()
    out, lse = tiled_attention_forward(q, k, v, causal=True, block_q=5, block_k=6)
    ref_out, ref_lse = reference_fp32(q, k, v, True)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-5, atol=1e-5)


# -- 4. backward -------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(shape=shapes, dtype=st.sampled_from([torch.float32, torch.float16]))
def test_gradients_equal_reference_gradients(shape, dtype):
    s = unpack(shape)
    q, k, v = make_qkv(s["seed"], s["B"], s["H"], s["H_kv"], s["N_q"], s["N_k"], s["d"], dtype=dtype)
    dout = torch.randn(s["B"], s["H"], s["N_q"], s["d"], generator=torch.Generator().manual_seed(s["seed"] + 1))
    dout = dout.to(dtype)
    out, grads = flash_grads(q, k, v, dout, s["causal"], s["block_q"], s["block_k"])
    ref_grads = reference_grads(q, k, v, dout, s["causal"])
    tol = 1e-5 if dtype == torch.float32 else 5e-3  # fp16: worst seen 2e-3 over 150 random shapes
    for name, grad, ref, x in zip("qkv", grads, ref_grads, (q, k, v)):
        assert grad.dtype == dtype and grad.shape == x.shape, name
        torch.testing.assert_close(grad.double(), ref, rtol=tol, atol=tol, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize(
    "B, H, H_kv, N_q, N_k, causal",
    [(1, 2, 1, 5, 7, True), (2, 2, 2, 6, 4, False), (1, 4, 2, 7, 3, True)],  # the last has fully masked rows
)
def test_gradcheck_float64(B, H, H_kv, N_q, N_k, causal):
    q, k, v = make_qkv(4, B, H, H_kv, N_q, N_k, 3, d_v=4, dtype=torch.float64)
    inputs = tuple(x.requires_grad_() for x in (q, k, v))

    def fn(q, k, v):
        return FlashAttentionFunction.apply(q, k, v, causal, None, 2, 3)

    assert torch.autograd.gradcheck(fn, inputs)


def test_backward_function_directly_and_grouped_heads_sum():
    # MQA: 4 query heads share one key/value head; dk, dv sum over all four
    q, k, v = make_qkv(5, 1, 4, 1, 17, 17, 8, dtype=torch.float64)
    out, lse = tiled_attention_forward(q, k, v, causal=True, block_q=4, block_k=8)
    dout = torch.randn_like(out)
    dq, dk, dv = tiled_attention_backward(q, k, v, out, lse, dout, causal=True, block_q=4, block_k=8)
    ref = reference_grads(q, k, v, dout, True)
    for grad, expected in zip((dq, dk, dv), ref):
        torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-10)


# -- stable numerics ---------------------------------------------------------------------------------


def test_logits_of_magnitude_1e4_in_fp32():
    generator = torch.Generator().manual_seed(6)
    # integer entries: q k^T is exact in fp32 in any summation order, so the comparison is exact too
    q = torch.randint(-100, 101, (1, 2, 40, 16), generator=generator).float()
    k = torch.randint(-100, 101, (1, 2, 50, 16), generator=generator).float()
    v = torch.randn(1, 2, 50, 16, generator=generator)
    out, lse = tiled_attention_forward(q, k, v, scale=1.0, block_q=16, block_k=16)
    ref_out, ref_lse = attention(q, k, v, scale=1.0, return_lse=True)
    assert lse.abs().max() > 1e4
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-6, atol=0.0)


def test_large_values_in_fp16_do_not_overflow():
    generator = torch.Generator().manual_seed(7)
    q = torch.randint(-200, 201, (1, 2, 30, 16), generator=generator).half()
    k = torch.randint(-200, 201, (1, 2, 30, 16), generator=generator).half()
    v = (torch.randn(1, 2, 30, 16, generator=generator) * 1000).half()
    out, lse = tiled_attention_forward(q, k, v, causal=True, scale=1.0, block_q=8, block_k=8)
    ref_out, ref_lse = reference_fp32(q, k, v, True, scale=1.0)
    assert lse.abs().max() > 65504  # the scores themselves do not fit in fp16
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref_out, rtol=2e-3, atol=2e-3 * 1000)
    torch.testing.assert_close(lse, ref_lse, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fully_masked_rows_give_zeros_and_finite_gradients(dtype):
    # causal with N_q = 10 > N_k = 4: queries 0..5 see no key at all
    q, k, v = make_qkv(8, 2, 2, 1, 10, 4, 8, dtype=dtype)
    out, lse = tiled_attention_forward(q, k, v, causal=True, block_q=4, block_k=3)
    assert (out[:, :, :6] == 0).all() and (lse[:, :, :6] == float("-inf")).all()
    assert torch.isfinite(out).all() and torch.isfinite(lse[:, :, 6:]).all()
    ref_out, ref_lse = reference_fp32(q, k, v, True)
    torch.testing.assert_close(out.float(), ref_out, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(lse, ref_lse)
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(9)).to(dtype)
    _, grads = flash_grads(q, k, v, dout, True, 4, 3)
    for grad, ref in zip(grads, reference_grads(q, k, v, dout, True)):
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(grad.double(), ref, rtol=5e-3, atol=5e-3)
    assert (grads[0][:, :, :6] == 0).all()


# -- memory: no N x N tensor, ever -----------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_no_tensor_of_n_by_n_elements(causal, record_shapes):
    N, B, H, H_kv, d = 2048, 1, 2, 1, 16
    q, k, v = (x.requires_grad_() for x in make_qkv(10, B, H, H_kv, N, N, d))
    with record_shapes() as recorder:
        out = flash_attention(q, k, v, causal=causal, backend="torch")
        out.sum().backward()
    largest = max(math.prod(shape) for _, shape in recorder.shapes)
    tile = B * H * flash.DEFAULT_BLOCK_Q * flash.DEFAULT_BLOCK_K  # G * B_r x B_c scores per key/value head
    assert len(recorder.shapes) > 100
    assert largest <= max(tile, B * H * N * d) < N * N
    assert not any(shape[-2:] == (N, N) for _, shape in recorder.shapes)


# -- dispatch ----------------------------------------------------------------------------------------


class FakeTritonModule:
    """Stands in for attnlib.optim.flash_triton: records calls, refuses inputs when told to."""

    def __init__(self, reason=None):
        self.calls = []
        self.reason = reason

    def flash_attention_triton(self, q, k, v, *, causal=False, scale=None):
        self.calls.append({"causal": causal, "scale": scale})
        return torch.full_like(q, 7.0)

    def unsupported_reason(self, q, k, v, causal=False, scale=None):
        return self.reason


@pytest.fixture
def fake_triton(monkeypatch):
    module = FakeTritonModule()
    monkeypatch.setattr(flash, "_load_triton", lambda: module)
    return module


@pytest.fixture
def fresh_warnings():
    flash._warn_once.cache_clear()
    yield
    flash._warn_once.cache_clear()


def small_qkv():
    return make_qkv(11, 1, 2, 1, 9, 9, 8)


def test_auto_on_cpu_without_interpreter_uses_torch(monkeypatch, fake_triton):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = small_qkv()
    out = flash_attention(q, k, v, causal=True)
    assert fake_triton.calls == []
    torch.testing.assert_close(out, attention(q, k, v, causal=True), rtol=1e-5, atol=1e-5)


def test_auto_on_cpu_with_interpreter_uses_triton(monkeypatch, fake_triton):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v = small_qkv()
    out = flash_attention(q, k, v, causal=True, scale=0.5)
    assert fake_triton.calls == [{"causal": True, "scale": 0.5}]
    assert (out == 7.0).all()


@pytest.mark.parametrize("missing", [True, False])
def test_auto_with_interpreter_falls_back_to_torch_silently(monkeypatch, fresh_warnings, missing):
    # triton missing, or present but refusing these inputs (e.g. float64, d = 8)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    module = FakeTritonModule(reason="head dimension d must be 16, 32, 64 or 128, got 8")
    monkeypatch.setattr(flash, "_load_triton", lambda: None if missing else module)
    q, k, v = small_qkv()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = flash_attention(q, k, v)
    assert module.calls == []
    torch.testing.assert_close(out, attention(q, k, v), rtol=1e-5, atol=1e-5)


def test_auto_on_cuda_picks_triton(fake_triton):
    assert flash._select_backend("auto", "cuda", small_qkv() + (False, None)) == "triton"


def test_auto_on_cuda_without_triton_warns_once(monkeypatch, fresh_warnings):
    monkeypatch.setattr(flash, "_load_triton", lambda: None)
    inputs = small_qkv() + (False, None)
    with pytest.warns(RuntimeWarning, match="triton .* cannot be imported, so the PyTorch tiled path is used"):
        assert flash._select_backend("auto", "cuda", inputs) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert flash._select_backend("auto", "cuda", inputs) == "torch"  # no second warning


def test_auto_on_cuda_with_unsupported_inputs_warns_and_uses_torch(monkeypatch, fresh_warnings):
    monkeypatch.setattr(flash, "_load_triton", lambda: FakeTritonModule(reason="float64 is not supported"))
    with pytest.warns(RuntimeWarning, match=r"does not take these inputs \(float64 is not supported\)"):
        assert flash._select_backend("auto", "cuda", small_qkv() + (False, None)) == "torch"


def test_forced_backends(monkeypatch, fake_triton):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, k, v = small_qkv()
    flash_attention(q, k, v, backend="torch")
    assert fake_triton.calls == []
    flash_attention(q, k, v, backend="triton")
    assert len(fake_triton.calls) == 1
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="backend='triton' needs q on a CUDA device.*got q on cpu"):
        flash_attention(q, k, v, backend="triton")


def test_forced_triton_without_triton_raises(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(flash, "_load_triton", lambda: None)
    with pytest.raises(ImportError, match="backend='triton' needs the triton package"):
        flash_attention(*small_qkv(), backend="triton")


def test_load_triton_returns_none_when_the_module_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "attnlib.optim.flash_triton", None)  # makes the import raise ImportError
    assert flash._load_triton() is None


def test_flash_attention_plugs_into_multi_head_self_attention():
    torch.manual_seed(12)
    dense = MultiHeadSelfAttention(32, 4, num_kv_heads=2, causal=True)
    tiled = MultiHeadSelfAttention(32, 4, num_kv_heads=2, causal=True)
    tiled.load_state_dict(dense.state_dict())
    tiled.attention_fn = functools.partial(flash_attention, backend="torch", block_q=5, block_k=7)
    x = torch.randn(2, 19, 32)
    out_dense, out_tiled = dense(x), tiled(x)
    torch.testing.assert_close(out_tiled, out_dense, rtol=1e-5, atol=1e-5)
    out_dense.square().sum().backward()
    out_tiled.square().sum().backward()
    for (name, p_dense), p_tiled in zip(dense.named_parameters(), tiled.parameters()):
        torch.testing.assert_close(p_tiled.grad, p_dense.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_registry_entry():
    method = registry.get("flash")
    assert method.category == "computation optimization" and method.domain == "any"
    assert method.chapter == "10_flash_attention.ipynb"
    assert method.attention_fn() is flash_attention
    q, k, v = small_qkv()
    out = method.attention_fn()(q, k, v, causal=True, **{**method.bench_kwargs, "backend": "torch"})
    torch.testing.assert_close(out, attention(q, k, v, causal=True), rtol=1e-5, atol=1e-5)


# -- validation --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda q, k, v: (q[0], k, v), ValueError, r"q must have 4 dimensions, got 3"),
        (lambda q, k, v: (q, k[..., :4], v), ValueError, r"head dimension mismatch: q has d=8, k has d=4"),
        (lambda q, k, v: (q, k, v[:, :, :5]), ValueError, r"k and v must have the same number of tokens"),
        (
            lambda q, k, v: (q, k.half(), v),
            TypeError,
            r"q, k, v must share one dtype, got q torch.float32, k torch.float16",
        ),
        (
            lambda q, k, v: (q[:, :3], k.expand(1, 2, 9, 8), v.expand(1, 2, 9, 8)),
            ValueError,
            r"must divide .* H=3, .* H_kv=2",
        ),
        (lambda q, k, v: (q.long(), k.long(), v.long()), TypeError, r"q must be a floating tensor.*got torch.int64"),
        (lambda q, k, v: (q.numpy(), k, v), TypeError, r"q must be a torch.Tensor, got ndarray"),
    ],
)
def test_bad_tensors_are_rejected(change, error, match):
    q, k, v = change(*make_qkv(13, 1, 4, 1, 9, 9, 8))
    for fn in (flash_attention, tiled_attention_forward):
        with pytest.raises(error, match=match):
            fn(q, k, v)


def test_the_autograd_function_checks_its_inputs_first():
    # FlashAttentionFunction.apply resolved the scale 1 / sqrt(d) before any check: d = 0 raised ZeroDivisionError
    q, k, v = (torch.randn(1, 1, 4, 0), torch.randn(1, 1, 4, 0), torch.randn(1, 1, 4, 3))
    with pytest.raises(ValueError, match=r"the head dimension must be at least 1, got d=0"):
        FlashAttentionFunction.apply(q, k, v)
    q, k, v = small_qkv()
    with pytest.raises(TypeError, match=r"causal must be a bool, got str"):
        FlashAttentionFunction.apply(q, k, v, "no")  # a string is truthy: refused, not taken as True
    torch.testing.assert_close(FlashAttentionFunction.apply(q, k, v, True), attention(q, k, v, causal=True))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"block_q": 0}, ValueError, r"block_q must be a positive int, got 0"),
        ({"block_k": -8}, ValueError, r"block_k must be a positive int, got -8"),
        ({"block_q": 2.5}, ValueError, r"block_q must be a positive int, got 2.5"),
        ({"block_k": True}, ValueError, r"block_k must be a positive int, got True"),
        ({"backend": "cuda"}, ValueError, r"backend must be one of \('auto', 'torch', 'triton'\), got 'cuda'"),
        ({"scale": "0.1"}, TypeError, r"scale must be a float or None, got str"),
        ({"scale": float("nan")}, ValueError, r"scale must be finite, got nan"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, error, match):
    with pytest.raises(error, match=match):
        flash_attention(*small_qkv(), **kwargs)


def test_bad_arguments_of_the_building_blocks_are_rejected():
    q, k, v = small_qkv()
    out, lse = tiled_attention_forward(q, k, v)
    with pytest.raises(ValueError, match=r"lse must have shape \(1, 2, 9\), got \(1, 2, 8\)"):
        tiled_attention_backward(q, k, v, out, lse[..., :8], out)
    with pytest.raises(ValueError, match=r"dout must have shape \(1, 2, 9, 8\), got \(1, 2, 9, 4\)"):
        tiled_attention_backward(q, k, v, out, lse, out[..., :4])
    with pytest.raises(ValueError, match=r"block_k must be a positive int, got 0"):
        tiled_attention_backward(q, k, v, out, lse, out, block_k=0)
    with pytest.raises(ValueError, match=r"block_size must be a positive int, got 0"):
        online_softmax(torch.zeros(3), 0)
    with pytest.raises(TypeError, match=r"x must be a floating tensor"):
        safe_softmax(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"N must be a positive int, got 0"):
        dense_memory_traffic_bytes(0, 64)
    with pytest.raises(ValueError, match=r"sram_bytes must hold at least 4 \* d elements \(512 bytes\), got 100"):
        flash_memory_traffic_bytes(1024, 64, sram_bytes=100)
