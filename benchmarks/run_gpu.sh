#!/usr/bin/env bash
# Every GPU measurement of the book in one command, about 10 minutes on an H100/H200:
#   benchmarks/run_gpu.sh [OUT]        (OUT: the folder for the results, default benchmarks/results)
# 1. the Triton kernels' tests, natively on the GPU (tests/test_flash_triton.py,
#    tests/test_block_sparse.py and tests/test_ssd_triton.py run on CUDA when there is a GPU; compiling for other GPUs is left to
#    the CPU machines), at most 150 s;
# 2. benchmarks/flash_gpu.py (chapter 11): at most 4 minutes of sweep and 1 of other tilings;
# 3. benchmarks/block_sparse_gpu.py (chapter 14): at most 2.5 minutes.
# A failing step does not stop the next; the exit status is the last failure's. Everything printed
# also goes to OUT/run_gpu.log. Every CSV row carries the GPU's name and the date: commit the CSVs
# (and the PNG) that land in OUT to benchmarks/results/, and rebuild chapters 11 and 14.
# PYTHON picks the interpreter (default python3). It installs nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG="$OUT/run_gpu.log"
export PYTHONUNBUFFERED=1
status=0
step() {
  echo "== $* ($(date -u +%H:%M:%S))" | tee -a "$LOG"
  "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    echo "== exit status $rc" | tee -a "$LOG"
    status=$rc
  fi
}
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "no CUDA GPU is visible to $PY: nothing to measure" >&2
  exit 1
fi
step "$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '|', torch.cuda.get_device_name(0))"
step timeout 150 "$PY" -m pytest tests/test_flash_triton.py tests/test_block_sparse.py tests/test_ssd_triton.py -q -k "not compile"
step "$PY" benchmarks/flash_gpu.py --out "$OUT" --max-minutes 4 --tiles-minutes 1
step "$PY" benchmarks/block_sparse_gpu.py --out "$OUT" --max-minutes 2.5
exit $status
