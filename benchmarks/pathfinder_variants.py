"""Pathfinder-like maps built against a shortcut: the calibration runs that quality.py's docstring quotes.

The arena's Pathfinder-like task (:func:`attnlib.tasks.pathfinder`) is left out of its default run,
because dense attention does not reach 0.9 on it. Other constructions were tried, each closing a
shortcut that a model could take without following a path. This script builds them, trains the
arena's vision model on one (``quality.train_and_test``: the same budget, test set and seed rules),
and measures the shortcut each one leaves:

* ``matched``: LRA's labels (a negative map's dots sit on ends of two different paths), a map kept
  only when the distance between its two dots and that between the dots of the other label lie
  within ``TOLERANCE`` px of each other. The distance between the dots then tells next to nothing.
* ``cut``: the dots always on the two ends of the first path; one of the two paths cut by a gap
  of ``CUT`` cells, at least ``margin`` cells from its ends. Label 1 (connected) when the cut
  path is the second one. The dots' positions tell nothing, and a negative map's dots lie on two
  curves, the two pieces of the cut path, as in LRA.
* ``twin``: as ``cut``, with the second path grown in both directions from a cell 3 px beside the
  first path's gap, so that both places a gap can take lie 3 px apart.

``--rule`` (``cut`` and ``twin``) prints how often a rule that follows no path is right: a
threshold on the gap's distances to the two dots, summed, minus the distance between the dots
(a gap on the dots' own path lies near the way from one dot to the other). ::

    python benchmarks/pathfinder_variants.py --variant cut --length 12 --margin 3
    python benchmarks/pathfinder_variants.py --variant cut --length 12 --margin 3 --method poolformer
    python benchmarks/pathfinder_variants.py --variant twin --length 16 --margin 4 --rule-only
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality  # noqa: E402

from attnlib.tasks._common import UniformStream, make_generator  # noqa: E402

paths = importlib.import_module("attnlib.tasks.pathfinder")  # the module: attnlib.tasks.pathfinder is the function

CUT = 3  # cells removed from the cut path: a gap of 3 px, wider than a dash gap (1 px)
TOLERANCE = 1.0  # matched: px between the two distances
RING = 3  # twin: the second path's gap lies this far (Chebyshev, px) from the first path's


def matched_maps(batch, side, *, path_length, turn_p=0.2, dash=2, generator=0):
    """``(batch, 1, side, side)`` maps and labels: LRA's labels, the dots' distance the same in both classes."""
    stream = UniformStream(make_generator(generator))
    images, labels = torch.zeros(batch, 1, side, side), torch.empty(batch, dtype=torch.int64)
    for row in range(batch):
        while True:
            first, second = paths._two_paths(stream, side, path_length, turn_p)
            one = first[0] if stream.uniform() < 0.5 else first[-1]
            other = second[0] if stream.uniform() < 0.5 else second[-1]
            if abs(math.dist(first[0], first[-1]) - math.dist(one, other)) <= TOLERANCE:
                break
        connected = stream.uniform() < 0.5
        dots = [first[0], first[-1]] if connected else [one, other]
        images[row, 0] = paths.draw_paths(side, [first, second], dots, dash=dash)
        labels[row] = int(connected)
    return images, labels


def _gap_excess(gap, dots) -> float:
    """The gap's distances to the two dots, summed, minus the distance between the dots (0: on the way)."""
    return math.dist(gap, dots[0]) + math.dist(gap, dots[1]) - math.dist(dots[0], dots[1])


def _apart(one, other) -> bool:
    """Whether no cell of ``one`` lies within 2 px (Chebyshev) of a cell of ``other``: a gap no flood fill bridges."""
    return all(max(abs(r - q), abs(c - d)) > 2 for r, c in one for q, d in other)


