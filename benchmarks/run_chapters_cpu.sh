#!/usr/bin/env bash
# Re-create the committed CPU measurements that single chapters read (benchmarks/run_cpu.sh makes
# the ones of the introduction and the comparison). Each configuration runs in a fresh process,
# 2 threads, float32; the windowed mixers in 5 rounds of fresh processes, PVT and DAT in 3, the
# methods taking turns (the median is kept), so that a slow spell of this shared machine does not
# decide a result. (A fresh process that ran 1.5x slower throughout was glibc's allocator handing
# pages back after every call; attnlib.bench now fixes its thresholds before timing, since
# 2026-11-30: every result this script and run_cpu.sh write is measured so (falcon_decode and
# block_sparse_cpu call it in their own timing workers), except ring_cpu, which
# measures memory above all and maps every large block on its own instead; quality has no timing.)
# Run it on an otherwise idle machine (about an hour on 2 cores).
# Ctrl-C and rerun resumes the attnlib.bench runs; --restart (passed through) measures them again.
#   01 Swin, 02 MaxViT:      one attention layer, C=96, 3 heads (Swin-T stage 1), sides 28 .. 168
#   03 PVT, 04 DAT:          C=64, 1 head (PVT stage 1, R=8) and 2 heads (DAT stage 1, r=8), sides 28 .. 168
#   07 Mixer .. 09 CoaT:     token mixers, C=96, 3 heads, sides 28 .. 224
#   12 Falcon:               cached decoding against recomputation (benchmarks/falcon_decode.py)
#   14 block-sparse:         benchmarks/block_sparse_cpu.py (with compiled FlexAttention)
#   15 ring attention:       benchmarks/ring_cpu.py (gloo processes, P = 1, 2, 4)
# Dense attention is skipped where its two N x N buffers per head would exceed 5 GiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
R=benchmarks/results
VISION=("$PY" -m attnlib.bench run "$@" --kind vision --repeats 5 --max-memory-gib 5)
"${VISION[@]}" --rounds 5 --methods dense,sdpa,swin,maxvit --sizes 28,56,84,112,140,168 --channels 96 --heads 3 \
  --out $R/cpu_vision_windows.csv --plot $R/cpu_vision_windows.png
"${VISION[@]}" --rounds 3 --methods dense,sdpa,pvt --sizes 28,56,84,112,140,168 --channels 64 --heads 1 \
  --out $R/cpu_vision_pvt_dat.csv
"${VISION[@]}" --rounds 3 --methods dense,sdpa,dat --sizes 28,56,84,112,140,168 --channels 64 --heads 2 \
  --out $R/cpu_vision_pvt_dat.csv --plot $R/cpu_vision_pvt_dat.png
# The approximation mixers: one round (median of 7 calls) is enough.
"$PY" -m attnlib.bench run "$@" --kind vision --repeats 7 --max-memory-gib 5 \
  --methods dense,sdpa,mixer,poolformer,coat --sizes 28,56,84,112,140,168,224 --channels 96 --heads 3 \
  --out $R/cpu_vision_approx.csv --plot $R/cpu_vision_approx.png
"$PY" benchmarks/falcon_decode.py --out $R/cpu_falcon_decode.csv --plot $R/cpu_falcon_decode.png
"$PY" benchmarks/block_sparse_cpu.py --out $R/cpu_block_sparse.csv
"$PY" benchmarks/ring_cpu.py --out $R/cpu_ring.csv
# Chapters 04 and 11: the DAT offsets study (training, no timing) and the Triton compile report.
"$PY" benchmarks/dat_offsets.py --out $R/cpu_dat_offsets.csv
"$PY" benchmarks/flash_triton_compile.py
