"""The repository address the Colab path depends on: one place, a clear error, a check before publishing."""

import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402
import nbbuild  # noqa: E402


def test_the_address_lives_in_one_place_and_reaches_every_setup_cell():
    url = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))["repository"]["url"]
    assert f'REPO_URL = "{url}"' in nbbuild.setup_cell_source()


def test_publishing_refuses_the_placeholder_address_and_takes_a_real_one():
    with pytest.raises(SystemExit, match="repository.url"):
        build_book.check_repository_address({"repository": {"url": build_book.PLACEHOLDER_ADDRESS}})
    with pytest.raises(SystemExit, match="repository.url"):
        build_book.check_repository_address({"repository": {}})
    build_book.check_repository_address({"repository": {"url": "https://github.com/someone/their-fork"}})


def test_publishing_with_the_placeholder_stops_the_build_before_it_starts(tmp_path):
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    if config["repository"]["url"].rstrip("/") != build_book.PLACEHOLDER_ADDRESS:
        pytest.skip("this copy has its own address: BOOK_PUBLISH=1 would build the book")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build_book.py")],
        env={"BOOK_PUBLISH": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "repository.url" in result.stderr


def test_the_setup_cell_says_what_to_set_when_the_repository_cannot_be_fetched(monkeypatch):
    calls = []

    def failing_run(command, *args, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 128)

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", failing_run)
    monkeypatch.setattr("os.path.isdir", lambda path: False)
    with pytest.raises(RuntimeError, match=r"repository\.url in its _config\.yml"):
        exec(nbbuild.setup_cell_source(), {})
    assert calls and calls[0][:2] == ["git", "clone"]
