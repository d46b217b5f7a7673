"""Ring attention: exact attention over a sequence split across the ranks of a process group.

Papers and code
---------------
* Liu, Zaharia, Abbeel, "Ring Attention with Blockwise Transformers for Near-Infinite
  Context", ICLR 2024, arXiv:2310.01889 ("Ring Attention"). Algorithm 1: each host keeps its
  query block; key/value blocks are passed around a ring, one hop per step, while the host
  computes blockwise attention with the block it holds.
* The zigzag layout and the backward pass (dK, dV travel around the ring with K, V) follow
  the ``zhuzilin/ring-flash-attention`` project (``ring_flash_attn.py``, ``zigzag_ring_flash_attn.py``),
  whose merge of partial results is the sigmoid form used here.
* The local block is the book's FlashAttention (:mod:`attnlib.optim.flash`: tiled PyTorch on a
  CPU; :mod:`attnlib.optim.flash_triton` on a CUDA GPU), which returns ``out`` and ``lse``.

Chapter: "Ring attention" (chapters/*/15_ring_attention.ipynb).

The merge (the online softmax of the FlashAttention chapter, across ranks instead of tiles)
-----------------------------------------------------------------------------------------
A row that has seen keys ``A`` (output ``o_A``, logsumexp ``l_A``) and then sees keys ``B``
(``o_B``, ``l_B``) has, over ``A ∪ B``::

    l = log(exp(l_A) + exp(l_B)) = l_A - logsigmoid(l_A - l_B)
    o = (exp(l_A) o_A + exp(l_B) o_B) / exp(l) = o_A - sigmoid(l_B - l_A) (o_A - o_B)

Both right-hand sides only see the *difference* ``l_A - l_B``, so no ``exp`` overflows
(:func:`merge_partial`); the textbook ``l_A + log(1 + exp(l_B - l_A))`` overflows once the
difference passes ~88 in float32 (:func:`merge_partial_naive`).

Layouts (which tokens each rank holds; ``P`` ranks, sequence cut into chunks)
-------------------------------------------------------------------------------
* ``"plain"``: ``P`` chunks, rank ``r`` holds chunk ``r``. Causal: rank ``P - 1`` computes a
  block at every step, rank 0 only at step 0.
* ``"zigzag"``: ``2P`` chunks, rank ``r`` holds chunks ``r`` and ``2P - 1 - r`` (an early and a
  late one), so every rank does the same causal work at every step.

Conventions: as :mod:`attnlib.reference`. Causal attention aligns queries to the end of the
keys (query ``i`` of the whole sequence sees key ``j <= i + N_k - N_q``); a query that sees no
key gets a zero output and ``lse = -inf``; ``k, v`` may have ``H_kv`` heads dividing ``H``
(grouped-query attention). Every rank passes its *local* shards (:func:`shard` cuts them).

Shape legend
------------
    B      batch size
    H      query heads, H_kv key/value heads (H_kv divides H)
    n_q    local query tokens (N_q / P), n_k local key/value tokens (N_k / P)
    c_q    query tokens per chunk (n_q / chunks per rank), c_k likewise for keys
    d      head dimension of q and k, d_v head dimension of v
    P      ranks in the process group
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .._checks import check_flag, check_positive_int, check_qkv, check_tensor, first_order_only
from .flash import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q, tiled_attention_backward, tiled_attention_forward

__all__ = [
    "LAYOUTS",
    "BACKENDS",
    "chunks_of_rank",
    "shard",
    "unshard",
    "merge_partial",
    "merge_partial_naive",
    "Piece",
    "visible_pieces",
    "ring_schedule",
    "schedule_grid",
    "RingStats",
    "RingAttentionFunction",
    "ring_attention",
    "simulated_ring_attention",
    "RingCase",
    "launch",
    "compare_with_reference",
    "measure_worker",
    "main",
]

LAYOUTS = ("plain", "zigzag")
BACKENDS = ("auto", "torch", "triton")
_KV_TAG, _DKV_TAG = 17, 18  # message tags: key/value blocks, and their gradients in the backward pass


# --------------------------------------------------------------------------
# 1. Layouts: which chunks of the sequence each rank holds
# --------------------------------------------------------------------------


def _check_layout(layout) -> None:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _chunks_per_rank(layout: str) -> int:
    return 1 if layout == "plain" else 2


def chunks_of_rank(rank: int, world_size: int, layout: str) -> tuple[int, ...]:
    """Indices of the chunks rank ``rank`` holds, in order: ``(r,)`` plain, ``(r, 2P - 1 - r)`` zigzag."""
    check_positive_int("world_size", world_size)
    _check_layout(layout)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    return (rank,) if layout == "plain" else (rank, 2 * world_size - 1 - rank)


def _check_divisible(name: str, length: int, world_size: int, layout: str) -> int:
    """Tokens per chunk; ValueError unless ``length`` splits into the layout's chunks."""
    chunks = world_size * _chunks_per_rank(layout)
    if length % chunks != 0:
        raise ValueError(
            f"{name} = {length} must be divisible by {chunks} for layout={layout!r} with {world_size} ranks "
            f"({_chunks_per_rank(layout)} chunk(s) per rank); pad the sequence to a multiple of {chunks}"
        )
    return length // chunks


def shard(x: torch.Tensor, rank: int, world_size: int, *, layout: str = "zigzag", dim: int = 2) -> torch.Tensor:
    """The part of the whole sequence ``x`` that ``rank`` holds (a copy), tokens along ``dim``.

    ``(B, H, N, d)`` -> ``(B, H, N / P, d)``: chunk ``r`` (plain) or chunks ``r`` and ``2P-1-r``
    concatenated (zigzag).
    """
    check_tensor("x", x, floating=False)
    chunk = _check_divisible("the sequence length", x.shape[dim], world_size, layout)
    parts = [x.narrow(dim, c * chunk, chunk) for c in chunks_of_rank(rank, world_size, layout)]
    return torch.cat(parts, dim=dim)  # (B, H, N / P, d)


