"""What runs on each node: load the global model, train with FedProx, reply."""

from __future__ import annotations

import numpy as np

from pollinate import ClientApp, Context, Message, MetricRecord, RecordDict, keys
from pollinate.adapters import load_arrays, to_arrays
from pollinate.client.fedprox import simulated_straggler_work
from pollinate.data import Partition
from pytorchexample.task import Net, evaluate, load_data, train

app = ClientApp()


def _partition(context: Context) -> Partition:
    data = load_data(
        int(context.node_config[keys.NUM_PARTITIONS]),
        float(context.run_config["dirichlet-alpha"]),
        int(context.run_config["seed"]),
    )
    return data.partition(int(context.node_config[keys.PARTITION_ID]))


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    part = _partition(context)
    config = msg.content[keys.CONFIG]
    seed, server_round = int(context.run_config["seed"]), int(config[keys.SERVER_ROUND])
    model = load_arrays(Net(), msg.content[keys.ARRAYS])
    # A node whose node_config has sim-straggler-p may do only part of the epochs asked;
    # FedProx keeps its partial work, FedAvg would drop it.
    work = simulated_straggler_work(
        int(context.run_config["local-epochs"]),
        context.node_config,
        seed=seed,
        node_id=context.node_id,
        server_round=server_round,
    )
    # Seeded per run, node and round: the same run gives the same model on any runtime.
    rng = np.random.default_rng([seed, context.node_id, server_round])
    loss = train(
        model,
        part.x_train,
        part.y_train,
        epochs=work.epochs,
        batch_size=int(context.run_config["batch-size"]),
        lr=float(context.run_config["learning-rate"]),
        momentum=float(context.run_config["momentum"]),
        proximal_mu=float(config[keys.PROXIMAL_MU]),  # sent by the FedProx strategy
        rng=rng,
    )
    metrics = MetricRecord(
        {
            keys.TRAIN_LOSS: loss,
            keys.NUM_EXAMPLES: part.num_train,
            keys.COMPLETED_FRACTION: work.completed_fraction,
        }
    )
    return msg.reply(RecordDict({keys.ARRAYS: to_arrays(model), keys.METRICS: metrics}))


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    part = _partition(context)
    model = load_arrays(Net(), msg.content[keys.ARRAYS])
    loss, accuracy = evaluate(model, part.x_test, part.y_test)
    metrics = MetricRecord({"loss": loss, "accuracy": accuracy, keys.NUM_EXAMPLES: part.num_test})
    return msg.reply(RecordDict({keys.METRICS: metrics}))
