"""What runs on each node: boost new trees on the node's data, score the global model."""

from __future__ import annotations

from pollinate import ClientApp, Context, Message, MetricRecord, RecordDict
from xgboost_bagging.task import boosting_params, evaluate, from_arrays, load_data, to_arrays, train

app = ClientApp()


def _partition(context: Context):
    data = load_data(int(context.node_config["num-partitions"]), int(context.run_config["seed"]))
    return data.partition(int(context.node_config["partition-id"]))


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    part = _partition(context)
    new_trees, loss = train(
        from_arrays(msg.content["arrays"]),
        part.x_train,
        part.y_train,
        params=boosting_params(context.run_config),
        num_local_rounds=int(context.run_config["local-rounds"]),
    )
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(part.x_train)})
    return msg.reply(RecordDict({"arrays": to_arrays(new_trees), "metrics": metrics}))


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    part = _partition(context)
    scores = evaluate(from_arrays(msg.content["arrays"]), part.x_test, part.y_test)
    metrics = MetricRecord({**scores, "num-examples": len(part.x_test)})
    return msg.reply(RecordDict({"metrics": metrics}))
