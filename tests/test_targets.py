"""The acceptance targets live in benchmarks/targets and are checked against the committed results.

Chapters speak to learners: they show what a result looks like and why, and leave the project's
thresholds to ``benchmarks/check_targets.py``. These tests run that script on the committed CSVs and
check that no chapter source talks about targets, issues or verdicts.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import check_targets  # noqa: E402
from targets import Target, at_least, at_most  # noqa: E402

SOURCES = sorted((ROOT / "chapters" / "src").glob("*.md"))


def test_every_target_holds_on_the_committed_results():
    targets = check_targets.all_targets(ROOT / "benchmarks" / "results")
    assert len(targets) >= 10
    bad = check_targets.failures(targets)
    assert not bad, "\n".join(f"{t.chapter}: {t.description} = {t.value} ({t.verdict})" for t in bad)


def test_only_gpu_targets_may_lack_data():
    for target in check_targets.all_targets(ROOT / "benchmarks" / "results"):
        if math.isnan(target.value):
            assert target.needs_gpu, f"{target.chapter}: {target.description} has no data"


def test_a_target_that_misses_fails_the_check(tmp_path, capsys):
    slow = at_least("00_demo", "speedup", 3.0, 10)
    small = at_most("00_demo", "slope", 1.0, 1.1)
    missing_gpu = Target("00_demo", "GPU speed", math.nan, False, needs_gpu=True)
    missing_cpu = Target("00_demo", "CPU speed", math.nan, False)
    assert (slow.verdict, small.verdict, missing_gpu.verdict) == ("DOES NOT HOLD", "holds", "no data")
    assert check_targets.failures([slow, small, missing_gpu, missing_cpu]) == [slow, missing_cpu]


def test_the_script_exits_nonzero_when_a_target_misses(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(check_targets, "all_targets", lambda results, chapter=None: [at_least("00_demo", "x", 1.0, 2)])
    assert check_targets.main([]) == 1
    assert "DOES NOT HOLD" in capsys.readouterr().out


# Words that belong to the project's bookkeeping, not to a chapter a learner reads.
PROJECT_TALK = [r"\bissues?\b", r"\btargets?\b", r"DOES NOT HOLD", r"\bverdicts?\b", r"目標"]
# A numbered issue of a public tracker is a citation ("timm issue #2438"), and so is a link.
CITATIONS = [r"\bissues? #?\d+", r"https?://\S+", r"github\.com/\S+"]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_chapters_speak_to_learners_not_to_the_project(source):
    text = source.read_text(encoding="utf-8")
    found = []
    for line_number, line in enumerate(text.splitlines(), 1):
        for citation in CITATIONS:
            line = re.sub(citation, "", line, flags=re.IGNORECASE)
        for pattern in PROJECT_TALK:
            if re.search(pattern, line, flags=re.IGNORECASE):
                found.append(f"{source.name}:{line_number}: {line.strip()[:100]}")
    assert not found, "acceptance-target or issue wording in a chapter:\n" + "\n".join(found)
