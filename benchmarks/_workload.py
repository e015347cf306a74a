"""The benchmark's workload, shared by the Pollinate and the Flower scripts.

What: the scenarios (A1, A2), a softmax regression of 7,850 float32 parameters
(784 features x 10 classes + 10 biases), synthetic per-node data generated from
``(seed, partition id)`` and a few mini-batch SGD steps per train call.

Why here: both frameworks must do exactly the same work per node, so the numbers
compare the frameworks and not the workloads. The Flower script runs in its own venv
without Pollinate, so this module imports nothing but NumPy and the standard library.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "BATCH_SIZE",
    "LEARNING_RATE",
    "LOCAL_STEPS",
    "NUM_CLASSES",
    "NUM_FEATURES",
    "PARAM_NAMES",
    "REPORT_PREFIX",
    "SAMPLES_PER_NODE",
    "SCENARIOS",
    "SEED",
    "RoundClock",
    "Scenario",
    "init_params",
    "node_data",
    "train",
]

NUM_FEATURES = 784  # an MNIST-sized input
NUM_CLASSES = 10
SAMPLES_PER_NODE = 64
LOCAL_STEPS = 5
BATCH_SIZE = 32
LEARNING_RATE = 0.1
SEED = 0
PARAM_NAMES = ("w", "b")  # 784 * 10 + 10 = 7,850 parameters

#: The child prints one line starting with this on stdout; the orchestrator parses it.
REPORT_PREFIX = "BENCH_REPORT "


@dataclass(frozen=True)
class Scenario:
    """A federation size and a sampling rate, run for ``num_rounds`` rounds."""

    name: str
    num_nodes: int
    nodes_per_round: int
    num_rounds: int

    @property
    def fraction_train(self) -> float:
        """The FedAvg ``fraction_train`` that samples ``nodes_per_round`` nodes."""
        return self.nodes_per_round / self.num_nodes


SCENARIOS: dict[str, Scenario] = {
    "A1": Scenario("A1", num_nodes=100, nodes_per_round=10, num_rounds=10),
    "A2": Scenario("A2", num_nodes=100, nodes_per_round=100, num_rounds=10),
}


def init_params(seed: int = SEED) -> list[np.ndarray]:
    """The initial global model ``[w (784x10), b (10)]``, small random weights."""
    rng = np.random.default_rng([seed, 1_000_003])
    w = (rng.standard_normal((NUM_FEATURES, NUM_CLASSES)) * 0.01).astype(np.float32)
    return [w, np.zeros(NUM_CLASSES, np.float32)]


@lru_cache(maxsize=4)
def _teacher(seed: int) -> np.ndarray:
    """The fixed linear model that labels every node's data (one per seed and process)."""
    rng = np.random.default_rng([seed, 7])
    return rng.standard_normal((NUM_FEATURES, NUM_CLASSES)).astype(np.float32)


def node_data(seed: int, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The node's private data: ``SAMPLES_PER_NODE`` samples labelled by a fixed teacher.

    Features are uniform in [-1, 1), labels the teacher's argmax plus noise. Generated
    inside the node on every call (about 0.2 ms), as a data loader would read it, so no
    framework can keep it in the server's memory.
    """
    rng = np.random.default_rng([seed, partition_id])
    x = rng.random((SAMPLES_PER_NODE, NUM_FEATURES), dtype=np.float32) * 2.0 - 1.0
    noise = rng.random((SAMPLES_PER_NODE, NUM_CLASSES), dtype=np.float32) * 4.0
    y = np.argmax(x @ _teacher(seed) + noise, axis=1).astype(np.int64)
    return x, y


def train(
    params: list[np.ndarray],
    x: np.ndarray,
    y: np.ndarray,
    *,
    rng: np.random.Generator,
    steps: int = LOCAL_STEPS,
    batch_size: int = BATCH_SIZE,
    lr: float = LEARNING_RATE,
) -> tuple[list[np.ndarray], float]:
    """``steps`` mini-batch SGD steps of cross-entropy; new ``[w, b]`` and the mean loss.

    Never writes to ``params`` (the runtimes hand out read-only views of the global
    model).
    """
    w, b = (np.array(p, dtype=np.float32, copy=True) for p in params)
    losses = []
    for _ in range(steps):
        batch = rng.permutation(len(x))[:batch_size]
        xb, yb = x[batch], y[batch]
        logits = xb @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        rows = np.arange(len(yb))
        losses.append(float(-np.log(probs[rows, yb] + 1e-12).mean()))
        probs[rows, yb] -= 1.0
        probs /= len(yb)
        w -= lr * (xb.T @ probs)
        b -= lr * probs.sum(axis=0)
    return [w, b], float(np.mean(losses))


class RoundClock:
    """Timestamps of the round boundaries, taken by the strategy's centralized-evaluate hook.

    Both frameworks call ``evaluate_fn(server_round, arrays)`` once before round 1
    and once after each round, in the server's process; that gives the start of
    round 1 and the end of every round without touching either framework. It
    evaluates nothing and returns None.
    """

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def __call__(self, server_round: int, arrays: Any) -> None:
        """Record the wall-clock time (``time.time()``, comparable across processes)."""
        self.stamps.append(time.time())

    def report(self, **extra: Any) -> None:
        """Print the timestamps as one JSON line for the orchestrator."""
        payload: Mapping[str, Any] = {"stamps": self.stamps, **extra}
        sys.stdout.write(REPORT_PREFIX + json.dumps(payload) + "\n")
        sys.stdout.flush()
