"""CoaT conv-attention: factorized attention plus a convolutional relative position encoding.

Xu, Xu, Chang, Tu, "Co-Scale Conv-Attentional Image Transformers", ICCV 2021, arXiv:2104.06399,
Sec. 3 (conv-attention). Chapter: "CoaT" (chapters/*/09_coat.ipynb).

Contract: :class:`FactorAttConvRelPosEnc` maps tokens ``x: (B, 1 + H W, C)`` (a class token
first, then the ``H x W`` map row-major) and ``size = (H, W)`` to ``(B, 1 + H W, C)``, like the
official ``FactorAtt_ConvRelPosEnc``; :class:`CoaTMixer2d` wraps it for the vision-mixer
interface ``x: (B, H, W, C)`` (optionally with a class token ``(B, 1, C)``).

The equations (per head, ``d`` channels per head, softmax over the N tokens of each key channel):

    FactorAtt(X) = Q / sqrt(d) (softmax(K)^T V)                              Eq. (2)
    EV^ = Q o DepthwiseConv2D(P, V)  (image tokens; zero for the class token)  Eq. (3)-(4)
    ConvAtt(X) = Q / sqrt(d) (softmax(K)^T V) + EV^                          Eq. (5)

``softmax(K)^T V`` is a ``(d, d)`` context per head, so the cost is ``O(N d^2)`` per head,
``O(N C^2 / heads)`` in all, instead of the ``O(N^2 C)`` of softmax attention; no ``N x N`` tensor
is formed (a test records every shape). The scale multiplies the factorized term only, as in
the official code (``x = self.scale * factor_att + crpe``); the scale is ``head_dim ** -0.5``
(the paper writes ``1/sqrt(C)`` for one head). The position term ``EV^`` is the relative
position encoding realized as depthwise convolutions of the values, gated element-wise by the
queries; kernel sizes are split across heads by ``window`` (kernel size -> number of heads), the
official default for 8 heads being ``{3: 2, 5: 3, 7: 3}``. The class token takes part in the
factorized term and gets no position term (a zero row), as in the paper and the code. Biases as
there: the depthwise convolutions have one (so ``EV^`` is affine in V), ``qkv_bias`` is True in
the released CoaT models. Left out: the convolutional position encoding (``ConvPosEnc``, a
depthwise 3 x 3 convolution added to the block's input) and the co-scale parallel blocks.

Effective mixing matrix (figures and tests on small maps only): for fixed Q and K the output
of channel ``c`` is ``M_c V[:, c] + offset[:, c]`` with
``M_c = Q softmax(K)^T / sqrt(d) + diag(Q[:, c]) T_c`` (``T_c`` the convolution as a matrix):
:func:`conv_att_mixing_matrix`. The factorized part has rank at most ``d``.

Shape legend: B batch, h heads, N = 1 + H W tokens (class token first) or H W without it,
H x W feature map, C channels, d = C / h channels per head.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import (
    check_batch,
    check_flag,
    check_float_dtype,
    check_heads,
    check_like_module,
    check_positive_int,
    check_tensor,
    resolve_scale,
)

__all__ = [
    "factorized_attention",
    "default_window",
    "ConvRelPosEnc",
    "FactorAttConvRelPosEnc",
    "CoaTMixer2d",
    "conv_att_mixing_matrix",
    "make_mixer",
]


def factorized_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None):
    """Eq. (2): ``scale * Q (softmax_N(K)^T V)``, ``q, k, v: (B, h, N, d) -> (B, h, N, d)``.

    The softmax runs over the tokens (dim -2) of each key channel. Cost ``O(N d^2)`` per head;
    the ``(d, d)`` context replaces the ``(N, N)`` attention matrix. ``scale`` defaults to ``d ** -0.5``.
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=4)
    if not (q.shape[:2] == k.shape[:2] == v.shape[:2]):
        raise ValueError(f"q, k, v must share (B, h), got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same number of tokens, got k {k.shape[2]}, v {v.shape[2]}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q and k must have the same head dimension, got q {q.shape[3]}, k {k.shape[3]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got q {q.device}, k {k.device}, v {v.device}")
    if 0 in q.shape or 0 in k.shape or 0 in v.shape:
        raise ValueError(
            f"q, k, v must have at least one batch element, head, token and channel (at least one token "
            f"for the softmax over tokens), got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    scale = resolve_scale(scale, q.shape[-1] ** -0.5)
    k_softmax = k.softmax(dim=-2)  # (B, h, N, d): softmax over the tokens
    context = k_softmax.transpose(-2, -1) @ v  # (B, h, d, d_v)
    return scale * (q @ context)  # (B, h, N, d_v), Eq. (2)


def default_window(num_heads: int) -> dict[int, int]:
    """Kernel sizes 3, 5, 7 split across ``num_heads`` as evenly as possible, the remainder to the
    larger kernels: 8 heads give the official ``{3: 2, 5: 3, 7: 3}``, 3 heads ``{3: 1, 5: 1, 7: 1}``."""
    check_positive_int("num_heads", num_heads)
    sizes = (3, 5, 7)
    base, extra = divmod(num_heads, len(sizes))
    split = {size: base + (1 if i >= len(sizes) - extra else 0) for i, size in enumerate(sizes)}
    return {size: heads for size, heads in split.items() if heads > 0}


def _check_window(window, num_heads: int) -> dict[int, int]:
    if isinstance(window, int) and not isinstance(window, bool):
        window = {window: num_heads}
    if not isinstance(window, dict) or not window:
        raise ValueError(f"window must be an odd int or a dict {{kernel size: heads}}, got {window!r}")
    for size, heads in window.items():
        check_positive_int("window kernel size", size)
        check_positive_int("window head split", heads)
        if size % 2 == 0:
            raise ValueError(f"window kernel sizes must be odd (same-size output), got {size} in {window!r}")
    if sum(window.values()) != num_heads:
        raise ValueError(f"window's head splits must sum to num_heads={num_heads}, got {window!r}")
    return dict(window)


def _check_prefix(num_prefix_tokens) -> None:
    if isinstance(num_prefix_tokens, bool) or not isinstance(num_prefix_tokens, int) or num_prefix_tokens not in (0, 1):
        raise ValueError(f"num_prefix_tokens must be 0 or 1 (a class token), got {num_prefix_tokens!r}")


def _check_size(size) -> tuple[int, int]:
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise ValueError(f"size must be a pair (H, W), got {size!r}")
    check_positive_int("size[0] (H)", size[0])
    check_positive_int("size[1] (W)", size[1])
    return int(size[0]), int(size[1])


class ConvRelPosEnc(nn.Module):
    """The convolutional relative position encoding, Eq. (3)-(4): ``EV^ = Q o DepthwiseConv2D(V)``.

    Args (names as the official ``ConvRelPosEnc(Ch, h, window)``):
        head_dim: channels per head ``d`` (``Ch``).
        num_heads: heads ``h``.
        window: kernel size -> number of heads using it (or one odd int for all heads).
    """

    def __init__(self, head_dim: int, num_heads: int, window: dict[int, int] | int):
        super().__init__()
        check_positive_int("head_dim", head_dim)
        check_positive_int("num_heads", num_heads)
        self.window = _check_window(window, num_heads)
        self.head_dim, self.num_heads = head_dim, num_heads
        self.head_splits = list(self.window.values())
        self.channel_splits = [heads * head_dim for heads in self.head_splits]
        self.conv_list = nn.ModuleList(
            nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)  # depthwise
            for kernel_size, channels in zip(self.window, self.channel_splits)
        )

    def convolve_values(self, v_img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``DepthwiseConv2D(P, V)`` on image tokens: ``(B, h, H W, d) -> (B, h, H W, d)``."""
        H, W = _check_size(size)
        check_tensor("v_img", v_img, ndim=4)
        if tuple(v_img.shape[1:]) != (self.num_heads, H * W, self.head_dim):
            raise ValueError(
                f"v_img must be (B, h={self.num_heads}, H*W={H * W}, d={self.head_dim}) for size=({H}, {W}), "
                f"got shape {tuple(v_img.shape)}"
            )
        B, h, N_img, d = v_img.shape
        v_map = v_img.transpose(2, 3).reshape(B, h * d, H, W)  # (B, h d, H, W): head-major channels
        pieces = torch.split(v_map, self.channel_splits, dim=1)  # heads grouped by kernel size
        conv_v = torch.cat([conv(piece) for conv, piece in zip(self.conv_list, pieces)], dim=1)  # (B, h d, H, W)
        return conv_v.reshape(B, h, d, N_img).transpose(2, 3)  # (B, h, H W, d)

    def forward(self, q: torch.Tensor, v: torch.Tensor, size, *, num_prefix_tokens: int = 1) -> torch.Tensor:
        """``q, v: (B, h, N, d)`` with ``N = num_prefix_tokens + H W``; returns ``EV^: (B, h, N, d)``."""
        H, W = _check_size(size)
        _check_prefix(num_prefix_tokens)
        check_tensor("q", q, ndim=4)
        check_tensor("v", v, ndim=4)
        if q.shape != v.shape or q.shape[1] != self.num_heads or q.shape[3] != self.head_dim:
            raise ValueError(
                f"q and v must both be (B, h={self.num_heads}, N, d={self.head_dim}), "
                f"got q {tuple(q.shape)}, v {tuple(v.shape)}"
            )
        if q.shape[2] != num_prefix_tokens + H * W:
            raise ValueError(f"q and v must have {num_prefix_tokens} + H*W = {num_prefix_tokens + H * W} tokens "
                             f"for size={size}, got N={q.shape[2]}")  # fmt: skip
        q_img, v_img = q[:, :, num_prefix_tokens:], v[:, :, num_prefix_tokens:]  # (B, h, H W, d)
        ev_img = q_img * self.convolve_values(v_img, (H, W))  # (B, h, H W, d), Eq. (4): gated by Q
        return F.pad(ev_img, (0, 0, num_prefix_tokens, 0))  # (B, h, N, d): zero for the class token


class FactorAttConvRelPosEnc(nn.Module):
    """Conv-attention, Eq. (5): ``proj(scale * Q (softmax(K)^T V) + Q o DWConv(V))``.

    ``forward(x, size)``: ``x: (B, 1 + H W, C)``, class token first, ``size = (H, W)``.

    Args:
        dim: channels ``C``; ``num_heads`` must divide it.
        num_heads: heads ``h``.
        qkv_bias: bias of the q, k, v projection (True in the released CoaT models).
        window: kernel size -> heads for the position encoding; None = :func:`default_window`.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, window: dict[int, int] | None = None):
        super().__init__()
        check_heads(dim, num_heads)
        check_flag("qkv_bias", qkv_bias)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.crpe = ConvRelPosEnc(self.head_dim, num_heads, default_window(num_heads) if window is None else window)

    def qkv_heads(self, x: torch.Tensor):
        """``x: (B, N, C)`` -> ``q, k, v``, each ``(B, h, N, d)``."""
        check_tensor("x", x, ndim=3)
        if x.shape[-1] != self.dim:
            raise ValueError(f"x must have C={self.dim} channels in its last dimension, got shape {tuple(x.shape)}")
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, h, d)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)

    def mix_heads(self, x: torch.Tensor, size, num_prefix_tokens: int) -> torch.Tensor:
        """The heads' output before the projection, ``(B, h, N, d)``: Eq. (5) per head."""
        q, k, v = self.qkv_heads(x)  # each (B, h, N, d)
        factor_att = factorized_attention(q, k, v, scale=1.0)  # (B, h, N, d), Eq. (2) unscaled
        crpe = self.crpe(q, v, size, num_prefix_tokens=num_prefix_tokens)  # (B, h, N, d), Eq. (3)-(4)
        return self.scale * factor_att + crpe  # (B, h, N, d), Eq. (5): the scale on the factorized term only

    def _forward(self, x: torch.Tensor, size, num_prefix_tokens: int) -> torch.Tensor:
        B, N, C = x.shape
        heads = self.mix_heads(x, size, num_prefix_tokens)  # (B, h, N, d)
        return self.proj(heads.transpose(1, 2).reshape(B, N, C))  # (B, N, C)

    def _check_tokens(self, x, size, num_prefix_tokens: int) -> tuple[int, int]:
        check_tensor("x", x, ndim=3)
        check_batch("x", x)
        check_like_module("x", x, self)
        H, W = _check_size(size)
        if x.shape[-1] != self.dim:
            raise ValueError(f"x must have C={self.dim} channels in its last dimension, got shape {tuple(x.shape)}")
        if x.shape[1] != num_prefix_tokens + H * W:
            raise ValueError(
                f"x must have {num_prefix_tokens} + H*W = {num_prefix_tokens + H * W} tokens for size=({H}, {W})"
                f"{' (the class token first)' if num_prefix_tokens else ''}, got N={x.shape[1]}"
            )
        return H, W

    def forward(self, x: torch.Tensor, size) -> torch.Tensor:
        size = self._check_tokens(x, size, 1)
        return self._forward(x, size, 1)  # (B, 1 + H W, C)


