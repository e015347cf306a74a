"""``pollinate new NAME [--template T]``: write a runnable project from a bundled template, offline.

A template is a directory under ``pollinate/cli/templates``: the example project it
comes from (numpy from ``examples/quickstart``, the others from ``examples/<name>``),
with the example's package directory named ``{{package}}``, ``{{package}}`` and
``{{project}}`` in place of its package and project names inside files, and
``.tmpl`` appended to every file name (so tools never treat a template as code).
Adding a directory there is all it takes to add a template; ``tests/cli/test_new.py``
keeps each one byte-identical to its example.
"""

from __future__ import annotations

import re
import sys
from importlib import resources
from pathlib import Path

import click

from pollinate.errors import ConfigError

__all__ = ["DEFAULT_TEMPLATE", "TEMPLATES", "available_templates", "new", "write_project"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
#: Modules the templates import, besides the standard library: a project's package of
#: the same name would hide them (the app's directory goes first on ``sys.path``).
_TEMPLATE_IMPORTS = frozenset(
    {"pollinate", "numpy", "scipy", "sklearn", "torch", "torchvision", "jax", "flax", "optax"}
    | {"xgboost", "click", "rich", "grpc", "google", "cryptography"}
)
_PLACEHOLDER_SUFFIX = ".tmpl"


def available_templates() -> tuple[str, ...]:
    """The names of the bundled templates (the directories under ``cli/templates``), sorted.

    Examples
    --------
    >>> "numpy" in available_templates()
    True
    """
    root = resources.files("pollinate.cli") / "templates"
    return tuple(
        sorted(
            entry.name
            for entry in root.iterdir()
            if entry.is_dir() and not entry.name.startswith(("_", "."))
        )
    )


#: The bundled templates, as found when this module was imported.
TEMPLATES: tuple[str, ...] = available_templates()
#: What ``pollinate new`` writes without ``--template``.
DEFAULT_TEMPLATE = "numpy"


def write_project(name: str, directory: Path, *, template: str = DEFAULT_TEMPLATE) -> Path:
    """Copy ``template`` into ``directory/name``, naming its package after ``name``.

    The package is ``name`` in lower case with ``-`` turned into ``_``. Nothing is
    downloaded: templates ship inside Pollinate.

    Raises
    ------
    ConfigError
        If ``name`` is not a valid project name, would make a package that hides a
        module the project needs, ``template`` is unknown (the message lists the
        available ones), or ``directory/name`` exists.
    """
    if not _NAME.match(name):
        raise ConfigError(
            f"project name {name!r} must start with a letter and hold only letters, digits, "
            "'-' and '_'"
        )
    package = name.replace("-", "_").lower()
    if package in _TEMPLATE_IMPORTS or package in sys.stdlib_module_names:
        origin = "Python's standard library" if package in sys.stdlib_module_names else "a library"
        raise ConfigError(
            f"project name {name!r} would make a package {package!r} that hides the module of "
            f"the same name from {origin}; choose another name, e.g. 'my-{name}'"
        )
    templates = available_templates()
    if template not in templates:
        raise ConfigError(f"unknown template {template!r}; choose one of {', '.join(templates)}")
    target = directory / name
    if target.exists():
        raise ConfigError(f"{target} already exists; choose another name or remove it")
    source = resources.files("pollinate.cli") / "templates" / template
    _copy(source, target, {"{{project}}": name, "{{package}}": package})
    return target


def _copy(source: resources.abc.Traversable, target: Path, names: dict[str, str]) -> None:
    """Copy ``source`` to ``target``, filling in ``names`` in file names and contents."""
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
        entry_name = entry_name.removesuffix(_PLACEHOLDER_SUFFIX)
        text = entry.read_text(encoding="utf-8")
        for placeholder, value in names.items():
            text = text.replace(placeholder, value)
        (target / entry_name).write_text(text, encoding="utf-8")


@click.command()
@click.argument("name")
@click.option(
    "--template",
    type=click.Choice(TEMPLATES),
    default=DEFAULT_TEMPLATE,
    show_default=True,
    help="The example project to start from.",
)
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