def unshard(parts, *, layout: str = "zigzag", dim: int = 2) -> torch.Tensor:
    """Inverse of :func:`shard`: the whole sequence from the list of every rank's part."""
    if not isinstance(parts, (list, tuple)) or not parts:
        raise ValueError(f"parts must be a non-empty list with one tensor per rank, got {type(parts).__name__}")
    world_size = len(parts)
    _check_layout(layout)
    per_rank = _chunks_per_rank(layout)
    by_index = {}
    for rank, part in enumerate(parts):
        check_tensor(f"parts[{rank}]", part, floating=False)
        if part.shape != parts[0].shape:  # shard() cuts every rank's part to the same shape
            raise ValueError(
                f"every rank's part must have the same shape (shard() cuts N / P tokens for each rank): "
                f"parts[{rank}] has shape {tuple(part.shape)}, parts[0] has {tuple(parts[0].shape)}"
            )
        chunk = _check_divisible(f"parts[{rank}] length", part.shape[dim] * world_size, world_size, layout)
        for position, index in enumerate(chunks_of_rank(rank, world_size, layout)):
            by_index[index] = part.narrow(dim, position * chunk, chunk)
    return torch.cat([by_index[i] for i in range(world_size * per_rank)], dim=dim)  # (B, H, N, d)


# --------------------------------------------------------------------------
# 2. The merge of partial results
# --------------------------------------------------------------------------


def merge_partial(out, lse, block_out, block_lse) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial attentions over disjoint key sets, in the sigmoid / log-sigmoid form.

    ``out, block_out: (..., n, d_v)``, ``lse, block_lse: (..., n)``; returns the merged
    ``(out, lse)``. Stable for any logits: only ``lse - block_lse`` enters ``sigmoid`` and
    ``logsigmoid``. A side with ``lse = -inf`` (no key seen yet) contributes nothing.
    """
    first_empty = lse == float("-inf")  # (..., n)
    new_lse = torch.where(first_empty, block_lse, lse - F.logsigmoid(lse - block_lse))  # (..., n)
    block_weight = torch.where(first_empty, torch.ones_like(lse), torch.sigmoid(block_lse - lse))  # (..., n)
    new_out = out - block_weight[..., None] * (out - block_out)  # (..., n, d_v)
    return new_out, new_lse


def _merge_into_(out, lse, block_out, block_lse) -> None:
    """:func:`merge_partial` in place on ``out, lse`` (views of the accumulators): one temporary of ``out``'s size."""
    first_empty = lse == float("-inf")  # (..., n)
    block_weight = torch.where(first_empty, torch.ones_like(lse), torch.sigmoid(block_lse - lse))  # (..., n)
    lse.copy_(torch.where(first_empty, block_lse, lse - F.logsigmoid(lse - block_lse)))  # (..., n)
    out.sub_((out - block_out).mul_(block_weight[..., None]))  # (..., n, d_v)


def merge_partial_naive(out, lse, block_out, block_lse) -> tuple[torch.Tensor, torch.Tensor]:
    """The same merge written as ``lse + log(1 + exp(block_lse - lse))``: overflows for large logits.

    For the chapter and the tests only: ``exp`` of a difference above ~88 is ``inf`` in float32.
    """
    new_lse = lse + torch.log(1 + torch.exp(block_lse - lse))  # (..., n)
    new_out = torch.exp(lse - new_lse)[..., None] * out + torch.exp(block_lse - new_lse)[..., None] * block_out
    return new_out, new_lse


# --------------------------------------------------------------------------
# 3. Which query rows see which keys: the pieces of one block
# --------------------------------------------------------------------------


class Piece(NamedTuple):
    """Rows ``row_start:row_stop`` of a query chunk see keys ``0:key_stop`` of a key chunk.

    ``causal=True``: with FlashAttention's own causal mask (queries aligned to the end of the
    ``key_stop`` keys); ``False``: every row sees all of them.
    """

    row_start: int
    row_stop: int
    key_stop: int
    causal: bool

    def pairs(self) -> int:
        """Visible (query, key) pairs: the work of this piece."""
        rows = self.row_stop - self.row_start
        if not self.causal:
            return rows * self.key_stop
        first = self.key_stop - rows + 1  # keys the first row sees
        return rows * (first + self.key_stop) // 2


def visible_pieces(q_start: int, c_q: int, k_start: int, c_k: int, *, offset: int, causal: bool) -> list[Piece]:
    """The work of one (query chunk, key chunk) block, as at most two FlashAttention calls.

    Query ``q_start + i`` sees key ``k_start + j`` iff ``j <= i + delta`` with
    ``delta = q_start + offset - k_start`` (``offset = N_k - N_q``). Rows ``i < -delta`` see
    nothing; rows ``i >= c_k - delta`` see every key; the rows between form a causal piece whose
    FlashAttention offset, ``key_stop - rows``, equals ``delta`` shifted by its first row.
    Empty list: causality hides the whole block.
    """
    if not causal:
        return [Piece(0, c_q, c_k, False)]
    delta = q_start + offset - k_start
    first_seeing = min(max(-delta, 0), c_q)  # rows before it see no key of this chunk
    first_full = min(max(c_k - delta, first_seeing), c_q)  # rows from here see every key
    pieces = []
    if first_full > first_seeing:
        pieces.append(Piece(first_seeing, first_full, first_full + delta, True))
    if c_q > first_full:
        pieces.append(Piece(first_full, c_q, c_k, False))
    return pieces


def _block_plan(rank, source, world_size, layout, c_q, c_k, offset, causal) -> list[tuple[int, int, Piece]]:
    """Every piece rank ``rank`` computes with the key/value shard of rank ``source``.

    Entries ``(query chunk position, key chunk position, piece)``, positions within the local shards.
    """
    plan = []
    for q_position, q_chunk in enumerate(chunks_of_rank(rank, world_size, layout)):
        for k_position, k_chunk in enumerate(chunks_of_rank(source, world_size, layout)):
            pieces = visible_pieces(q_chunk * c_q, c_q, k_chunk * c_k, c_k, offset=offset, causal=causal)
            plan += [(q_position, k_position, piece) for piece in pieces]
    return plan


