"""Tests of attnlib.ssm.ssd_triton: the chunked SSD kernel against the PyTorch forms.

Without a GPU the kernel runs in Triton's interpreter (conftest.py sets TRITON_INTERPRET=1 before
anything imports triton), so sizes stay small. The kernel computes in float32 and is compared with
the PyTorch chunked form in float64: max absolute error 1e-4 (measured ~1e-6 on outputs of size ~10).
The backward recomputes with the PyTorch chunked form; its gradients are compared with autograd's
through :func:`attnlib.ssm.ssd.ssd_chunked` in float32.
"""

from __future__ import annotations

import os

import pytest
import torch

from attnlib.ssm import ssd as S

st = pytest.importorskip("attnlib.ssm.ssd_triton", reason="triton is not installed (pip install triton)")

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETING else "cuda"
if not INTERPRETING and not torch.cuda.is_available():
    pytest.skip("no GPU and TRITON_INTERPRET is not set", allow_module_level=True)
TOL = 1e-4


def make(Bsz, H, N, d, n, *, seed=0, regime="mixed"):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(Bsz, H, N, d, generator=gen, dtype=torch.float64)
    B = torch.randn(Bsz, H, N, n, generator=gen, dtype=torch.float64) / n**0.5
    C = torch.randn(Bsz, H, N, n, generator=gen, dtype=torch.float64) / n**0.5
    u = torch.rand(Bsz, H, N, generator=gen, dtype=torch.float64)
    log_a = {"mixed": -3 * u, "near0": -27.6 + 20.7 * u, "near1": torch.log1p(-1e-6 * u), "one": 0 * u}[regime]
    h0 = torch.randn(Bsz, H, n, d, generator=gen, dtype=torch.float64)
    return x, B, C, log_a, h0


def on(device, *ts, dtype=torch.float32):
    return [t.to(device=device, dtype=dtype) for t in ts]


CASES = [
    # (B, H, N, d, n, chunk, regime)
    (2, 2, 45, 20, 12, 16, "mixed"),  # N not a multiple of the chunk, padded d and n, batch > 1
    (1, 3, 70, 70, 5, 32, "near0"),  # two column blocks (d = 70 > 64)
    (2, 1, 50, 16, 16, 16, "near1"),
    (1, 2, 33, 8, 64, 64, "one"),  # one chunk longer than N
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[-1]}-N{c[2]}-d{c[3]}-n{c[4]}-Q{c[5]}" for c in CASES])
def test_kernel_matches_the_pytorch_forms(case):
    Bsz, H, N, d, n, chunk, regime = case
    x, B, C, log_a, h0 = make(Bsz, H, N, d, n, seed=N, regime=regime)
    y_ref, h_ref = S.ssd_chunked(x, B, C, log_a=log_a, chunk_size=7, initial_state=h0, return_final_state=True)
    y, h = st.ssd_triton(*on(DEVICE, x, B, C), log_a=on(DEVICE, log_a)[0], chunk_size=chunk,
                         initial_state=on(DEVICE, h0)[0], return_final_state=True)  # fmt: skip
    assert y.dtype == torch.float32 and h.dtype == torch.float32
    assert (y.double().cpu() - y_ref).abs().max().item() < TOL
    assert (h.double().cpu() - h_ref).abs().max().item() < TOL
    # without an initial state, and through run_ssd
    y0 = S.run_ssd(*on(DEVICE, x, B, C), log_a=on(DEVICE, log_a)[0], algorithm="triton", chunk_size=chunk)
    assert (y0.double().cpu() - S.ssd_quadratic(x, B, C, log_a=log_a)).abs().max().item() < TOL


def test_decays_as_a_and_strided_inputs():
    x, B, C, log_a, _ = make(2, 2, 30, 16, 8, seed=1)
    x, B, C, log_a = on(DEVICE, x, B, C, log_a)
    ref = st.ssd_triton(x, B, C, log_a=log_a, chunk_size=16)
    # sequence-first storage read in place through its strides, a broadcast (stride 0) decay
    x_t = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert not x_t.is_contiguous()
    assert (st.ssd_triton(x_t, B, C, a=torch.exp(log_a), chunk_size=16) - ref).abs().max().item() < 1e-5
    log_a_h = S.retnet_decay(2, 2, 30, device=DEVICE)
    y = st.ssd_triton(x, B, C, log_a=log_a_h, chunk_size=16)
    assert (y - S.ssd_chunked(x, B, C, log_a=log_a_h.contiguous())).abs().max().item() < TOL


