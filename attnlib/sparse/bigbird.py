"""BigBird block-sparse attention: global + sliding-window + random key blocks.

Zaheer et al., "Big Bird: Transformers for Longer Sequences", NeurIPS 2020,
arXiv:2007.14062. Chapter: "BigBird" (chapters/*/05_bigbird.ipynb).

The idea (Sec. 2)
-----------------
Sec. 2 writes attention over a directed graph ``D``: query ``i`` attends only
to its out-neighbours ``N(i)``, Eq. (AT):

    ATTN_D(X)_i = x_i + sum_h softmax(Q_h(x_i) K_h(X_N(i))^T) V_h(X_N(i))

(the residual ``x_i`` belongs to the Transformer layer; this module computes
the attention term). BigBird's graph is the union of three simple graphs:

* **global**: a few tokens attend to every token and every token attends to
  them. In the internal transformer construction (BIGBIRD-ITC) these are
  existing tokens; here, as in the paper's blocked implementation, the
  **first and the last block**;
* **sliding window**: each token attends to its neighbours, ``w = 3`` blocks:
  its own block and the blocks to its left and right;
* **random**: each query attends to ``r`` random keys.

App. D "blockifies" the graph so that it runs on dense hardware: queries and
keys are cut into blocks of ``block_size`` tokens and a query block attends to
whole key blocks. The paper's base setting is block 64, 2 global blocks, a
3-block window and 3 random blocks.

The algorithm (App. D, "gather, don't mask")
--------------------------------------------
* The two **global query blocks** (first and last) are ordinary dense
  attention rows: ``(2 * block_size, N)`` scores, linear in ``N``.
* Every **middle query block** ``i`` (``1 <= i <= nb - 2``) attends to exactly
  ``S = 3 + r + 2`` key blocks listed in a small integer table
  ``key_blocks[i] = [i-1, i, i+1, random..., 0, nb-1]``. We **gather** those
  key and value blocks with one ``index_select`` and run **batched
  attention** over many middle blocks at once: ``(block_size, d) @ (d, S *
  block_size)`` scores per block. Time and memory are ``O(N * S *
  block_size * d)``: linear in ``N``. No ``N x N`` tensor is ever built (a
  test checks this).
* The middle blocks run in **chunks** of a few MB of gathered keys and values
  (``_CHUNK_BYTES``), not all at once. The result is the same; the point is
  the machine: one gathered tensor for every block would be hundreds of MB at
  16K tokens, fresh memory that the system fills page by page at every call.
  A small chunk is reused from call to call and keeps the peak memory low.
* The dense attention on those small pieces is PyTorch's fused
  ``scaled_dot_product_attention`` by default (``fused=True``); ``fused=False``
  writes the softmax out (the textbook path). Both give the same result.
* A key block may appear twice in a row's list (for ``i = 1`` the left window
  block *is* global block 0, for ``i = nb-2`` the right one *is* global block
  ``nb-1``; a user-given random table may repeat a block). It is counted
  once, so the result is softmax attention over the **set** of allowed keys,
  exactly ``reference.attention(q, k, v, mask=bigbird_pattern(...))``.
* A mask costs time (it must be built, and the fused kernel runs faster
  without one), so we use it only where needed. Without ``causal`` or
  padding, the two rows above are the only ones with keys to drop (for a
  drawn table): they get a small mask, and the interior rows ``2 .. nb-3``,
  almost all the work, run without a mask.
  Causal attention, padding, or a user table that repeats blocks in the
  interior rows give a mask to every chunk that needs one.

Random blocks
-------------
Row ``i`` draws its ``r`` random blocks **without replacement** from the
middle blocks that are neither global nor in its window:
``{1, ..., nb-2} \\ {i-1, i, i+1}``, as the official per-head sampler
(``_get_single_block_row_attention``) does. The official single-table sampler
``bigbird_block_rand_mask`` follows the same rule except in its last two
middle rows (``i = nb-3`` and ``nb-2``), which draw from *all* middle blocks
(its own comments: "Missing -3: should have been sliced till last-3", and
"-4" likewise), so there a random block can repeat a window block; we use one
rule for every row. The draw uses a ``torch.Generator`` (or ``seed``), so it
is reproducible; each **head draws its own blocks** (the table is
``(H, nb-2, r)``), as the official per-head sampler does.
:func:`bigbird_random_blocks` returns the table so that the kernel, the
pattern and the figure can share one draw. (The official per-head sampler
also never gives row 1 the block ``nb-2``, nor row ``nb-2`` the block 1; we do
not copy that special case.) Hugging Face's port draws only in training
mode: in eval mode its random-block table is all zeros, so every random slot
holds block 0, a global block, and no random block is attended. Here the
table is drawn the same way in training and in evaluation.

Causal variant (our definition: the paper uses BigBird in encoders)
-------------------------------------------------------------------
``causal=True`` keeps the BigBird pattern and removes every key that lies in
the future: query ``p`` sees key ``t`` only if ``t <= p`` *and* the block
pattern allows it. Consequences, block by block:

* the first block, as a key, is still seen by everyone (it is in the past);
  as a query it only sees itself, causally;
* the last block, as a query, sees every earlier token (a full causal row); as
  a key it is seen only by itself;
* the window keeps the left block and the causal part of the own block;
* random blocks are drawn **from the past only**, from ``{1, ..., i-2}``, so
  none is wasted on the future. Rows with fewer than ``r`` past candidates
  (the first few) take all of them and get fewer random blocks.

Padding
-------
If ``N`` is not a multiple of ``block_size``, keys and values are padded with
zeros at the end to ``nb * block_size`` tokens, the padded keys are masked
out, and the padded queries (which all fall in the last, global block) are
never computed. The output has exactly ``N`` tokens.

Sizes: a pattern with ``r`` random blocks per row needs ``nb >= r + 5`` blocks
(two global, three in the window, ``r`` other candidates); with ``r = 0`` it
needs ``nb >= 3``. Smaller inputs raise ``ValueError`` (use dense attention).

Shape legend
------------
    B     batch          H   query heads   H_kv  key/value heads
    N     tokens         d   head dim      blk   block size (tokens per block)
    nb    blocks = ceil(N / blk)           nm    middle blocks = nb - 2
    r     random blocks per query block    S     key blocks per middle query block = 3 + r + 2
    G     global query tokens (first block + last block, <= 2 * blk)
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from .._checks import check_flag, check_positive_int, check_qkv, resolve_scale
from ..reference import MultiHeadSelfAttention, expand_kv_heads

__all__ = [
    "bigbird_attention",
    "bigbird_random_blocks",
    "bigbird_key_blocks",
    "bigbird_block_categories",
    "bigbird_pattern",
    "BigBirdSelfAttention",
    "NONE",
    "GLOBAL",
    "WINDOW",
    "RANDOM",
]

# Block categories returned by bigbird_block_categories (the colours of the figure).
NONE, GLOBAL, WINDOW, RANDOM = 0, 1, 2, 3
WINDOW_BLOCKS = 3  # the block itself and its left and right neighbours
GLOBAL_BLOCKS = 2  # the first and the last block
# Gathered keys and values held at once (bytes): the middle rows run in chunks of this size.
# A chunk this small is reused by the allocator from call to call; one tensor for all rows
# would be hundreds of MB at 16K tokens, fresh memory to fill page by page at every call.
_CHUNK_BYTES = 4 << 20


# ----------------------------------------------------------------------------
# Sizes and the block tables (integers at block granularity: tiny)
# ----------------------------------------------------------------------------


def _check_nonnegative_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _min_blocks(num_random_blocks: int) -> int:
    """Blocks the pattern needs: 2 global + 3 window + r other candidates (3 when r = 0)."""
    return 3 if num_random_blocks == 0 else GLOBAL_BLOCKS + WINDOW_BLOCKS + num_random_blocks


def _num_blocks(N: int, block_size: int, num_random_blocks: int) -> int:
    """``nb = ceil(N / block_size)``; ValueError if the pattern does not fit in ``nb`` blocks."""
    check_positive_int("N", N)
    check_positive_int("block_size", block_size)
    _check_nonnegative_int("num_random_blocks", num_random_blocks)
    num_blocks = -(-N // block_size)  # ceil(N / blk)
    needed = _min_blocks(num_random_blocks)
    if num_blocks < needed:
        raise ValueError(
            f"BigBird with num_random_blocks={num_random_blocks} needs at least {needed} blocks "
            f"(N >= {(needed - 1) * block_size + 1} tokens for block_size={block_size}), "
            f"got N={N}, i.e. {num_blocks} blocks; use a smaller block_size or dense attention"
        )
    return num_blocks


@functools.lru_cache(maxsize=16)
def _non_candidates(num_blocks: int, causal: bool) -> torch.Tensor:
    """``(nm, nb)`` boolean: True where middle row ``i`` may *not* draw key block ``j``.

    It depends only on ``nb`` and ``causal``, so it is built once per size
    (cached: do not modify the returned tensor).
    """
    rows = torch.arange(1, num_blocks - 1)[:, None]  # (nm, 1) query block ids
    cols = torch.arange(num_blocks)[None, :]  # (1, nb) key block ids
    middle = (cols >= 1) & (cols <= num_blocks - 2)  # (1, nb) not global
    if causal:
        candidate = middle & (cols <= rows - 2)  # (nm, nb) past, left of the window
    else:
        candidate = middle & ((cols - rows).abs() > 1)  # (nm, nb) outside the window
    return ~candidate  # (nm, nb)


def bigbird_random_blocks(
    num_blocks: int,
    num_random_blocks: int = 3,
    *,
    num_heads: int = 1,
    causal: bool = False,
    generator: torch.Generator | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Draw the random key blocks of every middle query block, per head.

    Row ``i`` (query block ``i = 1 .. nb-2``) draws ``r`` distinct blocks from
    ``{1, ..., nb-2} \\ {i-1, i, i+1}`` (never a global or window block), or,
    with ``causal``, from the past ``{1, ..., i-2}``; a causal row with fewer
    than ``r`` candidates takes all of them and fills the remaining slots with
    block 0, which every row already sees as a global block (the kernel counts
    it once).

    Sampling without replacement, vectorized: give each candidate an
    independent uniform number and keep the ``r`` smallest.

    Args:
        num_blocks: ``nb``, the number of blocks.
        num_random_blocks: ``r``.
        num_heads: heads that draw independently.
        causal: draw from the past only.
        generator: a CPU ``torch.Generator``; if None, one seeded with ``seed``.
        seed: the seed used when ``generator`` is None.

    Returns:
        ``(num_heads, nb - 2, r)`` int64 table, each row sorted ascending.
    """
    check_positive_int("num_blocks", num_blocks)
    check_positive_int("num_heads", num_heads)
    _check_nonnegative_int("num_random_blocks", num_random_blocks)
    needed = _min_blocks(num_random_blocks)
    if num_blocks < needed:
        raise ValueError(
            f"num_blocks must be at least {needed} for num_random_blocks={num_random_blocks}, got {num_blocks}"
        )
    if generator is None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        generator = torch.Generator().manual_seed(seed)
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    elif generator.device.type != "cpu":
        raise ValueError(
            f"generator must be a CPU torch.Generator (the table is drawn on the CPU), got {generator.device}"
        )

    r = num_random_blocks
    noise = torch.rand(num_heads, num_blocks - 2, num_blocks, generator=generator)  # (H, nm, nb)
    noise = noise.masked_fill(_non_candidates(num_blocks, causal), 2.0)  # (H, nm, nb) non-candidates sort last
    picked_noise, picked = noise.topk(r, dim=-1, largest=False)  # (H, nm, r) each
    picked = picked.masked_fill(picked_noise > 1.0, 0)  # (H, nm, r) missing causal draws -> block 0
    return picked.sort(dim=-1).values  # (H, nm, r)


