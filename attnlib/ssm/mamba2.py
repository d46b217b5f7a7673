"""A minimal Mamba-2 block on :mod:`attnlib.ssm.ssd`, with the released code's parameter names.

Paper: Dao and Gu, "Transformers are SSMs" (ICML 2024, arXiv 2405.21060), Section 7 (the Mamba-2
architecture: the projections of ``x, B, C, dt`` made in parallel at the start of the block, a short
convolution, the SSD layer, a normalization gated by ``z`` before the output projection).
Released code: ``state-spaces/mamba``, ``mamba_ssm/modules/mamba2.py`` (class
``Mamba2``, its ``forward`` with ``use_mem_eff_path=False`` and its ``step``) and
``mamba_ssm/ops/triton/layernorm_gated.py`` (``rms_norm_ref``). Chapter: "State-space models"
(chapters/*/17_state_space.ipynb).

The block, for ``u: (B, L, d_model)``::

    z, xBC, dt = split(in_proj(u))                 # [d_inner, d_inner + 2 G n, H]
    xBC = silu(conv1d(xBC))                        # depthwise, causal, kernel d_conv
    x, B, C = split(xBC)                           # x: H heads of headdim; B, C: G groups of n
    dt = softplus(dt + dt_bias);  A = -exp(A_log)  # one A per head
    y = SSD(x * dt, B, C, log a = dt A) + D x      # attnlib.ssm.ssd, a = exp(dt A)
    out = out_proj(norm(y, z))                     # gated RMSNorm: rmsnorm(y * silu(z)) * weight

Parameter names as in the released ``Mamba2``: ``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``,
``D``, ``norm.weight``, ``out_proj``, with its initialisation (``dt`` log-uniform in
``[dt_min, dt_max]`` stored through the inverse softplus, ``A`` uniform in ``A_init_range``).

Departures from the released block: no ``d_ssm`` (the gated-MLP part beside the SSM), no
``D_has_hdim``, no ``dt_limit``, no ``seq_idx``/``cu_seqlens`` (packed sequences), no tensor
parallelism, no ``rmsnorm=False`` variant, ``norm_before_gate=False`` only, no fused kernels (the
SSD is any algorithm of :func:`attnlib.ssm.ssd.run_ssd`; default chunk size 64, released 256).
Decoding states: ``conv_state: (B, conv_dim, d_conv)`` as released; ``ssm_state: (B, H, d_state,
headdim)``, the transpose of the released ``(B, H, headdim, d_state)`` (attnlib's state is
``h = a h + B x^T``, ``(n, d)``). :meth:`Mamba2.step` returns new states instead of updating them
in place.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_like_module, check_positive_int, check_tensor, check_tokens
from .ssd import ALGORITHMS, mamba2_decay, run_ssd, ssd_step

__all__ = ["Mamba2", "RMSNormGated"]


class RMSNormGated(nn.Module):
    """``rmsnorm(x * silu(z)) * weight`` over groups of ``group_size`` channels (``norm_before_gate=False``).

    As ``rms_norm_ref`` of the released ``layernorm_gated.py``, computed in float32 (float64 stays
    float64, where the released reference rounds to float32) and returned in the input dtype.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None, device=None, dtype=None):
        super().__init__()
        check_positive_int("hidden_size", hidden_size)
        self.group_size = hidden_size if group_size is None else group_size
        check_positive_int("group_size", self.group_size)
        if hidden_size % self.group_size:
            raise ValueError(f"group_size must divide hidden_size, got {self.group_size} and {hidden_size}")
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        compute = torch.promote_types(dtype, torch.float32)
        x = x.to(compute)
        if z is not None:
            x = x * F.silu(z.to(compute))  # gate first, then normalize
        groups = x.unflatten(-1, (-1, self.group_size))  # (..., G, group_size)
        groups = groups * torch.rsqrt(groups.square().mean(-1, keepdim=True) + self.eps)
        return (groups.flatten(-2) * self.weight.to(compute)).to(dtype)


