"""What runs on the server: bag the nodes' trees each round, score on a held-out split."""

from __future__ import annotations

import numpy as np

from pollinate import ArrayRecord, Context, Grid, MetricRecord, ServerApp
from xgboost_bagging.strategy import FedXgbBagging
from xgboost_bagging.task import evaluate, from_arrays, load_data, to_arrays

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context):
    config = context.run_config
    seed = int(config["seed"])
    x_test, y_test = load_data(len(grid.nodes()), seed).centralized_test()

    def centralized_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        return MetricRecord(evaluate(from_arrays(arrays), x_test, y_test))

    strategy = FedXgbBagging(
        fraction_train=float(config["fraction-train"]),
        fraction_evaluate=float(config["fraction-evaluate"]),
        min_available_nodes=2,
        rng=np.random.default_rng(seed),
    )
    return strategy.start(
        grid,
        initial_arrays=to_arrays(b""),  # no trees yet
        num_rounds=int(config["num-server-rounds"]),
        evaluate_fn=centralized_evaluate,
    )
