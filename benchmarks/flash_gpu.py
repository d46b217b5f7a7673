"""Benchmark the FlashAttention Triton kernels on a CUDA GPU (TFLOP/s, forward and forward+backward).

Compares, on the same GPU in the same run:

* ``triton``     - :func:`attnlib.optim.flash_triton.flash_attention_triton` (this book's kernels);
* ``sdpa_flash`` - ``torch.nn.functional.scaled_dot_product_attention`` restricted to PyTorch's
  FlashAttention-2 backend (``sdpa_kernel(SDPBackend.FLASH_ATTENTION)``);
* ``reference``  - :func:`attnlib.reference.attention`, the dense O(N^2)-memory definition
  (skipped where its score matrices would not fit in GPU memory).

The setting follows the FlashAttention-2 paper (Dao 2023, Sec. 4.1): batch x sequence length
= 16K tokens, hidden size 2048 (heads = 2048 / d), d in {64, 128}, N from 1K to 16K, causal
and not, float16 and bfloat16. FLOPs are counted as in that paper: a forward pass does
``4 * B * H * N * N * d`` (two matrix products), halved when causal; the backward does 2.5x
the forward (five matrix products instead of two), so forward+backward is 3.5x the forward.

Before timing a configuration, the Triton kernels' output and gradients are checked against
SDPA at a small size; a configuration that fails is reported and not timed, and the script
exits with status 1 at the end.

Usage (from the repository root, on a machine with a CUDA GPU)::

    python benchmarks/flash_gpu.py --out benchmarks/results/flash_gpu

writes ``flash_gpu.csv`` (columns date, gpu, dtype, d, N, causal, method, pass, ms, tflops,
B, H) and ``flash_gpu.png`` (TFLOP/s against N, log-log) into ``--out``. The full sweep takes
about 5-8 minutes on an H100/H200 (``--max-minutes`` stops it early, keeping what was measured).

The tile sizes of the kernels (``flash_triton.kernel_config``) were chosen without a GPU. So the
script then times a few other tilings (``TILINGS``) at the target setting of the chapter (float16,
d = 128, N = 4K and 16K, causal and not) next to the default, each first checked against SDPA,
and writes them to ``flash_gpu_tiles.csv`` (the columns above plus ``tiling``): one GPU run tells
whether the default is the best of them (``--tiles-minutes 0`` skips this part).
Chapter: "FlashAttention in Triton" (chapters/*/11_flash_triton.ipynb).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import sys
import time
from pathlib import Path

import torch

# Run as a script from anywhere: make the repository's attnlib importable.
_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

METHODS = ("triton", "sdpa_flash", "reference")
PASSES = ("fwd", "fwd+bwd")
CSV_COLUMNS = ("date", "gpu", "dtype", "d", "N", "causal", "method", "pass", "ms", "tflops", "B", "H")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Other tilings to time next to the default at the target setting: {name: {kernel: (block_m,
# block_n, num_warps, num_stages)}}; kernels not named keep the default. All fit the 227 KiB of
# shared memory of an H100 at d = 128 in float16 (compiled for sm90 on a CPU to check).
TILINGS = {
    "default": {},
    "fwd 128x32 w8": {"forward": (128, 32, 8, 3)},
    "fwd 64x64 w4": {"forward": (64, 64, 4, 3)},
    "fwd 128x128 w8 s2": {"forward": (128, 128, 8, 2)},
    "bwd 32x64 + 64x32 (sm80)": {"dkdv": (32, 64, 4, 3), "dq": (64, 32, 4, 3)},
    "bwd 64x128 + 128x64 w8 s2": {"dkdv": (64, 128, 8, 2), "dq": (128, 64, 8, 2)},
}
TILE_COLUMNS = ("tiling",) + CSV_COLUMNS
TILE_SIZES, TILE_HEAD_DIM = (4096, 16384), 128  # the chapter's target setting (with float16)
CHECK_TOKENS = 512  # sequence length of the correctness checks before timing
DEVICE = "cuda"  # the tests run main() on "cpu" with Triton's interpreter and a fake timer
# Tolerances of the correctness check against SDPA (both compute in float32 and round once per
# product; the difference is the rounding of P and dS to 16 bits in different orders).
TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 5e-2}


def attention_flops(B: int, H: int, N: int, d: int, causal: bool, pass_: str) -> float:
    """FLOPs of one attention call, counted as in FlashAttention-2 (Sec. 4.1).

    Forward: two (N x N x d) matrix products per head, 2 FLOPs per multiply-add:
    ``4 * B * H * N * N * d``, halved when causal (half of the scores are skipped).
    Backward: 2.5x the forward. ``pass_`` is ``"fwd"``, ``"bwd"`` or ``"fwd+bwd"``.
    """
    forward = 4.0 * B * H * N * N * d / (2.0 if causal else 1.0)
    factor = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}
    if pass_ not in factor:
        raise ValueError(f"pass_ must be one of {tuple(factor)}, got {pass_!r}")
    return forward * factor[pass_]


def tflops(flops: float, ms: float) -> float:
    """TFLOP/s of ``flops`` done in ``ms`` milliseconds."""
    return flops / (ms * 1e-3) / 1e12


def shape_for(N: int, d: int, tokens: int = 16384, hidden: int = 2048) -> tuple[int, int]:
    """``(B, H)`` with ``B * N = tokens`` (at least 1) and ``H * d = hidden``."""
    return max(1, tokens // N), max(1, hidden // d)


def reference_bytes(B: int, H: int, N: int, pass_: str) -> int:
    """GPU memory the dense reference needs beyond its inputs, roughly: float32 scores, masked
    scores and probabilities; the backward keeps them and adds their gradients."""
    per_matrix = 4 * B * H * N * N
    return per_matrix * (3 if pass_ == "fwd" else 6)


def max_abs_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.float() - want.float()).abs().max().item()


def check_against(fn, ref_fn, q, k, v, causal: bool, tol: float) -> dict:
    """Compare ``fn``'s output and gradients with ``ref_fn``'s on the same inputs.

    Both are called as ``f(q, k, v, causal)``. Returns the max abs errors
    ``{"out", "dq", "dk", "dv"}``; raises AssertionError naming the first one that exceeds
    ``tol * max(1, max |reference|)`` (gradients can be larger than 1).
    """
    errors = {}
    results = []
    for f in (fn, ref_fn):
        qq, kk, vv = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
        out = f(qq, kk, vv, causal)
        dout = torch.ones_like(out) * 0.5 + torch.arange(out.shape[-1], device=out.device, dtype=out.dtype) / 1024
        out.backward(dout)
        results.append((out.detach(), qq.grad, kk.grad, vv.grad))
    for name, got, want in zip(("out", "dq", "dk", "dv"), results[0], results[1]):
        errors[name] = max_abs_error(got, want)
        limit = tol * max(1.0, want.float().abs().max().item())
        if not math.isfinite(errors[name]) or errors[name] > limit:
            raise AssertionError(f"{name}: max abs error {errors[name]:.3g} > tolerance {limit:.3g}")
    return errors


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="TFLOP/s of attnlib's FlashAttention Triton kernels vs SDPA (flash backend) and dense "
        "attention on a CUDA GPU; writes a CSV and a log-log plot.",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder for flash_gpu.csv and flash_gpu.png")
    p.add_argument("--sizes", default="1024,2048,4096,8192,16384", help="sequence lengths N, comma separated")
    p.add_argument("--head-dims", default="64,128", help="head dimensions d, comma separated")
    p.add_argument("--dtypes", default="float16,bfloat16", help="comma separated: float16, bfloat16")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma separated, from {','.join(METHODS)}")
    p.add_argument("--causal", default="false,true", help="comma separated: false, true")
    p.add_argument("--tokens", type=int, default=16384, help="batch x N (default 16384, as in FlashAttention-2)")
    p.add_argument("--hidden", type=int, default=2048, help="heads x d (default 2048)")
    p.add_argument("--warmup-ms", type=float, default=25.0, help="triton.testing.do_bench warm-up time")
    p.add_argument("--rep-ms", type=float, default=100.0, help="triton.testing.do_bench measuring time")
    p.add_argument("--max-minutes", type=float, default=7.0, help="stop timing after this long (keeps results)")
    p.add_argument("--tiles-minutes", type=float, default=1.5, help="time for the tiling comparison (0: skip)")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(x) for x in args.sizes.split(",")]
        args.head_dims = [int(x) for x in args.head_dims.split(",")]
    except ValueError as e:
        p.error(f"--sizes and --head-dims take comma-separated integers: {e}")
    args.dtypes = [x.strip() for x in args.dtypes.split(",")]
    args.methods = [x.strip() for x in args.methods.split(",")]
    causal = [x.strip().lower() for x in args.causal.split(",")]
    for name, values, allowed in (
        ("--dtypes", args.dtypes, tuple(DTYPES)),
        ("--methods", args.methods, METHODS),
        ("--causal", causal, ("false", "true")),
    ):
        bad = [x for x in values if x not in allowed]
        if bad:
            p.error(f"{name}: unknown {bad}, choose from {allowed}")
    args.causal = [x == "true" for x in causal]
    return args


def _methods(names):
    """``{name: f(q, k, v, causal) -> out}`` for the requested methods."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    from attnlib.optim.flash_triton import flash_attention_triton
    from attnlib.reference import attention

    def sdpa_flash(q, k, v, causal):
        # The flash backend needs sm80+; on older GPUs (Colab's T4 is sm75) PyTorch then
        # takes its memory-efficient backend, the fastest exact kernel it has there.
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            return scaled_dot_product_attention(q, k, v, is_causal=causal)

    table = {
        "triton": lambda q, k, v, causal: flash_attention_triton(q, k, v, causal=causal),
        "sdpa_flash": sdpa_flash,
        "reference": lambda q, k, v, causal: attention(q, k, v, causal=causal),
    }
    return {name: table[name] for name in names}


