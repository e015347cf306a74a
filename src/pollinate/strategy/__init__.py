"""Strategies: how a round is configured and how replies become the next model.

The round loop lives once, in :class:`Strategy.start`; algorithms override its hooks.
:class:`FedAvg` is the workhorse, and most algorithms are FedAvg with one plug-in
changed: an :class:`Aggregator` (how updates combine: weighted mean, median, Krum...),
a :class:`ServerOptimizer` (what the server does with the aggregate: momentum, Adam...)
or a per-reply hook (FedNova, q-FedAvg, SCAFFOLD). Aggregation arithmetic lives in
:mod:`pollinate.strategy.aggregate` as pure kernels.
"""

from pollinate.strategy.aggregate import (
    Aggregator,
    MetricMeanAccumulator,
    WeightedMean,
    WeightedMeanAccumulator,
    aggregate_weighted_mean,
)
from pollinate.strategy.base import EvaluateFn, Result, Strategy
from pollinate.strategy.fedavg import FedAvg, FedAvgKwargs, MetricsAggregationFn
from pollinate.strategy.fednova import FedNova
from pollinate.strategy.fedopt import (
    Adagrad,
    Adam,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedYogi,
    ServerSGD,
    Yogi,
)
from pollinate.strategy.fedprox import FedProx
from pollinate.strategy.history import History, PhaseSummary, RoundRecord, RunObserver
from pollinate.strategy.optimizer import ServerOptimizer
from pollinate.strategy.qfedavg import QFedAvg
from pollinate.strategy.robust import Bulyan, FedMedian, Krum, Median, MultiKrum, TrimmedMean
from pollinate.strategy.scaffold import Scaffold
from pollinate.strategy.wrapper import StrategyWrapper

__all__ = [
    "StrategyWrapper",
    "TrimmedMean",
    "MultiKrum",
    "Median",
    "Krum",
    "FedMedian",
    "Bulyan",
    "Adagrad",
    "Adam",
    "Aggregator",
    "EvaluateFn",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgKwargs",
    "FedAvgM",
    "FedNova",
    "FedProx",
    "FedYogi",
    "History",
    "MetricMeanAccumulator",
    "MetricsAggregationFn",
    "PhaseSummary",
    "QFedAvg",
    "Result",
    "RoundRecord",
    "RunObserver",
    "Scaffold",
    "ServerOptimizer",
    "ServerSGD",
    "Strategy",
    "WeightedMean",
    "WeightedMeanAccumulator",
    "Yogi",
    "aggregate_weighted_mean",
]
