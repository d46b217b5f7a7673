"""What every schematic shares: a figure no wider than the book's column allows, and the axes of a score matrix."""

from __future__ import annotations

from .._text import in_language

MAX_WIDTH_INCHES = 7  # what the book's column shows without shrinking the text too far


def new_figure(width: float, height: float, *, rows: int = 1, columns: int = 1, **grid):
    """A matplotlib Figure of ``rows x columns`` panels (Japanese labels render); returns it and its axes, flat."""
    import matplotlib.pyplot as plt
    import matplotlib_fontja  # noqa: F401  (registers IPAexGothic for Japanese labels)

    if width > MAX_WIDTH_INCHES:
        raise ValueError(f"a book figure is at most {MAX_WIDTH_INCHES} inches wide, got {width}")
    figure, axes = plt.subplots(rows, columns, figsize=(width, height), squeeze=False, gridspec_kw=grid or None)
    return figure, [ax for row in axes for ax in row]


def light(color: str, amount: float = 0.55) -> tuple[float, float, float]:
    """``color`` mixed with white (``amount`` 0: the colour, 1: white), rounded: the same figure everywhere."""
    from matplotlib.colors import to_rgb

    return tuple(round(c + (1 - c) * amount, 6) for c in to_rgb(color))


def score_matrix_axes(ax, N_q: int, N_k: int, block_q: int, block_k: int, *, xlabel, ylabel, lang: str,
                      font_size: int) -> None:  # fmt: skip
    """Axes of an ``(N_q, N_k)`` score matrix drawn in tiles: query 0 on top, keys along the top, a tick per tile."""
    ax.set_xlim(0, N_k)
    ax.set_ylim(N_q, 0)  # query 0 on top, as in the score matrix
    ax.set_aspect("equal")
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xticks(range(0, N_k, block_k))
    ax.set_yticks(range(0, N_q, block_q))
    ax.tick_params(labelsize=font_size - 3)
    ax.set_xlabel(in_language(xlabel, lang), fontsize=font_size - 1)
    ax.set_ylabel(in_language(ylabel, lang), fontsize=font_size - 1)


__all__ = ["MAX_WIDTH_INCHES", "light", "new_figure", "score_matrix_axes"]
