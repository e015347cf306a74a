"""The node side: reply the received arrays plus a small constant (almost no compute)."""

from __future__ import annotations

import atexit
import cProfile
import os
from pathlib import Path

import numpy as np

from pollinate import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict, keys

app = ClientApp()

_PROFILE_DIR = os.environ.get("POLLINATE_BENCH_PROFILE")
_profiler: cProfile.Profile | None = None
if _PROFILE_DIR:
    _profiler = cProfile.Profile()
    _profile_path = Path(_PROFILE_DIR) / f"clientapp-{os.getpid()}.prof"
    atexit.register(_profiler.dump_stats, str(_profile_path))  # on SIGTERM, not SIGKILL


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """Return every received array plus 0.001 (one pass over the model, a few ms at 10M).

    The reply is a new array, as real training would produce, so the node really
    serializes and uploads fresh bytes; ``num-examples`` is 1 so FedAvg weighs nodes
    equally.
    """
    if _profiler is not None:
        _profiler.enable()
    try:
        received = msg.content[keys.ARRAYS]
        arrays = ArrayRecord(
            {name: np.add(array, np.float32(0.001)) for name, array in received.items()}
        )
        metrics = MetricRecord({keys.NUM_EXAMPLES: 1})
        return msg.reply(RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics}))
    finally:
        if _profiler is not None:
            _profiler.disable()
