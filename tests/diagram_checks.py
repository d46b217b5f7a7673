"""What the schematics' tests share (tests/test_diagrams_*.py): a figure's texts, its language, its tagged pieces."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.text import Text  # noqa: E402

JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff\uff00-\uffef]")
ENGLISH_WORD = re.compile(r"\b[a-z]{4,}\b")  # a lowercase English word: none may remain in Japanese


def texts(figure) -> list[str]:
    """Every non-empty text drawn in ``figure`` (the figure is closed)."""
    found = [t.get_text() for t in figure.findobj(Text)]
    plt.close(figure)
    return [t for t in found if t.strip()]


def check_language(draw) -> None:
    """``draw(lang)`` writes English with no Japanese, and Japanese with no English word left."""
    english, japanese = texts(draw("en")), texts(draw("ja"))
    assert english and not any(JAPANESE.search(t) for t in english), english
    assert any(JAPANESE.search(t) for t in japanese), japanese
    assert not [t for t in japanese if ENGLISH_WORD.search(t)], japanese


def gids(figure, prefix: str) -> list[str]:
    """The ids of the pieces drawn with an id that starts with ``prefix``."""
    return [artist.get_gid() for artist in figure.findobj() if (artist.get_gid() or "").startswith(prefix)]
