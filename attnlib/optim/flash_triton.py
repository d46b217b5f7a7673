"""FlashAttention forward and backward as Triton kernels.

Papers: Dao et al., "FlashAttention: Fast and Memory-Efficient Exact Attention with
IO-Awareness", NeurIPS 2022 (arXiv 2205.14135), and Dao, "FlashAttention-2: Faster
Attention with Better Parallelism and Work Partitioning", 2023 (arXiv 2307.08691).
"Alg. 1" and "Alg. 2" below are FlashAttention-2's forward and backward algorithms (line
numbers as printed in the paper; chapter 10 restates both as numbered listings). Chapter:
"FlashAttention in Triton" (chapters/*/11_flash_triton.ipynb); the PyTorch version of the
same tiling is :mod:`attnlib.optim.flash`, whose ``flash_attention(..., backend="auto")``
calls this module on demand.

Learning goals
--------------
* Write a Triton kernel that computes exact softmax attention one tile at a time, so the
  ``(N_q, N_k)`` score matrix never exists in GPU memory (HBM): only ``O(N)`` memory.
* The *online softmax*: keep a running row max ``m`` and a running row sum ``l``, and rescale
  the partial output whenever the max grows (Alg. 1, lines 9-10).
* Save only the row logsumexp ``L = m + log(l)`` from the forward, and *recompute* the
  probabilities ``P = exp(S - L)`` in the backward instead of storing them (Alg. 2).
* Causal masking at tile granularity: skip tiles that are entirely masked, apply the mask
  only on the tiles that straddle the diagonal.
* Grouped-query / multi-query attention by index arithmetic alone (no copies of K and V).

The tiling in pseudo-code (one row block of queries, Alg. 1)
------------------------------------------------------------
::

    for each query block Q_i (BLOCK_M rows)            # in parallel: one program each
        m = -inf; l = 0; acc = 0                         # running max, sum, output
        for each key block j (BLOCK_N keys)              # sequential loop inside the program
            S = Q_i K_j^T * scale                        # (BLOCK_M, BLOCK_N), in registers only
            m_new = max(m, rowmax(S))
            P = exp(S - m_new)                           # un-normalized probabilities
            alpha = exp(m - m_new)                       # how much the old max was too small
            l = alpha * l + rowsum(P)
            acc = alpha * acc + P V_j
            m = m_new
        O_i = acc / l                                    # normalize once, at the end
        L_i = m + log(l)                                 # saved for the backward

    backward, with Delta = rowsum(dO * O) (Alg. 2, line 4, where the paper calls it D):
        for each key block j (one program each):         # dK_j, dV_j without atomics
            for each query block i that sees it:
                P = exp(Q_i K_j^T * scale - L_i)         # recomputed, never stored
                dV_j += P^T dO_i
                dP = dO_i V_j^T
                dS = P * (dP - Delta_i)
                dK_j += dS^T Q_i * scale
        for each query block i (one program each):      # dQ_i, again without atomics
            for each key block j it sees:
                P, dP, dS as above;  dQ_i += dS K_j * scale

FlashAttention-2 adds dQ into HBM inside the dK/dV loop with atomic adds. The Triton
tutorial (06) avoids atomics with one kernel launch plus the preprocessing: each program
computes dK/dV for a key block, then dQ for a query block. We run the same two loops as two
launches (a dK/dV kernel and a dQ kernel), so that each has its own grid and tiles; the dQ
loop recomputes ``P`` once more, as the tutorial's does. No atomics: deterministic.

Two details of the kernels
--------------------------
*exp2, with log2(e) folded into the scale.* GPUs compute ``2**x`` in one special-function
instruction (``ex2`` on NVIDIA); ``exp(x)`` is compiled as ``exp2(x * log2(e))``, one more
multiply per score. Since ``exp(s - m) = 2**((s - m) * log2(e))``, the host multiplies the
softmax scale by ``log2(e)`` once (``qk_scale = scale * log2(e)``), and the kernel multiplies
each fp32 score tile by ``qk_scale`` right after the ``Q K^T`` product (``tl.dot``; scaling Q
first would round the scaled Q to fp16/bf16 once more). The scores are then in log2 units and
the kernel calls ``exp2`` directly. The running
max ``m`` is then in log2 units too, and the stored logsumexp is converted back to the natural
log, ``L = (m + log2(l)) * ln(2)``, which the backward multiplies by ``log2(e)`` again.

*Two stages per loop.* The tiles a whole query block sees in full need neither the causal mask
nor bounds checks; only the tiles on the diagonal and the ragged last tile do. Each kernel runs
the same loop body twice, with ``MASKED`` a compile-time constant, so the common case carries no
masking code. With ``causal=True`` the tiles above the diagonal are never visited at all.

Conventions (those of :mod:`attnlib.reference`)
-----------------------------------------------
* ``q: (B, H, N_q, d)``, ``k, v: (B, H_kv, N_k, d)``; query head ``h`` reads key/value head
  ``h // (H // H_kv)``. ``d`` must be 16, 32, 64 or 128, and ``v`` must have the same ``d``.
* ``causal=True``: query ``i`` sees key ``j`` iff ``j <= i + N_k - N_q`` (queries aligned to the
  end of the keys). A query that sees no key (``N_q > N_k``) gets ``out = 0`` and
  ``lse = -inf``, and zero gradients: never NaN.
* ``lse`` is in natural-log units, ``(B, H, N_q)`` float32, equal to
  ``reference.attention(..., return_lse=True)``'s.
* Any strides: the kernels receive every stride, so transposed views such as
  ``x.view(B, N, H, d).transpose(1, 2)`` are read in place, without ``.contiguous()``.
  Outputs are freshly allocated and contiguous.
* dtypes: float32 and float16 everywhere, bfloat16 on GPUs of compute capability 8.0 or
  newer (and in the interpreter, see below). float32 inputs use IEEE-rounded float32 products
  in ``tl.dot`` (not TF32), so they match the reference to ~1e-6; float16/bfloat16 use tensor
  cores with float32 accumulation.

Running without a GPU
---------------------
Set ``os.environ["TRITON_INTERPRET"] = "1"`` **before the first** ``import triton`` (in a
notebook: in the first cell). The kernels then run in Triton's interpreter on CPU tensors
(numpy under the hood: slow, fine for N up to a few hundred). The interpreter multiplies
bfloat16 *bit patterns* in ``tl.dot``, so when interpreting bfloat16 the kernels cast the dot's
operands to float32 first (the ``UPCAST_DOT`` switch); on a GPU bfloat16 goes to tensor cores
unchanged. :func:`compile_kernels` builds the PTX and cubin for any NVIDIA target without a GPU.

Numerics: the running max keeps every ``exp2`` argument <= 0, so logits of 1e4 neither
overflow nor give NaN. At such magnitudes float32 resolves a logit only to ~1e-3, so the
backward's recomputed ``P`` (from the stored ``L``) carries ~1e-3 relative error, as in
FlashAttention itself; at ordinary logits (|S| < 100) the float32 kernels match the reference
to ~1e-6.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._checks import check_flag, check_qkv, check_tensor, first_order_only, resolve_scale

__all__ = [
    "flash_attention_triton",
    "flash_forward",
    "flash_backward",
    "KernelConfig",
    "kernel_config",
    "compile_kernels",
    "unsupported_reason",
    "SUPPORTED_HEAD_DIMS",
    "check_saved",
    "KERNELS",
    "LOG2E",
]

SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)
LOG2E = 1.4426950408889634  # log2(e): exp(x) = exp2(x * log2(e)); the kernels write it as a literal


# --------------------------------------------------------------------------------------
# Two compile-time settings shared by the kernels
# --------------------------------------------------------------------------------------
# tl.dot's precision for float32 inputs: "ieee" rounds products and sums as IEEE float32, so the float32
# kernels match the reference to ~1e-6; a GPU's default, TF32, keeps 10 mantissa bits (~1e-3).
# float16/bfloat16 inputs ignore it: they always use tensor cores with a float32 accumulator.
DOT_PRECISION = tl.constexpr("ieee")
# UPCAST_DOT (a kernel argument) is True only for bfloat16 in the interpreter, whose tl.dot
# multiplies bfloat16 *bit patterns*: the kernels then cast their tiles to float32 after loading.


# --------------------------------------------------------------------------------------
# Forward (FlashAttention-2, Alg. 1)
# --------------------------------------------------------------------------------------
@triton.jit
def _fwd_tiles(
    acc, m_i, l_i,  # running output (BLOCK_M, HEAD_DIM), max (BLOCK_M,), sum (BLOCK_M,)
    q,  # (BLOCK_M, HEAD_DIM) this program's queries, already in registers
    k_ptrs, v_ptrs,  # (BLOCK_N, HEAD_DIM) pointers to the first key/value tile of this head
    stride_kn, stride_vn,
    lo, hi,  # key range [lo, hi) to visit, lo a multiple of BLOCK_N
    offs_m, offs_n,  # (BLOCK_M,) query indices, (BLOCK_N,) 0..BLOCK_N-1
    N_K, causal_offset, qk_scale,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_N: tl.constexpr,
    # Block-sparse schedule (attnlib.optim.block_mask): a list of tiles instead of a range
    tile_list=None, tile_slots=None, mask_ptrs=None, mask_tile_size=0, visits=None,
    SPARSE: tl.constexpr = False, COUNT_VISITS: tl.constexpr = False,
):  # fmt: skip
    """Alg. 1, lines 6-11: fold the key tiles in ``[lo, hi)`` into ``(acc, m_i, l_i)``.

    ``MASKED`` is a compile-time switch: the kernel calls this function twice, once for the
    tiles every query of the block sees in full (no mask, no bounds checks: the fast path),
    once for the tiles on the causal diagonal and the ragged last tile (masked).
    """
    for start_n in range(lo, hi, BLOCK_N):
        if SPARSE:  # [lo, hi) then counts entries of tile_list, BLOCK_N per entry: visit the listed tile
            tile = tl.load(tile_list + start_n // BLOCK_N)
            start_n = tile * BLOCK_N
        start_n = tl.multiple_of(start_n, BLOCK_N)  # tells the compiler loads are aligned
        if COUNT_VISITS:  # tests only: count the loads of each key tile
            tl.store(visits + start_n // BLOCK_N, tl.load(visits + start_n // BLOCK_N) + 1)
        # Alg. 1, line 7: load K_j, V_j from HBM to on-chip SRAM.
        if MASKED:
            key_ok = (start_n + offs_n) < N_K  # (BLOCK_N,) False past the last key
            k = tl.load(k_ptrs + start_n * stride_kn, mask=key_ok[:, None], other=0.0)  # (BLOCK_N, HEAD_DIM)
            v = tl.load(v_ptrs + start_n * stride_vn, mask=key_ok[:, None], other=0.0)  # (BLOCK_N, HEAD_DIM)
        else:
            k = tl.load(k_ptrs + start_n * stride_kn)  # (BLOCK_N, HEAD_DIM)
            v = tl.load(v_ptrs + start_n * stride_vn)  # (BLOCK_N, HEAD_DIM)
        if UPCAST_DOT:  # bfloat16 in the interpreter only (see DOT_PRECISION above)
            k, v = k.to(tl.float32), v.to(tl.float32)
        # Alg. 1, line 8: S = Q K^T, scaled. qk_scale = scale * log2(e), so s is in log2 units.
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N) float32
        if MASKED:
            allowed = key_ok[None, :]  # (1, BLOCK_N)
            if CAUSAL:  # query i sees key j iff j <= i + N_K - N_Q
                allowed = allowed & ((start_n + offs_n)[None, :] <= offs_m[:, None] + causal_offset)
            if SPARSE:  # a partial tile of a block mask: its stored element mask
                slot = tl.load(tile_slots + tile).to(tl.int64)
                allowed = allowed & (tl.load(mask_ptrs + slot * mask_tile_size) != 0)  # (BLOCK_M, BLOCK_N)
            s = tl.where(allowed, s, float("-inf"))  # (BLOCK_M, BLOCK_N)
        # Alg. 1, line 9: the new running max, and the un-normalized probabilities.
        m_new = tl.maximum(m_i, tl.max(s, 1))  # (BLOCK_M,)
        if MASKED:
            # A row that has seen only masked keys so far has m_new = -inf, and
            # -inf - (-inf) = NaN. Subtracting 0 instead gives exp2(-inf) = 0, as wanted.
            m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)  # (BLOCK_M,)
        else:
            m_sub = m_new  # every row has seen a key: m_new is finite
        p = tl.math.exp2(s - m_sub[:, None])  # (BLOCK_M, BLOCK_N)
        # Alg. 1, lines 9-10: rescale the old sum and output by exp(m_old - m_new) <= 1.
        alpha = tl.math.exp2(m_i - m_sub)  # (BLOCK_M,) 0 on the first tile (m_i = -inf)
        l_i = l_i * alpha + tl.sum(p, 1)  # (BLOCK_M,)
        acc = acc * alpha[:, None]  # (BLOCK_M, HEAD_DIM)
        # P is rounded to the dtype of V (fp16/bf16 on tensor cores), as in the paper.
        acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)  # (BLOCK_M, HEAD_DIM)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _key_range(start_m, N_Q, N_K, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The key tiles the query block starting at row ``start_m`` visits: ``(n_full, n_hi)``.

    Query i sees key j iff j <= i + (N_K - N_Q) when causal (queries aligned to the end of the
    keys), else every key j < N_K. Keys [0, n_full) need no mask; keys [n_full, n_hi) do; tiles
    from n_hi on are fully masked and never visited. The forward and the dQ kernel both use it.
    """
    causal_offset = N_K - N_Q
    if CAUSAL:
        # keys that *every* query of the block sees: j <= start_m + causal_offset
        n_full = tl.minimum(tl.maximum(start_m + causal_offset + 1, 0), N_K)
        # keys that *some* query of the block sees: j <= last query + causal_offset;
        # tiles past that are fully masked and skipped (half of the work when N_Q == N_K).
        n_hi = tl.minimum(tl.maximum(tl.minimum(start_m + BLOCK_M, N_Q) + causal_offset, 0), N_K)
    else:
        n_full = N_K
        n_hi = N_K
    n_full = (n_full // BLOCK_N) * BLOCK_N  # whole tiles only: the ragged last tile needs a mask
    return n_full, n_hi


@triton.jit
def _flash_fwd_kernel(
    Q, K, V, Out, Lse,  # pointers; Lse is float32 (B, H, N_Q), contiguous
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, GROUP, N_Q, N_K,  # GROUP = H // H_kv query heads per key/value head
    qk_scale,  # scale * log2(e)
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """One program per (query block, batch x head): grid = (cdiv(N_Q, BLOCK_M), B * H)."""
    # --- which tile is mine? (Alg. 1, line 3: "in parallel for each i") --------------------
    pid_m = tl.program_id(0)  # query block index
    off_bh = tl.program_id(1)  # flattened (batch, head)
    off_b = (off_bh // H).to(tl.int64)  # int64: b * stride_b can exceed 2**31 on big tensors
    off_h = (off_bh % H).to(tl.int64)
    off_hkv = off_h // GROUP  # grouped / multi-query heads: kv head = h // (H // H_kv)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,) query indices of this block
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,) key indices within a tile
    offs_d = tl.arange(0, HEAD_DIM)  # (HEAD_DIM,)

    # --- pointers: base of this (batch, head) + row * row_stride + column * column_stride ---
    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    k_ptrs = K + off_b * stride_kb + off_hkv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + off_b * stride_vb + off_hkv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd

    # Alg. 1, line 4: load Q_i once; it stays in registers for the whole loop.
    # Rows past N_Q (ragged last block) read 0 and are never stored.
    q_ok = offs_m < N_Q  # (BLOCK_M,)
    q = tl.load(q_ptrs, mask=q_ok[:, None], other=0.0)  # (BLOCK_M, HEAD_DIM)
    if UPCAST_DOT:
        q = q.to(tl.float32)

    # Alg. 1, line 5: running max m, running sum l, output accumulator (all float32).
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # (BLOCK_M,)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # (BLOCK_M,)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)  # (BLOCK_M, HEAD_DIM)

    # --- which key tiles do I visit? ------------------------------------------------------
    # Query i sees key j iff j <= i + causal_offset (causal), else every key j < N_K.
    causal_offset = N_K - N_Q
    n_full, n_hi = _key_range(pid_m * BLOCK_M, N_Q, N_K, CAUSAL, BLOCK_M, BLOCK_N)

    # Stage 1: tiles entirely below the diagonal and inside N_K: no mask at all.
    acc, m_i, l_i = _fwd_tiles(
        acc, m_i, l_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, 0, n_full,
        offs_m, offs_n, N_K, causal_offset, qk_scale,
        False, CAUSAL, UPCAST_DOT, BLOCK_N,
    )  # fmt: skip
    # Stage 2: the diagonal tiles and the ragged last tile: masked.
    acc, m_i, l_i = _fwd_tiles(
        acc, m_i, l_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, n_full, n_hi,
        offs_m, offs_n, N_K, causal_offset, qk_scale,
        True, CAUSAL, UPCAST_DOT, BLOCK_N,
    )  # fmt: skip

    # Alg. 1, line 12: normalize once. A row that saw no key has l = 0 and acc = 0:
    # dividing by 1 instead keeps its output 0 (not 0/0 = NaN).
    empty = l_i == 0.0  # (BLOCK_M,)
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]  # (BLOCK_M, HEAD_DIM)
    # Alg. 1, line 13: L = m + log(l). m is in log2 units: L = (m + log2 l) * ln 2 (natural log).
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)  # ln(2); (BLOCK_M,)

    # Alg. 1, lines 14-15: write O_i and L_i to HBM.
    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=q_ok[:, None])
    tl.store(Lse + off_bh.to(tl.int64) * N_Q + offs_m, lse, mask=q_ok)