def ring_schedule(world_size: int, layout: str, N_q: int, N_k: int | None = None, *, causal: bool = True):
    """What every rank computes at every step of the ring, without running it.

    At step ``s`` rank ``r`` holds the key/value shard of rank ``(r - s) mod P``.

    Returns:
        ``steps[s][r] = {"source": int, "key_chunks": tuple, "pairs": int, "pieces": list}``, where
        ``pieces`` lists ``(query positions, key positions, causal)`` ranges of the whole sequence and
        ``pairs`` counts the visible (query, key) pairs: the work of rank ``r`` at step ``s``.
    """
    check_positive_int("world_size", world_size)
    _check_layout(layout)
    check_positive_int("N_q", N_q)
    N_k = N_q if N_k is None else N_k
    check_positive_int("N_k", N_k)
    c_q = _check_divisible("N_q", N_q, world_size, layout)
    c_k = _check_divisible("N_k", N_k, world_size, layout)
    offset = N_k - N_q
    steps = []
    for step in range(world_size):
        ranks = []
        for rank in range(world_size):
            source = (rank - step) % world_size
            plan = _block_plan(rank, source, world_size, layout, c_q, c_k, offset, causal)
            q_chunks = chunks_of_rank(rank, world_size, layout)
            k_chunks = chunks_of_rank(source, world_size, layout)
            pieces = [
                (
                    range(q_chunks[qp] * c_q + p.row_start, q_chunks[qp] * c_q + p.row_stop),
                    range(k_chunks[kp] * c_k, k_chunks[kp] * c_k + p.key_stop),
                    p.causal,
                )
                for qp, kp, p in plan
            ]
            pairs = sum(p.pairs() for _, _, p in plan)
            ranks.append({"source": source, "key_chunks": k_chunks, "pairs": pairs, "pieces": pieces})
        steps.append(ranks)
    return steps


def schedule_grid(world_size: int, layout: str, step: int, N: int, *, causal: bool = True) -> torch.Tensor:
    """An ``(N, N)`` integer picture of one ring step, for the chapter's figure.

    0: hidden by causality; 1: computed at another step; ``2 + r``: computed by rank ``r`` now.
    """
    steps = ring_schedule(world_size, layout, N, N, causal=causal)
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < world_size:
        raise ValueError(f"step must be an int in [0, {world_size}), got {step!r}")
    grid = torch.zeros(N, N, dtype=torch.int64)  # (N, N)
    for s, ranks in enumerate(steps):
        for rank, work in enumerate(ranks):
            for rows, cols, is_causal in work["pieces"]:
                value = 2 + rank if s == step else 1
                block = grid[rows.start : rows.stop, cols.start : cols.stop]  # a view
                if is_causal:
                    # row i of the piece sees key j <= i + len(cols) - len(rows) of it (FlashAttention's offset)
                    seen = torch.ones(len(rows), len(cols), dtype=torch.bool).tril(len(cols) - len(rows))
                    block[seen] = value
                else:
                    block.fill_(value)
    return grid


# --------------------------------------------------------------------------
# 4. The local block: FlashAttention returning (out, lse), and its backward
# --------------------------------------------------------------------------


@dataclass
class RingStats:
    """Optional counters filled by :func:`ring_attention` (pass one to see where time goes).

    Times are wall-clock seconds on this rank (CUDA work is synchronized before each reading).
    """

    forward_compute_s: float = 0.0  # FlashAttention calls and merges
    forward_wait_s: float = 0.0  # waiting for a key/value block that has not arrived yet
    backward_compute_s: float = 0.0
    backward_wait_s: float = 0.0
    bytes_sent: int = 0  # by this rank, forward and backward
    pairs: list = field(default_factory=list)  # visible (query, key) pairs computed at each forward step


def _triton_module():
    try:
        import importlib

        import triton  # noqa: F401

        return importlib.import_module("attnlib.optim.flash_triton")
    except ImportError:
        return None


def _choose_backend(backend: str, q, k, v, causal, scale) -> str:
    """``"auto"``: the Triton kernels for CUDA tensors they accept, the PyTorch tiles otherwise."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        if backend == "triton" and _triton_module() is None:
            raise ImportError("backend='triton' needs the triton package; install it or use backend='torch'")
        return backend
    if q.device.type != "cuda":
        return "torch"
    triton_module = _triton_module()
    if triton_module is None or triton_module.unsupported_reason(q, k, v, causal, scale) is not None:
        return "torch"
    return "triton"


class _LocalFlash(NamedTuple):
    """The book's FlashAttention for one piece: ``forward -> (out fp32, lse)``, ``backward -> (dq, dk, dv)``."""

    backend: str
    scale: float
    block_q: int
    block_k: int

    def forward(self, q, k, v, causal):
        if self.backend == "triton":
            out, lse = _triton_module().flash_forward(q, k, v, causal, self.scale)
        else:
            out, lse = tiled_attention_forward(
                q, k, v, causal=causal, scale=self.scale, block_q=self.block_q, block_k=self.block_k
            )
        return out.float() if out.dtype != torch.float64 else out, lse

    def backward(self, q, k, v, out, lse, dout, causal):
        if self.backend == "triton":
            dq, dk, dv = _triton_module().flash_backward(
                dout.to(q.dtype), q, k, v, out.to(q.dtype), lse.float(), causal, self.scale
            )
        else:
            dq, dk, dv = tiled_attention_backward(
                q, k, v, out, lse, dout, causal=causal, scale=self.scale, block_q=self.block_q, block_k=self.block_k
            )
        return dq, dk, dv


def _rows(position: int, chunk: int, piece: Piece) -> slice:
    return slice(position * chunk + piece.row_start, position * chunk + piece.row_stop)


def _keys(position: int, chunk: int, piece: Piece) -> slice:
    return slice(position * chunk, position * chunk + piece.key_stop)


def _forward_block_(local, q, k_src, v_src, plan, c_q, c_k, out_acc, lse_acc) -> int:
    """Attend ``q: (B, H, n_q, d)`` to one key/value shard and merge into ``out_acc, lse_acc`` in place.

    Returns the visible pairs computed.
    """
    for q_position, k_position, piece in plan:
        rows, keys = _rows(q_position, c_q, piece), _keys(k_position, c_k, piece)
        block_out, block_lse = local.forward(
            q[:, :, rows], k_src[:, :, keys], v_src[:, :, keys], piece.causal
        )  # (B, H, rows, d_v), (B, H, rows)
        _merge_into_(out_acc[:, :, rows], lse_acc[:, :, rows], block_out, block_lse)
    return sum(piece.pairs() for _, _, piece in plan)


