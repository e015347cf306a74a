"""Strategy: the federated round loop, written once.

A strategy decides *what* happens in a round (which nodes, which instructions, how to
combine the replies); :meth:`Strategy.start` decides *when*: it runs rounds of
train -> aggregate -> federated evaluate -> centralized evaluate, counts replies and
failures, enforces each round's deadline and minimum number of replies, and reports
to the grid's observer. Subclasses override the four ``configure_*``/``aggregate_*``
hooks (and optionally ``evaluate``), never the loop.

Error replies are counted, logged and filtered out here, so ``aggregate_*`` receive
only replies with content.

A strategy ends a run early and cleanly by raising
:class:`~pollinate.errors.PrivacyBudgetExceededError` from ``configure_train`` (before
anything is sent): :meth:`Strategy.start` returns the model so far, with the reason in
``History.stopped_reason``, and tells the observer (``on_stop``).
"""

from __future__ import annotations

import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from pollinate.errors import AggregationError, ConfigError, PrivacyBudgetExceededError
from pollinate.records import (
    ArrayRecord,
    ConfigRecord,
    ConfigValue,
    ErrorCode,
    Message,
    MetricRecord,
    MetricValue,
    RecordDict,
    keys,
)
from pollinate.strategy.history import History, PhaseSummary, RoundRecord

if TYPE_CHECKING:
    from pollinate.server.grid import Grid

__all__ = ["EvaluateFn", "Result", "Strategy"]

log = logging.getLogger("pollinate")

#: Centralized evaluation on the server's own data: ``(server_round, arrays) -> metrics``.
EvaluateFn: TypeAlias = Callable[[int, ArrayRecord], "MetricRecord | None"]

_MAX_ERRORS_KEPT = 5
_ARRAYS = "arrays"
_HISTORY = "history"


@dataclass
class Result:
    """What a run produced: the final global arrays and the per-round history."""

    arrays: ArrayRecord
    history: History


