"""The book's conventions for chapter notebooks (nbval checks their outputs separately)."""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import nbbuild  # noqa: E402

EN = sorted((ROOT / "chapters" / "en").glob("*.ipynb"))
JA = sorted((ROOT / "chapters" / "ja").glob("*.ipynb"))
NAMES = sorted({p.stem for p in EN} | {p.stem for p in JA})


def load(language: str, name: str) -> dict:
    path = ROOT / "chapters" / language / f"{name}.ipynb"
    assert path.exists(), f"{path.relative_to(ROOT)} is missing: every chapter exists in both languages"
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def test_there_are_chapters():
    assert "00_introduction" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_twins_share_every_code_cell(name):
    en, ja = code_cells(load("en", name)), code_cells(load("ja", name))
    assert [source(c) for c in en] == [source(c) for c in ja], f"{name}: English and Japanese code cells differ"
    assert [c.get("metadata", {}).get("tags", []) for c in en] == [c.get("metadata", {}).get("tags", []) for c in ja]


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_generated_from_their_source(name):
    """The stored notebooks are what tools/nbbuild.py writes from chapters/src (outputs aside)."""
    blocks = nbbuild.parse_source((ROOT / "chapters" / "src" / f"{name}.md").read_text(encoding="utf-8"))
    for language in nbbuild.LANGUAGES:
        expected = [(c.cell_type, c.source) for c in nbbuild.make_notebook(name, blocks, language).cells]
        stored = [(c["cell_type"], source(c)) for c in load(language, name)["cells"]]
        assert stored == expected, f"{language}/{name}.ipynb is stale: run `python tools/nbbuild.py {name}`"


import chapter_format  # noqa: E402

COLUMNS = chapter_format.CODE_COLUMNS  # what the book's code and output boxes hold at 1280 px
PRINTS_LIBRARY_SOURCE = re.compile(r"inspect\.getsource|\bshow\(")  # printed library code: the page wraps it


def printed_text(cell: dict) -> list[str]:
    """The plain-text lines a cell prints (streams, and text results without a richer form)."""
    lines = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            lines += source({"source": output["text"]}).splitlines()
        elif "data" in output and set(output["data"]) == {"text/plain"}:
            lines += source({"source": output["data"]["text/plain"]}).splitlines()
    return lines


@pytest.mark.parametrize("name", NAMES)
def test_code_lines_fit_the_column(name):
    too_long = [
        line
        for cell in code_cells(load("en", name))
        for line in source(cell).splitlines()
        if chapter_format.columns(line) > COLUMNS
    ]
    assert not too_long, (
        f"{name}: {len(too_long)} code lines over {COLUMNS} columns (tools/chapter_format.py {name}), "
        f"first: {too_long[0]!r}"
    )


@pytest.mark.parametrize("language", nbbuild.LANGUAGES)
@pytest.mark.parametrize("name", NAMES)
def test_printed_lines_fit_the_column(name, language):
    """Printed results fit the output box; a table is printed as a Markdown table, not as wide text."""
    too_long = [
        line
        for cell in code_cells(load(language, name))
        if not PRINTS_LIBRARY_SOURCE.search(source(cell))
        for line in printed_text(cell)
        if chapter_format.columns(line) > COLUMNS
    ]
    assert not too_long, f"{language}/{name}: {len(too_long)} printed lines over {COLUMNS} columns: {too_long[:2]}"


@pytest.mark.parametrize("language", nbbuild.LANGUAGES)
@pytest.mark.parametrize("name", NAMES)
def test_setup_cell_comes_first(name, language):
    first = code_cells(load(language, name))[0]
    text = source(first)
    assert "setup" in first.get("metadata", {}).get("tags", [])
    assert text == nbbuild.setup_cell_source()
    assert nbbuild.repo_url() in text
    assert "pip" in text and "install" in text and "torch" not in text.split("pip", 1)[1].split("\n")[0], (
        "the setup cell must never reinstall torch"
    )
    assert text.index('os.environ.setdefault("TRITON_INTERPRET", "1")') < len(text)
    assert "import triton" not in text


