from __future__ import annotations

import filecmp
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pollinate.cli.main import main
from pollinate.cli.new import DEFAULT_TEMPLATE, TEMPLATES, available_templates, write_project
from pollinate.cli.project import load_project
from pollinate.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TEMPLATE_DIR = Path(__file__).resolve().parents[2] / "src" / "pollinate" / "cli" / "templates"
#: Each template is kept identical to one example: its directory under examples/.
EXAMPLE_OF = {
    "numpy": "quickstart",
    "pytorch": "pytorch",
    "sklearn": "sklearn",
    "jax": "jax",
    "xgboost": "xgboost",
}
HOW_TO_MAKE_A_TEMPLATE = (
    "a template is its example with the package directory renamed {{package}}, the "
    "package and project names replaced by {{package}} and {{project}} in files, and "
    "'.tmpl' appended to every file name"
)


def _files(root: Path) -> list[Path]:
    return sorted(
        p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )


def _project_name(example: Path) -> str:
    return load_project(example).name


def test_the_templates_are_the_directories_under_cli_templates() -> None:
    found = sorted(p.name for p in TEMPLATE_DIR.iterdir() if p.is_dir() and p.name[0] not in "_.")
    assert list(available_templates()) == found == list(TEMPLATES)
    assert {"numpy", "xgboost"} <= set(TEMPLATES)


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_writes_exactly_its_example(tmp_path: Path, template: str) -> None:
    # Arrange: the example the template comes from, and the project name it was made with.
    example = EXAMPLES / EXAMPLE_OF.get(template, template)
    assert example.is_dir(), f"template {template!r} has no example at {example}"

    # Act
    project = write_project(_project_name(example), tmp_path, template=template)

    # Assert: the same files, byte for byte.
    assert _files(project) == _files(example), HOW_TO_MAKE_A_TEMPLATE
    for name in _files(example):
        assert filecmp.cmp(project / name, example / name, shallow=False), (
            f"{name} of template {template!r} differs from {example / name}; "
            f"{HOW_TO_MAKE_A_TEMPLATE}"
        )


@pytest.mark.parametrize("template", sorted(EXAMPLE_OF))
def test_every_example_that_exists_has_its_template(template: str) -> None:
    example = EXAMPLES / EXAMPLE_OF[template]
    assert not example.is_dir() or template in TEMPLATES, (
        f"{example} exists but src/pollinate/cli/templates/{template} does not; "
        f"{HOW_TO_MAKE_A_TEMPLATE}"
    )


@pytest.mark.parametrize("template", TEMPLATES)
def test_generated_project_runs_offline(tmp_path: Path, template: str) -> None:
    # Arrange
    name = f"my-{template}-app"
    assert main(["new", name, "--template", template, "--directory", str(tmp_path)]) == 0
    project = tmp_path / name
    assert (project / name.replace("-", "_") / "client_app.py").is_file()

    # Act: run it as a user would, in a fresh interpreter.
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
            "4",
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Assert
    assert completed.returncode == 0, completed.stderr
    assert "round 2" in completed.stderr
    (history_path,) = (tmp_path / "runs").glob("*/history.json")
    history = json.loads(history_path.read_text())
    assert history["status"] == "completed"
    assert [r["server_round"] for r in history["rounds"]] == [1, 2]


def test_without_template_the_numpy_template_is_written(tmp_path: Path) -> None:
    assert main(["new", "plain", "--directory", str(tmp_path / "a")]) == 0
    write_project("plain", tmp_path / "b", template="numpy")

    assert DEFAULT_TEMPLATE == "numpy"
    assert _files(tmp_path / "a" / "plain") == _files(tmp_path / "b" / "plain")
    for name in _files(tmp_path / "b" / "plain"):
        assert filecmp.cmp(tmp_path / "a" / "plain" / name, tmp_path / "b" / "plain" / name)


def test_unknown_template_lists_the_available_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new", "app", "--template", "tensorflow", "--directory", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tensorflow" in err
    assert all(repr(t) in err for t in TEMPLATES), err
    assert not (tmp_path / "app").exists()

    with pytest.raises(
        ConfigError,
        match=r"unknown template 'tensorflow'; choose one of jax, numpy, pytorch, sklearn, "
        r"xgboost$",
    ):
        write_project("app", tmp_path, template="tensorflow")


@pytest.mark.parametrize("name", ["xgboost", "NumPy", "json", "pollinate"])
def test_names_that_would_hide_a_module_are_refused(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new", name, "--template", "xgboost", "--directory", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"would make a package {name.lower()!r} that hides" in err
    assert not (tmp_path / name).exists()


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
