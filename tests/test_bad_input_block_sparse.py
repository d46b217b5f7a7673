"""Bad input to the block-sparse code (attnlib.optim.block_mask, block_sparse, flash_triton's block-sparse half).

The cases: double backward (refused, not silently first-order), Swin's windows for every map and
shift, a NaN key outside a query's pattern, flags that are not bools, an ``lse`` of another shape,
``d_v != d``, and the block-mask helpers given wrong sizes, dtypes and shapes. Each bad input fails
with a clear ValueError/TypeError that names the argument.
"""

from __future__ import annotations

import pytest
import torch

from attnlib.optim import block_mask as bmk
from attnlib.optim.block_sparse import (
    bigbird_flash_attention,
    block_sparse_attention,
    block_sparse_backward_torch,
    block_sparse_forward_torch,
)
from attnlib.reference import attention
from attnlib.sparse.bigbird import bigbird_attention, bigbird_block_categories
from attnlib.sparse.swin import swin_pattern

try:
    from attnlib.optim import block_sparse_triton as bst
except ImportError:  # triton is not installed: the Triton cases skip
    bst = None

needs_triton = pytest.mark.skipif(bst is None, reason="triton is not installed")


def make_qkv(B, H, H_kv, N, d, d_v=None, *, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N, d, generator=gen, dtype=dtype)  # (B, H, N, d)
    k = torch.randn(B, H_kv, N, d, generator=gen, dtype=dtype)  # (B, H_kv, N, d)
    v = torch.randn(B, H_kv, N, d_v or d, generator=gen, dtype=dtype)  # (B, H_kv, N, d_v)
    return q, k, v


def causal_block_mask(N, block):
    return bmk.block_mask_from_mask_mod(bmk.causal_mask_mod(N, N), None, None, N, N, block_q=block, block_k=block)


# ----------------------------------------------------------------------------------------
# 1. Double backward: refused with a clear error (it used to drop the second-order term silently)
# ----------------------------------------------------------------------------------------
def _run(kind, q, k, v):
    if kind == "bigbird":
        return bigbird_flash_attention(q, k, v, block_size=16, num_random_blocks=1, backend="torch")
    bm = causal_block_mask(q.shape[-2], 16)
    return block_sparse_attention(q, k, v, bm, backend=kind)


@pytest.mark.parametrize("kind", ["torch", pytest.param("triton", marks=needs_triton), "bigbird"])
def test_double_backward_is_refused(kind):
    dtype = torch.float32 if kind == "triton" else torch.float64
    q, k, v = make_qkv(1, 1, 1, 128 if kind == "bigbird" else 32, 16, dtype=dtype)
    q.requires_grad_(True)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(_run(kind, q, k, v).sum(), q, create_graph=True)
    # the first-order gradient is unaffected
    (grad,) = torch.autograd.grad((_run(kind, q, k, v) ** 2).sum(), q)
    assert grad.abs().sum() > 0


def test_double_backward_repro_from_the_review():
    q = torch.randn(1, 1, 8, 4, dtype=torch.float64, requires_grad=True)
    k, v = torch.randn(2, 1, 1, 8, 4, dtype=torch.float64)
    bm = bmk.block_mask_from_dense(torch.ones(8, 8, dtype=torch.bool), block_q=4, block_k=4)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(block_sparse_attention(q, k, v, bm, backend="torch").sum(), q, create_graph=True)


# ----------------------------------------------------------------------------------------
# 2. Swin's windows: swin_window_mask_mod is swin_pattern, for every map, window and shift
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("window", range(1, 8))
def test_swin_window_mask_mod_is_swin_pattern(window):
    """Every map up to 14 x 14, every shift: the pattern of the official roll + region mask."""
    for height in range(1, 15):
        for width in range(1, 15):
            pos = torch.arange(height * width)  # (N,) row-major pixels
            for shift in range(window):
                mod = bmk.swin_window_mask_mod(height, width, window, shift)
                got = mod(None, None, pos.view(-1, 1), pos.view(1, -1))  # (N, N)
                want = swin_pattern(height, width, window, shift)  # (N, N)
                assert torch.equal(got, want), (height, width, window, shift)


def test_swin_default_window_and_shift_at_14x14():
    """Swin's default (M = 7, s = 3) on a 14 x 14 map: the review's 4,680 differing pairs are gone."""
    pos = torch.arange(196)
    got = bmk.swin_window_mask_mod(14, 14, 7, 3)(None, None, pos.view(-1, 1), pos.view(1, -1))
    assert torch.equal(got, swin_pattern(14, 14, 7, 3))


