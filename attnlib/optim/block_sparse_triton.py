"""Block-sparse FlashAttention as Triton kernels: the tile loops of chapter 11, driven by a block mask's lists.

Chapter: "One FlashAttention kernel for every sparse pattern" (chapters/*/14_block_sparse_flash.ipynb).
The dense kernels, their tile loops and their conventions are :mod:`attnlib.optim.flash_triton`
(chapter 11); the PyTorch path and the dispatch are :mod:`attnlib.optim.block_sparse`.

A :class:`~attnlib.optim.block_mask.BlockMask` lists, per query tile, its full key tiles (no mask
work) and its partial ones (an element mask stored per tile), and the transposed lists for dK/dV.
The three entry kernels below set up a program as the dense kernels do, then call the *same* tile
loops (``fwd_tiles``, ``bwd_dkdv_tiles``, ``bwd_dq_tiles``) with ``SPARSE=True``: full tiles with
``MASKED=False``, partial tiles with ``MASKED=True``. Empty tiles appear in no list: never loaded.
They are separate kernels, not a flag of the dense ones, so that the dense kernels keep their
signature (``compile_kernels``, the GPU benchmark) and their ranges (``_key_range``) untouched.

Each entry kernel repeats its dense twin's set-up (program ids, pointers, loads, the final
division) line for line: Triton kernels read best top to bottom, and chapter 11 prints the dense
ones whole, so that set-up is kept in each kernel rather than folded into shared helpers.

Conventions: those of :mod:`attnlib.optim.flash_triton` (``lse`` in natural-log units, a query
that sees no key gets 0 and ``lse = -inf``, any strides, ``d`` in 16, 32, 64, 128), with the
pattern entirely in the block mask (no ``causal`` flag) and ``d_v = d``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._checks import check_flag, check_qkv, first_order_only
from .block_mask import BlockMask
from .flash_triton import (
    INTERPRETING,
    LOG2E,
    POINTER_TYPES,
    SUPPORTED_HEAD_DIMS,
    KernelConfig,
    bwd_dkdv_tiles,
    bwd_dq_tiles,
    bwd_preprocess_kernel,
    check_inputs,
    check_saved,
    device_capability,
    fwd_tiles,
    launch_config,
    on_device,
    upcast_dot,
)

__all__ = [
    "block_sparse_forward",
    "block_sparse_backward",
    "block_sparse_attention_triton",
    "block_sparse_unsupported_reason",
    "compile_block_sparse_kernels",
]


# --------------------------------------------------------------------------------------
# The three entry kernels
# --------------------------------------------------------------------------------------
@triton.jit
def _block_sparse_fwd_kernel(
    Q, K, V, Out, Lse,
    KvNum, KvIdx, FullKvNum, FullKvIdx, PartialSlot, PartialTiles, Visits,  # the block mask (int32, uint8)
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, GROUP, N_Q, N_K,
    MASK_B, MASK_H, T_Q, T_K,  # the block mask's batch and head dims (1 or B, 1 or H) and tile grid
    qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST_DOT: tl.constexpr, COUNT_VISITS: tl.constexpr,
):  # fmt: skip
    """Block-sparse forward, one program per (query tile, batch x head), as the dense ``_flash_fwd_kernel``."""
    pid_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    off_hkv = off_h // GROUP

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_n = tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_d = tl.arange(0, HEAD_DIM)  # (HEAD_DIM,)
    q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    k_ptrs = K + off_b * stride_kb + off_hkv * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + off_b * stride_vb + off_hkv * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    q_ok = offs_m < N_Q  # (BLOCK_M,)
    q = tl.load(q_ptrs, mask=q_ok[:, None], other=0.0)  # (BLOCK_M, HEAD_DIM)
    if UPCAST_DOT:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # (BLOCK_M,)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # (BLOCK_M,)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)  # (BLOCK_M, HEAD_DIM)

    # --- which key tiles do I visit? The block mask's row for this (batch, head, query tile) ---
    row = ((off_b % MASK_B) * MASK_H + off_h % MASK_H) * T_Q + pid_m
    n_full = tl.load(FullKvNum + row)
    n_partial = tl.load(KvNum + row)
    # (BLOCK_M, BLOCK_N) pointers into the first stored element mask; tile s starts at s * BLOCK_M * BLOCK_N
    mask_ptrs = PartialTiles + tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + offs_n[None, :]
    visits = Visits + (off_bh.to(tl.int64) * T_Q + pid_m) * T_K
    # Stage 1: the full tiles, no mask at all. Stage 2: the partial tiles, element mask applied.
    acc, m_i, l_i = fwd_tiles(
        acc, m_i, l_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, 0, n_full * BLOCK_N,
        offs_m, offs_n, N_K, 0, qk_scale, False, False, UPCAST_DOT, BLOCK_N,
        FullKvIdx + row * T_K, PartialSlot + row * T_K, mask_ptrs, BLOCK_M * BLOCK_N, visits, True, COUNT_VISITS,
    )  # fmt: skip
    acc, m_i, l_i = fwd_tiles(
        acc, m_i, l_i, q, k_ptrs, v_ptrs, stride_kn, stride_vn, 0, n_partial * BLOCK_N,
        offs_m, offs_n, N_K, 0, qk_scale, True, False, UPCAST_DOT, BLOCK_N,
        KvIdx + row * T_K, PartialSlot + row * T_K, mask_ptrs, BLOCK_M * BLOCK_N, visits, True, COUNT_VISITS,
    )  # fmt: skip

    empty = l_i == 0.0  # (BLOCK_M,) a row that saw no key: output 0, lse -inf
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]  # (BLOCK_M, HEAD_DIM)
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * 0.6931471805599453)  # (BLOCK_M,)
    o_ptrs = Out + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=q_ok[:, None])
    tl.store(Lse + off_bh.to(tl.int64) * N_Q + offs_m, lse, mask=q_ok)


@triton.jit
def _block_sparse_dkdv_kernel(
    Q, K, V, dOut, Lse, Delta, dK, dV,
    QNum, QIdx, FullQNum, FullQIdx, PartialSlotT, PartialTiles, Visits,  # the transposed lists
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H, H_KV, GROUP, N_Q, N_K,
    MASK_B, MASK_H, T_Q, T_K,
    scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST_DOT: tl.constexpr, COUNT_VISITS: tl.constexpr,
):  # fmt: skip
    """Block-sparse dK, dV of one key tile, as the dense ``_flash_bwd_dkdv_kernel``, over the transposed lists."""
    pid_n = tl.program_id(0)
    off_bhkv = tl.program_id(1)
    off_b = (off_bhkv // H_KV).to(tl.int64)
    off_hkv = (off_bhkv % H_KV).to(tl.int64)

    start_n = pid_n * BLOCK_N
    offs_n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    offs_m = tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    offs_d = tl.arange(0, HEAD_DIM)  # (HEAD_DIM,)
    key_ok = offs_n < N_K  # (BLOCK_N,)
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
    # (BLOCK_N, BLOCK_M) pointers into the first stored (BLOCK_M, BLOCK_N) element mask, read transposed
    mask_ptrs = PartialTiles + tl.arange(0, BLOCK_N)[:, None] + offs_m[None, :] * BLOCK_N

    for g in range(0, GROUP):  # the query heads that share this key/value head
        off_h = off_hkv * GROUP + g
        off_bh = off_b * H + off_h
        q_ptrs = Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
        do_ptrs = (
            dOut + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod
        )
        col = ((off_b % MASK_B) * MASK_H + off_h % MASK_H) * T_K + pid_n  # this key tile's transposed lists
        visits = Visits + (off_bh * T_K + pid_n) * T_Q
        dk, dv = bwd_dkdv_tiles(
            dk, dv, k, v, q_ptrs, do_ptrs, stride_qm, stride_dom, Lse + off_bh * N_Q, Delta + off_bh * N_Q,
            0, tl.load(FullQNum + col) * BLOCK_M, offs_m, offs_n, N_Q, 0, qk_scale, False, False, UPCAST_DOT, BLOCK_M,
            FullQIdx + col * T_Q, PartialSlotT + col * T_Q, mask_ptrs, BLOCK_M * BLOCK_N, visits, True, COUNT_VISITS,
        )  # fmt: skip
        dk, dv = bwd_dkdv_tiles(
            dk, dv, k, v, q_ptrs, do_ptrs, stride_qm, stride_dom, Lse + off_bh * N_Q, Delta + off_bh * N_Q,
            0, tl.load(QNum + col) * BLOCK_M, offs_m, offs_n, N_Q, 0, qk_scale, True, False, UPCAST_DOT, BLOCK_M,
            QIdx + col * T_Q, PartialSlotT + col * T_Q, mask_ptrs, BLOCK_M * BLOCK_N, visits, True, COUNT_VISITS,
        )  # fmt: skip

    dk = dk * scale
    kv_rows = offs_n[:, None]  # (BLOCK_N, 1)
    dk_ptrs = dK + off_b * stride_dkb + off_hkv * stride_dkh + kv_rows * stride_dkn + offs_d[None, :] * stride_dkd
    dv_ptrs = dV + off_b * stride_dvb + off_hkv * stride_dvh + kv_rows * stride_dvn + offs_d[None, :] * stride_dvd
    tl.store(dk_ptrs, dk.to(dK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(dv_ptrs, dv.to(dV.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def _block_sparse_dq_kernel(
    Q, K, V, dOut, Lse, Delta, dQ,
    KvNum, KvIdx, FullKvNum, FullKvIdx, PartialSlot, PartialTiles, Visits,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    H, GROUP, N_Q, N_K,
    MASK_B, MASK_H, T_Q, T_K,
    scale, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    UPCAST_DOT: tl.constexpr, COUNT_VISITS: tl.constexpr,
):  # fmt: skip
    """Block-sparse dQ of one query tile, as the dense ``_flash_bwd_dq_kernel``, over the forward's lists."""
    pid_m = tl.program_id(0)
    off_bh = tl.program_id(1)
    off_b = (off_bh // H).to(tl.int64)
    off_h = (off_bh % H).to(tl.int64)
    off_hkv = off_h // GROUP

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
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

    row = ((off_b % MASK_B) * MASK_H + off_h % MASK_H) * T_Q + pid_m
    mask_ptrs = PartialTiles + tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + offs_n[None, :]
    visits = Visits + (off_bh.to(tl.int64) * T_Q + pid_m) * T_K
    dq = bwd_dq_tiles(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, 0, tl.load(FullKvNum + row) * BLOCK_N,
        offs_m, offs_n, N_K, 0, qk_scale, False, False, UPCAST_DOT, BLOCK_N,
        FullKvIdx + row * T_K, PartialSlot + row * T_K, mask_ptrs, BLOCK_M * BLOCK_N, visits, True, COUNT_VISITS,
    )  # fmt: skip
    dq = bwd_dq_tiles(
        dq, q, do, lse, delta, k_ptrs, v_ptrs, stride_kn, stride_vn, 0, tl.load(KvNum + row) * BLOCK_N,
        offs_m, offs_n, N_K, 0, qk_scale, True, False, UPCAST_DOT, BLOCK_N,
        KvIdx + row * T_K, PartialSlot + row * T_K, mask_ptrs, BLOCK_M * BLOCK_N, visits, True, COUNT_VISITS,
    )  # fmt: skip

    dq = dq * scale
    dq_ptrs = dQ + off_b * stride_dqb + off_h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :] * stride_dqd
    tl.store(dq_ptrs, dq.to(dQ.dtype.element_ty), mask=row_ok[:, None])


