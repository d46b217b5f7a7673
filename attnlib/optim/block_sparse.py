"""Block-sparse FlashAttention: FlashAttention's tiles, visiting only the tiles a pattern needs.

Chapter: "One FlashAttention kernel for every sparse pattern" (chapters/*/14_block_sparse_flash.ipynb).
The pattern comes as a :class:`attnlib.optim.block_mask.BlockMask`; this module runs the schedule
in PyTorch tiles and dispatches to the Triton kernels of :mod:`attnlib.optim.block_sparse_triton`
(:func:`~attnlib.optim.block_sparse_triton.block_sparse_forward`, ``block_sparse_backward``).

The schedule (FA-2 Alg. 1 and 2, Dao 2023, arXiv:2307.08691; FlexAttention's BlockMask, Dong et
al. 2024, arXiv:2412.05496)::

    forward, for each query tile i:                     # Alg. 1, line 3
        for each j in full_kv_indices[i]:  fold tile (i, j) in, no mask      # Alg. 1, lines 6-11
        for each j in kv_indices[i]:       fold tile (i, j) in, element mask of the tile
        O_i = acc / l;  L_i = m + log(l)                # empty tiles: never loaded
    backward, for each key tile j:                      # Alg. 2, line 5, the transposed lists
        for each i in full_q_indices[j], then q_indices[j]:
            P = exp(S - L_i);  dV_j += P^T dO_i;  dS = P * (dP - D_i)
            dK_j += dS^T Q_i;  dQ_i += dS K_j           # dQ accumulated in memory, as in Alg. 2

On a CPU each tile costs a few PyTorch calls, so the PyTorch path gathers all the key tiles of
one list (full, or partial) of a query tile into one wide tile with ``index_select``-style
indexing and folds it in at once: the online softmax then has at most two steps per query tile.
The arithmetic is FlashAttention's; only the number of Python-level steps changes. The gathered
keys are ``O(tiles visited x block_k x d)`` per query tile: no ``N_q x N_k`` tensor is built.

Conventions: those of :mod:`attnlib.reference` (``q: (B, H, N_q, d)``, ``k, v: (B, H_kv, N_k, d)``,
query head ``h`` reads key/value head ``h // (H // H_kv)``, a query that sees no key gets 0 and
``lse = -inf``). The pattern is entirely in the block mask (no separate ``causal`` flag).

Shape legend
------------
    B, H, H_kv, N_q, N_k, d, d_v   as in attnlib.reference
    B_m, H_m                       batch and head dims of the block mask (1 or B, 1 or H)
    T_q, T_k                       query and key tiles; b_q, b_k their sizes
    L                              key (or query) tiles gathered in one step
"""

from __future__ import annotations

import importlib
import math
import os

import torch

from .._checks import check_flag, check_qkv, check_tensor, first_order_only, resolve_scale
from .block_mask import BlockMask
from .online_softmax import compute_dtype, finish, merge_partial

# A private name for the shared piece: chapter 14 prints _fold_in_, which calls it.
from .online_softmax import zero_where_minus_inf as _zero_where_minus_inf

__all__ = [
    "BACKENDS",
    "block_sparse_forward_torch",
    "block_sparse_backward_torch",
    "BlockSparseAttentionFunction",
    "block_sparse_attention",
    "bigbird_flash_attention",
]

BACKENDS = ("auto", "torch", "triton")


def _check_inputs(q, k, v, block_mask) -> tuple[int, int, int, int, int, int]:
    B, H, H_kv, N_q, N_k, d = check_qkv(q, k, v)
    if not isinstance(block_mask, BlockMask):
        raise TypeError(f"block_mask must be an attnlib.optim.block_mask.BlockMask, got {type(block_mask).__name__}")
    block_mask.check_matches(B, H, N_q, N_k)
    if block_mask.device != q.device:
        raise ValueError(f"block_mask must be on the device of q ({q.device}), got {block_mask.device}")
    return B, H, H_kv, N_q, N_k, d