def _backward_block_(local, q, k_src, v_src, out, lse, dout, plan, c_q, c_k, dq_acc, dk_acc, dv_acc) -> None:
    """Gradients of one key/value shard's pieces, with the *final* ``out`` and ``lse`` (FA-2 Alg. 2).

    ``P = exp(S - lse)`` with the logsumexp over the whole sequence is this block's share of the
    softmax, and ``D = rowsum(dO * O)`` uses the final output: so the per-block gradients add up.
    Adds into ``dq_acc: (B, H, n_q, d)``, ``dk_acc: (B, H_kv, n_k, d)``, ``dv_acc: (B, H_kv, n_k, d_v)``.
    """
    for q_position, k_position, piece in plan:
        rows, keys = _rows(q_position, c_q, piece), _keys(k_position, c_k, piece)
        dq, dk, dv = local.backward(
            q[:, :, rows], k_src[:, :, keys], v_src[:, :, keys], out[:, :, rows], lse[:, :, rows], dout[:, :, rows],
            piece.causal,
        )  # fmt: skip
        dq_acc[:, :, rows] += dq  # (B, H, rows, d)
        dk_acc[:, :, keys] += dk  # (B, H_kv, keys, d)
        dv_acc[:, :, keys] += dv  # (B, H_kv, keys, d_v)


# --------------------------------------------------------------------------
# 5. The ring: point-to-point messages between neighbours
# --------------------------------------------------------------------------


def _pack(*tensors) -> torch.Tensor:
    """One flat contiguous buffer (one message per hop)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def _unpack(buffer: torch.Tensor, shapes) -> list[torch.Tensor]:
    views, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        views.append(buffer[start : start + size].view(shape))
        start += size
    return views


class _Ring:
    """This rank's place in the ring: send to the next rank, receive from the previous one."""

    def __init__(self, group):
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        next_in_group, prev_in_group = (self.rank + 1) % self.size, (self.rank - 1) % self.size
        if group is None:  # the default group: its ranks are the global ranks
            self.next_rank, self.prev_rank = next_in_group, prev_in_group
        else:  # point-to-point calls take global ranks
            self.next_rank = dist.get_global_rank(group, next_in_group)
            self.prev_rank = dist.get_global_rank(group, prev_in_group)

    def start_exchange(self, send_buffer: torch.Tensor, tag: int, stats: RingStats | None):
        """Send ``send_buffer`` forward and receive the previous rank's buffer; returns (buffer, works)."""
        receive_buffer = torch.empty_like(send_buffer)
        works = [
            dist.isend(send_buffer, self.next_rank, group=self.group, tag=tag),
            dist.irecv(receive_buffer, self.prev_rank, group=self.group, tag=tag),
        ]
        if stats is not None:
            stats.bytes_sent += send_buffer.numel() * send_buffer.element_size()
        return receive_buffer, works


def _wait(works: list) -> None:
    """Wait for the sends and receives in ``works``, then drop them: a finished send holds its buffer."""
    for work in works:
        work.wait()
    works.clear()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_group(group):
    if not dist.is_available():
        raise RuntimeError("ring_attention needs torch.distributed, which this PyTorch build does not provide")
    if not dist.is_initialized():
        raise RuntimeError(
            "ring_attention needs an initialized process group: call torch.distributed.init_process_group "
            "(backend 'gloo' on CPUs, 'nccl' on GPUs) in every process first, start the script with torchrun, "
            "or use attnlib.optim.ring.launch; simulated_ring_attention runs the same schedule in one process"
        )
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group must be a torch.distributed.ProcessGroup or None, got {type(group).__name__}")
    if dist.get_rank(group) < 0:
        raise ValueError("this process is not a member of the process group passed as group")


_DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


def _check_ranks_agree(ring: _Ring, q, k, v, causal: bool, layout: str) -> None:
    """All-gather every rank's shapes and settings; the same ValueError on every rank if they differ."""
    mine = [*q.shape, k.shape[1], k.shape[2], v.shape[3], _DTYPE_CODES[q.dtype], int(causal), LAYOUTS.index(layout)]
    device = q.device if q.device.type == "cuda" else torch.device("cpu")
    local = torch.tensor(mine, dtype=torch.int64, device=device)
    gathered = [torch.empty_like(local) for _ in range(ring.size)]
    dist.all_gather(gathered, local, group=ring.group)
    rows = [tuple(int(x) for x in t.tolist()) for t in gathered]
    if any(row != rows[0] for row in rows):
        names = "(B, H, n_q, d, H_kv, n_k, d_v, dtype, causal, layout)"
        listing = "; ".join(f"rank {r}: {row}" for r, row in enumerate(rows))
        raise ValueError(f"ranks disagree on the local shapes or settings {names}: {listing}")


