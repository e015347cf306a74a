"""Strategies: how a round is configured and how replies become the next model.

The round loop lives once, in :class:`Strategy.start`; algorithms override its hooks.
Aggregation arithmetic lives in :mod:`pollinate.strategy.aggregate` as pure kernels.
"""

from pollinate.strategy.aggregate import (
    MetricMeanAccumulator,
    WeightedMeanAccumulator,
    aggregate_weighted_mean,
)
from pollinate.strategy.base import EvaluateFn, Result, Strategy
from pollinate.strategy.fedavg import FedAvg, MetricsAggregationFn
from pollinate.strategy.history import History, PhaseSummary, RoundRecord, RunObserver

__all__ = [
    "EvaluateFn",
    "FedAvg",
    "History",
    "MetricMeanAccumulator",
    "MetricsAggregationFn",
    "PhaseSummary",
    "Result",
    "RoundRecord",
    "RunObserver",
    "Strategy",
    "WeightedMeanAccumulator",
    "aggregate_weighted_mean",
]
