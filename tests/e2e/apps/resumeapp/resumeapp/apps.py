"""A test app whose final model depends on which nodes each round sampled: a resumed
run only matches an uninterrupted one if sampling and the model resume exactly."""

import time

import numpy as np

from pollinate import ArrayRecord, ClientApp, FedAvg, MetricRecord, RecordDict, ServerApp

client = ClientApp()


@client.train()
def train(msg, context):
    time.sleep(float(context.run_config["delay"]))
    step = 0.1 * (int(context.node_config["partition-id"]) + 1)
    w = msg.content["arrays"]["w"] * 0.9 + step
    metrics = MetricRecord({"num-examples": 1})
    return msg.reply(RecordDict({"arrays": ArrayRecord({"w": w}), "metrics": metrics}))


server = ServerApp()


@server.main()
def main(grid, context):
    strategy = FedAvg(
        fraction_train=0.5,
        fraction_evaluate=0.0,
        min_train_nodes=2,
        min_available_nodes=4,
        rng=np.random.default_rng(int(context.run_config["seed"])),
    )
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord({"w": np.zeros(3)}),
        num_rounds=int(context.run_config["num-server-rounds"]),
        timeout=60,
    )
    print("final w", result.arrays["w"].tobytes().hex(), flush=True)
