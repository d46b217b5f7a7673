"""CPU benchmark of chapter 14 (block-sparse FlashAttention): writes benchmarks/results/cpu_block_sparse.csv/.png.

Three measurements, each configuration in a fresh process (B=1, H=4, d=64, float32, 2 threads, forward;
glibc's allocator held steady while timing, as ``attnlib.bench`` does):

1. ``size``: BigBird's pattern (block 64, 3 random blocks) at N = 1K..16K with the PyTorch path of
   the block-sparse kernel (registry row ``bigbird_flash``), against dense SDPA and BigBird's own
   gather algorithm (``bigbird``), through ``attnlib.bench``;
2. ``flex``: ``torch.compile(flex_attention)`` on the *same* block mask (its lists handed over with
   ``BlockMask.from_kv_blocks``), at a few sizes only (each shape compiles for ~20 s), against the
   PyTorch path *in the same process, timed in alternation*: on a shared machine a slow spell then
   hits both, and their ratio stays meaningful; in ``--flex-rounds`` fresh processes (a row per
   method and round: the two are close, and one process does not decide which is faster);
3. ``tiles``: the PyTorch path at N = 8192 with 0..32 random blocks per row, so that the number
   of visited tiles grows while everything else stays: the fitted log-log slope of time against
   visited tiles should be near 1.

Usage: .venv/bin/python benchmarks/block_sparse_cpu.py  (about 10 minutes on 2 idle cores)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
FIELDS = ("experiment", "method", "N", "random_blocks", "visited_tiles", "round", "median_s", "peak_mib", "error")
B, H, D = 1, 4, 64


def _worker(config: dict) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from attnlib import bench
    from attnlib.optim.block_mask import bigbird_block_mask
    from attnlib.optim.block_sparse import block_sparse_attention

    torch.set_num_threads(2)
    bench.steady_allocator()  # as attnlib.bench times: calls reuse their pages (no memory is measured here)
    N, r = config["N"], config["random_blocks"]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, generator=gen) for _ in range(3))  # (B, H, N, d) each
    mask = bigbird_block_mask(N, block_size=64, num_random_blocks=r, num_heads=H, seed=0)
    visited = int((mask.kinds != 0).sum())

    def ours():
        return block_sparse_attention(q, k, v, mask, backend="torch")

    if config["method"] != "pair":
        with torch.no_grad():
            ours()  # warm-up
            seconds = bench.median_time(ours, repeats=config["repeats"], warmup=1)
        return {"visited_tiles": visited, "median_s": seconds, "peak_mib": math.nan, "error": ""}

    # "pair": the PyTorch path and torch.compile(flex_attention) on the same block mask, in this one
    # process, timed in alternation (ours, flex, ours, flex, ...), so that a slow spell of a shared
    # machine hits both alike; the medians of each.
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    flex_mask = BlockMask.from_kv_blocks(
        mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks, mask.full_kv_indices, BLOCK_SIZE=(64, 64)
    )  # no partial tiles for BigBird's blocks: no mask_mod needed
    compiled = torch.compile(flex_attention)

    def flex():
        return compiled(q, k, v, block_mask=flex_mask)

    with torch.no_grad():
        difference = (flex() - ours()).abs().max().item()  # compiles flex; the same attention?
        assert difference < 1e-4, difference
        for call in (ours, flex):
            bench.median_time(call, repeats=1, warmup=1)
        times = {"bigbird_flash": [], "flex_compiled": []}
        for _ in range(config["repeats"]):
            times["bigbird_flash"].append(bench.median_time(ours, repeats=1, warmup=0))
            times["flex_compiled"].append(bench.median_time(flex, repeats=1, warmup=0))
    return {
        method: {"visited_tiles": visited, "median_s": statistics.median(t), "peak_mib": math.nan, "error": ""}
        for method, t in times.items()
    }


def _in_fresh_process(config: dict, timeout: float = 1200) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"visited_tiles": "", "median_s": math.nan, "peak_mib": math.nan, "error": f"timeout {timeout} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return {"visited_tiles": "", "median_s": math.nan, "peak_mib": math.nan, "error": last[:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write(rows: list[dict], path: Path) -> None:
    import platform

    import torch

    with open(path, "w", newline="") as handle:
        handle.write(f"# measured on {platform.machine()}, torch {torch.__version__}, 2 threads, forward only\n")
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for method in ("sdpa", "bigbird", "bigbird_flash", "flex_compiled"):
        experiment = "flex" if method == "flex_compiled" else "size"  # the flex rounds: the median per size
        by_size: dict[int, list[float]] = {}
        for r in rows:
            if r["method"] == method and r["experiment"] == experiment and r["median_s"] == r["median_s"]:
                by_size.setdefault(int(r["N"]), []).append(float(r["median_s"]))
        points = [(N, statistics.median(times)) for N, times in sorted(by_size.items())]
        if points:
            left.loglog(*zip(*points), marker="o", label=method)
    left.set_xlabel("N (tokens)")
    left.set_ylabel("forward time (s)")
    left.set_title("BigBird's pattern, B=1, H=4, d=64, CPU")
    left.legend()
    tiles = sorted((int(r["visited_tiles"]), float(r["median_s"])) for r in rows if r["experiment"] == "tiles")
    if tiles:
        right.loglog(*zip(*tiles), marker="o")
    right.set_xlabel("visited tiles (64 x 64)")
    right.set_ylabel("forward time (s)")
    right.set_title("PyTorch path, N = 8192, 0..32 random blocks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="1024,2048,4096,8192,16384")
    parser.add_argument("--flex-sizes", default="4096,16384")
    parser.add_argument("--tiles-N", type=int, default=8192)
    parser.add_argument("--random-blocks", default="0,2,4,8,16,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flex-repeats", type=int, default=11, help="alternating calls of each in the flex pair")
    parser.add_argument("--flex-rounds", type=int, default=5, help="fresh processes of the flex pair, per size")
    parser.add_argument("--out", default=str(RESULTS / "cpu_block_sparse.csv"))
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return 0

    from attnlib import bench

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for row in bench.run(["sdpa", "bigbird", "bigbird_flash"], sizes, repeats=args.repeats, B=B, H=H, d=D,
                         resume=False):  # fmt: skip
        rows.append({"experiment": "size", "method": row["method"], "N": row["N"], "random_blocks": 3,
                     "visited_tiles": "", "median_s": row["median_s"], "peak_mib": row["peak_mib"],
                     "error": row.get("error", "")})  # fmt: skip
        _write(rows, Path(args.out))
    for N in [int(s) for s in args.flex_sizes.split(",") if s]:
        for round_index in range(args.flex_rounds):
            config = {"method": "pair", "N": N, "random_blocks": 3, "repeats": args.flex_repeats}
            pair = _in_fresh_process(config)
            for method in ("bigbird_flash", "flex_compiled"):  # the same mask, timed in alternation
                result = pair.get(method, pair)  # an error result has no per-method entries
                rows.append({"experiment": "flex", "method": method, "N": N, "random_blocks": 3,
                             "round": round_index, **result})  # fmt: skip
                print(rows[-1], flush=True)
            _write(rows, Path(args.out))
    for r in [int(s) for s in args.random_blocks.split(",")]:
        config = {"method": "bigbird_flash", "N": args.tiles_N, "random_blocks": r, "repeats": args.repeats}
        result = _in_fresh_process(config)
        rows.append({"experiment": "tiles", "method": "bigbird_flash", "N": args.tiles_N, "random_blocks": r,
                     **result})  # fmt: skip
        print(rows[-1], flush=True)
        _write(rows, Path(args.out))
    plot(rows, Path(args.out).with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
