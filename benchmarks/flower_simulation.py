"""Flower's twin of the Pollinate benchmark: one scenario on Flower's simulation runtime.

What: runs scenario A1 or A2 of ``_workload.py`` (the same softmax regression, data,
SGD steps, FedAvg sampling rate and rounds as the Pollinate run) with Flower 1.42's
Message API (``flwr.serverapp.ServerApp`` + ``flwr.clientapp.ClientApp`` with
``@app.train``, ``flwr.serverapp.strategy.FedAvg``), simulated with
``flwr.simulation.run_simulation`` on its Ray backend (one CPU per client, as many
CPUs as this machine has; Ray is shut down by Flower when the run ends).

Why a separate script: it runs in its own venv (``benchmarks/.venv-flwr``) that has
Flower and not Pollinate, so it imports nothing of Pollinate; ``benchmarks/simulation.py``
launches it as a child and measures it exactly as it measures Pollinate.

Usage: ``benchmarks/.venv-flwr/bin/python benchmarks/flower_simulation.py --scenario A1``.
It prints one ``BENCH_REPORT {json}`` line on stdout with the round timestamps.
"""

from __future__ import annotations

import argparse
import os
import random

# Telemetry would add network calls to the measured time; switch it off before import.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import numpy as np
from _workload import SCENARIOS, SEED, RoundClock, init_params, node_data, train
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation


def build_apps(
    num_rounds: int, fraction_train: float, num_nodes: int
) -> tuple[ServerApp, ClientApp]:
    """The ServerApp (FedAvg, training only) and the ClientApp of one scenario."""
    client_app = ClientApp()

    @client_app.train()
    def train_handler(msg: Message, context: Context) -> Message:
        """A few SGD steps on this node's synthetic data; reply arrays and metrics."""
        partition_id = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        x, y = node_data(SEED, partition_id)
        params, loss = train(
            msg.content["arrays"].to_numpy_ndarrays(),
            x,
            y,
            rng=np.random.default_rng([SEED, partition_id, server_round]),
        )
        metrics = MetricRecord({"train-loss": loss, "num-examples": len(x)})
        content = RecordDict({"arrays": ArrayRecord(params), "metrics": metrics})
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        """Run the rounds and print the round timestamps for the orchestrator."""
        random.seed(SEED)  # Flower's FedAvg samples nodes with the `random` module
        strategy = FedAvg(
            fraction_train=fraction_train,
            fraction_evaluate=0.0,
            min_available_nodes=num_nodes,
        )
        clock = RoundClock()
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(init_params(SEED)),
            num_rounds=num_rounds,
            evaluate_fn=clock,
        )
        losses = result.train_metrics_clientapp.get(num_rounds, {})
        import flwr
        import ray

        clock.report(
            framework="flower",
            version=flwr.__version__,
            ray_version=ray.__version__,
            train_loss=losses.get("train-loss"),
        )

    return server_app, client_app


def main() -> None:
    """Parse the scenario and run it on Flower's Ray backend."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="Ray's CPUs")
    args = parser.parse_args()
    scenario = SCENARIOS[args.scenario]
    server_app, client_app = build_apps(
        scenario.num_rounds, scenario.fraction_train, scenario.num_nodes
    )
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=scenario.num_nodes,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": args.cpus, "num_gpus": 0},
        },
    )


if __name__ == "__main__":
    main()