class RingAttentionFunction(torch.autograd.Function):
    """Ring attention as one autograd node: forward ``(out, lse)``, backward ``(dq, dk, dv)``.

    ``RingAttentionFunction.apply(q, k, v, causal, scale, layout, group, backend, block_q, block_k, stats,
    prefetch)``.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal, scale, layout, group, backend, block_q, block_k, stats, prefetch):
        ring = _Ring(group)
        B, H, n_q, _ = q.shape
        n_k, d_v = k.shape[2], v.shape[3]
        c_q, c_k = n_q // _chunks_per_rank(layout), n_k // _chunks_per_rank(layout)
        offset = (n_k - n_q) * ring.size  # N_k - N_q of the whole sequence
        chosen = _choose_backend(backend, q, k, v, causal, scale)
        local = _LocalFlash(chosen, scale, block_q, block_k)
        compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        q_local = q if chosen == "triton" else q.to(compute_dtype)  # (B, H, n_q, d)

        out = torch.zeros(B, H, n_q, d_v, dtype=compute_dtype, device=q.device)  # (B, H, n_q, d_v)
        lse = torch.full((B, H, n_q), float("-inf"), dtype=compute_dtype, device=q.device)  # (B, H, n_q)
        kv_shapes = (k.shape, v.shape)
        kv = _pack(k, v)  # (H_kv * n_k * (d + d_v) * B,)
        for step in range(ring.size):
            tick = time.perf_counter()
            if step + 1 < ring.size:  # start the next hop first: it travels while we compute
                next_kv, works = ring.start_exchange(kv, _KV_TAG, stats)
            source = (ring.rank - step) % ring.size
            k_src, v_src = _unpack(kv, kv_shapes)  # (B, H_kv, n_k, d), (B, H_kv, n_k, d_v)
            if chosen != "triton":
                k_src, v_src = k_src.to(compute_dtype), v_src.to(compute_dtype)
            plan = _block_plan(ring.rank, source, ring.size, layout, c_q, c_k, offset, causal)
            pairs = _forward_block_(local, q_local, k_src, v_src, plan, c_q, c_k, out, lse)
            del k_src, v_src  # views of kv: the shard is freed as soon as the next one replaces it
            if stats is not None:
                _sync(q.device)
                stats.pairs.append(pairs)
                stats.forward_compute_s += time.perf_counter() - tick
            if step + 1 < ring.size:
                tick = time.perf_counter()
                _wait(works)
                kv = next_kv
                if stats is not None:
                    stats.forward_wait_s += time.perf_counter() - tick

        out_final = out.to(q.dtype)  # (B, H, n_q, d_v)
        lse_final = lse.float() if compute_dtype == torch.float32 else lse  # (B, H, n_q)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.settings = (causal, scale, layout, group, chosen, block_q, block_k, stats, prefetch)
        ctx.mark_non_differentiable(lse_final)
        return out_final, lse_final

    @staticmethod
    @first_order_only("ring_attention")
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        causal, scale, layout, group, chosen, block_q, block_k, stats, prefetch = ctx.settings
        if dout is None:  # only lse was used: no gradient flows
            dout = torch.zeros_like(out)
        ring = _Ring(group)
        n_q, n_k = q.shape[2], k.shape[2]
        c_q, c_k = n_q // _chunks_per_rank(layout), n_k // _chunks_per_rank(layout)
        offset = (n_k - n_q) * ring.size
        local = _LocalFlash(chosen, scale, block_q, block_k)
        compute_dtype = out.dtype
        if chosen == "triton":
            q_local, out_local, dout_local = q, out.to(q.dtype), dout.to(q.dtype)
        else:
            q_local, out_local, dout_local = q.to(compute_dtype), out, dout.to(compute_dtype)

        dq = torch.zeros(q.shape, dtype=compute_dtype, device=q.device)  # (B, H, n_q, d)
        kv_shapes = (k.shape, v.shape)
        kv = _pack(k, v)
        # The gradients of a shard travel with it: the rank that holds the shard at this step adds its
        # share into the buffer the previous rank sent, then sends it on. Adding *into the received
        # buffer* (instead of into a fresh one, added later) keeps one dK/dV buffer per rank besides
        # the one arriving.
        # prefetch=True (as the published implementations): the next key/value shard travels while this
        # one is computed, so a rank holds one more shard than at P = 1 while it computes. False: the
        # shard moves after the compute, then its gradients do, one message after the other; a rank
        # then never holds more than at P = 1, and waits for every message.
        dkv = torch.zeros(k.numel() + v.numel(), dtype=compute_dtype, device=q.device)  # packed (dk, dv)
        passing_dkv, dkv_works = None, []
        for step in range(ring.size):
            tick = time.perf_counter()
            more_steps = step + 1 < ring.size
            if prefetch and more_steps:
                next_kv, kv_works = ring.start_exchange(kv, _KV_TAG, stats)
            if step > 0:  # the partial gradients of the shard we now hold, from the ranks before us
                _wait(dkv_works)  # also ends our previous send, whose buffer is then freed
                dkv = passing_dkv
            if stats is not None:
                stats.backward_wait_s += time.perf_counter() - tick
                tick = time.perf_counter()
            source = (ring.rank - step) % ring.size
            k_src, v_src = _unpack(kv, kv_shapes)
            if chosen != "triton":
                k_src, v_src = k_src.to(compute_dtype), v_src.to(compute_dtype)
            plan = _block_plan(ring.rank, source, ring.size, layout, c_q, c_k, offset, causal)
            dk_src, dv_src = _unpack(dkv, kv_shapes)  # (B, H_kv, n_k, d), (B, H_kv, n_k, d_v)
            _backward_block_(
                local, q_local, k_src, v_src, out_local, lse, dout_local, plan, c_q, c_k, dq, dk_src, dv_src
            )
            del k_src, v_src, dk_src, dv_src  # views of kv and dkv: no buffer outlives its step
            if stats is not None:
                _sync(q.device)
                stats.backward_compute_s += time.perf_counter() - tick
            tick = time.perf_counter()
            if more_steps:
                if not prefetch:  # the shard moves now; the next step needs it before anything else
                    next_kv, kv_works = ring.start_exchange(kv, _KV_TAG, stats)
                _wait(kv_works)
                kv = next_kv
            else:
                del kv  # the last shard is done with: not held while its gradients travel
            if ring.size > 1:  # the gradients travel on with the shard they belong to
                passing_dkv, dkv_works = ring.start_exchange(dkv, _DKV_TAG, stats)
                del dkv  # the send keeps it alive until it is done
            if stats is not None:
                stats.backward_wait_s += time.perf_counter() - tick
        if ring.size > 1:  # after P hops our own shard's gradients are back
            tick = time.perf_counter()
            _wait(dkv_works)
            dkv = passing_dkv
            if stats is not None:
                stats.backward_wait_s += time.perf_counter() - tick
        dk, dv = _unpack(dkv, kv_shapes)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, None, None, None, None, None, None


def _resolve_scale(scale, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"scale must be a finite float or None, got {scale!r}")
    return float(scale)


def _check_arguments(q, k, v, causal, layout, block_q, block_k, world_size):
    check_qkv(q, k, v)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    _check_layout(layout)
    check_positive_int("block_q", block_q)
    check_positive_int("block_k", block_k)
    per_rank = _chunks_per_rank(layout)
    for name, length in (("q", q.shape[2]), ("k", k.shape[2])):
        if length % per_rank != 0:
            raise ValueError(
                f"the local length of {name} ({length} tokens) must be divisible by {per_rank} for "
                f"layout={layout!r}: each rank holds {per_rank} chunks, so the whole sequence must be "
                f"divisible by {per_rank * world_size} ({per_rank} x {world_size} ranks)"
            )


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    layout: str = "zigzag",
    group=None,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
    stats: RingStats | None = None,
    prefetch: bool = True,
):
    """Exact attention over a sequence sharded across a process group; differentiable (first order).

    Call it in every rank of ``group`` with that rank's shards (see :func:`shard`); each gets its
    own rows of the output. Equal to :func:`attnlib.reference.attention` on the whole sequence.
    The backward computes first-order gradients only: ``create_graph=True`` (second-order
    gradients, e.g. a gradient penalty) raises RuntimeError on every rank.

    Args:
        q: ``(B, H, n_q, d)``, this rank's queries; k: ``(B, H_kv, n_k, d)``; v: ``(B, H_kv, n_k, d_v)``.
            Every rank must pass the same shapes, dtype and settings (checked: ValueError on all ranks).
        causal: query ``i`` of the whole sequence sees key ``j <= i + N_k - N_q``.
        layout: ``"zigzag"`` (rank ``r`` holds chunks ``r`` and ``2P-1-r``; balanced when causal)
            or ``"plain"`` (chunk ``r``).
        group: a ``torch.distributed`` process group; None is the default group.
        scale: multiplies ``q k^T``, default ``1 / sqrt(d)``.
        return_lse: also return this rank's ``lse: (B, H, n_q)`` (float32; no gradient).
        backend: local FlashAttention: ``"auto"`` (Triton kernels on CUDA, PyTorch tiles elsewhere),
            ``"torch"`` or ``"triton"``.
        block_q, block_k: tiles of the PyTorch path.
        stats: a :class:`RingStats` to fill with times, bytes and work, or None.
        prefetch: in the backward, receive the next key/value shard while computing on this one (as
            the published implementations do; it hides the transfer but holds one more shard). False
            moves each shard after its compute: a rank's peak memory is then that of P = 1 over its
            shard, and every transfer is waited for. The forward always prefetches (its peak is lower).

    Returns:
        ``out: (B, H, n_q, d_v)`` in the dtype of ``q`` (and ``lse`` if asked).
    """
    _check_group(group)
    world_size = dist.get_world_size(group)
    _check_arguments(q, k, v, causal, layout, block_q, block_k, world_size)
    if stats is not None and not isinstance(stats, RingStats):
        raise TypeError(f"stats must be a RingStats or None, got {type(stats).__name__}")
    check_flag("prefetch", prefetch)
    scale = _resolve_scale(scale, q.shape[-1])
    _check_ranks_agree(_Ring(group), q, k, v, causal, layout)
    out, lse = RingAttentionFunction.apply(
        q, k, v, causal, scale, layout, group, backend, block_q, block_k, stats, prefetch
    )
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------
# 6. The same schedule in one process (no communication)
# --------------------------------------------------------------------------


class _SimulatedRing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, world_size, layout, block_q, block_k):
        local = _LocalFlash("torch", scale, block_q, block_k)
        compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        q_parts = [shard(q, r, world_size, layout=layout).to(compute_dtype) for r in range(world_size)]
        k_parts = [shard(k, r, world_size, layout=layout).to(compute_dtype) for r in range(world_size)]
        v_parts = [shard(v, r, world_size, layout=layout).to(compute_dtype) for r in range(world_size)]
        c_q, c_k = q_parts[0].shape[2] // _chunks_per_rank(layout), k_parts[0].shape[2] // _chunks_per_rank(layout)
        offset = k.shape[2] - q.shape[2]
        outs, lses = [], []
        for rank in range(world_size):
            B, H, n_q, _ = q_parts[rank].shape
            out = torch.zeros(B, H, n_q, v.shape[3], dtype=compute_dtype)  # (B, H, n_q, d_v)
            lse = torch.full((B, H, n_q), float("-inf"), dtype=compute_dtype)  # (B, H, n_q)
            for step in range(world_size):
                source = (rank - step) % world_size
                plan = _block_plan(rank, source, world_size, layout, c_q, c_k, offset, causal)
                _forward_block_(local, q_parts[rank], k_parts[source], v_parts[source], plan, c_q, c_k, out, lse)
            outs.append(out)
            lses.append(lse)
        ctx.save_for_backward(*q_parts, *k_parts, *v_parts, *outs, *lses)
        ctx.settings = (causal, world_size, layout, local, c_q, c_k, offset, q.dtype, k.dtype)
        return unshard(outs, layout=layout).to(q.dtype)  # (B, H, N_q, d_v)

    @staticmethod
    @first_order_only("simulated_ring_attention")
    def backward(ctx, dout):
        causal, world_size, layout, local, c_q, c_k, offset, q_dtype, k_dtype = ctx.settings
        saved = ctx.saved_tensors
        q_parts, k_parts, v_parts, outs, lses = (saved[i * world_size : (i + 1) * world_size] for i in range(5))
        dq_parts = [torch.zeros_like(x) for x in q_parts]
        dk_parts = [torch.zeros_like(x) for x in k_parts]
        dv_parts = [torch.zeros_like(x) for x in v_parts]
        for rank in range(world_size):
            dout_local = shard(dout, rank, world_size, layout=layout).to(outs[rank].dtype)
            for step in range(world_size):
                source = (rank - step) % world_size
                plan = _block_plan(rank, source, world_size, layout, c_q, c_k, offset, causal)
                _backward_block_(
                    local, q_parts[rank], k_parts[source], v_parts[source], outs[rank], lses[rank], dout_local,
                    plan, c_q, c_k, dq_parts[rank], dk_parts[source], dv_parts[source],
                )  # fmt: skip
        dq = unshard(dq_parts, layout=layout).to(q_dtype)
        dk = unshard(dk_parts, layout=layout).to(k_dtype)
        dv = unshard(dv_parts, layout=layout).to(k_dtype)
        return dq, dk, dv, None, None, None, None, None, None


def simulated_ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    world_size: int = 4,
    layout: str = "zigzag",
    scale: float | None = None,
    block_q: int = DEFAULT_BLOCK_Q,
    block_k: int = DEFAULT_BLOCK_K,
) -> torch.Tensor:
    """Ring attention's schedule and merge for ``world_size`` virtual ranks in this process; differentiable.

    Takes the *whole* sequence, ``q: (B, H, N_q, d)``, ``k: (B, H_kv, N_k, d)``, ``v: (B, H_kv, N_k, d_v)``
    (the signature of every attention kernel in the registry), shards it, runs the same blocks and
    merges as :func:`ring_attention` rank by rank, and returns ``(B, H, N_q, d_v)``. No process group.
    First-order gradients only, as :func:`ring_attention`.
    """
    check_qkv(q, k, v)
    check_positive_int("world_size", world_size)
    _check_arguments(q, k, v, causal, layout, block_q, block_k, 1)
    _check_divisible("N_q", q.shape[2], world_size, layout)
    _check_divisible("N_k", k.shape[2], world_size, layout)
    scale = _resolve_scale(scale, q.shape[-1])
    return _SimulatedRing.apply(q, k, v, causal, scale, world_size, layout, block_q, block_k)


# --------------------------------------------------------------------------
# 7. Launching a group of processes (for the notebook, the tests and the command line)
# --------------------------------------------------------------------------


def _entry(rank, worker, world_size, init_file, backend, result_dir, timeout_s, threads, args):
    """What each spawned process runs: join the group, call ``worker``, save its result."""
    torch.set_num_threads(threads)
    dist.init_process_group(
        backend,
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        result = worker(rank, world_size, *args)
        torch.save(result, os.path.join(result_dir, f"rank{rank}.pt"))
    except BaseException as error:
        # the time tells the parent which rank failed first (the others fail because it is gone)
        message = "".join(traceback.format_exception(error))
        last_line = f"{type(error).__name__}: {error}"
        with open(os.path.join(result_dir, f"error{rank}.txt"), "w") as handle:
            handle.write(f"{time.time()!r}\n{last_line}\n{message}")
        raise
    finally:
        dist.destroy_process_group()


def _first_failure(folder: str, world_size: int):
    """``(rank, last line, traceback)`` of the rank that failed first, or None."""
    failures = []
    for rank in range(world_size):
        path = os.path.join(folder, f"error{rank}.txt")
        if os.path.exists(path):
            with open(path) as handle:
                when, last_line, message = handle.read().split("\n", 2)
            failures.append((float(when), rank, last_line, message))
    if not failures:
        return None
    _, rank, last_line, message = min(failures)
    return rank, last_line, message


def _stop(context) -> None:
    for process in context.processes:
        if process.is_alive():
            process.terminate()
    for process in context.processes:
        process.join(5)


def launch(
    worker, world_size: int, *args, backend: str = "gloo", timeout: float = 120.0, threads: int = 1, start_method=None
) -> list:
    """Run ``worker(rank, world_size, *args)`` in ``world_size`` fresh processes joined in a process group.

    The processes are started with ``torch.multiprocessing``, meet through a file in a temporary
    folder (nothing listens on the network) and return their results (anything ``torch.save``
    takes), listed by rank. Each process uses ``threads`` threads.

    If a rank raises, the others are stopped and a RuntimeError names the rank that failed first
    and carries its traceback; after ``timeout`` seconds every rank is stopped and TimeoutError is
    raised. On Linux the processes are forked (no second import of torch: fast, and ``worker`` may
    be any function); elsewhere, or with ``start_method="spawn"``, ``worker`` must be importable.
    """
    check_positive_int("world_size", world_size)
    check_positive_int("threads", threads)
    if not callable(worker):
        raise TypeError(f"worker must be a callable (rank, world_size, *args), got {type(worker).__name__}")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    import torch.multiprocessing as mp

    if start_method is None:  # fork: no second import of torch per process (seconds on a busy machine)
        start_method = "fork" if "fork" in mp.get_all_start_methods() and sys.platform == "linux" else "spawn"
    folder = tempfile.mkdtemp(prefix="attnlib-ring-")
    try:
        init_file = os.path.join(folder, "rendezvous")
        context = mp.start_processes(
            _entry,
            args=(worker, world_size, init_file, backend, folder, timeout, threads, args),
            nprocs=world_size,
            join=False,
            start_method=start_method,
        )
        deadline = time.monotonic() + timeout
        # join() logs a warning with process ids when it stops the other ranks; the error raised here says it
        spawn_log = logging.getLogger("torch.multiprocessing.spawn")
        spawn_log_level = spawn_log.level
        spawn_log.setLevel(logging.ERROR)
        try:
            while not context.join(timeout=0.2):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the {world_size} ranks did not finish within {timeout} s (a rank waits for a message "
                        "that never comes?); all were stopped"
                    )
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
            _stop(context)
            first = _first_failure(folder, world_size)
            if first is None:  # killed by a signal, or exited without a Python exception
                raise RuntimeError(
                    f"rank {error.error_index} of {world_size} failed ({error}); the others were stopped"
                ) from error
            rank, last_line, message = first
            raise RuntimeError(
                f"rank {rank} of {world_size} raised {last_line!r}; the other ranks were stopped.\n{message}"
            ) from None
        finally:
            _stop(context)
            spawn_log.setLevel(spawn_log_level)
        return [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@dataclass(frozen=True)
class RingCase:
    """One configuration for :func:`compare_with_reference` (whole-sequence sizes)."""

    N_q: int = 32
    N_k: int | None = None  # None: N_q (self-attention)
    B: int = 1
    H: int = 2
    H_kv: int = 2
    d: int = 8
    d_v: int | None = None  # None: d
    causal: bool = True
    layout: str = "zigzag"
    seed: int = 0
    logit_scale: float = 1.0  # multiplies q: large values test the merge at large logits
    backend: str = "auto"  # the local FlashAttention: "auto", "torch" or "triton"
    prefetch: bool = True  # the backward receives the next shard while it computes


def _case_inputs(case: RingCase):
    """The whole sequence's ``q, k, v`` and the upstream gradient ``dout`` of a case, from its seed."""
    generator = torch.Generator().manual_seed(case.seed)
    N_k = case.N_q if case.N_k is None else case.N_k
    d_v = case.d if case.d_v is None else case.d_v
    q = torch.randn(case.B, case.H, case.N_q, case.d, generator=generator) * case.logit_scale
    k = torch.randn(case.B, case.H_kv, N_k, case.d, generator=generator)
    v = torch.randn(case.B, case.H_kv, N_k, d_v, generator=generator)
    dout = torch.randn(case.B, case.H, case.N_q, d_v, generator=generator)
    return q, k, v, dout


