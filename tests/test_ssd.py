"""Tests of attnlib.ssm.ssd: the recurrence, the quadratic form and the chunked algorithm are one model.

Every comparison of algorithms is in float64 with a max absolute error of 1e-10: the three forms
compute the same sums in different orders, so they agree to ~1e-14 here; a wrong decay, a state
passed one chunk too late or a lost padding token would be off by O(1).
"""

from __future__ import annotations

import math

import pytest
import torch

from attnlib.ssm import ssd as S

F64 = torch.float64
TOL = 1e-10
ALGOS = ("recurrent", "quadratic", "chunked")


def random_log_a(shape, regime, gen):
    """Log-decays of a regime: near 0 (a in [1e-12, 1e-3]), near 1 (1 - a <= 1e-6), mixed, or a = 1."""
    u = torch.rand(shape, generator=gen, dtype=F64)
    if regime == "near0":
        return math.log(1e-12) + u * (math.log(1e-3) - math.log(1e-12))
    if regime == "near1":
        return torch.log1p(-u * 1e-6)
    if regime == "one":
        return torch.zeros(shape, dtype=F64)
    return -3 * u  # a in [0.05, 1]


def make(Bsz, H, N, d, n, *, seed=0, regime="mixed", dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(Bsz, H, N, d, generator=gen, dtype=dtype)
    B = torch.randn(Bsz, H, N, n, generator=gen, dtype=dtype)
    C = torch.randn(Bsz, H, N, n, generator=gen, dtype=dtype)
    log_a = random_log_a((Bsz, H, N), regime, gen).to(dtype)
    h0 = torch.randn(Bsz, H, n, d, generator=gen, dtype=dtype)
    return x, B, C, log_a, h0


def run_all(x, B, C, log_a, h0, chunk_size):
    out = {}
    for algo in ALGOS:
        out[algo] = S.run_ssd(x, B, C, log_a=log_a, algorithm=algo, chunk_size=chunk_size, initial_state=h0,
                          return_final_state=True)  # fmt: skip
    return out


def max_err(a, b):
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------------------
# The three algorithms agree
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("regime", ["mixed", "near0", "near1", "one"])
@pytest.mark.parametrize("seed", range(4))
def test_three_algorithms_agree_in_float64(seed, regime):
    gen = torch.Generator().manual_seed(100 + seed)
    Bsz, H = (int(torch.randint(1, 4, (), generator=gen)) for _ in range(2))
    Bsz = max(Bsz, 2) if seed % 2 == 0 else Bsz  # batch > 1 in half the cases
    N = int(torch.randint(1, 80, (), generator=gen))
    d, n = (int(torch.randint(1, 10, (), generator=gen)) for _ in range(2))
    chunk = int(torch.randint(1, 24, (), generator=gen))
    if N > chunk and N % chunk == 0:
        N += 1  # N not a multiple of the chunk
    x, B, C, log_a, h0 = make(Bsz, H, N, d, n, seed=seed, regime=regime)
    out = run_all(x, B, C, log_a, h0, chunk)
    y_ref, h_ref = out["recurrent"]
    assert torch.isfinite(y_ref).all()
    for algo in ("quadratic", "chunked"):
        y, h = out[algo]
        assert max_err(y, y_ref) < TOL, (algo, Bsz, H, N, d, n, chunk)
        assert max_err(h, h_ref) < TOL, (algo, Bsz, H, N, d, n, chunk)


@pytest.mark.parametrize("chunk", [1, 2, 7, 16, 33, 50, 200])
def test_every_chunk_size_gives_the_same_result(chunk):
    x, B, C, log_a, h0 = make(2, 2, 50, 4, 3, seed=1)
    ref = S.ssd_quadratic(x, B, C, log_a=log_a, initial_state=h0)
    assert max_err(S.ssd_chunked(x, B, C, log_a=log_a, chunk_size=chunk, initial_state=h0), ref) < TOL


def test_decays_as_a_or_as_log_a_are_the_same():
    x, B, C, log_a, _ = make(2, 3, 21, 4, 5, seed=2)
    for algo in ALGOS:
        y1 = S.run_ssd(x, B, C, log_a=log_a, algorithm=algo, chunk_size=4)
        y2 = S.run_ssd(x, B, C, a=torch.exp(log_a), algorithm=algo, chunk_size=4)
        assert max_err(y1, y2) < TOL


def test_a_wrong_model_is_caught():
    """The comparison can fail: a decay applied one token late changes the output by O(1)."""
    x, B, C, log_a, _ = make(1, 1, 30, 4, 3, seed=3)
    ref = S.ssd_recurrent(x, B, C, log_a=log_a)
    shifted = torch.roll(log_a, 1, dims=-1)
    assert max_err(S.ssd_chunked(x, B, C, log_a=shifted, chunk_size=8), ref) > 1e-2


# --------------------------------------------------------------------------------------
# The mask L in log space, and why not products
# --------------------------------------------------------------------------------------
def test_segsum_is_the_sum_of_the_log_decays_between_two_tokens():
    log_a = torch.tensor([-0.5, -1.0, -2.0, -0.25], dtype=F64)
    seg = S.segsum(log_a)
    for i in range(4):
        for j in range(4):
            expected = log_a[j + 1 : i + 1].sum().item() if i >= j else -math.inf
            assert seg[i, j].item() == expected
    L = S.decay_mask(log_a)
    assert torch.equal(torch.diagonal(L), torch.ones(4, dtype=F64))
    assert L[3, 0].item() == pytest.approx(math.exp(-3.25))


def test_long_sequence_where_the_product_of_decays_underflows():
    """a = 0.5 for 2,000 tokens: 0.5 ** 2000 underflows to 0 in float64 (smallest: 2 ** -1074)."""
    N = 2000
    x, B, C, _, _ = make(1, 2, N, 3, 2, seed=4)
    a = torch.full((1, 2, N), 0.5, dtype=F64)
    assert torch.cumprod(a, -1)[..., -1].eq(0).all()  # the product is 0 ...
    naive = S.naive_decay_mask(a)
    assert torch.isnan(naive).any()  # ... so the mask from products divides 0 by 0 ...
    naive_y = (naive * (C @ B.transpose(-1, -2))) @ x
    assert torch.isnan(naive_y).any()  # ... and the output is NaN
    L = S.decay_mask(torch.log(a))  # in log space every entry is right, tiny ones 0
    assert torch.isfinite(L).all()
    assert L[0, 0, 1999, 1998].item() == 0.5 and L[0, 0, 1999, 0].item() == 0.0
    y_rec = S.ssd_recurrent(x, B, C, a=a)
    assert max_err(S.ssd_quadratic(x, B, C, a=a), y_rec) < TOL
    assert max_err(S.ssd_chunked(x, B, C, a=a, chunk_size=64), y_rec) < TOL


def test_the_chunked_form_never_builds_an_N_by_N_tensor(record_shapes):
    N, Q = 256, 16
    x, B, C, log_a, _ = make(1, 2, N, 4, 3, seed=5)
    x.requires_grad_()
    with record_shapes() as recorder:
        S.ssd_chunked(x, B, C, log_a=log_a, chunk_size=Q).sum().backward()
    big = [(op, shape) for op, shape in recorder.shapes if sum(s >= N for s in shape[-2:]) == 2]
    assert not big, big[:3]
    with record_shapes() as recorder:
        S.ssd_quadratic(x, B, C, log_a=log_a)
    assert any(shape[-2:] == (N, N) for _, shape in recorder.shapes)  # the check can fail


# --------------------------------------------------------------------------------------
# Decoding: the step equals the parallel forward
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ALGOS)
def test_decoding_step_by_step_equals_the_parallel_forward(algo):
    x, B, C, log_a, h0 = make(2, 3, 40, 5, 4, seed=6)
    P = 25  # a prompt computed in parallel, then 15 tokens decoded one at a time
    y_full = S.ssd_chunked(x, B, C, log_a=log_a, chunk_size=8, initial_state=h0)
    y_prompt, h = S.run_ssd(x[:, :, :P], B[:, :, :P], C[:, :, :P], log_a=log_a[:, :, :P], algorithm=algo,
                        chunk_size=8, initial_state=h0, return_final_state=True)  # fmt: skip
    assert max_err(y_prompt, y_full[:, :, :P]) < TOL
    for t in range(P, 40):
        y_t, h = S.ssd_step(h, x[:, :, t], B[:, :, t], C[:, :, t], log_a=log_a[:, :, t])
        assert h.shape == (2, 3, 4, 5)  # the state does not grow
        assert max_err(y_t, y_full[:, :, t]) < TOL


