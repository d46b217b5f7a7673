#!/usr/bin/env bash
# Re-create the committed CPU measurements (about 4 minutes on 2 idle cores; run it on an
# otherwise idle machine). Every method is measured in the same run, each configuration in a
# fresh process: B=1, H=4, d=64, float32, 2 threads, attention core only (q, k, v given).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m attnlib.bench run \
  --methods dense,sdpa,bigbird,reformer,flash \
  --sizes 1024,2048,4096,8192,16384 --repeats 3 \
  --out benchmarks/results/cpu_attention.csv \
  --plot benchmarks/results/cpu_attention.png
