"""Running ring attention in a group of processes on one machine: start, watch, stop, check.

The algorithm is :mod:`attnlib.optim.ring`; this module is the machinery around it, for the
chapter ("Ring attention", chapters/*/15_ring_attention.ipynb), the tests and the command line:

* :func:`launch` runs ``worker(rank, world_size, *args)`` in fresh processes joined in a gloo
  process group (they meet through a file: nothing listens on the network). The failure protocol:
  a rank that raises writes the time and its traceback to a file; the parent stops the other ranks
  and raises a RuntimeError that names the rank that failed *first* (the others fail because it
  is gone); after ``timeout`` seconds every rank is stopped and TimeoutError is raised.
* :class:`RingCase` and :func:`compare_with_reference` run ring attention, forward and backward,
  and compare each output, logsumexp and gradient with :func:`attnlib.reference.attention` on
  the whole sequence.
* :func:`measure_worker` is one rank of the memory and time measurement (``benchmarks/ring_cpu.py``).
* ``python -m attnlib.optim.ring_launcher --world-size 4`` (or ``torchrun --nproc-per-node 4 -m
  attnlib.optim.ring_launcher``) checks ring attention against the reference from the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .._checks import check_positive_int
from .._platform import M_MMAP_THRESHOLD, release_free_memory, reset_peak_rss, set_malloc_option, status_bytes
from .ring import RingStats, ring_attention, shard, unshard

__all__ = ["launch", "RingCase", "case_inputs", "cases_worker", "compare_with_reference", "measure_worker", "main"]


# --------------------------------------------------------------------------
# 1. Launching a group of processes (for the notebook, the tests and the command line)
# --------------------------------------------------------------------------


def _entry(rank, worker, world_size, init_file, backend, result_dir, timeout_s, threads, args):
    """What each spawned process runs: join the group, call ``worker``, save its result."""
    torch.set_num_threads(threads)
    dist.init_process_group(
        backend,
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    try:
        result = worker(rank, world_size, *args)
        torch.save(result, os.path.join(result_dir, f"rank{rank}.pt"))
    except BaseException as error:
        # the time tells the parent which rank failed first (the others fail because it is gone)
        message = "".join(traceback.format_exception(error))
        last_line = f"{type(error).__name__}: {error}"
        with open(os.path.join(result_dir, f"error{rank}.txt"), "w") as handle:
            handle.write(f"{time.time()!r}\n{last_line}\n{message}")
        raise
    finally:
        dist.destroy_process_group()


def _first_failure(folder: str, world_size: int):
    """``(rank, last line, traceback)`` of the rank that failed first, or None."""
    failures = []
    for rank in range(world_size):
        path = os.path.join(folder, f"error{rank}.txt")
        if os.path.exists(path):
            with open(path) as handle:
                when, last_line, message = handle.read().split("\n", 2)
            failures.append((float(when), rank, last_line, message))
    if not failures:
        return None
    _, rank, last_line, message = min(failures)
    return rank, last_line, message


def _stop(context) -> None:
    for process in context.processes:
        if process.is_alive():
            process.terminate()
    for process in context.processes:
        process.join(5)


def launch(
    worker, world_size: int, *args, backend: str = "gloo", timeout: float = 120.0, threads: int = 1, start_method=None
) -> list:
    """Run ``worker(rank, world_size, *args)`` in ``world_size`` fresh processes joined in a process group.

    The processes are started with ``torch.multiprocessing``, meet through a file in a temporary
    folder (nothing listens on the network) and return their results (anything ``torch.save``
    takes), listed by rank. Each process uses ``threads`` threads.

    If a rank raises, the others are stopped and a RuntimeError names the rank that failed first
    and carries its traceback; after ``timeout`` seconds every rank is stopped and TimeoutError is
    raised. On Linux the processes are forked (no second import of torch: fast, and ``worker`` may
    be any function); elsewhere, or with ``start_method="spawn"``, ``worker`` must be importable.
    """
    check_positive_int("world_size", world_size)
    check_positive_int("threads", threads)
    if not callable(worker):
        raise TypeError(f"worker must be a callable (rank, world_size, *args), got {type(worker).__name__}")
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    import torch.multiprocessing as mp

    if start_method is None:  # fork: no second import of torch per process (seconds on a busy machine)
        start_method = "fork" if "fork" in mp.get_all_start_methods() and sys.platform == "linux" else "spawn"
    folder = tempfile.mkdtemp(prefix="attnlib-ring-")
    try:
        init_file = os.path.join(folder, "rendezvous")
        context = mp.start_processes(
            _entry,
            args=(worker, world_size, init_file, backend, folder, timeout, threads, args),
            nprocs=world_size,
            join=False,
            start_method=start_method,
        )
        deadline = time.monotonic() + timeout
        # join() logs a warning with process ids when it stops the other ranks; the error raised here says it
        spawn_log = logging.getLogger("torch.multiprocessing.spawn")
        spawn_log_level = spawn_log.level
        spawn_log.setLevel(logging.ERROR)
        try:
            while not context.join(timeout=0.2):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the {world_size} ranks did not finish within {timeout} s (a rank waits for a message "
                        "that never comes?); all were stopped"
                    )
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as error:
            _stop(context)
            first = _first_failure(folder, world_size)
            if first is None:  # killed by a signal, or exited without a Python exception
                raise RuntimeError(
                    f"rank {error.error_index} of {world_size} failed ({error}); the others were stopped"
                ) from error
            rank, last_line, message = first
            raise RuntimeError(
                f"rank {rank} of {world_size} raised {last_line!r}; the other ranks were stopped.\n{message}"
            ) from None
        finally:
            _stop(context)
            spawn_log.setLevel(spawn_log_level)
        return [torch.load(os.path.join(folder, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------
# 2. Ring attention against the reference, and one rank of a measurement
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RingCase:
    """One configuration for :func:`compare_with_reference` (whole-sequence sizes)."""

    N_q: int = 32
    N_k: int | None = None  # None: N_q (self-attention)
    B: int = 1
    H: int = 2
    H_kv: int = 2
    d: int = 8
    d_v: int | None = None  # None: d
    causal: bool = True
    layout: str = "zigzag"
    seed: int = 0
    logit_scale: float = 1.0  # multiplies q: large values test the merge at large logits
    backend: str = "auto"  # the local FlashAttention: "auto", "torch" or "triton"
    prefetch: bool = True  # the backward receives the next shard while it computes


def case_inputs(case: RingCase):
    """The whole sequence's ``q, k, v`` and the upstream gradient ``dout`` of a case, from its seed."""
    generator = torch.Generator().manual_seed(case.seed)
    N_k = case.N_q if case.N_k is None else case.N_k
    d_v = case.d if case.d_v is None else case.d_v
    q = torch.randn(case.B, case.H, case.N_q, case.d, generator=generator) * case.logit_scale
    k = torch.randn(case.B, case.H_kv, N_k, case.d, generator=generator)
    v = torch.randn(case.B, case.H_kv, N_k, d_v, generator=generator)
    dout = torch.randn(case.B, case.H, case.N_q, d_v, generator=generator)
    return q, k, v, dout