def test_state_bytes_do_not_depend_on_the_sequence():
    assert S.state_bytes(1, 4, 64, 64) == 4 * 64 * 64 * 4
    assert S.state_bytes(1, 4, 64, 64, dtype=torch.float16) == 4 * 64 * 64 * 2


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ALGOS)
def test_gradcheck(algo):
    x, B, C, log_a, h0 = make(2, 1, 7, 3, 2, seed=7)
    args = [t.clone().requires_grad_() for t in (x, B, C, log_a, h0)]

    def f(x, B, C, log_a, h0):
        y, h = S.run_ssd(x, B, C, log_a=log_a, algorithm=algo, chunk_size=3, initial_state=h0, return_final_state=True)
        return y, h

    assert torch.autograd.gradcheck(f, args)


def test_gradcheck_through_a():
    x, B, C, log_a, _ = make(1, 2, 6, 2, 2, seed=8)
    a = torch.exp(log_a).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: S.ssd_chunked(x, B, C, a=a, chunk_size=4), (a,))


# --------------------------------------------------------------------------------------
# The family as settings
# --------------------------------------------------------------------------------------
def causal_linear_attention_direct(q, k, v):
    """``(Q K^T o causal mask) V``, unnormalised, written out."""
    N = q.shape[-2]
    mask = torch.ones(N, N, dtype=torch.bool).tril()
    return ((q @ k.transpose(-1, -2)) * mask) @ v