def _pad_tiles(x: torch.Tensor, tiles: int, block: int) -> torch.Tensor:
    """``x: (B, heads, N, c)`` -> ``(B, heads, tiles, block, c)``, zero rows past N (one O(N) copy at most)."""
    B, heads, N, c = x.shape
    if tiles * block != N:
        x = torch.nn.functional.pad(x, (0, 0, 0, tiles * block - N))  # (B, heads, tiles * block, c)
    return x.view(B, heads, tiles, block, c)  # (B, heads, tiles, block, c)


def _gather(tiles: torch.Tensor, tile_index: torch.Tensor, head_index: torch.Tensor) -> torch.Tensor:
    """Tiles ``tile_index: (B_m, H_m, M, L)`` of ``tiles: (B, heads, T, t, c)``, for each query head.

    ``head_index: (H,)`` maps a query head to the head of ``tiles`` (``h // G`` for keys and
    values). Returns ``(B, H, M, L * t, c)``: for each of ``M`` tiles, ``L`` tiles side by side.
    """
    B, heads, T, t, c = tiles.shape
    H = head_index.shape[0]
    B_m, H_m, M, L = tile_index.shape
    if L == T and bool((tile_index == torch.arange(T, device=tiles.device)).all()):
        # every list is every tile in order (a global query tile of BigBird, a dense row): the wide
        # tile *is* the whole sequence, a view of it for every query tile, with no copy
        per_head = tiles if heads == H else tiles.index_select(1, head_index)  # (B, H, T, t, c)
        return per_head.reshape(B, H, 1, T * t, c).expand(B, H, M, T * t, c)  # (B, H, M, L * t, c)
    # one index_select over the flattened (batch, head, tile) axis: a plain row copy, the fastest gather
    batch = torch.arange(B, device=tiles.device).view(B, 1, 1, 1)  # (B, 1, 1, 1)
    flat = (batch * heads + head_index.view(1, H, 1, 1)) * T + tile_index.long()  # (B, H, M, L)
    picked = tiles.reshape(B * heads * T, t, c).index_select(0, flat.flatten())  # (B H M L, t, c)
    return picked.view(B, H, M, L * t, c)  # (B, H, M, L * t, c)


