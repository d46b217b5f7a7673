"""Measure wall time and peak memory of attention methods, side by side in one run.

How (see FACTS.md of the project):

* **time**: the median of ``repeats`` calls after ``warmup`` calls; on a GPU each
  call is synchronized. On the shared CPUs only ratios measured in the same run
  mean something; absolute times are quoted only from a GPU.
* **peak memory on CPU**: each configuration runs in a *fresh process*; it builds
  its inputs, calls the method once on a short input (the first call of a process
  also sets up thread pools and BLAS buffers, about 10 MB that belong to no
  method), hands the memory that call freed back to the system, resets the
  kernel's high-water mark of the resident set, reads the current resident set
  size, calls the method once, and reports the high-water mark minus that.
  Dense attention then reads exactly its two ``N x N`` float32 buffers (scores
  and probabilities). On a GPU: ``torch.cuda.max_memory_allocated`` minus the
  memory held before the call.

Command line::

    python -m attnlib.bench run --methods dense,sdpa,bigbird --sizes 1024,4096 --out results.csv
    python -m attnlib.bench plot results.csv --out results.png

Chapter: "Introduction" (chapters/*/00_introduction.ipynb).
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import ctypes.util
import datetime
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = [
    "median_time",
    "peak_memory_bytes",
    "measure_in_fresh_process",
    "run",
    "fit_slope",
    "results_path",
    "read_results",
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FIELDS = ["method", "N", "B", "H", "d", "dtype", "device", "causal", "threads", "median_s", "peak_mib", "error"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1, device="cpu") -> float:
    """Median wall time of ``fn()`` in seconds, over ``repeats`` calls after ``warmup`` calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def peak_memory_bytes(fn: Callable[[], object], device="cpu") -> int:
    """Peak memory that one call of ``fn()`` adds, in bytes.

    On CPU: the resident-set high-water mark is reset just before the call (or, where
    the kernel does not allow that, ``ru_maxrss`` is read, which is only meaningful for
    the first large call in a fresh process: use :func:`measure_in_fresh_process`).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if _reset_peak_rss():
        before = _status_bytes("VmRSS")
        fn()
        peak = _status_bytes("VmHWM")
    else:
        before = _status_bytes("VmRSS")
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return max(0, peak - before)


def _make_inputs(B: int, H: int, N: int, d: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, d, generator=generator).to(device=device, dtype=dtype) for _ in range(3))
    return q, k, v  # each (B, H, N, d)


WARMUP_TOKENS = 1024  # the short input of the warm-up call before the memory measurement


def _release_free_memory() -> None:
    """Hand the memory that the C allocator holds free back to the system (glibc's ``malloc_trim``).

    So that the measured call pays for every page it touches instead of reusing pages an
    earlier call left behind. A no-op where the C library has no ``malloc_trim``.
    """
    libc_name = ctypes.util.find_library("c")
    malloc_trim = getattr(ctypes.CDLL(libc_name), "malloc_trim", None) if libc_name else None
    if malloc_trim is not None:
        malloc_trim(0)


def _measure_here(config: dict) -> dict:
    """Measure one configuration in this process (the worker side of the fresh process)."""
    from . import registry

    torch.set_num_threads(config["threads"])
    device = torch.device(config["device"])
    method = registry.get(config["method"])
    attention = method.attention_fn()
    kwargs = dict(method.bench_kwargs)
    if config["causal"]:
        kwargs["causal"] = True
    q, k, v = _make_inputs(config["B"], config["H"], config["N"], config["d"], DTYPES[config["dtype"]], device)

    def call(q, k, v):
        with torch.no_grad():
            return attention(q, k, v, **kwargs)

    # Warm-up on a short input: one-time setup (thread pools, BLAS buffers) is not the method's memory.
    short = min(config["N"], WARMUP_TOKENS)
    call(*(x[:, :, :short].contiguous() for x in (q, k, v)))  # each (B, H, short, d)
    _release_free_memory()
    peak = peak_memory_bytes(lambda: call(q, k, v), device)  # the memory measurement
    seconds = median_time(lambda: call(q, k, v), repeats=config["repeats"], warmup=config["warmup"], device=device)
    return {"median_s": seconds, "peak_mib": peak / 2**20, "error": ""}


def measure_in_fresh_process(
    method: str,
    N: int,
    *,
    B: int = 1,
    H: int = 4,
    d: int = 64,
    dtype: str = "float32",
    device: str = "cpu",
    causal: bool = False,
    threads: int = 2,
    repeats: int = 5,
    warmup: int = 1,
    timeout: float = 900,
) -> dict:
    """Run one configuration in a new Python process and return its row (see ``FIELDS``)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    config = dict(
        method=method, N=N, B=B, H=H, d=d, dtype=dtype, device=device, causal=causal,
        threads=threads, repeats=repeats, warmup=warmup,
    )  # fmt: skip
    command = [sys.executable, "-m", "attnlib.bench", "_worker", json.dumps(config)]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        result = {"median_s": math.nan, "peak_mib": math.nan, "error": f"timeout after {timeout} s"}
    else:
        if completed.returncode != 0:
            last_line = (completed.stderr.strip().splitlines() or [f"exit code {completed.returncode}"])[-1]
            result = {"median_s": math.nan, "peak_mib": math.nan, "error": last_line}
        else:
            result = json.loads(completed.stdout.strip().splitlines()[-1])
    row = {key: config[key] for key in FIELDS if key in config}
    row.update(result)
    return row


def run(
    methods: Sequence[str],
    sizes: Sequence[int],
    *,
    out: str | Path | None = None,
    progress: bool = True,
    **options,
) -> list[dict]:
    """Measure every method at every size, one fresh process each, in one run.

    Sizes run in the outer loop so that all methods at one size are measured
    close together in time. Returns the rows, and writes them as CSV to ``out``.
    """
    from tqdm.auto import tqdm

    from . import registry

    for name in methods:
        registry.get(name)  # fail early on an unknown name
    jobs = [(N, name) for N in sizes for name in methods]
    rows = []
    for N, name in tqdm(jobs, desc="bench", disable=not progress):
        rows.append(measure_in_fresh_process(name, N, **options))
    if out is not None:
        write_results(rows, out)
    return rows


def write_results(rows: list[dict], out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.date.today().isoformat()
    machine = f"{platform.machine()} {platform.processor() or ''}".strip()
    with out.open("w", newline="") as handle:
        handle.write(f"# measured {stamp} on {machine}, torch {torch.__version__}\n")
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def read_results(path: str | Path) -> list[dict]:
    """Rows of a CSV written by :func:`run`, numbers converted back."""
    with Path(path).open() as handle:
        lines = [line for line in handle if not line.startswith("#")]
    rows = list(csv.DictReader(lines))
    for row in rows:
        for key in ("N", "B", "H", "d", "threads"):
            row[key] = int(row[key])
        row["causal"] = row["causal"] == "True"
        for key in ("median_s", "peak_mib"):
            row[key] = float(row[key]) if row[key] not in ("", "nan") else math.nan
    return rows


def results_path(name: str) -> Path:
    """Path of a committed benchmark result, ``benchmarks/results/NAME`` in the repository."""
    return Path(__file__).resolve().parent.parent / "benchmarks" / "results" / name


def fit_slope(sizes: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(values) against log(sizes): the exponent p in value ~ N^p."""
    points = [(math.log(n), math.log(v)) for n, v in zip(sizes, values) if v > 0 and math.isfinite(v)]
    if len(points) < 2:
        raise ValueError(f"need at least two positive finite values to fit a slope, got {len(points)}")
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    covariance = sum((x - mean_x) * (y - mean_y) for x, y in points)
    variance = sum((x - mean_x) ** 2 for x, _ in points)
    return covariance / variance


def plot(rows: list[dict], *, out: str | Path | None = None, title: str = ""):
    """Log-log plots of time and peak memory against N, one line per method; returns the figure."""
    import matplotlib.pyplot as plt
    import matplotlib_fontja  # noqa: F401

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(row["method"] for row in rows):
        mine = sorted((r for r in rows if r["method"] == name and not r["error"]), key=lambda r: r["N"])
        sizes = [r["N"] for r in mine]
        time_axis.plot(sizes, [r["median_s"] * 1e3 for r in mine], marker="o", label=name)
        memory_axis.plot(sizes, [max(r["peak_mib"], 1e-2) for r in mine], marker="o", label=name)
    for axis, label in ((time_axis, "time [ms]"), (memory_axis, "peak memory [MiB]")):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("N")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    if out is not None:
        figure.savefig(out, dpi=120)
    return figure


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnlib.bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="measure registered methods against N")
    run_parser.add_argument("--methods", required=True, help="comma-separated registry names, e.g. dense,sdpa")
    run_parser.add_argument("--sizes", default="1024,2048,4096,8192,16384", help="comma-separated N")
    run_parser.add_argument("--out", required=True, help="CSV file to write")
    run_parser.add_argument("--plot", help="also write a log-log PNG here")
    run_parser.add_argument("--batch", type=int, default=1)
    run_parser.add_argument("--heads", type=int, default=4)
    run_parser.add_argument("--head-dim", type=int, default=64)
    run_parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    run_parser.add_argument("--device", default="cpu")
    run_parser.add_argument("--causal", action="store_true")
    run_parser.add_argument("--threads", type=int, default=2)
    run_parser.add_argument("--repeats", type=int, default=5)
    plot_parser = commands.add_parser("plot", help="plot a CSV written by 'run'")
    plot_parser.add_argument("csv")
    plot_parser.add_argument("--out", required=True)
    worker = commands.add_parser("_worker", help=argparse.SUPPRESS)
    worker.add_argument("config")
    args = parser.parse_args(argv)

    if args.command == "_worker":
        print(json.dumps(_measure_here(json.loads(args.config))))
        return 0
    if args.command == "plot":
        plot(read_results(args.csv), out=args.out)
        return 0
    rows = run(
        [name.strip() for name in args.methods.split(",")],
        [int(n) for n in args.sizes.split(",")],
        out=args.out,
        B=args.batch,
        H=args.heads,
        d=args.head_dim,
        dtype=args.dtype,
        device=args.device,
        causal=args.causal,
        threads=args.threads,
        repeats=args.repeats,
    )
    if args.plot:
        plot(rows, out=args.plot)
    for row in rows:
        status = row["error"] or f"{row['median_s'] * 1e3:9.2f} ms  {row['peak_mib']:9.2f} MiB"
        print(f"{row['method']:>10}  N={row['N']:>6}  {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