@pytest.mark.parametrize("algo", ALGOS)
def test_decay_one_is_causal_linear_attention(algo):
    q, k, v = (torch.randn(2, 3, 45, dim, dtype=F64, generator=torch.Generator().manual_seed(i)) for i, dim in
               enumerate((4, 4, 6)))  # fmt: skip
    log_a = S.linear_attention_decay(2, 3, 45, dtype=F64)
    y = S.run_ssd(v, k, q, log_a=log_a, algorithm=algo, chunk_size=8)  # x = v, B = k, C = q
    assert max_err(y, causal_linear_attention_direct(q, k, v)) < TOL


def test_decay_one_equals_the_linear_attention_module():
    """With a = 1, SSD is attnlib.approx.linear's causal form without its feature map and normaliser.

    Compared: ``causal_linear_attention_chunked(q, k, v, feature_map=None, normalize=False)``, i.e.
    ``y_i = sum_{j <= i} (q_i . k_j) v_j``, against ``ssd_chunked(x=v, B=k, C=q, a=1)``.
    """
    linear = pytest.importorskip("attnlib.approx.linear")
    gen = torch.Generator().manual_seed(9)
    q, k = torch.randn(2, 2, 2, 50, 4, dtype=F64, generator=gen)
    v = torch.randn(2, 2, 50, 5, dtype=F64, generator=gen)
    y = S.ssd_chunked(v, k, q, log_a=S.linear_attention_decay(2, 2, 50, dtype=F64), chunk_size=16)
    ref = linear.causal_linear_attention_chunked(q, k, v, chunk_size=12, feature_map=None, normalize=False)
    assert max_err(y, ref) < TOL


def test_retnet_decay_is_the_parallel_retention_of_retnet():
    """RetNet's parallel form: ``(Q K^T o D) V`` with ``D_nm = gamma^(n - m)`` for ``n >= m``."""
    H, N = 3, 40
    gammas = S.retnet_gammas(H, dtype=F64)
    assert gammas.tolist() == [1 - 2**-5, 1 - 2**-6, 1 - 2**-7]
    gen = torch.Generator().manual_seed(10)
    q, k, v = torch.randn(3, 2, H, N, 4, dtype=F64, generator=gen)
    n_minus_m = torch.arange(N)[:, None] - torch.arange(N)[None, :]
    D = torch.where(n_minus_m >= 0, gammas[:, None, None] ** n_minus_m.clamp(min=0), 0.0)  # (H, N, N)
    ref = ((q @ k.transpose(-1, -2)) * D) @ v
    y = S.ssd_chunked(v, k, q, log_a=S.retnet_decay(2, H, N, dtype=F64), chunk_size=16)
    assert max_err(y, ref) < TOL