def _cases_worker(rank: int, world_size: int, cases) -> list[dict]:
    """Run each case's ring attention, forward and backward, on this rank's shards."""
    results = []
    for case in cases:
        q, k, v, dout = (shard(x, rank, world_size, layout=case.layout) for x in _case_inputs(case))
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        stats = RingStats()
        out, lse = ring_attention(
            q, k, v, causal=case.causal, layout=case.layout, return_lse=True, stats=stats, backend=case.backend,
            prefetch=case.prefetch,
        )  # fmt: skip
        out.backward(dout)
        results.append(dict(out=out.detach(), lse=lse, dq=q.grad, dk=k.grad, dv=v.grad, pairs=stats.pairs))
    return results


def compare_with_reference(cases, world_size: int, *, timeout: float = 120.0) -> list[dict]:
    """Run ``cases`` in one group of ``world_size`` processes; compare with ``reference.attention``.

    Returns one dict per case: the max absolute error of ``out``, ``lse`` (finite entries),
    ``dq``, ``dk``, ``dv`` against the reference on the whole sequence, ``lse_inf_match`` (the
    ``-inf`` entries agree) and ``pairs`` (each rank's work per step, as measured).
    """
    from ..reference import attention

    cases = list(cases)
    per_rank = launch(_cases_worker, world_size, cases, timeout=timeout)
    report = []
    for index, case in enumerate(cases):
        q, k, v, dout = _case_inputs(case)
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        ref_out, ref_lse = attention(q, k, v, causal=case.causal, return_lse=True)
        ref_out.backward(dout)
        got = {name: unshard([r[index][name] for r in per_rank], layout=case.layout) for name in ("out", "lse")}
        got.update(
            {name: unshard([r[index][name] for r in per_rank], layout=case.layout) for name in ("dq", "dk", "dv")}
        )
        finite = torch.isfinite(ref_lse)
        errors = {
            "out": (got["out"] - ref_out.detach()).abs().max().item(),
            "lse": (got["lse"][finite] - ref_lse.detach()[finite]).abs().max().item() if finite.any() else 0.0,
            "dq": (got["dq"] - q.grad).abs().max().item(),
            "dk": (got["dk"] - k.grad).abs().max().item(),
            "dv": (got["dv"] - v.grad).abs().max().item(),
        }
        report.append(
            dict(
                case=case,
                errors=errors,
                lse_inf_match=bool(torch.equal(torch.isinf(got["lse"]), ~finite)),
                pairs=[r[index]["pairs"] for r in per_rank],
            )
        )
    return report


