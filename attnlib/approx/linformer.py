"""Linformer: keys and values projected along the sequence axis, from N rows to k.

Wang, Li, Khabsa, Fang, Ma, "Linformer: Self-Attention with Linear Complexity", arXiv:2006.04768
(2020). Chapter: "Linear attention, Performer and Linformer" (chapters/*/16_linear_attention.ipynb).

Contract: :func:`linformer_attention` has the signature of attnlib's kernels,
``f(q, k, v, *, causal=False, ...)`` on ``q: (B, H, N, d)``, ``k: (B, H_kv, N, d)``,
``v: (B, H_kv, N, d_v)``, and :class:`LinformerSelfAttention` is the block with learned projections.

The equations (Sec. 4, Eq. 7), for head ``i`` with projections ``E_i, F_i: (k, N)``:

    head_i = softmax( Q_i (E_i K_i)^T / sqrt(d) ) (F_i V_i)        P_bar: (N, k) instead of (N, N)

so the cost is ``O(N k d)`` in time and ``O(N k)`` for the scores. Sec. 3 (Theorem 1) argues that
the context mapping matrix ``P`` of softmax attention is approximately low rank; Theorem 2 that
random projections (scaled copies of one matrix with i.i.d. ``N(0, 1/k)`` entries) with
``k = min(Theta(9 d log d / eps^2), 5 Theta(log n / eps^2))`` keep the output within ``eps`` with
high probability (a Johnson-Lindenstrauss argument). In the model E and F are learned
(initialized here with i.i.d. ``N(0, 1/k)`` entries, independent for E and F). With ``k = N`` and
``E = F = I`` the method is dense softmax attention (a test).

Not causal: every projected key ``(E K)_r = sum_n E_rn K_n`` mixes all N tokens, the future ones
included, so no query can be kept from seeing them; :func:`linformer_attention` raises a
ValueError for ``causal=True``.

Parameter sharing (Sec. 4, "Additional efficiency techniques"), :class:`LinformerSelfAttention`'s
``sharing``: ``"none"`` (an ``E_i`` and ``F_i`` per head), ``"headwise"`` (one E and one F per
layer for all heads), ``"key-value"`` (one matrix per layer for keys and values, ``E = F``),
``"layerwise"`` (one matrix for every layer, head, key and value: pass the same
:meth:`LinformerSelfAttention.shared_projection` to every layer).

Shape legend: B batch, H heads, N tokens, d head dimension, d_v value dimension, k projected length.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import (
    check_flag,
    check_heads,
    check_like_module,
    check_positive_int,
    check_qkv,
    check_tensor,
    check_tokens,
    resolve_scale,
)
from ..reference import GlobalSelfAttention2d, expand_kv_heads, sdpa_attention

__all__ = [
    "random_projections",
    "linformer_attention",
    "LinformerSelfAttention",
    "SHARING",
    "make_mixer",
]

SHARING = ("none", "headwise", "key-value", "layerwise")
_BLOCK = 1024  # columns of E and F drawn at a time (random_projections and the seeded path agree)

_CAUSAL_ERROR = (
    "Linformer cannot be causal: each projected key (E K)_r = sum_n E_rn K_n mixes all N tokens, the future "
    "ones included, so no query can be kept from seeing later tokens; use causal=False, or a causal method "
    "(attnlib.approx.linear.causal_linear_attention_chunked)"
)


def _check_proj_len(proj_len, N: int) -> None:
    if isinstance(proj_len, bool) or not isinstance(proj_len, int) or proj_len <= 0:
        raise ValueError(f"proj_len (k, the projected length) must be a positive int, got {proj_len!r}")
    if proj_len > N:
        raise ValueError(
            f"proj_len (k) must be at most the sequence length N: projecting N={N} tokens onto k={proj_len} rows "
            f"adds work and no information (k = N is already dense attention's cost)"
        )


def _blocks(proj_len: int, N: int, seed: int, dtype, device):
    """Yield ``(start, E_block, F_block)``, each ``(k, n)`` with i.i.d. ``N(0, 1)`` entries, seeded.

    The projections are these times ``1/sqrt(k)``; the callers apply the factor once, to the result.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    for start in range(0, N, _BLOCK):
        n = min(_BLOCK, N - start)
        E = torch.randn(proj_len, n, generator=g).to(dtype=dtype, device=device)  # (k, n)
        F = torch.randn(proj_len, n, generator=g).to(dtype=dtype, device=device)  # (k, n)
        yield start, E, F


