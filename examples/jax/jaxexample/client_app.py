"""What runs on each node: train and evaluate on the node's own partition."""

from __future__ import annotations

import numpy as np

from jaxexample.task import Params, evaluate, init_model, load_data, train
from pollinate import ClientApp, Context, Message, MetricRecord, RecordDict, keys
from pollinate.adapters import load_arrays, to_arrays
from pollinate.data import Partition

app = ClientApp()


def _partition(context: Context) -> Partition:
    data = load_data(
        int(context.node_config[keys.NUM_PARTITIONS]),
        float(context.run_config["dirichlet-alpha"]),
        int(context.run_config["seed"]),
    )
    return data.partition(int(context.node_config[keys.PARTITION_ID]))


def _global_model(msg: Message, context: Context) -> Params:
    """The received arrays as a pytree shaped like the model (names and shapes checked)."""
    template = init_model(int(context.run_config["hidden-units"]), seed=0)
    return load_arrays(template, msg.content[keys.ARRAYS])


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    part = _partition(context)
    config = msg.content[keys.CONFIG]
    # Seeded per run, node and round: the same run gives the same model on any runtime.
    rng = np.random.default_rng(
        [int(context.run_config["seed"]), context.node_id, int(config[keys.SERVER_ROUND])]
    )
    params, loss = train(
        _global_model(msg, context),
        part.x_train,
        part.y_train,
        epochs=int(context.run_config["local-epochs"]),
        batch_size=int(context.run_config["batch-size"]),
        lr=float(context.run_config["learning-rate"]),
        rng=rng,
    )
    metrics = MetricRecord({keys.TRAIN_LOSS: loss, keys.NUM_EXAMPLES: part.num_train})
    return msg.reply(RecordDict({keys.ARRAYS: to_arrays(params), keys.METRICS: metrics}))


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    part = _partition(context)
    loss, accuracy = evaluate(_global_model(msg, context), part.x_test, part.y_test)
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, keys.NUM_EXAMPLES: part.num_test})
    return msg.reply(RecordDict({keys.METRICS: metrics}))
