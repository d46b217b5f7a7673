"""GPU benchmark of chapter 14: the block-sparse Triton kernels against compiled FlexAttention, same block masks.

Writes benchmarks/results/gpu_block_sparse.csv: for each pattern (causal, sliding window, BigBird)
and N, the forward and forward+backward time of ``attnlib.optim.flash_triton.block_sparse_attention_triton``
and of ``torch.compile(flex_attention)`` given the *same* tile lists (``BlockMask.from_kv_blocks``,
with the pattern's ``mask_mod`` for the partial tiles). Targets of the issue: at N >= 4K and d = 128,
at least 0.9x FlexAttention's speed in the forward and 0.8x in the backward.

Usage on a GPU:  python benchmarks/block_sparse_gpu.py
Smoke test on a CPU (Triton's interpreter, tiny sizes, FlexAttention eager):
    TRITON_INTERPRET=1 python benchmarks/block_sparse_gpu.py --smoke
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from attnlib.optim import block_mask as bmk  # noqa: E402


def patterns(N: int, H: int, block: int) -> dict:
    """name -> (attnlib BlockMask, FlexAttention mask_mod for its partial tiles)."""
    window = N // 8
    causal = lambda b, h, q, kv: kv <= q  # noqa: E731
    sliding = lambda b, h, q, kv: (q - kv <= window) & (kv <= q)  # noqa: E731
    out = {
        "causal": (bmk.block_mask_from_mask_mod(causal, None, None, N, N, block_q=block, block_k=block), causal),
        "sliding": (bmk.block_mask_from_mask_mod(sliding, None, None, N, N, block_q=block, block_k=block), sliding),
    }
    big = bmk.bigbird_block_mask(N, block_size=block, num_random_blocks=3, num_heads=H, seed=0)
    visible = big.kinds[0] != bmk.EMPTY  # (H, T, T): tiles = BigBird's blocks, every visited tile is full
    # the compiled kernel visits only the listed tiles; the mask_mod also makes FlexAttention's eager path exact
    out["bigbird"] = (big, lambda b, h, q, kv: visible[h, q // block, kv // block])
    return out


def timed(fn, device, repeats: int) -> float:
    """Median seconds of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,8192,16384")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (Triton's interpreter)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_block_sparse.csv"))
    args = parser.parse_args(argv)
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    from attnlib.optim import flash_triton as ft

    if args.smoke:
        device, dtype, sizes, H, d, block, repeats = "cpu", torch.float32, [256], 2, 16, 32, 1
        flex = flex_attention  # eager on the CPU: a smoke test of the code path, not a measurement
    else:
        if not torch.cuda.is_available():
            print("no CUDA GPU: run with --smoke on a CPU")
            return 1
        device, dtype, H, d, block, repeats = "cuda", torch.float16, args.heads, args.head_dim, args.block, args.repeats
        sizes = [int(s) for s in args.sizes.split(",")]
        flex = torch.compile(flex_attention)
    rows = []
    for N in sizes:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (
            torch.randn(1, H, N, d, generator=gen).to(device, dtype).requires_grad_(device == "cuda") for _ in range(3)
        )
        dout = torch.randn(1, H, N, d, generator=gen).to(device, dtype)
        for name, (mask, mask_mod) in patterns(N, H, block).items():
            mask = mask.to(device)
            if name == "bigbird":  # the table the mask_mod reads must live on the device too
                table = (mask.kinds[0] != bmk.EMPTY).to(device)  # (H, T, T)
                mask_mod = lambda b, h, q, kv, t=table: t[h, q // block, kv // block]  # noqa: E731
            flex_mask = BlockMask.from_kv_blocks(
                mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks, mask.full_kv_indices,
                BLOCK_SIZE=(block, block), mask_mod=mask_mod,
            )  # fmt: skip
            calls = {
                "triton": lambda q=q, k=k, v=v, mask=mask: ft.block_sparse_attention_triton(q, k, v, mask),
                "flex_compiled": lambda q=q, k=k, v=v, fm=flex_mask: flex(q, k, v, block_mask=fm),
            }
            reference = None
            for method, call in calls.items():
                with torch.no_grad():
                    out = call()
                if reference is None:
                    reference = out.float()
                else:  # both compute the same attention
                    assert (out.float() - reference).abs().max() < (1e-5 if dtype == torch.float32 else 2e-2), name
                with torch.no_grad():
                    forward = timed(call, device, repeats)
                backward = float("nan")
                if device == "cuda":

                    def both():
                        grads = torch.autograd.grad(call(), (q, k, v), dout)  # noqa: B023
                        return grads

                    backward = timed(both, device, repeats) - forward  # the backward alone
                rows.append(dict(pattern=name, method=method, N=N, H=H, d=d, block=block, dtype=str(dtype),
                                 visited=mask.visited_density(), forward_ms=1e3 * forward,
                                 backward_ms=1e3 * backward))  # fmt: skip
                print(rows[-1], flush=True)
    if not args.smoke:
        with open(args.out, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    if "--smoke" in sys.argv:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.exit(main())
