"""MLP-Mixer: a token-mixing MLP across patches and a channel-mixing MLP, no attention.

Tolstikhin et al., "MLP-Mixer: An all-MLP Architecture for Vision", NeurIPS 2021,
arXiv:2105.01601. Chapter: "MLP-Mixer" (chapters/*/07_mlp_mixer.ipynb).

Contract: :class:`MixerBlock` and :class:`TokenMixing` map ``x: (B, H, W, C)`` to the same shape;
both are built for one number of patches ``S = H W`` (``num_patches``) and refuse any other.
Sec. 2, Eq. (1), with ``X`` the ``(S, C)`` table of patches and ``sigma`` the GELU:

    U_{*,i} = X_{*,i} + W_2 sigma(W_1 LayerNorm(X)_{*,i}),   i = 1..C      (token mixing)
    Y_{j,*} = U_{j,*} + W_4 sigma(W_3 LayerNorm(U)_{j,*}),   j = 1..S      (channel mixing)

``W_1: (D_S, S)`` and ``W_2: (S, D_S)`` are shared by all channels; ``W_3: (D_C, C)`` and
``W_4: (C, D_C)`` by all patches. The token-mixing width ``D_S`` (``tokens_mlp_dim``) is a
hyperparameter of its own, as in the paper (its Table 1 uses ``D_S = C / 2``); timm ties it to
``0.5 * C`` through ``mlp_ratio=(0.5, 4.0)``, and that is the default here when ``tokens_mlp_dim``
is None (``channels_mlp_dim`` defaults to ``4 C``). Names follow the official JAX code
(``MlpBlock``, ``token_mixing``, ``channel_mixing``, ``tokens_mlp_dim``, ``channels_mlp_dim``).
GELU is exact (``nn.GELU()``, as timm; the official JAX code calls flax's ``nn.gelu``, whose
default is the tanh approximation). LayerNorm eps is 1e-6, as both.

Cost of the token mixing: ``O(S D_S C)`` time and ``2 S D_S + S + D_S`` parameters. With
``D_S`` fixed (or tied to C) both grow linearly with ``S``: the weights are sized for one
resolution. The token mixer is content-independent up to the GELU: its effective mixing matrix
(:func:`token_mixing_jacobian`) is the learned ``W_2 diag(sigma'(.)) W_1`` of each channel.

Shape legend: B batch, H x W feature map, S = N = H W patches (tokens), C channels,
D_S token-mixing hidden width, D_C channel-mixing hidden width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_batch, check_like_module, check_positive_int, check_tensor

__all__ = ["MlpBlock", "TokenMixing", "MixerBlock", "token_mixing_jacobian", "make_mixer"]


def _check_map(x, num_patches: int, dim: int | None = None) -> None:
    """``x`` must be ``(B, H, W, C)`` with ``H * W == num_patches`` (and ``C == dim`` when given)."""
    check_tensor("x", x, ndim=4)
    check_batch("x", x)
    B, H, W, C = x.shape
    if H * W != num_patches:
        raise ValueError(
            f"x has H*W = {H}*{W} = {H * W} patches, but the token-mixing MLP was built for "
            f"num_patches={num_patches}; build one per resolution"
        )
    if dim is not None and C != dim:
        raise ValueError(f"x must have C={dim} channels in its last dimension, got shape {tuple(x.shape)}")


class MlpBlock(nn.Module):
    """``fc2(GELU(fc1(x)))`` on the last dimension: ``(..., dim) -> (..., dim)`` via ``mlp_dim``."""

    def __init__(self, dim: int, mlp_dim: int):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("mlp_dim", mlp_dim)
        self.dim = dim
        self.fc1 = nn.Linear(dim, mlp_dim)  # W_1 (or W_3) and its bias
        self.act = nn.GELU()  # exact GELU
        self.fc2 = nn.Linear(mlp_dim, dim)  # W_2 (or W_4) and its bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x)
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"x must have {self.dim} channels in its last dimension, got shape {tuple(x.shape)}")
        check_like_module("x", x, self)
        return self.fc2(self.act(self.fc1(x)))  # (..., dim) via (..., mlp_dim)


class TokenMixing(nn.Module):
    """The token mixer alone: the token-mixing MLP applied to every channel, ``(B, H, W, C) -> (B, H, W, C)``.

    ``out[:, c] = W_2 GELU(W_1 x[:, c] + b_1) + b_2`` for each channel ``c`` (Eq. (1) without the
    norm and the residual, which belong to the block). This is what fills the token-mixer slot
    of a MetaFormer block, and what the benchmark times.
    """

    def __init__(self, num_patches: int, tokens_mlp_dim: int):
        super().__init__()
        check_positive_int("num_patches", num_patches)
        self.num_patches = num_patches
        self.mlp = MlpBlock(num_patches, tokens_mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, self.num_patches)
        check_like_module("x", x, self)
        B, H, W, C = x.shape
        per_channel = x.reshape(B, H * W, C).transpose(1, 2)  # (B, C, S): one row of S patches per channel
        mixed = self.mlp(per_channel)  # (B, C, S), shared across channels
        return mixed.transpose(1, 2).reshape(B, H, W, C)  # (B, H, W, C)


class MixerBlock(nn.Module):
    """One Mixer layer, Eq. (1): token mixing then channel mixing, each pre-norm with a residual.

    Args:
        dim: channels ``C``.
        num_patches: ``S = H W``, the number of patches the token-mixing MLP is built for.
        tokens_mlp_dim: ``D_S``; None = ``int(0.5 * C)`` (timm's tie; the paper's Table 1 values).
        channels_mlp_dim: ``D_C``; None = ``4 C``.
    """

    def __init__(
        self, dim: int, num_patches: int, tokens_mlp_dim: int | None = None, channels_mlp_dim: int | None = None
    ):
        super().__init__()
        check_positive_int("dim", dim)
        tokens_mlp_dim = max(1, int(0.5 * dim)) if tokens_mlp_dim is None else tokens_mlp_dim
        channels_mlp_dim = 4 * dim if channels_mlp_dim is None else channels_mlp_dim
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.token_mixing = TokenMixing(num_patches, tokens_mlp_dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.channel_mixing = MlpBlock(dim, channels_mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, self.token_mixing.num_patches, self.dim)
        check_like_module("x", x, self)
        u = x + self.token_mixing(self.norm1(x))  # (B, H, W, C), Eq. (1) first line
        return u + self.channel_mixing(self.norm2(u))  # (B, H, W, C), Eq. (1) second line


def _gelu_derivative(h: torch.Tensor) -> torch.Tensor:
    """d GELU(h) / dh for the exact GELU ``h Phi(h)``: ``Phi(h) + h phi(h)``."""
    cdf = 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * h * h) / math.sqrt(2.0 * math.pi)
    return cdf + h * pdf


def token_mixing_jacobian(mixer: TokenMixing, x: torch.Tensor) -> torch.Tensor:
    """The effective mixing matrix of the token mixer at ``x``: ``(B, C, S, S)``.

    ``J[b, c, i, j] = d out[b, i, c] / d x[b, j, c] = (W_2 diag(GELU'(W_1 x[b, :, c] + b_1)) W_1)[i, j]``,
    the learned token weights linearized at the input, one matrix per channel (the output of
    channel ``c`` depends on channel ``c`` only). For figures and tests on small maps only.
    """
    if not isinstance(mixer, TokenMixing):
        raise TypeError(f"mixer must be a TokenMixing, got {type(mixer).__name__}")
    _check_map(x, mixer.num_patches)
    B, H, W, C = x.shape
    per_channel = x.reshape(B, H * W, C).transpose(1, 2)  # (B, C, S)
    w1, w2 = mixer.mlp.fc1.weight, mixer.mlp.fc2.weight  # (D_S, S), (S, D_S)
    hidden = mixer.mlp.fc1(per_channel)  # (B, C, D_S)
    slope = _gelu_derivative(hidden)  # (B, C, D_S)
    return torch.einsum("ik,bck,kj->bcij", w2, slope, w1)  # (B, C, S, S)


def make_mixer(dim: int, num_heads: int, height: int, width: int) -> TokenMixing:
    """Registry factory: the token-mixing MLP for a ``height x width`` map, ``D_S = C / 2`` (timm's tie).

    The weights are sized by ``height * width``: one mixer per resolution.
    """
    check_positive_int("dim", dim)
    check_positive_int("num_heads", num_heads)
    check_positive_int("height", height)
    check_positive_int("width", width)
    return TokenMixing(height * width, max(1, dim // 2))