# --------------------------------------------------------------------------------------
# Python wrappers
# --------------------------------------------------------------------------------------
def _block_sparse_config(head_dim: int, dtype: torch.dtype, capability: int | None, block_q: int, block_k: int):
    """Launch options for the block-sparse kernels, whose tiles are the block mask's ``block_q x block_k``.

    All three kernels use the block mask's tiles (the lists are per tile). Warps and pipelining
    as for the dense kernels of the same tile area; no pipelining on Turing (64 KiB of shared memory).
    """
    if capability is None:
        return KernelConfig(block_q, block_k, num_warps=1, num_stages=1)
    big = block_q * block_k >= 128 * 64 and head_dim >= 64
    warps = 8 if big and head_dim == 128 else 4
    stages = 1 if capability < 80 else 2
    return KernelConfig(block_q, block_k, num_warps=warps, num_stages=stages)


def _check_block_mask(block_mask, B: int, H: int, N_q: int, N_k: int, device, block_m=None, block_n=None):
    """The block mask's tensors for the kernels; ValueError/TypeError naming ``block_mask`` otherwise."""
    if not isinstance(block_mask, BlockMask):
        raise TypeError(f"block_mask must be an attnlib.optim.block_mask.BlockMask, got {type(block_mask).__name__}")
    block_mask.check_matches(B, H, N_q, N_k, block_q=block_m, block_k=block_n)
    for name, size in (("block_q", block_mask.block_q), ("block_k", block_mask.block_k)):
        if size < 16 or size & (size - 1):
            raise ValueError(
                f"block_mask.{name} must be a power of two >= 16 for the Triton kernels (tl.dot needs 16), got {size}"
            )
    if block_mask.device != device:
        raise ValueError(f"block_mask must be on the device of q ({device}), got {block_mask.device}")


