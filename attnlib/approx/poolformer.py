"""PoolFormer: 3 x 3 average pooling as the token mixer of a MetaFormer block.

Yu et al., "MetaFormer Is Actually What You Need for Vision", CVPR 2022, arXiv:2111.11418.
Chapter: "PoolFormer" (chapters/*/08_poolformer.ipynb).

Contract: :class:`Pooling` and :class:`PoolFormerBlock` map ``x: (B, H, W, C)`` to the same
shape. Sec. 3.1 writes the MetaFormer block as

    Y = TokenMixer(Norm(X)) + X                      (2)
    Z = sigma(Norm(Y) W_1) W_2 + Y                   (3)

and Sec. 3.2, Eq. (4), picks the simplest token mixer there is, pooling:

    T'_{:,i,j} = 1/(K K) sum_{p,q=1..K} T_{:,i+p-(K+1)/2, j+q-(K+1)/2} - T_{:,i,j}     (4)

The identity is subtracted because the block adds its input back (the residual of Eq. (2)).
As in the official code (``Pooling``): ``AvgPool2d(pool_size, stride=1, padding=pool_size // 2,
count_include_pad=False)``, so a border pixel averages over the neighbours that exist: the
mixer of a constant image is zero everywhere, the borders included. The norm is GroupNorm with
one group (statistics over C, H and W of each image, an affine weight per channel), the MLP is
two position-wise linear maps with exact GELU (the official code's 1 x 1 convolutions), and
each branch is scaled by a learnable per-channel layer scale (initial value 1e-5), as there.

Cost: O(K^2 N C) time for N = H W tokens and no parameters; the mixer is a fixed, local,
content-independent linear map, :func:`pooling_mixing_matrix` (for figures and tests only).

Shape legend: B batch, H x W feature map, N = H W tokens, C channels, K pool size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import (
    check_batch,
    check_finite_number,
    check_flag,
    check_float_dtype,
    check_like_module,
    check_positive_finite,
    check_positive_int,
    check_tensor,
)

__all__ = ["Pooling", "GroupNorm1", "PoolFormerMlp", "PoolFormerBlock", "pooling_mixing_matrix", "make_mixer"]


def _check_pool_size(pool_size) -> None:
    check_positive_int("pool_size", pool_size)
    if pool_size % 2 == 0:
        raise ValueError(f"pool_size must be odd (the output keeps the input's H x W), got {pool_size}")


def _check_map(x, dim: int | None = None) -> None:
    """``x`` must be a ``(B, H, W, C)`` feature map with at least one pixel, with ``C == dim`` when given."""
    check_tensor("x", x, ndim=4)
    check_batch("x", x)
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise ValueError(f"x must have at least one pixel (H, W >= 1), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[-1] != dim:
        raise ValueError(f"x must have C={dim} channels in its last dimension, got shape {tuple(x.shape)}")


class Pooling(nn.Module):
    """The PoolFormer token mixer, Eq. (4): ``AvgPool(x) - x``, ``x: (B, H, W, C) -> (B, H, W, C)``.

    Padding is not counted in the average (``count_include_pad=False``, as the official code).
    """

    def __init__(self, pool_size: int = 3):
        super().__init__()
        _check_pool_size(pool_size)
        self.pool_size = pool_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x)
        channels_first = x.permute(0, 3, 1, 2)  # (B, C, H, W)
        pooled = F.avg_pool2d(
            channels_first, self.pool_size, stride=1, padding=self.pool_size // 2, count_include_pad=False
        )  # (B, C, H, W)
        return (pooled - channels_first).permute(0, 2, 3, 1)  # (B, H, W, C), Eq. (4)


class GroupNorm1(nn.Module):
    """GroupNorm with one group on a channels-last map: statistics over (H, W, C) of each image.

    The official code's ``GroupNorm(num_channels)`` = ``nn.GroupNorm(1, num_channels)`` (eps 1e-5),
    applied here to ``x: (B, H, W, C)``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__()
        check_positive_int("num_channels", num_channels)
        self.eps = check_positive_finite("eps", eps)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, self.weight.shape[0])
        check_like_module("x", x, self)
        out = F.group_norm(x.permute(0, 3, 1, 2), 1, self.weight, self.bias, self.eps)  # (B, C, H, W)
        return out.permute(0, 2, 3, 1)  # (B, H, W, C)


