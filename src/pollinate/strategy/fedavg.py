"""Federated Averaging."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeAlias, TypedDict, TypeVar

import numpy as np

from pollinate.errors import AggregationError, ConfigError, NodeUnavailableError
from pollinate.records import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    MetricValue,
    RecordDict,
    keys,
)
from pollinate.sampling import LearningSampler, NodeOutcome, Sampler, UniformSampler, eligible
from pollinate.strategy.aggregate import (
    Aggregator,
    MetricMeanAccumulator,
    WeightedMean,
    describe_structure,
)
from pollinate.strategy.base import Strategy
from pollinate.strategy.optimizer import ServerOptimizer

if TYPE_CHECKING:
    from pollinate.server.grid import Grid

__all__ = ["FedAvg", "FedAvgKwargs", "MetricsAggregationFn", "required_metric"]

log = logging.getLogger("pollinate")

_R = TypeVar("_R", ArrayRecord, MetricRecord)

#: Combines ``(metrics, weight)`` pairs of one phase into the round's metrics.
MetricsAggregationFn: TypeAlias = Callable[[list[tuple[MetricRecord, float]]], MetricRecord]


class FedAvgKwargs(TypedDict, total=False):
    """FedAvg's keyword arguments except ``optimizer``; documented on :class:`FedAvg`.

    Strategies that are FedAvg plus a fixed optimizer take ``**kwargs:
    Unpack[FedAvgKwargs]`` so FedAvg's parameters are typed and documented once. A test
    checks that it lists exactly FedAvg's parameters but ``optimizer``.
    """

    fraction_train: float
    fraction_evaluate: float
    min_train_nodes: int
    min_evaluate_nodes: int
    min_available_nodes: int
    wait_timeout: float
    over_selection: float
    accept_partial_work: bool
    weight_key: str
    arrays_key: str
    config_key: str
    metrics_key: str
    train_metrics_aggr_fn: MetricsAggregationFn | None
    evaluate_metrics_aggr_fn: MetricsAggregationFn | None
    sampler: Sampler | None
    aggregator: Aggregator | None
    rng: np.random.Generator | None


class FedAvg(Strategy):
    """Federated Averaging: the example-weighted mean of the nodes' models.

    McMahan et al., "Communication-Efficient Learning of Deep Networks from
    Decentralized Data", AISTATS 2017, https://arxiv.org/abs/1602.05629.

    Each reply is folded into running sums as it arrives, so memory stays at one
    model however many nodes reply. Metrics are averaged with the same weights.

    Parameters
    ----------
    fraction_train, fraction_evaluate:
        Share of the available nodes sampled for training / evaluation each round
        (``0`` skips the phase).
    min_train_nodes, min_evaluate_nodes:
        Fewest nodes to sample, and fewest good replies a phase needs. Too few train
        replies stop the run with an :class:`~pollinate.errors.AggregationError`.
    min_available_nodes:
        A round waits (up to ``wait_timeout`` s) until this many nodes are connected,
        and until the sampler finds enough nodes that qualify.
    over_selection:
        Ask this many times the nodes needed for training and keep the first replies
        (1.3: ask 130%, keep the first 100%); the rest count as late.
    accept_partial_work:
        Whether to aggregate replies whose ``completed-fraction`` metric is below 1
        (stragglers that did fewer local epochs than asked). FedAvg drops them, as in
        the FedProx paper's comparison; FedProx keeps them.
    weight_key:
        The reply metric that weights each node (its number of training examples).
    arrays_key, config_key:
        Names of the ArrayRecord and ConfigRecord in instructions and replies.
    train_metrics_aggr_fn, evaluate_metrics_aggr_fn:
        Replace the default weighted mean of metrics (that default streams; a custom
        function receives all metrics of the phase at once).
    sampler:
        Chooses the nodes of each round; uniform by default.
    aggregator:
        Combines the nodes' models; the streamed weighted mean by default. Robust
        rules (median, Krum...) plug in here.
    optimizer:
        Applied to the aggregate with the current model (server learning rate,
        momentum, Adam...); none by default, i.e. the aggregate is the next model.
    rng:
        The only source of randomness (node sampling); seed it for reproducible runs.

    Examples
    --------
    >>> strategy = FedAvg(fraction_train=0.5, min_available_nodes=10,
    ...                   rng=np.random.default_rng(42))
    """

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        wait_timeout: float = 60.0,
        over_selection: float = 1.0,
        accept_partial_work: bool = False,
        weight_key: str = keys.NUM_EXAMPLES,
        arrays_key: str = keys.ARRAYS,
        config_key: str = keys.CONFIG,
        metrics_key: str = keys.METRICS,
        train_metrics_aggr_fn: MetricsAggregationFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggregationFn | None = None,
        sampler: Sampler | None = None,
        aggregator: Aggregator | None = None,
        optimizer: ServerOptimizer | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        for name, value in (
            ("fraction_train", fraction_train),
            ("fraction_evaluate", fraction_evaluate),
        ):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be within [0, 1], got {value}")
        for name, count in (
            ("min_train_nodes", min_train_nodes),
            ("min_evaluate_nodes", min_evaluate_nodes),
            ("min_available_nodes", min_available_nodes),
        ):
            if not isinstance(count, int) or count < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {count!r}")
        if not (isinstance(over_selection, (int, float)) and 1.0 <= over_selection <= 10.0):
            raise ConfigError(f"over_selection must be within [1, 10], got {over_selection!r}")
        if wait_timeout <= 0:
            raise ConfigError(f"wait_timeout must be positive seconds, got {wait_timeout}")
        self.fraction_train = fraction_train
        self.fraction_evaluate = fraction_evaluate
        self.min_train_nodes = min_train_nodes
        self.min_evaluate_nodes = min_evaluate_nodes
        self.min_available_nodes = min_available_nodes
        self.wait_timeout = wait_timeout
        self.over_selection = float(over_selection)
        self.accept_partial_work = accept_partial_work
        self._sent_at = time.time()
        self.weight_key = weight_key
        self.arrays_key = arrays_key
        self.config_key = config_key
        self.metrics_key = metrics_key
        self.train_metrics_aggr_fn = train_metrics_aggr_fn
        self.evaluate_metrics_aggr_fn = evaluate_metrics_aggr_fn
        self.sampler: Sampler = sampler if sampler is not None else UniformSampler()
        self.aggregator: Aggregator = aggregator if aggregator is not None else WeightedMean()
        self.optimizer = optimizer
        self.rng = rng if rng is not None else np.random.default_rng()
        #: The global arrays sent in the current round's train instructions.
        self.current_arrays: ArrayRecord | None = None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(fraction_train={self.fraction_train}, "
            f"fraction_evaluate={self.fraction_evaluate}, min_train_nodes={self.min_train_nodes}, "
            f"min_available_nodes={self.min_available_nodes})"
        )

    # -- sampling ---------------------------------------------------------------------
    def _sample(
        self, server_round: int, grid: Grid, fraction: float, minimum: int, *, phase: str
    ) -> list[int]:
        """Ask the sampler for this phase's nodes, waiting (bounded) while too few qualify."""
        if fraction == 0.0:
            return []
        deadline = grid.clock.now() + self.wait_timeout
        needed = max(self.min_available_nodes, minimum)
        nodes = grid.node_info()
        if sum(info.online for info in nodes) < needed:  # else one listing is enough
            grid.wait_for_nodes(needed, timeout=self.wait_timeout)
            nodes = grid.node_info()
        while True:
            # Size the round by the nodes the sampler may pick, not all known ones.
            pool = len(eligible(self.sampler, nodes))
            wanted = max(int(pool * fraction), minimum, 1)
            if phase == keys.TRAIN and self.over_selection > 1.0 and pool >= wanted:
                wanted = min(pool, math.ceil(wanted * self.over_selection))
            if pool >= max(minimum, 1):
                wanted = min(wanted, pool)
            try:
                return self.sampler.sample(nodes, wanted, server_round=server_round, rng=self.rng)
            except NodeUnavailableError as exc:
                remaining = deadline - grid.clock.now()
                if remaining <= 0:
                    raise NodeUnavailableError(
                        f"round {server_round}: the sampler found too few nodes for {phase} "
                        f"within {self.wait_timeout:g} s: {exc}"
                    ) from None
                grid.clock.sleep(min(0.5, remaining))
                nodes = grid.node_info()

    def keep_first(self, phase: str, num_sampled: int) -> int | None:
        """With ``over_selection``, the train phase keeps the first 1/over_selection replies."""
        if phase != keys.TRAIN or self.over_selection <= 1.0:
            return None
        return max(1, math.floor(num_sampled / self.over_selection))

    def on_reply(self, server_round: int, phase: str, reply: Message) -> None:
        """Feed a learning sampler with each node's outcome."""
        if not isinstance(self.sampler, LearningSampler):
            return
        metrics: dict[str, MetricValue] = {}
        if not reply.has_error():
            found = reply.content.metric_records.get(self.metrics_key)
            metrics = dict(found) if found is not None else {}
        self.sampler.observe(
            NodeOutcome(
                node_id=reply.metadata.src_node_id,
                server_round=server_round,
                phase=phase,
                ok=not reply.has_error(),
                seconds=max(0.0, reply.metadata.created_at - self._sent_at),
                metrics=metrics,
            )
        )

    def _instructions(
        self,
        message_type: str,
        node_ids: list[int],
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,
    ) -> list[Message]:
        content = self.instruction_content(message_type, server_round, arrays, config)
        return [
            Message(
                content,
                dst_node_id=node_id,
                message_type=message_type,
                group_id=str(server_round),
                run_id=grid.run_id,
            )
            for node_id in node_ids
        ]

    # -- the Strategy hooks ------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Sample ``fraction_train`` of the nodes and send each the global arrays."""
        self.current_arrays = arrays
        node_ids = self._sample(
            server_round, grid, self.fraction_train, self.min_train_nodes, phase=keys.TRAIN
        )
        self._sent_at = time.time()
        return self._instructions(keys.TRAIN, node_ids, server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Sample ``fraction_evaluate`` of the nodes and send each the global arrays."""
        node_ids = self._sample(
            server_round, grid, self.fraction_evaluate, self.min_evaluate_nodes, phase=keys.EVALUATE
        )
        self._sent_at = time.time()
        return self._instructions(keys.EVALUATE, node_ids, server_round, arrays, config, grid)

    def min_replies(self, phase: str, num_sampled: int) -> int:
        """``min_train_nodes`` / ``min_evaluate_nodes``, at most the number sampled, at least 1."""
        minimum = self.min_train_nodes if phase == keys.TRAIN else self.min_evaluate_nodes
        return max(1, min(minimum, num_sampled)) if num_sampled else 0

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies' arrays (streamed) and metrics, then apply the optimizer."""
        metrics = _MetricsCollector(self.weight_key, self.train_metrics_aggr_fn)

        def updates() -> Iterator[tuple[ArrayRecord, float]]:
            structure = None
            for reply in replies:
                source = (
                    f"round {server_round}: the train reply of node {reply.metadata.src_node_id}"
                )
                update = self.update_from_reply(server_round, reply, source)
                if update is None:
                    continue
                arrays, weight, reply_metrics = update
                if structure is None:
                    structure = arrays.structure()
                elif arrays.structure() != structure:
                    raise AggregationError(
                        f"{source} has arrays {describe_structure(arrays.structure())}, but "
                        f"earlier replies had {describe_structure(structure)}; every node must "
                        "return the same model structure"
                    )
                metrics.add(reply_metrics, weight)
                yield arrays, weight

        aggregate = self.aggregator.aggregate(updates())
        if aggregate is None:
            return None, None
        aggregate = self.finalize_aggregate(server_round, aggregate)
        if self.optimizer is not None and self.current_arrays is not None:
            aggregate = self.optimizer.step(self.current_arrays, aggregate)
        return aggregate, metrics.result()

    def finalize_aggregate(self, server_round: int, aggregate: ArrayRecord) -> ArrayRecord:
        """Turn the aggregator's result into the model the optimizer sees (FedNova
        rescales here); the aggregate itself by default."""
        return aggregate

    def instruction_content(
        self, message_type: str, server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> RecordDict:
        """The content every node of a phase receives (one object shared by all of them,
        so runtimes serialize it once). Subclasses add records here (SCAFFOLD's control)."""
        return RecordDict({self.arrays_key: arrays, self.config_key: config})

    def update_from_reply(
        self, server_round: int, reply: Message, source: str
    ) -> tuple[ArrayRecord, float, MetricRecord] | None:
        """A reply's ``(arrays, weight, metrics)``, or ``None`` to leave it out.

        Subclasses override this to weight or transform updates (FedNova) or to drop
        some (FedAvg drops partial work). Raises AggregationError for a malformed reply.
        """
        reply_metrics = self._reply_metrics(reply, source)
        completed = reply_metrics.get(keys.COMPLETED_FRACTION, 1.0)
        if not self.accept_partial_work and isinstance(completed, (int, float)) and completed < 1:
            log.info("%s: partial work (%.2f of the asked epochs) left out", source, completed)
            return None
        weight = self._weight(reply_metrics, source)
        return _get(reply, self.arrays_key, ArrayRecord, source), weight, reply_metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Example-weighted mean of the replies' metrics."""
        metrics = _MetricsCollector(self.weight_key, self.evaluate_metrics_aggr_fn)
        for reply in replies:
            source = (
                f"round {server_round}: the evaluate reply of node {reply.metadata.src_node_id}"
            )
            reply_metrics = self._reply_metrics(reply, source)
            metrics.add(reply_metrics, self._weight(reply_metrics, source))
        return metrics.result() if metrics.count else None

    def _reply_metrics(self, reply: Message, source: str) -> MetricRecord:
        return _get(reply, self.metrics_key, MetricRecord, source)

    def _weight(self, metrics: MetricRecord, source: str) -> float:
        return required_metric(
            metrics,
            self.weight_key,
            source,
            positive=False,
            hint=f"return MetricRecord({{{self.weight_key!r}: len(train_data), ...}})",
        )

    def global_arrays_for(self, arrays: ArrayRecord, source: str) -> ArrayRecord:
        """This round's global arrays, checked to have the reply's structure (for
        strategies that aggregate a reply against the model it started from)."""
        current = self.current_arrays
        if current is None:
            raise AggregationError(
                f"{source}: {type(self).__name__} aggregates against the model sent with "
                "configure_train, but no train instructions were configured"
            )
        if arrays.structure() != current.structure():
            raise AggregationError(
                f"{source} has arrays {describe_structure(arrays.structure())}, but the global "
                f"model has {describe_structure(current.structure())}"
            )
        return current


def required_metric(
    metrics: MetricRecord, key: str, source: str, *, positive: bool, hint: str
) -> float:
    """A number every reply must report (example count, local steps, loss), as a float.

    Raises AggregationError naming the reply, the value it sent and ``hint`` (how a node
    reports it) when it is missing, not a finite number, negative, or zero with
    ``positive``.
    """
    value = metrics.get(key)
    usable = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not usable:
        raise AggregationError(f"{source} has no usable {key!r} metric (got {value!r}); {hint}")
    return float(value)  # type: ignore[arg-type]


def _get(reply: Message, key: str, kind: type[_R], source: str) -> _R:
    try:
        return reply.content.get_kind(key, kind)
    except ConfigError as exc:
        raise AggregationError(f"{source}: {exc}") from None


class _MetricsCollector:
    """Streams metrics through the weighted mean, or buffers them for a custom function."""

    def __init__(self, weight_key: str, custom: MetricsAggregationFn | None) -> None:
        self._custom = custom
        self._buffered: list[tuple[MetricRecord, float]] = []
        self._mean = MetricMeanAccumulator(sum_keys=(weight_key,))
        self.count = 0

    def add(self, metrics: MetricRecord, weight: float) -> None:
        self.count += 1
        if self._custom is not None:
            self._buffered.append((metrics, weight))
        else:
            self._mean.add(metrics, weight)

    def result(self) -> MetricRecord:
        return self._custom(self._buffered) if self._custom is not None else self._mean.result()
