"""The model and its training, in plain NumPy: a one-hidden-layer MLP classifier."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from pollinate import ArrayRecord
from pollinate.data import DirichletPartitioner, FederatedDataset, load_sklearn

NUM_FEATURES = 64  # 8x8 digit images
NUM_CLASSES = 10


@lru_cache(maxsize=4)
def load_data(num_partitions: int, alpha: float, seed: int) -> FederatedDataset:
    """Digits, split into a held-out test set and label-skewed partitions (cached)."""
    return load_sklearn(
        "digits",
        num_partitions=num_partitions,
        partitioner=DirichletPartitioner(alpha=alpha, min_partition_size=10),
        seed=seed,
    )


def init_model(hidden_units: int, seed: int) -> ArrayRecord:
    """He-initialized weights, zero biases."""
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {
            "w1": (
                rng.standard_normal((NUM_FEATURES, hidden_units)) * np.sqrt(2 / NUM_FEATURES)
            ).astype(np.float32),
            "b1": np.zeros(hidden_units, np.float32),
            "w2": (
                rng.standard_normal((hidden_units, NUM_CLASSES)) * np.sqrt(2 / hidden_units)
            ).astype(np.float32),
            "b2": np.zeros(NUM_CLASSES, np.float32),
        }
    )


def _forward(p: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hidden = np.maximum(x @ p["w1"] + p["b1"], 0.0)
    logits = hidden @ p["w2"] + p["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    return hidden, probs


def train(
    model: ArrayRecord,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
) -> tuple[ArrayRecord, float]:
    """Mini-batch SGD on cross-entropy; returns new weights and the mean training loss."""
    p = {name: array.copy() for name, array in model.items()}  # never update the input
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            xb, yb = x[batch], y[batch]
            hidden, probs = _forward(p, xb)
            losses.append(float(-np.log(probs[np.arange(len(yb)), yb] + 1e-12).mean()))
            grad_logits = probs
            grad_logits[np.arange(len(yb)), yb] -= 1.0
            grad_logits /= len(yb)
            grad_hidden = (grad_logits @ p["w2"].T) * (hidden > 0)
            p["w2"] -= lr * (hidden.T @ grad_logits)
            p["b2"] -= lr * grad_logits.sum(axis=0)
            p["w1"] -= lr * (xb.T @ grad_hidden)
            p["b1"] -= lr * grad_hidden.sum(axis=0)
    return ArrayRecord(p), float(np.mean(losses)) if losses else 0.0


def evaluate(model: ArrayRecord, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Cross-entropy loss and accuracy."""
    _, probs = _forward(dict(model), x)
    loss = float(-np.log(probs[np.arange(len(y)), y] + 1e-12).mean())
    accuracy = float((probs.argmax(axis=1) == y).mean())
    return loss, accuracy
