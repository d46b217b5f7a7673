"""Decoding benchmark of attnlib.models.falcon: KV-cache bytes and tokens per second, MHA vs GQA vs MQA.

For each head setting (multi-head, grouped-query, multi-query) and each prompt length P, one
fresh process builds the same model except for its key/value heads, fills a KV cache with a
random prompt of P tokens, and measures

* ``cached_ms``: one decoding step with the cache (the newest token attends to the P cached keys),
  the median over ``--steps`` consecutive steps;
* ``recompute_ms``: the same next token without a cache, i.e. one forward pass over all P tokens
  (median of ``--repeats``);
* ``cache_bytes``: the bytes of the cache for P tokens (``2 L B H_kv P d`` elements, float32),
  checked against the buffers actually allocated.

Attention is ``attention="flash"``: the PyTorch tiles of attnlib.optim.flash on a CPU, the Triton
kernel on a GPU. Only ratios measured in the same run mean something on a shared CPU. There,
``--clock process`` with ``--threads 1`` times the CPU time of the process instead of the wall
time: other processes on the machine then slow a measurement much less (they still share caches
and memory bandwidth).

Usage::

    python benchmarks/falcon_decode.py --out benchmarks/results/cpu_falcon_decode.csv \
        --plot benchmarks/results/cpu_falcon_decode.png

Chapter: "Falcon" (chapters/*/12_falcon.ipynb).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attnlib import bench  # noqa: E402
from attnlib.models.falcon import FalconConfig, FalconForCausalLM, KVCache, kv_cache_bytes  # noqa: E402

# (name, new_decoder_architecture, num_kv_heads) for H = 8 query heads
SETTINGS = {"mha": (False, 8), "gqa": (True, 2), "mqa": (False, 1)}
FIELDS = [
    "setting", "H", "H_kv", "layers", "hidden", "prompt_len", "cache_bytes", "cached_ms", "recompute_ms",
    "speedup", "cached_tokens_per_s", "recompute_tokens_per_s", "threads", "clock", "device", "error",
]  # fmt: skip


def model_config(setting: str, max_len: int) -> FalconConfig:
    new_arch, H_kv = SETTINGS[setting]
    return FalconConfig(
        vocab_size=256,
        hidden_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,  # head dimension 64, as in Falcon-7B and -40B
        num_kv_heads=H_kv,
        new_decoder_architecture=new_arch,
        max_position_embeddings=max_len,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    setting: str, prompt_len: int, *, steps: int, repeats: int, threads: int, device: str, clock: str = "wall"
) -> dict:
    """One configuration, in this process; ``clock`` is "wall" or "process" (CPU time, for one CPU thread)."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    if device.type == "cpu":
        bench.steady_allocator()  # as attnlib.bench times: each call reuses the pages of the previous one
    if clock == "process" and (device.type != "cpu" or threads != 1):
        raise ValueError(f"clock='process' measures one CPU thread, got device {device.type}, threads={threads}")
    timer = time.process_time if clock == "process" else time.perf_counter
    config = model_config(setting, prompt_len + steps + 1)
    torch.manual_seed(0)
    model = FalconForCausalLM(config).to(device).eval()
    prompt = torch.randint(0, config.vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(device)  # (1, P)
    with torch.no_grad():
        model(prompt[:, :16])  # warm-up: thread pools, first allocations
        recompute = []
        for _ in range(repeats):
            _sync(device)
            start = timer()
            model(prompt)  # (1, P, V): the next token without a cache
            _sync(device)
            recompute.append(timer() - start)

        cache = KVCache(config, 1, prompt_len + steps, device=device)
        next_token = model(prompt, cache=cache)[:, -1:].argmax(-1)  # prefill: P tokens cached
        cached = []
        for _ in range(steps):
            _sync(device)
            start = timer()
            next_token = model(next_token, cache=cache)[:, -1:].argmax(-1)  # (1, 1): one step, cache + 1
            _sync(device)
            cached.append(timer() - start)
    cache_bytes = kv_cache_bytes(config, 1, prompt_len)
    assert KVCache(config, 1, prompt_len).nbytes == cache_bytes
    cached_s, recompute_s = statistics.median(cached), statistics.median(recompute)
    return {
        "setting": setting,
        "H": config.num_attention_heads,
        "H_kv": config.num_kv_heads,
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "prompt_len": prompt_len,
        "cache_bytes": cache_bytes,
        "cached_ms": cached_s * 1e3,
        "recompute_ms": recompute_s * 1e3,
        "speedup": recompute_s / cached_s,
        "cached_tokens_per_s": 1 / cached_s,
        "recompute_tokens_per_s": 1 / recompute_s,
        "threads": threads,
        "clock": clock,
        "device": device.type,
        "error": "",
    }


def measure_in_fresh_process(setting: str, prompt_len: int, timeout: float = 1800, **options) -> dict:
    config = dict(setting=setting, prompt_len=prompt_len, **options)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"setting": setting, "prompt_len": prompt_len, "error": f"timeout after {timeout} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return {"setting": setting, "prompt_len": prompt_len, "error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(rows: list[dict], out: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4))
    for setting in SETTINGS:
        mine = sorted((r for r in rows if r["setting"] == setting and not r["error"]), key=lambda r: r["prompt_len"])
        if not mine:
            continue
        P = [r["prompt_len"] for r in mine]
        label = f"{setting.upper()} (H_kv={mine[0]['H_kv']})"
        ax_mem.plot(P, [r["cache_bytes"] / 2**20 for r in mine], "o-", label=label)
        line = ax_time.plot(P, [r["cached_ms"] for r in mine], "o-", label=f"{label}, KV cache")[0]
        ax_time.plot(P, [r["recompute_ms"] for r in mine], "s--", color=line.get_color(), label=f"{label}, recompute")
    ax_mem.set(xscale="log", yscale="log", xlabel="prompt length P", ylabel="KV cache (MiB, float32)")
    ax_mem.set_title("KV cache size")
    ax_time.set(xscale="log", yscale="log", xlabel="prompt length P", ylabel="ms per new token")
    ax_time.set_title("decoding one token: cache vs. recompute")
    for ax in (ax_mem, ax_time):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Falcon-style model, L=4, C=512, H=8, d=64, batch 1, float32", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="128,256,512,1024,2048", help="prompt lengths P")
    parser.add_argument("--settings", default="mha,gqa,mqa")
    parser.add_argument("--steps", type=int, default=16, help="cached decoding steps timed")
    parser.add_argument("--repeats", type=int, default=3, help="recompute passes timed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clock", default="wall", choices=["wall", "process"], help="process: CPU time, 1 thread")
    parser.add_argument("--out", default="benchmarks/results/cpu_falcon_decode.csv")
    parser.add_argument("--plot", default=None)
    args = parser.parse_args(argv)
    if args.worker:
        config = json.loads(args.worker)
        print(json.dumps(measure(**config)))
        return 0
    options = dict(steps=args.steps, repeats=args.repeats, threads=args.threads, device=args.device, clock=args.clock)
    rows = []
    for P in (int(s) for s in args.sizes.split(",")):
        for setting in args.settings.split(","):
            row = measure_in_fresh_process(setting, P, **options)
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: row.get(key, "") for key in FIELDS})
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
