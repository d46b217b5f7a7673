"""Tests of attnlib.optim.block_mask and attnlib.optim.block_sparse (PyTorch tiles and Triton kernels).

Every pattern is checked against ``attnlib.reference.attention(..., mask=pattern)``: output, logsumexp
and gradients, float32 within 1e-5, on both paths. The Triton kernels run in Triton's interpreter
without a GPU (conftest.py sets TRITON_INTERPRET=1), so sizes stay small (N <= 256); the compile
test builds them for sm75/sm80/sm90 in a process without the interpreter.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlib.optim import block_mask as bmk
from attnlib.optim.block_sparse import (
    bigbird_flash_attention,
    block_sparse_attention,
    block_sparse_backward_torch,
    block_sparse_forward_torch,
)
from attnlib.reference import attention, causal_mask
from attnlib.sparse.bigbird import bigbird_attention, bigbird_pattern

REPO = Path(__file__).resolve().parent.parent
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETING or not torch.cuda.is_available() else "cuda"
TOL = dict(atol=1e-5, rtol=1e-5)

try:
    from attnlib.optim import block_sparse_triton as bst
except ImportError:  # triton is not installed: the Triton cases skip
    bst = None


def make_qkv(B, H, H_kv, N_q, N_k, d, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, N_q, d, generator=gen)  # (B, H, N_q, d)
    k = torch.randn(B, H_kv, N_k, d, generator=gen)  # (B, H_kv, N_k, d)
    v = torch.randn(B, H_kv, N_k, d, generator=gen)  # (B, H_kv, N_k, d)
    return [x.to(device) for x in (q, k, v)]


def reference(q, k, v, mask, dout):
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    out, lse = attention(*leaves, mask=mask, return_lse=True)
    grads = torch.autograd.grad(out, leaves, dout)
    return out.detach(), lse, grads


def assert_matches(out, lse, grads, ref):
    ref_out, ref_lse, ref_grads = ref
    torch.testing.assert_close(out, ref_out, **TOL)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(ref_lse)), "lse: -inf rows differ"
    finite = torch.isfinite(ref_lse)
    torch.testing.assert_close(lse[finite].float(), ref_lse[finite].float(), **TOL)
    for name, got, want in zip(("dq", "dk", "dv"), grads, ref_grads):
        assert torch.isfinite(got).all(), name
        assert (got - want).abs().max() <= TOL["atol"] + TOL["rtol"] * want.abs().max(), name


def check_both_paths(B, H, H_kv, N_q, N_k, d, block_mask, seed=0, triton=True):
    """PyTorch path always; Triton kernels (interpreter or GPU) when triton is installed."""
    q, k, v = make_qkv(B, H, H_kv, N_q, N_k, d, seed)
    mask = block_mask.to_dense()  # (B_m, H_m, N_q, N_k), the oracle (small sizes only)
    dout = torch.randn(B, H, N_q, d, generator=torch.Generator().manual_seed(seed + 1))
    ref = reference(q, k, v, mask, dout)
    for fused in (True, False):  # PyTorch's fused kernel per wide tile, or the softmax written out
        out, lse = block_sparse_forward_torch(q, k, v, block_mask, fused=fused)
        grads = block_sparse_backward_torch(q, k, v, out, lse, dout, block_mask)
        assert_matches(out, lse, grads, ref)
    if triton and bst is not None:
        dev = [x.to(DEVICE) for x in (q, k, v, dout)]
        bm = block_mask.to(DEVICE)
        out, lse = bst.block_sparse_forward(*dev[:3], bm)
        grads = bst.block_sparse_backward(dev[3], *dev[:3], out, lse, bm)
        assert_matches(out.cpu(), lse.cpu(), [g.cpu() for g in grads], ref)


# ----------------------------------------------------------------------------------------
# Building block masks
# ----------------------------------------------------------------------------------------
def test_tile_kinds_of_a_causal_mask():
    """4 x 4 tiles of 16 on a causal 64 x 64 mask: diagonal partial, below full, above empty."""
    bm = bmk.block_mask_from_mask_mod(bmk.causal_mask_mod(64, 64), None, None, 64, 64, block_q=16, block_k=16)
    rows = torch.arange(4)[:, None]
    cols = torch.arange(4)[None, :]
    expected = torch.where(cols < rows, bmk.FULL, torch.where(cols == rows, bmk.PARTIAL, bmk.EMPTY))
    assert torch.equal(bm.kinds[0, 0], expected.to(torch.int8))
    assert bm.tile_counts() == {"empty": 6, "partial": 4, "full": 6}
    assert bm.kv_num_blocks[0, 0].tolist() == [1, 1, 1, 1] and bm.kv_indices[0, 0, :, 0].tolist() == [0, 1, 2, 3]
    assert bm.full_kv_num_blocks[0, 0].tolist() == [0, 1, 2, 3]
    assert bm.full_kv_indices[0, 0, 3, :3].tolist() == [0, 1, 2]
    # transposed: key tile j is seen in full by query tiles j+1..3
    assert bm.full_q_num_blocks[0, 0].tolist() == [3, 2, 1, 0]
    assert bm.full_q_indices[0, 0, 0, :3].tolist() == [1, 2, 3]
    assert bm.partial_tiles.shape == (4, 16, 16) and torch.equal(bm.partial_tiles[0], torch.ones(16, 16).tril().bool())


def test_ragged_tiles_are_partial_and_round_trip():
    """N not a multiple of the tile: the last tiles are partial even where every pair in range is allowed."""
    mask = torch.ones(50, 40, dtype=torch.bool)
    bm = bmk.block_mask_from_dense(mask, block_q=32, block_k=16)
    assert bm.kinds[0, 0].tolist() == [[2, 2, 1], [1, 1, 1]]
    assert torch.equal(bm.to_dense()[0, 0], mask)


PATTERNS = {
    "causal": lambda Nq, Nk: bmk.causal_mask_mod(Nq, Nk),
    "sliding": lambda Nq, Nk: bmk.sliding_window_mask_mod(20),
    "document": lambda Nq, Nk: bmk.document_mask_mod(torch.arange(max(Nq, Nk)) * 3 // max(Nq, Nk), causal=True),
    "swin": lambda Nq, Nk: bmk.swin_window_mask_mod(10, 12, 4, shift=2),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_mask_mod_and_dense_give_the_same_block_mask(name):
    N_q, N_k = 120, 120
    mod = PATTERNS[name](N_q, N_k)
    from_mod = bmk.block_mask_from_mask_mod(mod, None, None, N_q, N_k, block_q=32, block_k=16)
    q_idx, kv_idx = torch.arange(N_q).view(1, 1, -1, 1), torch.arange(N_k).view(1, 1, 1, -1)
    dense = mod(torch.zeros(1, 1, 1, 1, dtype=torch.long), torch.zeros(1, 1, 1, 1, dtype=torch.long), q_idx, kv_idx)
    from_dense = bmk.block_mask_from_dense(dense.expand(1, 1, N_q, N_k), block_q=32, block_k=16)
    for field in from_mod.__dataclass_fields__:
        a, b = getattr(from_mod, field), getattr(from_dense, field)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, field
    assert torch.equal(from_mod.to_dense(), dense.expand(1, 1, N_q, N_k))


def test_swin_windows_group_pixels_of_one_window():
    mod = bmk.swin_window_mask_mod(8, 8, 4)  # four 4 x 4 windows
    pos = torch.arange(64)
    allowed = mod(None, None, pos.view(-1, 1), pos.view(1, -1))  # (64, 64)
    assert allowed.sum(dim=1).eq(16).all()
    assert allowed[0, 3] and allowed[0, 3 * 8 + 3] and not allowed[0, 4] and not allowed[0, 4 * 8]
    shifted = bmk.swin_window_mask_mod(8, 8, 4, shift=2)(None, None, pos.view(-1, 1), pos.view(1, -1))
    assert shifted[0, 9] and not shifted[0, 2]  # windows now start at row/column 2: pixel (0,0) is in a 2x2 corner
    assert shifted[0].sum() == 4


def test_mask_mod_is_evaluated_tile_row_by_tile_row(record_shapes):
    """No N_q x N_k tensor while building from a mask_mod: the largest is one row of tiles or the
    store of partial tiles (about 3 per row of tiles here)."""
    N = 512
    with record_shapes() as recorder:
        bm = bmk.block_mask_from_mask_mod(bmk.sliding_window_mask_mod(32), None, None, N, N, block_q=32, block_k=32)
    largest = max(torch.Size(s).numel() for _, s in recorder.shapes)
    assert largest <= max(32 * N, bm.partial_tiles.numel()) < N * N // 4, largest


@pytest.mark.parametrize("causal", [False, True])
def test_bigbird_block_mask_is_bigbirds_pattern(causal):
    bm = bmk.bigbird_block_mask(500, block_size=64, num_random_blocks=2, num_heads=3, causal=causal, seed=4)
    pattern = bigbird_pattern(500, block_size=64, num_random_blocks=2, num_heads=3, causal=causal, seed=4)
    assert torch.equal(bm.to_dense()[0], pattern)
    if not causal:  # blocks = tiles: only the ragged last row/column of tiles needs element masks
        assert (bm.kinds[0, :, :-1, :-1] != bmk.PARTIAL).all()


# ----------------------------------------------------------------------------------------
# Attention against the reference, both paths
# ----------------------------------------------------------------------------------------
CASES = [
    # (B, H, H_kv, N_q, N_k, d, pattern, block_q, block_k)
    pytest.param(2, 2, 1, 100, 130, 16, "causal", 32, 16, id="causal-ragged-Nq<Nk-MQA"),
    pytest.param(1, 4, 2, 130, 50, 16, "causal", 32, 16, id="causal-Nq>Nk-empty-rows-GQA"),
    pytest.param(1, 2, 2, 120, 120, 32, "sliding", 32, 32, id="sliding-window"),
    pytest.param(1, 2, 1, 120, 120, 16, "swin", 16, 32, id="swin-windows"),
    pytest.param(2, 2, 2, 96, 96, 16, "document", 32, 32, id="documents"),
]


@pytest.mark.parametrize("B,H,H_kv,N_q,N_k,d,name,block_q,block_k", CASES)
def test_patterns_match_reference(B, H, H_kv, N_q, N_k, d, name, block_q, block_k):
    bm = bmk.block_mask_from_mask_mod(PATTERNS[name](N_q, N_k), None, None, N_q, N_k, block_q=block_q,
                                      block_k=block_k)  # fmt: skip
    check_both_paths(B, H, H_kv, N_q, N_k, d, bm)


def test_bigbird_per_head_pattern_matches_reference():
    bm = bmk.bigbird_block_mask(200, block_size=32, num_random_blocks=1, num_heads=4, seed=1)
    assert bm.kinds.shape[:2] == (1, 4)
    check_both_paths(1, 4, 2, 200, 200, 16, bm)


def test_per_batch_and_head_dense_mask():
    """A (B, H, N_q, N_k) random mask: lists of different lengths per batch element and head."""
    mask = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(0)) < 0.2
    mask[0, 0, :5] = False  # fully masked rows
    bm = bmk.block_mask_from_dense(mask, block_q=32, block_k=32)
    check_both_paths(2, 3, 3, 70, 90, 16, bm)


def test_fully_masked_rows_give_zero():
    mask = torch.ones(64, 64, dtype=torch.bool)
    mask[10:40] = False  # rows 10..39 see nothing: tile 0 partial, tile 1 (rows 32..63) partial
    bm = bmk.block_mask_from_dense(mask, block_q=32, block_k=32)
    q, k, v = make_qkv(1, 2, 2, 64, 64, 16)
    for fused in (True, False):
        out, lse = block_sparse_forward_torch(q, k, v, bm, fused=fused)
        assert torch.equal(out[:, :, 10:40], torch.zeros_like(out[:, :, 10:40]))
        assert torch.isneginf(lse[:, :, 10:40]).all() and torch.isfinite(lse[:, :, :10]).all()
    check_both_paths(1, 2, 2, 64, 64, 16, bm)


@settings(max_examples=5, deadline=None)
@given(
    B=st.integers(1, 2),
    H_kv=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2]),
    N_q=st.integers(1, 80),
    N_k=st.integers(1, 80),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    per_head=st.booleans(),
    blocks=st.sampled_from([(16, 16), (16, 32), (32, 16)]),
    seed=st.integers(0, 2**16),
)
def test_random_shapes_and_masks(B, H_kv, group, N_q, N_k, density, per_head, blocks, seed):
    """Random shapes (ragged, N_q != N_k, GQA) and random masks, PyTorch path against the reference."""
    H = H_kv * group
    gen = torch.Generator().manual_seed(seed)
    shape = (B, H, N_q, N_k) if per_head else (N_q, N_k)
    mask = torch.rand(shape, generator=gen) < density
    bm = bmk.block_mask_from_dense(mask, block_q=blocks[0], block_k=blocks[1])
    check_both_paths(B, H, H_kv, N_q, N_k, 16, bm, seed, triton=False)


def test_public_function_autograd_and_bigbird_row():
    """block_sparse_attention through autograd; the registry's bigbird_flash equals BigBird's gather."""
    q, k, v = make_qkv(1, 2, 2, 320, 320, 16)
    out = bigbird_flash_attention(q, k, v, block_size=32, num_random_blocks=2, backend="torch")
    torch.testing.assert_close(out, bigbird_attention(q, k, v, block_size=32, num_random_blocks=2), **TOL)
    bm = bmk.block_mask_from_mask_mod(bmk.causal_mask_mod(320, 320), None, None, 320, 320, block_q=64, block_k=64)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    block_sparse_attention(*leaves, bm, backend="torch").sum().backward()
    ref_leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    attention(*ref_leaves, mask=causal_mask(320, 320)).sum().backward()
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, **TOL)


def test_pytorch_path_builds_no_n_by_n_tensor(record_shapes, monkeypatch):
    """Forward and backward: the largest tensor is a chunk of gathered tiles (here capped at 256 KiB)."""
    from attnlib.optim import block_sparse

    monkeypatch.setattr(block_sparse, "_CHUNK_BYTES", 256 * 1024)
    N = 1024
    bm = bmk.bigbird_block_mask(N, block_size=64, num_random_blocks=2, num_heads=2)
    q, k, v = (x.requires_grad_(True) for x in make_qkv(1, 2, 2, N, N, 16))
    with record_shapes() as recorder:
        block_sparse_attention(q, k, v, bm, backend="torch").sum().backward()
    largest = max(torch.Size(s).numel() for _, s in recorder.shapes)
    assert largest < N * N // 2, largest


# ----------------------------------------------------------------------------------------
# Tiles visited: exactly the block mask's lists
# ----------------------------------------------------------------------------------------
def test_pytorch_path_never_reads_empty_tiles():
    """Keys and values of the tiles that are empty for every query tile are NaN: the result is unchanged."""
    mask = torch.zeros(128, 128, dtype=torch.bool)
    mask[:, :32] = True
    mask[64:, 96:] = True  # key tiles 1 and 2 (keys 32..95) are empty for every query tile
    bm = bmk.block_mask_from_dense(mask, block_q=32, block_k=32)
    q, k, v = make_qkv(1, 2, 2, 128, 128, 16)
    clean = [block_sparse_forward_torch(q, k, v, bm, fused=fused)[0] for fused in (True, False)]
    k[:, :, 32:96], v[:, :, 32:96] = float("nan"), float("nan")
    poisoned = [block_sparse_forward_torch(q, k, v, bm, fused=fused)[0] for fused in (True, False)]
    assert all(torch.equal(a, b) for a, b in zip(poisoned, clean))


@pytest.mark.skipif(bst is None, reason="triton is not installed")
def test_triton_kernels_visit_exactly_the_listed_tiles():
    """The kernels count the loads of each tile (COUNT_VISITS): each partial or full tile once, no empty tile."""
    bm = bmk.bigbird_block_mask(192, block_size=32, num_random_blocks=1, num_heads=2, causal=True, seed=2)
    B, H = 2, 2
    q, k, v = make_qkv(B, H, 1, 192, 192, 16, device=DEVICE)
    bm = bm.to(DEVICE)
    out, lse, visits = bst.block_sparse_forward(q, k, v, bm, count_visits=True)
    dq, dk, dv, (visits_kv, visits_q) = bst.block_sparse_backward(torch.ones_like(out), q, k, v, out, lse, bm,
                                                                  count_visits=True)  # fmt: skip
    listed = (bm.kinds != bmk.EMPTY).int().expand(B, H, -1, -1).reshape(B * H, *bm.num_tiles)  # (B H, T_q, T_k)
    assert 0 < int(listed.sum()) < listed.numel()  # some tiles are empty
    assert torch.equal(visits.cpu(), listed.cpu())
    assert torch.equal(visits_q.cpu(), listed.cpu())
    assert torch.equal(visits_kv.cpu(), listed.transpose(1, 2).cpu())


# ----------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------
def test_bad_input():
    q, k, v = make_qkv(1, 2, 2, 64, 64, 16)
    bm = bmk.block_mask_from_mask_mod(bmk.causal_mask_mod(64, 64), None, None, 64, 64, block_q=32, block_k=32)
    other = bmk.block_mask_from_mask_mod(bmk.causal_mask_mod(96, 96), None, None, 96, 96, block_q=32, block_k=32)
    with pytest.raises(ValueError, match="block_mask was built for N_q=96, N_k=96"):
        block_sparse_attention(q, k, v, other)
    per_head = bmk.block_mask_from_dense(torch.ones(3, 64, 64, dtype=torch.bool), block_q=32, block_k=32)
    with pytest.raises(ValueError, match=r"block_mask has batch and head dims \(B_m, H_m\) = \(1, 3\)"):
        block_sparse_attention(q, k, v, per_head)
    with pytest.raises(TypeError, match="block_mask must be an attnlib.optim.block_mask.BlockMask"):
        block_sparse_attention(q, k, v, causal_mask(64, 64))
    with pytest.raises(ValueError, match="backend must be one of"):
        block_sparse_attention(q, k, v, bm, backend="cuda")
    with pytest.raises(ValueError, match=r"mask must have shape \(\.\.\., N_q, N_k\) = \(\.\.\., 64, 64\)"):
        bmk.block_mask_from_dense(torch.ones(64, 63, dtype=torch.bool), N_q=64, N_k=64)
    with pytest.raises(ValueError, match="mask must have shape"):
        bmk.block_mask_from_dense(torch.ones(64, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must have dtype torch.bool"):
        bmk.block_mask_from_dense(torch.ones(64, 64))
    with pytest.raises(TypeError, match="mask_mod must return a boolean tensor"):
        bmk.block_mask_from_mask_mod(lambda b, h, q_idx, kv_idx: (q_idx - kv_idx).float(), None, None, 64, 64)
    with pytest.raises(ValueError, match="mask_mod must return a tensor broadcastable to"):
        bmk.block_mask_from_mask_mod(lambda b, h, q_idx, kv_idx: torch.ones(3, 5, dtype=torch.bool), None, None, 64, 64)
    with pytest.raises(TypeError, match="mask_mod must be callable"):
        bmk.block_mask_from_mask_mod("causal", None, None, 64, 64)
    with pytest.raises(ValueError, match="block_q must be a positive int"):
        bmk.block_mask_from_dense(torch.ones(8, 8, dtype=torch.bool), block_q=0)
    with pytest.raises(ValueError, match="shift must be an int in"):
        bmk.swin_window_mask_mod(8, 8, 4, shift=4)


@pytest.mark.skipif(bst is None, reason="triton is not installed")
def test_triton_bad_input():
    q, k, v = make_qkv(1, 2, 2, 64, 64, 16, device=DEVICE)
    bm = bmk.block_mask_from_mask_mod(bmk.causal_mask_mod(64, 64), None, None, 64, 64, block_q=32, block_k=32)
    bm = bm.to(DEVICE)
    with pytest.raises(ValueError, match="block_mask was built with block_q=32, but the kernel needs block_q=64"):
        bst.block_sparse_forward(q, k, v, bm, block_m=64)
    small = bmk.block_mask_from_mask_mod(bmk.causal_mask_mod(64, 64), None, None, 64, 64, block_q=8, block_k=32)
    with pytest.raises(ValueError, match="block_mask.block_q must be a power of two >= 16"):
        bst.block_sparse_forward(q, k, v, small.to(DEVICE))
    other = bmk.block_mask_from_mask_mod(bmk.causal_mask_mod(32, 64), None, None, 32, 64, block_q=32, block_k=32)
    with pytest.raises(ValueError, match="block_mask was built for N_q=32, N_k=64"):
        bst.block_sparse_attention_triton(q, k, v, other.to(DEVICE))
    assert bst.block_sparse_unsupported_reason(q, k, v, small.to(DEVICE)) is not None
    assert bst.block_sparse_unsupported_reason(q, k, v, bm) is None


# ----------------------------------------------------------------------------------------
# Compiling for real GPUs, without one
# ----------------------------------------------------------------------------------------
_COMPILE_SCRIPT = """
import json, sys, torch
from attnlib.optim.block_sparse_triton import compile_block_sparse_kernels
for cc, d, block in json.loads(sys.argv[1]):
    try:
        for name, k in compile_block_sparse_kernels(cc, d, torch.float16, block, block).items():
            print(json.dumps({"case": [cc, d, block], "kernel": name, "shared": k.metadata.shared,
                              "mma": "mma" in k.asm["ptx"], "cubin": len(k.asm["cubin"])}), flush=True)
    except Exception as e:
        print(json.dumps({"case": [cc, d, block], "error": f"{type(e).__name__}: {e}"[:3000]}), flush=True)
