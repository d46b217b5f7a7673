"""Ring attention on a CPU with gloo: peak memory and time per process for P = 1, 2, 4 processes.

Each (P, N) runs in a fresh group of P processes (attnlib.optim.ring_launcher.launch), one thread each:
one causal forward + backward (zigzag layout, B=1, H=1, d=64, float32; with P > 1 once with the
backward's prefetch on, as the published implementations, and once off) measures each rank's
peak resident memory above what it held before building its shards; then the best of
``--repeats`` timed forward + backward passes gives the time and the share spent waiting for
key/value blocks and their gradients (communication not hidden behind compute). Each rank asks
glibc to map every allocation above 64 KiB on its own, so that freed tensors leave the resident
set (see ``ring_launcher.measure_worker``).

    .venv/bin/python benchmarks/ring_cpu.py                  # writes benchmarks/results/cpu_ring.csv/.png

The chapter (15_ring_attention) reads the CSV. The processes share the machine's cores, so the
time with P > cores does not fall: on one machine the ring demonstrates memory and correctness;
the speed-up needs P devices.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from pathlib import Path

import torch

from attnlib.optim import ring_launcher

RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = [
    "P",
    "N",
    "layout",
    "prefetch",
    "B",
    "H",
    "d",
    "peak_mib_max",
    "peak_mib_mean",
    "seconds",
    "wait_share",
    "mib_sent_per_rank",
]


def measure(
    P: int, N: int, *, B: int, H: int, d: int, layout: str, prefetch: bool, repeats: int, timeout: float
) -> dict:
    config = dict(N=N, B=B, H=H, d=d, layout=layout, repeats=repeats, prefetch=prefetch)
    per_rank = ring_launcher.launch(ring_launcher.measure_worker, P, config, timeout=timeout)
    peaks = [r["peak_bytes"] / 2**20 for r in per_rank]
    seconds = max(r["seconds"] for r in per_rank)
    wait_share = sum(r["wait_seconds"] / r["seconds"] for r in per_rank) / P
    return dict(
        P=P,
        N=N,
        layout=layout,
        prefetch=prefetch,
        B=B,
        H=H,
        d=d,
        peak_mib_max=round(max(peaks), 2),
        peak_mib_mean=round(sum(peaks) / P, 2),
        seconds=round(seconds, 4),
        wait_share=round(wait_share, 3),
        mib_sent_per_rank=round(max(r["bytes_sent"] for r in per_rank) / 2**20, 2),
    )


def plot(rows: list[dict], out: Path, budget_mib: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory_axis, time_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for P, prefetch in sorted({(r["P"], r["prefetch"]) for r in rows}):
        mine = sorted((r for r in rows if (r["P"], r["prefetch"]) == (P, prefetch)), key=lambda r: r["N"])
        label = f"P = {P}" if P == 1 else f"P = {P}, prefetch {'on' if prefetch else 'off'}"
        style = "o-" if prefetch else "s--"
        memory_axis.loglog([r["N"] for r in mine], [r["peak_mib_max"] for r in mine], style, label=label)
        time_axis.loglog([r["N"] for r in mine], [r["seconds"] for r in mine], style, label=label)
    memory_axis.axhline(budget_mib, color="gray", linestyle="--", label=f"budget {budget_mib:g} MiB")
    memory_axis.set(xlabel="N (whole sequence)", ylabel="peak MiB per process", title="memory per process")
    time_axis.set(xlabel="N (whole sequence)", ylabel="seconds (forward + backward)", title="time, shared cores")
    for axis in (memory_axis, time_axis):
        axis.legend()
        axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="1,2,4")
    parser.add_argument("--sizes", default="2048,4096,8192,16384,32768")
    parser.add_argument("--extra", default="", help="P:N pairs measured in addition, comma-separated")
    parser.add_argument("--budget-mib", type=float, default=24.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--out", default=str(RESULTS / "cpu_ring.csv"))
    args = parser.parse_args(argv)
    pairs = [(int(P), int(N)) for P in args.worlds.split(",") for N in args.sizes.split(",")]
    pairs += [tuple(int(x) for x in item.split(":")) for item in args.extra.split(",") if item]
    # P = 1 sends nothing: prefetch changes nothing there, so it is measured once
    runs = [(P, N, prefetch) for P, N in pairs for prefetch in ((True,) if P == 1 else (True, False))]
    rows = []
    for P, N, prefetch in runs:
        start = time.perf_counter()
        row = measure(
            P, N, B=1, H=1, d=64, layout="zigzag", prefetch=prefetch, repeats=args.repeats, timeout=args.timeout
        )
        rows.append(row)
        print(row, f"({time.perf_counter() - start:.0f} s)", flush=True)
    out = Path(args.out)
    with open(out, "w", newline="") as handle:
        handle.write(
            f"# ring attention, gloo on one machine: {platform.machine()}, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}, shared cores; budget_mib={args.budget_mib}\n"
        )
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out.with_suffix(".png"), args.budget_mib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
