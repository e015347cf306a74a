"""The node side: reply the received arrays plus 0.001, as Pollinate's deploy_bench does."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One pass over the model: a new array, so fresh bytes go back."""
    received = msg.content["arrays"].to_numpy_ndarrays()
    arrays = ArrayRecord([np.add(array, np.float32(0.001)) for array in received])
    metrics = MetricRecord({"num-examples": 1})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
