"""A test app: each node adds its id to the model; a node with slow=true takes 60 s."""

import time

import numpy as np

from pollinate import ArrayRecord, ClientApp, FedAvg, MetricRecord, RecordDict, ServerApp

client = ClientApp()


@client.train()
def train(msg, context):
    if str(context.node_config.get("slow", "false")).lower() == "true":
        time.sleep(60)
    w = msg.content["arrays"]["w"] + 1.0
    metrics = MetricRecord({"num-examples": 1})
    return msg.reply(RecordDict({"arrays": ArrayRecord({"w": w}), "metrics": metrics}))


server = ServerApp()


@server.main()
def main(grid, context):
    strategy = FedAvg(
        fraction_evaluate=0.0,
        min_train_nodes=2,
        min_available_nodes=2,
        rng=np.random.default_rng(0),
    )
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord({"w": np.zeros(3)}),
        num_rounds=int(context.run_config["num-server-rounds"]),
        timeout=60,
    )
    print("final w", result.arrays["w"].tolist(), flush=True)
