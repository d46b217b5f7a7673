"""Check the book's acceptance targets against the committed results (benchmarks/results).

    python benchmarks/check_targets.py [--results DIR] [--chapter 01_swin]

Prints one line per target (measured value and verdict) and exits 1 if any target does not
hold. A target without data (a GPU measurement not committed yet) is reported as "no data";
it fails only for targets that a CPU run answers.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from targets import Target  # noqa: E402


def all_targets(results: Path, chapter: str | None = None) -> list[Target]:
    found: list[Target] = []
    for path in sorted((HERE / "targets").glob("ch*.py")):
        module = importlib.import_module(f"targets.{path.stem}")
        for target in module.targets(results):
            if chapter is None or target.chapter == chapter:
                found.append(target)
    return found


def failures(targets: list[Target]) -> list[Target]:
    """Targets that do not hold, or that have no data although a CPU run answers them."""

    def fails(t: Target) -> bool:
        return (not t.needs_gpu) if math.isnan(t.value) else not t.holds

    return [t for t in targets if fails(t)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results", help="folder of committed CSVs")
    parser.add_argument("--chapter", default=None, help="only this chapter's targets, e.g. 01_swin")
    args = parser.parse_args(argv)
    targets = all_targets(args.results, args.chapter)
    for t in targets:
        print(f"{t.chapter:<22} {t.description:<60} {t.value:10.3f}  {t.verdict}")
    bad = failures(targets)
    print(f"{len(targets)} targets, {len(bad)} failing")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
