"""Quality, not only speed: one associative-recall task, each language method trained with the same budget.

The task (generated in code, no data to download): a sequence of ``N`` tokens, each a (key,
value) pair with a distinct key; one position in the middle of the sequence (never in BigBird's
global first and last blocks) holds a query token that repeats one of the keys. The model must
output the value stored with that key, wherever it is: a lookup over the whole sequence, which
one attention layer can do exactly when the query may attend to the right key.

Model: fixed random +-1 key codes, learned value embeddings, one multi-head self-attention
layer (``attnlib.reference.MultiHeadSelfAttention`` with the method's kernel; its query and key
projections start as the identity, so that matching codes score high from the first step), a
linear readout at the query position. Every method gets the same model, seed, steps, batch and learning rate.

    python benchmarks/quality.py --out benchmarks/results/cpu_quality.csv

writes one row per (method, N): accuracy on 512 fresh test sequences. Several minutes on 2 CPU cores.
The comparison chapter (chapters/*/13_comparison.ipynb) reads the committed CSV.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attnlib import bench  # noqa: E402
from attnlib.reference import MultiHeadSelfAttention, attention  # noqa: E402
from attnlib.sparse.bigbird import bigbird_attention  # noqa: E402
from attnlib.sparse.reformer import lsh_attention_qkv  # noqa: E402

NUM_VALUES = 16
DIM, HEADS = 64, 2
BLOCK = 16  # BigBird's block at these short lengths (the book's default 64 needs N >= 449)

KERNELS = {
    "dense": attention,
    "bigbird": partial(bigbird_attention, block_size=BLOCK, num_random_blocks=2, seed=0),
    "reformer": partial(lsh_attention_qkv, n_hashes=2, chunk_size=32, seed=0),
}


class RecallModel(nn.Module):
    """Key codes + value embeddings -> one self-attention layer -> the value at the query position."""

    def __init__(self, kernel, max_keys: int, generator: torch.Generator):
        super().__init__()
        codes = torch.randint(0, 2, (max_keys, DIM), generator=generator).float() * 2 - 1  # (K, C): +-1
        self.register_buffer("key_codes", codes)
        self.value_embedding = nn.Embedding(NUM_VALUES + 1, DIM)  # the last id marks the query token
        self.attn = MultiHeadSelfAttention(DIM, HEADS, attention_fn=kernel)
        with torch.no_grad():  # start from "match the key codes": queries and keys read x as it is
            self.attn.q_proj.weight.copy_(torch.eye(DIM))
            self.attn.kv_proj.weight[:DIM].copy_(torch.eye(DIM))
        self.readout = nn.Linear(DIM, NUM_VALUES)

    def forward(self, keys, values, query_position):
        x = self.key_codes[keys] + self.value_embedding(values)  # (B, N, C)
        x = x + self.attn(x)  # (B, N, C)
        rows = torch.arange(x.shape[0])
        return self.readout(x[rows, query_position])  # (B, NUM_VALUES)


def make_batch(batch: int, N: int, generator: torch.Generator):
    """Keys (distinct per sequence), values, the query position (middle blocks only) and the answer."""
    keys = torch.stack([torch.randperm(4 * N, generator=generator)[:N] for _ in range(batch)])  # (B, N)
    values = torch.randint(0, NUM_VALUES, (batch, N), generator=generator)  # (B, N)
    query_position = torch.randint(BLOCK, N - BLOCK, (batch,), generator=generator)  # (B,)
    target_position = torch.randint(0, N - 2, (batch,), generator=generator)  # (B,)
    target_position += (target_position >= query_position).long()  # any position but the query's
    rows = torch.arange(batch)
    keys[rows, query_position] = keys[rows, target_position]  # the query repeats the target's key
    answer = values[rows, target_position]  # (B,)
    values[rows, query_position] = NUM_VALUES  # the query has no value
    return keys, values, query_position, answer


def train_and_test(method: str, N: int, *, steps: int, batch: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = RecallModel(KERNELS[method], 4 * N, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    started = time.perf_counter()
    for _ in range(steps):
        keys, values, query_position, answer = make_batch(batch, N, generator)
        loss = nn.functional.cross_entropy(model(keys, values, query_position), answer)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - started
    correct = 0
    with torch.no_grad():
        for _ in range(8):
            keys, values, query_position, answer = make_batch(64, N, generator)
            correct += (model(keys, values, query_position).argmax(dim=-1) == answer).sum().item()
    return {"method": method, "N": N, "steps": steps, "batch": batch, "accuracy": correct / 512,
            "final_loss": round(loss.item(), 4), "train_s": round(seconds, 2)}  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", default="128,512,1024")
    parser.add_argument("--methods", default=",".join(KERNELS))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    out = bench.check_writable(args.out)
    rows = []
    for N in (int(n) for n in args.sizes.split(",")):
        for method in args.methods.split(","):
            row = train_and_test(method, N, steps=args.steps, batch=args.batch)
            print(row, flush=True)
            rows.append(row)
    with out.open("w", newline="") as handle:
        handle.write(f"# measured {datetime.date.today().isoformat()} on {bench.machine_description()}\n")
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
