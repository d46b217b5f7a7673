"""PVT spatial-reduction attention (SRA): full-resolution queries, keys and values from a reduced map.

Wang et al., "Pyramid Vision Transformer: A Versatile Backbone for Dense Prediction without
Convolutions", ICCV 2021, arXiv:2102.12122, Sec. 3.3, Eq. (2)-(3). PVT v2 (arXiv:2106.13797) keeps
this attention in its main models and adds a *linear* SRA (PVT v2-li: average pooling of the keys
and values to a fixed 7 x 7 grid), which this module does not implement. Released PVT models use
``qkv_bias=True``. Chapter: "PVT" (chapters/*/03_pvt.ipynb).

Contract
--------
:class:`SpatialReductionAttention` maps a feature map ``x: (B, H, W, C)`` to the same shape.
Every pixel is a query; the keys and values come from the map reduced by ``R`` in each direction:

    SR(x)    = Norm(Reshape(x, R) W^S)                                   Eq. (3)
    SRA(Q, K, V) = Concat(head_0, ..., head_{nh-1}) W^O                  Eq. (2)
    head_j   = Attention(Q W_j^Q, SR(K) W_j^K, SR(V) W_j^V)

``Reshape(x, R) W^S`` cuts the map into ``R x R`` cells and maps each cell (``R^2 C`` numbers)
linearly to ``C`` channels: a convolution with kernel = stride = ``R`` (the official code's
``sr``), followed by LayerNorm (``norm``). Each query then attends to ``N / R^2`` keys, so the
score matrix is ``(N, N / R^2)``, never ``(N, N)``, and attention costs ``O(N^2 d / R^2)``.

Conventions (from the official code, ``Attention`` in ``pvt.py``)
-----------------------------------------------------------------
* Parameters ``q``, ``kv`` (keys and values in one linear map, keys first), ``sr``, ``norm``,
  ``proj``; ``qkv_bias=False`` by default as there; ``sr`` and ``norm`` exist only when ``R > 1``
  (``R = 1`` is ordinary global attention).
* **H or W not divisible by R**: the official code does not pad. Its convolution with
  kernel = stride = ``R`` keeps ``floor(H / R) x floor(W / R)`` cells, so the last ``H mod R``
  rows and ``W mod R`` columns feed no key (they are still queries). We do the same, and
  :func:`pvt_key_cells` shows which pixels feed each key.
* A reduction larger than the map (``R > H`` or ``R > W``) would leave no key: ``ValueError``.

Shape legend
------------
    B     batch                 H, W   height and width of the map    C   channels
    N     queries = H * W       R      reduction ratio (sr_ratio)     nh  heads, d = C / nh
    Hr, Wr  reduced map = H // R, W // R                              Nr  keys = Hr * Wr
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import (
    check_batch,
    check_fits_map,
    check_flag,
    check_heads,
    check_like_module,
    check_positive_int,
    check_query_key_value,
    check_tensor,
    resolve_scale,
)

__all__ = [
    "check_reduction",
    "reduced_size",
    "reduce_map",
    "sra_attention",
    "pvt_key_cells",
    "pvt_cell_index",
    "SpatialReductionAttention",
    "pvt_mixer",
]


def reduced_size(height: int, width: int, sr_ratio: int) -> tuple[int, int]:
    """``(Hr, Wr) = (height // sr_ratio, width // sr_ratio)``: the cells the reduction keeps."""
    check_reduction(height, width, sr_ratio)
    return height // sr_ratio, width // sr_ratio


def check_reduction(height: int, width: int, sr_ratio: int) -> None:
    """ValueError unless a ``height x width`` map keeps at least one ``sr_ratio x sr_ratio`` cell."""
    check_positive_int("height", height)
    check_positive_int("width", width)
    check_positive_int("sr_ratio", sr_ratio)
    check_fits_map("sr_ratio", sr_ratio, height, width, reason=" (a larger reduction leaves no key)")


def reduce_map(x: torch.Tensor, sr: nn.Conv2d, norm: nn.LayerNorm) -> torch.Tensor:
    """Eq. (3): ``(B, H, W, C)`` map -> ``(B, Nr, C)`` reduced tokens, ``Norm(conv_{R, stride R}(x))``.

    Written as the equation reads: cut the map into ``R x R`` cells, flatten each cell, multiply
    by ``W^S`` (the weight of the ``sr`` convolution, kernel = stride = ``R``, seen as a
    ``(C, C R^2)`` matrix). This equals ``sr`` applied to the map (a test checks it) and, on the
    CPU, avoids a layout conversion that made the convolution several times slower. Like the
    convolution it floors: the last ``H mod R`` rows and ``W mod R`` columns feed no key.
    """
    if not isinstance(sr, nn.Conv2d):
        raise TypeError(f"sr must be an nn.Conv2d (kernel = stride = R), got {type(sr).__name__}")
    if not isinstance(norm, nn.LayerNorm):
        raise TypeError(f"norm must be an nn.LayerNorm, got {type(norm).__name__}")
    R = sr.stride[0]
    if (
        sr.kernel_size != (R, R)
        or sr.stride != (R, R)
        or sr.padding != (0, 0)
        or sr.groups != 1
        or sr.dilation != (1, 1)
    ):
        raise ValueError(
            f"sr must be a plain convolution with kernel = stride = R and no padding, got "
            f"kernel_size={sr.kernel_size}, stride={sr.stride}, padding={sr.padding}, groups={sr.groups}, "
            f"dilation={sr.dilation}"
        )
    check_tensor("x", x, ndim=4)
    if x.shape[-1] != sr.in_channels:
        raise ValueError(
            f"x must be (B, H, W, C) with C = {sr.in_channels} (sr's input channels), got shape {tuple(x.shape)}"
        )
    B, H, W, C = x.shape
    check_reduction(H, W, R)
    Hr, Wr = H // R, W // R
    cells = x[:, : Hr * R, : Wr * R].reshape(B, Hr, R, Wr, R, C)  # (B, Hr, R, Wr, R, C): drop the remainder
    cells = cells.permute(0, 1, 3, 5, 2, 4).reshape(B, Hr * Wr, C * R * R)  # (B, Nr, C*R*R): Reshape(x, R)
    reduced = F.linear(cells, sr.weight.reshape(sr.out_channels, -1), sr.bias)  # (B, Nr, C): the conv as W^S
    return norm(reduced)  # (B, Nr, C)


def sra_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, fused: bool = True
) -> torch.Tensor:
    """Softmax attention of all queries against the reduced keys and values.

    ``q: (B, nh, N, d)``, ``k, v: (B, nh, Nr, d)`` -> ``(B, nh, N, d)``. The score matrix is
    ``(N, Nr)``: small because ``Nr = N / R^2``. ``fused=True`` runs PyTorch's fused kernel;
    ``fused=False`` writes softmax out (the textbook path). Both give the same result.
    """
    check_query_key_value(q, k, v, key_tokens="Nr")
    scale = resolve_scale(scale, q.shape[-1] ** -0.5)
    check_flag("fused", fused)
    if fused:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, nh, N, d)
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, nh, N, Nr): the whole score matrix, N x N / R^2
    return scores.softmax(dim=-1) @ v  # (B, nh, N, d)