def cases_worker(rank: int, world_size: int, cases) -> list[dict]:
    """Run each case's ring attention, forward and backward, on this rank's shards."""
    results = []
    for case in cases:
        q, k, v, dout = (shard(x, rank, world_size, layout=case.layout) for x in case_inputs(case))
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        stats = RingStats()
        out, lse = ring_attention(
            q, k, v, causal=case.causal, layout=case.layout, return_lse=True, stats=stats, backend=case.backend,
            prefetch=case.prefetch,
        )  # fmt: skip
        out.backward(dout)
        results.append(dict(out=out.detach(), lse=lse, dq=q.grad, dk=k.grad, dv=v.grad, pairs=stats.pairs))
    return results


def compare_with_reference(cases, world_size: int, *, timeout: float = 120.0) -> list[dict]:
    """Run ``cases`` in one group of ``world_size`` processes; compare with ``reference.attention``.

    Returns one dict per case: the max absolute error of ``out``, ``lse`` (finite entries),
    ``dq``, ``dk``, ``dv`` against the reference on the whole sequence, ``lse_inf_match`` (the
    ``-inf`` entries agree) and ``pairs`` (each rank's work per step, as measured).
    """
    from ..reference import attention

    cases = list(cases)
    per_rank = launch(cases_worker, world_size, cases, timeout=timeout)
    report = []
    for index, case in enumerate(cases):
        q, k, v, dout = case_inputs(case)
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        ref_out, ref_lse = attention(q, k, v, causal=case.causal, return_lse=True)
        ref_out.backward(dout)
        got = {name: unshard([r[index][name] for r in per_rank], layout=case.layout) for name in ("out", "lse")}
        got.update(
            {name: unshard([r[index][name] for r in per_rank], layout=case.layout) for name in ("dq", "dk", "dv")}
        )
        finite = torch.isfinite(ref_lse)
        errors = {
            "out": (got["out"] - ref_out.detach()).abs().max().item(),
            "lse": (got["lse"][finite] - ref_lse.detach()[finite]).abs().max().item() if finite.any() else 0.0,
            "dq": (got["dq"] - q.grad).abs().max().item(),
            "dk": (got["dk"] - k.grad).abs().max().item(),
            "dv": (got["dv"] - v.grad).abs().max().item(),
        }
        report.append(
            dict(
                case=case,
                errors=errors,
                lse_inf_match=bool(torch.equal(torch.isinf(got["lse"]), ~finite)),
                pairs=[r[index]["pairs"] for r in per_rank],
            )
        )
    return report