@pytest.mark.parametrize("language", nbbuild.LANGUAGES)
@pytest.mark.parametrize("name", NAMES)
def test_every_code_cell_is_executed_with_outputs_in_order(name, language):
    cells = code_cells(load(language, name))
    counts = [cell["execution_count"] for cell in cells]
    assert all(count is not None for count in counts), f"{language}/{name}: a code cell was not executed"
    assert counts == list(range(1, len(cells) + 1)), f"{language}/{name}: cells were not run top to bottom once"
    for cell in cells:
        assert not any(o.get("output_type") == "error" for o in cell["outputs"]), f"{language}/{name}: error output"
        assert not any(o.get("name") == "stderr" and "Traceback" in "".join(o.get("text", "")) for o in cell["outputs"])


@pytest.mark.parametrize("language", nbbuild.LANGUAGES)
@pytest.mark.parametrize("name", NAMES)
def test_only_timing_cells_ignore_their_output(name, language):
    for cell in code_cells(load(language, name)):
        tags = cell.get("metadata", {}).get("tags", [])
        if "nbval-ignore-output" in tags:
            text = source(cell)
            assert re.search(r"bench\.|perf_counter|median_time|timeit|do_bench", text), (
                f"{language}/{name}: a cell ignores its output but measures nothing:\n{text[:200]}"
            )
        assert "nbval-skip" not in tags, f"{language}/{name}: cells must not be skipped"
        assert "raises-exception" not in tags or "Error" in json.dumps(cell["outputs"])


@pytest.mark.parametrize("name", NAMES)
def test_twins_link_to_each_other(name):
    assert f"(../ja/{name}.ipynb)" in source(load("en", name)["cells"][0])
    assert f"(../en/{name}.ipynb)" in source(load("ja", name)["cells"][0])


def test_every_chapter_is_in_its_languages_table_of_contents_in_the_same_place():
    """The English book (_toc.yml) lists the English chapters only, the Japanese one (_toc_ja.yml) the Japanese."""
    order = {}
    for language, toc_file in (("en", "_toc.yml"), ("ja", "_toc_ja.yml")):
        toc = (ROOT / toc_file).read_text(encoding="utf-8")
        files = re.findall(r"file: chapters/(en|ja)/(\w+)", toc)
        assert {lang for lang, _ in files} == {language}, f"{toc_file} mixes the languages"
        order[language] = [name for _, name in files]
        for name in NAMES:
            assert name in order[language], f"{language}/{name} is not in {toc_file}"
    assert order["en"] == order["ja"], "the two books list their chapters in different orders"


def test_japanese_chapters_are_written_in_japanese():
    for name in NAMES:
        prose = "".join(source(c) for c in load("ja", name)["cells"] if c["cell_type"] == "markdown")
        japanese = len(re.findall(r"[\u3040-\u30ff\u4e00-\u9fff]", prose))
        assert japanese > 0.3 * len(re.findall(r"[A-Za-z]", prose)), f"ja/{name}: prose is mostly not Japanese"
        assert "アテンション" not in prose and "トランス" not in prose.replace("トランスフォーマー", ""), (
            "JAPANESE.md: keep 'attention' and 'Transformer' in Latin letters"
        )


def test_parse_source_rejects_unknown_headers():
    with pytest.raises(ValueError, match="unknown block header"):
        nbbuild.parse_source("%% en\n# T\n%% fr\nbonjour")
    with pytest.raises(ValueError, match="before the first"):
        nbbuild.parse_source("stray\n%% en\n# T")


def _z_arrays(html: str):
    """Every plotly ``"z": [[...]]`` array in a stored HTML output, as its JSON text."""
    for match in re.finditer(r'"z":\s*\[', html):
        depth, start = 0, match.end() - 1
        for end in range(start, len(html)):
            depth += {"[": 1, "]": -1}.get(html[end], 0)
            if depth == 0:
                yield html[start : end + 1]
                break


def significant_digits(number: str) -> int:
    """Significant digits of a JSON number as written (``0.04802`` -> 4, ``1.5e-07`` -> 2)."""
    mantissa = re.split(r"[eE]", number.lstrip("-"))[0]
    digits = mantissa.replace(".", "").lstrip("0")
    if "." not in mantissa:
        digits = digits.rstrip("0")  # 123000 -> 3 digits
    return len(digits)


def test_significant_digits_counts_as_written():
    assert [significant_digits(x) for x in ("0.04802", "0.048016436", "-1.5e-07", "12", "123000", "0", "0.0")] == [
        4, 8, 2, 2, 3, 0, 0
    ]  # fmt: skip


