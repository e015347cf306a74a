"""FedXgbBagging: FedAvg's rounds, with tree ensembles combined instead of arrays averaged."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from pollinate import AggregationError, ArrayRecord, FedAvg, Message, MetricRecord
from pollinate.strategy import MetricMeanAccumulator
from xgboost_bagging.bagging import BaggedEnsemble
from xgboost_bagging.task import MODEL, from_arrays, to_arrays


class FedXgbBagging(FedAvg):
    """Federated gradient-boosted trees by bagging.

    Each round the sampled nodes boost a few trees on top of the global ensemble, on
    their own data, and send back only their new trees (XGBoost JSON in a uint8
    array); the server appends the example-weighted mean of them to the global
    ensemble (see :mod:`xgboost_bagging.bagging` for why that mean is exact and how it is built).
    Sampling, evaluation and metrics are FedAvg's; FedAvg's aggregator and server
    optimizer do not apply to trees, so they are not parameters here.

    Parameters
    ----------
    fraction_train, fraction_evaluate, min_train_nodes, min_evaluate_nodes,
    min_available_nodes, rng:
        As for :class:`~pollinate.FedAvg`.
    """

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            rng=rng,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The global ensemble plus the weighted mean of the nodes' new trees."""
        if self.current_arrays is None:
            raise AggregationError(
                f"round {server_round}: FedXgbBagging combines trees onto the model sent with "
                "configure_train, but no train instructions were configured"
            )
        ensemble = BaggedEnsemble(_model_bytes(self.current_arrays, "the global model"))
        metrics = MetricMeanAccumulator(sum_keys=(self.weight_key,))
        for reply in replies:
            source = f"round {server_round}: the train reply of node {reply.metadata.src_node_id}"
            update = self.update_from_reply(server_round, reply, source)
            if update is None:
                continue
            arrays, weight, reply_metrics = update
            ensemble.add(_model_bytes(arrays, source), weight, source=source)
            metrics.add(reply_metrics, weight)
        if not ensemble.count:
            return None, None
        return to_arrays(ensemble.result()), metrics.result()


def _model_bytes(arrays: ArrayRecord, source: str) -> bytes:
    """The JSON bytes of the model in ``arrays``, checked to be one uint8 array."""
    array = arrays.get(MODEL)
    if array is None or array.dtype != np.uint8 or array.ndim != 1:
        raise AggregationError(
            f"{source} has no 1-D uint8 array {MODEL!r} (got {arrays.structure()}); a node "
            "sends its new trees as to_arrays(booster.save_raw('json'))"
        )
    return from_arrays(arrays)
