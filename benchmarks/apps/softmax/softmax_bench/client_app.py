"""What runs on each virtual node: a few SGD steps on the node's synthetic data."""

from __future__ import annotations

import numpy as np
from _workload import PARAM_NAMES, SEED, node_data, train

from pollinate import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict, keys

app = ClientApp()


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """Train the global model on this node's data; reply arrays, loss and example count."""
    seed = int(context.run_config.get("seed", SEED))
    partition_id = int(context.node_config[keys.PARTITION_ID])
    server_round = int(msg.content[keys.CONFIG][keys.SERVER_ROUND])
    x, y = node_data(seed, partition_id)
    arrays = msg.content[keys.ARRAYS]
    params, loss = train(
        [arrays[name] for name in PARAM_NAMES],
        x,
        y,
        rng=np.random.default_rng([seed, partition_id, server_round]),
    )
    metrics = MetricRecord({"train-loss": loss, keys.NUM_EXAMPLES: len(x)})
    arrays_out = ArrayRecord(dict(zip(PARAM_NAMES, params, strict=True)))
    return msg.reply(RecordDict({keys.ARRAYS: arrays_out, keys.METRICS: metrics}))
