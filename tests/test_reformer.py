"""Tests for attnlib.sparse.reformer: Reformer LSH attention (Kitaev et al., ICLR 2020).

Two dense oracles, both built on ``reference.attention``:

* the **union oracle**: shared-QK attention (keys ``qk / ||qk||``, the token itself only when
  its row has nothing else) masked with ``lsh_pattern``;
* the **per-round oracle**: Eq. (6)-(10) one round at a time -- each round attends the pairs it
  reaches that no earlier round reached (the token itself only where the round has nothing
  else, scored ``s_ii - log R``), rounds where the token was alone drop out when another round
  found it a key, then the rounds are combined with their logsumexp, Eq. (14).

Scores are ``q_i . k_j`` with unit keys and no ``1 / sqrt(d)``, as in the authors' code.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlib import reference, registry
from attnlib.sparse import reformer as rf
from attnlib.sparse.reformer import (
    SELF_PENALTY,
    ReformerSelfAttention,
    default_n_buckets,
    lsh_attention,
    lsh_attention_qkv,
    lsh_hash,
    lsh_layout,
    lsh_pattern,
    make_rotations,
    shared_qk_attention,
    softmax_mass_captured,
)

ATOL = RTOL = 1e-5


def make_inputs(B=1, H=2, N=40, d=8, d_v=None, *, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    qk = torch.randn(B, H, N, d, generator=generator).to(dtype)  # (B, H, N, d)
    v = torch.randn(B, H, N, d if d_v is None else d_v, generator=generator).to(dtype)  # (B, H, N, d_v)
    return qk, v


def unit_keys(qk):
    return qk / torch.linalg.vector_norm(qk, dim=-1, keepdim=True)  # (B, H, N, d)


def per_round_oracle(qk, v, per_round_pattern, *, scale=1.0):
    """Eq. (6)-(10), densely: per-round masks with reference.attention, then the logsumexp combination.

    Returns the output ``(B, H, N, d_v)`` and the logsumexp ``(B, H, N)``.
    """
    B, H, R, N, _ = per_round_pattern.shape
    eye = torch.eye(N, dtype=torch.bool)
    seen = torch.zeros(B, H, N, N, dtype=torch.bool)
    outs, lses, alone = [], [], []
    for r in range(R):
        new = per_round_pattern[:, :, r] & ~seen  # pairs no earlier round reached
        seen |= per_round_pattern[:, :, r]
        others = new & ~eye
        has_others = others.any(dim=-1)  # (B, H, N)
        mask = torch.where(has_others[..., None], others, eye)  # the token itself only when alone
        out_r, lse_r = reference.attention(qk, unit_keys(qk), v, mask=mask, scale=scale, return_lse=True)
        # alone in all R rounds, the token itself scores s_ii - log R in each: counted once
        lse_r = torch.where(has_others, lse_r, lse_r - math.log(R))
        outs.append(out_r)
        lses.append(lse_r)
        alone.append(~has_others)
    lses, alone = torch.stack(lses, dim=2), torch.stack(alone, dim=2)  # (B, H, R, N)
    lses = lses.masked_fill(alone & ~alone.all(dim=2, keepdim=True), float("-inf"))  # the self rule on the union
    weights = torch.softmax(lses, dim=2)  # (B, H, R, N), Eq. (14)
    out = (weights[..., None] * torch.stack(outs, dim=2)).sum(dim=2)  # (B, H, N, d_v)
    return out, torch.logsumexp(lses, dim=2)


def loop_pattern(layout, causal):
    """The pattern straight from the definition, with Python loops over sorted slots (small N only)."""
    B, H, R, N_pad = layout.buckets.shape
    m, n_chunks, N = layout.chunk_size, layout.n_chunks, layout.N
    pattern = torch.zeros(B, H, R, N, N, dtype=torch.bool)
    for b in range(B):
        for h in range(H):
            for r in range(R):
                order = layout.sort_indices[b, h, r].tolist()  # token at each sorted slot
                bucket = layout.buckets[b, h, r].tolist()
                for slot_i, i in enumerate(order):
                    chunk = slot_i // m
                    window = {chunk, (chunk - 1) % n_chunks}
                    for slot_j, j in enumerate(order):
                        if slot_j // m in window and bucket[i] == bucket[j] and i < N and j < N:
                            if not causal or j <= i:
                                pattern[b, h, r, i, j] = True
    return pattern


# ----------------------------------------------------------------------------
# Hashing, sorting, chunks
# ----------------------------------------------------------------------------


def test_default_n_buckets_follows_the_paper():
    # Sec. 2: m = 2l / n_buckets
    assert default_n_buckets(4096, 64) == 128
    assert default_n_buckets(100, 32) == 8  # 2 * ceil(100 / 32)
    assert default_n_buckets(10, 64) == 2


def test_make_rotations_shapes_and_seeding():
    rotations = make_rotations(3, 8, 2, 6, seed=1)
    assert rotations.shape == (3, 8, 2, 3) and rotations.dtype == torch.float32
    assert torch.equal(rotations, make_rotations(3, 8, 2, 6, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(rotations, make_rotations(3, 8, 2, 6, seed=2))
    assert make_rotations(3, 8, 2, 1, seed=1).shape == (3, 8, 2, 0)  # one bucket: nothing to draw


@pytest.mark.parametrize("n_buckets", [2, 6, 16])
def test_hash_is_argmax_of_rotations_and_their_negatives(n_buckets):
    qk, _ = make_inputs(B=2, H=3, N=50, d=8)
    rotations = make_rotations(3, 8, 4, n_buckets, seed=0)  # (H, d, R, b/2)
    rotated = torch.einsum("bhnd,hdrk->bhrnk", qk, rotations)  # (B, H, R, N, b/2)
    expected = torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)  # h(x) = argmax([xR; -xR])
    buckets = lsh_hash(qk, rotations)
    assert buckets.shape == (2, 3, 4, 50) and buckets.dtype == torch.long
    assert torch.equal(buckets, expected)
    # the hash ignores the length of the vectors (angular LSH)
    assert torch.equal(lsh_hash(qk * 3.7, rotations), buckets)


def test_hash_ties_break_like_argmax_of_the_concatenation():
    rotations = torch.eye(2).view(1, 2, 1, 2)  # (H, d, R, b/2) = (1, 2, 1, 2): xR = x
    qk = torch.tensor([[0.0, 0.0], [1.0, -1.0], [-1.0, 1.0], [-2.0, 1.0], [0.5, 0.5]]).view(1, 1, 5, 2)
    rotated = torch.einsum("bhnd,hdrk->bhrnk", qk, rotations)
    expected = torch.cat([rotated, -rotated], dim=-1).argmax(dim=-1)
    assert torch.equal(lsh_hash(qk, rotations), expected)


def test_one_bucket_needs_no_hashing():
    qk, _ = make_inputs(N=20)
    assert torch.equal(lsh_hash(qk, make_rotations(2, 8, 3, 1)), torch.zeros(1, 2, 3, 20, dtype=torch.long))


def test_layout_sorts_by_bucket_then_position_and_pads_last():
    qk, _ = make_inputs(B=2, H=2, N=45, d=6)
    layout = lsh_layout(qk, n_hashes=3, n_buckets=4, chunk_size=8, seed=0)
    assert (layout.N, layout.N_pad, layout.n_chunks, layout.n_hashes) == (45, 48, 6, 3)
    assert layout.chunk_boundaries == [0, 8, 16, 24, 32, 40, 48]
    sorted_buckets = layout.sorted_buckets  # (B, H, R, N_pad)
    assert (sorted_buckets[..., 1:] >= sorted_buckets[..., :-1]).all()  # buckets in order
    same = sorted_buckets[..., 1:] == sorted_buckets[..., :-1]
    positions = layout.sort_indices
    assert (positions[..., 1:] > positions[..., :-1])[same].all()  # stable: positions in order inside a bucket
    # the padding tokens 45..47 carry the extra bucket and sort last in every round
    assert (layout.buckets[..., 45:] == 4).all() and (layout.buckets[..., :45] < 4).all()
    assert (positions[..., 45:] == torch.arange(45, 48)).all()
    # undo_sort is the inverse permutation; chunk_of_token follows it
    assert torch.equal(positions.gather(-1, layout.undo_sort), torch.arange(48).expand(2, 2, 3, 48))
    assert torch.equal(layout.chunk_of_token, layout.undo_sort // 8)


@settings(deadline=None, max_examples=25)
@given(
    N=st.integers(1, 24),
    chunk_size=st.sampled_from([1, 2, 4, 8]),
    n_hashes=st.integers(1, 3),
    n_buckets=st.sampled_from([1, 2, 4, 6]),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_pattern_matches_the_definition(N, chunk_size, n_hashes, n_buckets, causal, seed):
    qk, _ = make_inputs(B=1, H=2, N=N, d=4, seed=seed)
    layout = lsh_layout(qk, n_hashes=n_hashes, n_buckets=n_buckets, chunk_size=chunk_size, seed=seed)
    expected = loop_pattern(layout, causal)
    assert torch.equal(layout.pattern(causal=causal, per_round=True), expected)
    pattern = lsh_pattern(qk, n_hashes=n_hashes, n_buckets=n_buckets, chunk_size=chunk_size, causal=causal, seed=seed)
    assert torch.equal(pattern, expected.any(dim=2))
    assert pattern.diagonal(dim1=-2, dim2=-1).all()  # a token always reaches itself


# ----------------------------------------------------------------------------
# The algorithm against the oracles
# ----------------------------------------------------------------------------


@settings(deadline=None, max_examples=30)
@given(
    B=st.integers(1, 2),
    H=st.integers(1, 2),
    N=st.integers(1, 40),
    d=st.integers(2, 8),
    d_v=st.integers(1, 6),
    chunk_size=st.sampled_from([1, 2, 3, 4, 8]),
    n_hashes=st.integers(1, 4),
    n_buckets=st.sampled_from([None, 1, 2, 4, 8]),
    causal=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lsh_attention_equals_both_oracles(B, H, N, d, d_v, chunk_size, n_hashes, n_buckets, causal, seed):
    qk, v = make_inputs(B, H, N, d, d_v, seed=seed)
    rotations = make_rotations(
        H, d, n_hashes, default_n_buckets(N, chunk_size) if n_buckets is None else n_buckets, seed=seed
    )
    options = dict(n_hashes=n_hashes, n_buckets=n_buckets, chunk_size=chunk_size, rotations=rotations)
    out, lse = lsh_attention(qk, v, causal=causal, return_lse=True, **options)
    assert out.shape == (B, H, N, d_v) and out.dtype == torch.float32 and lse.shape == (B, H, N)

    pattern = lsh_pattern(qk, causal=causal, **options)
    union, union_lse = shared_qk_attention(qk, v, mask=pattern, return_lse=True)
    torch.testing.assert_close(out, union, atol=ATOL, rtol=RTOL)
    # lse: the union's logsumexp for every token, also one whose only key is itself
    torch.testing.assert_close(lse, union_lse, atol=ATOL, rtol=RTOL)

    per_round = lsh_pattern(qk, causal=causal, per_round=True, **options)
    round_out, round_lse = per_round_oracle(qk, v, per_round)
    torch.testing.assert_close(out, round_out, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(lse, round_lse, atol=ATOL, rtol=RTOL)


def test_duplicates_are_counted_once():
    # rounds that overlap partly: the union oracle holds only if each pair counts once
    qk, v = make_inputs(B=1, H=2, N=64, d=4, seed=3)
    rotations = make_rotations(2, 4, 4, 4, seed=3)
    per_round = lsh_pattern(qk, n_hashes=4, n_buckets=4, chunk_size=8, rotations=rotations, per_round=True)
    assert (per_round.sum(dim=2) >= 2).any()  # some pairs are reached in several rounds
    out = lsh_attention(qk, v, n_hashes=4, n_buckets=4, chunk_size=8, rotations=rotations)
    torch.testing.assert_close(out, shared_qk_attention(qk, v, mask=per_round.any(dim=2)), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("n_hashes", [1, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_one_bucket_one_chunk_is_full_shared_qk_attention(n_hashes, causal):
    qk, v = make_inputs(B=2, H=2, N=30, d=8)
    out = lsh_attention(qk, v, n_hashes=n_hashes, n_buckets=1, chunk_size=32, causal=causal)
    torch.testing.assert_close(out, shared_qk_attention(qk, v, causal=causal), atol=ATOL, rtol=RTOL)
    # which is dense attention with keys qk / ||qk|| and the diagonal masked (every row has others)
    allowed = ~torch.eye(30, dtype=torch.bool)
    if causal:
        allowed &= reference.causal_mask(30, 30)
        allowed[0, 0] = True  # the first token has nothing else
    expected = reference.attention(qk, unit_keys(qk), v, mask=allowed, scale=1.0)
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=RTOL)


def test_one_bucket_many_chunks_is_a_ring_of_blocks():
    # n_buckets = 1 sorts by position: chunk c sees chunks c and c - 1, chunk 0 sees the last one
    qk, v = make_inputs(N=32, d=4)
    pattern = lsh_pattern(qk, n_hashes=1, n_buckets=1, chunk_size=8)
    block = torch.arange(32) // 8
    expected = ((block[:, None] - block[None, :]) % 4) <= 1
    assert torch.equal(pattern, expected.expand(1, 2, 32, 32))
    torch.testing.assert_close(
        lsh_attention(qk, v, n_hashes=1, n_buckets=1, chunk_size=8), shared_qk_attention(qk, v, mask=expected)
    )


def test_the_token_itself_counts_once_in_the_logsumexp():
    # kept in all R rounds with s_ii - log R each: a row with only itself has z = s_ii, no penalty left
    qk, v = make_inputs(B=1, H=1, N=16, d=4, seed=2, dtype=torch.float64)
    _, lse = lsh_attention(qk, v, n_hashes=3, n_buckets=1, chunk_size=16, causal=True, return_lse=True)
    s_00 = qk[0, 0, 0] @ unit_keys(qk)[0, 0, 0]  # scale 1 (the authors' code)
    torch.testing.assert_close(lse[0, 0, 0], s_00, atol=1e-9, rtol=0)


def test_logsumexp_of_a_token_alone_matches_the_oracle():
    # Issue 9, finding 1: the -1e5 self penalty stayed inside the logsumexp (z = -99998.96 for 1.04)
    generator = torch.Generator().manual_seed(0)
    qk, v = torch.randn(1, 1, 16, 8, generator=generator), torch.randn(1, 1, 16, 8, generator=generator)
    _, lse = lsh_attention(qk, v, chunk_size=4, n_hashes=2, causal=True, seed=0, return_lse=True)
    pattern = lsh_pattern(qk, chunk_size=4, n_hashes=2, causal=True, seed=0)
    _, expected = shared_qk_attention(qk, v, mask=pattern, return_lse=True)
    torch.testing.assert_close(lse, expected, atol=ATOL, rtol=RTOL)
    assert lse.min() > -100  # no penalty anywhere


@pytest.mark.parametrize("magnitude", [1e6, 1e20])
def test_the_self_rule_is_exact_at_large_logits(magnitude):
    # Issue 9, finding 2: at 1e6 a -1e5 penalty no longer suppressed self-attention, and at 1e20
    # the key norms overflowed in float32 (every key zero)
    qk, v = make_inputs(B=1, H=2, N=32, d=8, seed=4)
    qk = qk * magnitude
    options = dict(chunk_size=8, n_hashes=2, seed=0)
    out = lsh_attention(qk, v, **options)
    assert torch.isfinite(out).all()
    pattern = lsh_pattern(qk, **options)
    expected = shared_qk_attention(qk.double(), v.double(), mask=pattern)
    torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=RTOL)
    keys = rf.shared_qk_keys(qk)
    torch.testing.assert_close(torch.linalg.vector_norm(keys, dim=-1), torch.ones(1, 2, 32))


def test_a_token_attends_to_itself_only_when_alone():
    qk, v = make_inputs(B=1, H=1, N=16, d=4, seed=1)
    # causal, one bucket: the first token has only itself; the others never look at themselves
    out = lsh_attention(qk, v, n_buckets=1, chunk_size=16, causal=True, n_hashes=2)
    torch.testing.assert_close(out[..., 0, :], v[..., 0, :], atol=ATOL, rtol=RTOL)
    # moving v of token 5 changes no output of token 5 (it never attends to itself) but changes 6
    v2 = v.clone()
    v2[..., 5, :] += 10.0
    out2 = lsh_attention(qk, v2, n_buckets=1, chunk_size=16, causal=True, n_hashes=2)
    torch.testing.assert_close(out2[..., :6, :], out[..., :6, :], atol=ATOL, rtol=RTOL)
    assert not torch.allclose(out2[..., 6, :], out[..., 6, :])
    # a token alone in its bucket (every other token far away) returns its own value
    lonely = torch.zeros(1, 1, 8, 4)
    lonely[..., :7, 0] = 1.0  # seven tokens along +x
    lonely[..., 7, 0] = -1.0  # one along -x: an angular hash never puts it with the others
    rotations = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 4, 1, 1)  # b = 2: the sign of x
    out = lsh_attention(lonely, v[..., :8, :], n_hashes=1, n_buckets=2, chunk_size=8, rotations=rotations)
    torch.testing.assert_close(out[..., 7, :], v[..., 7, :], atol=ATOL, rtol=RTOL)


def test_causal_outputs_do_not_depend_on_future_values_or_queries_through_scores():
    qk, v = make_inputs(B=1, H=2, N=48, d=8, seed=5)
    qk.requires_grad_(True)
    v.requires_grad_(True)
    out = lsh_attention(qk, v, n_hashes=3, n_buckets=4, chunk_size=8, causal=True, seed=5)
    out[..., 20, :].sum().backward()
    # the hash is a fixed function of qk here (the rotations are seeded); through the scores,
    # token 20 depends on no later token
    assert (v.grad[..., 21:, :] == 0).all() and (qk.grad[..., 21:, :] == 0).all()
    pattern = lsh_pattern(qk.detach(), n_hashes=3, n_buckets=4, chunk_size=8, causal=True, seed=5)
    assert torch.equal(pattern, pattern.tril())


@pytest.mark.parametrize("N, chunk_size", [(100, 32), (5, 64), (33, 8), (1, 4)])
def test_ragged_lengths_are_padded_and_cropped(N, chunk_size):
    qk, v = make_inputs(B=2, H=2, N=N, d=8, seed=N)
    out = lsh_attention(qk, v, n_hashes=2, chunk_size=chunk_size, seed=1)
    assert out.shape == (2, 2, N, 8)
    pattern = lsh_pattern(qk, n_hashes=2, chunk_size=chunk_size, seed=1)
    assert pattern.shape == (2, 2, N, N)
    # the oracle sees only the N real tokens: equality means no padding token was attended
    torch.testing.assert_close(out, shared_qk_attention(qk, v, mask=pattern), atol=ATOL, rtol=RTOL)


def test_seed_generator_and_rotations_are_deterministic():
    qk, v = make_inputs(B=1, H=2, N=64, d=8)
    first = lsh_attention(qk, v, chunk_size=8, seed=7)
    assert torch.equal(first, lsh_attention(qk, v, chunk_size=8, seed=7))
    assert torch.equal(first, lsh_attention(qk, v, chunk_size=8, generator=torch.Generator().manual_seed(7)))
    rotations = make_rotations(2, 8, 4, default_n_buckets(64, 8), seed=7)
    assert torch.equal(first, lsh_attention(qk, v, chunk_size=8, rotations=rotations))
    assert not torch.equal(first, lsh_attention(qk, v, chunk_size=8, seed=8))
    # no seed: torch's global generator draws the rotations
    torch.manual_seed(11)
    a = lsh_attention(qk, v, chunk_size=8)
    torch.manual_seed(11)
    assert torch.equal(a, lsh_attention(qk, v, chunk_size=8))


def test_half_and_double_precision():
    qk, v = make_inputs(B=1, H=2, N=40, d=8, seed=2)
    expected = lsh_attention(qk, v, chunk_size=8, seed=0)
    for dtype, tolerance in [(torch.float16, 1e-2), (torch.bfloat16, 5e-2), (torch.float64, 1e-5)]:
        out = lsh_attention(qk.to(dtype), v.to(dtype), chunk_size=8, seed=0)
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=tolerance)


def test_gradients_flow_and_match_the_oracle():
    qk, v = make_inputs(B=1, H=2, N=37, d=6, seed=4, dtype=torch.float64)
    qk.requires_grad_(True)
    v.requires_grad_(True)
    options = dict(n_hashes=3, n_buckets=4, chunk_size=8, seed=4)
    weights = torch.randn(1, 2, 37, 6, dtype=torch.float64)
    (lsh_attention(qk, v, causal=True, **options) * weights).sum().backward()
    grads = qk.grad.clone(), v.grad.clone()
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    qk.grad = v.grad = None
    pattern = lsh_pattern(qk.detach(), causal=True, **options)
    (shared_qk_attention(qk, v, mask=pattern) * weights).sum().backward()
    torch.testing.assert_close(grads[0], qk.grad)
    torch.testing.assert_close(grads[1], v.grad)


def test_gradients_are_finite_with_padding_and_zero_vectors():
    qk, v = make_inputs(B=1, H=1, N=13, d=4, seed=6)
    qk[..., 3, :] = 0.0  # a zero vector: zero key, no NaN
    qk.requires_grad_(True)
    v.requires_grad_(True)
    lsh_attention(qk, v, chunk_size=8, n_hashes=2, seed=0).sum().backward()
    assert torch.isfinite(qk.grad).all() and torch.isfinite(v.grad).all()


def test_heads_run_in_blocks_with_the_same_result(monkeypatch):
    qk, v = make_inputs(B=2, H=3, N=40, d=8, seed=9)
    out, lse = lsh_attention(qk, v, chunk_size=8, seed=0, causal=True, return_lse=True)
    monkeypatch.setattr(rf, "HEAD_BLOCK_SCORES", 1)  # one head per block
    blocked, blocked_lse = lsh_attention(qk, v, chunk_size=8, seed=0, causal=True, return_lse=True)
    torch.testing.assert_close(blocked, out, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(blocked_lse, lse, atol=1e-6, rtol=1e-6)


def test_library_path_builds_no_n_by_n_tensor(record_shapes):
    N, chunk_size = 2048, 64
    qk, v = make_inputs(B=1, H=1, N=N, d=16)
    qk.requires_grad_(True)
    v.requires_grad_(True)
    with record_shapes() as recorder:
        out = lsh_attention(qk, v, n_hashes=4, chunk_size=chunk_size, causal=True, seed=0)
        out.sum().backward()
    assert recorder.shapes
    for op, shape in recorder.shapes:
        assert sum(size >= N for size in shape) <= 1, (op, shape)
        assert math.prod(shape) <= 4 * N * 2 * chunk_size, (op, shape)  # R * N * 2m at most
    assert qk.grad is not None and v.grad is not None


# ----------------------------------------------------------------------------
# Dense companions
# ----------------------------------------------------------------------------


def test_shared_qk_attention_self_rule():
    qk, v = make_inputs(B=1, H=1, N=6, d=4)
    only_self = torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(shared_qk_attention(qk, v, mask=only_self), v)
    # with other keys the diagonal carries no weight, the same as scoring it -1e5
    scores = qk @ unit_keys(qk).transpose(-2, -1) - SELF_PENALTY * torch.eye(6)  # scale 1
    expected = torch.softmax(scores, dim=-1) @ v
    torch.testing.assert_close(shared_qk_attention(qk, v), expected)


def test_softmax_mass_captured():
    # clustered embeddings: 4 tight clusters of 16 tokens, shuffled along the sequence
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=generator) * 3
    labels = torch.randperm(64, generator=generator) % 4
    qk = (centers[labels] + 0.1 * torch.randn(64, 16, generator=generator)).view(1, 1, 64, 16)
    full = softmax_mass_captured(qk, n_hashes=1, n_buckets=1, chunk_size=64)
    torch.testing.assert_close(full, torch.ones(1, 1, 64))  # one bucket, one chunk: nothing missed
    rotations = make_rotations(1, 16, 8, 4, seed=0)
    shares = [
        softmax_mass_captured(qk, n_hashes=r, n_buckets=4, chunk_size=16, rotations=rotations[:, :, :r])
        for r in (1, 2, 4, 8)
    ]
    for share in shares:
        assert share.shape == (1, 1, 64) and (share >= 0).all() and (share <= 1 + 1e-6).all()
    for fewer, more in zip(shares, shares[1:]):  # nested rotations: the union only grows
        assert (more >= fewer - 1e-6).all()
    assert shares[-1].mean() > 0.9  # LSH finds the clusters
    # causal: the first token has only itself and keeps all of its mass
    causal = softmax_mass_captured(qk, n_hashes=2, n_buckets=4, chunk_size=16, causal=True, seed=0)
    assert causal[0, 0, 0] == 1.0


# ----------------------------------------------------------------------------
# The block, the adapter, the registry
# ----------------------------------------------------------------------------


def test_module_forward_backward_and_determinism():
    torch.manual_seed(0)
    block = ReformerSelfAttention(32, 4, n_hashes=2, chunk_size=8, causal=True, seed=3)
    x = torch.randn(2, 30, 32, requires_grad=True)
    y = block(x)
    assert y.shape == (2, 30, 32)
    assert torch.equal(y, block(x))  # fixed seed, fixed rotations
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in block.parameters())
    assert "n_hashes=2" in repr(block)
    # equals the kernel applied to its projections
    qk = block.qk_proj(x).view(2, 30, 4, 8).transpose(1, 2)
    v = block.v_proj(x).view(2, 30, 4, 8).transpose(1, 2)
    inner = lsh_attention(qk, v, n_hashes=2, chunk_size=8, causal=True, seed=3)
    torch.testing.assert_close(y, block.out_proj(inner.transpose(1, 2).reshape(2, 30, 32)))


def test_adapter_uses_q_as_shared_query_key():
    qk, v = make_inputs(B=1, H=2, N=40, d=8)
    out = lsh_attention_qkv(qk, qk.clone(), v, chunk_size=8, seed=0, causal=True)
    torch.testing.assert_close(out, lsh_attention(qk, v, chunk_size=8, seed=0, causal=True))
    with pytest.raises(ValueError, match="k must match q"):
        lsh_attention_qkv(qk, qk[..., :4], v)


def test_registry_entry():
    method = registry.get("reformer")
    assert (method.category, method.domain, method.chapter) == ("sparsification", "language", "06_reformer.ipynb")
    assert method.attention_fn() is lsh_attention_qkv
    assert method.module_cls() is ReformerSelfAttention
    assert method.pattern_fn() is lsh_pattern
    q, k, v = (torch.randn(1, 2, 130, 16) for _ in range(3))
    out = method.attention_fn()(q, k, v, **method.bench_kwargs)
    assert out.shape == (1, 2, 130, 16)
    assert method.bench_kwargs["n_hashes"] == 4 and method.bench_kwargs["chunk_size"] == 64


# ----------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------

QK, V = make_inputs(B=1, H=2, N=16, d=4)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: lsh_attention(QK.numpy(), V), TypeError, "qk must be a torch.Tensor, got ndarray"),
        (lambda: lsh_attention(QK[0], V), ValueError, "qk must have 4 dimensions, got 3"),
        (lambda: lsh_attention(QK, V[..., :8, :]), ValueError, r"v must have the \(B, H, N\) of qk"),
        (lambda: lsh_attention(QK, V.double()), TypeError, "qk and v must share one dtype"),
        (lambda: lsh_attention(QK.long(), V.long()), TypeError, "qk must be a floating tensor"),
        (lambda: lsh_attention(QK, V.to("meta")), ValueError, "qk and v must be on one device"),
        (lambda: lsh_attention(QK[:, :, :0], V[:, :, :0]), ValueError, r"at least one token \(N\).*\(1, 2, 0, 4\)"),
        (lambda: lsh_attention(QK[:, :0], V[:, :0]), ValueError, r"qk and v must have at least one head \(H\)"),
        (lambda: lsh_layout(QK[..., :0]), ValueError, r"qk must have B, H, N, d >= 1"),
        (lambda: lsh_attention(QK, V, n_hashes=0), ValueError, "n_hashes must be a positive int, got 0"),
        (lambda: lsh_attention(QK, V, chunk_size=2.5), ValueError, "chunk_size must be a positive int, got 2.5"),
        (lambda: lsh_attention(QK, V, n_buckets=3), ValueError, "n_buckets must be 1 or even.*got 3"),
        (lambda: lsh_attention(QK, V, n_buckets=0), ValueError, "n_buckets must be None or a positive int, got 0"),
        (lambda: lsh_attention(QK, V, causal=1), TypeError, "causal must be a bool, got int"),
        (lambda: lsh_attention(QK, V, scale=-1.0), ValueError, "scale must be None or a positive finite number"),
        (lambda: lsh_attention(QK, V, seed=1, generator=torch.Generator()), ValueError, "either generator or seed"),
        (lambda: lsh_attention(QK, V, seed="1"), TypeError, "seed must be an int, got str"),
        (lambda: lsh_attention(QK, V, generator=1), TypeError, "generator must be a torch.Generator, got int"),
        (
            lambda: lsh_attention(QK, V, n_buckets=4, rotations=torch.randn(2, 4, 4, 3)),
            ValueError,
            r"rotations must have shape \(H, d, n_hashes, n_buckets // 2\) = \(2, 4, 4, 2\), got \(2, 4, 4, 3\)",
        ),
        (lambda: lsh_attention(QK, V, rotations=[1.0]), TypeError, "rotations must be a torch.Tensor, got list"),
        (
            lambda: lsh_attention(QK, V, n_buckets=4, rotations=torch.randn(2, 4, 4, 2), seed=0),
            ValueError,
            "either rotations or generator/seed",
        ),
        (lambda: lsh_pattern(QK, per_round="yes"), TypeError, "per_round must be a bool, got str"),
        (lambda: lsh_hash(QK, torch.randn(3, 4, 1, 2)), ValueError, r"rotations must have shape \(H, d, R"),
        (lambda: make_rotations(2, 4, 1, 5), ValueError, "n_buckets must be 1 or even"),
        (lambda: default_n_buckets(0, 64), ValueError, "N must be a positive int, got 0"),
        (lambda: shared_qk_attention(QK, V, mask=torch.ones(16, 16)), TypeError, "mask must have dtype torch.bool"),
        (
            lambda: shared_qk_attention(QK, V, mask=torch.ones(3, 16, 16, dtype=torch.bool)),
            ValueError,
            r"mask must be broadcastable to \(B, H, N_q, N_k\) = \(1, 2, 16, 16\), got shape \(3, 16, 16\)",
        ),
        (lambda: ReformerSelfAttention(30, 4), ValueError, "dim must be divisible by num_heads"),
        (lambda: ReformerSelfAttention(32, 4, n_buckets=5), ValueError, "n_buckets must be 1 or even"),
        (lambda: ReformerSelfAttention(32, 4, seed=1.5), TypeError, "seed must be an int, got float"),
        (lambda: ReformerSelfAttention(32, 4)(torch.randn(2, 8, 16)), ValueError, "x must have 32 channels"),
        (lambda: ReformerSelfAttention(32, 4)(torch.randn(8, 32)), ValueError, "x must have 3 dimensions"),
    ],
)
def test_bad_input_raises_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_public_api_names_the_chapter():
    assert set(rf.__all__) >= {"lsh_attention", "lsh_pattern", "ReformerSelfAttention", "softmax_mass_captured"}
    assert "06_reformer.ipynb" in rf.__doc__
