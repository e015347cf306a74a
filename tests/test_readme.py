"""The README's example must run as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_example_runs_and_converges() -> None:
    code = _python_blocks()[0]
    assert len(code.strip().splitlines()) <= 22
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    values = [float(v) for v in completed.stdout.strip(" []\n").split()]
    assert len(values) == 3 and all(3.0 < v < 4.6 for v in values)


def test_every_other_readme_snippet_runs() -> None:
    for code in _python_blocks()[1:]:
        completed = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert completed.returncode == 0, f"{code}\n{completed.stderr}"