def _plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(r["dtype"], r["d"]) for r in rows})
    columns = sorted({(r["causal"], r["pass"]) for r in rows})
    if not panels or not columns:
        return
    fig, axes = plt.subplots(
        len(panels), len(columns), figsize=(3.6 * len(columns), 3.0 * len(panels)), squeeze=False, sharex=True
    )
    for i, (dtype, d) in enumerate(panels):
        for j, (causal, pass_) in enumerate(columns):
            ax = axes[i][j]
            for method in METHODS:
                pts = sorted(
                    (r["N"], r["tflops"])
                    for r in rows
                    if (r["dtype"], r["d"], r["causal"], r["pass"], r["method"]) == (dtype, d, causal, pass_, method)
                )
                if pts:
                    ax.loglog(*zip(*pts), marker="o", label=method)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{dtype} d={d} causal={causal} {pass_}", fontsize=8)
            ax.set_xlabel("N")
            ax.set_ylabel("TFLOP/s")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle(f"attention TFLOP/s on {rows[0]['gpu']} ({rows[0]['date']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _time(fn, q, k, v, dout, causal: bool, pass_: str, args) -> float:
    """Median milliseconds of one call (``fwd``) or one call plus its backward (``fwd+bwd``)."""
    if pass_ == "fwd":

        def run():
            with torch.no_grad():
                fn(q, k, v, causal)
    else:

        def run():
            fn(q, k, v, causal).backward(dout)

    return _median_ms(run, [q, k, v], args)


def _median_ms(run, grads_to_clear, args) -> float:
    """Triton's ``do_bench``: CUDA events around repeated calls, the cache flushed between them."""
    from triton.testing import do_bench

    return do_bench(run, warmup=args.warmup_ms, rep=args.rep_ms, grad_to_none=grads_to_clear, return_mode="median")


def _check_methods(methods, sdpa, dtype, d: int, causal: bool, args, gen) -> dict:
    """``{method: passed}``: each method's output and gradients against SDPA's flash backend at N = CHECK_TOKENS."""
    B, H = 2, max(1, args.hidden // d)
    q, k, v = (torch.randn(B, H, CHECK_TOKENS, d, device=DEVICE, dtype=dtype, generator=gen) for _ in range(3))
    ok = {}
    for name, fn in methods.items():
        label = f"{name} {str(dtype).removeprefix('torch.')} d={d} causal={causal}"
        if name == "sdpa_flash":
            ok[name] = True
            continue
        try:
            errors = check_against(fn, sdpa, q, k, v, causal, TOLERANCE[dtype])
            print(f"check {label}: max abs errors {errors}", flush=True)
            ok[name] = True
        except AssertionError as e:
            print(f"FAILED check {label}: {e}", flush=True)
            ok[name] = False
    return ok


def use_tiling(tiling: dict):
    """Make ``flash_triton.kernel_config`` return ``tiling``'s tiles on a GPU; returns the undo function.

    ``tiling`` is ``{kernel: (block_m, block_n, num_warps, num_stages)}``; the other kernels, and
    Triton's interpreter (capability None), keep the default configuration.
    """
    from attnlib.optim import flash_triton as ft

    default = ft.kernel_config

    def kernel_config(kernel, head_dim, dtype, capability):
        if capability is not None and kernel in tiling:
            return ft.KernelConfig(*tiling[kernel])
        return default(kernel, head_dim, dtype, capability)

    ft.kernel_config = kernel_config

    def undo():
        ft.kernel_config = default

    return undo


def _compare_tilings(args, sdpa, gen, date: str, gpu: str, path: Path) -> None:
    """Time ``TILINGS`` for the Triton kernels at the target setting; write ``flash_gpu_tiles.csv``."""
    from attnlib.optim.flash_triton import flash_attention_triton

    def triton_attention(q, k, v, causal):
        return flash_attention_triton(q, k, v, causal=causal)

    dtype_name, d = "float16", TILE_HEAD_DIM
    dtype = DTYPES[dtype_name]
    start, rows = time.monotonic(), []
    for name, tiling in TILINGS.items():
        undo = use_tiling(tiling)
        try:
            H = max(1, args.hidden // d)
            q, k, v = (torch.randn(2, H, CHECK_TOKENS, d, device=DEVICE, dtype=dtype, generator=gen) for _ in range(3))
            check_against(triton_attention, sdpa, q, k, v, True, TOLERANCE[dtype])
            for N in TILE_SIZES:
                B, H = shape_for(N, d, args.tokens, args.hidden)
                q, k, v, dout = (torch.randn(B, H, N, d, device=DEVICE, dtype=dtype, generator=gen) for _ in range(4))
                q, k, v = (x.requires_grad_(True) for x in (q, k, v))
                for causal in (False, True):
                    for pass_ in PASSES:
                        if time.monotonic() - start > 60 * args.tiles_minutes:
                            raise TimeoutError
                        ms = _time(triton_attention, q, k, v, dout, causal, pass_, args)
                        tf = tflops(attention_flops(B, H, N, d, causal, pass_), ms)
                        rows.append(
                            {"tiling": name, "date": date, "gpu": gpu, "dtype": dtype_name, "d": d, "N": N,
                             "causal": causal, "method": "triton", "pass": pass_, "ms": round(ms, 4),
                             "tflops": float(f"{tf:.4g}"), "B": B, "H": H}
                        )  # fmt: skip
                        print(f"tiling {name:26s} N={N:5d} causal={causal!s:5} {pass_:7s} {tf:7.1f} TFLOP/s")
        except TimeoutError:
            print(f"stopped the tiling comparison after --tiles-minutes={args.tiles_minutes}", flush=True)
            break
        except Exception as e:  # a tiling that does not compile, fit or pass: report it, go on
            print(f"tiling {name}: {type(e).__name__}: {str(e)[:300]}", flush=True)
        finally:
            undo()
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=TILE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path} ({len(rows)} rows)", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit(
            "flash_gpu.py needs a CUDA GPU (torch.cuda.is_available() is False). "
            "On a CPU, time the PyTorch path with attnlib.bench instead."
        )
    if os.environ.get("TRITON_INTERPRET") == "1" and DEVICE == "cuda":
        raise SystemExit("unset TRITON_INTERPRET: the benchmark must time compiled kernels, not the interpreter")

    device = torch.device(DEVICE)
    gpu = torch.cuda.get_device_name(device)
    capability = torch.cuda.get_device_capability(device)
    date = datetime.date.today().isoformat()
    methods = _methods(args.methods)
    sdpa = _methods(["sdpa_flash"])["sdpa_flash"]
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = args.out / "flash_gpu.csv", args.out / "flash_gpu.png"
    print(f"{gpu} (sm{capability[0]}{capability[1]}), torch {torch.__version__}", flush=True)

    rows, failures = [], []
    start = time.monotonic()
    gen = torch.Generator(device=device).manual_seed(0)
    configs = [(dt, d, c) for dt in args.dtypes for d in args.head_dims for c in args.causal]
    timings = []  # (dtype name, d, causal, N, method, pass), in the order they will be timed
    for dtype_name, d, causal in configs:
        dtype = DTYPES[dtype_name]
        if dtype == torch.bfloat16 and capability < (8, 0):
            print(f"skip bfloat16: {gpu} has compute capability {capability[0]}.{capability[1]} < 8.0", flush=True)
            continue
        ok = _check_methods(methods, sdpa, dtype, d, causal, args, gen)
        failures += [f"{m} {dtype_name} d={d} causal={causal}" for m, passed in ok.items() if not passed]
        timings += [(dtype_name, d, causal, N, m) for N in args.sizes for m in methods if ok[m]]

    inputs_key, inputs = None, None
    out_of_time = False
    for dtype_name, d, causal, N, name in timings:
        if time.monotonic() - start > 60 * args.max_minutes:
            out_of_time = True
            break
        dtype = DTYPES[dtype_name]
        B, H = shape_for(N, d, args.tokens, args.hidden)
        if inputs_key != (dtype, d, N):  # one set of inputs per shape, shared by the methods
            inputs = None
            torch.cuda.empty_cache()
            q, k, v, dout = (torch.randn(B, H, N, d, device=device, dtype=dtype, generator=gen) for _ in range(4))
            inputs, inputs_key = [x.requires_grad_(True) for x in (q, k, v)] + [dout], (dtype, d, N)
        for pass_ in PASSES:
            free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else math.inf
            if name == "reference" and reference_bytes(B, H, N, pass_) > 0.8 * free:
                print(f"skip reference N={N} d={d} {pass_}: would not fit in GPU memory", flush=True)
                continue
            try:
                ms = _time(methods[name], *inputs, causal, pass_, args)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                print(f"skip {name} N={N} d={d} {pass_}: out of GPU memory", flush=True)
                continue
            tf = tflops(attention_flops(B, H, N, d, causal, pass_), ms)
            rows.append(
                {"date": date, "gpu": gpu, "dtype": dtype_name, "d": d, "N": N, "causal": causal, "method": name,
                 "pass": pass_, "ms": round(ms, 4), "tflops": float(f"{tf:.4g}"), "B": B, "H": H}
            )  # fmt: skip
            print(
                f"{dtype_name} d={d:3d} N={N:5d} causal={causal!s:5} {name:10s} {pass_:7s} {ms:9.3f} ms "
                f"{tf:7.1f} TFLOP/s",
                flush=True,
            )

    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if rows:
        _plot(rows, png_path)
    print(f"wrote {csv_path} and {png_path} ({len(rows)} rows) in {time.monotonic() - start:.0f} s", flush=True)
    if out_of_time:
        print(f"stopped after --max-minutes={args.max_minutes}: the sweep is incomplete", flush=True)
    if args.tiles_minutes > 0 and capability >= (8, 0):
        _compare_tilings(args, sdpa, gen, date, gpu, args.out / "flash_gpu_tiles.csv")
    if failures:
        print("correctness check failed (not timed): " + "; ".join(failures), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
