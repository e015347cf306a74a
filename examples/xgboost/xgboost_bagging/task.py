"""The data, the boosting and the scoring: XGBoost on scikit-learn's breast cancer data.

A model travels as XGBoost's own JSON bytes in a uint8 array of an ArrayRecord (never
pickled); ``b""``, an empty array, is the model before any tree was grown.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from pollinate import ArrayRecord, ConfigRecord
from pollinate.data import FederatedDataset, IidPartitioner, load_sklearn

MODEL = "model"  # the name of the model's array in an ArrayRecord
BASE_SCORE = 0.5  # shared by every node, so their ensembles can be averaged


@lru_cache(maxsize=4)
def load_data(num_partitions: int, seed: int) -> FederatedDataset:
    """Breast cancer (569 tumours, 30 features), split into a held-out test set and
    IID partitions (cached). Trees need no feature scaling, so features stay raw."""
    return load_sklearn(
        "breast_cancer",
        num_partitions=num_partitions,
        partitioner=IidPartitioner(),
        seed=seed,
        standardize=False,
    )


def to_arrays(model: bytes) -> ArrayRecord:
    """The model's JSON bytes as an ArrayRecord holding one uint8 array."""
    return ArrayRecord({MODEL: np.frombuffer(model, dtype=np.uint8)})


def from_arrays(arrays: ArrayRecord) -> bytes:
    """The model's JSON bytes out of an ArrayRecord made by :func:`to_arrays`."""
    return arrays[MODEL].tobytes()


def boosting_params(config: ConfigRecord | dict[str, Any]) -> dict[str, Any]:
    """XGBoost's training parameters from the run config."""
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "max_depth": int(config["max-depth"]),
        "eta": float(config["learning-rate"]),
        "base_score": BASE_SCORE,
        "tree_method": "hist",
        "nthread": 1,  # one core per node: simulations run many nodes side by side
    }


def _booster(model: bytes) -> xgb.Booster:
    booster = xgb.Booster(params={"nthread": 1})
    booster.load_model(bytearray(model))
    return booster


def train(
    model: bytes, x: np.ndarray, y: np.ndarray, *, params: dict[str, Any], num_local_rounds: int
) -> tuple[bytes, float]:
    """Boost ``num_local_rounds`` new trees on top of ``model``; return only the new trees
    and the log loss of the node's whole model (global + new trees) on its data."""
    data = xgb.DMatrix(x, label=y)
    start = _booster(model) if model else None
    booster = xgb.train(params, data, num_boost_round=num_local_rounds, xgb_model=start)
    done = booster.num_boosted_rounds()
    new_trees = booster[done - num_local_rounds : done]
    return bytes(new_trees.save_raw(raw_format="json")), _log_loss(y, booster.predict(data))


def predict(model: bytes, x: np.ndarray) -> np.ndarray:
    """Probability of the positive class (benign) for each row of ``x``."""
    if not model:
        return np.full(len(x), BASE_SCORE)
    return np.asarray(_booster(model).predict(xgb.DMatrix(x)), dtype=np.float64)


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def evaluate(model: bytes, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Log loss, accuracy and (if both classes occur in ``y``) ROC AUC."""
    p = predict(model, x)
    metrics = {"loss": _log_loss(y, p), "accuracy": float(np.mean((p > 0.5) == y))}
    if len(np.unique(y)) == 2:  # AUC is undefined on one class; leave it out then
        metrics["auc"] = float(roc_auc_score(y, p))
    return metrics
