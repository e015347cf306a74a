"""The server side: FedAvg with seeded sampling, training only (no federated evaluate)."""

from __future__ import annotations

import numpy as np
from _workload import PARAM_NAMES, SEED, RoundClock, init_params

from pollinate import ArrayRecord, Context, FedAvg, Grid, Result, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> Result:
    """Run ``num-server-rounds`` rounds and print the round timestamps for the orchestrator."""
    config = context.run_config
    seed = int(config.get("seed", SEED))
    num_nodes = len(grid.nodes())
    strategy = FedAvg(
        fraction_train=float(config["fraction-train"]),
        fraction_evaluate=0.0,
        min_available_nodes=num_nodes,
        rng=np.random.default_rng(seed),
    )
    clock = RoundClock()
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord(dict(zip(PARAM_NAMES, init_params(seed), strict=True))),
        num_rounds=int(config["num-server-rounds"]),
        evaluate_fn=clock,
    )
    last = result.history.rounds[-1].train if result.history.rounds else None
    clock.report(
        framework="pollinate",
        train_loss=last.metrics.get("train-loss") if last is not None else None,
        sampled=last.sampled if last is not None else 0,
    )
    return result
