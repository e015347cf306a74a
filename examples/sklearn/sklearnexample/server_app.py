"""What runs on the server: FedAvg of the nodes' coefficients, scored on a held-out split."""

from __future__ import annotations

import numpy as np

from pollinate import ArrayRecord, Context, FedAvg, Grid, MetricRecord, Result, ServerApp
from sklearnexample.task import evaluate, init_arrays, load_data

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> Result:
    config = context.run_config
    seed = int(config["seed"])
    x_test, y_test = load_data(len(grid.nodes()), seed).centralized_test()

    def centralized_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = evaluate(arrays, x_test, y_test)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    strategy = FedAvg(
        fraction_train=float(config["fraction-train"]),
        fraction_evaluate=float(config["fraction-evaluate"]),
        min_available_nodes=2,
        rng=np.random.default_rng(seed),
    )
    return strategy.start(
        grid,
        initial_arrays=init_arrays(),
        num_rounds=int(config["num-server-rounds"]),
        evaluate_fn=centralized_evaluate,
    )