def pvt_cell_index(height: int, width: int, sr_ratio: int) -> torch.Tensor:
    """``(H, W)`` long tensor: the reduced key each pixel feeds (row-major), ``-1`` for dropped pixels."""
    rows, cols = reduced_size(height, width, sr_ratio)
    cell_row = torch.arange(height) // sr_ratio  # (H,)
    cell_col = torch.arange(width) // sr_ratio  # (W,)
    index = cell_row[:, None] * cols + cell_col[None, :]  # (H, W)
    kept = (cell_row[:, None] < rows) & (cell_col[None, :] < cols)  # (H, W): inside a whole cell
    return torch.where(kept, index, torch.full_like(index, -1))  # (H, W)


def pvt_key_cells(height: int, width: int, sr_ratio: int) -> torch.Tensor:
    """The pattern: boolean ``(Nr, N)``, True where input pixel ``p`` feeds reduced key ``j``.

    Each key reads one ``R x R`` cell; each query attends to all ``Nr`` keys (no query-key mask).
    """
    index = pvt_cell_index(height, width, sr_ratio).flatten()  # (N,)
    rows, cols = reduced_size(height, width, sr_ratio)
    return index[None, :] == torch.arange(rows * cols)[:, None]  # (Nr, N)


class SpatialReductionAttention(nn.Module):
    """PVT's spatial-reduction attention, ``x: (B, H, W, C) -> (B, H, W, C)`` (Eq. (2)-(3)).

    Parameter names as in the official code: ``q``, ``kv``, ``sr``, ``norm``, ``proj``.
    Chapter: chapters/*/03_pvt.ipynb.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        sr_ratio: int = 8,
        *,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("num_heads", num_heads)
        check_positive_int("sr_ratio", sr_ratio)
        check_heads(dim, num_heads)
        check_flag("qkv_bias", qkv_bias)
        self.dim, self.num_heads, self.sr_ratio = dim, num_heads, sr_ratio
        self.head_dim = dim // num_heads
        self.scale = resolve_scale(qk_scale, self.head_dim**-0.5)  # qk_scale=0.0 is kept (not `qk_scale or ...`)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)  # Eq. (3): Reshape then W^S
            self.norm = nn.LayerNorm(dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, sr_ratio={self.sr_ratio}"

    def _check_input(self, x) -> None:
        check_tensor("x", x, ndim=4)
        if x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, H, W, C) with C={self.dim} channels, got shape {tuple(x.shape)}")
        check_reduction(x.shape[1], x.shape[2], self.sr_ratio)
        check_batch("x", x)
        check_like_module("x", x, self)

    def reduced_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, Nr, C)``: the tokens keys and values are computed from."""
        self._check_input(x)
        if self.sr_ratio == 1:
            return x.flatten(1, 2)  # (B, N, C)
        return reduce_map(x, self.sr, self.norm)  # (B, Nr, C)

    def _qkv(self, x: torch.Tensor):
        B, H, W, C = x.shape
        q = self.q(x.flatten(1, 2)).view(B, H * W, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, N, d)
        reduced = self.reduced_tokens(x)  # (B, Nr, C)
        kv = self.kv(reduced).view(B, -1, 2, self.num_heads, self.head_dim)  # (B, Nr, 2, nh, d)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, nh, Nr, d)
        return q, k, v

    def forward(self, x: torch.Tensor, *, fused: bool = True) -> torch.Tensor:
        self._check_input(x)
        check_flag("fused", fused)
        B, H, W, C = x.shape
        q, k, v = self._qkv(x)
        out = sra_attention(q, k, v, scale=self.scale, fused=fused)  # (B, nh, N, d)
        out = out.transpose(1, 2).reshape(B, H, W, C)  # (B, H, W, C)
        return self.proj(out)

    @torch.no_grad()
    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax weights ``(B, nh, N, Nr)`` of every query over the reduced keys (for figures)."""
        self._check_input(x)
        q, k, _ = self._qkv(x)
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, nh, N, Nr)


def pvt_mixer(dim: int, num_heads: int, height: int, width: int) -> SpatialReductionAttention:
    """Registry factory: PVT stage-1 spatial reduction (``R = 8``) over a ``height x width`` map."""
    check_reduction(height, width, 8)
    return SpatialReductionAttention(dim, num_heads, sr_ratio=8)
