"""What DAT's offset network learns: learned offsets against a fixed grid, over several seeds.

The task (generated in code, no data to download): each 16 x 16 map of 8 channels holds one
small dot (a Gaussian with a standard deviation of 0.8 px, in channel 0, at a random real
position) of random brightness in [1, 2], over noise of 0.1 in every channel. Every pixel must
output the dot's brightness in channel 0. The dot is smaller than the spacing of the 4 x 4
reference grid (stride 4, 3.75 px between points), so a key read on the grid often sees the dot
only faintly or not at all: where to read matters.

Two blocks per seed, the same in everything but the offsets: DAT with its offset network trained
("learned"), and DAT with the offsets frozen at zero ("fixed grid": the last layer of the offset
network stays at zero, so the keys are read at the reference points). Both start from the same
weights, with that last layer at zero (both start on the grid; deformable convolutions start
their offsets at zero too), and see the same batches in the same order.
``attnlib.sparse.dat.DeformableAttention`` with 2 heads, one offset group, offset kernel 7,
range factor 2 (a point moves at most one grid spacing) and no relative position bias
(``use_pe=False``: every query gives the same answer, so positions do not help, and the bias's
interpolation would slow the training down). float64, Adam, weights rounded to a grid of 2^-12
after each step, so that rounding differences between CPUs (~1e-15) are absorbed instead of
growing step by step (the chapter's notebook reproduces seed 0 with another thread count and
another CPU kernel set).

For each trained block, on 256 fresh test maps: the test loss; the distance from the dot's
centre to the nearest sampled point; the offsets (in pixels) split into a uniform shift (their
mean over all maps and points), a per-point static part (each point's mean over the maps, minus
the shift) and the input-dependent part (the rest); and the attention weight on the sampled point
nearest the dot (averaged over queries, heads and maps; uniform would be 1/16).

    .venv/bin/python benchmarks/dat_offsets.py      # writes benchmarks/results/cpu_dat_offsets.csv

Eight seeds took about eight minutes on 2 busy cores. The DAT chapter (chapters/*/04_dat.ipynb) reads
the CSV and trains seed 0 again with the same recipe, asserting that it gets the same numbers.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attnlib import bench  # noqa: E402
from attnlib.sparse import dat  # noqa: E402

SIDE, CHANNELS, HEADS, STRIDE, OFFSET_KERNEL = 16, 8, 2, 4, 7
DOT_SIGMA, NOISE = 0.8, 0.1  # the dot's size in pixels; background noise
STEPS, BATCH, LEARNING_RATE = 600, 16, 1e-2
TEST_MAPS, TEST_SEED = 256, 12345
WEIGHT_GRID = 2.0**-12
RESULTS = Path(__file__).resolve().parent / "results"
FIELDS = [
    "seed", "offsets", "steps", "test_loss", "nearest_px", "grid_nearest_px", "static_nearest_px",
    "shift_y_px", "shift_x_px", "static_px", "dynamic_px", "dynamic_dot_px", "dot_attention", "train_s",
]  # fmt: skip


def make_maps(n: int, generator: torch.Generator):
    """``n`` maps ``(n, SIDE, SIDE, CHANNELS)`` with one small dot each: (maps, brightness (n,), centre (n, 2) px)."""
    centres = 1 + torch.rand(n, 2, generator=generator, dtype=torch.float64) * (SIDE - 3)  # (n, 2) pixel (y, x)
    brightness = 1 + torch.rand(n, generator=generator, dtype=torch.float64)  # (n,)
    pixels = torch.arange(SIDE, dtype=torch.float64)
    dy = pixels[None, :, None] - centres[:, None, None, 0]  # (n, H, 1)
    dx = pixels[None, None, :] - centres[:, None, None, 1]  # (n, 1, W)
    maps = NOISE * torch.randn(n, SIDE, SIDE, CHANNELS, generator=generator, dtype=torch.float64)
    maps[..., 0] += brightness[:, None, None] * torch.exp(-(dy**2 + dx**2) / (2 * DOT_SIGMA**2))  # the dot
    return maps, brightness, centres


def new_block(seed: int, learn_offsets: bool) -> dat.DeformableAttention:
    """The block of seed ``seed``, on the grid at the start; ``learn_offsets=False`` keeps it there."""
    torch.manual_seed(seed)
    block = dat.DeformableAttention(
        CHANNELS, HEADS, SIDE, SIDE, stride=STRIDE, offset_kernel_size=OFFSET_KERNEL, use_pe=False
    ).double()
    last = block.conv_offset[-1]  # the 1 x 1 convolution to (dy, dx): zero weights -> tanh(0) = 0
    with torch.no_grad():
        last.weight.zero_()
    last.weight.requires_grad_(learn_offsets)
    return block


def train(block: dat.DeformableAttention, seed: int, steps: int = STEPS) -> None:
    """Adam on batches of fresh maps: every pixel's channel 0 must be the dot's brightness."""
    optimizer = torch.optim.Adam([p for p in block.parameters() if p.requires_grad], lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(1000 + seed)  # the same batches for both blocks of a seed
    for _ in range(steps):
        maps, brightness, _ = make_maps(BATCH, generator)
        loss = (block(maps)[..., 0] - brightness[:, None, None]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # weights on a grid of 2^-12 (see the module docstring)
            for parameter in block.parameters():
                parameter.copy_((parameter / WEIGHT_GRID).round() * WEIGHT_GRID)


def to_pixels(points: torch.Tensor) -> torch.Tensor:
    """Normalized (y, x) -> pixel coordinates, as grid_sample reads them (align_corners=True)."""
    return (points + 1) / 2 * (SIDE - 1)


def statistics(block: dat.DeformableAttention, maps, brightness, centres) -> dict:
    """Test loss, nearest-point distances and the offsets split into shift, static and input-dependent parts (px)."""
    with torch.no_grad():
        loss = (block(maps)[..., 0] - brightness[:, None, None]).square().mean().item()
        points, reference = block.sampling_positions(maps)  # (n, 1, Hk, Wk, 2), (Hk, Wk, 2)
        attention = block.attention_weights(maps)  # (n, nh, N, Ns)
    points = to_pixels(points[:, 0].flatten(1, 2))  # (n, Ns, 2)
    grid = to_pixels(reference).reshape(-1, 2)  # (Ns, 2)
    offsets = points - grid  # (n, Ns, 2)
    shift = offsets.mean(dim=(0, 1))  # (2,): the same for every point and map
    static = offsets.mean(dim=0)  # (Ns, 2): each point's own mean, the shift included
    dynamic = offsets - static  # (n, Ns, 2): what changes with the input

    def nearest(positions):  # (n or 1, Ns, 2) -> mean over maps of the distance from the dot to the nearest point
        return (positions - centres[:, None]).norm(dim=-1).min(dim=1).values.mean().item()

    rows = torch.arange(len(maps))
    dot_point = (grid - centres[:, None]).norm(dim=-1).argmin(dim=1)  # (n,): the grid point nearest the dot
    on_dot = (points - centres[:, None]).norm(dim=-1).argmin(dim=1)  # (n,): the sampled point nearest the dot
    return {
        "test_loss": loss,
        "nearest_px": nearest(points),
        "grid_nearest_px": nearest(grid[None]),
        "static_nearest_px": nearest((grid + static)[None]),
        "shift_y_px": shift[0].item(),
        "shift_x_px": shift[1].item(),
        "static_px": (static - shift).norm(dim=-1).square().mean().sqrt().item(),  # root mean square over points
        "dynamic_px": dynamic.norm(dim=-1).square().mean().sqrt().item(),  # over maps and points
        "dynamic_dot_px": dynamic[rows, dot_point].norm(dim=-1).square().mean().sqrt().item(),  # the dot's point
        "dot_attention": attention[rows, :, :, on_dot].mean().item(),  # (n, nh, N) picked, then averaged
    }


def run_seed(seed: int, steps: int = STEPS) -> list[dict]:
    """Train both blocks of one seed and measure them on the same test maps."""
    test = make_maps(TEST_MAPS, torch.Generator().manual_seed(TEST_SEED))
    rows = []
    for learn_offsets in (True, False):
        block = new_block(seed, learn_offsets)
        started = time.perf_counter()
        train(block, seed, steps)
        seconds = time.perf_counter() - started
        row = {"seed": seed, "offsets": "learned" if learn_offsets else "fixed grid", "steps": steps}
        row.update({key: round(value, 6) for key, value in statistics(block, *test).items()})
        rows.append(row | {"train_s": round(seconds, 1)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS / "cpu_dat_offsets.csv"))
    parser.add_argument("--seeds", type=int, default=8, help="seeds 0 .. SEEDS-1")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = bench.check_writable(args.out)
    rows = []
    for seed in range(args.seeds):
        for row in run_seed(seed, args.steps):
            print(row, flush=True)
            rows.append(row)
    with out.open("w", newline="") as handle:
        handle.write(f"# measured {datetime.date.today().isoformat()} on {bench.machine_description()}\n")
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