# --------------------------------------------------------------------------------------
# Backward (FlashAttention-2, Alg. 2), in three kernels
# --------------------------------------------------------------------------------------
@triton.jit
def _bwd_preprocess_kernel(
    Out, dOut, Delta,  # Delta is float32 (B, H, N_Q), contiguous
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    H, N_Q,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """Alg. 2, line 4: Delta_i = rowsum(dO_i * O_i) (the paper's D_i). Grid = (cdiv(N_Q, BLOCK_M), B * H).

    Delta is the row-wise ``sum_j P_ij dP_ij`` that softmax's backward needs, computed from the
    outputs instead of from P (which we do not have).
    """
    pid_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_d = tl.arange(0, HEAD_DIM)  # (HEAD_DIM,)
    row_ok = offs_m < N_Q  # (BLOCK_M,)
    o = tl.load(
        Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
        mask=row_ok[:, None], other=0.0,
    )  # (BLOCK_M, HEAD_DIM)  # fmt: skip
    do = tl.load(
        dOut + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
        mask=row_ok[:, None], other=0.0,
    )  # (BLOCK_M, HEAD_DIM)  # fmt: skip
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # (BLOCK_M,)
    tl.store(Delta + off_bh.to(tl.int64) * N_Q + offs_m, delta, mask=row_ok)


@triton.jit
def _bwd_dkdv_tiles(
    dk, dv,  # (BLOCK_N, HEAD_DIM) float32 accumulators
    k, v,  # (BLOCK_N, HEAD_DIM) this program's keys and values, in registers
    q_ptrs, do_ptrs,  # (BLOCK_M, HEAD_DIM) pointers to the first query tile of this head
    stride_qm, stride_dom,
    lse_ptr, delta_ptr,  # Lse and Delta of this (batch, head), float32, contiguous
    lo, hi,  # query range [lo, hi) to visit, lo a multiple of BLOCK_M
    offs_m, offs_n,  # (BLOCK_M,) 0..BLOCK_M-1, (BLOCK_N,) key indices of this program
    N_Q, causal_offset, qk_scale,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_M: tl.constexpr,
    # Block-sparse schedule (attnlib.optim.block_mask): a list of tiles instead of a range
    tile_list=None, tile_slots=None, mask_ptrs=None, mask_tile_size=0, visits=None,
    SPARSE: tl.constexpr = False, COUNT_VISITS: tl.constexpr = False,
):  # fmt: skip
    """Alg. 2, lines 8-17 for one key block: add the query tiles ``[lo, hi)`` to dK and dV.

    Works with the *transposed* tiles (keys as rows), so that P^T and dS^T, which dV and dK
    need, come out of the dot products directly.
    """
    for start_m in range(lo, hi, BLOCK_M):
        if SPARSE:  # entries of tile_list (transposed lists: query tiles), BLOCK_M per entry
            tile = tl.load(tile_list + start_m // BLOCK_M)
            start_m = tile * BLOCK_M
        start_m = tl.multiple_of(start_m, BLOCK_M)
        if COUNT_VISITS:  # tests only: count the loads of each query tile
            tl.store(visits + start_m // BLOCK_M, tl.load(visits + start_m // BLOCK_M) + 1)
        rows = start_m + offs_m  # (BLOCK_M,) query indices
        # Alg. 2, line 9: load Q_i, dO_i, L_i, Delta_i.
        if MASKED:
            row_ok = rows < N_Q  # (BLOCK_M,)
            q = tl.load(q_ptrs + start_m * stride_qm, mask=row_ok[:, None], other=0.0)  # (BLOCK_M, HEAD_DIM)
            do = tl.load(do_ptrs + start_m * stride_dom, mask=row_ok[:, None], other=0.0)  # (BLOCK_M, HEAD_DIM)
            lse = tl.load(lse_ptr + rows, mask=row_ok, other=0.0)  # (BLOCK_M,)
            delta = tl.load(delta_ptr + rows, mask=row_ok, other=0.0)  # (BLOCK_M,)
        else:
            q = tl.load(q_ptrs + start_m * stride_qm)  # (BLOCK_M, HEAD_DIM)
            do = tl.load(do_ptrs + start_m * stride_dom)  # (BLOCK_M, HEAD_DIM)
            lse = tl.load(lse_ptr + rows)  # (BLOCK_M,)
            delta = tl.load(delta_ptr + rows)  # (BLOCK_M,)
        if UPCAST_DOT:
            q, do = q.to(tl.float32), do.to(tl.float32)
        # A query that sees no key has L = -inf; +inf instead makes its P exactly 0 (not NaN).
        lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634  # log2 units
        # Alg. 2, lines 10-11: recompute P^T = exp(S^T - L) from the saved logsumexp.
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M), log2 units
        if MASKED:
            allowed = row_ok[None, :]  # (1, BLOCK_M)
            if CAUSAL:
                allowed = allowed & (offs_n[:, None] <= rows[None, :] + causal_offset)
            if SPARSE:  # the stored element mask, read transposed: (BLOCK_N, BLOCK_M)
                slot = tl.load(tile_slots + tile).to(tl.int64)
                allowed = allowed & (tl.load(mask_ptrs + slot * mask_tile_size) != 0)
            s_t = tl.where(allowed, s_t, float("-inf"))  # masked: P = exp2(-inf) = 0
        p_t = tl.math.exp2(s_t - lse[None, :])  # (BLOCK_N, BLOCK_M)
        # Alg. 2, line 12: dV_j += P^T dO_i.
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=DOT_PRECISION)  # (BLOCK_N, HEAD_DIM)
        # Alg. 2, line 13: dP^T = V_j dO_i^T.
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_M)
        # Alg. 2, line 14: dS = P * (dP - Delta), the softmax backward.
        ds_t = p_t * (dp_t - delta[None, :])  # (BLOCK_N, BLOCK_M)
        # Alg. 2, line 16: dK_j += dS^T Q_i (times the scale, applied once at the end).
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)  # (BLOCK_N, HEAD_DIM)
    return dk, dv


