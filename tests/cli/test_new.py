from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

from pollinate.cli.main import main
from pollinate.cli.new import write_project

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


def _files(root: Path) -> list[Path]:
    return sorted(
        p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def test_new_writes_exactly_the_quickstart_example(tmp_path: Path) -> None:
    project = write_project("quickstart", tmp_path)
    assert _files(project) == _files(EXAMPLE)
    for name in _files(EXAMPLE):
        assert filecmp.cmp(project / name, EXAMPLE / name, shallow=False), name


def test_new_project_runs(tmp_path: Path) -> None:
    assert main(["new", "my-app", "--directory", str(tmp_path)]) == 0
    project = tmp_path / "my-app"
    assert (project / "my_app" / "client_app.py").is_file()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pollinate.cli.main",
            "simulate",
            str(project),
            "--rounds",
            "2",
            "--nodes",
            "6",
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "round 2" in completed.stderr


@pytest.mark.parametrize("name", ["1abc", "a b", "../x", ""])
def test_bad_names_are_refused(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new", name, "--directory", str(tmp_path)]) == 2
    assert "project name" in capsys.readouterr().err


def test_existing_directory_is_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "taken").mkdir()
    assert main(["new", "taken", "--directory", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
