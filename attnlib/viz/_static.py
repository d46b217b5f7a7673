"""Static matplotlib figures in both languages: one HTML output that shows the page's language."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable

from ._text import LANGUAGES, in_language

# Only the page's language is shown: English unless <html lang> is Japanese (Jupyter and Colab set
# no Japanese lang, so they show English). Images shrink to the column, never grow past their size.
STATIC_STYLE = (
    "<style>.attnlib-static img{display:block;max-width:100%;height:auto}"
    ".attnlib-static .attnlib-ja{display:none}"
    "html:lang(ja) .attnlib-static .attnlib-ja{display:block}"
    "html:lang(ja) .attnlib-static .attnlib-en{display:none}</style>"
)
STATIC_DPI = 100  # Jupyter's inline default: the figure's inches times 100 pixels


class StaticFigure:
    """A displayable bilingual figure: ``_repr_html_`` holds both PNGs, the page shows one."""

    def __init__(self, html_text: str, images: dict[str, bytes]):
        self.html = html_text
        self.images = images

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return "<bilingual figure: " + ", ".join(f"{lang} {len(png)} bytes" for lang, png in self.images.items()) + ">"


def _png(figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    # No "Software" text chunk (it names the matplotlib version): the same bytes from every run.
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def figure_images(draw: Callable[[str], object], *, dpi: int = STATIC_DPI, alt=None) -> StaticFigure:
    """``draw(language)`` for "en" and "ja" as one :class:`StaticFigure` (see :func:`show_figure`)."""
    import matplotlib
    import matplotlib.pyplot as plt
    import matplotlib_fontja  # noqa: F401  (registers IPAexGothic for Japanese labels)

    if not callable(draw):
        raise TypeError(f"draw must be a function draw(language) -> matplotlib figure, got {type(draw).__name__}")
    if not isinstance(dpi, int) or dpi <= 0:
        raise ValueError(f"dpi must be a positive int, got {dpi!r}")
    images, parts = {}, []
    for language in LANGUAGES:
        before = set(plt.get_fignums())
        result = draw(language)
        figure = plt.gcf() if result is None else getattr(result, "figure", result)  # an Axes gives its figure
        if not isinstance(figure, matplotlib.figure.Figure):
            raise TypeError(
                f"draw({language!r}) must return a matplotlib Figure or Axes (or None for the current "
                f"figure), got {type(result).__name__}"
            )
        png = _png(figure, dpi)
        for number in set(plt.get_fignums()) - before:  # nothing drawn here is shown again by the backend
            plt.close(number)
        plt.close(figure)
        images[language] = png
        width, height = _png_size(png)
        label = html.escape(in_language(alt, language) if alt else "", quote=True)
        parts.append(
            f'<img class="attnlib-{language}" lang="{language}" alt="{label}" width="{width}" height="{height}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
        )
    html_text = f'<div class="attnlib-static">{STATIC_STYLE}{"".join(parts)}</div>'
    return StaticFigure(html_text, images)


def _png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def show_figure(draw: Callable[[str], object], *, dpi: int = STATIC_DPI, alt=None) -> None:
    """Display a matplotlib figure in the page's language: ``draw(language)`` builds it for "en" and "ja".

    ``draw`` returns the Figure (or an Axes of it, or None for the current figure); it is saved as a
    PNG at ``dpi`` without metadata (the same bytes on every run: nbval compares the HTML) and
    closed. The one HTML output holds both images and a small style that shows only the page's
    language (English where the page sets none, as in Jupyter and Colab), scaled to the column.
    ``alt`` (a str or :func:`text`) describes the figure for screen readers.
    """
    from IPython.display import display

    display(figure_images(draw, dpi=dpi, alt=alt))