def test_mamba2_decay_is_exp_of_dt_times_A():
    gen = torch.Generator().manual_seed(11)
    dt = torch.nn.functional.softplus(torch.randn(2, 3, 20, dtype=F64, generator=gen))
    A = -torch.exp(torch.rand(3, dtype=F64, generator=gen))
    log_a = S.mamba2_decay(dt, A)
    assert torch.equal(log_a, dt * A[None, :, None])
    x, B, C, _, _ = make(2, 3, 20, 4, 3, seed=11)
    y = S.ssd_chunked(x * dt[..., None], B, C, a=torch.exp(dt * A[None, :, None]), chunk_size=8)
    assert max_err(y, S.ssd_recurrent(x * dt[..., None], B, C, log_a=log_a)) < TOL


# --------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0.0, 1.5, -0.2, float("nan")])
def test_decays_outside_0_1_are_rejected(bad):
    x, B, C, log_a, _ = make(1, 2, 5, 3, 2)
    a = torch.exp(log_a)
    a[0, 1, 3] = bad
    for algo in ALGOS:
        with pytest.raises(ValueError, match=r"^a must hold decays in \(0, 1\]"):
            S.run_ssd(x, B, C, a=a, algorithm=algo)


@pytest.mark.parametrize("bad", [0.1, float("inf"), -float("inf"), float("nan")])
def test_log_decays_above_0_or_not_finite_are_rejected(bad):
    x, B, C, log_a, _ = make(1, 2, 5, 3, 2)
    log_a[0, 0, 2] = bad
    with pytest.raises(ValueError, match="^log_a must be finite and <= 0"):
        S.ssd_chunked(x, B, C, log_a=log_a)


def test_exactly_one_of_a_and_log_a():
    x, B, C, log_a, _ = make(1, 1, 5, 3, 2)
    with pytest.raises(ValueError, match="exactly one of a"):
        S.ssd_chunked(x, B, C)
    with pytest.raises(ValueError, match="exactly one of a"):
        S.ssd_chunked(x, B, C, a=torch.exp(log_a), log_a=log_a)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, None])
def test_chunk_size_must_be_a_positive_int(bad):
    x, B, C, log_a, _ = make(1, 1, 5, 3, 2)
    with pytest.raises(ValueError, match="^chunk_size must be a positive int"):
        S.ssd_chunked(x, B, C, log_a=log_a, chunk_size=bad)


def test_mismatched_state_sizes():
    x, B, C, log_a, h0 = make(1, 2, 5, 3, 4)
    with pytest.raises(ValueError, match="B and C must have the same state size n"):
        S.ssd_chunked(x, B, C[..., :3], log_a=log_a)
    with pytest.raises(ValueError, match=r"^initial_state must be \(B, H, n, d\)"):
        S.ssd_chunked(x, B, C, log_a=log_a, initial_state=h0[:, :, :3])
    with pytest.raises(ValueError, match=r"^x must be \(B, H, d\)"):
        S.ssd_step(h0, x[:, :, 0, :2], B[:, :, 0], C[:, :, 0], log_a=log_a[:, :, 0])
    with pytest.raises(ValueError, match=r"^B must be \(B, H, n\)"):
        S.ssd_step(h0, x[:, :, 0], B[:, :, 0, :3], C[:, :, 0], log_a=log_a[:, :, 0])


def test_dtype_mixes_name_the_argument():
    x, B, C, log_a, h0 = make(1, 2, 5, 3, 4)
    with pytest.raises(TypeError, match=r"^B must have the dtype of x \(torch.float64\), got torch.float32"):
        S.ssd_chunked(x, B.float(), C, log_a=log_a)
    with pytest.raises(TypeError, match="^C must have the dtype of x"):
        S.ssd_quadratic(x, B, C.float(), log_a=log_a)
    with pytest.raises(TypeError, match="^log_a must have the dtype of x"):
        S.ssd_recurrent(x, B, C, log_a=log_a.float())
    with pytest.raises(TypeError, match="^a must have the dtype of x"):
        S.ssd_recurrent(x, B, C, a=torch.exp(log_a).float())
    with pytest.raises(TypeError, match="^initial_state must have the dtype of x"):
        S.ssd_chunked(x, B, C, log_a=log_a, initial_state=h0.float())
    with pytest.raises(TypeError, match="^x must have the dtype of state"):
        S.ssd_step(h0, x[:, :, 0].float(), B[:, :, 0], C[:, :, 0], log_a=log_a[:, :, 0])
    with pytest.raises(TypeError, match="^x must be a floating tensor"):
        S.ssd_chunked(x.long(), B, C, log_a=log_a)


