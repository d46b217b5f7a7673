"""Reformer LSH attention: hash, sort, chunk, attend within buckets.

Kitaev, Kaiser, Levskaya, "Reformer: The Efficient Transformer", ICLR 2020,
arXiv:2001.04451, Sec. 2 and App. A. Chapter: "Reformer" (chapters/*/06_reformer.ipynb).

The idea
--------
Softmax is dominated by its largest terms, so each query only needs the keys
closest to it. Locality-sensitive hashing (LSH) puts close vectors into the
same *bucket* with high probability; sorting the tokens by bucket brings each
bucket together, and cutting the sorted sequence into fixed-size *chunks*
turns "attend within your bucket" into small dense blocks.

The algorithm, step by step (``R = n_hashes`` rounds, chunk size ``m``)
----------------------------------------------------------------------
1. **Shared-QK** (Sec. 2, "Shared-QK Transformer"). Queries and keys come from
   one projection ``qk``; the key of token ``j`` is the query normalized,
   ``k_j = q_j / ||q_j||``, so the score is ``s_ij = scale * q_i . k_j``. The paper does not
   say which ``scale``; the authors' code (trax, and the Hugging Face port) has none: it
   normalizes ``k_j`` to length ``sqrt(d)`` and then multiplies by ``1 / sqrt(d)``, i.e. unit
   keys and raw dot products. We follow it: ``scale`` defaults to 1, not ``1 / sqrt(d)``.
2. **Angular LSH** (Sec. 2, after Andoni et al. 2015). For ``b = n_buckets``
   draw a random Gaussian matrix ``R_r`` of shape ``(d, b/2)`` per round and
   head, and hash ``h_r(x) = argmax([x R_r ; -x R_r])``. Close directions
   get the same argmax with high probability. ``n_buckets = 1`` means "no
   hashing" (every token in bucket 0).
3. **Sort** each round by ``(bucket, position)``: a *stable* sort of the bucket
   ids keeps positions in order inside a bucket.
4. **Chunk** the sorted sequence into chunks of ``m`` tokens. Each chunk
   attends to itself and to the previous chunk, Eq. (5), and inside that
   window only to keys **of its own bucket**, Eq. (3)-(4) (``m(j, P_i) = inf``
   for ``j`` not in ``P_i``).
5. **Self-mask** (Sec. 2, "Causal masking for shared-QK attention"): with
   shared QK a token's key is its own query direction, so it would mostly
   attend to itself. The paper gives its own score ``-10^5`` (Eq. (16)), so that a token attends
   to itself only when nothing else is available. We apply that rule *exactly*: the diagonal
   is excluded from every row that has another key, and is the whole row otherwise (a
   penalty of ``-1e5`` fails at large logits, and it leaks into the logsumexp).
6. **Causal** (optional): key position ``<=`` query position, on the original
   positions (the mask travels with the sort).
7. **Multi-round** (Eq. (6); App. A, Eq. (11)-(16)): each round ``r`` gives a
   normalized output ``o_i^(r)`` and its logsumexp ``z_i^(r)``; the rounds are combined as
   ``o_i = sum_r exp(z_i^(r) - logsumexp_r z_i^(r)) o_i^(r)``, Eq. (14).

Design decisions (each one is tested)
-------------------------------------
* **Same-bucket only.** As in the paper and in the first trax implementation
  (``attend_across_buckets=False``). Later trax code and the Hugging Face port
  let a query attend to *every* key in its two chunks; we do not.
* **Wrap-around within a round (our choice).** The first chunk of a round
  looks back at the *last* chunk of the same round (a ``torch.roll`` over the
  round's chunks). The last chunk holds the highest buckets, so with many
  chunks this only matters when one bucket spans the whole round (e.g.
  ``n_buckets = 1``: attention is then a ring of blocks). With two chunks the
  roll makes each chunk's window the whole round. With a single chunk there is no
  "previous" chunk: the window is the chunk itself (never the same keys twice).
  The authors' code does not do this. trax's ``look_adjacent`` rolls over the
  chunks of *all* rounds laid end to end, so the first chunk of round ``r``
  looks back at the last chunk of round ``r - 1`` (of the last round, for
  ``r = 0``); trax offsets each round's bucket ids by ``r * n_buckets``, so its
  same-bucket mask then removes every key that wrapped in from another round.
  With more than one round trax in effect has no wrap-around (with a single
  round its roll is ours).
* **Differences from the Hugging Face port** (besides attending across buckets,
  above): its ``_look_adjacent`` also rolls over the chunks of all rounds, and
  with no same-bucket mask the first chunk of a round may attend to keys of the
  last chunk of the *previous* round (a cross-round wrap). And for
  ``N <= chunk_length`` it does not hash at all: it falls back to full
  self-attention. Here a single chunk still hashes, and attends within buckets.
* **Duplicates are counted once.** A key can be reached in several rounds.
  The paper, App. A Eq. (15)-(16), subtracts ``log N_ij`` from the score of pair
  ``(i, j)`` in each of the ``N_ij`` rounds that reach it, which splits the
  pair's weight evenly among them. We give the pair whole to the *first*
  round that reaches it and mask it out in the later ones. Either way Eq. (14)
  counts every key exactly once and the output is the same; ours needs only
  boolean masks, no logarithms. "Reaches" means same bucket *and* inside the
  two-chunk window, as in trax's ``allow_duplicate_attention=False`` (the
  paper's ``N_ij`` counts same-bucket rounds; the two differ only when a
  bucket spills over a window). The token itself is the one pair kept in
  *every* round, so that no round has an empty row; a round in which the token has no
  other key gives it its own key alone, scored ``s_ii - log R`` (Eq. (16) with ``N_ii = R``,
  counted once over the ``R`` rounds), and that round is dropped from Eq. (14) whenever
  another round found the token some other key.
  Consequence, and the test oracle: the output is *exactly* shared-QK
  softmax attention over the union of the keys the rounds reach,
  ``shared_qk_attention(qk, v, mask=lsh_pattern(qk, ...))``; the rounds
  compute disjoint parts of that union, and Eq. (14) is the softmax identity
  for a disjoint union (the one FlashAttention's online softmax also uses).
* **Default number of buckets** (Sec. 2: "In practice we set
  ``m = 2l / n_buckets``"): ``n_buckets = 2 * ceil(N / m)``, so the average
  bucket holds half a chunk and a window of two chunks rarely cuts a bucket.
* **Padding.** ``N`` is padded with zero tokens up to a multiple of ``m``. The
  padding tokens get their own extra bucket ``n_buckets``, so they sort to the
  end of every round and share a bucket with no real token: no real query
  ever sees them. The output is cropped back to ``N`` tokens.
* **Rotations** have shape ``(H, d, R, n_buckets // 2)``: one per head and
  round, shared across the batch. They come from a ``torch.Generator`` or a
  ``seed`` you pass, or explicitly as ``rotations`` (so a figure and a test can
  reuse them). With none of these, torch's global generator draws fresh ones
  on every call, as a training run does.

Cost
----
The rounds run one after the other (a Python loop over ``R``, never over
chunks); each builds one ``(m, W)`` block of scores per chunk, so the
attention costs ``O(R * N * m * d)`` time and ``O(N * m + R * N * d)`` extra
memory: never an ``N x N`` matrix. Hashing costs ``O(R * N * n_buckets * d)``,
which with the default ``n_buckets ~ 2N / m`` grows like ``N^2 / m``: cheap at
a few thousand tokens, as much as the attention itself at ``N = 16K`` with
``m = 64`` on a CPU (trax and Hugging Face factorize large bucket counts for
this reason; we keep the paper's single hash). Sorting costs
``O(R * N log N)``. At long ``N`` the heads run in blocks (see
:func:`lsh_attention`), which changes nothing but speed.
:func:`lsh_pattern`, :func:`shared_qk_attention` and
:func:`softmax_mass_captured` *are* dense (``N x N``): they are for tests and
figures.

Shape legend
------------
``B`` batch, ``H`` heads, ``N`` tokens (``N_pad`` after padding to a multiple
of ``m``), ``d`` head dim of ``qk``, ``d_v`` head dim of ``v``, ``R`` hash
rounds (``n_hashes``), ``m`` chunk size, ``n_chunks = N_pad / m``, ``W`` keys
in a chunk's window (``2m``, or ``m`` with a single chunk), ``C`` channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_flag, check_heads, check_mask, check_positive_int, check_tensor, check_tokens, resolve_scale
from ..reference import attention, attention_weights, causal_mask

__all__ = [
    "SELF_PENALTY",
    "LSHLayout",
    "default_n_buckets",
    "make_rotations",
    "lsh_hash",
    "lsh_layout",
    "lsh_pattern",
    "lsh_attention",
    "lsh_attention_qkv",
    "shared_qk_attention",
    "shared_qk_keys",
    "softmax_mass_captured",
    "ReformerSelfAttention",
]

SELF_PENALTY = 1e5  # Eq. (16): m_ij = 10^5 when i = j; the paper's value, which we replace by an exact rule
# The authors' code (trax; also the Hugging Face port) normalizes the shared keys to length sqrt(d)
# and then multiplies them by 1 / sqrt(d): unit keys and no further 1 / sqrt(d) on the scores.
DEFAULT_SCALE = 1.0
HEAD_BLOCK_SCORES = 2**21  # scores per round held at once (8 MiB in float32); see lsh_attention


# ----------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------


def _check_qk_v(qk, v) -> tuple[int, int, int, int]:
    """``qk: (B, H, N, d)``, ``v: (B, H, N, d_v)``; returns ``(B, H, N, d)``.

    The checks of ``check_qkv`` (every attnlib kernel), with messages that name ``qk``.
    """
    check_tensor("qk", qk, ndim=4)
    check_tensor("v", v, ndim=4)
    if qk.dtype != v.dtype:
        raise TypeError(f"qk and v must share one dtype, got qk {qk.dtype}, v {v.dtype}")
    if qk.device != v.device:
        raise ValueError(f"qk and v must be on one device, got qk {qk.device}, v {v.device}")
    if v.shape[:3] != qk.shape[:3]:
        raise ValueError(
            f"v must have the (B, H, N) of qk, expected {tuple(qk.shape[:3])}, got v of shape {tuple(v.shape)}"
        )
    B, H, N, d = qk.shape
    axes = (("batch element (B)", B), ("head (H)", H), ("token (N)", N), ("head dimension (d)", d),
            ("value dimension (d_v)", v.shape[3]))  # fmt: skip
    for axis, size in axes:
        if size == 0:
            raise ValueError(f"qk and v must have at least one {axis}, got qk {tuple(qk.shape)}, v {tuple(v.shape)}")
    return B, H, N, d


def _check_n_buckets(n_buckets) -> None:
    if isinstance(n_buckets, bool) or not isinstance(n_buckets, int) or n_buckets <= 0:
        raise ValueError(f"n_buckets must be None or a positive int, got {n_buckets!r}")
    if n_buckets != 1 and n_buckets % 2 != 0:
        raise ValueError(
            f"n_buckets must be 1 or even (h(x) = argmax([xR; -xR]) has 2 * (b/2) outputs), got {n_buckets}"
        )


def _resolve_scale(scale) -> float:
    """The logit scale: :data:`DEFAULT_SCALE` when None; else a finite number (attnlib's one rule), > 0.

    A scale <= 0 would make the *least* similar keys the most attended, the opposite of what the
    hashing looks for (close directions share a bucket).
    """
    scale = resolve_scale(scale, DEFAULT_SCALE)
    if scale <= 0:
        raise ValueError(f"scale must be None or a positive finite number, got {scale!r}")
    return scale


def _check_generator_and_seed(generator, seed) -> None:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, got both")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")


# ----------------------------------------------------------------------------
# Hashing and sorting (Sec. 2)
# ----------------------------------------------------------------------------


def default_n_buckets(N: int, chunk_size: int) -> int:
    """The paper's choice ``m = 2l / n_buckets``, i.e. ``n_buckets = 2 * ceil(N / chunk_size)`` (always even).

    The average bucket then holds ``N / n_buckets = m / 2`` tokens: half a chunk.
    """
    check_positive_int("N", N)
    check_positive_int("chunk_size", chunk_size)
    return 2 * math.ceil(N / chunk_size)


def make_rotations(
    num_heads: int,
    head_dim: int,
    n_hashes: int,
    n_buckets: int,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Random Gaussian rotations ``(H, d, R, n_buckets // 2)`` for :func:`lsh_hash`.

    One ``(d, n_buckets / 2)`` matrix per head and hash round. Drawn from
    ``generator`` (on its device), or from a new generator seeded with ``seed``
    (on the CPU), or from torch's global generator when both are None; then
    moved to ``device``. ``n_buckets = 1`` gives an empty last axis (no hashing).
    """
    check_positive_int("num_heads", num_heads)
    check_positive_int("head_dim", head_dim)
    check_positive_int("n_hashes", n_hashes)
    _check_n_buckets(n_buckets)
    _check_generator_and_seed(generator, seed)
    if seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (num_heads, head_dim, n_hashes, n_buckets // 2)
    draw_device = generator.device if generator is not None else None
    rotations = torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32)
    return rotations.to(device=device, dtype=dtype)  # (H, d, R, n_buckets // 2)


def _check_rotations(rotations, H: int, d: int, n_hashes: int, n_buckets: int, device) -> None:
    check_tensor("rotations", rotations, ndim=4)
    expected = (H, d, n_hashes, n_buckets // 2)
    if tuple(rotations.shape) != expected:
        raise ValueError(
            f"rotations must have shape (H, d, n_hashes, n_buckets // 2) = {expected}, got {tuple(rotations.shape)}"
        )
    if rotations.device != device:
        raise ValueError(f"rotations must be on the device of qk ({device}), got {rotations.device}")


def lsh_hash(qk: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Angular LSH bucket of every token in every round, ``h_r(x) = argmax([x R_r ; -x R_r])``.

    Args:
        qk: ``(B, H, N, d)`` shared queries/keys (the hash ignores their length).
        rotations: ``(H, d, R, b/2)`` from :func:`make_rotations`; ``b/2 = 0`` means one bucket.

    Returns:
        ``(B, H, R, N)`` int64 bucket ids in ``[0, b)``. Not differentiable (an argmax).
    """
    check_tensor("qk", qk, ndim=4)
    check_tensor("rotations", rotations, ndim=4)
    B, H, N, d = qk.shape
    if rotations.shape[0] != H or rotations.shape[1] != d:
        raise ValueError(
            f"rotations must have shape (H, d, R, n_buckets // 2) with (H, d) = {(H, d)}, got {tuple(rotations.shape)}"
        )
    n_hashes, half_buckets = rotations.shape[2], rotations.shape[3]
    if half_buckets == 0:  # n_buckets = 1: every token is in bucket 0
        return torch.zeros(B, H, n_hashes, N, dtype=torch.long, device=qk.device)  # (B, H, R, N)
    compute_dtype = torch.float64 if qk.dtype == torch.float64 else torch.float32
    x = qk.detach().to(compute_dtype)  # (B, H, N, d)
    buckets = []
    for r in range(n_hashes):  # one round at a time: the (N, b/2) products are the big buffers here
        rotated = x @ rotations[:, :, r].to(compute_dtype)  # (B, H, N, b/2): xR
        # argmax([xR ; -xR]) without building the concatenation: the winner is in the second half
        # iff max(-xR) > max(xR); flip the sign of those rows in place, then one argmax over b/2
        # finds k, and the bucket is k or b/2 + k. On a tie the first half wins and, within a half,
        # the first index, as argmax over the concatenation decides. (amax is a cheap vectorized
        # pass; the argmax with its index bookkeeping is the expensive one, so we do it once.)
        second_half = rotated.amax(dim=-1) < -rotated.amin(dim=-1)  # (B, H, N)
        rotated.mul_(1.0 - 2.0 * second_half[..., None].to(compute_dtype))  # (B, H, N, b/2): -xR where flipped
        buckets.append(rotated.argmax(dim=-1) + half_buckets * second_half)  # (B, H, N)
    return torch.stack(buckets, dim=2)  # (B, H, R, N)


@dataclass(frozen=True)
class LSHLayout:
    """Where every token goes: its bucket, its sorted slot and its chunk, in every round.

    All tensors are over the padded sequence of ``N_pad`` tokens; positions
    ``>= N`` are padding tokens, which carry the extra bucket ``n_buckets``.
    """

    buckets: torch.Tensor  # (B, H, R, N_pad) int64: bucket of token t in round r
    sort_indices: torch.Tensor  # (B, H, R, N_pad): the token at sorted slot s (sorted by (bucket, position))
    undo_sort: torch.Tensor  # (B, H, R, N_pad): the sorted slot of token t (inverse permutation)
    rotations: torch.Tensor  # (H, d, R, n_buckets // 2), the random rotations used
    n_buckets: int  # real buckets; padding uses bucket n_buckets
    chunk_size: int  # m
    N: int  # real tokens

    @property
    def n_hashes(self) -> int:
        return self.buckets.shape[2]

    @property
    def N_pad(self) -> int:
        return self.buckets.shape[3]

    @property
    def n_chunks(self) -> int:
        return self.N_pad // self.chunk_size

    @property
    def sorted_buckets(self) -> torch.Tensor:
        """``(B, H, R, N_pad)`` bucket ids in sorted order (non-decreasing along the last axis)."""
        return self.buckets.gather(-1, self.sort_indices)

    @property
    def chunk_of_token(self) -> torch.Tensor:
        """``(B, H, R, N_pad)`` chunk index of token ``t`` in round ``r``."""
        return self.undo_sort // self.chunk_size

    @property
    def chunk_boundaries(self) -> list[int]:
        """Sorted-slot indices where chunks start, plus the end: ``[0, m, 2m, ..., N_pad]``."""
        return list(range(0, self.N_pad + 1, self.chunk_size))

    def pattern(self, *, causal: bool = False, per_round: bool = False) -> torch.Tensor:
        """The dense boolean pattern of this layout; see :func:`lsh_pattern`."""
        check_flag("causal", causal)
        check_flag("per_round", per_round)
        bucket = self.buckets[..., : self.N].to(torch.int32)  # (B, H, R, N): padding never matters
        chunk = self.chunk_of_token[..., : self.N].to(torch.int32)  # (B, H, R, N)
        looks_back_at = (chunk - 1) % self.n_chunks  # (B, H, R, N): the previous chunk, with wrap-around
        future_masked = causal_mask(self.N, self.N, device=bucket.device) if causal else None  # (N, N)
        rounds = []
        for r in range(self.n_hashes):
            query_chunk, key_chunk = chunk[:, :, r, :, None], chunk[:, :, r, None, :]  # (B, H, N, 1), (B, H, 1, N)
            in_window = (key_chunk == query_chunk) | (key_chunk == looks_back_at[:, :, r, :, None])  # Eq. (5)
            allowed = in_window & (bucket[:, :, r, :, None] == bucket[:, :, r, None, :])  # (B, H, N, N), Eq. (3)
            if causal:
                allowed &= future_masked  # (B, H, N, N)
            rounds.append(allowed)
        if per_round:
            return torch.stack(rounds, dim=2)  # (B, H, R, N, N)
        union = rounds[0]
        for allowed in rounds[1:]:
            union |= allowed
        return union  # (B, H, N, N)


def lsh_layout(
    qk: torch.Tensor,
    *,
    n_hashes: int = 4,
    n_buckets: int | None = None,
    chunk_size: int = 64,
    rotations: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> LSHLayout:
    """Hash every token (Sec. 2), pad to a multiple of ``chunk_size``, and sort each round by (bucket, position).

    Args:
        qk: ``(B, H, N, d)`` shared queries/keys.
        n_hashes: hash rounds ``R``.
        n_buckets: buckets per round, 1 or even; default :func:`default_n_buckets`.
        chunk_size: ``m``, tokens per chunk of the sorted sequence.
        rotations: ``(H, d, R, n_buckets // 2)``; drawn with ``generator``/``seed`` when None.

    Returns:
        An :class:`LSHLayout` (buckets, sort permutation and its inverse, chunks).
    """
    check_tensor("qk", qk, ndim=4)
    rotations, n_buckets = _resolve_rotations(qk, n_hashes, n_buckets, chunk_size, rotations, generator, seed)
    return _sorted_layout(qk, rotations, n_buckets, chunk_size)


def _resolve_rotations(qk, n_hashes, n_buckets, chunk_size, rotations, generator, seed):
    """Check the hashing arguments; return the rotations to use and ``n_buckets``."""
    check_positive_int("n_hashes", n_hashes)
    check_positive_int("chunk_size", chunk_size)
    B, H, N, d = qk.shape
    if qk.numel() == 0:
        raise ValueError(f"qk must have B, H, N, d >= 1 (no empty axis), got shape {tuple(qk.shape)}")
    if n_buckets is None:
        n_buckets = default_n_buckets(N, chunk_size)
    _check_n_buckets(n_buckets)
    if rotations is None:
        rotations = make_rotations(H, d, n_hashes, n_buckets, generator=generator, seed=seed, device=qk.device)
    else:
        if generator is not None or seed is not None:
            raise ValueError("pass either rotations or generator/seed, got both")
        _check_rotations(rotations, H, d, n_hashes, n_buckets, qk.device)
    return rotations, n_buckets


def _sorted_layout(qk, rotations, n_buckets: int, chunk_size: int) -> LSHLayout:
    """:func:`lsh_layout` once the arguments are checked."""
    N = qk.shape[2]
    n_chunks = math.ceil(N / chunk_size)
    N_pad = n_chunks * chunk_size
    buckets = lsh_hash(qk, rotations)  # (B, H, R, N)
    buckets = F.pad(buckets, (0, N_pad - N), value=n_buckets)  # (B, H, R, N_pad): padding -> extra bucket
    # A stable sort of the bucket ids orders by (bucket, position): ties keep their position order.
    sort_indices = torch.sort(buckets, dim=-1, stable=True).indices  # (B, H, R, N_pad)
    slots = torch.arange(N_pad, device=qk.device).expand_as(sort_indices)  # (B, H, R, N_pad)
    undo_sort = torch.empty_like(sort_indices).scatter_(-1, sort_indices, slots)  # (B, H, R, N_pad)
    return LSHLayout(buckets, sort_indices, undo_sort, rotations, n_buckets, chunk_size, N)


# ----------------------------------------------------------------------------
# The algorithm
# ----------------------------------------------------------------------------


def _gather_tokens(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` at token ``positions``: ``x: (B, H, N, D)``, ``positions: (B, H, *S)`` -> ``(B, H, *S, D)``.

    ``index_select`` on the flattened rows copies whole rows (much faster than ``gather``
    with an index per element) and is differentiable.
    """
    B, H, N, D = x.shape
    head_offset = torch.arange(B * H, device=x.device).view(B, H, *([1] * (positions.ndim - 2))) * N  # (B, H, 1...)
    rows = x.reshape(B * H * N, D).index_select(0, (positions + head_offset).flatten())  # (B * H * prod(S), D)
    return rows.view(*positions.shape, D)  # (B, H, *S, D)


def _token_values(table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``table: (B, H, N)`` read at ``positions: (B, H, *S)`` -> ``(B, H, *S)``."""
    return table.gather(-1, positions.flatten(2)).view(positions.shape)


def _look_one_back(chunks: torch.Tensor) -> torch.Tensor:
    """The keys each chunk sees, Eq. (5): the previous chunk, then the chunk itself.

    ``chunks: (B, H, n_chunks, m)``, the chunks of one round -> ``(B, H, n_chunks, 2m)``. Chunk 0
    looks back at the last chunk of the same round (our wrap-around: trax and Hugging Face roll over
    the chunks of all rounds, see the module docstring). With a single chunk there is no other
    chunk: the window is the chunk itself, ``(B, H, 1, m)``.
    """
    if chunks.shape[2] == 1:
        return chunks
    previous = torch.roll(chunks, shifts=1, dims=2)  # (B, H, n_chunks, m): chunk c - 1 at index c
    return torch.cat([previous, chunks], dim=3)  # (B, H, n_chunks, 2m)


def _window_codes(layout: LSHLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Two integer codes per token and round, to test "j is in i's window in round r" by equality.

    ``here = bucket * n_chunks + chunk`` and ``following = bucket * n_chunks + (chunk + 1) % n_chunks``.
    Key ``j`` is in query ``i``'s window in a round iff ``here_i == here_j`` (same bucket, same
    chunk) or ``here_i == following_j`` (same bucket, ``j`` one chunk back). Both ``(B, H, R, N_pad)``
    int32 (int32 comparisons are several times faster than int64 ones on CPUs).
    """
    chunk = layout.chunk_of_token  # (B, H, R, N_pad)
    here = layout.buckets * layout.n_chunks + chunk  # (B, H, R, N_pad)
    following = layout.buckets * layout.n_chunks + (chunk + 1) % layout.n_chunks  # (B, H, R, N_pad)
    return here.to(torch.int32), following.to(torch.int32)


def _attend_one_round(qk, keys, v, layout: LSHLayout, r: int, causal: bool, codes, buckets):
    """Round ``r`` of Eq. (15): sorted, chunked, same-bucket attention over the keys no earlier round reached.

    ``qk: (B, H, N_pad, d)`` are the queries; ``keys: (B, H, N_pad, d)`` the keys ``qk / ||qk||``
    already multiplied by ``scale``; ``v: (B, H, N_pad, d_v)``; ``codes`` from :func:`_window_codes`;
    ``buckets: (B, H, R, N_pad)`` int32. Returns ``o^(r): (B, H, N_pad, d_v)``,
    ``z^(r): (B, H, N_pad)`` and whether the token had a key other than itself in this round,
    ``(B, H, N_pad)`` bool, in the original token order.
    """
    B, H, N_pad, _ = qk.shape
    m, n_chunks = layout.chunk_size, layout.n_chunks

    # Sort (Sec. 2): the tokens in (bucket, position) order, cut into chunks of m queries.
    query_pos = layout.sort_indices[:, :, r].view(B, H, n_chunks, m)  # (B, H, n_chunks, m)
    # Each chunk sees the previous chunk and itself, Eq. (5).
    key_pos = _look_one_back(query_pos)  # (B, H, n_chunks, W)
    W = key_pos.shape[-1]

    # Shared-QK scores s_ij = scale * q_i . (q_j / ||q_j||), one (m, W) block per chunk
    query = _gather_tokens(qk, query_pos)  # (B, H, n_chunks, m, d)
    scores = query @ _gather_tokens(keys, key_pos).transpose(-2, -1)  # (B, H, n_chunks, m, W)

    # Which pairs this round attends (int32 tables read at the positions, then broadcast compares)
    query_bucket = _token_values(buckets[:, :, r], query_pos)[..., :, None]  # (B, H, n_chunks, m, 1)
    key_bucket = _token_values(buckets[:, :, r], key_pos)[..., None, :]  # (B, H, n_chunks, 1, W)
    allowed = query_bucket == key_bucket  # (B, H, n_chunks, m, W): same bucket, Eq. (3)
    if causal:
        query_pos32, key_pos32 = query_pos.to(torch.int32), key_pos.to(torch.int32)
        allowed &= key_pos32[..., None, :] <= query_pos32[..., :, None]  # (B, H, n_chunks, m, W)
    here, following = codes
    for earlier in range(r):  # duplicates: drop the pairs an earlier round already attended
        query_here = _token_values(here[:, :, earlier], query_pos)[..., :, None]  # (B, H, n_chunks, m, 1)
        key_here = _token_values(here[:, :, earlier], key_pos)[..., None, :]  # (B, H, n_chunks, 1, W)
        key_following = _token_values(following[:, :, earlier], key_pos)[..., None, :]  # (B, H, n_chunks, 1, W)
        allowed &= ~((query_here == key_here) | (query_here == key_following))  # (B, H, n_chunks, m, W)
    # Query slot i of a chunk is key slot W - m + i of its window (the chunk itself comes last).
    # The self rule, exactly: the token's own key is excluded from a row that has any other key ...
    allowed[..., W - m :].diagonal(dim1=-2, dim2=-1).fill_(False)
    has_others = allowed.any(dim=-1)  # (B, H, n_chunks, m)
    # ... and is the whole row otherwise, so that no row is ever empty. It scores s_ii - log R
    # there (Eq. (16) with N_ii = R): if every round finds the token alone, the R rounds count it once.
    allowed[..., W - m :].diagonal(dim1=-2, dim2=-1).copy_(~has_others)
    scores.masked_fill_(~allowed, float("-inf"))  # (B, H, n_chunks, m, W), in place (autograd allows it)
    scores[..., W - m :].diagonal(dim1=-2, dim2=-1).sub_(math.log(layout.n_hashes))  # only alone rows keep it

    probs = torch.softmax(scores, dim=-1)  # (B, H, n_chunks, m, W)
    # z^(r) = logsumexp_j s_ij. The largest probability is exp(max_j s_ij - z^(r)), so
    # z^(r) = max_j s_ij - log(max_j p_ij): two cheap maxima instead of a second pass of exp.
    lse = scores.amax(dim=-1) - torch.log(probs.amax(dim=-1))  # (B, H, n_chunks, m)
    del query, scores  # free them before the values are gathered (peak memory)
    out = probs @ _gather_tokens(v, key_pos)  # (B, H, n_chunks, m, d_v): o^(r), sorted order

    # Undo the sort: token t reads its result from its sorted slot.
    slot_of_token = layout.undo_sort[:, :, r]  # (B, H, N_pad)
    out = _gather_tokens(out.view(B, H, N_pad, -1), slot_of_token)  # (B, H, N_pad, d_v)
    lse = _token_values(lse.view(B, H, N_pad), slot_of_token)  # (B, H, N_pad)
    has_others = _token_values(has_others.reshape(B, H, N_pad), slot_of_token)  # (B, H, N_pad)
    return out, lse, has_others


def lsh_attention(
    qk: torch.Tensor,
    v: torch.Tensor,
    *,
    n_hashes: int = 4,
    n_buckets: int | None = None,
    chunk_size: int = 64,
    causal: bool = False,
    scale: float | None = None,
    rotations: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    return_lse: bool = False,
):
    """Reformer LSH attention (Sec. 2, Eq. (2)-(6); App. A, Eq. (11)-(16)) with shared queries and keys.

    Args:
        qk: ``(B, H, N, d)`` shared queries/keys; keys are ``qk / ||qk||``.
        v: ``(B, H, N, d_v)`` values.
        n_hashes: hash rounds ``R`` (the paper uses 1 to 8; more rounds, fewer misses).
        n_buckets: buckets per round, 1 or even; default ``2 * ceil(N / chunk_size)`` (Sec. 2).
        chunk_size: ``m``; ``N`` is padded to a multiple of it (padding is never attended).
        causal: a query sees only keys at positions ``<=`` its own.
        scale: multiplies the scores ``q_i . k_j`` (unit keys); defaults to 1, as in the authors' code.
        rotations: ``(H, d, R, n_buckets // 2)`` random rotations (see :func:`make_rotations`);
            if None they are drawn from ``generator``, or ``seed``, or torch's global generator.
        return_lse: also return the logsumexp over the attended keys (all rounds).

    Returns:
        ``out: (B, H, N, d_v)`` in the dtype of ``qk`` and, if ``return_lse``, ``lse: (B, H, N)``
        (float32; float64 for float64 input). Half-precision input is computed in float32.

    Equals ``shared_qk_attention(qk, v, mask=lsh_pattern(qk, ...same arguments...))``; never builds
    an ``N x N`` tensor.
    """
    B, H, N, d = _check_qk_v(qk, v)
    check_flag("causal", causal)
    check_flag("return_lse", return_lse)
    scale = _resolve_scale(scale)
    rotations, n_buckets = _resolve_rotations(qk, n_hashes, n_buckets, chunk_size, rotations, generator, seed)

    # Heads are independent. At long N the (n_chunks, m, W) scores of all heads together grow past
    # what the CPU caches hold and past the size up to which the C allocator reuses freed memory, so
    # every new buffer costs fresh page faults. The heads therefore run in blocks of about
    # HEAD_BLOCK_SCORES scores per round (1.5x faster at N = 16K on a 2-core CPU); the result is the same.
    window = 2 * chunk_size if N > chunk_size else chunk_size
    heads_per_block = max(1, HEAD_BLOCK_SCORES // (B * math.ceil(N / chunk_size) * chunk_size * window))
    outs, lses = [], []
    for first in range(0, H, heads_per_block):
        heads = slice(first, first + heads_per_block)
        layout = _sorted_layout(qk[:, heads], rotations[heads], n_buckets, chunk_size)
        out, lse = _attend_all_rounds(qk[:, heads], v[:, heads], layout, causal, scale)
        outs.append(out)  # (B, heads, N, d_v)
        lses.append(lse)  # (B, heads, N)
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]  # (B, H, N, d_v)
    if return_lse:
        return out, torch.cat(lses, dim=1)  # (B, H, N)
    return out


def _attend_all_rounds(qk, v, layout: LSHLayout, causal: bool, scale: float):
    """All rounds of Eq. (15), combined by Eq. (14). Returns ``out: (B, H, N, d_v)`` and ``z: (B, H, N)``."""
    N = qk.shape[2]
    compute_dtype = torch.float64 if qk.dtype == torch.float64 else torch.float32
    padding = layout.N_pad - N
    qk_padded, v_padded = qk.to(compute_dtype), v.to(compute_dtype)  # (B, H, N, d), (B, H, N, d_v)
    if padding:  # zero tokens at the end
        qk_padded = F.pad(qk_padded, (0, 0, 0, padding))  # (B, H, N_pad, d)
        v_padded = F.pad(v_padded, (0, 0, 0, padding))  # (B, H, N_pad, d_v)
    keys = shared_qk_keys(qk_padded) * scale  # (B, H, N_pad, d), the scale folded into the keys once
    buckets = layout.buckets.to(torch.int32)  # (B, H, R, N_pad)
    codes = _window_codes(layout)  # 2 x (B, H, R, N_pad)

    round_outs, round_lses, round_others = [], [], []
    for r in range(layout.n_hashes):  # a loop over rounds (a few), never over chunks
        out_r, lse_r, others_r = _attend_one_round(qk_padded, keys, v_padded, layout, r, causal, codes, buckets)
        round_outs.append(out_r)  # (B, H, N_pad, d_v)
        round_lses.append(lse_r)  # (B, H, N_pad)
        round_others.append(others_r)  # (B, H, N_pad)
    lses = torch.stack(round_lses, dim=2)  # (B, H, R, N_pad)
    others = torch.stack(round_others, dim=2)  # (B, H, R, N_pad)
    # The self rule over the union of the rounds: a token that found another key in some round
    # does not attend to itself, so the rounds where it was alone drop out of Eq. (14).
    lses = lses.masked_fill(~others & others.any(dim=2, keepdim=True), float("-inf"))  # (B, H, R, N_pad)

    # Eq. (14): o_i = sum_r exp(z^(r) - z) o^(r) with z = logsumexp_r z^(r). The weights are a softmax
    # over rounds (at least one z^(r) is finite for every token).
    weights = torch.softmax(lses, dim=2)  # (B, H, R, N_pad)
    out = sum(weights[:, :, r, :, None] * out_r for r, out_r in enumerate(round_outs))  # (B, H, N_pad, d_v)
    out = out[:, :, :N].to(qk.dtype)  # (B, H, N, d_v): crop the padding
    return out, torch.logsumexp(lses, dim=2)[:, :, :N]  # (B, H, N): z


def lsh_attention_qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    n_hashes: int = 4,
    n_buckets: int | None = None,
    chunk_size: int = 64,
    scale: float | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """:func:`lsh_attention` behind the registry's ``f(q, k, v)`` signature (benchmarks, comparison chapter).

    Reformer *shares* queries and keys, so ``q`` is used as ``qk``; ``k`` must have the shape,
    dtype and device of ``q`` and is otherwise unused (the keys are ``q / ||q||``). The cost is
    that of any input.
    """
    check_tensor("k", k, ndim=4)
    check_tensor("q", q, ndim=4)
    if k.shape != q.shape or k.dtype != q.dtype or k.device != q.device:
        raise ValueError(
            f"k must match q (shared-QK attention uses q as the keys), got q {tuple(q.shape)} {q.dtype} "
            f"{q.device}, k {tuple(k.shape)} {k.dtype} {k.device}"
        )
    return lsh_attention(
        q, v, n_hashes=n_hashes, n_buckets=n_buckets, chunk_size=chunk_size, causal=causal, scale=scale, seed=seed
    )


# ----------------------------------------------------------------------------
# Dense companions: the pattern, the oracle, the approximation study
# ----------------------------------------------------------------------------


def lsh_pattern(
    qk: torch.Tensor,
    *,
    n_hashes: int = 4,
    n_buckets: int | None = None,
    chunk_size: int = 64,
    causal: bool = False,
    rotations: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    per_round: bool = False,
) -> torch.Tensor:
    """Which keys each query attends to in :func:`lsh_attention` (dense: for tests and figures).

    Query ``i`` attends key ``j`` in round ``r`` iff they share the round's bucket and ``j``'s
    chunk is ``i``'s chunk or the one before it (wrap-around), and ``j <= i`` if causal. The
    diagonal is always True; the kernel gives it the self penalty (see :func:`shared_qk_attention`).
    Arguments as :func:`lsh_attention`: the same arguments give the same rotations.

    Returns:
        ``(B, H, N, N)`` bool, the union over rounds, or ``(B, H, R, N, N)`` if ``per_round``:
        the pairs each round reaches (their sum over ``R`` is ``N_ij`` of Eq. (15)-(16)). The kernel's
        round ``r`` attends the pairs of round ``r`` that no earlier round reached, plus the
        token itself.
    """
    layout = lsh_layout(
        qk, n_hashes=n_hashes, n_buckets=n_buckets, chunk_size=chunk_size,
        rotations=rotations, generator=generator, seed=seed,
    )  # fmt: skip
    return layout.pattern(causal=causal, per_round=per_round)


def _self_masked(allowed: torch.Tensor) -> torch.Tensor:
    """The shared-QK self rule as a boolean mask: drop the diagonal, unless it is all a row has.

    ``allowed: (..., N, N)``. This is the rule the paper's ``-10^5`` self score (Eq. (16)) aims at,
    made exact: no penalty to overflow at large logits, none left in the logsumexp.
    """
    N = allowed.shape[-1]
    eye = torch.eye(N, dtype=torch.bool, device=allowed.device)  # (N, N)
    others = allowed & ~eye  # (..., N, N)
    has_others = others.any(dim=-1, keepdim=True)  # (..., N, 1)
    return torch.where(has_others, others, allowed & eye)  # (..., N, N)


def shared_qk_keys(qk: torch.Tensor) -> torch.Tensor:
    """Shared-QK keys (Sec. 2): ``k_j = q_j / ||q_j||``, ``(..., N, d)``; a zero vector gives a zero key, not NaN.

    Each vector is first divided by its largest entry, so that the norm cannot overflow (at 1e20
    in float32 the sum of squares would be infinite and every key zero).
    """
    largest = qk.abs().amax(dim=-1, keepdim=True)  # (..., N, 1)
    largest = torch.where(largest > 0, largest, torch.ones_like(largest))  # a zero vector stays zero
    unit_box = qk / largest  # (..., N, d), entries in [-1, 1]
    return unit_box / torch.linalg.vector_norm(unit_box, dim=-1, keepdim=True).clamp_min(1e-12)  # (..., N, d)


def _shared_qk_mask(B, H, N, device, mask, causal) -> torch.Tensor:
    allowed = torch.ones(B, H, N, N, dtype=torch.bool, device=device)  # (B, H, N, N)
    if mask is not None:
        allowed = allowed & mask  # (B, H, N, N)
    if causal:
        allowed = allowed & causal_mask(N, N, device=device)  # (B, H, N, N)
    return _self_masked(allowed)  # (B, H, N, N)


def shared_qk_attention(
    qk: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
    return_lse: bool = False,
):
    """Dense shared-QK attention with the self rule: the full attention LSH approximates (an oracle).

    Keys are ``qk / ||qk||``; a token attends to itself only when its row allows nothing
    else. ``mask`` (bool, broadcastable to ``(B, H, N, N)``, True = may attend) restricts the
    keys, e.g. to :func:`lsh_pattern`. Built on :func:`attnlib.reference.attention`; dense, ``O(N^2)``.
    """
    B, H, N, d = _check_qk_v(qk, v)
    check_flag("causal", causal)
    scale = _resolve_scale(scale)
    if mask is not None:
        check_mask(mask, (B, H, N, N), qk.device)
    allowed = _shared_qk_mask(B, H, N, qk.device, mask, causal)  # (B, H, N, N)
    return attention(qk, shared_qk_keys(qk), v, mask=allowed, scale=scale, return_lse=return_lse)  # (B, H, N, d_v)


def softmax_mass_captured(
    qk: torch.Tensor,
    *,
    n_hashes: int = 4,
    n_buckets: int | None = None,
    chunk_size: int = 64,
    causal: bool = False,
    scale: float | None = None,
    rotations: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """Per query, the share of its full shared-QK softmax mass that the LSH-attended keys hold.

    ``P`` is the dense attention of :func:`shared_qk_attention` (self rule, causal if asked);
    the result is ``sum_{j in pattern_i} P_ij``, ``(B, H, N)`` in ``[0, 1]``: 1 means LSH
    missed nothing. Dense (``N x N``): for the chapter's study against ``n_hashes`` and ``n_buckets``.
    """
    check_tensor("qk", qk, ndim=4)
    check_flag("causal", causal)
    scale = _resolve_scale(scale)
    B, H, N, _ = qk.shape
    pattern = lsh_pattern(
        qk, n_hashes=n_hashes, n_buckets=n_buckets, chunk_size=chunk_size, causal=causal,
        rotations=rotations, generator=generator, seed=seed,
    )  # fmt: skip  # (B, H, N, N)
    compute_dtype = torch.float64 if qk.dtype == torch.float64 else torch.float32
    x = qk.to(compute_dtype)  # (B, H, N, d)
    allowed = _shared_qk_mask(B, H, N, qk.device, None, causal)  # (B, H, N, N)
    probs = attention_weights(x, shared_qk_keys(x), mask=allowed, scale=scale)  # (B, H, N, N): P
    return (probs * pattern).sum(dim=-1)  # (B, H, N)


# ----------------------------------------------------------------------------
# The block
# ----------------------------------------------------------------------------


class ReformerSelfAttention(nn.Module):
    """Reformer LSH self-attention block, ``x: (B, N, C) -> (B, N, C)``.

    One shared query/key projection and one value projection (Sec. 2, "Shared-QK"),
    :func:`lsh_attention` per head (unit keys, logits ``q_i . k_j`` with no ``1 / sqrt(d)``, as
    in the authors' code), and an output projection. With ``seed`` set, every
    forward pass hashes with the same rotations (reproducible); with ``seed=None`` each
    pass draws fresh rotations from torch's global generator, as in training.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        n_hashes: int = 4,
        chunk_size: int = 64,
        n_buckets: int | None = None,
        causal: bool = False,
        seed: int | None = None,
        bias: bool = True,
    ):
        super().__init__()
        check_positive_int("dim", dim)
        check_positive_int("num_heads", num_heads)
        check_positive_int("n_hashes", n_hashes)
        check_positive_int("chunk_size", chunk_size)
        if n_buckets is not None:
            _check_n_buckets(n_buckets)
        check_flag("causal", causal)
        _check_generator_and_seed(None, seed)
        check_heads(dim, num_heads)
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.n_hashes, self.chunk_size, self.n_buckets = n_hashes, chunk_size, n_buckets
        self.causal, self.seed = causal, seed
        self.qk_proj = nn.Linear(dim, dim, bias=bias)
        self.v_proj = nn.Linear(dim, dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tokens("x", x, self.dim)
        B, N, C = x.shape
        qk = self.qk_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, d)
        v = self.v_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, d)
        out = lsh_attention(
            qk, v, n_hashes=self.n_hashes, n_buckets=self.n_buckets, chunk_size=self.chunk_size,
            causal=self.causal, seed=self.seed,
        )  # fmt: skip  # (B, H, N, d)
        out = out.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.out_proj(out)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, n_hashes={self.n_hashes}, chunk_size={self.chunk_size}, "
            f"n_buckets={self.n_buckets}, causal={self.causal}, seed={self.seed}"
        )