@pytest.mark.parametrize("language", nbbuild.LANGUAGES)
@pytest.mark.parametrize("name", NAMES)
def test_figure_data_in_the_pages_has_at_most_four_significant_digits(name, language):
    """More digits than the eye can see are rounding noise that differs from machine to machine."""
    from attnlib.viz import SIGNIFICANT_DIGITS

    for cell in code_cells(load(language, name)):
        for output in cell["outputs"]:
            html = output.get("data", {}).get("text/html")
            if not html:
                continue
            for array in _z_arrays("".join(html) if isinstance(html, list) else html):
                numbers = re.findall(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", array)
                worst = max(numbers, key=significant_digits, default="0")
                assert significant_digits(worst) <= SIGNIFICANT_DIGITS, (
                    f"{language}/{name}: a figure stores {worst} ({significant_digits(worst)} significant digits); "
                    "draw it with attnlib.viz (which rounds) and rebuild the chapter"
                )


def test_keep_outputs_copies_outputs_only_when_the_code_is_unchanged(tmp_path):
    """`nbbuild --keep-outputs` (prose-only edits) keeps stored outputs, and refuses a changed code cell."""
    import nbformat

    blocks = nbbuild.parse_source("%% en\n# T\n%% ja\n# T\n%% code\nprint(1)\n")
    stored = nbbuild.make_notebook("t", blocks, "en")
    stored.cells[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    path = tmp_path / "t.ipynb"
    nbformat.write(stored, path)

    prose_edit = nbbuild.make_notebook(
        "t", nbbuild.parse_source("%% en\n# T, edited\n%% ja\n# T\n%% code\nprint(1)\n"), "en"
    )
    nbbuild.keep_outputs(prose_edit, path)
    assert prose_edit.cells[-1].outputs[0]["text"] == "1\n"
    assert "edited" in prose_edit.cells[0].source

    code_edit = nbbuild.make_notebook("t", nbbuild.parse_source("%% en\n# T\n%% ja\n# T\n%% code\nprint(2)\n"), "en")
    with pytest.raises(ValueError, match="code cells changed"):
        nbbuild.keep_outputs(code_edit, path)


def _rejected_terms() -> dict[str, str]:
    lines = (ROOT / "tools" / "ja_rejected_terms.tsv").read_text(encoding="utf-8").splitlines()
    return dict(line.split("\t") for line in lines if line and not line.startswith("#"))


def _without_code_and_math(text: str) -> str:
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`]*`", "", text)
    return re.sub(r"\$[^$]*\$", "", text)


def test_rejected_terms_list_is_well_formed():
    terms = _rejected_terms()
    assert "チャネル" in terms and terms["画素"] == "ピクセル"
    glossary = (ROOT / "glossary.md").read_text(encoding="utf-8")
    preferred_terms = ("チャンネル", "ピクセル", "大域的", "真偽値", "規約", "ロジット", "ベースライン")
    preferred_terms += ("スライディングウィンドウ", "プリフィル", "残差接続")
    for preferred in preferred_terms:
        assert preferred in glossary, f"glossary.md lacks the preferred term {preferred}"


@pytest.mark.parametrize("name", NAMES)
def test_japanese_chapters_use_the_glossary_terms(name):
    blocks = nbbuild.parse_source((ROOT / "chapters" / "src" / f"{name}.md").read_text(encoding="utf-8"))
    prose = "\n".join(text for kind, _, text in blocks if kind == "ja")
    prose = _without_code_and_math(prose)
    found = {bad: good for bad, good in _rejected_terms().items() if bad in prose}
    assert not found, f"{name}: rejected spellings in the Japanese text (use the glossary's): {found}"


def test_the_glossary_uses_its_own_terms():
    japanese_columns = []
    for line in (ROOT / "glossary.md").read_text(encoding="utf-8").splitlines():
        cells = line.split("|")
        if len(cells) >= 5:
            japanese_columns += [cells[2], cells[4]]
    prose = _without_code_and_math("\n".join(japanese_columns))
    found = {bad: good for bad, good in _rejected_terms().items() if bad in prose}
    assert not found, f"glossary.md: rejected spellings in its Japanese columns: {found}"