def random_projections(proj_len: int, N: int, *, seed: int, dtype=torch.float32, device=None):
    """``(E, F)``, each ``(k, N)`` with i.i.d. ``N(0, 1/k)`` entries (Theorem 2's projections), from ``seed``.

    The same matrices as :func:`linformer_attention` draws with ``E=None, proj_len=k, seed=seed``.
    """
    check_positive_int("N", N)
    _check_proj_len(proj_len, N)
    parts = list(_blocks(proj_len, N, seed, dtype, device))
    std = proj_len**-0.5
    return torch.cat([E for _, E, _ in parts], dim=1) * std, torch.cat([F for _, _, F in parts], dim=1) * std


def _check_projection(name: str, P, N: int, H: int, device) -> None:
    check_tensor(name, P)
    if P.ndim not in (2, 3):
        raise ValueError(f"{name} must be (k, N) or (H, k, N) (one per head), got shape {tuple(P.shape)}")
    if P.shape[-1] != N:
        raise ValueError(f"{name} must have N={N} columns (one per token of k and v), got shape {tuple(P.shape)}")
    if P.ndim == 3 and P.shape[0] != H:
        raise ValueError(f"{name} of shape (H, k, N) must have H={H} heads, got shape {tuple(P.shape)}")
    if P.shape[-2] == 0:
        raise ValueError(f"{name} must have at least one row (k >= 1), got shape {tuple(P.shape)}")
    _check_proj_len(P.shape[-2], N)
    if P.device != device:
        raise ValueError(f"{name} must be on the device of q ({device}), got {P.device}")


def linformer_attention(q, k, v, E=None, F=None, *, causal=False, proj_len=None, seed=None, scale=None):
    """Eq. (7): ``softmax(Q (E K)^T * scale) (F V)``, the softmax over ``k`` projected keys.

    ``E, F``: ``(k, N)`` (shared by the heads) or ``(H, k, N)`` (one per head); ``F=None`` uses
    ``E`` for the values too (key-value sharing). Without ``E``: random projections with i.i.d.
    ``N(0, 1/k)`` entries (Theorem 2) of ``proj_len`` rows, drawn from ``seed`` one block of 1024
    columns at a time, so that no ``(k, N)`` matrix is held (:func:`random_projections` returns
    the same matrices). The softmax over the projected keys runs on PyTorch's fused SDPA (exact
    softmax attention; in float64 its math path): memory ``O(N + k d)`` beyond the output.
    ``causal=True`` raises a ValueError (see the module docstring). N smaller than k is refused.
    """
    B, H, H_kv, N_q, N_k, d = check_qkv(q, k, v)
    check_flag("causal", causal)
    if causal:
        raise ValueError(_CAUSAL_ERROR)
    scale = resolve_scale(scale, 1.0 / math.sqrt(d))
    k = expand_kv_heads(k, H)  # (B, H, N, d)
    v = expand_kv_heads(v, H)  # (B, H, N, d_v)
    if E is None:
        if F is not None:
            raise ValueError("F was given without E: give E (and optionally F), or neither (random projections)")
        if proj_len is None or seed is None:
            raise ValueError("without E, give proj_len (k) and seed to draw random projections")
        _check_proj_len(proj_len, N_k)
        k_bar = v_bar = None
        for start, E_b, F_b in _blocks(proj_len, N_k, seed, q.dtype, q.device):
            part_k = E_b @ k[:, :, start : start + E_b.shape[1]]  # (B, H, k, d)
            part_v = F_b @ v[:, :, start : start + F_b.shape[1]]  # (B, H, k, d_v)
            k_bar = part_k if k_bar is None else k_bar + part_k
            v_bar = part_v if v_bar is None else v_bar + part_v
        k_bar, v_bar = k_bar * proj_len**-0.5, v_bar * proj_len**-0.5  # E, F entries N(0, 1/k)
    else:
        if proj_len is not None or seed is not None:
            raise ValueError("give E (and F) or proj_len and seed, not both")
        _check_projection("E", E, N_k, H, q.device)
        F = E if F is None else F
        _check_projection("F", F, N_k, H, q.device)
        if E.shape[-2] != F.shape[-2]:
            raise ValueError(f"E and F must project to the same k rows, got E {tuple(E.shape)}, F {tuple(F.shape)}")
        for name, P in (("E", E), ("F", F)):
            if P.dtype != q.dtype:
                raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {P.dtype}")
        k_bar = E @ k  # (B, H, k, d): E_i K_i, Eq. (7)
        v_bar = F @ v  # (B, H, k, d_v): F_i V_i
    return sdpa_attention(q, k_bar, v_bar, scale=scale)  # (B, H, N, d_v): softmax over k projected keys


