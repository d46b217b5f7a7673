"""Tasks generated in code, for measuring what each method costs in accuracy (no downloads).

Language tasks (``inputs: (B, N)`` token ids):

* :func:`mqar`: multi-query associative recall, as in Zoology (Arora et al., 2023);
* :func:`listops`: nested MAX / MIN / MED / SM expressions, by Long Range Arena's rules;
* :func:`selective_copying`: copy the marked tokens in order, Mamba's task (Gu and Dao, 2023).

Vision tasks (``images: (B, 1, side, side)``, binary labels):

* :func:`pathfinder`: are two marked dots connected by a dashed path (LRA's Pathfinder, small);
* :func:`same_shape`: are two far-apart shapes the same.

Every generator takes ``generator=``: a CPU ``torch.Generator`` or an int seed, so that the same
seed gives the same batch. :data:`TASKS` lists them with their kind; each module names the
source it follows. ``benchmarks/quality.py`` trains every registered method on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .listops import listops
from .mqar import IGNORE, mqar
from .pathfinder import dots_connected, pathfinder
from .same_shape import same_shape
from .selective_copying import selective_copying

__all__ = ["IGNORE", "Task", "TASKS", "mqar", "listops", "selective_copying", "pathfinder", "same_shape",
           "dots_connected"]  # fmt: skip


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "language" (token ids in) or "vision" (images in)
    target: str  # "tokens": a label per position (IGNORE where unscored); "sequence": one label per example
    source: str  # the paper the generator follows


TASKS = {
    "mqar": Task("mqar", "language", "tokens", "Arora et al., Zoology, ICLR 2024 (arXiv:2312.04927)"),
    "listops": Task("listops", "language", "sequence", "Tay et al., Long Range Arena, ICLR 2021 (arXiv:2011.04006)"),
    "selective_copying": Task("selective_copying", "language", "tokens", "Gu and Dao, Mamba, 2023 (arXiv:2312.00752)"),
    "pathfinder": Task("pathfinder", "vision", "sequence", "Tay et al., Long Range Arena, ICLR 2021 (Pathfinder)"),
    "same_shape": Task("same_shape", "vision", "sequence", "built for this book; after Fleuret et al., PNAS 2011"),
}
