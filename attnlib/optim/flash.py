"""FlashAttention in plain PyTorch: exact attention in tiles, with an online softmax.

Papers
------
* Dao, Fu, Ermon, Rudra, Ré, "FlashAttention: Fast and Memory-Efficient Exact
  Attention with IO-Awareness", NeurIPS 2022, arXiv:2205.14135 ("FA-1").
  Algorithm 0 is standard attention, Algorithm 1 the tiled forward pass,
  Theorem 2 counts their HBM accesses.
* Dao, "FlashAttention-2: Faster Attention with Better Parallelism and Work
  Partitioning", arXiv:2307.08691 ("FA-2"). Algorithm 1 is the forward pass
  (query blocks outside, key blocks inside, divide by the row sum once at the
  end), Algorithm 2 the backward pass by recomputation.
* Milakov, Gimelshein, "Online normalizer calculation for softmax",
  arXiv:1805.02867: the running max and running sum.

Chapter: "FlashAttention" (chapters/*/10_flash_attention.ipynb). The chapter
walks through this file top to bottom:

1. :func:`dense_memory_traffic_bytes` / :func:`flash_memory_traffic_bytes`:
   what the two algorithms move to and from memory (FA-1 Theorem 2).
2. :func:`safe_softmax` and :func:`online_softmax`: one pass over the blocks
   with a running max ``m`` and running sum ``l``.
3. :func:`tiled_attention_forward`: FA-2 Algorithm 1, returns ``(out, lse)``.
4. :func:`tiled_attention_backward`: FA-2 Algorithm 2, returns ``(dq, dk, dv)``.
5. :class:`FlashAttentionFunction` and :func:`flash_attention`: autograd, and
   the switch to the Triton kernels of ``attnlib.optim.flash_triton``.

Comments of the form ``# Alg. 1 line 10`` point at FA-2's pseudo-code.

Shape legend
------------
    B     batch size
    H     query heads, H_kv key/value heads (H_kv divides H), G = H // H_kv
    N_q   query tokens, N_k key/value tokens
    d     head dimension of q and k, d_v head dimension of v
    B_r   query rows in one tile (``block_q``; the last tile may be shorter)
    B_c   key columns in one tile (``block_k``; the last tile may be shorter)

Grouped heads (GQA, MQA) without copies: the ``G`` query heads that share one
key/value head are stacked as extra *rows* of one tile, ``(B, H_kv, G * B_r, d)``,
so a single matrix product against the shared ``(B, H_kv, B_c, d)`` key tile
serves all of them, and the key gradient sums over them for free.

Masking follows :mod:`attnlib.reference`: with ``causal=True`` query ``i``
sees key ``j`` iff ``j <= i + (N_k - N_q)``; a query that sees no key gets a
zero output and ``lse = -inf``.
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import warnings
from typing import NamedTuple

import torch

from .._checks import check_flag, check_positive_int, check_qkv, check_tensor, first_order_only, resolve_scale

# Private names for the shared pieces: chapter 10 prints the functions below that call them.
from .online_softmax import compute_dtype as _compute_dtype
from .online_softmax import finish
from .online_softmax import zero_where_minus_inf as _zero_where_minus_inf

__all__ = [
    "A100_SHARED_MEMORY_PER_BLOCK_BYTES",
    "DEFAULT_BLOCK_Q",
    "DEFAULT_BLOCK_K",
    "BACKENDS",
    "dense_memory_traffic_bytes",
    "flash_memory_traffic_bytes",
    "safe_softmax",
    "online_softmax",
    "OnlineSoftmaxStep",
    "tiled_attention_forward",
    "tiled_attention_backward",
    "FlashAttentionFunction",
    "flash_attention",
]

# Tile sizes of the PyTorch path. On a GPU, B_r x B_c must fit in ~100 KiB of
# SRAM (64 x 64 is typical). On a CPU each tile is a few calls into PyTorch, so
# larger tiles pay less per-call overhead: 256 x 512 fp32 scores are 512 KiB per
# head. Measured on 2 CPU threads (B=1, H=4, N=4096, d=64, fp32), the forward took
# 2.5x the dense reference's time with 64 x 64 tiles, 1.1x with 128 x 128 and
# 0.5x with 256 x 512, while its peak memory at N=16384 stayed within 1.5x that
# of PyTorch's fused scaled_dot_product_attention.
DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 512
BACKENDS = ("auto", "torch", "triton")


# --------------------------------------------------------------------------
# 1. Memory traffic: FA-1 Theorem 2
# --------------------------------------------------------------------------


def dense_memory_traffic_bytes(N: int, d: int, *, element_bytes: int = 2, batch_heads: int = 1) -> int:
    """Bytes standard attention reads and writes in slow memory (HBM), FA-1 Algorithm 0.

    Per head, in elements:

    * line 1: read ``Q`` and ``K`` (``2 N d``), write ``S = Q K^T`` (``N^2``);
    * line 2: read ``S`` (``N^2``), write ``P = softmax(S)`` (``N^2``);
    * line 3: read ``P`` (``N^2``) and ``V`` (``N d``), write ``O`` (``N d``).

    Total ``4 N d + 4 N^2`` elements: Θ(N d + N^2) of Theorem 2. The ``N^2``
    terms dominate as soon as ``N > d``.

    Args:
        N: sequence length (queries = keys).
        d: head dimension.
        element_bytes: 2 for fp16/bf16, 4 for fp32.
        batch_heads: ``B * H``, heads are independent.
    """
    for name, value in (("N", N), ("d", d), ("element_bytes", element_bytes), ("batch_heads", batch_heads)):
        check_positive_int(name, value)
    qkv_and_out = 4 * N * d  # read Q, K, V; write O
    scores_and_probs = 4 * N * N  # write S, read S, write P, read P
    return batch_heads * element_bytes * (qkv_and_out + scores_and_probs)


# Shared memory one thread block may use on an A100 (compute capability 8.0): 163 KiB, NVIDIA CUDA C++
# Programming Guide, "Technical Specifications per Compute Capability". The SRAM of the traffic model
# below (chapter 10), also drawn in attnlib.viz.diagrams.kernels.memory_hierarchy.
A100_SHARED_MEMORY_PER_BLOCK_BYTES = 163 * 1024


def flash_memory_traffic_bytes(
    N: int,
    d: int,
    *,
    sram_bytes: int = A100_SHARED_MEMORY_PER_BLOCK_BYTES,
    element_bytes: int = 2,
    batch_heads: int = 1,
) -> int:
    """Bytes FlashAttention (FA-1 Algorithm 1) reads and writes in HBM.

    With ``M = sram_bytes / element_bytes`` elements of on-chip SRAM, Algorithm 1
    line 1 sets the key block ``B_c = ceil(M / 4d)``, giving ``T_c = ceil(N / B_c)``
    key blocks. Per head, in elements:

    * line 6: read every ``K_j`` and ``V_j`` once (``2 N d``);
    * for each of the ``T_c`` key blocks, the inner loop over all query blocks
      reads ``Q_i, O_i`` (line 8, ``2 N d``) and ``l_i, m_i`` (``2 N``), and
      writes ``O_i`` (line 12, ``N d``) and ``l_i, m_i`` (line 13, ``2 N``).

    Total ``2 N d + T_c (3 N d + 4 N)`` ≈ ``12 N^2 d^2 / M``: Θ(N^2 d^2 / M) of
    Theorem 2. No ``N x N`` matrix is ever written. The default SRAM is the
    163 KiB of shared memory one thread block may use on an A100 (the SM's 192 KB, FA-1
    Section 2.1, is L1 and shared memory together).
    """
    for name, value in (
        ("N", N),
        ("d", d),
        ("sram_bytes", sram_bytes),
        ("element_bytes", element_bytes),
        ("batch_heads", batch_heads),
    ):
        check_positive_int(name, value)
    M = sram_bytes // element_bytes  # SRAM size in elements
    if M < 4 * d:
        raise ValueError(
            f"sram_bytes must hold at least 4 * d elements ({4 * d * element_bytes} bytes), got {sram_bytes}"
        )
    block_k = math.ceil(M / (4 * d))  # B_c, Alg. 1 line 1 of FA-1
    num_key_blocks = math.ceil(N / block_k)  # T_c
    read_k_v = 2 * N * d  # line 6
    per_key_block = 3 * N * d + 4 * N  # lines 8, 12, 13
    return batch_heads * element_bytes * (read_k_v + num_key_blocks * per_key_block)


# --------------------------------------------------------------------------
# 2. Softmax in one pass over blocks
# --------------------------------------------------------------------------


def safe_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, subtracting the row max first.

    ``softmax(x)_j = exp(x_j - m) / sum_k exp(x_k - m)`` with ``m = max_k x_k``:
    the same value for any ``m``, and with the max no ``exp`` overflows. Needs
    two passes over the row before the output (the max, then the sum). A row of
    only ``-inf`` gives zeros (``torch.softmax`` gives NaN there).
    """
    check_tensor("x", x)
    row_max = _zero_where_minus_inf(x.amax(dim=-1, keepdim=True))  # (..., 1)
    exps = torch.exp(x - row_max)  # (..., n)
    row_sum = exps.sum(dim=-1, keepdim=True)  # (..., 1)
    return exps / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))  # (..., n)


