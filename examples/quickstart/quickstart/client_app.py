"""What runs on each node: train and evaluate on the node's own partition."""

from __future__ import annotations

import numpy as np

from pollinate import ClientApp, Context, Message, MetricRecord, RecordDict
from quickstart.task import evaluate, load_data, train

app = ClientApp()


def _partition(context: Context):
    data = load_data(
        int(context.node_config["num-partitions"]),
        float(context.run_config["dirichlet-alpha"]),
        int(context.run_config["seed"]),
    )
    return data.partition(int(context.node_config["partition-id"]))


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    part = _partition(context)
    config = msg.content["config"]
    # Seeded per run, node and round: the same run gives the same model on any runtime.
    rng = np.random.default_rng(
        [int(context.run_config["seed"]), context.node_id, int(config["server-round"])]
    )
    model, loss = train(
        msg.content["arrays"],
        part.x_train,
        part.y_train,
        epochs=int(context.run_config["local-epochs"]),
        batch_size=int(context.run_config["batch-size"]),
        lr=float(context.run_config["learning-rate"]),
        rng=rng,
    )
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(part.x_train)})
    return msg.reply(RecordDict({"arrays": model, "metrics": metrics}))


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    part = _partition(context)
    loss, accuracy = evaluate(msg.content["arrays"], part.x_test, part.y_test)
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, "num-examples": len(part.x_test)})
    return msg.reply(RecordDict({"metrics": metrics}))
