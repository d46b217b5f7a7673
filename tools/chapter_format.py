"""Format the code cells of chapter sources for the book's column, and list what is still too wide.

The book's code column holds :data:`CODE_COLUMNS` characters at a 1280 px wide window (measured in
Chromium: 684 px of 0.8rem monospace, 7.7 px a character, less the padding; the size is set in
``_ext/book_assets.py``), so a code block with a longer line is formatted with ruff at that line
length, after a trailing comment that makes its line too long is moved to its own line above
(shape comments stay readable). The library keeps its own 120 columns (pyproject.toml).
Formatting is a first pass: read the result, and shorten by hand what ruff cannot split
(long strings and comments).

Usage:  python tools/chapter_format.py [NAME ...]      format the code blocks (default: every chapter)
        python tools/chapter_format.py --check [NAME]  only list the lines that are too long
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "chapters" / "src"
CODE_COLUMNS = 84


def code_blocks(text: str):
    """(start, end) line indices of each ``%% code`` block's body in a chapter source."""
    lines = text.split("\n")
    blocks, start = [], None
    for index, line in enumerate(lines):
        if line.startswith("%% "):
            if start is not None:
                blocks.append((start, index))
                start = None
            if line.startswith("%% code"):
                start = index + 1
    if start is not None:
        blocks.append((start, len(lines)))
    return blocks


def hoist_long_comments(code: str) -> str:
    """Move each trailing comment whose line is too long to its own line above the line."""
    import io
    import tokenize

    lines = code.split("\n")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError):
        return code
    comments = {}
    for token in tokens:
        if token.type == tokenize.COMMENT:
            row, column = token.start
            pragma = re.search(r"#\s*(noqa|type:|fmt:|pragma)", token.string)
            # a trailing comment, not a comment line; a pragma stays on its line
            if lines[row - 1][:column].strip() and not pragma:
                comments[row - 1] = column
    for index in sorted(comments, reverse=True):
        line = lines[index]
        if columns(line) <= CODE_COLUMNS:
            continue
        column = comments[index]
        indent = line[: len(line) - len(line.lstrip())]
        lines[index : index + 1] = [indent + line[column:].strip(), line[:column].rstrip()]
    return "\n".join(lines)


def ruff_format(code: str) -> str | None:
    """``code`` formatted by ruff at the book's line length, or None when ruff cannot parse it."""
    ruff = Path(sys.executable).with_name("ruff")
    command = [str(ruff), "format", "--line-length", str(CODE_COLUMNS), "--stdin-filename", "cell.py", "-"]
    result = subprocess.run(command, input=code, capture_output=True, text=True, cwd=ROOT)
    return result.stdout if result.returncode == 0 else None


def format_source(path: Path) -> list[str]:
    """Format every code block of ``path`` in place; returns the blocks ruff could not parse."""
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    failed = []
    for start, end in reversed(code_blocks(text)):
        body = "\n".join(lines[start:end]).strip("\n")
        if all(columns(line) <= CODE_COLUMNS for line in body.split("\n")):
            continue
        formatted = ruff_format(hoist_long_comments(body) + "\n")
        if formatted is None:
            failed.append(f"{path.name}:{start + 1}")
            continue
        # keep the blank line that separates the block from the next header
        trailing = len(lines[start:end]) - len("\n".join(lines[start:end]).rstrip("\n").split("\n"))
        lines[start:end] = formatted.rstrip("\n").split("\n") + [""] * trailing
    path.write_text("\n".join(lines), encoding="utf-8")
    return failed


def columns(line: str) -> int:
    """The columns ``line`` takes in monospace: a wide (Japanese) character takes two."""
    return sum(2 if unicodedata.east_asian_width(character) in "WF" else 1 for character in line)


def long_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    return [
        f"{path.name}:{index + 1}: {columns(lines[index])} columns"
        for start, end in code_blocks(text)
        for index in range(start, end)
        if columns(lines[index]) > CODE_COLUMNS
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    paths = [SOURCES / f"{name}.md" for name in args.names] or sorted(SOURCES.glob("*.md"))
    too_long = []
    for path in paths:
        if not args.check:
            for block in format_source(path):
                print(f"not formatted (ruff cannot parse it): {block}")
        too_long += long_lines(path)
    print("\n".join(too_long) or f"every code line fits in {CODE_COLUMNS} columns")
    return 1 if too_long else 0


if __name__ == "__main__":
    sys.exit(main())