def _groups(num_a: torch.Tensor, num_b: torch.Tensor, per_tile_bytes: int):
    """Tiles with the same list lengths, in chunks: yields ``(tiles: (M,) long, L_a, L_b)``.

    ``num_a, num_b: (B_m, H_m, T)`` list lengths (full, partial). Tiles whose longest lists have
    equal lengths are computed together in one batched step, at most ``_CHUNK_BYTES`` of
    gathered tiles at a time (``per_tile_bytes`` per entry of a list).
    """
    longest_a = num_a.flatten(0, 1).amax(dim=0)  # (T,)
    longest_b = num_b.flatten(0, 1).amax(dim=0)  # (T,)
    pairs = torch.stack([longest_a, longest_b], dim=1)  # (T, 2)
    for L_a, L_b in pairs.unique(dim=0).tolist():
        if L_a + L_b == 0:
            continue  # tiles that see nothing: their rows stay 0 with lse = -inf
        tiles = ((longest_a == L_a) & (longest_b == L_b)).nonzero().flatten()  # (M,)
        chunk = max(1, _CHUNK_BYTES // (per_tile_bytes * (L_a + L_b)))
        for first in range(0, tiles.numel(), chunk):
            yield tiles[first : first + chunk], L_a, L_b


_CHUNK_BYTES = 16 * 2**20  # gathered keys and values (or queries) per step, reused from step to step


def _list_step(num, indices, tiles, L):
    """``(index: (B_m, H_m, M, L), padding: (B_m, H_m, M, L) bool or None)`` of tiles ``tiles: (M,)``.

    Lists shorter than ``L`` are padded (with tile 0); ``padding`` marks their real entries, and is
    None when every list has length ``L`` (the common case: no mask work).
    """
    counts = num[:, :, tiles]  # (B_m, H_m, M)
    index = indices[:, :, tiles, :L]  # (B_m, H_m, M, L)
    if bool((counts == L).all()):
        return index, None
    return index, torch.arange(L, device=num.device) < counts[..., None]  # (B_m, H_m, M, L)


def _element_masks(block_mask: BlockMask, slot_table, tiles, index, transpose: bool) -> torch.Tensor:
    """The element masks of the partial tiles ``index: (B_m, H_m, M, L)`` of tiles ``tiles: (M,)``, side by side.

    ``transpose=False``: ``(B_m, H_m, M, b_q, L * b_k)``, queries as rows (the forward).
    ``transpose=True``: ``(B_m, H_m, M, b_k, L * b_q)``, keys as rows (the dK/dV loop).
    """
    slots = slot_table[:, :, tiles].gather(-1, index)  # (B_m, H_m, M, L)
    masks = block_mask.partial_tiles[slots.long()]  # (B_m, H_m, M, L, b_q, b_k)
    if transpose:
        masks = masks.transpose(-2, -1)  # (B_m, H_m, M, L, b_k, b_q)
    return masks.transpose(3, 4).flatten(4, 5)  # (B_m, H_m, M, rows, L * t)


def _allowed(block_mask, slot_table, tiles, index, padding, partial: bool, rows: int, width: int, transpose: bool):
    """The mask of one wide tile, ``(B_m, H_m, M, rows, L * width)``, or None when nothing is masked."""
    allowed = _element_masks(block_mask, slot_table, tiles, index, transpose) if partial else None
    if padding is not None:  # lists of different lengths over batch/heads: padding entries are masked
        pad = padding.repeat_interleave(width, dim=-1)[:, :, :, None, :]  # (B_m, H_m, M, 1, L * width)
        allowed = pad if allowed is None else allowed & pad
    return allowed


def _fold_in_(q_tile, k_wide, v_wide, allowed, acc, row_sum, row_max) -> torch.Tensor:
    """FA-2 Alg. 1, lines 8-10 for one wide tile; ``allowed``: a mask, or None (no mask work).

    ``q_tile: (B, H, M, b_q, d)`` (scaled), ``k_wide: (B, H, M, L b_k, d)``; updates
    ``acc: (B, H, M, b_q, d_v)`` and ``row_sum: (B, H, M, b_q, 1)`` in place, returns the new max.
    The arithmetic of ``attnlib.optim.flash._forward_tile_``, with a mask per head and tile.
    """
    scores = q_tile @ k_wide.transpose(-2, -1)  # (B, H, M, b_q, L b_k)  Alg. 1 line 8
    if allowed is not None:
        scores.masked_fill_(~allowed, float("-inf"))
    new_max = torch.maximum(row_max, scores.amax(dim=-1, keepdim=True))  # (B, H, M, b_q, 1)  Alg. 1 line 9
    safe_max = _zero_where_minus_inf(new_max)  # a row with no key so far keeps 0, not NaN
    probs = scores.sub_(safe_max).exp_()  # (B, H, M, b_q, L b_k)
    rescale = torch.exp(row_max - safe_max)  # (B, H, M, b_q, 1)
    row_sum.mul_(rescale).add_(probs.sum(dim=-1, keepdim=True))
    acc.mul_(rescale).add_(probs @ v_wide)  # (B, H, M, b_q, d_v)  Alg. 1 line 10
    return new_max


def _attend_written_out(q_tile, k_wide, v_wide, allowed, scale: float):
    """:func:`_attend_fused`'s result with the softmax written out (:func:`_fold_in_` from an empty state).

    For the wide tiles the fused kernel cannot take: a masked NaN key is dropped here (masked
    to ``-inf`` before the exponential), where the kernel's additive mask keeps ``NaN - inf = NaN``.
    """
    B, H, M, b_q, _ = q_tile.shape
    acc = torch.zeros(B, H, M, b_q, v_wide.shape[-1], dtype=q_tile.dtype, device=q_tile.device)
    row_sum = torch.zeros(B, H, M, b_q, 1, dtype=q_tile.dtype, device=q_tile.device)  # (B, H, M, b_q, 1)
    row_max = torch.full_like(row_sum, float("-inf"))  # (B, H, M, b_q, 1)
    row_max = _fold_in_(q_tile * scale, k_wide, v_wide, allowed, acc, row_sum, row_max)
    return finish(acc, row_sum, row_max)


# PyTorch's fused FlashAttention kernel for CPUs, the one behind F.scaled_dot_product_attention on a
# CPU; unlike F.scaled_dot_product_attention it also returns the logsumexp that the backward needs.
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attend_fused(q_tile, k_wide, v_wide, allowed, scale: float):
    """One wide tile through PyTorch's fused CPU kernel: ``(out: (B, H, M, b_q, d_v), lse: (B, H, M, b_q))``.

    The same arithmetic as :func:`_fold_in_` from an empty state (FA-2 Alg. 1 inside the kernel),
    finished: divided by the row sums. The ``M`` query tiles are the kernel's "heads". A row that
    ``allowed`` leaves without a key in this wide tile gets 0 and ``lse = -inf``.
    """
    B, H, M, b_q, d = q_tile.shape
    width, d_v = k_wide.shape[-2], v_wide.shape[-1]
    mask = None
    if allowed is not None:  # the kernel takes an additive mask in q's dtype: 0 or -inf
        additive = torch.zeros((), dtype=q_tile.dtype, device=q_tile.device).masked_fill(~allowed, float("-inf"))
        mask = additive.expand(B, H, M, b_q, width).reshape(B * H, M, b_q, width)  # a view when shared
    out, lse = _FLASH_CPU(
        q_tile.reshape(B * H, M, b_q, d), k_wide.reshape(B * H, M, width, d), v_wide.reshape(B * H, M, width, d_v),
        0.0, False, attn_mask=mask, scale=scale,  # the kernel scales q k^T itself: q is not copied to scale it
    )  # fmt: skip
    out, lse = out.view(B, H, M, b_q, d_v), lse.view(B, H, M, b_q)
    if allowed is not None:
        sees_a_key = allowed.any(dim=-1)  # (B_m, H_m, M, b_q)
        out = out.masked_fill(~sees_a_key[..., None], 0.0)
        lse = lse.masked_fill(~sees_a_key, float("-inf"))
    return out, lse


def _wide_tiles(bm: BlockMask, tiles, L_full: int, L_partial: int, k_tiles, v_tiles, kv_head):
    """The wide tiles of query tiles ``tiles: (M,)``: its full list (no mask), then its partial list.

    Yields ``(k_wide: (B, H, M, L b_k, d), v_wide: (B, H, M, L b_k, d_v), allowed)`` for each
    non-empty list; ``allowed`` is the element mask, or None when nothing is masked.
    """
    for num, indices, L, partial in ((bm.full_kv_num_blocks, bm.full_kv_indices, L_full, False),
                                     (bm.kv_num_blocks, bm.kv_indices, L_partial, True)):  # fmt: skip
        if L == 0:
            continue
        index, padding = _list_step(num, indices, tiles, L)  # (B_m, H_m, M, L)
        allowed = _allowed(bm, bm.partial_slot, tiles, index, padding, partial, bm.block_q, bm.block_k, False)
        yield _gather(k_tiles, index, kv_head), _gather(v_tiles, index, kv_head), allowed


def block_sparse_forward_torch(q, k, v, block_mask: BlockMask, *, scale: float | None = None, fused: bool = True):
    """The forward pass in PyTorch tiles: ``(out: (B, H, N_q, d_v), lse: (B, H, N_q))``.

    Equal to ``reference.attention(q, k, v, mask=block_mask.to_dense(), return_lse=True)``.
    Empty tiles are never read; full tiles are folded in with no mask. Query tiles whose lists
    have the same lengths run together, a few MiB of gathered keys at a time.

    ``fused=True`` (on a CPU): each wide tile goes through PyTorch's fused FlashAttention kernel
    (:func:`_attend_fused`) and the two lists are merged by the logsumexp rule
    (:func:`attnlib.optim.online_softmax.merge_partial`); ``fused=False``, or
    on another device: the softmax written out (:func:`_fold_in_`). Same result.
    The fused kernel is skipped (the softmax written out instead) where it cannot give that result:
    when ``d_v != d`` (it needs one head size), and for a masked wide tile with a NaN or infinite
    key (its additive ``-inf`` mask would turn a masked NaN score into NaN; masking drops it).

    Query tiles that run together are usually neighbours (``tiles`` a range): their queries, and the
    rows of ``out`` and ``lse`` they fill, are then slices, not copies.
    """
    B, H, H_kv, N_q, N_k, d = _check_inputs(q, k, v, block_mask)
    check_flag("fused", fused)
    scale = resolve_scale(scale, 1.0 / math.sqrt(d))
    dtype = compute_dtype(q.dtype)
    bm = block_mask
    b_q, b_k = bm.block_q, bm.block_k
    T_q, T_k = bm.num_tiles
    d_v = v.shape[-1]
    kv_head = torch.arange(H, device=q.device) // (H // H_kv)  # (H,) query head -> key/value head
    use_fused = fused and q.device.type == "cpu" and _FLASH_CPU is not None and d_v == d
    # The kernel's additive mask gives NaN + (-inf) = NaN for a masked NaN key: with a non-finite key
    # anywhere (checked once, not per tile), masked wide tiles take the softmax written out.
    keys_finite = not use_fused or bool(torch.isfinite(k).all())
    q_tiles = _pad_tiles(q.to(dtype) if use_fused else q.to(dtype) * scale, T_q, b_q)  # (B, H, T_q, b_q, d)
    k_tiles = _pad_tiles(k.to(dtype), T_k, b_k)  # (B, H_kv, T_k, b_k, d)
    v_tiles = _pad_tiles(v.to(dtype), T_k, b_k)  # (B, H_kv, T_k, b_k, d_v)
    # every query tile with a key is written below; the ones that see none get 0 and lse = -inf here
    out = torch.empty(B, H, T_q, b_q, d_v, dtype=dtype, device=q.device)  # (B, H, T_q, b_q, d_v)
    lse = torch.empty(B, H, T_q, b_q, dtype=dtype, device=q.device)  # (B, H, T_q, b_q)
    sees_nothing = (bm.full_kv_num_blocks + bm.kv_num_blocks).flatten(0, 1).amax(dim=0) == 0  # (T_q,)
    if bool(sees_nothing.any()):  # (a boolean index writes through the whole tensor: only when needed)
        out[:, :, sees_nothing] = 0.0
        lse[:, :, sees_nothing] = float("-inf")
    per_entry = B * H * b_k * (d + d_v) * q_tiles.element_size()

    for tiles, L_full, L_partial in _groups(bm.full_kv_num_blocks, bm.kv_num_blocks, per_entry):  # Alg. 1 line 3
        M = tiles.numel()
        first = int(tiles[0])
        in_order = bool((tiles == torch.arange(first, first + M, device=tiles.device)).all())
        rows = slice(first, first + M) if in_order else tiles  # (M,) tiles of the query axis
        q_tile = q_tiles[:, :, rows]  # (B, H, M, b_q, d): a view when the tiles are a range
        wide_tiles = _wide_tiles(bm, tiles, L_full, L_partial, k_tiles, v_tiles, kv_head)  # Alg. 1 line 7
        if use_fused:
            done = None  # (out, lse) of the lists done so far, merged as chapter 15 merges across devices
            for k_wide, v_wide, allowed in wide_tiles:
                attend = _attend_fused if keys_finite or allowed is None else _attend_written_out
                step = attend(q_tile, k_wide, v_wide, allowed, scale)
                done = step if done is None else merge_partial(*done, *step)
            out[:, :, rows], lse[:, :, rows] = done
            continue
        acc = torch.zeros(B, H, M, b_q, d_v, dtype=dtype, device=q.device)  # (B, H, M, b_q, d_v)
        row_sum = torch.zeros(B, H, M, b_q, 1, dtype=dtype, device=q.device)  # (B, H, M, b_q, 1)
        row_max = torch.full_like(row_sum, float("-inf"))  # (B, H, M, b_q, 1)
        for k_wide, v_wide, allowed in wide_tiles:
            row_max = _fold_in_(q_tile, k_wide, v_wide, allowed, acc, row_sum, row_max)  # Alg. 1 lines 8-10
        out[:, :, rows], lse[:, :, rows] = finish(acc, row_sum, row_max)  # Alg. 1 lines 12-13
    out = out.flatten(2, 3)[:, :, :N_q].to(q.dtype)  # (B, H, N_q, d_v)
    return out, lse.flatten(2, 3)[:, :, :N_q].contiguous()  # (B, H, N_q)


def _check_saved(name: str, x, shape: tuple, legend: str, device) -> None:
    """``x`` must be a floating tensor of ``shape`` on ``device`` (``out``, ``dout``, ``lse`` of the backward)."""
    check_tensor(name, x)
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {legend} = {shape} (from q and v), got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} must be on the device of q ({device}), got {x.device}")