"""
SHARED_LIMIT = {75: 64 * 1024, 80: 99 * 1024, 90: 227 * 1024}
# (capability, head dim, tile): the Colab T4, an A100-class GPU, and Hopper with d = 128 (the GPU benchmark's case)
COMPILE_CASES = [[[75, 64, 64]], [[80, 64, 64], [90, 128, 128]]]


def test_block_sparse_kernels_compile_for_sm75_sm80_sm90(tmp_path):
    if bst is None:
        pytest.skip("triton is not installed")
    import triton

    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("ptxas (bundled with the triton wheel) is missing")
    environ = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environ["TRITON_CACHE_DIR"] = str(tmp_path)
    environ["PYTHONPATH"] = os.pathsep.join([str(REPO), environ.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen([sys.executable, "-c", _COMPILE_SCRIPT, json.dumps(cases)], cwd=REPO, env=environ,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cases in COMPILE_CASES
    ]  # fmt: skip
    infos = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
        infos += [json.loads(line) for line in stdout.splitlines()]
    assert not [i for i in infos if "error" in i], [i["error"] for i in infos if "error" in i]
    assert len(infos) == 3 * 3  # three cases, three kernels each
    for info in infos:
        cc = info["case"][0]
        assert info["cubin"] > 0 and info["shared"] <= SHARED_LIMIT[cc], info
        assert info["mma"] == (cc >= 80), info  # tensor cores from sm80 on (Triton emits none on sm75)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-12), (torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("fused", [True, False])
def test_pytorch_path_dtypes(dtype, atol, fused):
    """float64 is exact; half precision is computed in float32 and rounded once (partial and full tiles)."""
    gen = torch.Generator().manual_seed(5)
    mask = torch.rand(70, 90, generator=gen) < 0.3
    mask[:, :32] = True  # some full tiles too
    bm = bmk.block_mask_from_dense(mask, block_q=32, block_k=32)
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen).to(dtype) for n in (70, 90, 90))
    out, lse = block_sparse_forward_torch(q, k, v, bm, fused=fused)
    ref_out, ref_lse = attention(q.double(), k.double(), v.double(), mask=mask, return_lse=True)
    assert out.dtype == dtype
    assert (out.double() - ref_out).abs().max() <= atol
    assert (lse.double() - ref_lse).abs().max() <= atol


@pytest.mark.parametrize("heads, head_index", [(2, [0, 1]), (2, [0, 0, 1, 1])])
def test_a_list_of_every_tile_is_read_as_a_view_not_gathered(heads, head_index):
    """A query tile that sees every key tile in order (BigBird's global rows, a dense row) reads the
    sequence itself: the wide tile is a view (stride 0 across query tiles), equal to the gather."""
    from attnlib.optim.block_sparse import _gather

    tiles = torch.randn(2, heads, 5, 4, 3)  # (B, heads, T, t, c)
    head_index = torch.tensor(head_index)
    every_tile = torch.arange(5).expand(1, len(head_index), 3, 5)  # (B_m, H_m, M, L = T)
    wide = _gather(tiles, every_tile, head_index)  # (B, H, M, T * t, c)
    assert wide.shape == (2, len(head_index), 3, 20, 3) and wide.stride(2) == 0
    by_hand = tiles[:, head_index].flatten(2, 3)[:, :, None].expand_as(wide)
    assert torch.equal(wide, by_hand)
    if len(head_index) == heads:
        assert wide.data_ptr() == tiles.data_ptr()  # no copy at all without grouped heads
    one_missing = every_tile.clone()
    one_missing[..., -1] = 3  # not every tile in order: the gather path
    assert _gather(tiles, one_missing, head_index).stride(2) != 0


def test_dense_rows_through_the_view_path_match_reference():
    """Every list holds every key tile (full tiles only): out, lse and gradients equal the reference."""
    N, H = 128, 2
    bm = bmk.block_mask_from_dense(torch.ones(1, 1, N, N, dtype=torch.bool), block_q=32, block_k=32)
    assert bool((bm.full_kv_num_blocks == N // 32).all())
    q, k, v = (x.requires_grad_(True) for x in make_qkv(1, H, H, N, N, 16))
    out, lse = block_sparse_forward_torch(q.detach(), k.detach(), v.detach(), bm)
    ref_out, ref_lse = attention(q, k, v, return_lse=True)
    torch.testing.assert_close(out, ref_out.detach(), **TOL)
    torch.testing.assert_close(lse, ref_lse.detach(), **TOL)
    block_sparse_attention(q, k, v, bm, backend="torch").sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    attention(q, k, v).sum().backward()
    for got, want in zip(grads, (q.grad, k.grad, v.grad)):
        torch.testing.assert_close(got, want, **TOL)


def _gpu_benchmark_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("block_sparse_gpu", REPO / "benchmarks" / "block_sparse_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_script_runs_end_to_end_on_cpu(tmp_path, capsys):
    # The GPU script's code path, in Triton's interpreter: checks, timing loop, the CSV it writes.
    if bst is None or not INTERPRETING:
        pytest.skip("needs triton in its interpreter (on a GPU, run the script itself)")
    gpu_benchmark = _gpu_benchmark_module()
    assert gpu_benchmark.main(["--smoke", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert [line.split(":")[1].split()[0] for line in printed.splitlines() if line.startswith("check")] == ["ok"] * 3
    with open(tmp_path / gpu_benchmark.CSV_NAME) as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["pattern"], row["method"]) for row in rows] == [
        (pattern, method) for pattern in ("causal", "sliding", "bigbird") for method in ("triton", "flex_compiled")
    ]
    assert list(rows[0]) == list(gpu_benchmark.CSV_COLUMNS)
    for row in rows:
        assert float(row["forward_ms"]) > 0 and 0 < float(row["visited"]) <= 1
        # FlexAttention refuses the backward on a CPU; the Triton kernels' backward ran and was timed
        assert (row["backward_ms"] == "nan") == (row["method"] == "flex_compiled")


def test_gpu_benchmark_does_not_time_a_pattern_that_fails_its_check(tmp_path, monkeypatch, capsys):
    if bst is None or not INTERPRETING:
        pytest.skip("needs triton in its interpreter (on a GPU, run the script itself)")
    gpu_benchmark = _gpu_benchmark_module()
    methods = gpu_benchmark.methods

    def off_by_one_percent(*args):
        calls = methods(*args)
        triton = calls["triton"]
        return {**calls, "triton": lambda q, k, v: 1.01 * triton(q, k, v)}

    monkeypatch.setattr(gpu_benchmark, "methods", off_by_one_percent)
    monkeypatch.setattr(gpu_benchmark, "PATTERNS", ("causal",))
    assert gpu_benchmark.main(["--smoke", "--out", str(tmp_path)]) == 1
    assert "check causal   at N = 128: FAILED" in capsys.readouterr().out
    assert not (tmp_path / gpu_benchmark.CSV_NAME).exists()  # nothing was timed
