"""GPU benchmark of chapter 14: the block-sparse Triton kernels against compiled FlexAttention, same block masks.

For each pattern (causal, causal sliding window of N/8, BigBird with 3 random blocks per head)
and each N, times the forward and the forward+backward of
``attnlib.optim.block_sparse_triton.block_sparse_attention_triton`` and of ``torch.compile(flex_attention)``
given the *same* tile lists (``BlockMask.from_kv_blocks``, with the pattern's ``mask_mod`` for
the partial tiles). Setting of the issue: B = 1, H = 16, d = 128, float16, tiles of 128 x 128
(FlexAttention's default), N = 4K, 8K, 16K. Targets: at N >= 4K and d = 128, at least 0.9x
FlexAttention's speed in the forward and 0.8x in the backward.

Before timing, each pattern is checked at N = 1024: the output and the three gradients of both
methods are compared with the dense reference (``reference.attention`` in float64 with the
pattern's dense mask), and the Triton kernel's largest error must be at most twice
FlexAttention's (or below 1e-3). A pattern that fails is reported and not timed, and the script
exits with status 1.

Times are the median of Triton's ``do_bench`` (CUDA events, the L2 cache flushed between
calls); ``backward_ms`` is the forward+backward time minus the forward time. Each finished row
is written to ``OUT/gpu_block_sparse.csv`` at once (columns ``CSV_COLUMNS``), so a run stopped
by ``--max-minutes`` or a time limit keeps what it measured.

Usage on a GPU (from the repository root)::

    python benchmarks/block_sparse_gpu.py --out benchmarks/results

Smoke test of the whole script on a CPU (Triton's interpreter, N = 128, FlexAttention eager and
forward only, since it refuses the backward on a CPU; the times mean nothing)::

    TRITON_INTERPRET=1 python benchmarks/block_sparse_gpu.py --smoke --out /tmp/smoke

Chapter: "Block-sparse FlashAttention" (chapters/*/14_block_sparse_flash.ipynb).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib
import math
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from attnlib import reference  # noqa: E402
from attnlib.optim import block_mask as bmk  # noqa: E402

CSV_NAME = "gpu_block_sparse.csv"
CSV_COLUMNS = ("date", "gpu", "pattern", "method", "N", "B", "H", "d", "block", "dtype", "visited",
               "forward_ms", "backward_ms")  # fmt: skip
PATTERNS = ("causal", "sliding", "bigbird")


def patterns(N: int, H: int, block: int, device) -> dict:
    """``{name: (attnlib BlockMask on device, FlexAttention mask_mod for its partial tiles)}``."""
    window = N // 8
    causal = bmk.causal_mask_mod(N, N)
    sliding = bmk.sliding_window_mask_mod(window, causal=True)
    out = {
        "causal": (bmk.block_mask_from_mask_mod(causal, None, None, N, N, block_q=block, block_k=block), causal),
        "sliding": (bmk.block_mask_from_mask_mod(sliding, None, None, N, N, block_q=block, block_k=block), sliding),
    }
    bigbird = bmk.bigbird_block_mask(N, block_size=block, num_random_blocks=3, num_heads=H, seed=0)
    visible = (bigbird.kinds[0] != bmk.EMPTY).to(device)  # (H, T, T): BigBird's blocks are the tiles
    # The compiled kernel visits only the listed tiles; the mask_mod keeps FlexAttention's eager path exact.
    out["bigbird"] = (bigbird, lambda b, h, q_idx, kv_idx: visible[h, q_idx // block, kv_idx // block])
    return {name: (mask.to(device), mask_mod) for name, (mask, mask_mod) in out.items()}


def flex_block_mask(mask: bmk.BlockMask, mask_mod, block: int):
    """FlexAttention's BlockMask with the same tile lists as ``mask``."""
    from torch.nn.attention.flex_attention import BlockMask

    return BlockMask.from_kv_blocks(
        mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks, mask.full_kv_indices,
        BLOCK_SIZE=(block, block), mask_mod=mask_mod,
    )  # fmt: skip


def methods(mask: bmk.BlockMask, mask_mod, block: int, flex) -> dict:
    """``{method: f(q, k, v)}`` for one pattern."""
    from attnlib.optim.block_sparse_triton import block_sparse_attention_triton

    flex_mask = flex_block_mask(mask, mask_mod, block)

    def flex_call(q, k, v):
        if not q.is_cuda:  # on a CPU FlexAttention refuses inputs that require gradients
            q, k, v = q.detach(), k.detach(), v.detach()
        return flex(q, k, v, block_mask=flex_mask)

    return {"triton": lambda q, k, v: block_sparse_attention_triton(q, k, v, mask), "flex_compiled": flex_call}


def has_backward(method: str, device) -> bool:
    """FlexAttention refuses the backward on a CPU, eager or compiled (torch 2.13)."""
    return method == "triton" or torch.device(device).type == "cuda"


def max_errors(call, q, k, v, dout, ref_out, ref_grads, backward: bool) -> float:
    """Largest absolute error of the output (and the three gradients) against the dense reference."""
    if not backward:
        with torch.no_grad():
            return (call(q, k, v).float() - ref_out).abs().max().item()
    out = call(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), dout)
    errors = [(out.float() - ref_out).abs().max()] + [(g.float() - r).abs().max() for g, r in zip(grads, ref_grads)]
    return max(e.item() for e in errors)