def block_sparse_backward_torch(q, k, v, out, lse, dout, block_mask: BlockMask, *, scale: float | None = None):
    """The backward pass in PyTorch tiles (FA-2 Alg. 2): ``(dq, dk, dv)``, key tiles outside.

    Uses the transposed lists (``full_q_indices``, ``q_indices``): each key tile gathers the
    query tiles that see it, so ``dK_j, dV_j`` are finished in one step; ``dQ`` is accumulated
    in memory (``index_put_`` with ``accumulate=True``), as FA-2's Alg. 2 accumulates it.
    ``out: (B, H, N_q, d_v)`` and ``lse: (B, H, N_q)`` are the forward's, ``dout`` is shaped as ``out``.
    """
    B, H, H_kv, N_q, N_k, d = _check_inputs(q, k, v, block_mask)
    scale = resolve_scale(scale, 1.0 / math.sqrt(d))
    dtype = compute_dtype(q.dtype)
    G = H // H_kv
    d_v = v.shape[-1]
    _check_saved("out", out, (B, H, N_q, d_v), "(B, H, N_q, d_v)", q.device)
    _check_saved("dout", dout, (B, H, N_q, d_v), "(B, H, N_q, d_v)", q.device)
    _check_saved("lse", lse, (B, H, N_q), "(B, H, N_q)", q.device)
    bm = block_mask
    b_q, b_k = bm.block_q, bm.block_k
    T_q, T_k = bm.num_tiles
    all_heads = torch.arange(H, device=q.device)  # (H,)
    kv_head = all_heads // G  # (H,)
    D = (dout.to(dtype) * out.to(dtype)).sum(dim=-1, keepdim=True)  # (B, H, N_q, 1)  Alg. 2 line 4
    safe_lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse)).to(dtype)[..., None]  # (B, H, N_q, 1)
    q_tiles = _pad_tiles(q.to(dtype) * scale, T_q, b_q)  # (B, H, T_q, b_q, d)
    do_tiles = _pad_tiles(dout.to(dtype), T_q, b_q)  # (B, H, T_q, b_q, d_v)
    lse_tiles = _pad_tiles(safe_lse, T_q, b_q)  # (B, H, T_q, b_q, 1)
    D_tiles = _pad_tiles(D, T_q, b_q)  # (B, H, T_q, b_q, 1)
    k_tiles = _pad_tiles(k.to(dtype), T_k, b_k)[:, kv_head]  # (B, H, T_k, b_k, d)
    v_tiles = _pad_tiles(v.to(dtype), T_k, b_k)[:, kv_head]  # (B, H, T_k, b_k, d_v)
    dq = torch.zeros(B, H, T_q * b_q, d, dtype=dtype, device=q.device)  # (B, H, T_q b_q, d)
    dk = torch.zeros(B, H, T_k, b_k, d, dtype=dtype, device=q.device)  # (B, H, T_k, b_k, d) per query head
    dv = torch.zeros(B, H, T_k, b_k, d_v, dtype=dtype, device=q.device)  # (B, H, T_k, b_k, d_v)
    batch = torch.arange(B, device=q.device).view(B, 1, 1, 1)  # (B, 1, 1, 1)
    per_entry = B * H * b_q * (d + d_v + 2) * q_tiles.element_size()

    for tiles, L_full, L_partial in _groups(bm.full_q_num_blocks, bm.q_num_blocks, per_entry):  # Alg. 2 line 5
        M = tiles.numel()
        k_tile = k_tiles[:, :, tiles]  # (B, H, M, b_k, d)  Alg. 2 line 6
        v_tile = v_tiles[:, :, tiles]  # (B, H, M, b_k, d_v)
        dk_tile = torch.zeros(B, H, M, b_k, d, dtype=dtype, device=q.device)  # (B, H, M, b_k, d)  Alg. 2 line 7
        dv_tile = torch.zeros(B, H, M, b_k, d_v, dtype=dtype, device=q.device)  # (B, H, M, b_k, d_v)
        for num, indices, L, partial in ((bm.full_q_num_blocks, bm.full_q_indices, L_full, False),
                                         (bm.q_num_blocks, bm.q_indices, L_partial, True)):  # fmt: skip
            if L == 0:
                continue
            index, padding = _list_step(num, indices, tiles, L)  # (B_m, H_m, M, L) query tiles
            allowed_t = _allowed(bm, bm.partial_slot_t, tiles, index, padding, partial, b_k, b_q, transpose=True)
            q_wide = _gather(q_tiles, index, all_heads)  # (B, H, M, L b_q, d)  Alg. 2 line 9
            do_wide = _gather(do_tiles, index, all_heads)  # (B, H, M, L b_q, d_v)
            lse_wide = _gather(lse_tiles, index, all_heads)  # (B, H, M, L b_q, 1)
            D_wide = _gather(D_tiles, index, all_heads)  # (B, H, M, L b_q, 1)
            scores = q_wide @ k_tile.transpose(-2, -1)  # (B, H, M, L b_q, b_k)  Alg. 2 line 10
            if allowed_t is not None:
                scores.masked_fill_(~allowed_t.transpose(-2, -1), float("-inf"))
            probs = scores.sub_(lse_wide).exp_()  # (B, H, M, L b_q, b_k)  Alg. 2 line 11
            dv_tile += probs.transpose(-2, -1) @ do_wide  # (B, H, M, b_k, d_v)  Alg. 2 line 12
            dprobs = do_wide @ v_tile.transpose(-2, -1)  # (B, H, M, L b_q, b_k)  Alg. 2 line 13
            dscores = probs.mul_(dprobs.sub_(D_wide))  # (B, H, M, L b_q, b_k)  Alg. 2 line 14
            dk_tile += dscores.transpose(-2, -1) @ q_wide  # (B, H, M, b_k, d)  Alg. 2 line 16
            dq_wide = (dscores @ k_tile) * scale  # (B, H, M, L b_q, d)  Alg. 2 line 15
            rows = (index.long()[..., None] * b_q + torch.arange(b_q, device=q.device)).flatten(
                -2
            )  # (B_m, H_m, M, L b_q)
            dq.index_put_((batch, all_heads.view(1, H, 1, 1), rows), dq_wide, accumulate=True)
        dk[:, :, tiles] = dk_tile  # Alg. 2 line 18
        dv[:, :, tiles] = dv_tile
    # a key/value head receives the sum over its G query heads
    dk = dk.flatten(2, 3)[:, :, :N_k].unflatten(1, (H_kv, G)).sum(dim=2)  # (B, H_kv, N_k, d)
    dv = dv.flatten(2, 3)[:, :, :N_k].unflatten(1, (H_kv, G)).sum(dim=2)  # (B, H_kv, N_k, d_v)
    return dq[:, :, :N_q].to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


