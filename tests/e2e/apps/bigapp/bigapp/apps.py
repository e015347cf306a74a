"""A test app with a large model (300 MiB of float32 by default): one round, one node."""

import hashlib

import numpy as np

from pollinate import ArrayRecord, ClientApp, FedAvg, MetricRecord, RecordDict, ServerApp

client = ClientApp()


@client.train()
def train(msg, context):
    w = msg.content["arrays"]["w"]
    metrics = MetricRecord({"num-examples": 1, "checksum-in": float(w[::1000].sum())})
    return msg.reply(RecordDict({"arrays": ArrayRecord({"w": w + 1.0}), "metrics": metrics}))


server = ServerApp()


@server.main()
def main(grid, context):
    size = int(context.run_config["num-parameters"])
    initial = np.arange(size, dtype=np.float32) % 1000
    strategy = FedAvg(
        fraction_evaluate=0.0,
        min_train_nodes=1,
        min_available_nodes=1,
        rng=np.random.default_rng(0),
    )
    result = strategy.start(
        grid, initial_arrays=ArrayRecord({"w": initial}), num_rounds=1, timeout=300
    )
    w = result.arrays["w"]
    ok = w.shape == initial.shape and bool(np.array_equal(w, initial + 1.0))
    print(
        f"bytes {w.nbytes} equal {ok} sha {hashlib.sha256(w.tobytes()).hexdigest()[:16]}",
        flush=True,
    )