class LinformerSelfAttention(nn.Module):
    """Multi-head self-attention with Linformer's learned projections, ``x: (B, N, C) -> (B, N, C)``.

    ``seq_len`` is the N of every input (E and F have one column per position); ``proj_len`` is
    k. ``sharing`` (Sec. 4): ``"none"``, ``"headwise"`` (the default: one E and one F per layer),
    ``"key-value"`` (one matrix for both) or ``"layerwise"`` (``shared=`` the one matrix of every
    layer, from :meth:`shared_projection`). Projections start as in Theorem 2 (``N(0, 1/k)``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        seq_len: int,
        proj_len: int = 256,
        *,
        sharing: str = "headwise",
        shared: nn.Parameter | None = None,
        causal: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        self.head_dim = check_heads(dim, num_heads)
        check_positive_int("seq_len", seq_len)
        _check_proj_len(proj_len, seq_len)
        check_flag("causal", causal)
        if causal:
            raise ValueError(_CAUSAL_ERROR)
        if sharing not in SHARING:
            raise ValueError(f"sharing must be one of {SHARING}, got {sharing!r}")
        if (sharing == "layerwise") != (shared is not None):
            raise ValueError("sharing='layerwise' needs shared= (LinformerSelfAttention.shared_projection), "
                             "and shared= is only for sharing='layerwise'")  # fmt: skip
        self.dim, self.num_heads, self.seq_len, self.proj_len, self.sharing = dim, num_heads, seq_len, proj_len, sharing
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        heads = (num_heads,) if sharing == "none" else ()
        if sharing == "layerwise":
            if not isinstance(shared, nn.Parameter) or tuple(shared.shape) != (proj_len, seq_len):
                got = tuple(shared.shape) if isinstance(shared, torch.Tensor) else type(shared).__name__
                raise ValueError(f"shared must be an nn.Parameter of shape (proj_len, seq_len) = "
                                 f"{(proj_len, seq_len)}, got {got}")  # fmt: skip
            self.E = shared
        else:
            self.E = nn.Parameter(torch.randn(*heads, proj_len, seq_len) * proj_len**-0.5)  # (k, N) or (H, k, N)
        if sharing in ("none", "headwise"):
            self.F = nn.Parameter(torch.randn(*heads, proj_len, seq_len) * proj_len**-0.5)
        else:
            self.F = None  # E projects the values too

    @staticmethod
    def shared_projection(seq_len: int, proj_len: int = 256) -> nn.Parameter:
        """One ``(k, N)`` projection for layerwise sharing: pass it as ``shared=`` to every layer."""
        check_positive_int("seq_len", seq_len)
        _check_proj_len(proj_len, seq_len)
        return nn.Parameter(torch.randn(proj_len, seq_len) * proj_len**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tokens("x", x, self.dim)
        check_like_module("x", x, self)
        B, N, C = x.shape
        if N != self.seq_len:
            raise ValueError(f"x must have seq_len={self.seq_len} tokens (E and F have one column per position), "
                             f"got N={N}")  # fmt: skip
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, H, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, d)
        out = linformer_attention(q, k, v, self.E, self.F)  # (B, H, N, d)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, C))  # (B, N, C)


class _LinformerMixer2d(GlobalSelfAttention2d):
    """Linformer over a ``height x width`` map, ``x: (B, H, W, C)``: ``seq_len = H W`` fixed at construction."""

    def __init__(self, dim: int, num_heads: int, height: int, width: int, proj_len: int):
        nn.Module.__init__(self)
        self.attn = LinformerSelfAttention(dim, num_heads, height * width, proj_len)


def make_mixer(dim: int, num_heads: int, height: int, width: int) -> GlobalSelfAttention2d:
    """Registry factory: Linformer over a ``height x width`` map, ``k = min(256, height * width)``, headwise sharing.

    Like MLP-Mixer's token-mixing weights, E and F have one column per pixel: one size of map.
    """
    check_positive_int("height", height)
    check_positive_int("width", width)
    return _LinformerMixer2d(dim, num_heads, height, width, min(256, height * width))