def measure_worker(rank: int, world_size: int, config: dict) -> dict:
    """One rank of a measurement: peak memory and time of a causal forward + backward.

    ``config``: ``N`` (whole sequence), ``B``, ``H``, ``d``, ``layout``, ``repeats``, ``prefetch``. Memory is
    measured on the second step, as in a training loop: the first step at full size pays one-time
    allocations (thread pools, BLAS and gloo buffers). Large allocations get their own mappings
    (glibc's mmap threshold at 64 KiB), so freed tensors leave the resident set. Before the
    second step the resident-set high-water mark is reset (Linux); the peak above the resident set
    then counts this rank's shards, the ring's buffers, the gradients and the tiles.
    """
    from .. import bench

    # By default glibc raises its mmap threshold as large blocks are freed and keeps freed tensors in
    # its heap, so the resident set would follow its reuse pattern more than the tensors alive.
    bench.set_malloc_option(bench.M_MMAP_THRESHOLD, 64 * 1024)
    N, B, H, d = config["N"], config["B"], config["H"], config["d"]
    layout = config.get("layout", "zigzag")
    prefetch = config.get("prefetch", True)
    n = N // world_size
    generator = torch.Generator().manual_seed(rank)

    def inputs():
        q, k, v = (torch.randn(B, H, n, d, generator=generator).requires_grad_() for _ in range(3))  # (B, H, n, d)
        return q, k, v, torch.randn(B, H, n, d, generator=generator)

    def step(q, k, v, dout, stats=None):
        ring_attention(q, k, v, causal=True, layout=layout, stats=stats, prefetch=prefetch).backward(dout)

    step(*inputs())  # the first step
    bench.release_free_memory()  # so that the measured step pays for every page it touches
    bench.reset_peak_rss()
    before = bench.status_bytes("VmRSS")
    q, k, v, dout = inputs()
    times, waits = [], []
    for repeat in range(config.get("repeats", 1)):  # the first repeat is the measured step
        stats = RingStats()
        dist.barrier()
        tick = time.perf_counter()
        step(q, k, v, dout, stats)
        times.append(time.perf_counter() - tick)
        waits.append(stats.forward_wait_s + stats.backward_wait_s)
        if repeat == 0:
            peak = bench.status_bytes("VmHWM") - before
    best = min(range(len(times)), key=lambda i: times[i])
    return {"peak_bytes": peak, "seconds": times[best], "wait_seconds": waits[best], "bytes_sent": stats.bytes_sent}