def test_long_sequence_where_the_product_of_decays_underflows():
    """a = 0.5 for 300 tokens: 0.5 ** 300 is below float32's smallest number; the kernel sums logs."""
    x, B, C, _, _ = make(1, 1, 300, 16, 8, seed=2)
    a = torch.full((1, 1, 300), 0.5, dtype=torch.float64)
    assert torch.cumprod(a.float(), -1)[..., -1].item() == 0.0
    y = st.ssd_triton(*on(DEVICE, x, B, C), a=on(DEVICE, a)[0], chunk_size=64)
    assert (y.double().cpu() - S.ssd_recurrent(x, B, C, a=a)).abs().max().item() < TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    x, B, C, log_a, _ = make(1, 2, 40, 16, 16, seed=3)
    xh, Bh, Ch, log_ah = on(DEVICE, x, B, C, log_a, dtype=dtype)
    y = st.ssd_triton(xh, Bh, Ch, log_a=log_ah, chunk_size=16)
    assert y.dtype == dtype
    ref = S.ssd_chunked(*[t.double().cpu() for t in (xh, Bh, Ch)], log_a=log_ah.double().cpu())
    assert (y.double().cpu() - ref).abs().max().item() < (2e-2 if dtype == torch.float16 else 1e-1)


def test_backward_matches_autograd_of_the_pytorch_form():
    x, B, C, log_a, h0 = make(2, 2, 37, 16, 8, seed=4)
    tensors = on(DEVICE, x, B, C, log_a, h0)
    gen = torch.Generator().manual_seed(5)
    gy = torch.randn(2, 2, 37, 16, generator=gen).to(DEVICE)
    gh = torch.randn(2, 2, 8, 16, generator=gen).to(DEVICE)

    def grads(fn):
        inputs = [t.clone().requires_grad_() for t in tensors]
        x, B, C, a, h0 = inputs[0], inputs[1], inputs[2], torch.exp(inputs[3]), inputs[4]
        y, h = fn(x, B, C, a=a, chunk_size=16, initial_state=h0, return_final_state=True)
        torch.autograd.backward((y, h), (gy, gh))
        return [t.grad for t in inputs]

    ours = grads(st.ssd_triton)
    ref = grads(S.ssd_chunked)
    for name, g, r in zip(("x", "B", "C", "log_a", "initial_state"), ours, ref):
        assert g is not None, name
        assert (g - r).abs().max().item() < TOL, name
    # without an initial state: no gradient slot for it
    inputs = [t.clone().requires_grad_() for t in tensors[:4]]
    st.ssd_triton(*inputs[:3], log_a=inputs[3], chunk_size=16).sum().backward()
    assert all(t.grad is not None for t in inputs)


def test_double_backward_is_refused():
    x, B, C, log_a, _ = on(DEVICE, *make(1, 1, 20, 16, 16, seed=6))
    x.requires_grad_()
    y = st.ssd_triton(x, B, C, log_a=log_a, chunk_size=16)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(y.square().sum(), x, create_graph=True)


def test_bad_input():
    x, B, C, log_a, _ = on(DEVICE, *make(1, 1, 20, 16, 16, seed=7))
    for bad in (8, 48, 0):
        with pytest.raises(ValueError, match="^chunk_size must be"):
            st.ssd_triton(x, B, C, log_a=log_a, chunk_size=bad)
    with pytest.raises(TypeError, match="^x must be float32, float16 or bfloat16 for the Triton kernel"):
        st.ssd_triton(x.double(), B.double(), C.double(), log_a=log_a.double())
    with pytest.raises(ValueError, match=r"^a must hold decays in \(0, 1\]"):
        st.ssd_triton(x, B, C, a=torch.exp(log_a) + 1)
    with pytest.raises(TypeError, match="^C must have the dtype of x"):
        st.ssd_triton(x, B, C.half(), log_a=log_a)
    with pytest.raises(ValueError, match="B and C must have the same state size"):
        st.ssd_triton(x, B, C[..., :8], log_a=log_a)