class BlockSparseAttentionFunction(torch.autograd.Function):
    """Autograd glue for the PyTorch path: saves ``out`` and ``lse`` (O(N)), never ``P``."""

    @staticmethod
    def forward(ctx, q, k, v, block_mask, scale):
        out, lse = block_sparse_forward_torch(q, k, v, block_mask, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.block_mask, ctx.scale = block_mask, scale
        return out

    @staticmethod
    @first_order_only("block_sparse_attention")
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = block_sparse_backward_torch(q, k, v, out, lse, dout, ctx.block_mask, scale=ctx.scale)
        return dq, dk, dv, None, None


def _triton_module():
    """``attnlib.optim.block_sparse_triton`` (imported on demand: importing attnlib never imports triton), or None."""
    try:
        import triton  # noqa: F401

        return importlib.import_module("attnlib.optim.block_sparse_triton")
    except ImportError:
        return None


def _select_backend(backend: str, q, k, v, block_mask, scale) -> str:
    """``"auto"``: Triton for CUDA tensors (and CPU tensors under TRITON_INTERPRET=1) when it takes the inputs."""
    if backend != "auto":
        return backend
    interpreted = q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    if q.device.type != "cuda" and not interpreted:
        return "torch"
    module = _triton_module()
    if module is None or module.block_sparse_unsupported_reason(q, k, v, block_mask, scale) is not None:
        return "torch"
    return "triton"


def block_sparse_attention(q, k, v, block_mask: BlockMask, *, scale: float | None = None,
                           backend: str = "auto") -> torch.Tensor:  # fmt: skip
    """Softmax attention restricted to a block mask's pattern, differentiable. Chapter 14.

    Equal to ``reference.attention(q, k, v, mask=block_mask.to_dense())`` (fully masked rows
    give 0), visiting only the partial and full tiles of ``block_mask``.

    Args:
        q: ``(B, H, N_q, d)``; k, v: ``(B, H_kv, N_k, d)`` / ``(B, H_kv, N_k, d_v)``, ``H_kv`` dividing ``H``.
        block_mask: built for ``N_q, N_k`` (and B, H, or 1), see :mod:`attnlib.optim.block_mask`.
        scale: multiplies ``q k^T``, default ``1 / sqrt(d)``.
        backend: ``"auto"`` runs the Triton kernels on CUDA tensors (and on CPU tensors in
            Triton's interpreter) when they take the inputs, else the PyTorch tiles; ``"torch"``
            and ``"triton"`` force one.

    Returns:
        ``(B, H, N_q, d_v)`` in the dtype of ``q``. Double backward is not supported (a clear error).
    """
    _check_inputs(q, k, v, block_mask)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if _select_backend(backend, q, k, v, block_mask, scale) == "triton":
        module = _triton_module()
        if module is None:
            raise ImportError("backend='triton' needs the triton package; install triton or use backend='torch'")
        return module.block_sparse_attention_triton(q, k, v, block_mask, scale=scale)
    return BlockSparseAttentionFunction.apply(q, k, v, block_mask, scale)


_BIGBIRD_MASKS: dict = {}  # (N, block_size, r, heads, causal, seed, device) -> BlockMask, built once


def bigbird_flash_attention(
    q, k, v, *, block_size: int = 64, num_random_blocks: int = 3, causal: bool = False, seed: int = 0,
    scale: float | None = None, backend: str = "auto",
) -> torch.Tensor:  # fmt: skip
    """BigBird's pattern (:func:`attnlib.sparse.bigbird.bigbird_pattern`, same arguments) inside the
    block-sparse FlashAttention kernel: the registry row ``bigbird_flash``.

    Equal to ``attnlib.sparse.bigbird.bigbird_attention(q, k, v, ...)`` with the same arguments.
    The block mask is built once per shape and kept (as a compiled kernel would keep it).
    """
    from .block_mask import bigbird_block_mask

    B, H, H_kv, N, N_k, d = check_qkv(q, k, v)
    if N_k != N:
        raise ValueError(
            f"bigbird_flash_attention is self-attention: q and k must have one length, got N_q={N}, N_k={N_k}"
        )
    check_flag("causal", causal)
    key = (N, block_size, num_random_blocks, H, causal, seed, q.device)
    if key not in _BIGBIRD_MASKS:
        _BIGBIRD_MASKS[key] = bigbird_block_mask(
            N, block_size=block_size, num_random_blocks=num_random_blocks, num_heads=H, causal=causal, seed=seed
        ).to(q.device)
    return block_sparse_attention(q, k, v, _BIGBIRD_MASKS[key], scale=scale, backend=backend)
