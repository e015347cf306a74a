"""Imports flow one way: records -> strategy/sampling/data -> client/server -> runtime -> cli.

Checked in a fresh interpreter, so modules imported by other tests do not hide a leak.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN_EVERYWHERE_CORE = {"grpc", "ray", "torch", "jax", "cloudpickle", "dill"}

CONTRACT = {
    "pollinate.records": {
        "pollinate.strategy",
        "pollinate.client",
        "pollinate.server",
        "pollinate.runtime",
        "pollinate.cli",
        "sklearn",
        "matplotlib",
        "rich",
    },
    "pollinate.strategy": {
        "pollinate.client",
        "pollinate.runtime",
        "pollinate.cli",
        "sklearn",
        "matplotlib",
        "rich",
    },
    "pollinate.sampling": {"pollinate.strategy", "pollinate.runtime", "pollinate.cli"},
    "pollinate.data": {"pollinate.strategy", "pollinate.runtime", "pollinate.cli", "sklearn"},
    "pollinate.serde": {"pollinate.strategy", "pollinate.runtime", "pollinate.cli"},
    "pollinate.client": {"pollinate.server", "pollinate.runtime", "pollinate.cli"},
    "pollinate.server": {"pollinate.runtime", "pollinate.cli"},
    "pollinate.runtime.simulation": {"pollinate.cli", "matplotlib", "rich"},
    "pollinate.privacy": {
        "pollinate.client",
        "pollinate.server",
        "pollinate.runtime",
        "pollinate.cli",
        "sklearn",
        "matplotlib",
        "rich",
        "dp_accounting",  # imported on first use: it takes seconds
    },
    "pollinate.analytics": {"pollinate.runtime", "pollinate.cli", "sklearn", "matplotlib", "rich"},
    "pollinate.adapters": {"pollinate.runtime", "pollinate.cli", "sklearn", "matplotlib", "rich"},
}


@pytest.mark.parametrize("module", sorted(CONTRACT))
def test_module_does_not_import_layers_above_it(module: str) -> None:
    code = f"import sys, json, {module}; print(json.dumps(sorted(sys.modules)))"
    loaded = set(json.loads(subprocess.check_output([sys.executable, "-c", code], text=True)))
    forbidden = CONTRACT[module] | FORBIDDEN_EVERYWHERE_CORE
    leaks = sorted(
        m
        for m in loaded
        if m.split(".")[0] in forbidden or any(m == f or m.startswith(f + ".") for f in forbidden)
    )
    assert not leaks, f"{module} imports {leaks}"


def test_no_pickle_in_the_source() -> None:
    from pathlib import Path

    import pollinate

    root = Path(pollinate.__file__).parent
    offenders = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if any(
            word in p.read_text()
            for word in ("import pickle", "from pickle", "pickle.loads", "allow_pickle=True")
        )
    ]
    assert offenders == []
