"""Write and execute the English and Japanese twins of a chapter from one source file.

A chapter lives in ``chapters/src/NAME.md``: blocks that start with a line

    %% en          English markdown
    %% ja          Japanese markdown
    %% md          markdown shared by both languages (a formula, a table of numbers)
    %% code        a code cell shared by both languages
    %% code TAGS   the same, with comma-separated cell tags (e.g. nbval-ignore-output)

This tool writes ``chapters/en/NAME.ipynb`` and ``chapters/ja/NAME.ipynb`` with the
same code cells in the same order (the twins differ only in prose), inserts the
standard setup cell as the first code cell and a link to the twin under the title,
then executes both notebooks so that their stored outputs are what the current code
prints. ``tests/test_notebooks.py`` checks these conventions; nbval checks the outputs.

Usage:  python tools/nbbuild.py [NAME ...]     (default: every chapter)
        python tools/nbbuild.py --no-execute NAME
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "chapters" / "src"
LANGUAGES = ("en", "ja")
TWIN_LINK = {
    "en": "[日本語版はこちら / Japanese version](../ja/{name}.ipynb)",
    "ja": "[English version / 英語版](../en/{name}.ipynb)",
}
SETUP_TAG = "setup"

SETUP_CELL = """\
# Setup: the same first cell in every chapter.
import os
import subprocess
import sys

# The book's repository: repository.url in its _config.yml.
REPO_URL = "{repo_url}"
if "google.colab" in sys.modules and not os.path.isdir("/content/book"):
    # Colab: fetch the book and install attnlib from it; Colab's own torch is kept.
    clone = ["git", "clone", "-q", "--depth", "1", REPO_URL, "/content/book"]
    if subprocess.run(clone).returncode != 0:
        raise RuntimeError(
            f"Could not fetch the book from {{REPO_URL}}. If you opened a fork, set"
            " repository.url in its _config.yml to the fork's address and rebuild"
            " (python tools/nbbuild.py), or set REPO_URL above to a public copy."
        )
    pip = [sys.executable, "-m", "pip", "install", "-q", "-e", "/content/book"]
    subprocess.run(pip, check=True)
    sys.path.insert(0, "/content/book")
    os.chdir("/content/book/chapters/en")

