"""Build the book: one Jupyter Book build per language, under one site.

A reader stays in one language from the first page to the last: the sidebar, previous/next,
the theme's interface strings, the search and the figures' labels are those of the page's
language. Sphinx sets the interface language and the search language once per build, so the
book is built twice from the same sources:

    _build/html/                English (root: index.md, table of contents _toc.yml)
    _build/html/ja/             日本語 (root: index_ja.md, table of contents _toc_ja.yml)

``_config.yml`` is the English book's configuration; the Japanese build uses the same file
with the few settings of :data:`JAPANESE` changed (written to ``_build/config/ja/_config.yml``).
Every chapter page links to its twin in the other build (``_ext/book_assets.py``).

Usage:  python tools/build_book.py            (what ``scripts/build-book`` runs)

With ``BOOK_PUBLISH=1`` the build also refuses a repository address that is still the
placeholder (see :func:`check_repository_address`): set ``repository.url`` in ``_config.yml``
to the public copy of the book, run ``python tools/nbbuild.py`` and build again.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "_build"
HTML = BUILD / "html"
LANGUAGES = ("en", "ja")
TOC = {"en": "_toc.yml", "ja": "_toc_ja.yml"}
# The Japanese book: what differs from _config.yml.
JAPANESE = {
    "title": "self-attentionの先へ",
    "sphinx_config": {"language": "ja", "html_search_language": "ja"},
}
# The repository address the sources ship with: a fork sets its own in _config.yml.
PLACEHOLDER_ADDRESS = "https://github.com/attnlib/beyond-self-attention"


def check_repository_address(config: dict) -> None:
    """Raise when the configured repository address is missing or still the placeholder."""
    url = (config.get("repository") or {}).get("url", "")
    if not url or url.rstrip("/") == PLACEHOLDER_ADDRESS:
        raise SystemExit(
            f"repository.url in _config.yml is {url or 'empty'!r}, the placeholder: the Colab buttons and every "
            "notebook's setup cell would fetch a repository that does not exist. Set it to the public copy of "
            "the book, run `python tools/nbbuild.py` (it writes the address into the setup cells) and build again."
        )


def language_config(language: str) -> Path:
    """The configuration file of one language's build."""
    if language == "en":
        return ROOT / "_config.yml"
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    config = copy.deepcopy(config)
    config["title"] = JAPANESE["title"]
    sphinx = config.setdefault("sphinx", {})
    sphinx.setdefault("config", {}).update(JAPANESE["sphinx_config"])
    # Paths in the configuration are read from the configuration file's folder: point them back here.
    sphinx["local_extensions"] = {name: str(ROOT / path) for name, path in sphinx.get("local_extensions", {}).items()}
    sphinx["config"]["html_static_path"] = [str(ROOT / path) for path in sphinx["config"].get("html_static_path", [])]
    path = BUILD / "config" / language / "_config.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def build(language: str) -> None:
    """One language's book: English into _build/html, another into _build/html/<language>."""
    # jupyter-book writes into <path-output>/_build/html
    output = ROOT if language == "en" else BUILD / f"book-{language}"
    jupyter_book = str(Path(sys.executable).with_name("jupyter-book"))
    config = str(language_config(language))
    # --all: the twin links are made when a page is read, so a page read by an earlier build keeps old ones
    command = [jupyter_book, "build", ".", "--all", "--warningiserror", "--keep-going", "--quiet"]
    command += ["--config", config, "--toc", TOC[language], "--path-output", str(output)]
    subprocess.run(command, cwd=ROOT, check=True)
    if language != "en":
        shutil.rmtree(HTML / language, ignore_errors=True)
        shutil.move(str(output / "_build" / "html"), str(HTML / language))


def main() -> int:
    if os.environ.get("BOOK_PUBLISH"):
        check_repository_address(yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8")))
    shutil.rmtree(HTML, ignore_errors=True)
    shutil.rmtree(BUILD / ".doctrees", ignore_errors=True)
    for language in LANGUAGES:
        build(language)
    print("Book built: _build/html/index.html (English), _build/html/ja/index.html (日本語)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
