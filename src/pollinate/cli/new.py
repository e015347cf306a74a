"""``pollinate new NAME``: write a runnable project from a bundled template, offline."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import click

from pollinate.errors import ConfigError

__all__ = ["TEMPLATES", "new", "write_project"]

TEMPLATES = ("numpy",)
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def write_project(name: str, directory: Path, *, template: str = "numpy") -> Path:
    """Copy the template into ``directory/name``, naming its package after ``name``."""
    if not _NAME.match(name):
        raise ConfigError(
            f"project name {name!r} must start with a letter and hold only letters, digits, "
            "'-' and '_'"
        )
    if template not in TEMPLATES:
        raise ConfigError(f"unknown template {template!r}; choose one of {', '.join(TEMPLATES)}")
    target = directory / name
    if target.exists():
        raise ConfigError(f"{target} already exists; choose another name or remove it")
    package = name.replace("-", "_").lower()
    source = resources.files("pollinate.cli") / "templates" / template
    _copy(source, target, {"{{project}}": name, "{{package}}": package})
    return target


def _copy(source: resources.abc.Traversable, target: Path, names: dict[str, str]) -> None:
    target.mkdir(parents=True)
    for entry in source.iterdir():
        entry_name = entry.name
        if entry_name == "__pycache__":
            continue
        for placeholder, value in names.items():
            entry_name = entry_name.replace(placeholder, value)
        if entry.is_dir():
            _copy(entry, target / entry_name, names)
            continue
        if entry_name.endswith(".tmpl"):
            entry_name = entry_name[: -len(".tmpl")]
        text = entry.read_text(encoding="utf-8")
        for placeholder, value in names.items():
            text = text.replace(placeholder, value)
        (target / entry_name).write_text(text, encoding="utf-8")


@click.command()
@click.argument("name")
@click.option("--template", type=click.Choice(TEMPLATES), default="numpy", show_default=True)
@click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Where to create the project.",
)
def new(name: str, template: str, directory: Path) -> None:
    """Create a runnable Pollinate project NAME from a bundled template."""
    target = write_project(name, directory, template=template)
    click.echo(f"Created {target}. Run it with:\n  pollinate simulate {target}")