class Mamba2(nn.Module):
    """The Mamba-2 block: ``forward(u)`` over a sequence, ``step`` one token at a time.

    ``u: (B, L, d_model) -> (B, L, d_model)``; ``d_inner = expand * d_model`` split into
    ``nheads = d_inner // headdim`` heads; ``ngroups`` groups of ``B, C`` shared by
    ``nheads // ngroups`` heads each (as grouped-query attention shares keys).
    ``algorithm`` picks the SSD algorithm (``"chunked"``, ``"quadratic"``, ``"recurrent"``,
    ``"triton"``), all equal up to rounding.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 64,
        ngroups: int = 1,
        A_init_range: tuple[float, float] = (1, 16),
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        bias: bool = False,
        conv_bias: bool = True,
        chunk_size: int = 64,
        algorithm: str = "chunked",
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("expand", expand),
                            ("headdim", headdim), ("ngroups", ngroups), ("chunk_size", chunk_size)):  # fmt: skip
            check_positive_int(name, value)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")
        if not (0 < A_init_range[0] <= A_init_range[1]):
            raise ValueError(f"A_init_range must be (low, high) with 0 < low <= high, got {A_init_range!r}")
        if not (0 < dt_min <= dt_max):
            raise ValueError(f"dt_min and dt_max must satisfy 0 < dt_min <= dt_max, got {dt_min!r}, {dt_max!r}")
        factory = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        if self.d_inner % headdim:
            raise ValueError(f"headdim must divide d_inner = expand * d_model = {self.d_inner}, got headdim={headdim}")
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups:
            raise ValueError(f"ngroups must divide the number of heads ({self.nheads}), got ngroups={ngroups}")
        self.ngroups = ngroups
        self.chunk_size = chunk_size
        self.algorithm = algorithm

        # Order: [z, x, B, C, dt]
        d_in_proj = 2 * self.d_inner + 2 * ngroups * d_state + self.nheads
        self.in_proj = nn.Linear(d_model, d_in_proj, bias=bias, **factory)
        self.conv_dim = self.d_inner + 2 * ngroups * d_state
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, kernel_size=d_conv, groups=self.conv_dim, padding=d_conv - 1,
            bias=conv_bias, **factory,
        )  # fmt: skip
        self.act = nn.SiLU()

        # dt log-uniform in [dt_min, dt_max], stored as its inverse softplus (dt = softplus(dt_bias)).
        dt = torch.exp(torch.rand(self.nheads, **factory) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = torch.clamp(dt, min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        A = torch.empty(self.nheads, dtype=torch.float32, device=device).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A).to(dtype=dtype))
        self.D = nn.Parameter(torch.ones(self.nheads, **factory))
        self.norm = RMSNormGated(self.d_inner, eps=1e-5, group_size=self.d_inner // ngroups, **factory)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory)

    # ---------------------------------------------------------------------------------
    def _split_xbc(self, xBC: torch.Tensor):
        """``(..., conv_dim) -> x (..., H, P), B (..., H, n), C (..., H, n)``; each group's B, C shared by its heads."""
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = x.unflatten(-1, (self.nheads, self.headdim))
        heads_per_group = self.nheads // self.ngroups
        B = B.unflatten(-1, (self.ngroups, self.d_state)).repeat_interleave(heads_per_group, dim=-2)
        C = C.unflatten(-1, (self.ngroups, self.d_state)).repeat_interleave(heads_per_group, dim=-2)
        return x, B, C

    def forward(self, u: torch.Tensor, *, return_states: bool = False):
        """``u: (B, L, d_model) -> (B, L, d_model)``; with ``return_states=True`` also
        ``(conv_state, ssm_state)`` after the last token, to continue with :meth:`step`."""
        check_tokens("u", u, self.d_model)
        check_like_module("u", u, self)
        Bsz, L, _ = u.shape
        if Bsz == 0 or L == 0:
            raise ValueError(f"u must have at least one sequence and one token, got shape {tuple(u.shape)}")
        zxbcdt = self.in_proj(u)  # (B, L, d_in_proj)
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (B, L, H)
        A = -torch.exp(self.A_log)  # (H,)
        conv_in = xBC.transpose(1, 2)  # (B, conv_dim, L)
        xBC = self.act(self.conv1d(conv_in)[..., :L].transpose(1, 2))  # causal: drop the right padding
        x, B, C = self._split_xbc(xBC)  # (B, L, H, P), (B, L, H, n), (B, L, H, n)
        x, B, C = (t.transpose(1, 2) for t in (x, B, C))  # heads first: (B, H, L, .)
        dt = dt.transpose(1, 2)  # (B, H, L)
        y, ssm_state = run_ssd(
            x * dt[..., None], B, C, log_a=mamba2_decay(dt, A), algorithm=self.algorithm,
            chunk_size=self.chunk_size, return_final_state=True,
        )  # fmt: skip
        y = y + self.D[:, None, None] * x  # (B, H, L, P), the skip connection D x
        y = y.transpose(1, 2).reshape(Bsz, L, self.d_inner)
        out = self.out_proj(self.norm(y, z))
        if not return_states:
            return out
        conv_state = F.pad(conv_in, (max(self.d_conv - L, 0), 0))[..., -self.d_conv :]  # (B, conv_dim, d_conv)
        return out, (conv_state, ssm_state)

    def allocate_inference_cache(self, batch_size: int, dtype=None):
        """Zero states ``(conv_state (B, conv_dim, d_conv), ssm_state (B, H, d_state, headdim))``."""
        check_positive_int("batch_size", batch_size)
        weight = self.out_proj.weight
        dtype = weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.conv_dim, self.d_conv, device=weight.device, dtype=dtype)
        ssm_state = torch.zeros(
            batch_size, self.nheads, self.d_state, self.headdim, device=weight.device, dtype=dtype
        )  # fmt: skip
        return conv_state, ssm_state

    def step(self, hidden_states: torch.Tensor, conv_state: torch.Tensor, ssm_state: torch.Tensor):
        """One token: ``hidden_states (B, 1, d_model)`` -> ``(out (B, 1, d_model), conv_state, ssm_state)``.

        Constant work and memory per token whatever the number of tokens before it.
        """
        check_tokens("hidden_states", hidden_states, self.d_model)
        check_like_module("hidden_states", hidden_states, self)
        Bsz = hidden_states.shape[0]
        if hidden_states.shape[1] != 1:
            raise ValueError(
                f"hidden_states must hold one token (B, 1, d_model), got shape {tuple(hidden_states.shape)}"
            )
        check_tensor("conv_state", conv_state, ndim=3)
        check_tensor("ssm_state", ssm_state, ndim=4)
        if tuple(conv_state.shape) != (Bsz, self.conv_dim, self.d_conv):
            raise ValueError(
                f"conv_state must be (B, conv_dim, d_conv) = {(Bsz, self.conv_dim, self.d_conv)}, "
                f"got {tuple(conv_state.shape)}"
            )
        if tuple(ssm_state.shape) != (Bsz, self.nheads, self.d_state, self.headdim):
            raise ValueError(
                f"ssm_state must be (B, nheads, d_state, headdim) = {(Bsz, self.nheads, self.d_state, self.headdim)}, "
                f"got {tuple(ssm_state.shape)}"
            )
        for name, t in (("conv_state", conv_state), ("ssm_state", ssm_state)):
            if t.dtype != hidden_states.dtype or t.device != hidden_states.device:
                raise TypeError(
                    f"{name} must have the dtype and device of hidden_states ({hidden_states.dtype}, "
                    f"{hidden_states.device}), got {t.dtype}, {t.device}"
                )
        zxbcdt = self.in_proj(hidden_states[:, 0])  # (B, d_in_proj)
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, self.conv_dim, self.nheads], dim=-1)
        # Convolution step: shift the window by one token, then one output of the depthwise conv.
        conv_state = torch.cat([conv_state[..., 1:], xBC[..., None]], dim=-1)  # (B, conv_dim, d_conv)
        xBC = torch.sum(conv_state * self.conv1d.weight[:, 0], dim=-1)  # (B, conv_dim)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        x, B, C = self._split_xbc(self.act(xBC))  # (B, H, P), (B, H, n), (B, H, n)
        dt = F.softplus(dt + self.dt_bias)  # (B, H)
        A = -torch.exp(self.A_log)
        y, ssm_state = ssd_step(ssm_state, x * dt[..., None], B, C, log_a=dt * A)  # (B, H, P)
        y = (y + self.D[:, None] * x).reshape(Bsz, self.d_inner)
        out = self.out_proj(self.norm(y, z))
        return out[:, None], conv_state, ssm_state
