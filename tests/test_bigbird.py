"""Tests for attnlib.sparse.bigbird: the kernel equals dense attention under the BigBird pattern."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlib import registry
from attnlib.reference import MultiHeadSelfAttention, attention
from attnlib.sparse import bigbird as bigbird_module
from attnlib.sparse.bigbird import (
    GLOBAL,
    NONE,
    RANDOM,
    WINDOW,
    BigBirdSelfAttention,
    bigbird_attention,
    bigbird_block_categories,
    bigbird_key_blocks,
    bigbird_pattern,
    bigbird_random_blocks,
)


def make_qkv(B, H, H_kv, N, d, *, dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, d, generator=g, dtype=dtype)
    k = torch.randn(B, H_kv, N, d, generator=g, dtype=dtype)
    v = torch.randn(B, H_kv, N, d, generator=g, dtype=dtype)
    return tuple(t.requires_grad_(requires_grad) for t in (q, k, v))


def oracle(q, k, v, **kwargs):
    """Dense reference attention under the BigBird pattern (the test oracle)."""
    kwargs.pop("fused", None)
    mask = bigbird_pattern(q.shape[2], num_heads=q.shape[1], **kwargs)  # (H, N, N)
    return attention(q, k, v, mask=mask)


# ----------------------------------------------------------------------------
# Equality with the dense reference
# ----------------------------------------------------------------------------

CASES = [
    # N, block_size, num_random_blocks, H, H_kv
    (128, 16, 3, 2, 2),  # N a multiple of the block
    (133, 16, 3, 2, 2),  # ragged: last block has 5 tokens
    (97, 8, 1, 3, 1),  # multi-query heads, ragged
    (48, 8, 0, 1, 1),  # no random blocks
    (200, 16, 2, 4, 2),  # grouped heads
    (80, 16, 0, 2, 2),  # the smallest size with r = 0 plus two: 5 blocks
    (192, 16, 2, 4, 2),  # grouped heads, N a multiple of the block (interior rows without a mask)
]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("N, block_size, r, H, H_kv", CASES)
def test_matches_reference(N, block_size, r, H, H_kv, causal, fused):
    q, k, v = make_qkv(2, H, H_kv, N, 16)
    kwargs = dict(block_size=block_size, num_random_blocks=r, causal=causal, seed=7)
    out = bigbird_attention(q, k, v, fused=fused, **kwargs)
    assert out.shape == (2, H, N, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out, oracle(q, k, v, **kwargs), atol=1e-5, rtol=1e-5)


@settings(deadline=None, max_examples=30)
@given(
    block_size=st.sampled_from([2, 4, 8]),
    r=st.integers(0, 3),
    extra_blocks=st.integers(0, 4),
    tail=st.integers(0, 7),
    heads=st.sampled_from([(1, 1), (2, 1), (2, 2), (3, 3), (4, 2)]),
    d=st.sampled_from([1, 4, 8]),
    causal=st.booleans(),
    fused=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_matches_reference_hypothesis(block_size, r, extra_blocks, tail, heads, d, causal, fused, seed):
    num_blocks = (3 if r == 0 else r + 5) + extra_blocks
    N = (num_blocks - 1) * block_size + 1 + tail % block_size  # ragged or not, still num_blocks blocks
    H, H_kv = heads
    q, k, v = make_qkv(1, H, H_kv, N, d, seed=seed % 1000)
    kwargs = dict(block_size=block_size, num_random_blocks=r, causal=causal, seed=seed)
    out = bigbird_attention(q, k, v, fused=fused, **kwargs)
    torch.testing.assert_close(out, oracle(q, k, v, **kwargs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("N, block_size", [(48, 16), (40, 16), (64, 16), (33, 16), (9, 4)])
def test_every_block_kept_equals_full_attention(N, block_size, causal):
    """With 3 or 4 blocks and r = 0, global + window cover every pair: BigBird is full attention."""
    q, k, v = make_qkv(2, 2, 2, N, 8)
    assert bigbird_pattern(N, block_size=block_size, num_random_blocks=0, causal=False).all()
    out = bigbird_attention(q, k, v, block_size=block_size, num_random_blocks=0, causal=causal)
    torch.testing.assert_close(out, attention(q, k, v, causal=causal), atol=1e-5, rtol=1e-5)


def test_fused_and_textbook_paths_agree():
    q, k, v = make_qkv(2, 4, 2, 301, 32, dtype=torch.float64)
    for causal in (False, True):
        kwargs = dict(block_size=16, num_random_blocks=3, causal=causal, seed=1)
        fast = bigbird_attention(q, k, v, fused=True, **kwargs)
        slow = bigbird_attention(q, k, v, fused=False, **kwargs)
        torch.testing.assert_close(fast, slow, atol=1e-12, rtol=1e-12)


def test_fused_and_textbook_paths_agree_without_padding():
    q, k, v = make_qkv(2, 4, 2, 320, 32, dtype=torch.float64)
    for causal in (False, True):
        kwargs = dict(block_size=16, num_random_blocks=3, causal=causal, seed=1)
        fast = bigbird_attention(q, k, v, fused=True, **kwargs)
        slow = bigbird_attention(q, k, v, fused=False, **kwargs)
        torch.testing.assert_close(fast, slow, atol=1e-12, rtol=1e-12)


def test_non_contiguous_inputs():
    """q, k, v as the module makes them, (B, N, H, d) transposed: the same result."""
    q, k, v = make_qkv(2, 4, 2, 160, 8)
    strided = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not strided[0].is_contiguous()
    for causal in (False, True):
        kwargs = dict(block_size=16, num_random_blocks=2, causal=causal, seed=2)
        torch.testing.assert_close(bigbird_attention(*strided, **kwargs), bigbird_attention(q, k, v, **kwargs))


@pytest.mark.parametrize("fused", [True, False])
def test_interior_rows_need_no_mask_without_causal_or_padding(monkeypatch, fused):
    """Without causal or padding, only the two edge rows (1 and nb-2) get a mask: the interior rows,
    almost all the work, go through the dense attention without one."""
    calls = []  # (query blocks in the call, mask or None)

    def recording_dense_attention(q, k, v, allowed, scale, fused):
        calls.append((q.shape[-3], allowed))
        return dense_attention(q, k, v, allowed, scale, fused)

    dense_attention = bigbird_module._dense_attention
    monkeypatch.setattr(bigbird_module, "_dense_attention", recording_dense_attention)
    N, blk = 256, 16  # 16 blocks: rows 1 .. 14 are middle rows, 2 .. 13 interior
    q, k, v = make_qkv(2, 4, 2, N, 8)
    kwargs = dict(block_size=blk, num_random_blocks=3, seed=4)
    out = bigbird_attention(q, k, v, fused=fused, **kwargs)
    torch.testing.assert_close(out, oracle(q, k, v, **kwargs), atol=1e-5, rtol=1e-5)
    assert (4 * (N // blk - 4), None) in calls  # the interior rows (H=4 heads x 12 rows), without a mask
    assert all(allowed is None or rows == 4 for rows, allowed in calls)  # masks: one edge row x 4 heads
    for changes in (dict(causal=True), dict(N=250)):  # these need a mask on every middle row
        calls.clear()
        n_tokens = changes.pop("N", N)
        bigbird_attention(q[:, :, :n_tokens], k[:, :, :n_tokens], v[:, :, :n_tokens], fused=fused, **kwargs, **changes)
        assert any(allowed is not None and rows > 4 for rows, allowed in calls)


@pytest.mark.parametrize("changes", [{}, dict(causal=True), dict(N=250), dict(N=250, causal=True)])
def test_chunks_of_middle_rows_give_the_same_result(monkeypatch, changes):
    """The middle rows run in chunks of at most _CHUNK_BYTES of gathered keys and values; a tiny budget
    (one row per chunk) and a huge one (all rows in one chunk) give the same outputs and gradients."""
    kwargs = dict(block_size=16, num_random_blocks=2, seed=3, causal=changes.get("causal", False))
    n_tokens = changes.get("N", 256)
    q, k, v = make_qkv(2, 4, 2, n_tokens, 8, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(2, 4, n_tokens, 8, dtype=torch.float64)
    results = []
    for budget in (1, 1 << 40):
        monkeypatch.setattr(bigbird_module, "_CHUNK_BYTES", budget)
        out = bigbird_attention(q, k, v, **kwargs)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad_out)))
    for tiny, huge in zip(*results):
        torch.testing.assert_close(tiny, huge)
    torch.testing.assert_close(results[0][0], oracle(q, k, v, **kwargs))


def test_middle_row_chunks_cover_every_row_once():
    for num_middle in (1, 2, 3, 7, 30):
        for rows_per_chunk in (1, 2, 5, 100):
            for edges_apart in (False, True):
                chunks = bigbird_module._middle_row_chunks(num_middle, rows_per_chunk, edges_apart)
                covered = [row for start, stop in chunks for row in range(start, stop)]
                assert covered == list(range(num_middle))
                assert all(0 < stop - start <= rows_per_chunk for start, stop in chunks)
                if edges_apart and num_middle > 2:
                    assert chunks[0] == (0, 1) and chunks[-1] == (num_middle - 1, num_middle)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("rows", ["interior", "edge"])
def test_table_repeating_in_some_rows(rows, causal):
    """A given table that repeats a block in some interior rows (all rows masked), or twice in an
    edge row (the edge rows have a mask of their own)."""
    N, blk, nb, r = 160, 16, 10, 3
    table = bigbird_random_blocks(nb, r, num_heads=2, seed=6)  # (H, nm, r)
    if rows == "interior":
        table[0, 4, 0] = 5  # row 5 draws its own block (a window block)
        table[1, 6, 2] = nb - 1  # row 7 draws the last block (a global block)
    else:
        table[1, -1, 0] = nb - 3  # row nb-2 draws its left window block
    q, k, v = make_qkv(2, 2, 2, N, 8)
    for fused in (True, False):
        kwargs = dict(block_size=blk, num_random_blocks=r, causal=causal, random_blocks=table)
        out = bigbird_attention(q, k, v, fused=fused, **kwargs)
        torch.testing.assert_close(out, oracle(q, k, v, **kwargs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs_in_float32(dtype):
    q, k, v = make_qkv(1, 2, 2, 100, 16)
    out = bigbird_attention(q.to(dtype), k.to(dtype), v.to(dtype), block_size=16, num_random_blocks=1)
    assert out.dtype == dtype
    expected = bigbird_attention(q, k, v, block_size=16, num_random_blocks=1)
    torch.testing.assert_close(out.float(), expected, atol=3e-2, rtol=3e-2)


def test_custom_scale():
    q, k, v = make_qkv(1, 2, 2, 96, 8)
    kwargs = dict(block_size=16, num_random_blocks=1, seed=3)
    out = bigbird_attention(q, k, v, scale=0.5, **kwargs)
    mask = bigbird_pattern(96, num_heads=2, **kwargs)
    torch.testing.assert_close(out, attention(q, k, v, mask=mask, scale=0.5), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_gradients_match_reference(causal, fused):
    kwargs = dict(block_size=8, num_random_blocks=2, causal=causal, seed=5)
    q, k, v = make_qkv(2, 4, 2, 83, 8, dtype=torch.float64, requires_grad=True)
    out = bigbird_attention(q, k, v, fused=fused, **kwargs)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    expected = torch.autograd.grad(oracle(q, k, v, **kwargs), (q, k, v), grad_out)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("fused", [True, False])
def test_gradients_match_reference_without_padding(fused):
    kwargs = dict(block_size=8, num_random_blocks=2, seed=5)
    q, k, v = make_qkv(2, 4, 2, 88, 8, dtype=torch.float64, requires_grad=True)
    out = bigbird_attention(q, k, v, fused=fused, **kwargs)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    expected = torch.autograd.grad(oracle(q, k, v, **kwargs), (q, k, v), grad_out)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


# ----------------------------------------------------------------------------
# The random blocks
# ----------------------------------------------------------------------------


def test_random_draw_repeats_under_the_same_seed_and_differs_under_another():
    a = bigbird_random_blocks(32, 3, num_heads=4, seed=11)
    b = bigbird_random_blocks(32, 3, num_heads=4, seed=11)
    c = bigbird_random_blocks(32, 3, num_heads=4, seed=12)
    assert a.shape == (4, 30, 3) and a.dtype == torch.int64
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # each head draws its own blocks
    # the same through a generator in the same state
    d = bigbird_random_blocks(32, 3, num_heads=4, generator=torch.Generator().manual_seed(11))
    assert torch.equal(a, d)

    q, k, v = make_qkv(1, 4, 4, 32 * 8, 8)
    out_a = bigbird_attention(q, k, v, block_size=8, seed=11)
    out_b = bigbird_attention(q, k, v, block_size=8, seed=11)
    out_c = bigbird_attention(q, k, v, block_size=8, seed=12)
    out_table = bigbird_attention(q, k, v, block_size=8, random_blocks=a)
    assert torch.equal(out_a, out_b)
    assert not torch.allclose(out_a, out_c)
    assert torch.equal(out_a, out_table)


def test_random_blocks_avoid_window_and_global_blocks():
    num_blocks, r = 12, 4
    table = bigbird_random_blocks(num_blocks, r, num_heads=3, seed=0)  # (H, nm, r)
    for row, blocks in enumerate(table.reshape(-1, r).tolist()):
        i = row % (num_blocks - 2) + 1  # query block id
        assert len(set(blocks)) == r  # without replacement
        assert all(1 <= j <= num_blocks - 2 for j in blocks)  # never global
        assert all(abs(j - i) > 1 for j in blocks)  # never in the window


def test_causal_random_blocks_come_from_the_past():
    num_blocks, r = 12, 3
    table = bigbird_random_blocks(num_blocks, r, num_heads=2, causal=True, seed=0)
    for row, blocks in enumerate(table.reshape(-1, r).tolist()):
        i = row % (num_blocks - 2) + 1
        drawn = [j for j in blocks if j != 0]  # 0 fills the slots a short past cannot
        assert len(drawn) == len(set(drawn)) == min(r, i - 2 if i >= 2 else 0)
        assert all(1 <= j <= i - 2 for j in drawn)


def test_key_blocks_list_window_random_global():
    table = torch.tensor([[[5, 6], [6, 7]]])  # (1, nm=2, r=2) for nb=4; the values only show the layout
    lists = bigbird_key_blocks(table, 4)
    assert lists.tolist() == [[[0, 1, 2, 5, 6, 0, 3], [1, 2, 3, 6, 7, 0, 3]]]


def test_keys_reached_twice_are_counted_once():
    """A table whose random blocks repeat window or global blocks, or each other."""
    N, blk, nb = 72, 8, 9  # r = 4 needs 9 blocks
    rows = torch.arange(1, nb - 1)  # (nm,)
    table = torch.stack([rows, rows - 1, torch.zeros_like(rows), torch.full_like(rows, nb - 1)], dim=-1)  # (nm, 4)
    table = table[None]  # (1, nm, 4)
    q, k, v = make_qkv(1, 2, 2, N, 8)
    for causal in (False, True):
        for fused in (True, False):
            kwargs = dict(block_size=blk, num_random_blocks=4, causal=causal, random_blocks=table)
            out = bigbird_attention(q, k, v, fused=fused, **kwargs)
            # nothing random is left: only global and window keys, each once
            expected = oracle(q, k, v, **kwargs)
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
            plain = bigbird_attention(q, k, v, block_size=blk, num_random_blocks=0, causal=causal)
            torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------
# Pattern, categories, padding
# ----------------------------------------------------------------------------


def test_categories():
    cats = bigbird_block_categories(8 * 16, block_size=16, num_random_blocks=2, num_heads=2, seed=0)
    assert cats.shape == (2, 8, 8) and cats.dtype == torch.int8
    assert (cats[:, 0] == GLOBAL).all() and (cats[:, -1] == GLOBAL).all()
    assert (cats[:, :, 0] == GLOBAL).all() and (cats[:, :, -1] == GLOBAL).all()
    for i in range(1, 7):
        for j in range(1, 7):
            if abs(i - j) <= 1:
                assert (cats[:, i, j] == WINDOW).all()
    assert ((cats[:, 1:-1] == RANDOM).sum(-1) == 2).all()  # r random blocks in every middle row
    causal = bigbird_block_categories(8 * 16, block_size=16, num_random_blocks=2, causal=True, seed=0)
    assert (causal[0].triu(1) == NONE).all()
    assert (causal[0, -1] == GLOBAL).all()  # the last block sees the whole past


def test_pattern_is_the_categories_at_token_level():
    blk, N = 8, 61  # ragged: 8 blocks
    cats = bigbird_block_categories(N, block_size=blk, num_random_blocks=2, num_heads=3, seed=4)
    tokens = (cats > NONE).repeat_interleave(blk, 1).repeat_interleave(blk, 2)[:, :N, :N]
    pattern = bigbird_pattern(N, block_size=blk, num_random_blocks=2, num_heads=3, seed=4)
    assert pattern.shape == (3, N, N) and pattern.dtype == torch.bool
    assert torch.equal(pattern, tokens)
    assert pattern.diagonal(dim1=1, dim2=2).all()  # every query sees itself
    causal = bigbird_pattern(N, block_size=blk, num_random_blocks=2, num_heads=3, causal=True, seed=4)
    assert not causal.triu(1).any() and causal.diagonal(dim1=1, dim2=2).all()


def test_padding_crops_the_padded_pattern():
    """N = 61 behaves as 64 tokens whose last 3 keys are masked and last 3 queries dropped."""
    blk, N, N_pad = 8, 61, 64
    for causal in (False, True):
        kwargs = dict(block_size=blk, num_random_blocks=2, num_heads=2, causal=causal, seed=9)
        assert torch.equal(bigbird_pattern(N, **kwargs), bigbird_pattern(N_pad, **kwargs)[:, :N, :N])
    q, k, v = make_qkv(1, 2, 2, N, 8)
    out = bigbird_attention(q, k, v, block_size=blk, num_random_blocks=2, seed=9)
    assert out.shape == (1, 2, N, 8)
    assert torch.isfinite(out).all()


# ----------------------------------------------------------------------------
# Bad input: each case names the argument, what was expected, what came
# ----------------------------------------------------------------------------


def _call(**changes):
    q, k, v = make_qkv(1, 2, 2, 64, 8)
    args = dict(q=q, k=k, v=v)
    kwargs = dict(block_size=8, num_random_blocks=2)
    for name, value in changes.items():
        (args if name in args else kwargs)[name] = value
    return bigbird_attention(args["q"], args["k"], args["v"], **kwargs)


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(q=[[1.0]]), TypeError, "q must be a torch.Tensor"),
        (dict(q=torch.zeros(2, 64, 8)), ValueError, "q must have 4 dimensions"),
        (dict(k=torch.zeros(1, 2, 64, 8, dtype=torch.int64)), TypeError, "k must be a floating tensor"),
        (dict(k=torch.zeros(1, 2, 48, 8), v=torch.zeros(1, 2, 48, 8)), ValueError, "same number of tokens"),
        (dict(k=torch.zeros(1, 3, 64, 8), v=torch.zeros(1, 3, 64, 8)), ValueError, "must divide"),
        (dict(k=torch.zeros(1, 2, 64, 4)), ValueError, "head dimension mismatch"),
        (dict(block_size=0), ValueError, "block_size must be a positive int, got 0"),
        (dict(block_size=8.0), ValueError, "block_size must be a positive int, got 8.0"),
        (dict(num_random_blocks=-1), ValueError, "num_random_blocks must be a non-negative int, got -1"),
        (dict(num_random_blocks=4), ValueError, r"needs at least 9 blocks .* got N=64, i.e. 8 blocks"),
        (dict(block_size=32, num_random_blocks=0), ValueError, "needs at least 3 blocks"),
        (dict(causal="yes"), TypeError, "causal must be a bool, got str"),
        (dict(fused=1), TypeError, "fused must be a bool, got int"),
        (dict(scale="0.1"), TypeError, "scale must be a float or None, got str"),
        (dict(seed=1.5), TypeError, "seed must be an int, got float"),
        (dict(generator=42), TypeError, "generator must be a torch.Generator, got int"),
        (dict(random_blocks=[[1]]), TypeError, "random_blocks must be a torch.Tensor"),
        (dict(random_blocks=torch.zeros(1, 6, 2)), TypeError, "random_blocks must have an integer dtype"),
        (dict(random_blocks=torch.zeros(1, 5, 2, dtype=torch.long)), ValueError, r"shape \(1 or H=2, nb-2=6"),
        (dict(random_blocks=torch.zeros(3, 6, 2, dtype=torch.long)), ValueError, r"got \(3, 6, 2\)"),
        (dict(random_blocks=torch.full((1, 6, 2), 8)), ValueError, r"block ids in \[0, 7\], got values in \[8, 8\]"),
        (
            dict(random_blocks=torch.zeros(1, 6, 2, dtype=torch.long), generator=torch.Generator()),
            ValueError,
            "either random_blocks or generator",
        ),
    ],
)
def test_bad_input_raises_clear_errors(changes, error, match):
    with pytest.raises(error, match=match):
        _call(**changes)


@pytest.mark.parametrize("N", [64, 60])  # a multiple of the block size (the mask-free interior rows), and not
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_meta_tensors_give_the_output_shape(N, causal, fused):
    # Without causal or padding, deciding which middle rows need a mask read the (meta) block table:
    # Tensor.item() cannot be called on meta tensors.
    q = torch.empty(2, 4, N, 8, device="meta")
    k = torch.empty(2, 2, N, 8, device="meta")
    v = torch.empty(2, 2, N, 5, device="meta")
    out = bigbird_attention(q, k, v, block_size=8, num_random_blocks=2, causal=causal, fused=fused)
    assert out.device.type == "meta" and out.shape == (2, 4, N, 5) and out.dtype == q.dtype


def test_bad_pattern_and_table_arguments():
    with pytest.raises(ValueError, match="N must be a positive int, got 0"):
        bigbird_pattern(0, block_size=8)
    with pytest.raises(ValueError, match="num_heads must be a positive int, got 0"):
        bigbird_block_categories(64, block_size=8, num_heads=0)
    with pytest.raises(ValueError, match="num_blocks must be at least 7 for num_random_blocks=2, got 6"):
        bigbird_random_blocks(6, 2)
    with pytest.raises(ValueError, match="num_blocks must be a positive int"):
        bigbird_random_blocks(-3, 0)


# ----------------------------------------------------------------------------
# Structure: the library path never builds an N x N tensor
# ----------------------------------------------------------------------------


def _square_tensors(shapes, N):
    return [(op, s) for op, s in shapes if len(s) >= 2 and s[-1] >= N and s[-2] >= N]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_no_n_by_n_tensor(causal, fused, record_shapes):
    N = 2048
    q, k, v = make_qkv(1, 2, 1, N, 16, requires_grad=True)
    with record_shapes() as recorder:
        out = bigbird_attention(q, k, v, block_size=64, num_random_blocks=3, causal=causal, fused=fused)
        out.sum().backward()
    assert len(recorder.shapes) > 10
    assert _square_tensors(recorder.shapes, N) == []
    assert q.grad is not None and k.grad is not None


def test_shape_recorder_catches_dense_attention(record_shapes):
    """The check above is not vacuous: dense attention does build N x N."""
    q, k, v = make_qkv(1, 1, 1, 256, 8)
    with record_shapes() as recorder:
        attention(q, k, v)
    assert _square_tensors(recorder.shapes, 256)


# ----------------------------------------------------------------------------
# The nn.Module block and the registry
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_module_forward_backward_matches_dense_block(causal):
    torch.manual_seed(0)
    block = BigBirdSelfAttention(32, 4, 8, 2, causal, 3)
    x = torch.randn(2, 77, 32, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())

    mask = bigbird_pattern(77, block_size=8, num_random_blocks=2, num_heads=4, causal=causal, seed=3)
    dense = MultiHeadSelfAttention(32, 4, causal=causal, attention_fn=functools.partial(attention, mask=mask))
    dense.load_state_dict(block.state_dict())
    torch.testing.assert_close(y, dense(x), atol=1e-5, rtol=1e-5)
    assert "block_size=8" in repr(block)


def test_module_bad_arguments():
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        BigBirdSelfAttention(32, 4, block_size=0)
    with pytest.raises(ValueError, match="dim must be divisible by num_heads"):
        BigBirdSelfAttention(30, 4)
    with pytest.raises(TypeError, match="seed must be an int"):
        BigBirdSelfAttention(32, 4, seed="0")
    block = BigBirdSelfAttention(32, 4, block_size=8, num_random_blocks=1)
    with pytest.raises(ValueError, match="x must have 32 channels"):
        block(torch.zeros(1, 64, 16))
    with pytest.raises(ValueError, match="needs at least 6 blocks"):
        block(torch.zeros(1, 16, 32))


def test_registry_entry():
    method = registry.get("bigbird")
    assert method.category == "sparsification" and method.domain == "language"
    assert method.chapter == "05_bigbird.ipynb"
    assert method.attention_fn() is bigbird_attention
    assert method.module_cls() is BigBirdSelfAttention
    q, k, v = make_qkv(1, 2, 2, 512, 8)
    out = method.attention_fn()(q, k, v, **method.bench_kwargs)
    pattern_kwargs = {key: value for key, value in method.bench_kwargs.items()}
    mask = method.pattern_fn()(512, num_heads=2, **pattern_kwargs)
    torch.testing.assert_close(out, attention(q, k, v, mask=mask), atol=1e-5, rtol=1e-5)
