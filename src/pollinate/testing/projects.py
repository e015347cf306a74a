"""Run a project directory (a ``pyproject.toml`` with ``[tool.pollinate]``) in a test."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pollinate.cli.project import load_project
from pollinate.client import ClientApp
from pollinate.records import ConfigValue
from pollinate.runtime.loading import load_object
from pollinate.runtime.simulation import run_simulation
from pollinate.server import ServerApp

__all__ = ["simulate_project"]


def simulate_project(
    directory: str | Path,
    *,
    run_config: Mapping[str, ConfigValue] | None = None,
    num_nodes: int | None = None,
) -> Any:
    """Simulate a project the way ``pollinate simulate DIRECTORY`` does, without its
    display or run record: what a project's own tests call to check that it learns.

    The project's ``[tool.pollinate.config]`` applies with ``run_config`` on top, over
    its ``num-nodes`` (10 if it names none) unless ``num_nodes`` is given, on the inline
    runtime. Returns what the ServerApp's main returned (a strategy's ``Result``).
    """
    project = load_project(Path(directory))
    project.add_to_path()
    return run_simulation(
        load_object(project.server_app, ServerApp),
        load_object(project.client_app, ClientApp),
        num_nodes=num_nodes or int(project.simulation.get("num-nodes", 10)),
        run_config={**project.config, **(run_config or {})},
    )