def _check_random_blocks(random_blocks, num_blocks: int, num_random_blocks: int, num_heads: int) -> torch.Tensor:
    if not isinstance(random_blocks, torch.Tensor):
        raise TypeError(f"random_blocks must be a torch.Tensor of int64, got {type(random_blocks).__name__}")
    if random_blocks.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"random_blocks must have an integer dtype (int64 or int32), got {random_blocks.dtype}")
    expected = (num_blocks - 2, num_random_blocks)
    if random_blocks.ndim != 3 or random_blocks.shape[0] not in (1, num_heads) or random_blocks.shape[1:] != expected:
        raise ValueError(
            f"random_blocks must have shape (1 or H={num_heads}, nb-2={num_blocks - 2}, "
            f"num_random_blocks={num_random_blocks}), got {tuple(random_blocks.shape)}"
        )
    if random_blocks.numel() and (random_blocks.min() < 0 or random_blocks.max() >= num_blocks):
        raise ValueError(
            f"random_blocks must hold block ids in [0, {num_blocks - 1}], "
            f"got values in [{int(random_blocks.min())}, {int(random_blocks.max())}]"
        )
    return random_blocks.long()


def bigbird_key_blocks(random_blocks: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """The key-block list of every middle query block: ``[i-1, i, i+1, random..., 0, nb-1]``.

    Args:
        random_blocks: ``(H, nb-2, r)`` table from :func:`bigbird_random_blocks`.
        num_blocks: ``nb``.

    Returns:
        ``(H, nb-2, S)`` int64 with ``S = 3 + r + 2`` (window, random, global).
    """
    H, num_middle, _ = random_blocks.shape
    rows = torch.arange(1, num_blocks - 1, device=random_blocks.device)  # (nm,)
    window = torch.stack([rows - 1, rows, rows + 1], dim=-1)  # (nm, 3)
    global_ = torch.tensor([0, num_blocks - 1], device=random_blocks.device).expand(num_middle, 2)  # (nm, 2)
    return torch.cat([window.expand(H, -1, -1), random_blocks, global_.expand(H, -1, -1)], dim=-1)  # (H, nm, S)


def _resolve_random_blocks(num_blocks, num_random_blocks, num_heads, causal, generator, seed, random_blocks):
    """Use the given table, or draw one; never both a table and a generator."""
    if random_blocks is not None:
        if generator is not None:
            raise ValueError("pass either random_blocks or generator, got both")
        return _check_random_blocks(random_blocks, num_blocks, num_random_blocks, num_heads)
    return bigbird_random_blocks(
        num_blocks, num_random_blocks, num_heads=num_heads, causal=causal, generator=generator, seed=seed
    )


# ----------------------------------------------------------------------------
# The pattern (the test oracle and the figure; these two MAY be dense)
# ----------------------------------------------------------------------------


def bigbird_block_categories(
    N: int,
    *,
    block_size: int = 64,
    num_random_blocks: int = 3,
    num_heads: int = 1,
    causal: bool = False,
    generator: torch.Generator | None = None,
    seed: int = 0,
    random_blocks: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which key blocks each query block sees, and why, for the coloured figure.

    Returns an ``(H, nb, nb)`` int8 matrix at block granularity: ``0`` none,
    ``1`` global (:data:`GLOBAL`), ``2`` window (:data:`WINDOW`), ``3`` random
    (:data:`RANDOM`); a block that is both global and window counts as global.
    With ``causal``, blocks strictly above the diagonal are 0 (the diagonal
    block itself is visible only causally, token by token). Token granularity:
    ``cats.repeat_interleave(block_size, -1).repeat_interleave(block_size, -2)[:, :N, :N]``.
    Arguments as in :func:`bigbird_attention`; ``num_heads`` sets the heads of the random draw.
    """
    num_blocks = _num_blocks(N, block_size, num_random_blocks)
    check_positive_int("num_heads", num_heads)
    random_blocks = _resolve_random_blocks(
        num_blocks, num_random_blocks, num_heads, causal, generator, seed, random_blocks
    )  # (H or 1, nm, r)
    random_blocks = random_blocks.cpu()  # (H or 1, nm, r) figures live on the CPU
    H = random_blocks.shape[0]
    cats = torch.zeros(H, num_blocks, num_blocks, dtype=torch.int8)  # (H, nb, nb)
    cats[:, 1:-1, :].scatter_(-1, random_blocks, RANDOM)  # random blocks of the middle rows
    rows = torch.arange(num_blocks)[:, None]  # (nb, 1) query blocks
    cols = torch.arange(num_blocks)[None, :]  # (1, nb) key blocks
    cats[:, (rows - cols).abs() <= 1] = WINDOW  # (nb, nb) band of 3 blocks
    is_global = (rows == 0) | (rows == num_blocks - 1) | (cols == 0) | (cols == num_blocks - 1)  # (nb, nb)
    cats[:, is_global] = GLOBAL
    if causal:
        cats[:, cols > rows] = NONE  # (nb, nb) future blocks
    return cats  # (H, nb, nb)


def bigbird_pattern(
    N: int,
    *,
    block_size: int = 64,
    num_random_blocks: int = 3,
    num_heads: int = 1,
    causal: bool = False,
    generator: torch.Generator | None = None,
    seed: int = 0,
    random_blocks: torch.Tensor | None = None,
) -> torch.Tensor:
    """The dense boolean ``(H, N, N)`` mask equal to what :func:`bigbird_attention` computes.

    True where query ``p`` may attend to key ``t``. This builds the ``N x N``
    mask on purpose: it is the test oracle (``reference.attention(q, k, v,
    mask=bigbird_pattern(...))``) and the figure, never the algorithm. Pass the
    same ``seed``/``generator``/``random_blocks`` and ``num_heads`` as to the
    kernel to get the same random blocks.
    """
    cats = bigbird_block_categories(
        N,
        block_size=block_size,
        num_random_blocks=num_random_blocks,
        num_heads=num_heads,
        causal=causal,
        generator=generator,
        seed=seed,
        random_blocks=random_blocks,
    )  # (H, nb, nb)
    allowed = cats > NONE  # (H, nb, nb)
    allowed = allowed.repeat_interleave(block_size, dim=1).repeat_interleave(block_size, dim=2)  # (H, nb*blk, nb*blk)
    allowed = allowed[:, :N, :N]  # (H, N, N) crop the padding
    if causal:
        position = torch.arange(N)
        allowed = allowed & (position[None, :] <= position[:, None])  # (H, N, N)
    return allowed


# ----------------------------------------------------------------------------
# The algorithm: gather key blocks, never build N x N
# ----------------------------------------------------------------------------


def _dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None, scale: float, fused: bool
) -> torch.Tensor:
    """Softmax attention of ``q: (..., M, d)`` over ``k: (..., K, d)``, ``v: (..., K, d_v)``.

    ``allowed`` is a boolean mask broadcastable to ``(..., M, K)`` (True = may
    attend) or None. Every row must keep at least one key (true for BigBird:
    each query sees at least itself). Used on small dense pieces only: one
    query block against its gathered key blocks, or the global rows.

    ``fused=True`` calls PyTorch's fused ``scaled_dot_product_attention`` (on
    CPU a flash-style kernel: the ``(M, K)`` scores never exist at once).
    ``fused=False`` is the textbook path, Eq. (1) of Vaswani et al. written
    out; the softmax runs in place so a single score-sized buffer is alive,
    and the normalization comes *after* the product (dividing ``(M, d_v)``
    instead of ``(M, K)``). Tests check that both paths agree.
    """
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)  # (..., M, d_v)
    scores = (q * scale) @ k.transpose(-1, -2)  # (..., M, K)
    if allowed is not None:
        scores.masked_fill_(~allowed, float("-inf"))  # (..., M, K)
    # softmax is shift invariant: subtract the row max (as a constant, without gradient) before exp.
    row_max = scores.detach().amax(dim=-1, keepdim=True)  # (..., M, 1)
    probs = scores.sub_(row_max).exp_()  # (..., M, K) unnormalized probabilities
    row_sum = probs.sum(dim=-1, keepdim=True)  # (..., M, 1)
    return (probs @ v) / row_sum  # (..., M, d_v)


def _repeated_blocks(key_blocks: torch.Tensor) -> torch.Tensor:
    """``(H, nm, S)`` boolean: True where a slot repeats a block listed earlier in its row.

    Row 1 repeats global block 0 (its left window block), row ``nb-2`` repeats
    global block ``nb-1`` (its right window block); a user-given random table
    may repeat more. Computed on the small block table, never on tokens.
    """
    repeated = [torch.zeros_like(key_blocks[..., 0], dtype=torch.bool)]  # slot 0 repeats nothing
    for t in range(1, key_blocks.shape[-1]):  # one small comparison per slot, not an (H, nm, S, S) tensor
        repeated.append((key_blocks[..., :t] == key_blocks[..., t : t + 1]).any(dim=-1))  # (H, nm) slot t
    return torch.stack(repeated, dim=-1)  # (H, nm, S) slot t repeats an earlier slot of its row


def _block_rows(key_blocks: torch.Tensor, B: int, H_kv: int, num_blocks: int) -> torch.Tensor:
    """Where the listed key blocks lie in the ``(B * H_kv * nb, blk * d)`` table of key blocks.

    Args:
        key_blocks: ``(H, n, s)`` key-block ids, ``s`` per query block.

    Returns:
        ``(B * H * n * s,)`` int64 row ids in ``(B, H, n, s)`` order: block ``j`` for
        batch ``b`` and query head ``h`` is row ``(b * H_kv + h // (H / H_kv)) * nb + j``
        (grouped query heads read the same key head).
    """
    H = key_blocks.shape[0]
    kv_head = torch.arange(H, device=key_blocks.device) // (H // H_kv)  # (H,)
    batch = torch.arange(B, device=key_blocks.device)  # (B,)
    rows = (batch[:, None, None, None] * H_kv + kv_head[None, :, None, None]) * num_blocks + key_blocks  # (B, H, n, s)
    return rows.reshape(-1)  # (B*H*n*s,)


def _middle_allowed_keys(
    key_blocks: torch.Tensor, repeated: torch.Tensor, N: int, block_size: int, causal: bool, first_row: int = 0
) -> torch.Tensor:
    """Which gathered keys each middle query may attend to, at token level.

    A gathered key is dropped if its block already occurred earlier in the
    row's list (``repeated``, so each key counts once), if it is padding
    (position >= N), or, with ``causal``, if it lies after the query.

    Args:
        key_blocks: ``(H, n, S)`` key-block lists of ``n`` consecutive middle rows.
        repeated: ``(H, n, S)`` from :func:`_repeated_blocks`.
        first_row: the middle row of ``key_blocks[:, 0]`` (query block ``first_row + 1``).

    Returns:
        ``(H, n, 1, S * blk)`` or, with ``causal``, ``(H, n, blk, S * blk)``
        boolean (True = may attend).
    """
    H, num_rows, S = key_blocks.shape
    device = key_blocks.device
    key_pos = key_blocks[..., None] * block_size + torch.arange(block_size, device=device)  # (H, n, S, blk)
    allowed = ~repeated[..., None] & (key_pos < N)  # (H, n, S, blk)
    allowed = allowed.reshape(H, num_rows, 1, S * block_size)  # (H, n, 1, S*blk)
    if causal:
        first_query = (first_row + 1) * block_size  # middle row 0 is query block 1
        query_pos = torch.arange(first_query, first_query + num_rows * block_size, device=device)  # (n*blk,)
        query_pos = query_pos.view(1, num_rows, block_size, 1)  # (1, n, blk, 1)
        key_pos = key_pos.reshape(H, num_rows, 1, S * block_size)  # (H, n, 1, S*blk)
        allowed = allowed & (key_pos <= query_pos)  # (H, n, blk, S*blk)
    return allowed


def _middle_row_chunks(num_middle: int, rows_per_chunk: int, edges_apart: bool) -> list[tuple[int, int]]:
    """Split the middle rows ``0 .. nm-1`` into ``[start, stop)`` chunks of at most ``rows_per_chunk``.

    With ``edges_apart`` the two edge rows (query blocks 1 and nb-2, which list
    a global block twice and so need a mask) are chunks of their own, and the
    interior rows between them, almost all the work, need none.
    """
    if not edges_apart or num_middle <= 2:
        first, last, bounds = 0, num_middle, []
    else:
        first, last, bounds = 1, num_middle - 1, [(0, 1), (num_middle - 1, num_middle)]
    bounds += [(start, min(start + rows_per_chunk, last)) for start in range(first, last, rows_per_chunk)]
    return sorted(bounds)


def bigbird_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    block_size: int = 64,
    num_random_blocks: int = 3,
    causal: bool = False,
    generator: torch.Generator | None = None,
    seed: int = 0,
    random_blocks: torch.Tensor | None = None,
    scale: float | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """BigBird block-sparse self-attention (Zaheer et al. 2020, Sec. 2 and App. D).

    Equal to ``reference.attention(q, k, v, mask=bigbird_pattern(N, ...))``
    with the same arguments, in time and memory linear in ``N``.
    Chapter: chapters/*/05_bigbird.ipynb.

    Args:
        q: ``(B, H, N, d)`` queries.
        k: ``(B, H_kv, N, d)`` keys, ``H_kv`` dividing ``H`` (grouped heads share keys).
        v: ``(B, H_kv, N, d_v)`` values.
        block_size: tokens per block ``blk`` (the paper uses 64).
        num_random_blocks: random key blocks ``r`` per query block (the paper uses 3).
        causal: drop keys after the query (see the module docstring for what
            this means for global and random blocks).
        generator: CPU ``torch.Generator`` for the random draw (it is consumed).
        seed: seeds the draw when neither ``generator`` nor ``random_blocks`` is given.
        random_blocks: a precomputed ``(H or 1, nb-2, r)`` table from
            :func:`bigbird_random_blocks`, to reuse one draw. It is used as
            given: repeated blocks count once and, with ``causal``, future
            blocks are dropped.
        scale: multiplies ``q k^T``; defaults to ``1 / sqrt(d)``.
        fused: compute the small dense pieces with PyTorch's fused
            ``scaled_dot_product_attention`` (fast); False writes the softmax out.

    Returns:
        ``(B, H, N, d_v)`` in the dtype of ``q`` (half precision is computed in float32).
    """
    B, H, H_kv, N, N_k, d = check_qkv(q, k, v)
    if N_k != N:
        raise ValueError(
            f"BigBird is self-attention: q and k must have the same number of tokens, got N_q={N}, N_k={N_k}"
        )
    check_flag("causal", causal)
    check_flag("fused", fused)
    scale = resolve_scale(scale, 1.0 / math.sqrt(d))
    num_blocks = _num_blocks(N, block_size, num_random_blocks)
    random_blocks = _resolve_random_blocks(num_blocks, num_random_blocks, H, causal, generator, seed, random_blocks)
    random_blocks = random_blocks.cpu()  # (H or 1, nm, r): the small tables are built on the CPU

    blk, num_middle, d_v = block_size, num_blocks - 2, v.shape[-1]
    out_dtype = q.dtype
    compute_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = q.to(compute_dtype), k.to(compute_dtype), v.to(compute_dtype)

    # 1. Middle query blocks 1 .. nb-2 (App. D): gather S = 3 + r + 2 key blocks each.
    key_blocks = bigbird_key_blocks(random_blocks, num_blocks).expand(H, -1, -1)  # (H, nm, S)
    S = key_blocks.shape[-1]
    repeated = _repeated_blocks(key_blocks)  # (H, nm, S) slots whose block the row already lists
    # Which rows need a mask, decided on the CPU table: no device sync per chunk, and no value read
    # from q's device (a meta tensor has none).
    row_repeats = repeated.any(dim=2).any(dim=0)  # (nm,) some head's row lists a block twice
    key_blocks, repeated = key_blocks.to(q.device), repeated.to(q.device)  # (H, nm, S) each
    pad = num_blocks * blk - N  # zero keys appended to fill the last block; masked out below
    k_padded = F.pad(k, (0, 0, 0, pad)) if pad else k  # (B, H_kv, nb*blk, d)
    v_padded = F.pad(v, (0, 0, 0, pad)) if pad else v  # (B, H_kv, nb*blk, d_v)
    k_block_rows = k_padded.reshape(B * H_kv * num_blocks, blk * d)  # one row per key block
    v_block_rows = v_padded.reshape(B * H_kv * num_blocks, blk * d_v)  # one row per value block
    # Query block i of batch b, head h: a view of q (no copy when q is contiguous).
    q_middle = q[:, :, blk : (num_blocks - 1) * blk].unflatten(2, (num_middle, blk))  # (B, H, nm, blk, d)

    bytes_per_row = B * H * S * blk * (d + d_v) * q.element_size()  # gathered keys and values of one middle row
    rows_per_chunk = max(1, _CHUNK_BYTES // bytes_per_row)
    # The output is allocated once and every piece is written into it: pieces kept in a list
    # until a final concatenation would sit between the chunks' temporary buffers and keep the
    # allocator from reusing them (the heap then grows chunk after chunk).
    out = torch.empty(B, H, N, d_v, dtype=compute_dtype, device=q.device)  # (B, H, N, d_v)
    for start, stop in _middle_row_chunks(num_middle, rows_per_chunk, edges_apart=not (causal or pad)):
        # Heads and rows as one axis (B, H*n, ...): PyTorch's fused kernel takes 4-d inputs
        # (5-d ones fall back to a slower path), and a mask over (H*n) broadcasts over the batch.
        n = stop - start
        q_chunk = q_middle[:, :, start:stop].flatten(1, 2)  # (B, H*n, blk, d)
        # Gather: one index_select copies every (query block, key block) pair of the chunk once.
        rows = _block_rows(key_blocks[:, start:stop], B, H_kv, num_blocks)  # (B*H*n*S,)
        k_gathered = k_block_rows.index_select(0, rows).view(B, H * n, S * blk, d)  # (B, H*n, S*blk, d)
        v_gathered = v_block_rows.index_select(0, rows).view(B, H * n, S * blk, d_v)  # (B, H*n, S*blk, d_v)
        allowed = None  # the usual case: every gathered key counts, no mask to build (the fused kernel is faster)
        if causal or pad or bool(row_repeats[start:stop].any()):
            allowed = _middle_allowed_keys(
                key_blocks[:, start:stop], repeated[:, start:stop], N, blk, causal, first_row=start
            )  # (H, n, 1 or blk, S*blk)
            allowed = allowed.flatten(0, 1)[None]  # (1, H*n, 1 or blk, S*blk), broadcasts over B
        out_chunk = _dense_attention(q_chunk, k_gathered, v_gathered, allowed, scale, fused)  # (B, H*n, blk, d_v)
        out[:, :, (start + 1) * blk : (stop + 1) * blk] = out_chunk.view(
            B, H, n * blk, d_v
        )  # query blocks start+1 .. stop
    del k_gathered, v_gathered  # (autograd keeps what it needs)

    # 2. Global query blocks (first and last): dense rows over all N keys, linear in N.
    q_global = torch.cat([q[:, :, :blk], q[:, :, (num_blocks - 1) * blk :]], dim=2)  # (B, H, G, d)
    k_all = expand_kv_heads(k, H)  # (B, H, N, d)
    v_all = expand_kv_heads(v, H)  # (B, H, N, d_v)
    allowed_global = None
    if causal:
        first = torch.arange(blk, device=q.device)  # (blk,) positions of block 0
        last = torch.arange((num_blocks - 1) * blk, N, device=q.device)  # (<= blk,) real positions of block nb-1
        query_pos = torch.cat([first, last])  # (G,)
        allowed_global = torch.arange(N, device=q.device)[None, :] <= query_pos[:, None]  # (G, N)
    out_global = _dense_attention(q_global, k_all, v_all, allowed_global, scale, fused)  # (B, H, G, d_v)

    # 3. The global rows in their places (the padded queries were never computed).
    out[:, :, :blk] = out_global[:, :, :blk]  # the first block
    out[:, :, (num_blocks - 1) * blk :] = out_global[:, :, blk:]  # the last block (its real tokens only)
    return out.to(out_dtype)


class BigBirdSelfAttention(MultiHeadSelfAttention):
    """BigBird self-attention block, ``x: (B, N, C) -> (B, N, C)``.

    The projections of :class:`attnlib.reference.MultiHeadSelfAttention` around
    :func:`bigbird_attention`. The random blocks are drawn from ``seed`` at
    every call, so the pattern is the same at every call (per head, per length).
    Chapter: chapters/*/05_bigbird.ipynb.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        block_size: int = 64,
        num_random_blocks: int = 3,
        causal: bool = False,
        seed: int = 0,
        *,
        num_kv_heads: int | None = None,
        bias: bool = True,
    ):
        check_positive_int("block_size", block_size)
        _check_nonnegative_int("num_random_blocks", num_random_blocks)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        kernel = functools.partial(
            bigbird_attention, block_size=block_size, num_random_blocks=num_random_blocks, seed=seed
        )
        super().__init__(dim, num_heads, num_kv_heads=num_kv_heads, causal=causal, bias=bias, attention_fn=kernel)
        self.block_size, self.num_random_blocks, self.seed = block_size, num_random_blocks, seed

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, block_size={self.block_size}, "
            f"num_random_blocks={self.num_random_blocks}, causal={self.causal}, seed={self.seed}"
        )