class Strategy(ABC):
    """Base of all strategies; see the module docstring for the division of labour."""

    @abstractmethod
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The train instructions of this round (an empty list skips training)."""

    @abstractmethod
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Combine train replies (streamed, in sending order) into new arrays and metrics."""

    @abstractmethod
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The evaluate instructions of this round (an empty list skips evaluation)."""

    @abstractmethod
    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Combine evaluate replies into metrics."""

    def evaluate(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Centralized evaluation on the server's own data; none by default."""
        return None

    def min_replies(self, phase: str, num_sampled: int) -> int:
        """Replies a phase needs to count; fewer stops the run (train) or skips metrics."""
        return 1 if num_sampled else 0

    def keep_first(self, phase: str, num_sampled: int) -> int | None:
        """With over-selection: stop a phase after this many good replies (None: wait for all)."""
        return None

    def on_reply(self, server_round: int, phase: str, reply: Message) -> None:  # noqa: B027
        """Told about every reply, good or not, as it is counted (e.g. to feed a sampler)."""

    def start(
        self,
        grid: Grid,
        *,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600.0,
        train_config: Mapping[str, ConfigValue] | None = None,
        evaluate_config: Mapping[str, ConfigValue] | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """Run ``num_rounds`` rounds from ``initial_arrays`` and return the final model.

        Parameters
        ----------
        grid:
            The runtime's connection to the nodes.
        initial_arrays:
            The global model before round 1.
        num_rounds:
            How many rounds to run.
        timeout:
            Deadline of each phase of each round, in seconds. Nodes that have not
            replied by then count as failed.
        train_config, evaluate_config:
            Sent to nodes in every train/evaluate instruction, with ``server-round``.
        evaluate_fn:
            Centralized evaluation, used instead of :meth:`evaluate` when given.
        """
        if not isinstance(initial_arrays, ArrayRecord):
            raise ConfigError(
                f"initial_arrays must be an ArrayRecord, got {type(initial_arrays).__name__}"
            )
        if num_rounds < 0:
            raise ConfigError(f"num_rounds must be >= 0, got {num_rounds}")
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive seconds, got {timeout}")
        centralized = evaluate_fn if evaluate_fn is not None else self.evaluate
        observer = grid.observer
        arrays = initial_arrays
        first_round = 1
        checkpoint = grid.load_checkpoint()
        if checkpoint is not None:
            completed, saved = checkpoint
            arrays, history = self._restore(saved)
            first_round = completed + 1
            log.warning("resuming from the checkpoint of round %d", completed)
            observer.on_start(num_rounds, history.initial_centralized)
            for record in history.rounds:
                observer.on_round_end(record)
        else:
            history = History(initial_centralized=_as_dict(centralized(0, initial_arrays)))
            observer.on_start(num_rounds, history.initial_centralized)
        for server_round in range(first_round, num_rounds + 1):
            started = time.perf_counter()
            record = RoundRecord(server_round=server_round)
            grid.begin_round(server_round)

            config = _round_config(train_config, server_round)
            try:
                messages = self.configure_train(server_round, arrays, config, grid)
            except PrivacyBudgetExceededError as exc:
                # A budget is a planned end, not a failure: keep what was trained.
                _stop(history, grid, server_round, str(exc))
                break
            if messages:
                summary = PhaseSummary(sampled=len(messages))
                replies = self._replies(grid, messages, timeout, server_round, "train", summary)
                new_arrays, metrics = self.aggregate_train(server_round, replies)
                _drain(replies)
                self._check_enough(server_round, "train", summary)
                summary.metrics = _as_dict(metrics)
                summary.seconds = time.perf_counter() - started
                record.train = summary
                if new_arrays is not None:
                    arrays = new_arrays

            config = _round_config(evaluate_config, server_round)
            messages = self.configure_evaluate(server_round, arrays, config, grid)
            if messages:
                phase_started = time.perf_counter()
                summary = PhaseSummary(sampled=len(messages))
                replies = self._replies(grid, messages, timeout, server_round, "evaluate", summary)
                metrics = self.aggregate_evaluate(server_round, replies)
                _drain(replies)
                if summary.replied >= self.min_replies("evaluate", summary.sampled):
                    summary.metrics = _as_dict(metrics)
                else:
                    log.warning(
                        "round %d: only %d of %d nodes answered evaluate; no metrics this round",
                        server_round,
                        summary.replied,
                        summary.sampled,
                    )
                summary.seconds = time.perf_counter() - phase_started
                record.evaluate = summary

            record.centralized = _as_dict(centralized(server_round, arrays))
            record.seconds = time.perf_counter() - started
            history.rounds.append(record)
            grid.save_checkpoint(server_round, self._checkpoint(arrays, history))
            observer.on_round_end(record)
        return Result(arrays=arrays, history=history)

    # -- checkpoints --------------------------------------------------------------------
    def state(self) -> RecordDict:
        """Everything this strategy carries from one round to the next, as records.

        Saved after every round with the global arrays, so a restarted server resumes
        the run exactly. The default saves every ArrayRecord attribute of the strategy
        and of its ``optimizer`` (moments, control variates) and the state of its
        ``rng``; strategies with other state override this and :meth:`load_state`.
        """
        state = RecordDict()
        for owner_name, owner in (
            ("strategy", self),
            ("optimizer", getattr(self, "optimizer", None)),
        ):
            if owner is None:
                continue
            for name, value in vars(owner).items():
                if isinstance(value, ArrayRecord) and name != "current_arrays":
                    state[f"{owner_name}.{name}"] = value
        rng = getattr(self, "rng", None)
        if isinstance(rng, np.random.Generator):
            state["rng"] = ConfigRecord({"json": json.dumps(rng.bit_generator.state)})
        return state

    def load_state(self, state: RecordDict) -> None:
        """Restore what :meth:`state` saved."""
        for key, value in state.items():
            owner_name, _, name = key.partition(".")
            owner = {"strategy": self, "optimizer": getattr(self, "optimizer", None)}.get(
                owner_name
            )
            if owner is not None and name and isinstance(value, ArrayRecord):
                setattr(owner, name, value)
        rng = getattr(self, "rng", None)
        saved = state.get("rng")
        if isinstance(rng, np.random.Generator) and isinstance(saved, ConfigRecord):
            rng.bit_generator.state = json.loads(str(saved["json"]))

    def _checkpoint(self, arrays: ArrayRecord, history: History) -> RecordDict:
        checkpoint = RecordDict(
            {_ARRAYS: arrays, _HISTORY: ConfigRecord({"json": json.dumps(history.to_dict())})}
        )
        for key, value in self.state().items():
            checkpoint[f"state:{key}"] = value
        return checkpoint

    def _restore(self, checkpoint: RecordDict) -> tuple[ArrayRecord, History]:
        arrays = checkpoint.get_kind(_ARRAYS, ArrayRecord)
        history = History.from_dict(
            json.loads(str(checkpoint.get_kind(_HISTORY, ConfigRecord)["json"]))
        )
        self.load_state(
            RecordDict(
                {
                    key.removeprefix("state:"): value
                    for key, value in checkpoint.items()
                    if key.startswith("state:")
                }
            )
        )
        return arrays, history

    def _replies(
        self,
        grid: Grid,
        messages: list[Message],
        timeout: float,
        server_round: int,
        phase: str,
        summary: PhaseSummary,
    ) -> Iterator[Message]:
        """Good replies only; failures are counted, logged and reported."""
        grid.observer.on_phase_start(server_round, phase, len(messages))
        keep_first = self.keep_first(phase, len(messages))
        for reply in grid.send_and_receive(messages, timeout=timeout, keep_first=keep_first):
            self.on_reply(server_round, phase, reply)
            error = reply.error
            if error is None:
                summary.replied += 1
                grid.observer.on_reply(server_round, phase, ok=True)
                yield reply
                continue
            if error.code in (ErrorCode.TIMEOUT, ErrorCode.LATE):
                summary.late += 1
            else:
                summary.failed += 1
            grid.observer.on_reply(server_round, phase, ok=False)
            text = f"node {reply.metadata.src_node_id}: {error.reason}"
            if len(summary.errors) < _MAX_ERRORS_KEPT:
                summary.errors.append(text)
            log.debug("round %d %s: %s", server_round, phase, text)
        if summary.failed or summary.late:
            log.warning(
                "round %d %s: of %d nodes, %d failed and %d were late (discarded); first: %s",
                server_round,
                phase,
                summary.sampled,
                summary.failed,
                summary.late,
                summary.errors[0],
            )

    def _check_enough(self, server_round: int, phase: str, summary: PhaseSummary) -> None:
        needed = self.min_replies(phase, summary.sampled)
        if summary.replied < needed:
            detail = "; ".join(summary.errors) or "no details"
            raise AggregationError(
                f"round {server_round}: only {summary.replied} of {summary.sampled} nodes "
                f"replied to {phase} ({summary.failed} failed, {summary.late} late), "
                f"{needed} are needed. "
                f"First failures: {detail}"
            )


def _stop(history: History, grid: Grid, server_round: int, reason: str) -> None:
    """End the run before ``server_round``: record why and tell the observer."""
    history.stopped_reason = reason
    log.warning("run stopped before round %d: %s", server_round, reason)
    # Observers written before on_stop existed simply are not told.
    on_stop = getattr(grid.observer, "on_stop", None)
    if on_stop is not None:
        on_stop(server_round, reason)


def _round_config(base: Mapping[str, ConfigValue] | None, server_round: int) -> ConfigRecord:
    config = ConfigRecord(base or {})
    config[keys.SERVER_ROUND] = server_round
    return config


def _drain(replies: Iterator[Message]) -> None:
    """Consume what an aggregator left, so every reply is counted."""
    for _ in replies:
        pass


def _as_dict(metrics: MetricRecord | None) -> dict[str, MetricValue]:
    return dict(metrics) if metrics is not None else {}