class OnlineSoftmaxStep(NamedTuple):
    """The running statistics after one block of :func:`online_softmax`."""

    start: int  # first column of the block
    stop: int  # one past its last column
    row_max: torch.Tensor  # m after the block, shape (...)
    row_sum: torch.Tensor  # l after the block, shape (...)
    rescale: torch.Tensor  # exp(m_old - m_new), the factor applied to the old l, shape (...)


def online_softmax(x: torch.Tensor, block_size: int) -> tuple[torch.Tensor, list[OnlineSoftmaxStep]]:
    """Softmax over the last dimension with the normalizer computed in one pass over blocks.

    For each block of ``block_size`` columns (Milakov & Gimelshein 2018, Alg. 3)::

        m_new = max(m_old, rowmax(block))
        l_new = exp(m_old - m_new) * l_old + rowsum(exp(block - m_new))

    ``l_old`` was a sum of ``exp(x - m_old)``; multiplying by ``exp(m_old - m_new)``
    turns it into a sum of ``exp(x - m_new)``. After the last block ``m`` is the
    row max and ``l`` the row sum of :func:`safe_softmax`. The probabilities
    ``exp(x - m) / l`` still need one more elementwise pass; FlashAttention
    avoids it by applying the same rescaling to its output accumulator.

    Returns:
        ``(probs, trace)``: ``probs`` of the shape and dtype of ``x``, and one
        :class:`OnlineSoftmaxStep` per block (for animating ``m`` and ``l``).
    """
    check_tensor("x", x)
    check_positive_int("block_size", block_size)
    compute_dtype = _compute_dtype(x.dtype)
    n = x.shape[-1]
    row_max = torch.full(x.shape[:-1], float("-inf"), dtype=compute_dtype, device=x.device)  # (...)
    row_sum = torch.zeros(x.shape[:-1], dtype=compute_dtype, device=x.device)  # (...)
    trace = []
    for start in range(0, n, block_size):
        stop = min(start + block_size, n)
        block = x[..., start:stop].to(compute_dtype)  # (..., block_size)
        new_max = torch.maximum(row_max, block.amax(dim=-1))  # (...)
        safe_max = _zero_where_minus_inf(new_max)  # (...)
        rescale = torch.exp(row_max - safe_max)  # (...) exp(m_old - m_new)
        row_sum = rescale * row_sum + torch.exp(block - safe_max[..., None]).sum(dim=-1)  # (...)
        row_max = new_max
        trace.append(OnlineSoftmaxStep(start, stop, row_max.clone(), row_sum.clone(), rescale))
    safe_max = _zero_where_minus_inf(row_max)[..., None]  # (..., 1)
    safe_sum = torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))[..., None]  # (..., 1)
    probs = torch.exp(x.to(compute_dtype) - safe_max) / safe_sum  # (..., n)
    return probs.to(x.dtype), trace