def check_pattern(mask: bmk.BlockMask, mask_mod, H: int, d: int, block: int, dtype, device, flex) -> tuple[bool, str]:
    """Both methods against the dense float64 reference at the mask's size; Triton within twice Flex's error."""
    N = mask.N_q
    gen = torch.Generator().manual_seed(1)
    q, k, v, dout = (torch.randn(1, H, N, d, generator=gen) for _ in range(4))  # (B, H, N, d)
    dense_mask = mask.to("cpu").to_dense()  # (B or 1, H or 1, N, N) booleans, at the check size only
    q64, k64, v64 = (x.double().requires_grad_() for x in (q, k, v))
    ref_out = reference.attention(q64, k64, v64, mask=dense_mask)
    ref_grads = torch.autograd.grad(ref_out, (q64, k64, v64), dout.double())
    ref_out, ref_grads = ref_out.float().to(device), [g.float().to(device) for g in ref_grads]
    inputs = [x.to(device, dtype).requires_grad_() for x in (q, k, v)]
    errors = {
        method: max_errors(call, *inputs, dout.to(device, dtype), ref_out, ref_grads, has_backward(method, device))
        for method, call in methods(mask, mask_mod, block, flex).items()
    }
    ok = errors["triton"] <= max(2 * errors["flex_compiled"], 1e-3)
    return ok, f"max error: triton {errors['triton']:.2e}, flex {errors['flex_compiled']:.2e}"


def median_ms(run, grads_to_clear, smoke: bool) -> float:
    if smoke:  # one call on the CPU: exercises the code path, measures nothing
        start = time.perf_counter()
        run()
        return 1e3 * (time.perf_counter() - start)
    from triton.testing import do_bench

    return do_bench(run, warmup=25, rep=100, grad_to_none=grads_to_clear, return_mode="median")


def time_method(call, q, k, v, dout, backward: bool, smoke: bool) -> tuple[float, float]:
    """(forward ms, backward ms): the backward is the forward+backward time minus the forward's; NaN if not run."""

    def forward():
        with torch.no_grad():
            call(q, k, v)

    def forward_backward():
        torch.autograd.grad(call(q, k, v), (q, k, v), dout)

    forward_ms = median_ms(forward, None, smoke)
    if not backward:
        return forward_ms, math.nan
    return forward_ms, median_ms(forward_backward, [q, k, v], smoke) - forward_ms


def append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help=f"output folder for {CSV_NAME}")
    parser.add_argument("--sizes", default="4096,8192,16384", help="sequence lengths N, comma separated")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block", type=int, default=128, help="tile size of the block masks (both methods)")
    parser.add_argument("--check-size", type=int, default=1024, help="N of the check against the reference")
    parser.add_argument("--max-minutes", type=float, default=4.0, help="stop timing after this long (keeps rows)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (Triton's interpreter)")
    args = parser.parse_args(argv)
    from torch.nn.attention.flex_attention import flex_attention

    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("--smoke runs the Triton kernels in the interpreter: set TRITON_INTERPRET=1")
        device, dtype, gpu = "cpu", torch.float32, "cpu (smoke test, not a measurement)"
        sizes, check_size, H, d, block = [128], 128, 1, 16, 16  # BigBird needs 8 blocks or more
        flex = flex_attention  # eager on the CPU: a smoke test of the code path, not a measurement
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA GPU: run with --smoke (and TRITON_INTERPRET=1) on a CPU")
        device, dtype, gpu = "cuda", torch.float16, torch.cuda.get_device_name(0)
        sizes, check_size = [int(s) for s in args.sizes.split(",")], args.check_size
        H, d, block = args.heads, args.head_dim, args.block
        dynamo_config = importlib.import_module("torch._dynamo").config
        for limit in ("recompile_limit", "cache_size_limit"):  # one compilation per pattern and N, never eager
            if hasattr(dynamo_config, limit):
                setattr(dynamo_config, limit, 256)
        flex = torch.compile(flex_attention, dynamic=False)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / CSV_NAME
    path.unlink(missing_ok=True)  # one run per file: the rows of one GPU, one date
    date = datetime.date.today().isoformat()

    failed = []
    check_masks = patterns(check_size, H, block, device)
    for name in PATTERNS:
        ok, detail = check_pattern(*check_masks[name], H, d, block, dtype, device, flex)
        print(f"check {name:8s} at N = {check_size}: {'ok' if ok else 'FAILED'} ({detail})", flush=True)
        if not ok:
            failed.append(name)
    start = time.monotonic()
    stopped = False
    for N in sizes:
        gen = torch.Generator().manual_seed(0)
        q, k, v, dout = (torch.randn(1, H, N, d, generator=gen).to(device, dtype) for _ in range(4))  # (B, H, N, d)
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        for name, (mask, mask_mod) in patterns(N, H, block, device).items():
            if name in failed or name not in PATTERNS:
                continue
            if time.monotonic() - start > 60 * args.max_minutes:
                stopped = True
                break
            for method, call in methods(mask, mask_mod, block, flex).items():
                forward_ms, backward_ms = time_method(call, q, k, v, dout, has_backward(method, device), args.smoke)
                row = dict(date=date, gpu=gpu, pattern=name, method=method, N=N, B=1, H=H, d=d, block=block,
                           dtype=str(dtype).removeprefix("torch."), visited=round(mask.visited_density(), 4),
                           forward_ms=round(forward_ms, 4), backward_ms=round(backward_ms, 4))  # fmt: skip
                append_row(path, row)
                print(row, flush=True)
        if stopped:
            print(f"stopped after --max-minutes={args.max_minutes}: the sweep is incomplete", flush=True)
            break
    if failed:
        print(f"not timed (check failed): {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