def _cut_maps(batch, side, propose, *, dash, generator, excess):
    """Maps from ``propose(stream, connected) -> (first, whole, broken, start) or None``: ``broken`` cut at ``start``.

    The dots sit on the first path's two ends; the gap is ``CUT`` cells from ``start`` on. A proposal
    whose gap a curl bridges (its pieces within 2 px, where the path turns) is drawn again.
    """
    stream = UniformStream(make_generator(generator))
    images, labels = torch.zeros(batch, 1, side, side), torch.empty(batch, dtype=torch.int64)
    for row in range(batch):
        connected = stream.uniform() < 0.5
        while True:
            proposal = propose(stream, connected)
            if proposal is not None and _apart(proposal[2][: proposal[3]], proposal[2][proposal[3] + CUT :]):
                break
        first, whole, broken, start = proposal
        dots = [first[0], first[-1]]
        images[row, 0] = paths.draw_paths(side, [whole, broken[:start], broken[start + CUT :]], dots, dash=dash)
        labels[row] = int(connected)
        if excess is not None:
            excess.append((_gap_excess(broken[start + CUT // 2], dots), int(connected)))
    return images, labels


def cut_maps(batch, side, *, path_length, margin, turn_p=0.2, dash=2, generator=0, excess=None):
    """Maps and labels: the dots on the first path's ends; the second path cut (label 1) or the first (label 0).

    ``excess``: a list that receives ``(gap excess, label)`` per map, for :func:`rule_accuracy`.
    """

    def propose(stream, connected):
        first, second = paths._two_paths(stream, side, path_length, turn_p)
        broken, whole = (second, first) if connected else (first, second)
        return first, whole, broken, margin + stream.below(path_length - 2 * margin - CUT + 1)

    return _cut_maps(batch, side, propose, dash=dash, generator=generator, excess=excess)


def _touches_itself(cells) -> bool:
    return any(
        max(abs(cells[x][0] - cells[y][0]), abs(cells[x][1] - cells[y][1])) <= 1
        for x in range(len(cells))
        for y in range(x + 2, len(cells))
    )


def twin_maps(batch, side, *, path_length, margin, turn_p=0.2, dash=2, generator=0, excess=None):
    """As :func:`cut_maps`, with the second path grown from a cell ``RING`` px beside the first path's gap."""
    places = path_length - 2 * margin - CUT + 1  # where a gap may start

    def propose(stream, connected):
        first = paths._walk(stream, side, path_length, turn_p, set())
        if first is None:
            return None
        first_start = margin + stream.below(places)
        r, c = first[first_start + CUT // 2]  # the middle of the first path's gap
        ring = [(r + i, c + j) for i in range(-RING, RING + 1) for j in range(-RING, RING + 1)]
        ring = [cell for cell in ring if max(abs(cell[0] - r), abs(cell[1] - c)) == RING]
        seed_cell = ring[stream.below(len(ring))]
        blocked = paths._near(first, paths.SEPARATION - 1)
        if seed_cell in blocked or not (0 < seed_cell[0] < side - 1 and 0 < seed_cell[1] < side - 1):
            return None
        middle = margin + CUT // 2 + stream.below(places)  # the seed cell's index on the second path
        own, halves = {seed_cell}, []
        for length in (middle + 1, path_length - middle):  # back from the seed cell, then ahead of it
            half = paths._extend_walk(stream, side, [seed_cell], own, length, turn_p, blocked, stream.below(4))
            if half is None:
                return None
            halves.append(half)
        second = halves[0][::-1] + halves[1][1:]
        if _touches_itself(second):  # the two halves may meet
            return None
        return (first, first, second, middle - CUT // 2) if connected else (first, second, first, first_start)

    return _cut_maps(batch, side, propose, dash=dash, generator=generator, excess=excess)


VARIANTS = {"matched": matched_maps, "cut": cut_maps, "twin": twin_maps}


def rule_accuracy(excess: list[tuple[float, int]]) -> float:
    """The accuracy of the best threshold rule "connected when the gap's excess is above t"."""
    if not excess:
        raise ValueError("excess must hold at least one (excess, label) pair")
    thresholds = [-math.inf] + sorted({value for value, _ in excess})
    return max(sum((value > t) == bool(label) for value, label in excess) / len(excess) for t in thresholds)


def make_task(variant: str, *, path_length: int, margin: int, readout: str) -> str:
    """Register the variant as an arena task (in this process only); returns its name."""
    build = VARIANTS[variant]
    options = {"path_length": path_length} if variant == "matched" else {"path_length": path_length, "margin": margin}
    name = f"pathfinder_{variant}"
    quality.TASK_SETTINGS[name] = quality.TaskSetting(
        name,
        "vision",
        lambda batch, side, generator: build(batch, side, generator=generator, **options),
        2,
        sizes=(28,),
        in_default_run=False,
        readout=readout,
    )
    return name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--length", type=int, default=12, help="cells per path (default 12)")
    parser.add_argument("--margin", type=int, default=3, help="cut, twin: the gap's least distance from a path end")
    parser.add_argument("--side", type=int, default=28)
    parser.add_argument("--method", default="dense", help="a vision method of the registry (default dense)")
    parser.add_argument("--readout", choices=quality.VisionModel.READOUTS, default="mean")
    parser.add_argument("--layers", type=int, default=quality.LAYERS)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rule", action="store_true", help="cut, twin: also print the gap rule's accuracy")
    parser.add_argument("--rule-only", action="store_true", help="print the gap rule's accuracy and stop")
    parser.add_argument("--rule-maps", type=int, default=1000, help="maps the rule is measured on (seed 0)")
    args = parser.parse_args(argv)
    if args.side < 8:
        parser.error(f"--side: expected at least 8 (two separated paths), got {args.side}")
    if not 3 <= args.length <= (args.side - 2) ** 2 // 4:
        parser.error(f"--length: expected 3 .. (side - 2)^2 // 4 = {(args.side - 2) ** 2 // 4}, got {args.length}")
    if args.variant != "matched" and not 0 <= args.margin <= (args.length - CUT) // 2:
        parser.error(f"--margin: expected 0 .. (length - {CUT}) // 2 = {(args.length - CUT) // 2}, got {args.margin}")
    if args.layers < 1 or args.steps < 1:
        parser.error("--layers and --steps must be positive")
    if args.rule or args.rule_only:
        if args.variant == "matched":
            parser.error("--rule: the matched maps have no gap")
        excess = []
        VARIANTS[args.variant](
            args.rule_maps, args.side, path_length=args.length, margin=args.margin, generator=0, excess=excess
        )
        print(f"gap rule: right on {rule_accuracy(excess):.3f} of {args.rule_maps} maps", flush=True)
        if args.rule_only:
            return 0
    torch.set_num_threads(1)
    quality.LAYERS = args.layers  # read by quality.mixer_factories when the model is built
    task = make_task(args.variant, path_length=args.length, margin=args.margin, readout=args.readout)
    train = partial(quality.train_and_test, steps=args.steps, batch=32, lr=3e-3, test_examples=512, device="cpu")
    row = train(task, args.method, args.side, args.seed)
    print(f"{args.variant}, paths of {args.length} cells, {args.method}, {args.readout} readout: {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
