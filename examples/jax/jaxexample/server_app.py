"""What runs on the server: FedAvg over the nodes, scored on a held-out test split."""

from __future__ import annotations

import numpy as np

from jaxexample.task import evaluate, init_model, load_data
from pollinate import ArrayRecord, Context, FedAvg, Grid, MetricRecord, Result, ServerApp
from pollinate.adapters import load_arrays, to_arrays

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> Result:
    config = context.run_config
    seed = int(config["seed"])
    x_test, y_test = load_data(
        len(grid.nodes()), float(config["dirichlet-alpha"]), seed
    ).centralized_test()
    initial = init_model(int(config["hidden-units"]), seed)

    def centralized_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = evaluate(load_arrays(initial, arrays), x_test, y_test)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    strategy = FedAvg(
        fraction_train=float(config["fraction-train"]),
        fraction_evaluate=float(config["fraction-evaluate"]),
        min_available_nodes=2,
        rng=np.random.default_rng(seed),
    )
    return strategy.start(
        grid,
        initial_arrays=to_arrays(initial),
        num_rounds=int(config["num-server-rounds"]),
        evaluate_fn=centralized_evaluate,
    )
