"""CPU benchmark of attnlib.ssm: the SSD model's three algorithms beside causal SDPA, and decoding.

One run, every configuration in a fresh process (``B = 1``, ``H = 4`` heads, head dimension
``d = 64``, state size ``n = 64``, float32, 2 threads by default, ``N`` from 1K to 32K):

* ``kind = forward``: the output over ``N`` tokens from ``x, B, C, log_a`` (or ``q, k, v``) given:
  ``recurrent`` (:func:`attnlib.ssm.ssd.ssd_recurrent`, one token at a time), ``quadratic``
  (:func:`~attnlib.ssm.ssd.ssd_quadratic`, the ``N x N`` masked form), ``chunked``
  (:func:`~attnlib.ssm.ssd.ssd_chunked`, chunks of ``--chunk-size``) and ``sdpa``
  (``torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)``, softmax
  attention with ``d = 64``). ``median_s`` is the median wall time of ``--repeats`` calls after one
  warm-up; ``peak_mib`` the resident memory one call adds (measured first, in the fresh process).
  ``quadratic`` is skipped above ``--max-quadratic`` tokens (its ``N x N`` float32 buffers: 1 GiB
  each at 8K, about five of them) and ``recurrent`` above ``--max-recurrent`` (a Python loop of N
  steps); skipped rows say so.
* ``kind = decode``: one more token after ``N`` tokens. ``ssm_step``: :func:`~attnlib.ssm.ssd.ssd_step`
  on the state left by the chunked form over the ``N`` tokens; ``state_bytes`` = the state
  ``(B, H, n, d)``. ``kv_cache``: the new token's query attending to the ``N`` cached keys and values
  (SDPA); ``state_bytes`` = the cache, ``2 B H N d`` float32. ``per_token_s`` is the median over
  ``--steps`` steps.

Usage::

    python benchmarks/ssm_cpu.py --out benchmarks/results/cpu_ssm.csv

Every worker runs with ``OMP_WAIT_POLICY=PASSIVE`` (``--omp-wait-policy``): OpenMP's threads sleep
at the end of a parallel region instead of spinning. On a machine shared with other processes, a
spinning thread holds a core that the other thread of the same operation is waiting for; the many
small parallel operations of the chunked form (and of a decoding step) then ran 3-4x slower with 2
threads than with 1. Only ratios measured in one run mean something on a shared machine. Chapter: "State-space models"
(chapters/*/17_state_space.ipynb); targets: benchmarks/targets/ch17_state_space.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attnlib import bench  # noqa: E402
from attnlib.ssm import ssd as S  # noqa: E402

FORWARD = ("recurrent", "quadratic", "chunked", "sdpa")
DECODE = ("ssm_step", "kv_cache")
FIELDS = [
    "kind", "method", "N", "B", "H", "d", "n", "chunk_size", "median_s", "peak_mib", "state_bytes",
    "per_token_s", "threads", "status", "note",
]  # fmt: skip


def _inputs(job: dict):
    gen = torch.Generator().manual_seed(0)
    B, H, N, d, n = job["B"], job["H"], job["N"], job["d"], job["n"]
    x = torch.randn(B, H, N, d, generator=gen)
    Bm = torch.randn(B, H, N, n, generator=gen) / n**0.5
    C = torch.randn(B, H, N, n, generator=gen) / n**0.5
    log_a = -0.1 * torch.rand(B, H, N, generator=gen)  # a in [0.9, 1]: long memory
    return x, Bm, C, log_a


def measure(job: dict) -> dict:
    """One configuration, in this process."""
    torch.set_num_threads(job["threads"])
    kind, method, Q = job["kind"], job["method"], job["chunk_size"]
    x, Bm, C, log_a = _inputs(job)
    row = {key: job[key] for key in ("kind", "method", "N", "B", "H", "d", "n", "chunk_size", "threads")}
    if kind == "forward":
        fns = {
            "recurrent": lambda: S.ssd_recurrent(x, Bm, C, log_a=log_a),
            "quadratic": lambda: S.ssd_quadratic(x, Bm, C, log_a=log_a),
            "chunked": lambda: S.ssd_chunked(x, Bm, C, log_a=log_a, chunk_size=Q),
            # softmax attention on tensors of the same shape (q, k, v all (B, H, N, 64))
            "sdpa": lambda: torch.nn.functional.scaled_dot_product_attention(C, Bm, x, is_causal=True),
        }
        fn = fns[method]
        with torch.no_grad():
            peak = bench.peak_memory_bytes(fn)
            bench.steady_allocator()  # the timing: each call reuses the pages of the previous one
            row["median_s"] = bench.median_time(fn, repeats=job["repeats"], warmup=1)
        row["peak_mib"] = peak / 2**20
        return row
    with torch.no_grad():
        if method == "ssm_step":
            _, state = S.ssd_chunked(x, Bm, C, log_a=log_a, chunk_size=Q, return_final_state=True)
            x_t, B_t, C_t, la_t = x[:, :, -1], Bm[:, :, -1], C[:, :, -1], log_a[:, :, -1]
            row["state_bytes"] = state.numel() * state.element_size()

            def fn():
                return S.ssd_step(state, x_t, B_t, C_t, log_a=la_t, check_values=False)

        else:
            k_cache, v_cache = Bm.contiguous(), x.contiguous()  # the cache of the N tokens
            q_t = C[:, :, -1:].contiguous()  # (B, H, 1, n): the new token sees every cached key
            row["state_bytes"] = 2 * k_cache.numel() * k_cache.element_size()

            def fn():
                return torch.nn.functional.scaled_dot_product_attention(q_t, k_cache, v_cache)

        bench.steady_allocator()
        row["per_token_s"] = bench.median_time(fn, repeats=job["steps"], warmup=5)
    return row


def _in_fresh_process(job: dict, timeout: float) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": job["omp_wait_policy"]}
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--job", json.dumps(job)], capture_output=True, text=True, timeout=timeout,
            env=env,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {**job, "status": "error", "note": f"timed out after {timeout:g} s"}
    if done.returncode != 0:
        return {**job, "status": "error", "note": (done.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "status": "ok", "note": ""}


def _skip_reason(method: str, N: int, args) -> str:
    if method == "quadratic" and N > args.max_quadratic:
        return f"skipped: N x N buffers above --max-quadratic {args.max_quadratic}"
    if method == "recurrent" and N > args.max_recurrent:
        return f"skipped: token loop above --max-recurrent {args.max_recurrent}"
    return ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/cpu_ssm.csv")
    parser.add_argument("--sizes", default="1024,2048,4096,8192,16384,32768")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50, help="decoding steps timed per N")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--max-quadratic", type=int, default=4096)
    parser.add_argument("--max-recurrent", type=int, default=32768)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE"],
        help="OpenMP threads sleep (PASSIVE) or spin (ACTIVE) at barriers; see the module docstring",
    )  # fmt: skip
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        print(json.dumps(measure(json.loads(args.job))))
        return 0
    out = bench.check_writable(args.out)
    sizes = [int(s) for s in args.sizes.split(",")]
    base = dict(B=1, H=4, d=64, n=64, chunk_size=args.chunk_size, threads=args.threads, repeats=args.repeats,
                steps=args.steps, omp_wait_policy=args.omp_wait_policy)  # fmt: skip
    rows = []
    for kind, methods in (("forward", FORWARD), ("decode", DECODE)):
        for N in sizes:
            for method in methods:
                job = {**base, "kind": kind, "method": method, "N": N}
                reason = _skip_reason(method, N, args) if kind == "forward" else ""
                row = {**job, "status": "skipped", "note": reason} if reason else _in_fresh_process(job, args.timeout)
                rows.append({key: row.get(key, "") for key in FIELDS})
                shown = row.get("median_s", row.get("per_token_s", ""))
                print(f"{kind:8s} {method:10s} N={N:6d} {row['status']:8s} {shown} {row.get('note', '')}", flush=True)
                with out.open("w", newline="") as handle:
                    handle.write(f"# {bench.machine_description()}\n")
                    writer = csv.DictWriter(handle, FIELDS)
                    writer.writeheader()
                    writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
