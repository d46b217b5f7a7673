"""Tests of attnlib.ssm.mamba2: the Mamba-2 block over a sequence and one token at a time.

Decoding step by step must equal the forward over the sequence (float64, 1e-10): the short
convolution's window and the SSD state carry everything a token needs from the past.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlib.ssm import Mamba2, RMSNormGated

F64 = torch.float64
TOL = 1e-10


def block(seed=0, **kw):
    torch.manual_seed(seed)
    settings = dict(d_model=16, d_state=8, headdim=8, chunk_size=5)
    settings.update(kw)
    return Mamba2(**settings).to(F64)


def tokens(Bsz, L, d_model=16, seed=1):
    return torch.randn(Bsz, L, d_model, dtype=F64, generator=torch.Generator().manual_seed(seed))


def test_parameter_names_are_those_of_the_released_code():
    names = sorted(name for name, _ in block().named_parameters())
    assert names == ["A_log", "D", "conv1d.bias", "conv1d.weight", "dt_bias", "in_proj.weight", "norm.weight",
                     "out_proj.weight"]  # fmt: skip
    m = block(ngroups=2)
    assert m.in_proj.weight.shape == (2 * 32 + 2 * 2 * 8 + 4, 16)  # [z, x, B, C, dt]
    assert m.conv1d.weight.shape == (32 + 2 * 2 * 8, 1, 4)  # depthwise


def test_initialisation():
    m = Mamba2(d_model=64, d_state=16, headdim=16, dt_min=0.001, dt_max=0.1)
    dt = F.softplus(m.dt_bias)
    assert ((dt >= 0.001 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5))).all()
    A = -torch.exp(m.A_log)
    assert ((A <= -1 + 1e-6) & (A >= -16 - 1e-5)).all()
    assert torch.equal(m.D, torch.ones(8))


@pytest.mark.parametrize("ngroups", [1, 2])
@pytest.mark.parametrize("algorithm", ["chunked", "quadratic", "recurrent"])
def test_decoding_step_by_step_equals_the_forward(algorithm, ngroups):
    m = block(ngroups=ngroups, algorithm=algorithm)
    u = tokens(2, 13)
    out, (conv_state, ssm_state) = m(u, return_states=True)
    assert out.shape == u.shape
    c, s = m.allocate_inference_cache(2)
    for t in range(13):
        o, c, s = m.step(u[:, t : t + 1], c, s)
        assert s.shape == (2, 4, 8, 8) and c.shape == (2, 32 + 2 * ngroups * 8, 4)  # constant size
        assert (o[:, 0] - out[:, t]).abs().max().item() < TOL
    assert (c - conv_state).abs().max().item() < TOL
    assert (s - ssm_state).abs().max().item() < TOL


def test_prefill_then_decode():
    """A prompt run in parallel, then tokens one at a time, equals the forward over everything."""
    m = block()
    u = tokens(2, 20)
    full = m(u)
    for P in (2, 11):  # a prompt shorter than the convolution's window, and a longer one
        _, (c, s) = m(u[:, :P], return_states=True)
        for t in range(P, 20):
            o, c, s = m.step(u[:, t : t + 1], c, s)
            assert (o[:, 0] - full[:, t]).abs().max().item() < TOL


def test_the_algorithms_agree_and_the_block_is_causal():
    u = tokens(2, 23)
    outs = [block(algorithm=a)(u) for a in ("chunked", "quadratic", "recurrent")]
    assert max((o - outs[0]).abs().max().item() for o in outs) < TOL
    changed = u.clone()
    changed[:, 15:] += 1
    out = block()(changed)
    assert (out[:, :15] - outs[0][:, :15]).abs().max().item() < TOL
    assert (out[:, 15:] - outs[0][:, 15:]).abs().max().item() > 1e-3


def test_gated_rmsnorm_is_the_released_reference():
    """``rms_norm_ref`` of the released code with ``norm_before_gate=False``, restated."""
    gen = torch.Generator().manual_seed(2)
    x, z = torch.randn(2, 3, 12, dtype=F64, generator=gen), torch.randn(2, 3, 12, dtype=F64, generator=gen)
    norm = RMSNormGated(12, eps=1e-5, group_size=6).to(F64)
    torch.nn.init.normal_(norm.weight)
    g = (x * F.silu(z)).view(2, 3, 2, 6)
    ref = (g / torch.sqrt(g.square().mean(-1, keepdim=True) + 1e-5)).view(2, 3, 12) * norm.weight
    assert (norm(x, z) - ref).abs().max().item() < 1e-12


def test_gradients_reach_every_parameter():
    m = block()
    u = tokens(2, 12).requires_grad_()
    m(u).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    small = block(chunk_size=3)
    assert torch.autograd.gradcheck(small, (tokens(1, 5, seed=3).requires_grad_(),))


def test_triton_algorithm_in_the_block():
    pytest.importorskip("attnlib.ssm.ssd_triton", reason="triton is not installed")
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the interpreter is off (GPU runs test the kernel in test_ssd_triton.py)")
    u = tokens(1, 21).float()
    ref = block(chunk_size=16).float()(u)
    out = block(chunk_size=16, algorithm="triton").float()(u)
    assert (out - ref).abs().max().item() < 1e-4


def test_bad_input():
    m = block()
    with pytest.raises(ValueError, match="^u must have 16 channels"):
        m(tokens(1, 5, d_model=8))
    with pytest.raises(TypeError, match="^u must have the dtype of the module's parameters"):
        m(tokens(1, 5).float())
    c, s = m.allocate_inference_cache(1)
    with pytest.raises(ValueError, match="^hidden_states must hold one token"):
        m.step(tokens(1, 2), c, s)
    with pytest.raises(ValueError, match=r"^conv_state must be \(B, conv_dim, d_conv\)"):
        m.step(tokens(1, 1), c[..., :3], s)
    with pytest.raises(ValueError, match=r"^ssm_state must be \(B, nheads, d_state, headdim\)"):
        m.step(tokens(1, 1), c, s.transpose(-1, -2)[..., :4])
    with pytest.raises(TypeError, match="^ssm_state must have the dtype and device of hidden_states"):
        m.step(tokens(1, 1), c, s.float())
    with pytest.raises(ValueError, match="^headdim must divide d_inner"):
        Mamba2(d_model=16, headdim=12)
    with pytest.raises(ValueError, match="^ngroups must divide the number of heads"):
        Mamba2(d_model=16, headdim=8, ngroups=3)
    with pytest.raises(ValueError, match="^algorithm must be one of"):
        Mamba2(d_model=16, headdim=8, algorithm="scan")
    with pytest.raises(ValueError, match="^chunk_size must be a positive int"):
        Mamba2(d_model=16, headdim=8, chunk_size=0)
