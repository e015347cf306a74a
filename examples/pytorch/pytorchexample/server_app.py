"""What runs on the server: FedProx over the nodes, scored on a held-out test split."""

from __future__ import annotations

import numpy as np

from pollinate import ArrayRecord, Context, Grid, MetricRecord, Result, ServerApp
from pollinate.adapters import load_arrays, to_arrays
from pollinate.strategy import FedProx
from pytorchexample.task import Net, evaluate, load_data, new_model

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> Result:
    config = context.run_config
    seed = int(config["seed"])
    x_test, y_test = load_data(
        len(grid.nodes()), float(config["dirichlet-alpha"]), seed
    ).centralized_test()

    def centralized_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        loss, accuracy = evaluate(load_arrays(Net(), arrays), x_test, y_test)
        return MetricRecord({"loss": loss, "accuracy": accuracy})

    strategy = FedProx(
        proximal_mu=float(config["proximal-mu"]),
        fraction_train=float(config["fraction-train"]),
        fraction_evaluate=float(config["fraction-evaluate"]),
        min_available_nodes=2,
        rng=np.random.default_rng(seed),
    )
    return strategy.start(
        grid,
        initial_arrays=to_arrays(new_model(seed)).copy(),  # a snapshot, not a live view
        num_rounds=int(config["num-server-rounds"]),
        evaluate_fn=centralized_evaluate,
    )