# --------------------------------------------------------------------------
# 3. Tiled forward pass: FA-2 Algorithm 1
# --------------------------------------------------------------------------


def _check_blocks(block_q, block_k) -> None:
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)


def _resolve_scale(scale, d: int) -> float:
    return resolve_scale(scale, 1.0 / math.sqrt(d))


def _query_tile(x_grouped: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Rows ``start:stop`` of every query head, stacked per key/value head.

    ``x_grouped: (B, H_kv, G, N_q, ...)`` -> ``(B, H_kv, G * B_r, ...)``: the G query
    heads that read the same key/value head become one tall tile. A copy of
    ``G * B_r`` rows at most (none when ``G == 1``).
    """
    tile = x_grouped[:, :, :, start:stop]  # (B, H_kv, G, B_r, ...)
    return tile.reshape(tile.shape[0], tile.shape[1], -1, *tile.shape[4:])  # (B, H_kv, G * B_r, ...)


def _causal_hidden(q_start: int, q_stop: int, k_start: int, k_stop: int, offset: int, device) -> torch.Tensor | None:
    """Boolean ``(B_r, B_c)`` mask, True where query ``i`` may *not* see key ``j`` (``j > i + offset``).

    None when every query of the tile sees every key of it (the tile lies below the diagonal),
    so that only the tiles crossing the diagonal pay for masking.
    """
    if k_stop - 1 <= q_start + offset:  # the first query already sees the last key
        return None
    query_pos = torch.arange(q_start, q_stop, device=device)[:, None] + offset  # (B_r, 1)
    key_pos = torch.arange(k_start, k_stop, device=device)[None, :]  # (1, B_c)
    return key_pos > query_pos  # (B_r, B_c)


def _hide_(scores: torch.Tensor, hidden: torch.Tensor | None) -> torch.Tensor:
    """Set ``scores: (B, H_kv, G * B_r, B_c)`` to ``-inf`` where ``hidden: (B_r, B_c)`` is True, in place."""
    if hidden is not None:
        B, H_kv, rows, cols = scores.shape
        group = rows // hidden.shape[0]  # G query heads stacked in the rows
        scores.view(B, H_kv, group, -1, cols).masked_fill_(hidden, float("-inf"))  # (B, H_kv, G, B_r, B_c)
    return scores


def _visible_keys_stop(q_stop: int, N_k: int, offset: int, causal: bool) -> int:
    """One past the last key any query ``< q_stop`` may see (0: the whole tile is masked)."""
    if not causal:
        return N_k
    return max(0, min(N_k, q_stop + offset))  # the last query q_stop - 1 sees keys <= q_stop - 1 + offset


def _forward_tile_(q_tile, k_tile, v_tile, hidden, acc, row_sum, row_max) -> torch.Tensor:
    """One tile of FA-2 Algorithm 1, lines 8-10: update ``acc`` and ``row_sum`` in place, return the new max.

    ``q_tile: (B, H_kv, G * B_r, d)`` (already scaled), ``k_tile: (B, H_kv, B_c, d)``,
    ``v_tile: (B, H_kv, B_c, d_v)``, ``hidden: (B_r, B_c)`` or None, ``acc: (B, H_kv, G * B_r, d_v)``,
    ``row_sum, row_max: (B, H_kv, G * B_r, 1)``. A function of its own so that the tile of scores
    is freed when it returns: one ``G * B_r x B_c`` tile per head is alive at a time.
    """
    scores = _hide_(q_tile @ k_tile.transpose(-2, -1), hidden)  # (B, H_kv, G * B_r, B_c)  Alg. 1 line 8
    # Alg. 1 line 9: new running max, exponentials, rescaled running sum
    new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True))  # (B, H_kv, G * B_r, 1)
    safe_max = _zero_where_minus_inf(new_max)  # rows that have seen no key yet keep 0, not NaN
    probs = scores.sub_(safe_max).exp_()  # (B, H_kv, G * B_r, B_c), in place: P~ = exp(S - m)
    rescale = torch.exp(row_max - safe_max)  # (B, H_kv, G * B_r, 1)  exp(m_old - m_new)
    row_sum.mul_(rescale).add_(probs.sum(dim=-1, keepdim=True))  # l = exp(m_old - m_new) l + rowsum(P~)
    # Alg. 1 line 10: rescale the old accumulator, add this tile's contribution (in place). The paper
    # prints diag(exp(m_old - m_new))^-1; the factor is exp(m_old - m_new) itself, <= 1, as for l above
    # (a known erratum, Dao-AILab/flash-attention issue 991).
    acc.mul_(rescale).add_(probs @ v_tile)  # (B, H_kv, G * B_r, d_v)
    return new_max


def tiled_attention_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention in ``B_r x B_c`` tiles, FA-2 Algorithm 1.

    For each block of ``block_q`` queries, walk over the blocks of ``block_k``
    keys with a running row max ``m``, row sum ``l`` and an unnormalized output
    accumulator ``acc``; rescale both ``l`` and ``acc`` by ``exp(m_old - m_new)``
    whenever the max grows, and divide by ``l`` once at the end. No ``N_q x N_k``
    tensor is ever built: the extra memory is one tile of scores per head plus
    the running statistics, O(N) in total.

    Args:
        q: ``(B, H, N_q, d)``; k: ``(B, H_kv, N_k, d)``; v: ``(B, H_kv, N_k, d_v)``.
        causal: query ``i`` sees key ``j <= i + N_k - N_q`` (as :func:`attnlib.reference.attention`);
            key blocks that no query of the block can see are skipped.
        scale: multiplies ``q k^T``, default ``1 / sqrt(d)``.
        block_q, block_k: tile sizes ``B_r`` and ``B_c``; any N works (the last tiles are shorter).

    Returns:
        ``out: (B, H, N_q, d_v)`` in the dtype of ``q`` and ``lse: (B, H, N_q)``,
        the row logsumexp of the scaled scores, in fp32 (fp64 for fp64 input),
        ``-inf`` where a query sees no key (its output row is zero).
        fp16/bf16 inputs are computed in fp32 tile by tile.
    """
    B, H, H_kv, N_q, N_k, d = check_qkv(q, k, v)
    _check_blocks(block_q, block_k)
    scale = _resolve_scale(scale, d)
    G = H // H_kv  # query heads per key/value head
    d_v = v.shape[-1]
    compute_dtype = _compute_dtype(q.dtype)
    offset = N_k - N_q  # causal: query i sees keys j <= i + offset

    q_grouped = q.unflatten(1, (H_kv, G))  # (B, H_kv, G, N_q, d), a view
    out = torch.empty(B, H, N_q, d_v, dtype=q.dtype, device=q.device)  # (B, H, N_q, d_v)
    lse = torch.empty(B, H, N_q, dtype=compute_dtype, device=q.device)  # (B, H, N_q)
    out_grouped = out.unflatten(1, (H_kv, G))  # (B, H_kv, G, N_q, d_v), a view
    lse_grouped = lse.unflatten(1, (H_kv, G))  # (B, H_kv, G, N_q), a view

    for q_start in range(0, N_q, block_q):  # Alg. 1 line 3
        q_stop = min(q_start + block_q, N_q)
        # Alg. 1 line 4; scaling Q once here costs B_r * d multiplies instead of B_r * B_c per tile
        q_tile = _query_tile(q_grouped, q_start, q_stop).to(compute_dtype) * scale  # (B, H_kv, G * B_r, d)
        rows = q_tile.shape[2]  # G * B_r
        # Alg. 1 line 5
        acc = torch.zeros(B, H_kv, rows, d_v, dtype=compute_dtype, device=q.device)  # (B, H_kv, G * B_r, d_v)
        row_sum = torch.zeros(B, H_kv, rows, 1, dtype=compute_dtype, device=q.device)  # (B, H_kv, G * B_r, 1)
        row_max = torch.full_like(row_sum, float("-inf"))  # (B, H_kv, G * B_r, 1)

        keys_stop = _visible_keys_stop(q_stop, N_k, offset, causal)  # later key blocks are fully masked
        for k_start in range(0, keys_stop, block_k):  # Alg. 1 line 6
            k_stop = min(k_start + block_k, keys_stop)
            k_tile = k[:, :, k_start:k_stop].to(compute_dtype)  # (B, H_kv, B_c, d)  Alg. 1 line 7
            v_tile = v[:, :, k_start:k_stop].to(compute_dtype)  # (B, H_kv, B_c, d_v)
            hidden = _causal_hidden(q_start, q_stop, k_start, k_stop, offset, q.device) if causal else None
            row_max = _forward_tile_(q_tile, k_tile, v_tile, hidden, acc, row_sum, row_max)  # Alg. 1 lines 8-10

        # Alg. 1 line 12: divide by l once; a row that saw no key has acc = 0, l = 0 -> output 0
        out_tile, lse_tile = finish(acc, row_sum, row_max)  # Alg. 1 lines 12-13: divide once, lse = m + log(l)
        # Alg. 1 lines 14-15
        out_grouped[:, :, :, q_start:q_stop] = out_tile.view(B, H_kv, G, -1, d_v)  # (B, H_kv, G, B_r, d_v)
        lse_grouped[:, :, :, q_start:q_stop] = lse_tile.view(B, H_kv, G, -1)  # (B, H_kv, G, B_r)
    return out, lse


# --------------------------------------------------------------------------
# 4. Tiled backward pass: FA-2 Algorithm 2
# --------------------------------------------------------------------------


def _check_saved(name: str, x, expected_shape: tuple[int, ...], device: torch.device) -> None:
    check_tensor(name, x)
    if tuple(x.shape) != expected_shape:
        raise ValueError(f"{name} must have shape {expected_shape}, got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} must be on the device of q ({device}), got {x.device}")


def _backward_tile_(q_tile, k_tile, v_tile, dout_tile, lse_tile, Delta_tile, hidden, scale, dk_tile, dv_tile):
    """One tile of FA-2 Algorithm 2, lines 10-16: add to ``dk_tile`` and ``dv_tile`` in place, return ``dQ``'s part.

    ``q_tile: (B, H_kv, G * B_r, d)`` (already scaled, so ``dS^T Q`` carries the scale),
    ``dout_tile: (B, H_kv, G * B_r, d_v)``, ``lse_tile, Delta_tile: (B, H_kv, G * B_r, 1)``.
    Returns ``dS K * scale: (B, H_kv, G * B_r, d)``, to be added to ``dQ``.
    """
    scores = _hide_(q_tile @ k_tile.transpose(-2, -1), hidden)  # (B, H_kv, G * B_r, B_c)  Alg. 2 line 10
    probs = scores.sub_(lse_tile).exp_()  # (B, H_kv, G * B_r, B_c)  Alg. 2 line 11, in place
    dv_tile += probs.transpose(-2, -1) @ dout_tile  # (B, H_kv, B_c, d_v)  Alg. 2 line 12
    dprobs = dout_tile @ v_tile.transpose(-2, -1)  # (B, H_kv, G * B_r, B_c)  Alg. 2 line 13
    dscores = probs.mul_(dprobs.sub_(Delta_tile))  # (B, H_kv, G * B_r, B_c)  Alg. 2 line 14, in place
    dk_tile += dscores.transpose(-2, -1) @ q_tile  # (B, H_kv, B_c, d)  Alg. 2 line 16
    return (dscores @ k_tile) * scale  # (B, H_kv, G * B_r, d)  Alg. 2 line 15


def tiled_attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of attention by recomputation in tiles, FA-2 Algorithm 2.

    Nothing of size ``N_q x N_k`` was saved by the forward pass: only ``out`` and
    ``lse``. Each tile of probabilities is recomputed as ``P = exp(S - lse)``,
    then, with ``Delta = rowsum(dO * O)`` (FA-2's D; the softmax Jacobian's correction, derived in chapter 11)::

        dV += P^T dO      dP = dO V^T      dS = P * (dP - Delta)
        dQ += dS K * scale                dK += dS^T Q * scale

    Key blocks are the outer loop (``dK_j, dV_j`` stay in the tile), query
    blocks the inner one (``dQ`` is accumulated in memory). The ``G`` query
    heads of a group sit in the rows of one tile, so ``dS^T Q`` already sums
    their contributions into the shared key/value head.

    Args:
        q, k, v, causal, scale, block_q, block_k: as in :func:`tiled_attention_forward`.
        out: ``(B, H, N_q, d_v)`` and lse: ``(B, H, N_q)``, its outputs.
        dout: ``(B, H, N_q, d_v)``, the gradient of the loss with respect to ``out``.

    Returns:
        ``dq, dk, dv`` with the shapes and dtypes of ``q, k, v``.
    """
    B, H, H_kv, N_q, N_k, d = check_qkv(q, k, v)
    _check_blocks(block_q, block_k)
    scale = _resolve_scale(scale, d)
    G = H // H_kv
    d_v = v.shape[-1]
    _check_saved("out", out, (B, H, N_q, d_v), q.device)
    _check_saved("dout", dout, (B, H, N_q, d_v), q.device)
    _check_saved("lse", lse, (B, H, N_q), q.device)
    compute_dtype = _compute_dtype(q.dtype)
    offset = N_k - N_q

    # Alg. 2 line 4: Delta_i = rowsum(dO_i * O_i)
    Delta = (dout.to(compute_dtype) * out.to(compute_dtype)).sum(dim=-1)  # (B, H, N_q)
    # A query that saw no key has lse = -inf; its scores are all -inf, and exp(-inf - 0) = 0 gives P = 0.
    safe_lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)).to(compute_dtype)  # (B, H, N_q)

    q_grouped = q.unflatten(1, (H_kv, G))  # (B, H_kv, G, N_q, d)
    dout_grouped = dout.unflatten(1, (H_kv, G))  # (B, H_kv, G, N_q, d_v)
    lse_grouped = safe_lse.unflatten(1, (H_kv, G))[..., None]  # (B, H_kv, G, N_q, 1)
    Delta_grouped = Delta.unflatten(1, (H_kv, G))[..., None]  # (B, H_kv, G, N_q, 1)

    # Alg. 2 line 3
    dq = torch.zeros(B, H, N_q, d, dtype=compute_dtype, device=q.device)  # (B, H, N_q, d)
    dq_grouped = dq.unflatten(1, (H_kv, G))  # (B, H_kv, G, N_q, d), a view
    dk = torch.zeros(B, H_kv, N_k, d, dtype=k.dtype, device=q.device)  # (B, H_kv, N_k, d)
    dv = torch.zeros(B, H_kv, N_k, d_v, dtype=v.dtype, device=q.device)  # (B, H_kv, N_k, d_v)

    for k_start in range(0, N_k, block_k):  # Alg. 2 line 5
        k_stop = min(k_start + block_k, N_k)
        k_tile = k[:, :, k_start:k_stop].to(compute_dtype)  # (B, H_kv, B_c, d)  Alg. 2 line 6
        v_tile = v[:, :, k_start:k_stop].to(compute_dtype)  # (B, H_kv, B_c, d_v)
        dk_tile = torch.zeros_like(k_tile)  # (B, H_kv, B_c, d)  Alg. 2 line 7
        dv_tile = torch.zeros_like(v_tile)  # (B, H_kv, B_c, d_v)

        # causal: queries i < k_start - offset see none of these keys; start at the block holding the first one
        first_query = max(0, k_start - offset) if causal else 0
        for q_start in range(first_query // block_q * block_q, N_q, block_q):  # Alg. 2 line 8
            q_stop = min(q_start + block_q, N_q)
            # Alg. 2 line 9
            q_tile = _query_tile(q_grouped, q_start, q_stop).to(compute_dtype) * scale  # (B, H_kv, G * B_r, d)
            dout_tile = _query_tile(dout_grouped, q_start, q_stop).to(compute_dtype)  # (B, H_kv, G * B_r, d_v)
            lse_tile = _query_tile(lse_grouped, q_start, q_stop)  # (B, H_kv, G * B_r, 1)
            Delta_tile = _query_tile(Delta_grouped, q_start, q_stop)  # (B, H_kv, G * B_r, 1)

            hidden = _causal_hidden(q_start, q_stop, k_start, k_stop, offset, q.device) if causal else None
            # Alg. 2 lines 10-16
            dq_tile = _backward_tile_(
                q_tile, k_tile, v_tile, dout_tile, lse_tile, Delta_tile, hidden, scale, dk_tile, dv_tile
            )  # (B, H_kv, G * B_r, d)
            dq_grouped[:, :, :, q_start:q_stop] += dq_tile.view(B, H_kv, G, -1, d)  # (B, H_kv, G, B_r, d)

        dk[:, :, k_start:k_stop] = dk_tile  # Alg. 2 line 18
        dv[:, :, k_start:k_stop] = dv_tile
    return dq.to(q.dtype), dk, dv


# --------------------------------------------------------------------------
# 5. Autograd and the public entry point
# --------------------------------------------------------------------------


class FlashAttentionFunction(torch.autograd.Function):
    """``out = attention(q, k, v)`` with the tiled forward and the recomputing backward.

    Saves ``q, k, v, out`` and the ``(B, H, N_q)`` logsumexp: O(N) memory, where
    autograd through :func:`attnlib.reference.attention` keeps ``N_q x N_k``
    probabilities alive until the backward pass.

    ``FlashAttentionFunction.apply(q, k, v, causal, scale, block_q, block_k)``.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal=False, scale=None, block_q=DEFAULT_BLOCK_Q, block_k=DEFAULT_BLOCK_K):
        check_qkv(q, k, v)  # before 1 / sqrt(d): called directly, this is the first check
        check_flag("causal", causal)
        scale = _resolve_scale(scale, q.shape[-1])
        out, lse = tiled_attention_forward(q, k, v, causal=causal, scale=scale, block_q=block_q, block_k=block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale, ctx.block_q, ctx.block_k = causal, scale, block_q, block_k
        return out

    @staticmethod
    @first_order_only("flash_attention")
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = tiled_attention_backward(
            q, k, v, out, lse, dout, causal=ctx.causal, scale=ctx.scale, block_q=ctx.block_q, block_k=ctx.block_k
        )
        return dq, dk, dv, None, None, None, None


def _load_triton():
    """The module ``attnlib.optim.flash_triton``, or None if it or triton cannot be imported.

    Imported here, not at the top of the file: importing attnlib must not import triton.
    """
    try:
        import triton  # noqa: F401

        # import_module consults sys.modules even when the package already holds the attribute
        return importlib.import_module("attnlib.optim.flash_triton")
    except ImportError:
        return None


@functools.cache
def _warn_once(message: str) -> None:
    """Warn once per process and message (``_warn_once.cache_clear()`` re-arms it)."""
    warnings.warn(message, RuntimeWarning, stacklevel=4)


def _triton_interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _select_backend(backend: str, device_type: str, inputs: tuple) -> str:
    """Resolve ``backend="auto"`` to ``"triton"`` or ``"torch"``; ``inputs = (q, k, v, causal, scale)``.

    Triton where it runs (a CUDA tensor, or a CPU tensor under Triton's interpreter), is
    installed, and accepts these inputs (``flash_triton.unsupported_reason`` returns None: it
    takes head dims 16 to 128, not float64, ...); the PyTorch tiles otherwise. On CUDA, falling
    back to the much slower PyTorch path is worth a warning (once).
    """
    if backend != "auto":
        return backend
    on_cuda = device_type == "cuda"
    interpreted = device_type == "cpu" and _triton_interpreter_on()
    if not (on_cuda or interpreted):
        return "torch"
    triton_module = _load_triton()
    if triton_module is None:
        if on_cuda:
            _warn_once(
                "flash_attention: q is on a CUDA device but triton (or attnlib.optim.flash_triton) cannot be "
                "imported, so the PyTorch tiled path is used: exact, but much slower than the Triton kernel. "
                "Install triton (pip install 'attnlib[triton]'), or pass backend='torch' to silence this warning."
            )
        return "torch"
    unsupported_reason = getattr(triton_module, "unsupported_reason", lambda *inputs: None)
    reason = unsupported_reason(*inputs)
    if reason is not None:
        if on_cuda:
            _warn_once(f"flash_attention: the Triton kernel does not take these inputs ({reason}); using PyTorch tiles")
        return "torch"
    return "triton"


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    backend: str = "auto",
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
) -> torch.Tensor:
    """Exact softmax attention by FlashAttention; differentiable. Chapter 10_flash_attention.ipynb.

    Args:
        q: ``(B, H, N_q, d)``; k: ``(B, H_kv, N_k, d)``; v: ``(B, H_kv, N_k, d_v)``; ``H_kv`` divides ``H``.
        causal: query ``i`` sees key ``j <= i + N_k - N_q`` (as :func:`attnlib.reference.attention`).
        scale: multiplies ``q k^T``, default ``1 / sqrt(d)``.
        backend: ``"auto"`` uses the Triton kernel
            (:func:`attnlib.optim.flash_triton.flash_attention_triton`) for CUDA tensors, and for
            CPU tensors when ``TRITON_INTERPRET=1`` (Triton's interpreter), if triton is installed
            and the kernel takes these inputs; otherwise the PyTorch tiles of this module (with a
            warning, once, on CUDA). ``"torch"`` and ``"triton"`` force one.
        block_q, block_k: tile sizes of the PyTorch path (the Triton kernel picks its own).

    Returns:
        ``out: (B, H, N_q, d_v)`` in the dtype of ``q``.
    """
    check_qkv(q, k, v)
    check_flag("causal", causal)
    resolve_scale(scale, 1.0)
    _check_blocks(block_q, block_k)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    chosen = _select_backend(backend, q.device.type, (q, k, v, causal, scale))
    if chosen == "triton":
        if q.device.type != "cuda" and not _triton_interpreter_on():
            raise ValueError(
                f"backend='triton' needs q on a CUDA device, or TRITON_INTERPRET=1 set before triton is "
                f"first imported (Triton's interpreter); got q on {q.device} with TRITON_INTERPRET unset"
            )
        triton_module = _load_triton()
        if triton_module is None:
            raise ImportError(
                "backend='triton' needs the triton package and attnlib.optim.flash_triton; "
                "install triton (pip install 'attnlib[triton]') or use backend='torch'"
            )
        return triton_module.flash_attention_triton(q, k, v, causal=causal, scale=scale)
    return FlashAttentionFunction.apply(q, k, v, causal, scale, block_q, block_k)
