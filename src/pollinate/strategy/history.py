"""What a run records about each round, and who gets told.

The round loop fills one :class:`RoundRecord` per round and hands it to a
:class:`RunObserver` (the progress display, the history file writer, a test).
Records are plain data, so ``history.json`` is ``json.dumps`` of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pollinate.records import MetricValue

__all__ = ["History", "NullObserver", "ObserverGroup", "PhaseSummary", "RoundRecord", "RunObserver"]


@dataclass
class PhaseSummary:
    """One phase (train or evaluate) of one round."""

    sampled: int = 0
    replied: int = 0
    failed: int = 0
    #: No reply by the deadline, or not needed once enough faster nodes had replied.
    late: int = 0
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class RoundRecord:
    """Everything the loop knows about one round, after it finished."""

    server_round: int
    train: PhaseSummary | None = None
    evaluate: PhaseSummary | None = None
    centralized: dict[str, MetricValue] = field(default_factory=dict)
    seconds: float = 0.0


def _plain(metrics: dict[str, MetricValue]) -> dict[str, MetricValue]:
    """A copy of a metrics mapping (its values are numbers or flat lists of numbers)."""
    return {k: list(v) if isinstance(v, list) else v for k, v in metrics.items()}


def _phase_dict(phase: PhaseSummary | None) -> dict[str, Any] | None:
    if phase is None:
        return None
    return {
        "sampled": phase.sampled,
        "replied": phase.replied,
        "failed": phase.failed,
        "late": phase.late,
        "metrics": _plain(phase.metrics),
        "errors": list(phase.errors),
        "seconds": phase.seconds,
    }


@dataclass
class History:
    """All rounds of a run, with the centralized evaluation of the initial model."""

    initial_centralized: dict[str, MetricValue] = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)
    #: Why the run ended before its last round (e.g. the privacy budget), if it did.
    stopped_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for ``json.dumps`` (the same as ``dataclasses.asdict``).

        Written out rather than ``asdict``, which deep-copies field by field and is ten
        times slower: a run checkpoints its whole history every round, and at round 100
        ``asdict`` took 6 ms of a small model's 100 ms deployment round.
        """
        return {
            "initial_centralized": _plain(self.initial_centralized),
            "rounds": [
                {
                    "server_round": r.server_round,
                    "train": _phase_dict(r.train),
                    "evaluate": _phase_dict(r.evaluate),
                    "centralized": _plain(r.centralized),
                    "seconds": r.seconds,
                }
                for r in self.rounds
            ],
            "stopped_reason": self.stopped_reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """The inverse of :meth:`to_dict` (extra keys, as in history.json, are ignored)."""

        def phase(value: dict[str, Any] | None) -> PhaseSummary | None:
            return None if value is None else PhaseSummary(**value)

        rounds = [
            RoundRecord(
                server_round=r["server_round"],
                train=phase(r.get("train")),
                evaluate=phase(r.get("evaluate")),
                centralized=dict(r.get("centralized", {})),
                seconds=r.get("seconds", 0.0),
            )
            for r in data.get("rounds", [])
        ]
        stopped = data.get("stopped_reason")
        return cls(
            initial_centralized=dict(data.get("initial_centralized", {})),
            rounds=rounds,
            stopped_reason=stopped if isinstance(stopped, str) else None,
        )

    def series(self, phase: str, metric: str) -> list[tuple[int, float]]:
        """``(round, value)`` pairs of ``metric`` in ``phase`` (train, evaluate, centralized)."""
        points: list[tuple[int, float]] = []
        for record in self.rounds:
            if phase == "centralized":
                values: dict[str, MetricValue] = record.centralized
            else:
                summary = getattr(record, phase)
                values = summary.metrics if summary is not None else {}
            value = values.get(metric)
            if isinstance(value, (int, float)):
                points.append((record.server_round, float(value)))
        return points


class RunObserver(Protocol):
    """Told about a run's progress by the round loop.

    An observer may also have ``on_result(name, data)``: told when the ServerApp
    publishes a named result (:meth:`pollinate.server.Grid.publish`), such as the
    answers of analytics queries. It is optional, so it is not part of the protocol."""

    def on_start(self, num_rounds: int, initial_centralized: dict[str, MetricValue]) -> None:
        """The run begins; the initial model was evaluated (metrics may be empty)."""
        ...

    def on_phase_start(self, server_round: int, phase: str, num_sampled: int) -> None:
        """A phase of a round sent its instructions to ``num_sampled`` nodes."""
        ...

    def on_reply(self, server_round: int, phase: str, *, ok: bool) -> None:
        """One reply (or failure) came in."""
        ...

    def on_round_end(self, record: RoundRecord) -> None:
        """A round is complete."""
        ...

    def on_stop(self, server_round: int, reason: str) -> None:
        """The run ends cleanly before ``server_round`` (e.g. its privacy budget is spent).

        Optional: the round loop skips observers without it.
        """
        ...


class NullObserver:
    """Ignores everything."""

    def on_start(self, num_rounds: int, initial_centralized: dict[str, MetricValue]) -> None:
        pass

    def on_phase_start(self, server_round: int, phase: str, num_sampled: int) -> None:
        pass

    def on_reply(self, server_round: int, phase: str, *, ok: bool) -> None:
        pass

    def on_round_end(self, record: RoundRecord) -> None:
        pass

    def on_stop(self, server_round: int, reason: str) -> None:
        pass


class ObserverGroup:
    """Tells each of several observers, in order."""

    def __init__(self, *observers: RunObserver) -> None:
        self.observers = observers

    def on_start(self, num_rounds: int, initial_centralized: dict[str, MetricValue]) -> None:
        for observer in self.observers:
            observer.on_start(num_rounds, initial_centralized)

    def on_phase_start(self, server_round: int, phase: str, num_sampled: int) -> None:
        for observer in self.observers:
            observer.on_phase_start(server_round, phase, num_sampled)

    def on_reply(self, server_round: int, phase: str, *, ok: bool) -> None:
        for observer in self.observers:
            observer.on_reply(server_round, phase, ok=ok)

    def on_round_end(self, record: RoundRecord) -> None:
        for observer in self.observers:
            observer.on_round_end(record)

    def on_stop(self, server_round: int, reason: str) -> None:
        for observer in self.observers:
            on_stop = getattr(observer, "on_stop", None)
            if on_stop is not None:
                on_stop(server_round, reason)

    def on_result(self, name: str, data: Mapping[str, Any]) -> None:
        for observer in self.observers:
            on_result = getattr(observer, "on_result", None)
            if on_result is not None:
                on_result(name, data)
