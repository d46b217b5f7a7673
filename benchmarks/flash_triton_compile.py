"""Compile the FlashAttention Triton kernels for three NVIDIA GPUs without one, and record what the compiler made.

For each GPU (compute capability 75: T4, 80: A100, 90: H100/H200), head dimension (64, 128) and
kernel (forward, preprocess, dK/dV, dQ), float16 inputs, with the tiles ``kernel_config`` picks:

* ``shared_bytes``: the shared memory one program needs (``CompiledKernel.metadata.shared``);
* ``registers``, ``spill_store_bytes``, ``spill_load_bytes``, ``stack_bytes``: the report of
  ``ptxas``, NVIDIA's assembler that ships with Triton (``ptxas -v``, which Triton runs and prints
  when ``TRITON_DUMP_PTXAS_LOG=1``). On a GPU Triton gives the same numbers as ``n_regs`` and
  ``n_spills`` once the kernel is loaded; without one, the assembler's report is where they are;
* ``ptx_instructions``, ``mma``, ``wgmma``, ``fma``, ``ex2``: instruction counts in the PTX
  (tensor-core ``mma.sync`` and ``wgmma.mma_async``, float32 ``fma.rn.f32``, ``ex2.approx``).

Usage (from the repository root; a few minutes of CPU, no GPU)::

    python benchmarks/flash_triton_compile.py --out benchmarks/results/flash_triton_compile.csv
    python benchmarks/flash_triton_compile.py --capabilities 80 --head-dims 64 --out -   # one GPU, to stdout

Every compilation uses a fresh, temporary Triton cache (a cached kernel would skip the assembler and
its report). Chapter: "FlashAttention in Triton" (chapters/*/11_flash_triton.ipynb), section 6.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import re
import sys
import tempfile
from pathlib import Path

# The compiler, not the interpreter, and the assembler's report printed: both must be set before
# the first `import triton`, which happens when attnlib.optim.flash_triton is imported below.
os.environ.pop("TRITON_INTERPRET", None)
os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"

_REPO = Path(__file__).resolve().parent.parent
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

COLUMNS = (
    "triton", "capability", "d", "dtype", "kernel", "block_m", "block_n", "num_warps", "num_stages",
    "shared_bytes", "registers", "spill_store_bytes", "spill_load_bytes", "stack_bytes",
    "ptx_instructions", "mma", "wgmma", "fma", "ex2",
)  # fmt: skip
CAPABILITIES = (75, 80, 90)
HEAD_DIMS = (64, 128)

# ptxas -v, one block per entry function:
#   ptxas info    : Compiling entry function '_flash_fwd_kernel' for 'sm_80'
#       0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
#   ptxas info    : Used 255 registers, used 1 barriers, 480 bytes cmem[0]
_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


def parse_ptxas_log(log: str) -> dict[str, dict[str, int]]:
    """``{entry function: {registers, spill_store_bytes, spill_load_bytes, stack_bytes}}`` from ``ptxas -v``."""
    report: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        if match := _ENTRY.search(line):
            current = report.setdefault(match.group(1), {})
        elif current is not None and (match := _FRAME.search(line)):
            current.update(stack_bytes=int(match[1]), spill_store_bytes=int(match[2]), spill_load_bytes=int(match[3]))
        elif current is not None and (match := _REGISTERS.search(line)):
            current["registers"] = int(match[1])
    return report


def _count(pattern: str, ptx: str) -> int:
    """Instruction lines of the PTX that start with ``pattern`` (possibly predicated: ``@%p1 ...``)."""
    return len(re.findall(r"^\s*(?:@!?%p\d+\s+)?" + pattern, ptx, re.M))


def compile_report(capability: int, head_dim: int) -> list[dict]:
    """One row per kernel (columns ``COLUMNS``), compiled now for ``sm{capability}``, float16."""
    import torch
    import triton

    from attnlib.optim import flash_triton as ft

    with tempfile.TemporaryDirectory(prefix="triton-cache-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # a fresh cache: really compile, so ptxas reports
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # Triton prints the assembler's report to stdout
            kernels = ft.compile_kernels(capability, head_dim, torch.float16)
    report = parse_ptxas_log(log.getvalue())
    rows = []
    for name, kernel in kernels.items():
        cfg = ft.kernel_config(name, head_dim, torch.float16, capability)
        ptx = kernel.asm["ptx"]
        # instruction lines only: the debug sections carry file paths, which differ between machines
        lines = [line.strip() for line in ptx.splitlines()]
        instructions = [line for line in lines if line.endswith(";") and not line.startswith(".")]
        assembler = report[kernel.metadata.name]
        rows.append(
            dict(
                triton=triton.__version__, capability=capability, d=head_dim, dtype="float16", kernel=name,
                block_m=cfg.block_m, block_n=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                shared_bytes=kernel.metadata.shared, **assembler, ptx_instructions=len(instructions),
                mma=_count(r"mma\.sync", ptx), wgmma=_count(r"wgmma\.mma_async", ptx),
                fma=_count(r"fma\.rn\.f32", ptx), ex2=_count(r"ex2\.approx", ptx),
            )
        )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capabilities", type=int, nargs="+", default=list(CAPABILITIES), help="75, 80, 90...")
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(HEAD_DIMS))
    parser.add_argument("--out", default=str(_REPO / "benchmarks" / "results" / "flash_triton_compile.csv"),
                        help="CSV file to write, or - for stdout")  # fmt: skip
    args = parser.parse_args(argv)
    rows = [row for cc in args.capabilities for d in args.head_dims for row in compile_report(cc, d)]
    with contextlib.ExitStack() as stack:
        handle = sys.stdout if args.out == "-" else stack.enter_context(open(args.out, "w", newline=""))
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