import torch
if not torch.cuda.is_available():
    # No GPU: Triton kernels run in Triton's interpreter. This must be set before
    # anything imports triton.
    os.environ.setdefault("TRITON_INTERPRET", "1")
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(0)
torch.set_num_threads(2)
print("device:", device)"""


def repo_url() -> str:
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    return config["repository"]["url"]


def setup_cell_source() -> str:
    return SETUP_CELL.format(repo_url=repo_url())


def parse_source(text: str) -> list[tuple[str, list[str], str]]:
    """Split a chapter source into blocks ``(kind, tags, body)``, kind in en/ja/md/code."""
    blocks: list[tuple[str, list[str], str]] = []
    kind, tags, lines = None, [], []
    for line_number, line in enumerate(text.splitlines(), start=1):
        header = re.match(r"^%% (en|ja|md|code)(?: (\S+))?\s*$", line)
        if header:
            if kind is not None:
                blocks.append((kind, tags, "\n".join(lines).strip("\n")))
            kind = header.group(1)
            tags = header.group(2).split(",") if header.group(2) else []
            lines = []
        elif line.startswith("%%"):
            raise ValueError(f"line {line_number}: unknown block header {line!r}")
        elif kind is None:
            if line.strip():
                raise ValueError(f"line {line_number}: text before the first '%% ' block header")
        else:
            lines.append(line)
    if kind is not None:
        blocks.append((kind, tags, "\n".join(lines).strip("\n")))
    return blocks


def make_notebook(name: str, blocks, language: str) -> nbformat.NotebookNode:
    cells = []
    for kind, tags, body in blocks:
        if kind in ("md", language):
            cells.append(nbformat.v4.new_markdown_cell(body))
        elif kind == "code":
            cell = nbformat.v4.new_code_cell(body)
            if tags:
                cell.metadata["tags"] = tags
            cells.append(cell)
    if not cells or cells[0].cell_type != "markdown" or not cells[0].source.startswith("# "):
        raise ValueError(f"{name}: the first {language} block must be markdown starting with '# Title'")
    title, _, rest = cells[0].source.partition("\n")
    cells[0].source = f"{title}\n\n{TWIN_LINK[language].format(name=name)}\n{rest}".rstrip("\n")
    setup = nbformat.v4.new_code_cell(setup_cell_source())
    setup.metadata["tags"] = [SETUP_TAG]
    cells.insert(1, setup)
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def execute(notebook: nbformat.NotebookNode, workdir: Path) -> None:
    from nbclient import NotebookClient

    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    for index, cell in enumerate(notebook.cells):  # stable ids keep diffs small
        cell.id = f"cell-{index}"


def keep_outputs(notebook: nbformat.NotebookNode, stored_path: Path) -> None:
    """Copy the outputs of the stored notebook into ``notebook`` when only prose changed.

    Refuses (``ValueError``) unless every code cell, tags included, is the same as in the stored
    notebook: outputs are kept only where the code that printed them is unchanged (nbval then
    re-runs them anyway).
    """
    stored = nbformat.read(stored_path, as_version=4)
    new_code = [c for c in notebook.cells if c.cell_type == "code"]
    old_code = [c for c in stored.cells if c.cell_type == "code"]
    same = len(new_code) == len(old_code) and all(
        a.source == b.source and a.metadata.get("tags", []) == b.metadata.get("tags", [])
        for a, b in zip(new_code, old_code)
    )
    if not same:
        raise ValueError(f"{stored_path.name}: code cells changed; run without --keep-outputs to execute them")
    for new_cell, old_cell in zip(new_code, old_code):
        new_cell.outputs = old_cell.outputs
        new_cell.execution_count = old_cell.execution_count
        if "execution" in old_cell.metadata:  # the timings of the run that printed the outputs
            new_cell.metadata["execution"] = old_cell.metadata["execution"]
    if "language_info" in stored.metadata:  # as the kernel that ran them reported it
        notebook.metadata["language_info"] = stored.metadata["language_info"]
    for index, cell in enumerate(notebook.cells):
        cell.id = f"cell-{index}"


def build(name: str, run: bool = True, keep: bool = False) -> None:
    blocks = parse_source((SOURCES / f"{name}.md").read_text(encoding="utf-8"))
    for language in LANGUAGES:
        notebook = make_notebook(name, blocks, language)
        target = ROOT / "chapters" / language / f"{name}.ipynb"
        if keep:
            keep_outputs(notebook, target)
        elif run:
            started = time.perf_counter()
            execute(notebook, target.parent)
            print(f"{target.relative_to(ROOT)}: executed in {time.perf_counter() - started:.1f} s")
        else:
            for index, cell in enumerate(notebook.cells):
                cell.id = f"cell-{index}"
        nbformat.write(notebook, target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="chapter names (file stems in chapters/src); default: all")
    parser.add_argument("--no-execute", action="store_true", help="write the notebooks without running them")
    parser.add_argument(
        "--keep-outputs",
        action="store_true",
        help="only the prose changed: keep the stored outputs (refused if any code cell changed)",
    )
    args = parser.parse_args(argv)
    names = args.names or sorted(p.stem for p in SOURCES.glob("*.md"))
    os.environ.setdefault("ATTNLIB_STATIC", "1")  # figures as static HTML, as in the book
    # Write the outputs with the machine's own PyTorch CPU kernels: scripts/test re-runs them with
    # another set (ATEN_CPU_CAPABILITY=default), so that an output that depends on it fails there.
    os.environ.pop("ATEN_CPU_CAPABILITY", None)
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    for name in names:
        build(name, run=not args.no_execute, keep=args.keep_outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