def _mask_dims(block_mask) -> tuple[int, int, int, int]:
    B_m, H_m = block_mask.kinds.shape[:2]
    T_q, T_k = block_mask.num_tiles
    return B_m, H_m, T_q, T_k


def _visit_counter(enabled: bool, shape, device) -> torch.Tensor:
    """Per-tile load counts (tests), or a one-element placeholder the kernels never touch."""
    return torch.zeros(shape if enabled else (1,), dtype=torch.int32, device=device)


def _check_block_sparse_inputs(q, k, v, scale) -> tuple[int, int, int, int, int, int, float]:
    """:func:`_check_inputs` for the block-sparse kernels, with ``d_v != d`` refused first, saying what to do."""
    check_qkv(q, k, v)
    d, d_v = q.shape[-1], v.shape[-1]
    if d_v != d:
        raise ValueError(
            f"the block-sparse Triton kernels need v's head dimension d_v = d (that of q and k), got d={d}, "
            f"d_v={d_v}: use block_sparse_attention(..., backend='torch'), which takes any d_v"
        )
    return check_inputs(q, k, v, False, scale)


def block_sparse_unsupported_reason(q, k, v, block_mask, scale: float | None = None) -> str | None:
    """None if the block-sparse kernels take these inputs, else why not (never raises)."""
    try:
        B, H, _, N_q, N_k, _, _ = _check_block_sparse_inputs(q, k, v, scale)
        _check_block_mask(block_mask, B, H, N_q, N_k, q.device)
    except (TypeError, ValueError, RuntimeError) as e:
        return str(e)
    return None