def test_wrong_shapes_name_the_argument():
    x, B, C, log_a, _ = make(1, 2, 5, 3, 4)
    with pytest.raises(ValueError, match="^x must have 4 dimensions"):
        S.ssd_chunked(x[0], B, C, log_a=log_a)
    with pytest.raises(ValueError, match=r"^B and C must be \(B, H, N, n\)"):
        S.ssd_chunked(x, B[:, :, :4], C, log_a=log_a)
    with pytest.raises(ValueError, match=r"^log_a must have shape \(1, 2, 5\)"):
        S.ssd_chunked(x, B, C, log_a=log_a[..., :4])
    with pytest.raises(ValueError, match="^algorithm must be one of"):
        S.run_ssd(x, B, C, log_a=log_a, algorithm="scan")
    with pytest.raises(ValueError, match="^A must have one entry per head"):
        S.mamba2_decay(torch.ones(1, 2, 5, dtype=F64), -torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match=r"^gammas must be decays in \(0, 1\]"):
        S.retnet_decay(1, 2, 5, gammas=torch.tensor([0.5, 1.5]))


# --------------------------------------------------------------------------------------
# The attention signature (registry, attnlib.bench)
# --------------------------------------------------------------------------------------
def test_ssd_attention_is_the_model_with_q_k_v_as_C_B_x():
    gen = torch.Generator().manual_seed(12)
    q = torch.randn(2, 4, 30, 8, dtype=F64, generator=gen)
    k = torch.randn(2, 2, 30, 8, dtype=F64, generator=gen)  # grouped: 2 key/value heads for 4 query heads
    v = torch.randn(2, 2, 30, 5, dtype=F64, generator=gen)
    k4, v4 = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    ref = S.ssd_recurrent(v4, k4, q, log_a=S.retnet_decay(2, 4, 30, dtype=F64))
    assert max_err(S.ssd_attention(q, k, v), ref) < TOL
    assert max_err(S.ssd_attention(q, k, v, decay="none"), causal_linear_attention_direct(q, k4, v4)) < TOL
    with pytest.raises(ValueError, match="^causal must be True"):
        S.ssd_attention(q, k, v, causal=False)
    with pytest.raises(ValueError, match="^decay must be one of"):
        S.ssd_attention(q, k, v, decay="mamba")
    with pytest.raises(ValueError, match="same number of tokens"):
        S.ssd_attention(q[:, :, :20], k, v)


def test_the_registry_row_points_here():
    from attnlib import registry
    from attnlib.ssm.mamba2 import Mamba2

    if "ssd" not in {m.name for m in registry.METHODS}:
        pytest.skip("no registry row 'ssd' yet")
    method = registry.get("ssd")
    assert method.attention_fn() is S.ssd_attention
    assert method.module_cls() is Mamba2
    q, k, v = torch.randn(3, 1, 2, 40, 8, dtype=F64, generator=torch.Generator().manual_seed(13))
    y = method.attention_fn()(q, k, v, causal=True, **method.bench_kwargs)
    assert max_err(y, S.ssd_recurrent(v, k, q, log_a=S.retnet_decay(1, 2, 40, dtype=F64))) < TOL


def test_the_matrix_of_the_model():
    """``M = L o C B^T``: ``M x`` is the output, and with a = 1 ``M`` is ``tril(C B^T)``."""
    x, B, C, log_a, _ = make(2, 2, 12, 3, 4, seed=14)
    M = S.ssd_matrix(B, C, S.decay_mask(log_a))
    assert torch.equal(M, M.tril())
    assert max_err(M @ x, S.ssd_recurrent(x, B, C, log_a=log_a)) < TOL
    ones = S.decay_mask(torch.zeros(2, 2, 12, dtype=F64))
    assert torch.equal(S.ssd_matrix(B, C, ones), (C @ B.transpose(-1, -2)).tril())
