"""The book's acceptance targets, checked against the committed results in benchmarks/results.

Chapters show what a result looks like and why; whether a measurement meets the number the
project set for it is a maintainer's question, answered here. One module per chapter
(``chNN_name.py``) defines ``targets(results: pathlib.Path) -> list[Target]``;
``python benchmarks/check_targets.py`` prints them all and fails when one does not hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """One acceptance target: ``value`` measured from the committed CSVs, ``holds`` its verdict.

    ``value`` is NaN when the committed results have no data for it (a GPU run not made yet);
    ``needs_gpu`` marks the targets that only a GPU run can answer.
    """

    chapter: str
    description: str
    value: float
    holds: bool
    needs_gpu: bool = False

    @property
    def verdict(self) -> str:
        if math.isnan(self.value):
            return "no data"
        return "holds" if self.holds else "DOES NOT HOLD"


def at_least(chapter: str, description: str, value: float, threshold: float, **kw) -> Target:
    return Target(chapter, f"{description} >= {threshold:g}", value, value >= threshold, **kw)


def at_most(chapter: str, description: str, value: float, threshold: float, **kw) -> Target:
    return Target(chapter, f"{description} <= {threshold:g}", value, value <= threshold, **kw)
