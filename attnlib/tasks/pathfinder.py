"""A Pathfinder-like connectivity task on small generated maps.

Source: the Pathfinder task of Long Range Arena (Y. Tay et al., "Long Range Arena: A Benchmark
for Efficient Transformers", ICLR 2021, arXiv:2011.04006, Section 3.5), which takes it from
D. Linsley et al., "Learning long-range spatial dependencies with horizontal gated recurrent
units", NeurIPS 2018: an image holds two marked dots and several dashed curves; the label says
whether the two dots are connected by one of the curves. Here the maps are generated in code at
CPU sizes, with a simpler drawing than Linsley et al.'s (curves on the pixel grid, not
anti-aliased paddles):

* each map holds two paths, random walks on the pixel grid that go straight and turn left or
  right with probability ``turn_p`` at each step, never touch themselves, and keep at least
  ``SEPARATION - 1`` blank pixels away from the other path (so that a dash gap never bridges two
  paths);
* a path is drawn dashed: ``dash`` pixels on, one pixel off, laid from both ends towards the
  middle so that the two ends look alike (value ``PATH``);
* connected (label 1): the two dots (value ``DOT``) sit on the two ends of the first path;
  not connected (label 0): one dot on an end of each path. Every map has two paths, so the
  number of drawn pixels does not give the label away.

:func:`dots_connected` checks a map independently of how it was drawn: a flood fill over drawn
pixels from one dot, stepping over gaps of up to one pixel; the tests compare it with the labels.
"""

from __future__ import annotations

import torch

from ._common import UniformStream, check_batch_size, check_positive_int, make_generator

__all__ = ["PATH", "DOT", "SEPARATION", "pathfinder", "dots_connected", "draw_paths"]

PATH, DOT = 0.5, 1.0  # pixel values: a path pixel, a marked dot (background 0)
SEPARATION = 3  # Chebyshev distance kept between cells of different paths: gaps of 1 pixel never bridge them
MAX_TRIES = 1000
_DIRECTIONS = ((0, 1), (1, 0), (0, -1), (-1, 0))  # right, down, left, up (row, column steps)


def _walk(stream: UniformStream, side: int, length: int, turn_p: float, blocked: set) -> list | None:
    """A self-avoiding walk of ``length`` cells away from ``blocked``, or None when it gets stuck."""
    row, col = 1 + stream.below(side - 2), 1 + stream.below(side - 2)
    if (row, col) in blocked:
        return None
    direction = stream.below(4)
    return _extend_walk(stream, side, [(row, col)], {(row, col)}, length, turn_p, blocked, direction)


def _extend_walk(
    stream: UniformStream, side: int, cells: list, own: set, length: int, turn_p: float, blocked: set, direction: int
) -> list | None:
    """``cells`` walked on to ``length`` cells (its new cells added to ``own``), or None when it gets stuck.

    Each step goes straight, or turns right or left with probability ``turn_p``; it never leaves
    the map's inner cells, enters ``blocked`` or ``own``, or touches an older cell than the last.
    """
    while len(cells) < length:
        turn = stream.uniform()
        side_first = 1 if stream.uniform() < 0.5 else 3  # which turn to try first: right or left
        order = [direction, (direction + side_first) % 4, (direction - side_first) % 4]
        if turn < turn_p:
            order = order[1:] + order[:1]
        for candidate in order:
            dr, dc = _DIRECTIONS[candidate]
            r, c = cells[-1][0] + dr, cells[-1][1] + dc
            if not (0 < r < side - 1 and 0 < c < side - 1) or (r, c) in blocked or (r, c) in own:
                continue
            # never touch itself: no neighbour of the new cell may be an older cell than the last one
            recent = set(cells[-2:])
            if any((r + i, c + j) in own and (r + i, c + j) not in recent for i in (-1, 0, 1) for j in (-1, 0, 1)):
                continue
            direction = candidate
            break
        else:
            return None
        cells.append((r, c))
        own.add((r, c))
    return cells


def _near(cells: list, radius: int) -> set:
    return {(r + i, c + j) for r, c in cells for i in range(-radius, radius + 1) for j in range(-radius, radius + 1)}


