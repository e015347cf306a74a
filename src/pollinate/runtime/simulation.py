"""Run a ServerApp and a ClientApp together on virtual nodes of this machine."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any, Literal

from pollinate.client import ClientApp
from pollinate.errors import ConfigError
from pollinate.records import ConfigValue, Context, RecordDict
from pollinate.runtime.inline import InlineGrid
from pollinate.runtime.nodes import NodeConfigFn, VirtualNodes
from pollinate.server.app import ServerApp
from pollinate.server.grid import Grid
from pollinate.strategy.history import RunObserver

__all__ = ["RUNTIMES", "RuntimeName", "run_simulation"]

RuntimeName = Literal["inline", "process"]
RUNTIMES: tuple[RuntimeName, ...] = ("inline", "process")


def run_simulation(
    server_app: ServerApp,
    client_app: ClientApp | str,
    *,
    num_nodes: int,
    run_config: Mapping[str, ConfigValue] | None = None,
    runtime: RuntimeName = "inline",
    num_workers: int | None = None,
    node_config_fn: NodeConfigFn | None = None,
    observer: RunObserver | None = None,
    run_id: int | None = None,
) -> Any:
    """Simulate a federation of ``num_nodes`` virtual nodes and run ``server_app`` on it.

    Parameters
    ----------
    server_app:
        Drives the run; its ``main(grid, context)`` gets a Grid over the virtual nodes.
    client_app:
        The nodes' app, or its ``"module:attribute"`` reference (needed by the process
        runtime when workers cannot inherit it, e.g. under the ``spawn`` start method).
    num_nodes:
        Size of the federation. Node ``i + 1`` gets ``partition-id = i`` in its
        node_config, plus whatever ``node_config_fn(i)`` returns.
    run_config:
        The run's settings, given to the server's and every node's Context.
    runtime:
        ``"inline"`` (one process, deterministic, debuggable) or ``"process"`` (a
        worker pool, arrays in shared memory). Both give bit-identical results.
    num_workers:
        Worker processes of the process runtime (default: one per core).
    observer:
        Told about every round (progress display, history file).

    Returns
    -------
    Whatever the ServerApp's main returned (``Strategy.start`` returns a Result).
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    nodes = VirtualNodes(
        num_nodes=num_nodes,
        run_id=run_id if run_id is not None else secrets.randbits(63),
        run_config=dict(run_config or {}),
        node_config_fn=node_config_fn,
        seed=_seed_of(run_config),
    )
    grid: Grid
    if runtime == "inline":
        app = client_app if isinstance(client_app, ClientApp) else _load_client_app(client_app)
        grid = InlineGrid(app, nodes, observer=observer)
    else:
        from pollinate.runtime.process import ProcessGrid

        grid = ProcessGrid(client_app, nodes, num_workers=num_workers, observer=observer)
    context = Context(
        run_id=nodes.run_id,
        node_id=0,
        node_config={},
        run_config=dict(nodes.run_config),
        state=RecordDict(),
    )
    with grid:
        return server_app(grid, context)


def _load_client_app(reference: str) -> ClientApp:
    from pollinate.runtime.loading import load_object

    return load_object(reference, ClientApp)


def _seed_of(run_config: Mapping[str, ConfigValue] | None) -> int:
    """The run's ``seed`` config if it has an int one, else 0 (seeds node profiles)."""
    seed = (run_config or {}).get("seed", 0)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