# --------------------------------------------------------------------------
# 8. Command line: python -m attnlib.optim.ring, or torchrun --nproc-per-node 4 -m attnlib.optim.ring
# --------------------------------------------------------------------------


def _demo_cases() -> list[RingCase]:
    return [
        RingCase(N_q=64, causal=False, layout="plain", seed=1),
        RingCase(N_q=64, causal=True, layout="plain", seed=2),
        RingCase(N_q=64, causal=True, layout="zigzag", seed=3),
        RingCase(N_q=64, H=4, H_kv=2, causal=True, layout="zigzag", seed=4),
    ]


def _print_report(report, world_size) -> bool:
    ok = True
    for row in report:
        case, errors = row["case"], row["errors"]
        worst = max(errors.values())
        ok &= worst < 1e-5 and row["lse_inf_match"]
        label = f"N={case.N_q} H={case.H} H_kv={case.H_kv} causal={case.causal} layout={case.layout}"
        print(f"P={world_size} {label}: max |error| over out, lse, dq, dk, dv < 1e-5: {worst < 1e-5}")
    return ok


def _torchrun_main() -> int:
    """Under torchrun: every rank runs the demo cases; rank 0 prints the comparison."""
    from ..reference import attention

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    try:
        results = _cases_worker(rank, world_size, _demo_cases())
        gathered = [None] * world_size
        dist.all_gather_object(gathered, results)
        if rank == 0:
            ok = True
            for index, case in enumerate(_demo_cases()):
                q, k, v, _ = _case_inputs(case)
                ref = attention(q, k, v, causal=case.causal)
                out = unshard([g[index]["out"] for g in gathered], layout=case.layout)
                error = (out - ref).abs().max().item()
                ok &= error < 1e-5
                print(f"rank 0 of {world_size}: causal={case.causal} layout={case.layout} H_kv={case.H_kv}: "
                      f"max |out - reference| < 1e-5: {error < 1e-5}")  # fmt: skip
            return 0 if ok else 1
        return 0
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attnlib.optim.ring",
        description="Check ring attention against the reference with a group of gloo processes on this machine. "
        "Under torchrun (torchrun --nproc-per-node 4 -m attnlib.optim.ring) each process is one rank.",
    )
    parser.add_argument("--world-size", type=int, default=4, help="processes to spawn (ignored under torchrun)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before every rank is stopped")
    args = parser.parse_args(argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _torchrun_main()
    check_positive_int("--world-size", args.world_size)
    report = compare_with_reference(_demo_cases(), args.world_size, timeout=args.timeout)
    return 0 if _print_report(report, args.world_size) else 1


if __name__ == "__main__":
    raise SystemExit(main())