class PoolFormerMlp(nn.Module):
    """The channel MLP of Eq. (3): ``fc2(GELU(fc1(x)))`` on each position (1 x 1 convs in the official code)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("hidden_dim", hidden_dim)
        self.dim = dim
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # exact GELU, as nn.GELU() in the official code
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, self.dim)
        check_like_module("x", x, self)
        return self.fc2(self.act(self.fc1(x)))  # (B, H, W, C) via (B, H, W, hidden_dim)


class PoolFormerBlock(nn.Module):
    """One MetaFormer block with the pooling mixer, ``x: (B, H, W, C) -> (B, H, W, C)``.

    ``x = x + layer_scale_1 * token_mixer(norm1(x))`` (Eq. (2)), then
    ``x = x + layer_scale_2 * mlp(norm2(x))`` (Eq. (3)); names as in the official ``PoolFormerBlock``.
    """

    def __init__(
        self,
        dim: int,
        pool_size: int = 3,
        mlp_ratio: float = 4.0,
        use_layer_scale: bool = True,
        layer_scale_init_value: float = 1e-5,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_finite("mlp_ratio", mlp_ratio)
        check_flag("use_layer_scale", use_layer_scale)
        check_finite_number("layer_scale_init_value", layer_scale_init_value)
        self.dim = dim
        self.norm1 = GroupNorm1(dim)
        self.token_mixer = Pooling(pool_size)
        self.norm2 = GroupNorm1(dim)
        self.mlp = PoolFormerMlp(dim, max(1, int(dim * mlp_ratio)))
        self.use_layer_scale = use_layer_scale
        if use_layer_scale:
            self.layer_scale_1 = nn.Parameter(layer_scale_init_value * torch.ones(dim))  # (C,)
            self.layer_scale_2 = nn.Parameter(layer_scale_init_value * torch.ones(dim))  # (C,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_map(x, self.dim)
        check_like_module("x", x, self)
        mixed = self.token_mixer(self.norm1(x))  # (B, H, W, C)
        x = x + (self.layer_scale_1 * mixed if self.use_layer_scale else mixed)  # Eq. (2)
        channel = self.mlp(self.norm2(x))  # (B, H, W, C)
        return x + (self.layer_scale_2 * channel if self.use_layer_scale else channel)  # Eq. (3)


def pooling_mixing_matrix(height: int, width: int, pool_size: int = 3, *, dtype=torch.float64) -> torch.Tensor:
    """The ``(N, N)`` matrix ``M`` with ``Pooling(x)[i] = sum_j M[i, j] x[j]`` (tokens row-major).

    Row ``i`` holds ``1 / count_i`` on the ``count_i`` pixels of the ``K x K`` window around ``i``
    that lie inside the map, minus 1 on the diagonal: every row sums to zero. For figures and
    tests on small maps only (it is the N x N matrix the mixer never forms).
    """
    check_positive_int("height", height)
    check_positive_int("width", width)
    _check_pool_size(pool_size)
    check_float_dtype("dtype", dtype)
    radius = pool_size // 2
    rows = torch.arange(height).repeat_interleave(width)  # (N,) row of each token
    cols = torch.arange(width).repeat(height)  # (N,) column of each token
    inside = ((rows[:, None] - rows[None, :]).abs() <= radius) & ((cols[:, None] - cols[None, :]).abs() <= radius)
    window = inside.to(dtype)  # (N, N): 1 where token j is in the window of token i
    matrix = window / window.sum(dim=1, keepdim=True)  # (N, N) average over the pixels that exist
    return matrix - torch.eye(height * width, dtype=dtype)  # (N, N), Eq. (4)


def make_mixer(dim: int, num_heads: int, height: int, width: int) -> Pooling:
    """Registry factory: the pooling token mixer (3 x 3; it has no heads and no parameters)."""
    check_positive_int("dim", dim)
    check_positive_int("num_heads", num_heads)
    return Pooling(3)