def block_sparse_forward(q, k, v, block_mask, scale: float | None = None, *, block_m=None, block_n=None,
                         count_visits: bool = False):  # fmt: skip
    """Block-sparse FlashAttention forward: ``(out, lse)``, the kernel :func:`_block_sparse_fwd_kernel`.

    Like :func:`attnlib.optim.flash_triton.flash_forward`, with the pattern given by ``block_mask``
    (:class:`attnlib.optim.block_mask.BlockMask`, built for ``N_q, N_k``); the tiles are the block
    mask's (``block_m``/``block_n``, if given, must equal them). ``count_visits=True`` also returns
    ``visits: (B * H, T_q, T_k)`` int32, how often each key tile was loaded for each query tile.
    """
    B, H, H_kv, N_q, N_k, d, scale = _check_block_sparse_inputs(q, k, v, scale)
    check_flag("count_visits", count_visits)
    _check_block_mask(block_mask, B, H, N_q, N_k, q.device, block_m, block_n)
    B_m, H_m, T_q, T_k = _mask_dims(block_mask)
    cfg = _block_sparse_config(d, q.dtype, device_capability(q.device), block_mask.block_q, block_mask.block_k)
    out = torch.empty((B, H, N_q, d), device=q.device, dtype=q.dtype)  # (B, H, N_q, d)
    lse = torch.empty((B, H, N_q), device=q.device, dtype=torch.float32)  # (B, H, N_q)
    visits = _visit_counter(count_visits, (B * H, T_q, T_k), q.device)
    bm = block_mask
    with on_device(q):
        _block_sparse_fwd_kernel[(T_q, B * H)](
            q, k, v, out, lse,
            bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices,
            bm.partial_slot, bm.partial_tiles.view(torch.uint8), visits,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            H, H // H_kv, N_q, N_k, B_m, H_m, T_q, T_k, scale * LOG2E,
            HEAD_DIM=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, UPCAST_DOT=upcast_dot(q.dtype),
            COUNT_VISITS=count_visits, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return (out, lse, visits) if count_visits else (out, lse)


def block_sparse_backward(do, q, k, v, out, lse, block_mask, scale: float | None = None, *,
                          count_visits: bool = False):  # fmt: skip
    """Block-sparse FlashAttention backward: ``(dq, dk, dv)``; the preprocessing kernel of
    :func:`attnlib.optim.flash_triton.flash_backward`, then :func:`_block_sparse_dkdv_kernel` (the transposed lists) and
    :func:`_block_sparse_dq_kernel` (the forward's lists). No atomics.

    ``count_visits=True`` also returns ``(visits_dkdv: (B * H, T_k, T_q), visits_dq: (B * H, T_q, T_k))``.
    """
    B, H, H_kv, N_q, N_k, d, scale = _check_block_sparse_inputs(q, k, v, scale)
    check_flag("count_visits", count_visits)
    _check_block_mask(block_mask, B, H, N_q, N_k, q.device)
    lse = check_saved(q, do, out, lse)
    B_m, H_m, T_q, T_k = _mask_dims(block_mask)
    bm = block_mask
    cfg = _block_sparse_config(d, q.dtype, device_capability(q.device), bm.block_q, bm.block_k)
    cfg_pre = launch_config("preprocess", d, q.dtype, q.device, None, None)
    upcast = upcast_dot(q.dtype)
    tiles = bm.partial_tiles.view(torch.uint8)
    visits_kv = _visit_counter(count_visits, (B * H, T_k, T_q), q.device)
    visits_q = _visit_counter(count_visits, (B * H, T_q, T_k), q.device)
    delta = torch.empty((B, H, N_q), device=q.device, dtype=torch.float32)  # (B, H, N_q)
    dq = torch.empty((B, H, N_q, d), device=q.device, dtype=q.dtype)  # (B, H, N_q, d)
    dk = torch.empty((B, H_kv, N_k, d), device=q.device, dtype=q.dtype)  # (B, H_kv, N_k, d)
    dv = torch.empty((B, H_kv, N_k, d), device=q.device, dtype=q.dtype)  # (B, H_kv, N_k, d)
    with on_device(q):
        bwd_preprocess_kernel[(triton.cdiv(N_q, cfg_pre.block_m), B * H)](
            out, do, delta, *out.stride(), *do.stride(), H, N_q,
            HEAD_DIM=d, BLOCK_M=cfg_pre.block_m, num_warps=cfg_pre.num_warps, num_stages=cfg_pre.num_stages,
        )  # fmt: skip
        _block_sparse_dkdv_kernel[(T_k, B * H_kv)](
            q, k, v, do, lse, delta, dk, dv,
            bm.q_num_blocks, bm.q_indices, bm.full_q_num_blocks, bm.full_q_indices, bm.partial_slot_t, tiles,
            visits_kv,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
            H, H_kv, H // H_kv, N_q, N_k, B_m, H_m, T_q, T_k, scale, scale * LOG2E,
            HEAD_DIM=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, UPCAST_DOT=upcast, COUNT_VISITS=count_visits,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
        _block_sparse_dq_kernel[(T_q, B * H)](
            q, k, v, do, lse, delta, dq,
            bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices, bm.partial_slot, tiles,
            visits_q,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
            H, H // H_kv, N_q, N_k, B_m, H_m, T_q, T_k, scale, scale * LOG2E,
            HEAD_DIM=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, UPCAST_DOT=upcast, COUNT_VISITS=count_visits,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return (dq, dk, dv, (visits_kv, visits_q)) if count_visits else (dq, dk, dv)


class _BlockSparseAttentionTriton(torch.autograd.Function):
    """Autograd glue of the block-sparse kernels: saves ``out`` and ``lse`` (O(N) memory)."""

    @staticmethod
    def forward(ctx, q, k, v, block_mask, scale):
        out, lse = block_sparse_forward(q, k, v, block_mask, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.block_mask, ctx.scale = block_mask, scale
        return out

    @staticmethod
    @first_order_only("block_sparse_attention_triton")
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = block_sparse_backward(dout, q, k, v, out, lse, ctx.block_mask, ctx.scale)
        return dq, dk, dv, None, None


def block_sparse_attention_triton(q, k, v, block_mask, *, scale: float | None = None) -> torch.Tensor:
    """Attention restricted to ``block_mask``'s pattern with the block-sparse kernels, differentiable.

    Equal to ``reference.attention(q, k, v, mask=block_mask.to_dense(), scale=scale)``.
    Chapter 14_block_sparse_flash; the PyTorch path is :mod:`attnlib.optim.block_sparse`.
    ``d_v = d`` only (the PyTorch path takes any ``d_v``). Double backward is not supported.
    """
    B, H, _, N_q, N_k, _, _ = _check_block_sparse_inputs(q, k, v, scale)
    _check_block_mask(block_mask, B, H, N_q, N_k, q.device)
    return _BlockSparseAttentionTriton.apply(q, k, v, block_mask, scale)


def compile_block_sparse_kernels(capability: int, head_dim: int, dtype: torch.dtype = torch.float16,
                                 block_q: int = 64, block_k: int = 64):  # fmt: skip
    """Compile the three block-sparse kernels for an NVIDIA GPU of ``capability``, no GPU needed.

    Like :func:`attnlib.optim.flash_triton.compile_kernels`: returns ``{"forward" | "dkdv" | "dq": CompiledKernel}`` for
    contiguous inputs and a ``block_q x block_k`` block mask.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if INTERPRETING:
        raise RuntimeError("compile_block_sparse_kernels needs Triton's compiler: run it without TRITON_INTERPRET")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim must be one of {SUPPORTED_HEAD_DIMS}, got {head_dim}")
    if dtype not in POINTER_TYPES:
        raise TypeError(f"dtype must be one of {tuple(POINTER_TYPES)}, got {dtype}")
    kernels = {"forward": _block_sparse_fwd_kernel, "dkdv": _block_sparse_dkdv_kernel, "dq": _block_sparse_dq_kernel}
    mask_args = {"KvNum", "KvIdx", "FullKvNum", "FullKvIdx", "PartialSlot", "PartialSlotT", "Visits",
                 "QNum", "QIdx", "FullQNum", "FullQIdx"}  # fmt: skip
    cfg = _block_sparse_config(head_dim, dtype, capability, block_q, block_k)
    compiled = {}
    for name, fn in kernels.items():
        constexprs = {"HEAD_DIM": head_dim, "BLOCK_M": block_q, "BLOCK_N": block_k, "UPCAST_DOT": False,
                      "COUNT_VISITS": False}  # fmt: skip
        signature, attrs = {}, {}
        for i, arg in enumerate(fn.arg_names):
            if arg in constexprs:
                signature[arg] = "constexpr"
            elif arg.startswith("stride_") and arg.endswith("d"):
                signature[arg] = "constexpr"
                constexprs[arg] = 1
            elif arg in ("Lse", "Delta"):
                signature[arg], attrs[(i,)] = "*fp32", [["tt.divisibility", 16]]
            elif arg in mask_args:
                signature[arg] = "*i32"
            elif arg == "PartialTiles":
                signature[arg], attrs[(i,)] = "*u8", [["tt.divisibility", 16]]
            elif arg in ("scale", "qk_scale"):
                signature[arg] = "fp32"
            elif arg.startswith("stride_"):
                signature[arg], attrs[(i,)] = "i32", [["tt.divisibility", 16]]
            elif arg in ("H", "H_KV", "GROUP", "N_Q", "N_K", "MASK_B", "MASK_H", "T_Q", "T_K"):
                signature[arg] = "i32"
            else:
                signature[arg], attrs[(i,)] = POINTER_TYPES[dtype], [["tt.divisibility", 16]]
        src = ASTSource(fn, signature, constexprs, attrs)
        compiled[name] = triton.compile(
            src, target=GPUTarget("cuda", capability, 32), options={"num_warps": cfg.num_warps,
                                                                     "num_stages": cfg.num_stages}
        )  # fmt: skip
    return compiled