# ----------------------------------------------------------------------------------------
# 3. A NaN key outside a query's pattern does not reach that query
# ----------------------------------------------------------------------------------------
def _nan_key_cases():
    # one pattern: tile (0, 0) is partial, queries 0..2 do not see key 3 (the NaN key), queries 3.. do
    local = torch.zeros(16, 16, dtype=torch.bool)
    local[:, :8] = torch.ones(16, 8, dtype=torch.bool).tril()
    local[8:, 8:] = True
    # per head: head 1 sees no key of tile 0 at all, so tile 0 only pads its list (the NaN key sits in it)
    per_head = torch.zeros(2, 16, 16, dtype=torch.bool)
    per_head[0] = torch.ones(16, 16, dtype=torch.bool).tril()
    per_head[1, :, 4:] = torch.ones(16, 12, dtype=torch.bool).tril(-4)
    return {"partial tile": (local, 1), "padding of a shorter list": (per_head, 2)}


@pytest.mark.parametrize("case", sorted(_nan_key_cases()))
@pytest.mark.parametrize("fused", [True, False])
def test_a_nan_key_does_not_reach_queries_that_mask_it(case, fused):
    mask, H = _nan_key_cases()[case]
    bm = bmk.block_mask_from_dense(mask, block_q=4, block_k=4)
    q, k, v = make_qkv(1, H, H, 16, 8, dtype=torch.float32)
    k[:, :, 3] = float("nan")  # key 3 is NaN
    out, lse = block_sparse_forward_torch(q, k, v, bm, fused=fused)
    ref_out, ref_lse = attention(q.double(), k.double(), v.double(), mask=mask, return_lse=True)
    sees_key_3 = mask.expand(1, H, 16, 16)[..., 3]  # (1, H, N)
    assert torch.isfinite(out[~sees_key_3]).all() and torch.isnan(out[sees_key_3]).all()
    torch.testing.assert_close(out.double(), ref_out, atol=1e-5, rtol=1e-5, equal_nan=True)
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_a_nan_key_through_the_public_function():
    mask = torch.ones(16, 16, dtype=torch.bool).tril()
    bm = bmk.block_mask_from_dense(mask, block_q=8, block_k=8)
    q, k, v = make_qkv(1, 1, 1, 16, 8, dtype=torch.float32)
    k[:, :, 5] = float("nan")
    out = block_sparse_attention(q, k, v, bm, backend="torch")
    assert torch.isfinite(out[0, 0, :5]).all() and torch.isnan(out[0, 0, 5:]).all()
    torch.testing.assert_close(out[0, 0, :5], attention(q, k, v, mask=mask)[0, 0, :5])


# ----------------------------------------------------------------------------------------
# 4. Flags must be real bools
# ----------------------------------------------------------------------------------------
def test_flags_must_be_bools():
    q, k, v = make_qkv(1, 1, 1, 128, 16)
    with pytest.raises(TypeError, match="causal must be a bool, got str 'no'"):
        bigbird_flash_attention(q, k, v, block_size=16, num_random_blocks=1, causal="no")
    bm = causal_block_mask(128, 32)
    for fused in ("no", 1, None):
        with pytest.raises(TypeError, match="fused must be a bool"):
            block_sparse_forward_torch(q, k, v, bm, fused=fused)
    with pytest.raises(TypeError, match="causal must be a bool"):
        bmk.sliding_window_mask_mod(4, causal="no")
    with pytest.raises(TypeError, match="causal must be a bool"):
        bmk.document_mask_mod(torch.zeros(8, dtype=torch.long), causal="no")
    cats = bigbird_block_categories(128, block_size=16, num_random_blocks=1)
    with pytest.raises(TypeError, match="causal must be a bool"):
        bmk.bigbird_mask_mod(cats, 16, causal="no")
    with pytest.raises(TypeError, match="causal must be a bool"):
        bmk.bigbird_block_mask(128, block_size=16, num_random_blocks=1, causal="no")


@needs_triton
def test_triton_count_visits_must_be_a_bool():
    q, k, v = make_qkv(1, 1, 1, 32, 16, dtype=torch.float32)
    bm = causal_block_mask(32, 16)
    with pytest.raises(TypeError, match="count_visits must be a bool"):
        bst.block_sparse_forward(q, k, v, bm, count_visits="yes")


