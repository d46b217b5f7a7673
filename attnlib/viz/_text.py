"""Figure text in both of the book's languages (see :func:`attnlib.viz.text`)."""

from __future__ import annotations

LANGUAGES = ("en", "ja")


class Bilingual(str):
    """A figure text in English (its value as a ``str``) and Japanese (:attr:`ja`).

    It is a ``str`` so that it goes wherever a label goes (plotly, matplotlib, f-strings): there it
    reads as English. :func:`attnlib.viz.figure_html` stores the Japanese as a small substitution
    that the page applies when its ``<html lang>`` starts with ``ja``; a live kernel picks one
    language (:data:`attnlib.viz.LANGUAGE`). Adding a plain ``str`` (or another ``Bilingual``)
    keeps both languages; any other ``str`` operation (f-strings, ``%``, ``format``) gives English
    only: build the whole text in each language instead.
    """

    ja: str

    def __new__(cls, en: str, ja: str):
        for name, value in (("en", en), ("ja", ja)):
            if not isinstance(value, str):
                raise TypeError(f"text({name}=...) must be a str, got {type(value).__name__}: {value!r}")
        text = super().__new__(cls, str(en))
        text.ja = str(ja)
        return text

    @property
    def en(self) -> str:
        return str.__str__(self)

    def __reduce__(self):  # copy and deepcopy (plotly copies its properties) keep both languages
        return (type(self), (self.en, self.ja))

    def __repr__(self) -> str:
        return f"text(en={self.en!r}, ja={self.ja!r})"

    def __add__(self, other):
        if not isinstance(other, str):
            return NotImplemented
        return Bilingual(self.en + str.__str__(other), self.ja + in_language(other, "ja"))

    def __radd__(self, other):
        if not isinstance(other, str):
            return NotImplemented
        return Bilingual(str.__str__(other) + self.en, in_language(other, "ja") + self.ja)

    def in_language(self, language: str) -> str:
        """The plain ``str`` of ``language`` ("en" or "ja")."""
        return in_language(self, language)


def text(en: str, ja: str) -> Bilingual:
    """A figure label in both languages, e.g. ``text(en="key", ja="キー")``; accepted wherever a label is."""
    return Bilingual(en, ja)


def check_language(language: str) -> str:
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    return language


def in_language(value, language: str):
    """``value`` with every :class:`Bilingual` inside (lists, tuples, dicts) as a plain ``str`` of ``language``."""
    check_language(language)
    if isinstance(value, Bilingual):
        return value.ja if language == "ja" else value.en
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(in_language(item, language) for item in value)
    if isinstance(value, dict):
        return {key: in_language(item, language) for key, item in value.items()}
    return value


def japanese_patch(node, path=(), patch=None) -> list:
    """``[[path, japanese], ...]`` for every :class:`Bilingual` in a figure's JSON-like dict.

    A list of labels (ticks, categories) with any Bilingual in it is one entry: the whole list.
    """
    patch = [] if patch is None else patch
    if isinstance(node, Bilingual):
        patch.append([list(path), node.ja])
    elif isinstance(node, dict):
        for key, value in node.items():
            japanese_patch(value, (*path, key), patch)
    elif isinstance(node, (list, tuple)):
        if node and all(isinstance(item, str) for item in node):
            if any(isinstance(item, Bilingual) for item in node):
                patch.append([list(path), [in_language(item, "ja") for item in node]])
        else:
            for index, value in enumerate(node):
                japanese_patch(value, (*path, index), patch)
    return patch
