"""A test app for privacy over the gRPC deployment: SecAgg+ or central DP around FedAvg.

Each node's update moves the model by ``partition-id + 1``, so the plain mean after a
round is known exactly; the ServerApp prints what it got to check against it.
"""

import numpy as np

from pollinate import ArrayRecord, ClientApp, FedAvg, MetricRecord, RecordDict, ServerApp
from pollinate.privacy import CLIP_NORM_KEY, CentralDP, FixedClipping, clipping_mod
from pollinate.privacy.secagg import SecAggConfig, SecAggPlus, secaggplus_mod


def clip_when_asked(msg, context, call_next):
    """This app serves both modes: clip only when the server runs CentralDP on nodes."""
    config = msg.content.get("config")
    if config is not None and CLIP_NORM_KEY in config:
        return clipping_mod(msg, context, call_next)
    return call_next(msg, context)


client = ClientApp(mods=[secaggplus_mod, clip_when_asked])


@client.train()
def train(msg, context):
    step = float(int(context.node_config["partition-id"]) + 1)
    w = msg.content["arrays"]["w"] + step
    metrics = MetricRecord({"num-examples": 1})
    return msg.reply(RecordDict({"arrays": ArrayRecord({"w": w}), "metrics": metrics}))


server = ServerApp()


@server.main()
def main(grid, context):
    fedavg = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=4,
        min_available_nodes=4,
        rng=np.random.default_rng(0),
    )
    if context.run_config["mode"] == "secagg":
        config = SecAggConfig(
            num_shares=3, reconstruction_threshold=2, clipping_range=100.0, max_weight=1.0
        )
        strategy = SecAggPlus(fedavg, config=config)
    else:
        strategy = CentralDP(
            fedavg,
            noise_multiplier=0.5,
            clipping=FixedClipping(1.0),
            clip_on="nodes",
            delta=1e-5,
            max_epsilon=1e6,
            rng=np.random.default_rng(0),
        )
    result = strategy.start(
        grid,
        initial_arrays=ArrayRecord({"w": np.zeros(4)}),
        num_rounds=int(context.run_config["num-server-rounds"]),
        timeout=60,
    )
    print("final w", " ".join(f"{v:.6f}" for v in result.arrays["w"]), flush=True)