def _two_paths(stream: UniformStream, side: int, length: int, turn_p: float) -> tuple[list, list]:
    """Two walks of ``length`` cells, the second kept ``SEPARATION - 1`` cells away from the first.

    ValueError when ``MAX_TRIES`` attempts find none (the paths are too long for the map).
    """
    for _ in range(MAX_TRIES):
        first = _walk(stream, side, length, turn_p, set())
        if first is None:
            continue
        second = _walk(stream, side, length, turn_p, _near(first, SEPARATION - 1))
        if second is not None:
            return first, second
    raise ValueError(f"no two separated paths of {length} cells fit a {side} x {side} map: shorten them")


def draw_paths(side: int, paths: list, dots: list, *, dash: int = 2) -> torch.Tensor:
    """A ``(side, side)`` map: each path (a list of (row, col) cells) dashed, ``dash`` on, 1 off; then the dots.

    The dashes are laid from both ends towards the middle, so that the two ends of a path look
    alike: a path's first and last cells are never told apart by their dash pattern (which would
    give away, for a quarter of the maps, that two dots are not on the same path). The one or two
    middle cells are always drawn, so no gap is ever wider than one pixel.
    """
    image = torch.zeros(side, side)
    for cells in paths:
        last = len(cells) - 1
        for index, (r, c) in enumerate(cells):
            from_nearest_end = min(index, last - index)
            in_the_middle = abs(2 * index - last) <= 1
            if from_nearest_end % (dash + 1) < dash or in_the_middle:
                image[r, c] = PATH
    for r, c in dots:
        image[r, c] = DOT
    return image


def dots_connected(image: torch.Tensor, *, max_gap: int = 1) -> bool:
    """Whether the two ``DOT`` pixels of a ``(side, side)`` map are joined by drawn pixels.

    A flood fill from the first dot over pixels that are not background, stepping to any drawn
    pixel within Chebyshev distance ``max_gap + 1`` (a dashed path's gaps are ``max_gap`` pixels).
    """
    if not isinstance(image, torch.Tensor) or image.ndim != 2:
        raise ValueError(f"image must be a (side, side) tensor, got {getattr(image, 'shape', type(image))}")
    dots = [tuple(p) for p in (image == DOT).nonzero().tolist()]
    if len(dots) != 2:
        raise ValueError(f"image must hold exactly two DOT pixels (value {DOT}), got {len(dots)}")
    drawn = {tuple(p) for p in (image != 0).nonzero().tolist()}
    reach = max_gap + 1
    seen, frontier = {dots[0]}, [dots[0]]
    while frontier:
        r, c = frontier.pop()
        for i in range(-reach, reach + 1):
            for j in range(-reach, reach + 1):
                cell = (r + i, c + j)
                if cell in drawn and cell not in seen:
                    seen.add(cell)
                    frontier.append(cell)
    return dots[1] in seen


def pathfinder(
    batch: int, side: int, *, path_length: int | None = None, turn_p: float = 0.2, dash: int = 2, generator=0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` maps ``(batch, 1, side, side)`` float32 and labels ``(batch,)`` int64 (1: the dots are connected).

    ``path_length``: cells per path (default ``side``). Labels are balanced: each map's label is
    drawn first, with probability 1/2. ``generator``: a CPU ``torch.Generator`` or an int seed.
    """
    check_batch_size(batch)
    check_positive_int("side", side)
    if side < 8:
        raise ValueError(f"side must be at least 8 (two separated paths), got {side}")
    path_length = side if path_length is None else path_length
    check_positive_int("path_length", path_length)
    if not 3 <= path_length <= (side - 2) ** 2 // 4:
        raise ValueError(f"path_length must be in 3 .. (side - 2)^2 // 4 = {(side - 2) ** 2 // 4}, got {path_length}")
    if isinstance(turn_p, bool) or not isinstance(turn_p, (int, float)) or not 0 <= turn_p <= 1:
        raise ValueError(f"turn_p must be a probability in [0, 1], got {turn_p!r}")
    check_positive_int("dash", dash)
    stream = UniformStream(make_generator(generator))
    images = torch.zeros(batch, 1, side, side)
    labels = torch.empty(batch, dtype=torch.int64)
    for row in range(batch):
        connected = stream.uniform() < 0.5
        first, second = _two_paths(stream, side, path_length, turn_p)
        if connected:
            dots = [first[0], first[-1]]
        else:
            dots = [
                first[0] if stream.uniform() < 0.5 else first[-1],
                second[0] if stream.uniform() < 0.5 else second[-1],
            ]
        images[row, 0] = draw_paths(side, [first, second], dots, dash=dash)
        labels[row] = int(connected)
    return images, labels
