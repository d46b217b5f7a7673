#!/usr/bin/env bash
# Re-create the committed CPU measurements that the chapters read: every method in one run per
# kind, each configuration in a fresh process (median of 3 after warm-up, peak memory), 2 threads.
# About 30 minutes on 2 idle cores; run it on an otherwise idle machine. Ctrl-C and rerun resumes;
# --restart (passed through) measures everything again.
#   language: attention core, q, k, v given: B=1, H=4, d=64, float32, N = 1K .. 16K
#   vision:   token mixers on square maps: B=1, C=96, 3 heads, sides 28 .. 140 (N = 784 .. 19,600);
#             dense attention is skipped where its two N x N buffers would exceed 5 GiB
#   linear:   chapter 16: linear attention, Performer (m = 256) and Linformer (k = 256) against dense
#             and SDPA, language configuration, non-causal (cpu_linear.csv) and causal (cpu_linear_causal.csv:
#             the chunked form of linear attention and Performer; Linformer cannot be causal), in 3 rounds
#             of fresh processes, the methods taking turns (the median is kept): their many small
#             operations suffer most when the machine is busy
#   ssm:      chapter 17: the recurrence, quadratic and chunked SSD forms against causal SDPA, N = 1K .. 32K,
#             and decoding with a fixed state against a KV cache (cpu_ssm.csv)
# Not measured here: falcon (its attention is flash_attention, the "flash" row) and ring (a
# one-process simulation of P ranks; benchmarks/ring_cpu.py measures real gloo processes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
"$PY" -m attnlib.bench run "$@" \
  --methods dense,sdpa,bigbird,reformer,flash,bigbird_flash \
  --sizes 1024,2048,4096,8192,16384 --repeats 3 \
  --out benchmarks/results/cpu_attention.csv \
  --plot benchmarks/results/cpu_attention.png
"$PY" -m attnlib.bench run "$@" --kind vision \
  --methods dense,sdpa,swin,maxvit,pvt,dat,mixer,poolformer,coat \
  --sizes 28,56,84,112,140 --channels 96 --heads 3 --repeats 3 --max-memory-gib 5 \
  --out benchmarks/results/cpu_vision.csv \
  --plot benchmarks/results/cpu_vision.png
"$PY" -m attnlib.bench run "$@" --rounds 3 \
  --methods dense,sdpa,linear,performer,linformer \
  --sizes 1024,2048,4096,8192,16384 --repeats 3 \
  --out benchmarks/results/cpu_linear.csv
"$PY" -m attnlib.bench run "$@" --causal --rounds 3 \
  --methods dense,sdpa,linear,performer \
  --sizes 1024,2048,4096,8192,16384 --repeats 3 \
  --out benchmarks/results/cpu_linear_causal.csv
"$PY" benchmarks/ssm_cpu.py --out benchmarks/results/cpu_ssm.csv
# The accuracy arena (benchmarks/quality.py: every registered method on generated tasks, several
# seeds) is its own run, about 75 minutes on 2 cores (December 2026: the language tasks about 40, the
# vision task about 32):
#   "$PY" benchmarks/quality.py --out benchmarks/results/cpu_arena.csv