class CoaTMixer2d(nn.Module):
    """Conv-attention as a vision token mixer: ``x: (B, H, W, C) -> (B, H, W, C)``.

    ``forward(x)`` mixes the ``H W`` image tokens alone (no class token: the benchmark's setting);
    ``forward(x, cls_token)`` with ``cls_token: (B, 1, C)`` puts it first, as CoaT does, and returns
    ``(map, cls_token_out)``.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, window: dict[int, int] | None = None):
        super().__init__()
        self.attn = FactorAttConvRelPosEnc(dim, num_heads, qkv_bias=qkv_bias, window=window)

    def forward(self, x: torch.Tensor, cls_token: torch.Tensor | None = None):
        check_tensor("x", x, ndim=4)
        check_batch("x", x)
        check_like_module("x", x, self)
        B, H, W, C = x.shape
        if C != self.attn.dim:
            raise ValueError(f"x must be (B, H, W, C) with C={self.attn.dim} channels, got shape {tuple(x.shape)}")
        tokens = x.reshape(B, H * W, C)  # (B, H W, C)
        if cls_token is None:
            self.attn._check_tokens(tokens, (H, W), 0)
            return self.attn._forward(tokens, (H, W), 0).view(B, H, W, C)  # (B, H, W, C)
        check_tensor("cls_token", cls_token, ndim=3)
        if cls_token.shape != (B, 1, C):
            raise ValueError(f"cls_token must have shape (B, 1, C) = {(B, 1, C)}, got {tuple(cls_token.shape)}")
        if cls_token.device != x.device:
            raise ValueError(f"cls_token must be on the device of x ({x.device}), got {cls_token.device}")
        if cls_token.dtype != x.dtype:
            raise TypeError(f"cls_token must have the dtype of x ({x.dtype}), got {cls_token.dtype}")
        out = self.attn(torch.cat([cls_token, tokens], dim=1), (H, W))  # (B, 1 + H W, C)
        return out[:, 1:].reshape(B, H, W, C), out[:, :1]  # (B, H, W, C), (B, 1, C)


def _conv_matrices(crpe: ConvRelPosEnc, size: tuple[int, int], dtype) -> torch.Tensor:
    """Each channel's depthwise convolution (bias excluded) as a matrix: ``(h, d, H W, H W)``."""
    H, W = size
    N_img = H * W
    basis = torch.eye(N_img, dtype=dtype, device=crpe.conv_list[0].weight.device)  # (H W, H W): one image per token
    one_hot = basis.reshape(N_img, 1, 1, N_img).expand(N_img, crpe.num_heads, crpe.head_dim, N_img)  # (HW, h, d, HW)
    pieces = torch.split(one_hot.reshape(N_img, -1, H, W), crpe.channel_splits, dim=1)
    convolved = [
        F.conv2d(p, conv.weight.to(dtype), None, padding=conv.padding, groups=conv.groups)
        for conv, p in zip(crpe.conv_list, pieces)
    ]  # (HW, channels, H, W) each
    response = torch.cat(convolved, dim=1).reshape(N_img, crpe.num_heads, crpe.head_dim, N_img)  # [j, h, c, i]
    return response.permute(1, 2, 3, 0)  # (h, d, H W, H W): [h, c, i, j] = weight of input j in output i