@triton.jit
def _flash_bwd_dkdv_kernel(
    Q, K, V, dOut, Lse, Delta, dK, dV,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H, H_KV, GROUP, N_Q, N_K,
    scale, qk_scale,  # scale and scale * log2(e)
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """dK, dV of one key block. Grid = (cdiv(N_K, BLOCK_N), B * H_KV).

    Each program owns its key block's dK and dV rows, so it can write them without atomics.
    With grouped heads, a key/value head is shared by GROUP query heads: the program loops
    over those heads too and sums their contributions in registers.
    """
    pid_n = tl.program_id(0)  # key block index
    off_bhkv = tl.program_id(1)  # flattened (batch, kv head)
    off_b = (off_bhkv // H_KV).to(tl.int64)
    off_hkv = (off_bhkv % H_KV).to(tl.int64)

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,) key indices of this block
    offs_m = tl.arange(0, BLOCK_M)  # (BLOCK_M,) query indices within a tile
    offs_d = tl.arange(0, HEAD_DIM)  # (HEAD_DIM,)
    key_ok = offs_n < N_K  # (BLOCK_N,) rows past N_K read 0 and are never stored

    # Alg. 2, lines 6-7: load K_j, V_j once; initialize dK_j, dV_j in registers.
    k = tl.load(
        K + off_b * stride_kb + off_hkv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
        mask=key_ok[:, None], other=0.0,
    )  # (BLOCK_N, HEAD_DIM)  # fmt: skip
    v = tl.load(
        V + off_b * stride_vb + off_hkv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
        mask=key_ok[:, None], other=0.0,
    )  # (BLOCK_N, HEAD_DIM)  # fmt: skip
    if UPCAST_DOT:
        k, v = k.to(tl.float32), v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)  # (BLOCK_N, HEAD_DIM)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)  # (BLOCK_N, HEAD_DIM)

    # --- which query tiles see this key block? ------------------------------------------
    causal_offset = N_K - N_Q
    m_end = (N_Q // BLOCK_M) * BLOCK_M  # end of the whole query tiles
    if CAUSAL:
        # query i sees key j iff i >= j - causal_offset. Queries before the first key's
        # threshold see nothing of this block: skip them.
        m_lo = (tl.maximum(start_n - causal_offset, 0) // BLOCK_M) * BLOCK_M
        # from the last key's threshold on, a query sees every key of the block: no mask.
        m_full = tl.maximum(tl.minimum(start_n + BLOCK_N, N_K) - 1 - causal_offset, 0)
        m_full = tl.minimum(((m_full + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, m_end)  # round up to a tile
    else:
        m_lo = 0
        m_full = 0
    m_tail = tl.maximum(m_end, m_lo)  # the ragged last query tile (if any) starts here

    for g in range(0, GROUP):  # the query heads that share this key/value head
        off_h = off_hkv * GROUP + g
        off_bh = off_b * H + off_h
        q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
        do_ptrs = (
            dOut + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod
        )
        lse_ptr = Lse + off_bh * N_Q
        delta_ptr = Delta + off_bh * N_Q
        # The diagonal tiles (masked), the tiles that see the whole key block (no mask),
        # and the ragged last query tile (masked).
        dk, dv = _bwd_dkdv_tiles(
            dk, dv, k, v, q_ptrs, do_ptrs, stride_qm, stride_dom, lse_ptr, delta_ptr,
            m_lo, m_full, offs_m, offs_n, N_Q, causal_offset, qk_scale,
            True, CAUSAL, UPCAST_DOT, BLOCK_M,
        )  # fmt: skip
        dk, dv = _bwd_dkdv_tiles(
            dk, dv, k, v, q_ptrs, do_ptrs, stride_qm, stride_dom, lse_ptr, delta_ptr,
            m_full, m_end, offs_m, offs_n, N_Q, causal_offset, qk_scale,
            False, CAUSAL, UPCAST_DOT, BLOCK_M,
        )  # fmt: skip
        dk, dv = _bwd_dkdv_tiles(
            dk, dv, k, v, q_ptrs, do_ptrs, stride_qm, stride_dom, lse_ptr, delta_ptr,
            m_tail, N_Q, offs_m, offs_n, N_Q, causal_offset, qk_scale,
            True, CAUSAL, UPCAST_DOT, BLOCK_M,
        )  # fmt: skip

    # S = scale * Q K^T, so dK = scale * dS^T Q (the scale was left out of the loop).
    dk = dk * scale
    kv_rows = offs_n[:, None]  # (BLOCK_N, 1)
    dk_ptrs = dK + off_b * stride_dkb + off_hkv * stride_dkh + kv_rows * stride_dkn + offs_d[None, :] * stride_dkd
    dv_ptrs = dV + off_b * stride_dvb + off_hkv * stride_dvh + kv_rows * stride_dvn + offs_d[None, :] * stride_dvd
    # Alg. 2, line 18: write dK_j, dV_j to HBM.
    tl.store(dk_ptrs, dk.to(dK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(dv_ptrs, dv.to(dV.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def _bwd_dq_tiles(
    dq,  # (BLOCK_M, HEAD_DIM) float32 accumulator
    q, do, lse, delta,  # this program's queries, output gradients, L and Delta (log2 units for L)
    k_ptrs, v_ptrs,  # (BLOCK_N, HEAD_DIM) pointers to the first key/value tile of the kv head
    stride_kn, stride_vn,
    lo, hi,  # key range [lo, hi), lo a multiple of BLOCK_N
    offs_m, offs_n,  # (BLOCK_M,) query indices of this program, (BLOCK_N,) 0..BLOCK_N-1
    N_K, causal_offset, qk_scale,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr, BLOCK_N: tl.constexpr,
    # Block-sparse schedule (attnlib.optim.block_mask): a list of tiles instead of a range
    tile_list=None, tile_slots=None, mask_ptrs=None, mask_tile_size=0, visits=None,
    SPARSE: tl.constexpr = False, COUNT_VISITS: tl.constexpr = False,
):  # fmt: skip
    """Alg. 2, lines 8-17 (dQ part, line 15) for one query block: add the key tiles ``[lo, hi)`` to dQ."""
    for start_n in range(lo, hi, BLOCK_N):
        if SPARSE:  # entries of tile_list, BLOCK_N per entry (see _fwd_tiles)
            tile = tl.load(tile_list + start_n // BLOCK_N)
            start_n = tile * BLOCK_N
        start_n = tl.multiple_of(start_n, BLOCK_N)
        if COUNT_VISITS:  # tests only
            tl.store(visits + start_n // BLOCK_N, tl.load(visits + start_n // BLOCK_N) + 1)
        cols = start_n + offs_n  # (BLOCK_N,) key indices
        if MASKED:
            key_ok = cols < N_K  # (BLOCK_N,)
            k = tl.load(k_ptrs + start_n * stride_kn, mask=key_ok[:, None], other=0.0)  # (BLOCK_N, HEAD_DIM)
            v = tl.load(v_ptrs + start_n * stride_vn, mask=key_ok[:, None], other=0.0)  # (BLOCK_N, HEAD_DIM)
        else:
            k = tl.load(k_ptrs + start_n * stride_kn)  # (BLOCK_N, HEAD_DIM)
            v = tl.load(v_ptrs + start_n * stride_vn)  # (BLOCK_N, HEAD_DIM)
        if UPCAST_DOT:  # bfloat16 in the interpreter only (see DOT_PRECISION above)
            k, v = k.to(tl.float32), v.to(tl.float32)
        # Alg. 2, lines 10-11: recompute P = exp(S - L).
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASKED:
            allowed = key_ok[None, :]  # (1, BLOCK_N)
            if CAUSAL:
                allowed = allowed & (cols[None, :] <= offs_m[:, None] + causal_offset)
            if SPARSE:  # a partial tile of a block mask: its stored element mask
                slot = tl.load(tile_slots + tile).to(tl.int64)
                allowed = allowed & (tl.load(mask_ptrs + slot * mask_tile_size) != 0)  # (BLOCK_M, BLOCK_N)
            s = tl.where(allowed, s, float("-inf"))  # masked: P = exp2(-inf) = 0
        p = tl.math.exp2(s - lse[:, None])  # (BLOCK_M, BLOCK_N)
        # Alg. 2, lines 13-14: dP = dO V^T, dS = P * (dP - Delta).
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_N)
        ds = p * (dp - delta[:, None])  # (BLOCK_M, BLOCK_N)
        # Alg. 2, line 15: dQ_i += dS K_j (times the scale, at the end).
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)  # (BLOCK_M, HEAD_DIM)
    return dq


@triton.jit
def _flash_bwd_dq_kernel(
    Q, K, V, dOut, Lse, Delta, dQ,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    H, GROUP, N_Q, N_K,
    scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, UPCAST_DOT: tl.constexpr,
):  # fmt: skip
    """dQ of one query block. Grid = (cdiv(N_Q, BLOCK_M), B * H). Same key ranges as the forward."""
    pid_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    off_hkv = off_h // GROUP

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_d = tl.arange(0, HEAD_DIM)  # (HEAD_DIM,)
    row_ok = offs_m < N_Q  # (BLOCK_M,)

    q = tl.load(
        Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
        mask=row_ok[:, None], other=0.0,
    )  # (BLOCK_M, HEAD_DIM)  # fmt: skip
    do = tl.load(
        dOut + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
        mask=row_ok[:, None], other=0.0,
    )  # (BLOCK_M, HEAD_DIM)  # fmt: skip
    if UPCAST_DOT:
        q, do = q.to(tl.float32), do.to(tl.float32)
    lse = tl.load(Lse + off_bh.to(tl.int64) * N_Q + offs_m, mask=row_ok, other=0.0)  # (BLOCK_M,)
    lse = tl.where(lse == float("-inf"), float("inf"), lse) * 1.4426950408889634  # P = 0 for empty rows
    delta = tl.load(Delta + off_bh.to(tl.int64) * N_Q + offs_m, mask=row_ok, other=0.0)  # (BLOCK_M,)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)  # (BLOCK_M, HEAD_DIM)

    k_ptrs = K + off_b * stride_kb + off_hkv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + off_b * stride_vb + off_hkv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd

    causal_offset = N_K - N_Q
    n_full, n_hi = _key_range(start_m, N_Q, N_K, CAUSAL, BLOCK_M, BLOCK_N)  # the forward's tiles

    dq = _bwd_dq_tiles(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, 0, n_full,
        offs_m, offs_n, N_K, causal_offset, qk_scale,
        False, CAUSAL, UPCAST_DOT, BLOCK_N,
    )  # fmt: skip
    dq = _bwd_dq_tiles(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, n_full, n_hi,
        offs_m, offs_n, N_K, causal_offset, qk_scale,
        True, CAUSAL, UPCAST_DOT, BLOCK_N,
    )  # fmt: skip

    dq = dq * scale
    dq_ptrs = dQ + off_b * stride_dqb + off_h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd
    tl.store(dq_ptrs, dq.to(dQ.dtype.element_ty), mask=row_ok[:, None])


# --------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------
# The kernels are compiled once per (dtype, head dim, block sizes, causal) and reused.
# True when this module was imported with TRITON_INTERPRET=1: @triton.jit then returns an
# interpreter object instead of a JITFunction.
_INTERPRETING = not isinstance(_flash_fwd_kernel, triton.runtime.jit.JITFunction)

KERNELS = ("forward", "preprocess", "dkdv", "dq")


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch options of one kernel."""

    block_m: int  # query rows per tile (forward/dq: per program; dkdv: per loop step)
    block_n: int  # key rows per tile (forward/dq: per loop step; dkdv: per program)
    num_warps: int = 4  # 32 threads each; more warps for bigger tiles
    num_stages: int = 2  # software pipelining depth of the loads (shared-memory buffers)


def kernel_config(kernel: str, head_dim: int, dtype: torch.dtype, capability: int | None) -> KernelConfig:
    """The one configuration used for ``kernel`` (no autotuning, see FACTS: it needs a GPU).

    Args:
        kernel: one of ``"forward"``, ``"preprocess"``, ``"dkdv"``, ``"dq"``.
        head_dim: 16, 32, 64 or 128.
        dtype: the input dtype (float32 tiles take twice the shared memory of float16).
        capability: compute capability as ``10 * major + minor`` (75 = T4, 80 = A100,
            90 = H100/H200), or None for Triton's interpreter.

    Sizes on GPUs (chosen to fit and to follow the usual practice; not tuned on hardware):

    * Ampere and newer (sm80+): as in the Triton tutorial (06) and FlashAttention-2, 128-row
      query tiles in the forward (each K/V tile loaded from HBM is reused by 128 queries) and a
      3-deep load pipeline; smaller tiles when a tile row is 256 bytes or more (d = 128 in 16
      bits, d = 64 in float32) and smaller again at 512 bytes (float32, d = 128), so that every
      kernel fits the 99 KiB of shared memory of the smallest sm8x parts (sm86/sm89).
    * Hopper (sm90, H100/H200) with 256-byte rows (d = 128 in 16 bits, the benchmark's target):
      227 KiB of shared memory allow bigger tiles, those of the Triton tutorial's H100 backward.
    * Turing (sm75, the Colab T4): Triton 3.7 emits no tensor-core instructions for ``tl.dot``
      there (it unrolls FMA loops) and a block may use at most 64 KiB of shared memory, so the
      tiles are small (16-64) and there is no pipelining.

    ``tests/test_flash_triton.py`` compiles them for sm75, sm80 and sm90 and checks the shared
    memory each needs against the target's limit.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if capability is None:
        # Interpreter: every program is a Python call over numpy arrays, so fewer, bigger
        # tiles are faster (N = 256 with B * H = 2: ~0.3 s forward, ~0.7 s backward).
        return KernelConfig(block_m=64, block_n=64, num_warps=1, num_stages=1)
    row_bytes = head_dim * (4 if dtype == torch.float32 else 2)  # one row of a Q/K/V tile
    size = 0 if row_bytes < 256 else 1 if row_bytes < 512 else 2  # 2: float32 at d = 128
    if kernel == "preprocess":  # elementwise and a row sum: one big tile, nothing to pipeline
        return KernelConfig(block_m=128, block_n=128, num_warps=4, num_stages=1)
    if capability < 80:  # Turing: FMA dots, 64 KiB of shared memory
        if kernel == "forward":
            return KernelConfig(block_m=(64, 64, 32)[size], block_n=32, num_warps=4, num_stages=1)
        if kernel == "dkdv":  # per program: BLOCK_N keys; loop over tiles of BLOCK_M queries
            return KernelConfig(block_m=(32, 32, 16)[size], block_n=(64, 32, 32)[size], num_warps=4, num_stages=1)
        return KernelConfig(block_m=(64, 32, 16)[size], block_n=32, num_warps=4, num_stages=1)
    stages = (3, 3, 2)[size]
    if capability >= 90 and size == 1:  # Hopper, 256-byte rows (d = 128 in 16 bits): 227 KiB of shared memory
        # The tiles of the Triton tutorial's fixed H100 backward (32 x 128 for dK/dV, 128 x 32 for dQ,
        # 4 warps) and twice the forward's key tile: 128, 112 and 112 KiB of shared memory.
        return {
            "forward": KernelConfig(block_m=128, block_n=64, num_warps=8, num_stages=3),
            "dkdv": KernelConfig(block_m=32, block_n=128, num_warps=4, num_stages=3),
            "dq": KernelConfig(block_m=128, block_n=32, num_warps=4, num_stages=3),
        }[kernel]
    if kernel == "forward":
        warps = 8 if head_dim == 128 else 4
        return KernelConfig(
            block_m=(128, 128, 64)[size], block_n=(64, 32, 32)[size], num_warps=warps, num_stages=stages
        )
    if kernel == "dkdv":
        return KernelConfig(block_m=32, block_n=(128, 64, 32)[size], num_warps=(8, 4, 4)[size], num_stages=stages)
    # dq: per program BLOCK_M queries; loop over tiles of BLOCK_N keys
    return KernelConfig(block_m=(128, 64, 32)[size], block_n=32, num_warps=(8, 4, 4)[size], num_stages=stages)


def _capability(device: torch.device) -> int | None:
    if _INTERPRETING:
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------
_TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_device(q: torch.Tensor) -> None:
    if q.device.type == "cpu":
        if not _INTERPRETING:
            raise RuntimeError(
                "q is a CPU tensor, but Triton was imported without its interpreter, so the kernels need a "
                "CUDA GPU. To run them on the CPU, set os.environ['TRITON_INTERPRET'] = '1' before the first "
                "`import triton` (in a notebook: in the first cell, then restart the kernel), or use the "
                "PyTorch path: attnlib.optim.flash.flash_attention(..., backend='torch')."
            )
    elif q.device.type != "cuda":
        raise ValueError(f"q must be on a CUDA GPU (or the CPU with TRITON_INTERPRET=1), got device {q.device}")


def _check_inputs(q, k, v, causal, scale) -> tuple[int, int, int, int, int, int, float]:
    """Validate the arguments; return ``(B, H, H_kv, N_q, N_k, d, scale)``."""
    B, H, H_kv, N_q, N_k, d = check_qkv(q, k, v)
    if q.dtype not in _TRITON_DTYPES:
        raise TypeError(
            f"q, k, v must be float16, bfloat16 or float32 for the Triton kernels, got {q.dtype} "
            "(use attnlib.reference.attention for float64)"
        )
    if d not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dimension d must be one of {SUPPORTED_HEAD_DIMS} for the Triton kernels, got d={d}")
    if v.shape[-1] != d:
        raise ValueError(f"v must have the head dimension of q and k (d={d}), got d_v={v.shape[-1]}")
    check_flag("causal", causal)
    scale = resolve_scale(scale, 1.0 / math.sqrt(d))
    _check_device(q)
    if q.dtype == torch.bfloat16 and q.device.type == "cuda" and not _INTERPRETING:
        if torch.cuda.get_device_capability(q.device) < (8, 0):
            name = torch.cuda.get_device_name(q.device)
            raise TypeError(f"bfloat16 needs a GPU of compute capability 8.0 or newer, got {name}: use float16")
    return B, H, H_kv, N_q, N_k, d, float(scale)


def unsupported_reason(q, k, v, causal: bool = False, scale: float | None = None) -> str | None:
    """None if :func:`flash_attention_triton` accepts these inputs, else why not (never raises).

    For callers that fall back to another path, e.g. ``attnlib.optim.flash``'s ``backend="auto"``
    (head dims other than 16/32/64/128, ``d_v != d``, float64, bfloat16 before sm80, CPU tensors
    without the interpreter).
    """
    try:
        _check_inputs(q, k, v, causal, scale)
    except (TypeError, ValueError, RuntimeError) as e:
        return str(e)
    return None


def _check_block(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 16 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two >= 16 (tl.dot needs 16), got {value!r}")


def _configs(kernel: str, d: int, dtype: torch.dtype, device, block_m, block_n) -> KernelConfig:
    _check_block("block_m", block_m)
    _check_block("block_n", block_n)
    cfg = kernel_config(kernel, d, dtype, _capability(device))
    return KernelConfig(block_m or cfg.block_m, block_n or cfg.block_n, cfg.num_warps, cfg.num_stages)


def _upcast_dot(dtype: torch.dtype) -> bool:
    """The interpreter's tl.dot multiplies bfloat16 bit patterns: cast to float32 there."""
    return _INTERPRETING and dtype == torch.bfloat16


def check_saved(q, do, out, lse) -> torch.Tensor:
    """Check the saved ``do, out: (B, H, N_q, d)`` and ``lse: (B, H, N_q)`` of a backward; return ``lse`` contiguous.

    ``do`` and ``out`` must have the shape, dtype and device of ``q``; ``lse`` must be float32.
    The kernels index ``lse`` as ``(B * H, N_q)`` rows, hence the contiguous copy (if needed).
    """
    B, H, N_q = q.shape[:3]
    for name, x in (("do", do), ("out", out)):
        check_tensor(name, x, ndim=4)
        if x.shape != q.shape or x.dtype != q.dtype or x.device != q.device:
            raise ValueError(
                f"{name} must match q: expected shape {tuple(q.shape)}, {q.dtype} on {q.device}, "
                f"got shape {tuple(x.shape)}, {x.dtype} on {x.device}"
            )
    check_tensor("lse", lse, ndim=3)
    if lse.shape != (B, H, N_q) or lse.dtype != torch.float32 or lse.device != q.device:
        raise ValueError(
            f"lse must be float32 of shape (B, H, N_q) = {(B, H, N_q)} on {q.device}, "
            f"got {lse.dtype} of shape {tuple(lse.shape)} on {lse.device}"
        )
    return lse.contiguous()


# --------------------------------------------------------------------------------------
# Python wrappers
# --------------------------------------------------------------------------------------
def flash_forward(q, k, v, causal: bool = False, scale: float | None = None, *, block_m=None, block_n=None):
    """FlashAttention forward: ``(out, lse)``, the kernel :func:`_flash_fwd_kernel`.

    Args:
        q: ``(B, H, N_q, d)``; k, v: ``(B, H_kv, N_k, d)``, ``H_kv`` dividing ``H``;
            float16/bfloat16/float32, ``d`` in 16, 32, 64, 128; any strides.
        causal: query ``i`` sees key ``j <= i + N_k - N_q``.
        scale: multiplies ``q k^T``; defaults to ``1 / sqrt(d)``.
        block_m, block_n: override the tile sizes (powers of two >= 16), e.g. to show the
            tiling in the book; by default :func:`kernel_config` chooses them.

    Returns:
        ``out: (B, H, N_q, d)`` in the dtype of ``q``, contiguous, and ``lse: (B, H, N_q)``
        float32, the natural-log logsumexp of each row's scaled scores (``-inf`` for a query
        that sees no key; its ``out`` row is 0).
    """
    B, H, H_kv, N_q, N_k, d, scale = _check_inputs(q, k, v, causal, scale)
    cfg = _configs("forward", d, q.dtype, q.device, block_m, block_n)
    out = torch.empty((B, H, N_q, d), device=q.device, dtype=q.dtype)  # (B, H, N_q, d)
    lse = torch.empty((B, H, N_q), device=q.device, dtype=torch.float32)  # (B, H, N_q)
    grid = (triton.cdiv(N_q, cfg.block_m), B * H)
    with _on_device(q):
        _flash_fwd_kernel[grid](
            q, k, v, out, lse,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            H, H // H_kv, N_q, N_k,
            scale * LOG2E,  # fold log2(e) into the scale: the kernel uses exp2 (see module docs)
            HEAD_DIM=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, CAUSAL=causal,
            UPCAST_DOT=_upcast_dot(q.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return out, lse


def flash_backward(do, q, k, v, out, lse, causal: bool = False, scale: float | None = None, *,
                   block_m=None, block_n=None):  # fmt: skip
    """FlashAttention backward: ``(dq, dk, dv)`` from the forward's ``out`` and ``lse``.

    Runs three kernels: :func:`_bwd_preprocess_kernel` (``Delta = rowsum(dO * O)``),
    :func:`_flash_bwd_dkdv_kernel` (one program per key block) and
    :func:`_flash_bwd_dq_kernel` (one program per query block). No atomics: the result is
    deterministic. ``dk, dv`` have ``H_kv`` heads: a shared key/value head receives the sum
    over its query heads. ``block_m``/``block_n`` override both backward kernels' tiles.
    """
    B, H, H_kv, N_q, N_k, d, scale = _check_inputs(q, k, v, causal, scale)
    lse = check_saved(q, do, out, lse)
    cfg_pre = _configs("preprocess", d, q.dtype, q.device, block_m, None)
    cfg_kv = _configs("dkdv", d, q.dtype, q.device, block_m, block_n)
    cfg_q = _configs("dq", d, q.dtype, q.device, block_m, block_n)
    group = H // H_kv
    upcast = _upcast_dot(q.dtype)

    delta = torch.empty((B, H, N_q), device=q.device, dtype=torch.float32)  # (B, H, N_q)
    dq = torch.empty((B, H, N_q, d), device=q.device, dtype=q.dtype)  # (B, H, N_q, d)
    dk = torch.empty((B, H_kv, N_k, d), device=q.device, dtype=q.dtype)  # (B, H_kv, N_k, d)
    dv = torch.empty((B, H_kv, N_k, d), device=q.device, dtype=q.dtype)  # (B, H_kv, N_k, d)
    with _on_device(q):
        _bwd_preprocess_kernel[(triton.cdiv(N_q, cfg_pre.block_m), B * H)](
            out, do, delta, *out.stride(), *do.stride(), H, N_q,
            HEAD_DIM=d, BLOCK_M=cfg_pre.block_m, num_warps=cfg_pre.num_warps, num_stages=cfg_pre.num_stages,
        )  # fmt: skip
        _flash_bwd_dkdv_kernel[(triton.cdiv(N_k, cfg_kv.block_n), B * H_kv)](
            q, k, v, do, lse, delta, dk, dv,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
            H, H_kv, group, N_q, N_k, scale, scale * LOG2E,
            HEAD_DIM=d, BLOCK_M=cfg_kv.block_m, BLOCK_N=cfg_kv.block_n, CAUSAL=causal, UPCAST_DOT=upcast,
            num_warps=cfg_kv.num_warps, num_stages=cfg_kv.num_stages,
        )  # fmt: skip
        _flash_bwd_dq_kernel[(triton.cdiv(N_q, cfg_q.block_m), B * H)](
            q, k, v, do, lse, delta, dq,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
            H, group, N_q, N_k, scale, scale * LOG2E,
            HEAD_DIM=d, BLOCK_M=cfg_q.block_m, BLOCK_N=cfg_q.block_n, CAUSAL=causal, UPCAST_DOT=upcast,
            num_warps=cfg_q.num_warps, num_stages=cfg_q.num_stages,
        )  # fmt: skip
    return dq, dk, dv


def _on_device(x: torch.Tensor):
    """Launch on the tensor's GPU (Triton uses the current device), a no-op on the CPU."""
    return torch.cuda.device(x.device) if x.device.type == "cuda" else contextlib.nullcontext()


class _FlashAttentionTriton(torch.autograd.Function):
    """Autograd glue: the forward saves ``out`` and ``lse`` (O(N) memory), never ``P``."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        out, lse = flash_forward(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    @first_order_only("flash_attention_triton")
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_backward(dout, q, k, v, out, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None


def flash_attention_triton(q, k, v, *, causal: bool = False, scale: float | None = None) -> torch.Tensor:
    """Exact softmax attention with the FlashAttention Triton kernels, differentiable.

    Equal to ``attnlib.reference.attention(q, k, v, causal=causal, scale=scale)`` (same
    masking convention, grouped heads, fully masked rows give 0), in ``O(N)`` memory.

    Args:
        q: ``(B, H, N_q, d)``; k, v: ``(B, H_kv, N_k, d)`` with ``H_kv`` dividing ``H``.
            float16 or float32 (bfloat16 on sm80+ GPUs); ``d`` in 16, 32, 64, 128; any strides.
            CUDA tensors, or CPU tensors when Triton runs in its interpreter (TRITON_INTERPRET=1
            set before the first ``import triton``).
        causal: query ``i`` sees key ``j <= i + N_k - N_q``.
        scale: multiplies ``q k^T``; defaults to ``1 / sqrt(d)``.

    Returns:
        ``out: (B, H, N_q, d)``, dtype of ``q``. Double backward is not supported.
    """
    _check_inputs(q, k, v, causal, scale)  # fail here, with the argument names, not in autograd
    return _FlashAttentionTriton.apply(q, k, v, causal, scale)


# --------------------------------------------------------------------------------------
# Compiling for a GPU without a GPU
# --------------------------------------------------------------------------------------
_TRITON_TYPE = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}


def compile_kernels(
    capability: int,
    head_dim: int,
    dtype: torch.dtype = torch.float16,
    causal: bool = True,
    ones: tuple[str, ...] = (),
):
    """Compile the four kernels for an NVIDIA GPU of ``capability`` (75, 80, 90, ...), no GPU needed.

    Returns ``{kernel name: triton CompiledKernel}``; ``compiled.asm["ptx"]`` is the PTX,
    ``compiled.asm["cubin"]`` the machine code, ``compiled.metadata.shared`` the bytes of
    shared memory one program needs. The signature is what a launch with contiguous inputs
    would specialize to: pointers and strides divisible by 16, the last stride equal to 1.
    ``ones`` names integer arguments (``"N_Q"``, ``"N_K"``, ``"H"``, ``"H_KV"``, ``"GROUP"``) that
    equal 1 in the launch to mimic: Triton then compiles them in as constants (one-token decoding
    has ``N_Q = 1``, multi-query attention on one head ``GROUP = 1``...).
    Needs the real compiler: raises RuntimeError when Triton runs in its interpreter.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if _INTERPRETING:
        raise RuntimeError(
            "compile_kernels needs Triton's compiler, but this process imported triton with TRITON_INTERPRET=1: "
            "run it in a process without TRITON_INTERPRET"
        )
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim}")
    if dtype not in _TRITON_TYPE:
        raise TypeError(f"dtype must be one of {tuple(_TRITON_TYPE)}, got {dtype}")
    kernels = {
        "forward": _flash_fwd_kernel,
        "preprocess": _bwd_preprocess_kernel,
        "dkdv": _flash_bwd_dkdv_kernel,
        "dq": _flash_bwd_dq_kernel,
    }
    target = GPUTarget("cuda", capability, 32)
    compiled = {}
    for name, fn in kernels.items():
        cfg = kernel_config(name, head_dim, dtype, capability)
        constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": cfg.block_m}
        if name != "preprocess":
            constexprs.update(BLOCK_N=cfg.block_n, CAUSAL=causal, UPCAST_DOT=False)
        signature, attrs = {}, {}
        constexprs.update({arg: 1 for arg in ones if arg in fn.arg_names})
        for i, arg in enumerate(fn.arg_names):
            if arg in constexprs:
                signature[arg] = "constexpr"
            elif arg.startswith("stride_") and arg.endswith("d"):  # last-dim strides: 1 when contiguous
                signature[arg] = "constexpr"
                constexprs[arg] = 1
            elif arg in ("Lse", "Delta"):
                signature[arg], attrs[(i,)] = "*fp32", [["tt.divisibility", 16]]
            elif arg in ("scale", "qk_scale"):
                signature[arg] = "fp32"
            elif arg.startswith("stride_"):  # row/head/batch strides: multiples of d >= 16
                signature[arg], attrs[(i,)] = "i32", [["tt.divisibility", 16]]
            elif arg in ("H", "H_KV", "GROUP", "N_Q", "N_K"):
                signature[arg] = "i32"
            else:  # Q, K, V, Out, dOut, dQ, dK, dV: tensor pointers
                signature[arg], attrs[(i,)] = _TRITON_TYPE[dtype], [["tt.divisibility", 16]]
        src = ASTSource(fn, signature, constexprs, attrs)
        options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
        compiled[name] = triton.compile(src, target=target, options=options)
    return compiled


# --------------------------------------------------------------------------------------
# What the block-sparse kernels share with these (attnlib.optim.block_sparse_triton)
# --------------------------------------------------------------------------------------
# The block-sparse entry kernels call the same tile loops with SPARSE=True, the same
# preprocessing kernel, and launch as the wrappers above do. The kernels and flash_forward above
# (printed in chapter 11) call these by their private names; other modules use the public ones.
fwd_tiles = _fwd_tiles
bwd_dkdv_tiles = _bwd_dkdv_tiles
bwd_dq_tiles = _bwd_dq_tiles
bwd_preprocess_kernel = _bwd_preprocess_kernel
INTERPRETING = _INTERPRETING
POINTER_TYPES = _TRITON_TYPE
check_inputs = _check_inputs
device_capability = _capability
launch_config = _configs
upcast_dot = _upcast_dot
on_device = _on_device
