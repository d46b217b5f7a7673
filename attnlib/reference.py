"""Dense softmax attention: the ground truth every other method is tested against.

Vaswani et al., "Attention Is All You Need", NeurIPS 2017, Eq. (1):

    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V

This module *materializes* the (N_q, N_k) score matrix on purpose: it is the
readable definition, and its O(N^2) memory is exactly what the rest of the book
tries to avoid. Chapter: "Introduction" (chapters/*/00_introduction.ipynb).

Masking convention (one for the whole library)
----------------------------------------------
* ``mask`` is boolean and **True means "this query may attend to this key"**,
  as in ``torch.nn.functional.scaled_dot_product_attention``. It broadcasts to
  ``(B, H, N_q, N_k)``.
* ``causal=True`` lets query ``i`` see key ``j`` iff ``j <= i + (N_k - N_q)``:
  queries are aligned to the *end* of the keys. With ``N_q == N_k`` this is the
  usual lower-triangular mask; with ``N_q < N_k`` it is what decoding with a KV
  cache needs (the new queries are the last ``N_q`` positions). Note that
  PyTorch's SDPA aligns ``causal`` to the top-left instead; the two agree when
  ``N_q == N_k``.
* A query row whose keys are all masked out gets an output of **zeros** and a
  logsumexp of ``-inf`` (never NaN).

Grouped heads: ``k`` and ``v`` may have ``H_kv`` heads with ``H_kv`` dividing
``H``; query head ``h`` reads key/value head ``h // (H // H_kv)`` (multi-query
attention when ``H_kv == 1``). This matches SDPA's ``enable_gqa``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import (
    check_flag,
    check_heads,
    check_mask,
    check_positive_int,
    check_qkv,
    check_tensor,
    check_tokens,
    resolve_scale,
)

__all__ = [
    "attention",
    "attention_weights",
    "sdpa_attention",
    "causal_mask",
    "expand_kv_heads",
    "MultiHeadSelfAttention",
    "GlobalSelfAttention2d",
    "dense_global_mixer",
    "sdpa_global_mixer",
]


def causal_mask(N_q: int, N_k: int, device=None) -> torch.Tensor:
    """Boolean ``(N_q, N_k)`` mask, True where query ``i`` may see key ``j <= i + N_k - N_q``."""
    check_positive_int("N_q", N_q)
    check_positive_int("N_k", N_k)
    query_pos = torch.arange(N_q, device=device)[:, None] + (N_k - N_q)  # (N_q, 1)
    key_pos = torch.arange(N_k, device=device)[None, :]  # (1, N_k)
    return key_pos <= query_pos  # (N_q, N_k)


def expand_kv_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Repeat ``(B, H_kv, N, d)`` key/value heads to ``(B, H, N, d)`` (grouped-query attention)."""
    check_tensor("x", x, ndim=4, floating=False)
    check_positive_int("num_heads", num_heads)
    if x.shape[1] == 0 or num_heads % x.shape[1] != 0:
        raise ValueError(
            f"num_heads must be a multiple of the key/value heads of x, got num_heads={num_heads} and "
            f"x with H_kv={x.shape[1]} (shape {tuple(x.shape)})"
        )
    group = num_heads // x.shape[1]
    return x if group == 1 else x.repeat_interleave(group, dim=1)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Dense softmax attention, Eq. (1) of Vaswani et al. (2017).

    Args:
        q: ``(B, H, N_q, d)`` queries.
        k: ``(B, H_kv, N_k, d)`` keys, ``H_kv`` dividing ``H``.
        v: ``(B, H_kv, N_k, d_v)`` values.
        mask: optional boolean mask broadcastable to ``(B, H, N_q, N_k)``; True = may attend.
        causal: add the causal mask, queries aligned to the end of the keys.
        scale: multiplies ``q k^T``; defaults to ``1 / sqrt(d)``.
        return_lse: also return the row logsumexp of the scaled, masked scores.

    Returns:
        ``out: (B, H, N_q, d_v)`` in the dtype of ``q`` and, if ``return_lse``,
        ``lse: (B, H, N_q)`` in float32 (float64 for float64 input; ``-inf`` for
        fully masked rows).

    Half-precision inputs are computed in float32 and rounded once at the end.
    """
    B, H, H_kv, N_q, N_k, d = check_qkv(q, k, v)
    if mask is not None:
        check_mask(mask, (B, H, N_q, N_k), q.device)
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)
    scale = resolve_scale(scale, 1.0 / math.sqrt(d))

    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    k = expand_kv_heads(k, H)  # (B, H, N_k, d)
    v = expand_kv_heads(v, H)  # (B, H, N_k, d_v)

    q_scaled = q.to(compute_dtype) * scale  # (B, H, N_q, d); scaling q is cheaper than scaling N x N scores
    scores = q_scaled @ k.to(compute_dtype).transpose(-2, -1)  # (B, H, N_q, N_k), Eq. (1)
    allowed = mask  # None or broadcastable to (B, H, N_q, N_k)
    if causal:
        cmask = causal_mask(N_q, N_k, device=q.device)  # (N_q, N_k)
        allowed = cmask if allowed is None else allowed & cmask
    empty_row = None
    if allowed is not None:
        # Masked keys score -inf, so they get exactly zero weight even next to an allowed score
        # that overflowed to -inf itself (a fill value like finfo.min would sit *above* it).
        scores = scores.masked_fill_(~allowed, float("-inf"))
        # A row with no finite score (every key masked, or every allowed score -inf) has nothing
        # to attend to: softmax would give 0/0 = NaN, in the forward and in the gradients. Such a
        # row is scored 0 everywhere (finite), and its output is set to zeros below.
        empty_row = scores.amax(dim=-1, keepdim=True) == float("-inf")  # (B, H, N_q, 1)
        scores = scores.masked_fill(empty_row, 0.0)
    probs = torch.softmax(scores, dim=-1)  # (B, H, N_q, N_k)
    out = probs @ v.to(compute_dtype)  # (B, H, N_q, d_v)
    if empty_row is not None:
        out = out.masked_fill(empty_row, 0.0)
    out = out.to(q.dtype)
    if return_lse:
        lse = torch.logsumexp(scores, dim=-1)  # (B, H, N_q)
        if empty_row is not None:
            lse = lse.masked_fill(empty_row.squeeze(-1), float("-inf"))
        return out, lse
    return out


def attention_weights(q, k, *, mask=None, causal=False, scale=None) -> torch.Tensor:
    """The softmax matrix ``P = softmax(q k^T * scale)``, ``(B, H, N_q, N_k)``, for figures.

    Same conventions as :func:`attention` (fully masked rows are all zeros).
    This *is* the N x N matrix: use it to look at small examples, not to compute.
    """
    B, H, H_kv, N_q, N_k, d = check_qkv(q, k, k)
    eye = torch.eye(N_k, dtype=q.dtype, device=q.device).expand(B, H_kv, N_k, N_k)  # (B, H_kv, N_k, N_k)
    return attention(q, k, eye, mask=mask, causal=causal, scale=scale)  # P @ I = P


def sdpa_attention(q, k, v, *, mask=None, causal=False, scale=None):
    """PyTorch's fused ``scaled_dot_product_attention`` with attnlib's conventions.

    The exact baseline a user would otherwise pick (on CPU a flash-style kernel
    with O(N) memory). Unlike SDPA's own ``is_causal``, ``causal`` here aligns
    queries to the end of the keys, as :func:`attention` does.
    """
    B, H, H_kv, N_q, N_k, d = check_qkv(q, k, v)
    if mask is not None:
        check_mask(mask, (B, H, N_q, N_k), q.device)
    check_flag("causal", causal)
    scale = resolve_scale(scale, 1.0 / math.sqrt(d))
    if mask is not None and mask.ndim == 1:
        mask = mask[None, :]  # (1, N_k): SDPA wants at least two dimensions
    # Square and unmasked, the end-aligned causal mask is SDPA's own is_causal (its fused kernel, no
    # N_q x N_k mask in memory); otherwise the mask is built and passed.
    fused_causal = causal and mask is None and N_q == N_k
    if causal and not fused_causal:
        cmask = causal_mask(N_q, N_k, device=q.device)  # (N_q, N_k)
        mask = cmask if mask is None else mask & cmask
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, is_causal=fused_causal, enable_gqa=H_kv != H
    )  # (B, H, N_q, d_v)
    # SDPA's CPU kernels disagree on a query row holding NaN or infinity (zeros for short
    # sequences, NaN for longer ones); attention() gives NaN there. So NaN here too. The sum of q
    # is finite unless such a row exists (or, rarely, a half-precision sum overflows): only then
    # are the rows checked one by one, and the output copied. A meta tensor has no values to check
    # (it only carries shapes): its output is the shape SDPA gives.
    if q.device.type != "meta" and not torch.isfinite(q.sum()):
        bad_query = ~torch.isfinite(q).all(dim=-1, keepdim=True)  # (B, H, N_q, 1)
        out = out.masked_fill(bad_query, float("nan"))  # (B, H, N_q, d_v)
    return out


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention block, ``x: (B, N, C) -> (B, N, C)``.

    Projects ``x`` to ``num_heads`` query heads and ``num_kv_heads`` key/value
    heads (``num_kv_heads == 1``: multi-query attention, Shazeer 2019), runs an
    attention kernel ``f(q, k, v, causal=...)`` (dense :func:`attention` by
    default, or any attnlib kernel with the same signature), and projects back.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        causal: bool = False,
        bias: bool = True,
        attention_fn=None,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("num_heads", num_heads)
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        check_positive_int("num_kv_heads", num_kv_heads)
        check_heads(dim, num_heads)
        if num_heads % num_kv_heads != 0:
            raise ValueError(
                f"num_kv_heads must divide num_heads, got num_heads={num_heads}, num_kv_heads={num_kv_heads}"
            )
        self.dim, self.num_heads, self.num_kv_heads = dim, num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.causal = causal
        self.attention_fn = attention if attention_fn is None else attention_fn
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.kv_proj = nn.Linear(dim, 2 * num_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tokens("x", x, self.dim)
        B, N, C = x.shape
        q = self.q_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, d)
        kv = self.kv_proj(x).view(B, N, 2, self.num_kv_heads, self.head_dim)  # (B, N, 2, H_kv, d)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H_kv, N, d)
        out = self.attention_fn(q, k, v, causal=self.causal)  # (B, H, N, d)
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.out_proj(out)


class GlobalSelfAttention2d(nn.Module):
    """Global multi-head self-attention over a feature map, ``x: (B, H, W, C) -> (B, H, W, C)``.

    The baseline of every vision chapter: the same channels, heads and projections as
    the windowed and reduced mixers, but every pixel attends to every pixel
    (``N = H * W`` tokens). ``attention_fn`` picks the kernel: dense :func:`attention`
    (two ``N x N`` buffers) or :func:`sdpa_attention` (PyTorch's fused kernel).
    """

    def __init__(self, dim: int, num_heads: int, *, attention_fn=None):
        super().__init__()
        self.attn = MultiHeadSelfAttention(dim, num_heads, attention_fn=attention_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor("x", x, ndim=4)
        B, H, W, C = x.shape
        return self.attn(x.reshape(B, H * W, C)).view(B, H, W, C)  # (B, H, W, C)


def dense_global_mixer(dim: int, num_heads: int, height: int, width: int) -> GlobalSelfAttention2d:
    """Registry factory: global self-attention over a ``height x width`` map, dense kernel."""
    return GlobalSelfAttention2d(dim, num_heads, attention_fn=attention)


def sdpa_global_mixer(dim: int, num_heads: int, height: int, width: int) -> GlobalSelfAttention2d:
    """Registry factory: global self-attention over a ``height x width`` map, SDPA's fused kernel."""
    return GlobalSelfAttention2d(dim, num_heads, attention_fn=sdpa_attention)