@torch.no_grad()
def conv_att_mixing_matrix(
    attn: FactorAttConvRelPosEnc, x: torch.Tensor, size, *, num_prefix_tokens: int = 1, dtype=torch.float64
):
    """Effective mixing matrices of conv-attention at input ``x: (B, num_prefix_tokens + H W, C)``.

    Returns ``(factorized, position, offset)``: ``factorized: (B, h, N, N)`` is
    ``scale * Q softmax(K)^T`` (the same for every channel of a head, rank <= d),
    ``position: (B, h, d, N, N)`` is ``diag(Q[:, c]) T_c`` (zero rows and columns for the class
    token), ``offset: (B, h, N, d)`` is ``Q o conv_bias``, such that the heads' output is
    ``(factorized + position[..., c, :, :]) @ V[..., c] + offset[..., c]`` for each channel ``c``.
    Computed in ``dtype`` (float64 by default, for figures). Small maps only: these ARE the N x N matrices.
    """
    if not isinstance(attn, FactorAttConvRelPosEnc):
        raise TypeError(f"attn must be a FactorAttConvRelPosEnc, got {type(attn).__name__}")
    _check_prefix(num_prefix_tokens)
    check_float_dtype("dtype", dtype)
    H, W = attn._check_tokens(x, size, num_prefix_tokens)
    p = num_prefix_tokens
    q, k, v = (t.to(dtype) for t in attn.qkv_heads(x))  # each (B, h, N, d)
    B, h, N, d = q.shape
    factorized = attn.scale * q @ k.softmax(dim=-2).transpose(-2, -1)  # (B, h, N, N)
    conv = _conv_matrices(attn.crpe, (H, W), dtype)  # (h, d, HW, HW)
    q_img = q[:, :, p:].transpose(2, 3)  # (B, h, d, HW)
    position = torch.zeros(B, h, d, N, N, dtype=dtype, device=x.device)  # (B, h, d, N, N)
    position[..., p:, p:] = q_img[..., :, None] * conv  # (B, h, d, HW, HW): diag(Q[:, c]) T_c
    bias = torch.cat([conv.bias for conv in attn.crpe.conv_list]).to(dtype).view(h, d)  # (h, d)
    offset = F.pad(q[:, :, p:] * bias[:, None, :], (0, 0, p, 0))  # (B, h, N, d)
    return factorized, position, offset


def make_mixer(dim: int, num_heads: int, height: int, width: int) -> CoaTMixer2d:
    """Registry factory: conv-attention on a ``height x width`` map (no class token), default window."""
    check_positive_int("height", height)
    check_positive_int("width", width)
    return CoaTMixer2d(dim, num_heads)
