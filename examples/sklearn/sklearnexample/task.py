"""The model (scikit-learn's LogisticRegression), its local training, and the data."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from pollinate import ArrayRecord
from pollinate.adapters import load_arrays, to_arrays
from pollinate.adapters.sklearn import initial_arrays, set_classes
from pollinate.data import FederatedDataset, IidPartitioner, load_sklearn

CLASSES = np.array([0, 1])  # malignant, benign: every label of the federation
NUM_FEATURES = 30


@lru_cache(maxsize=4)
def load_data(num_partitions: int, seed: int) -> FederatedDataset:
    """Breast cancer data: a held-out test split, the rest spread evenly over the nodes."""
    return load_sklearn(
        "breast_cancer", num_partitions=num_partitions, partitioner=IidPartitioner(), seed=seed
    )


def new_model(*, max_iter: int = 100, c: float = 1.0) -> LogisticRegression:
    """An unfitted model that knows the classes and continues from loaded coefficients."""
    model = LogisticRegression(warm_start=True, max_iter=max_iter, C=c)
    return set_classes(model, CLASSES)


def init_arrays() -> ArrayRecord:
    """The first global model: all coefficients zero (every probability 0.5)."""
    return initial_arrays(new_model(), num_features=NUM_FEATURES, classes=CLASSES)


def train(
    arrays: ArrayRecord, x: np.ndarray, y: np.ndarray, *, max_iter: int, c: float
) -> tuple[ArrayRecord, float]:
    """A few L-BFGS iterations from the global model; returns new arrays and the loss."""
    model = load_arrays(new_model(max_iter=max_iter, c=c), arrays)
    with warnings.catch_warnings():
        # Stopping after a few iterations is the point: the rounds do the rest.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return to_arrays(model), float(log_loss(y, model.predict_proba(x), labels=CLASSES))


def evaluate(arrays: ArrayRecord, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Log loss and accuracy of the model held in ``arrays``."""
    model = load_arrays(new_model(), arrays)
    loss = float(log_loss(y, model.predict_proba(x), labels=CLASSES))
    return loss, float(model.score(x, y))
