"""Write the `pollinate new` template of an example project (run by `make templates`).

A template is its example with the package directory renamed ``{{package}}``, the
package and project names replaced by ``{{package}}`` / ``{{project}}`` inside files,
and ``.tmpl`` added to every file name. tests/cli/test_new.py checks that each template
generates its example byte for byte.

Usage: python scripts/make_template.py EXAMPLE_DIR TEMPLATE_DIR
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import tomllib


def make_template(example: Path, template: Path) -> None:
    """Replace ``template`` with the template of ``example``."""
    project = tomllib.loads((example / "pyproject.toml").read_text())["project"]["name"]
    package = project.replace("-", "_").lower()
    if template.exists():
        shutil.rmtree(template)
    for source in sorted(example.rglob("*")):
        if not source.is_file() or "__pycache__" in source.parts:
            continue
        parts = ["{{package}}" if p == package else p for p in source.relative_to(example).parts]
        target = template.joinpath(*parts[:-1], parts[-1] + ".tmpl")
        target.parent.mkdir(parents=True, exist_ok=True)
        text = source.read_text(encoding="utf-8")
        target.write_text(
            text.replace(package, "{{package}}").replace(project, "{{project}}"), encoding="utf-8"
        )


if __name__ == "__main__":
    make_template(Path(sys.argv[1]), Path(sys.argv[2]))