# ----------------------------------------------------------------------------------------
# 5. block_sparse_backward_torch checks lse, out and dout
# ----------------------------------------------------------------------------------------
def test_backward_checks_lse_out_and_dout():
    q, k, v = make_qkv(1, 2, 2, 32, 16)
    bm = causal_block_mask(32, 16)
    out, lse = block_sparse_forward_torch(q, k, v, bm)
    dout = torch.ones_like(out)
    with pytest.raises(ValueError, match=r"lse must have shape \(B, H, N_q\) = \(1, 2, 32\)"):
        block_sparse_backward_torch(q, k, v, out, lse[:, :1], dout, bm)
    with pytest.raises(ValueError, match=r"lse must have shape"):
        block_sparse_backward_torch(q, k, v, out, lse[..., None], dout, bm)
    with pytest.raises(TypeError, match="lse must be a torch.Tensor"):
        block_sparse_backward_torch(q, k, v, out, lse.tolist(), dout, bm)
    with pytest.raises(ValueError, match=r"out must have shape \(B, H, N_q, d_v\)"):
        block_sparse_backward_torch(q, k, v, out[:, :, :16], lse, dout, bm)
    with pytest.raises(ValueError, match=r"dout must have shape \(B, H, N_q, d_v\)"):
        block_sparse_backward_torch(q, k, v, out, lse, dout[..., :8], bm)


# ----------------------------------------------------------------------------------------
# 6. d_v != d: the PyTorch path (fused default and written out), and the Triton kernels refuse
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("fused", [True, False])
def test_value_head_dim_differs_from_query_head_dim(fused):
    N, d, d_v = 48, 16, 8
    q, k, v = make_qkv(2, 4, 2, N, d, d_v)
    mask = torch.rand(N, N, generator=torch.Generator().manual_seed(3)) < 0.4
    mask[:, 0] = True
    bm = bmk.block_mask_from_dense(mask, block_q=16, block_k=16)
    dout = torch.randn(2, 4, N, d_v, dtype=torch.float64)
    out, lse = block_sparse_forward_torch(q, k, v, bm, fused=fused)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    ref_out, ref_lse = attention(*leaves, mask=mask, return_lse=True)
    ref_grads = torch.autograd.grad(ref_out, leaves, dout)
    torch.testing.assert_close(out, ref_out.detach())
    torch.testing.assert_close(lse, ref_lse)
    grads = block_sparse_backward_torch(q, k, v, out, lse, dout, bm)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


def test_value_head_dim_through_the_public_functions():
    N, d, d_v = 128, 16, 24
    q, k, v = make_qkv(1, 2, 2, N, d, d_v)
    bm = causal_block_mask(N, 32)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    out = block_sparse_attention(*leaves, bm)  # default backend: the PyTorch path on a CPU
    grads = torch.autograd.grad((out**2).sum(), leaves)
    ref_leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    ref = attention(*ref_leaves, causal=True)
    ref_grads = torch.autograd.grad((ref**2).sum(), ref_leaves)
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
    big = bigbird_flash_attention(q, k, v, block_size=16, num_random_blocks=1)
    torch.testing.assert_close(big, bigbird_attention(q, k, v, block_size=16, num_random_blocks=1))


@needs_triton
def test_triton_refuses_value_head_dim_other_than_query_head_dim():
    q, k, v = make_qkv(1, 1, 1, 32, 16, 32, dtype=torch.float32)
    bm = causal_block_mask(32, 16)
    message = r"d_v = d.*got d=16, d_v=32.*backend='torch'"
    with pytest.raises(ValueError, match=message):
        block_sparse_attention(q, k, v, bm, backend="triton")
    with pytest.raises(ValueError, match=message):
        bst.block_sparse_forward(q, k, v, bm)
    assert bst.block_sparse_unsupported_reason(q, k, v, bm) is not None
    # "auto" takes the PyTorch path for these inputs, even where Triton runs (its interpreter here)
    torch.testing.assert_close(block_sparse_attention(q, k, v, bm), attention(q, k, v, causal=True))


# ----------------------------------------------------------------------------------------
# 7. The block-mask helpers: clear errors that name the argument
# ----------------------------------------------------------------------------------------
ONES = torch.ones(8, 8, dtype=torch.bool)
IDS = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])


def _from_mod(mod, N=8, B=None, H=None, block=4):
    return bmk.block_mask_from_mask_mod(mod, B, H, N, N, block_q=block, block_k=block)