def measure_worker(rank: int, world_size: int, config: dict) -> dict:
    """One rank of a measurement: peak memory and time of a causal forward + backward.

    ``config``: ``N`` (whole sequence), ``B``, ``H``, ``d``, ``layout``, ``repeats``, ``prefetch``. Memory is
    measured on the second step, as in a training loop: the first step at full size pays one-time
    allocations (thread pools, BLAS and gloo buffers). Large allocations get their own mappings
    (glibc's mmap threshold at 64 KiB), so freed tensors leave the resident set. Before the
    second step the resident-set high-water mark is reset (Linux); the peak above the resident set
    then counts this rank's shards, the ring's buffers, the gradients and the tiles.
    """
    # By default glibc raises its mmap threshold as large blocks are freed and keeps freed tensors in
    # its heap, so the resident set would follow its reuse pattern more than the tensors alive.
    set_malloc_option(M_MMAP_THRESHOLD, 64 * 1024)
    N, B, H, d = config["N"], config["B"], config["H"], config["d"]
    layout = config.get("layout", "zigzag")
    prefetch = config.get("prefetch", True)
    n = N // world_size
    generator = torch.Generator().manual_seed(rank)

    def inputs():
        q, k, v = (torch.randn(B, H, n, d, generator=generator).requires_grad_() for _ in range(3))  # (B, H, n, d)
        return q, k, v, torch.randn(B, H, n, d, generator=generator)

    def step(q, k, v, dout, stats=None):
        ring_attention(q, k, v, causal=True, layout=layout, stats=stats, prefetch=prefetch).backward(dout)

    step(*inputs())  # the first step
    release_free_memory()  # so that the measured step pays for every page it touches
    reset_peak_rss()
    before = status_bytes("VmRSS")
    q, k, v, dout = inputs()
    times, waits = [], []
    for repeat in range(config.get("repeats", 1)):  # the first repeat is the measured step
        stats = RingStats()
        dist.barrier()
        tick = time.perf_counter()
        step(q, k, v, dout, stats)
        times.append(time.perf_counter() - tick)
        waits.append(stats.forward_wait_s + stats.backward_wait_s)
        if repeat == 0:
            peak = status_bytes("VmHWM") - before
    best = min(range(len(times)), key=lambda i: times[i])
    return {"peak_bytes": peak, "seconds": times[best], "wait_seconds": waits[best], "bytes_sent": stats.bytes_sent}


# --------------------------------------------------------------------------
# 3. Command line: python -m attnlib.optim.ring_launcher, or torchrun --nproc-per-node 4 -m attnlib.optim.ring_launcher
# --------------------------------------------------------------------------


def _demo_cases() -> list[RingCase]:
    return [
        RingCase(N_q=64, causal=False, layout="plain", seed=1),
        RingCase(N_q=64, causal=True, layout="plain", seed=2),
        RingCase(N_q=64, causal=True, layout="zigzag", seed=3),
        RingCase(N_q=64, H=4, H_kv=2, causal=True, layout="zigzag", seed=4),
    ]


def _print_report(report, world_size) -> bool:
    ok = True
    for row in report:
        case, errors = row["case"], row["errors"]
        worst = max(errors.values())
        ok &= worst < 1e-5 and row["lse_inf_match"]
        label = f"N={case.N_q} H={case.H} H_kv={case.H_kv} causal={case.causal} layout={case.layout}"
        print(f"P={world_size} {label}: max |error| over out, lse, dq, dk, dv < 1e-5: {worst < 1e-5}")
    return ok


def _torchrun_main() -> int:
    """Under torchrun: every rank runs the demo cases; rank 0 prints the comparison."""
    from ..reference import attention

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    try:
        results = cases_worker(rank, world_size, _demo_cases())
        gathered = [None] * world_size
        dist.all_gather_object(gathered, results)
        if rank == 0:
            ok = True
            for index, case in enumerate(_demo_cases()):
                q, k, v, _ = case_inputs(case)
                ref = attention(q, k, v, causal=case.causal)
                out = unshard([g[index]["out"] for g in gathered], layout=case.layout)
                error = (out - ref).abs().max().item()
                ok &= error < 1e-5
                print(f"rank 0 of {world_size}: causal={case.causal} layout={case.layout} H_kv={case.H_kv}: "
                      f"max |out - reference| < 1e-5: {error < 1e-5}")  # fmt: skip
            return 0 if ok else 1
        return 0
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m attnlib.optim.ring_launcher",
        description="Check ring attention against the reference with a group of gloo processes on this machine. "
        "Under torchrun (torchrun --nproc-per-node 4 -m attnlib.optim.ring_launcher) each process is one rank.",
    )
    parser.add_argument("--world-size", type=int, default=4, help="processes to spawn (ignored under torchrun)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before every rank is stopped")
    args = parser.parse_args(argv)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return _torchrun_main()
    check_positive_int("--world-size", args.world_size)
    report = compare_with_reference(_demo_cases(), args.world_size, timeout=args.timeout)
    return 0 if _print_report(report, args.world_size) else 1


if __name__ == "__main__":
    raise SystemExit(main())
