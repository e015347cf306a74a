"""The server side: FedAvg over all nodes, training only, on N float32 parameters.

Appends one wall-clock timestamp per round boundary (``time.time()``: before round 1,
then after each round's aggregation, through the centralized-evaluate hook) and one
final line with the model's mean to the file named by ``BENCH_OUT`` in the SuperLink's
environment, which its ServerApp process inherits.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


def _record(entry: dict[str, float]) -> None:
    with open(os.environ["BENCH_OUT"], "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the rounds, recording when each ends."""
    size = int(context.run_config["num-parameters"])
    nodes = int(context.run_config["num-nodes"])
    rounds = int(context.run_config["num-server-rounds"])
    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=nodes)

    def clock(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        _record({"round": server_round, "time": time.time()})
        return MetricRecord()

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.zeros(size, dtype=np.float32)]),
        num_rounds=rounds,
        evaluate_fn=clock,
    )
    final = result.arrays.to_numpy_ndarrays()[0]
    _record({"done": 1, "mean": float(final.mean())})
