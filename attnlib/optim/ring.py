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

The merge of partial results (the online softmax of the FlashAttention chapter, across ranks instead
of tiles) is :func:`attnlib.optim.online_softmax.merge_partial`, stable for any logits.

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

import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.distributed as dist

from .._checks import check_flag, check_positive_int, check_qkv, check_tensor, first_order_only, resolve_scale
from .flash import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q, tiled_attention_backward, tiled_attention_forward

# A private name for the in-place merge: chapter 15 prints _forward_block_, which calls it.
from .online_softmax import merge_partial_ as _merge_into_

__all__ = [
    "LAYOUTS",
    "BACKENDS",
    "chunks_of_rank",
    "shard",
    "unshard",
    "Piece",
    "visible_pieces",
    "source_rank",
    "ring_schedule",
    "schedule_grid",
    "RingStats",
    "RingAttentionFunction",
    "ring_attention",
    "simulated_ring_attention",
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
# 2. Which query rows see which keys: the pieces of one block
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


def source_rank(rank: int, step: int, world_size: int) -> int:
    """The rank whose key/value shard ``rank`` holds at ``step`` of the ring: ``(rank - step) mod P``.

    Every rank sends the shard it holds to ``rank + 1`` and receives from ``rank - 1``, so at step
    ``s`` rank ``r`` holds the shard that started on rank ``r - s``; after ``P`` steps every rank has
    held every shard once.
    """
    check_positive_int("world_size", world_size)
    for name, value in (("rank", rank), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < world_size:
            raise ValueError(f"{name} must be an int in [0, {world_size}), got {value!r}")
    return (rank - step) % world_size


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
            source = source_rank(rank, step, world_size)
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
# 3. The local block: FlashAttention returning (out, lse), and its backward
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
# 4. The ring: point-to-point messages between neighbours
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
            source = source_rank(ring.rank, step, ring.size)
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
            source = source_rank(ring.rank, step, ring.size)
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
    scale = resolve_scale(scale, 1.0 / math.sqrt(q.shape[-1]))
    _check_ranks_agree(_Ring(group), q, k, v, causal, layout)
    out, lse = RingAttentionFunction.apply(
        q, k, v, causal, scale, layout, group, backend, block_q, block_k, stats, prefetch
    )
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------
# 5. The same schedule in one process (no communication)
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
                source = source_rank(rank, step, world_size)
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
                source = source_rank(rank, step, world_size)
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
    scale = resolve_scale(scale, 1.0 / math.sqrt(q.shape[-1]))
    return _SimulatedRing.apply(q, k, v, causal, scale, world_size, layout, block_q, block_k)