BAD_BLOCK_MASK_INPUT = {
    # block_mask_from_dense
    "dense: no query": (
        lambda: bmk.block_mask_from_dense(torch.ones(0, 8, dtype=torch.bool)),
        ValueError,
        r"mask must have at least one query and one key",
    ),
    "dense: empty batch": (
        lambda: bmk.block_mask_from_dense(torch.ones(0, 1, 8, 8, dtype=torch.bool)),
        ValueError,
        r"mask must have at least one",
    ),
    "dense: N_q not an int": (
        lambda: bmk.block_mask_from_dense(ONES, N_q=8.0),
        ValueError,
        r"N_q must be a positive int, got 8.0",
    ),
    "dense: N_k a bool": (
        lambda: bmk.block_mask_from_dense(ONES, N_k=True),
        ValueError,
        r"N_k must be a positive int, got True",
    ),
    "dense: block_k a float": (
        lambda: bmk.block_mask_from_dense(ONES, block_k=4.0),
        ValueError,
        r"block_k must be a positive int, got 4.0",
    ),
    # block_mask_from_mask_mod
    "mod: device": (
        lambda: bmk.block_mask_from_mask_mod(bmk.causal_mask_mod(8, 8), None, None, 8, 8, device="gpu0"),
        ValueError,
        r"device must be a torch.device or a device string",
    ),
    "mod: B a bool": (lambda: _from_mod(bmk.causal_mask_mod(8, 8), B=True), ValueError, r"B must be a positive int"),
    # causal_mask_mod
    "causal: N_q 0": (lambda: bmk.causal_mask_mod(0, 8), ValueError, r"N_q must be a positive int, got 0"),
    "causal: N_k a str": (lambda: bmk.causal_mask_mod(8, "8"), ValueError, r"N_k must be a positive int, got '8'"),
    "causal: used for more queries": (
        lambda: _from_mod(bmk.causal_mask_mod(8, 8), N=16),
        ValueError,
        r"causal_mask_mod was made for N_q=8, N_k=8, but the block mask is for N_q=16, N_k=16",
    ),
    # sliding_window_mask_mod
    "sliding: negative window": (lambda: bmk.sliding_window_mask_mod(-1), ValueError, r"window must be"),
    "sliding: float window": (lambda: bmk.sliding_window_mask_mod(2.5), ValueError, r"window must be"),
    # document_mask_mod
    "document: no token": (
        lambda: bmk.document_mask_mod(torch.zeros(0, dtype=torch.long)),
        ValueError,
        r"document_ids must have at least one token",
    ),
    "document: float ids": (lambda: bmk.document_mask_mod(IDS.float()), TypeError, r"document_ids must be an integer"),
    "document: too short": (
        lambda: _from_mod(bmk.document_mask_mod(IDS[:4])),
        ValueError,
        r"document_ids has 4 tokens, but the block mask is for N_q=8, N_k=8",
    ),
    "document: rows but B=None": (
        lambda: _from_mod(bmk.document_mask_mod(IDS.expand(3, 8))),
        ValueError,
        r"document_ids has 3 rows .* B=3",
    ),
    "document: rows != B": (
        lambda: _from_mod(bmk.document_mask_mod(IDS.expand(3, 8)), B=2),
        ValueError,
        r"document_ids has 3 rows .* B=3",
    ),
    # swin_window_mask_mod
    "swin: negative shift": (lambda: bmk.swin_window_mask_mod(8, 8, 4, -1), ValueError, r"shift must be an int in"),
    "swin: shift a bool": (lambda: bmk.swin_window_mask_mod(8, 8, 4, True), ValueError, r"shift must be an int in"),
    "swin: window 0": (lambda: bmk.swin_window_mask_mod(8, 8, 0), ValueError, r"window_size must be a positive int"),
    "swin: more tokens than pixels": (
        lambda: _from_mod(bmk.swin_window_mask_mod(2, 2, 2), N=8),
        ValueError,
        r"swin_window_mask_mod was made for a 2 x 2 map \(4 tokens\), but the block mask is for N_q=8",
    ),
    # bigbird_mask_mod
    "bigbird mod: a list": (lambda: bmk.bigbird_mask_mod([[[1]]], 4), TypeError, r"categories must be a torch.Tensor"),
    "bigbird mod: 2 dims": (
        lambda: bmk.bigbird_mask_mod(torch.ones(2, 2, dtype=torch.int8), 4),
        ValueError,
        r"categories must have shape \(H, nb, nb\)",
    ),
    "bigbird mod: not square": (
        lambda: bmk.bigbird_mask_mod(torch.ones(1, 2, 3, dtype=torch.int8), 4),
        ValueError,
        r"categories must have shape \(H, nb, nb\)",
    ),
    "bigbird mod: float table": (
        lambda: bmk.bigbird_mask_mod(torch.ones(1, 2, 2), 4),
        TypeError,
        r"categories must be an integer",
    ),
    "bigbird mod: block_size 0": (
        lambda: bmk.bigbird_mask_mod(torch.ones(1, 2, 2, dtype=torch.int8), 0),
        ValueError,
        r"block_size must be a positive int",
    ),
    "bigbird mod: table too small": (
        lambda: _from_mod(bmk.bigbird_mask_mod(torch.ones(1, 2, 2, dtype=torch.int8), 2)),
        ValueError,
        r"categories covers 2 blocks of 2 tokens \(3 to 4 tokens\), but the block mask is for N_q=8",
    ),
    "bigbird mod: heads but H=None": (
        lambda: _from_mod(bmk.bigbird_mask_mod(torch.ones(2, 2, 2, dtype=torch.int8), 4)),
        ValueError,
        r"categories has 2 heads .* H=2",
    ),
    "bigbird mod: heads != H": (
        lambda: _from_mod(bmk.bigbird_mask_mod(torch.ones(2, 2, 2, dtype=torch.int8), 4), H=3),
        ValueError,
        r"categories has 2 heads .* H=2",
    ),
    # bigbird_block_mask
    "bigbird: block_q 0": (
        lambda: bmk.bigbird_block_mask(128, block_size=16, num_random_blocks=1, block_q=0),
        ValueError,
        r"block_q must be a positive int",
    ),
    "bigbird: block_k a float": (
        lambda: bmk.bigbird_block_mask(128, block_size=16, num_random_blocks=1, block_k=8.0),
        ValueError,
        r"block_k must be a positive int",
    ),
    "bigbird: N a float": (
        lambda: bmk.bigbird_block_mask(128.0, block_size=16, num_random_blocks=1),
        ValueError,
        r"N must be a positive int",
    ),
    # BlockMask
    "BlockMask.to: a bad device": (
        lambda: bmk.block_mask_from_dense(ONES, block_q=4, block_k=4).to("gpu0"),
        ValueError,
        r"device must be a torch.device or a device string",
    ),
    "BlockMask: by hand, wrong kinds": (
        lambda: _edited(kinds=torch.zeros(2, 2, dtype=torch.int8)),
        ValueError,
        r"kinds must have shape \(B_m, H_m, T_q, T_k\)",
    ),
    "BlockMask: by hand, wrong tiles": (
        lambda: _edited(partial_tiles=torch.ones(1, 4, 8, dtype=torch.bool)),
        ValueError,
        r"partial_tiles must have shape \(P, block_q, block_k\) = \(P, 4, 4\)",
    ),
    "BlockMask: by hand, wrong N_q": (
        lambda: _edited(N_q=20),
        ValueError,
        r"N_q=20 needs T_q=5 query tiles of block_q=4, but kinds has 2",
    ),
    "BlockMask: by hand, int64 lists": (
        lambda: _edited(kv_indices=torch.zeros(1, 1, 2, 2, dtype=torch.long)),
        TypeError,
        r"kv_indices must be an int32 tensor",
    ),
}


