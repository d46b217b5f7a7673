"""A task that needs global context: are two far-apart shapes the same?

Source: no benchmark releases this exact task; it is built for this book as a vision analogue of
the long-range dependencies Long Range Arena tests (Tay et al., ICLR 2021, arXiv:2011.04006),
in the spirit of the same-different problems of Fleuret et al., "Comparing machines and humans
on a visual categorization test", PNAS 2011 (the SVRT), whose first problem asks whether two
shapes in an image are the same. Here:

* a map of ``side x side`` pixels holds two shapes, each a 5 x 5 stamp from :data:`SHAPES`;
* the first shape lies in the left quarter of the map, the second in the right quarter, at
  random rows, so that the two are at least ``side / 2`` pixels apart: a model must carry what
  it saw on one side across the whole map to compare it with the other;
* label 1 when the two stamps are the same shape, 0 otherwise, each with probability 1/2
  (a different shape is drawn uniformly among the others).
"""

from __future__ import annotations

import torch

from ._common import check_batch_size, check_positive_int, make_generator

__all__ = ["SHAPES", "STAMP", "same_shape", "stamp"]

STAMP = 5  # each shape is a STAMP x STAMP binary stamp
_ROWS = {
    "square": ("#####", "#...#", "#...#", "#...#", "#####"),
    "cross": ("..#..", "..#..", "#####", "..#..", "..#.."),
    "x": ("#...#", ".#.#.", "..#..", ".#.#.", "#...#"),
    "diamond": ("..#..", ".#.#.", "#...#", ".#.#.", "..#.."),
    "tee": ("#####", "..#..", "..#..", "..#..", "..#.."),
    "ell": ("#....", "#....", "#....", "#....", "#####"),
}
SHAPES = tuple(_ROWS)


def stamp(name: str) -> torch.Tensor:
    """The ``(STAMP, STAMP)`` float stamp of a shape (1 where drawn)."""
    if name not in _ROWS:
        raise ValueError(f"name must be one of {SHAPES}, got {name!r}")
    return torch.tensor([[1.0 if ch == "#" else 0.0 for ch in row] for row in _ROWS[name]])


def same_shape(
    batch: int, side: int, *, num_shapes: int = len(SHAPES), grid: int = 1, generator=0, return_details: bool = False
):
    """``batch`` maps ``(batch, 1, side, side)`` float32 and labels ``(batch,)`` int64 (1: the same shape).

    ``num_shapes``: how many of :data:`SHAPES` are used (2 .. 6). ``grid``: the shapes' corners sit
    on multiples of ``grid`` pixels (a model's patch size: every copy of a shape is cut into
    patches the same way). With ``return_details`` also a
    ``(batch, 2, 3)`` int64 tensor of (shape index, top row, left column) for the left and right
    shape. ``generator``: a CPU ``torch.Generator`` or an int seed.
    """
    check_batch_size(batch)
    check_positive_int("side", side)
    if side < 4 * STAMP:
        raise ValueError(f"side must be at least {4 * STAMP} (a shape in each outer quarter), got {side}")
    check_positive_int("num_shapes", num_shapes)
    if not 2 <= num_shapes <= len(SHAPES):
        raise ValueError(f"num_shapes must be in 2 .. {len(SHAPES)}, got {num_shapes}")
    check_positive_int("grid", grid)
    if -(-(side - side // 4) // grid) * grid > side - STAMP:
        raise ValueError(f"grid must leave a position for a shape in a quarter of the map, got {grid} for side {side}")
    generator = make_generator(generator)
    stamps = torch.stack([stamp(name) for name in SHAPES[:num_shapes]])  # (S, 5, 5)
    labels = torch.randint(0, 2, (batch,), generator=generator)
    first = torch.randint(0, num_shapes, (batch,), generator=generator)
    other = (first + torch.randint(1, num_shapes, (batch,), generator=generator)) % num_shapes  # never first
    second = torch.where(labels == 1, first, other)
    quarter = side // 4
    rows = grid * torch.randint(0, (side - STAMP) // grid + 1, (batch, 2), generator=generator)
    left = grid * torch.randint(0, (quarter - STAMP) // grid + 1, (batch,), generator=generator)
    first_right = -(-(side - quarter) // grid) * grid  # the first grid column in the right quarter
    right = first_right + grid * torch.randint(
        0, (side - STAMP - first_right) // grid + 1, (batch,), generator=generator
    )
    images = torch.zeros(batch, 1, side, side)
    for b in range(batch):
        r0, r1, c0, c1 = rows[b, 0].item(), rows[b, 1].item(), left[b].item(), right[b].item()
        images[b, 0, r0 : r0 + STAMP, c0 : c0 + STAMP] = stamps[first[b]]
        images[b, 0, r1 : r1 + STAMP, c1 : c1 + STAMP] = stamps[second[b]]
    if return_details:
        details = torch.stack(
            [torch.stack([first, rows[:, 0], left], dim=1), torch.stack([second, rows[:, 1], right], dim=1)], dim=1
        )
        return images, labels, details
    return images, labels
