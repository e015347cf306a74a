"""StrategyWrapper: the base of strategies that wrap another (DP, secure aggregation).

Privacy is added by wrapping a strategy, not by forking it (ARCHITECTURE.md). A wrapper
changes one or two hooks -- how a round's updates are clipped and noised, how its train
exchange runs -- and hands every other hook to the strategy it wraps, so the wrapped
strategy's sampling, evaluation, straggler rules and checkpointed state all still apply.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from pollinate.records import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from pollinate.strategy.base import Strategy

if TYPE_CHECKING:
    from pollinate.server.grid import Grid

__all__ = ["StrategyWrapper"]


class StrategyWrapper(Strategy):
    """A strategy that delegates every hook to ``self.strategy`` unless it overrides it.

    Examples
    --------
    >>> from pollinate.strategy import FedAvg
    >>> class Logged(StrategyWrapper):
    ...     def aggregate_train(self, server_round, replies):
    ...         print(f"aggregating round {server_round}")
    ...         return super().aggregate_train(server_round, replies)
    >>> Logged(FedAvg()).min_replies("train", 10) == FedAvg().min_replies("train", 10)
    True
    """

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The wrapped strategy's train instructions."""
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The wrapped strategy's aggregation."""
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The wrapped strategy's evaluate instructions."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The wrapped strategy's evaluate metrics."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """The wrapped strategy's centralized evaluation."""
        return self.strategy.evaluate(server_round, arrays)

    def min_replies(self, phase: str, num_sampled: int) -> int:
        """The wrapped strategy's minimum."""
        return self.strategy.min_replies(phase, num_sampled)

    def keep_first(self, phase: str, num_sampled: int) -> int | None:
        """The wrapped strategy's over-selection."""
        return self.strategy.keep_first(phase, num_sampled)

    def on_reply(self, server_round: int, phase: str, reply: Message) -> None:
        """Passed on to the wrapped strategy (e.g. its learning sampler)."""
        self.strategy.on_reply(server_round, phase, reply)

    def state(self) -> RecordDict:
        """The wrapped strategy's state."""
        return self.strategy.state()

    def load_state(self, state: RecordDict) -> None:
        """Restore the wrapped strategy's state."""
        self.strategy.load_state(state)
