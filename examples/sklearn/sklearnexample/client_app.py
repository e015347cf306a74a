"""What runs on each node: a few solver iterations from the global model."""

from __future__ import annotations

from pollinate import ClientApp, Context, Message, MetricRecord, RecordDict, keys
from pollinate.data import Partition
from sklearnexample.task import evaluate, load_data, train

app = ClientApp()


def _partition(context: Context) -> Partition:
    data = load_data(int(context.node_config[keys.NUM_PARTITIONS]), int(context.run_config["seed"]))
    return data.partition(int(context.node_config[keys.PARTITION_ID]))


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    part = _partition(context)
    arrays, loss = train(
        msg.content[keys.ARRAYS],
        part.x_train,
        part.y_train,
        max_iter=int(context.run_config["local-iterations"]),
        c=float(context.run_config["penalty-c"]),
    )
    metrics = MetricRecord({keys.TRAIN_LOSS: loss, keys.NUM_EXAMPLES: part.num_train})
    return msg.reply(RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics}))


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    part = _partition(context)
    loss, accuracy = evaluate(msg.content[keys.ARRAYS], part.x_test, part.y_test)
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, keys.NUM_EXAMPLES: part.num_test})
    return msg.reply(RecordDict({keys.METRICS: metrics}))