def _edited(**fields):
    """A BlockMask built by hand from a good one with some fields replaced."""
    good = bmk.block_mask_from_dense(ONES.tril(), block_q=4, block_k=4)
    values = {name: getattr(good, name) for name in good.__dataclass_fields__}
    values.update(fields)
    return bmk.BlockMask(**values)


@pytest.mark.parametrize("case", sorted(BAD_BLOCK_MASK_INPUT))
def test_block_mask_helpers_refuse_bad_input(case):
    call, error, message = BAD_BLOCK_MASK_INPUT[case]
    with pytest.raises(error, match=message):
        call()


def test_good_input_still_builds():
    """The checks refuse nothing that was right: per-batch documents, per-head BigBird, tiles larger than N."""
    docs = _from_mod(bmk.document_mask_mod(torch.stack([IDS, IDS.flip(0)])), B=2)
    assert docs.shape == (2, 1, 8, 8)
    cats = bigbird_block_categories(128, block_size=16, num_random_blocks=1, num_heads=2)
    heads = _from_mod(bmk.bigbird_mask_mod(cats, 16), N=128, H=2, block=32)
    built = bmk.bigbird_block_mask(128, block_size=16, num_random_blocks=1, num_heads=2, block_q=32, block_k=32)
    assert torch.equal(heads.to_dense(), built.to_dense())
    big_tile = bmk.block_mask_from_dense(ONES.tril(), block_q=16, block_k=16)
    assert torch.equal(big_tile.to_dense()[0, 0], ONES.tril())
    assert bmk.block_mask_from_dense(ONES, block_q=4, block_k=4).to(torch.device("cpu")).N_q == 8
