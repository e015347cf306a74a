"""``pollinate simulate APP``: run an app project on virtual nodes of this machine."""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path

import click
from rich.console import Console

from pollinate.cli.display import ProgressDisplay, summary_table
from pollinate.cli.project import apply_overrides, load_project, parse_free_items
from pollinate.cli.recorder import RunRecorder
from pollinate.client import ClientApp
from pollinate.errors import ConfigError
from pollinate.runtime.loading import load_object
from pollinate.runtime.profiles import NodeProfile
from pollinate.runtime.simulation import RUNTIMES, run_simulation
from pollinate.server import ServerApp
from pollinate.strategy.history import ObserverGroup

__all__ = ["simulate"]


def _new_run_id() -> int:
    return secrets.randbits(48)


@click.command()
@click.argument("app", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--nodes",
    "num_nodes",
    type=click.IntRange(min=1),
    default=None,
    help="Number of virtual nodes [default: the app's num-nodes, else 10].",
)
@click.option(
    "--rounds",
    type=click.IntRange(min=0),
    default=None,
    help="Number of rounds (sets num-server-rounds).",
)
@click.option(
    "--runtime",
    type=click.Choice(RUNTIMES),
    default=None,
    help="inline: one process, deterministic; process: a worker pool.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes of the process runtime [default: one per core].",
)
@click.option("--seed", type=int, default=None, help="Seed of the run (sets config seed).")
@click.option(
    "--config",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config default of the app; repeatable.",
)
@click.option(
    "--node-config",
    "node_config_items",
    multiple=True,
    metavar="KEY=VALUE",
    help="Add to every virtual node's node_config (e.g. sim-unavailable-p=0.2); repeatable.",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Where run records are written.",
)
def simulate(
    app: Path,
    num_nodes: int | None,
    rounds: int | None,
    runtime: str | None,
    workers: int | None,
    seed: int | None,
    overrides: tuple[str, ...],
    node_config_items: tuple[str, ...],
    runs_dir: Path,
) -> None:
    """Simulate APP (a project directory) over virtual nodes on this machine."""
    project = load_project(app)
    run_config = apply_overrides(project.config, overrides)
    extra_node_config = parse_free_items(node_config_items, option="--node-config")
    if extra_node_config:
        NodeProfile.from_config(extra_node_config)  # a bad profile is an error now, not later
    if rounds is not None:
        run_config["num-server-rounds"] = rounds
    if seed is not None:
        run_config["seed"] = seed
    nodes = num_nodes or int(project.simulation.get("num-nodes", 10))
    chosen = runtime or str(project.simulation.get("runtime", "inline"))
    if chosen not in RUNTIMES:
        raise ConfigError(
            f"[tool.pollinate.simulation] runtime {chosen!r} is not one of {RUNTIMES}"
        )

    project.add_to_path()
    server_app = load_object(project.server_app, ServerApp)
    client_app = load_object(project.client_app, ClientApp)

    run_id = _new_run_id()
    run_dir = runs_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{run_id:012x}"
    recorder = RunRecorder(
        run_dir,
        header={
            "run_id": f"{run_id:012x}",
            "app": project.name,
            "app_dir": str(project.root),
            "runtime": chosen,
            "num_nodes": nodes,
            "seed": run_config.get("seed"),
            "config": run_config,
            "node_config": extra_node_config,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )
    console = Console(stderr=True)
    display = ProgressDisplay(console)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console.print(
        f"[bold]Pollinate[/bold] simulating [cyan]{project.name}[/cyan] on {nodes} "
        f"virtual nodes ({chosen} runtime), run {run_id:012x}",
        highlight=False,
    )
    status, error = "failed", None
    try:
        run_simulation(
            server_app,
            client_app,
            num_nodes=nodes,
            run_config=run_config,
            runtime=chosen,
            num_workers=workers,
            node_config_fn=(lambda _: extra_node_config) if extra_node_config else None,
            observer=ObserverGroup(display, recorder),
            run_id=run_id,
        )
        status = "completed"
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        display.stop()
        recorder.finish(status, error)
        if status != "completed":
            recorder.close()
    try:
        if recorder.history.rounds:  # an analytics-only run has no rounds to tabulate
            console.print(summary_table(recorder.history))
    finally:
        recorder.close()
    plot = f" and {run_dir / 'metrics.png'}" if recorder.history.rounds else ""
    console.print(f"Run record: {recorder.history_path}{plot}", highlight=False)
