"""History records why a run stopped early; the loop stops cleanly on a spent budget."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from pollinate.errors import PrivacyBudgetExceededError
from pollinate.records import ArrayRecord, ConfigRecord, Message
from pollinate.strategy import FedAvg
from pollinate.strategy.history import History, ObserverGroup, PhaseSummary, RoundRecord
from pollinate.testing.fakes import FakeGrid, linear_node


class BudgetedFedAvg(FedAvg):
    """FedAvg whose budget allows ``rounds`` rounds."""

    def __init__(self, rounds: int) -> None:
        super().__init__(fraction_evaluate=0.0, rng=np.random.default_rng(0))
        self.rounds = rounds

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid
    ) -> list[Message]:
        if server_round > self.rounds:
            raise PrivacyBudgetExceededError(f"budget allows {self.rounds} rounds")
        return super().configure_train(server_round, arrays, config, grid)


class Recording:
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []

    def on_start(self, num_rounds, initial_centralized) -> None:  # type: ignore[no-untyped-def]
        self.events.append(("start", num_rounds))

    def on_phase_start(self, server_round, phase, num_sampled) -> None:  # type: ignore[no-untyped-def]
        pass

    def on_reply(self, server_round, phase, *, ok) -> None:  # type: ignore[no-untyped-def]
        pass

    def on_round_end(self, record: RoundRecord) -> None:
        self.events.append(("round", record.server_round))

    def on_stop(self, server_round: int, reason: str) -> None:
        self.events.append((f"stop: {reason}", server_round))


class WithoutOnStop(Recording):
    on_stop = None  # type: ignore[assignment]  # an observer written before on_stop


def test_a_spent_budget_ends_the_run_cleanly_and_says_why() -> None:
    recording, old_style = Recording(), WithoutOnStop()
    grid = FakeGrid(linear_node, node_ids=[1, 2, 3], observer=ObserverGroup(recording, old_style))

    result = BudgetedFedAvg(rounds=2).start(
        grid, initial_arrays=ArrayRecord({"w": np.zeros(2, np.float32)}), num_rounds=5
    )

    assert [r.server_round for r in result.history.rounds] == [1, 2]
    assert result.history.stopped_reason == "budget allows 2 rounds"
    assert recording.events == [
        ("start", 5),
        ("round", 1),
        ("round", 2),
        ("stop: budget allows 2 rounds", 3),
    ]
    assert ("round", 2) in old_style.events
    assert {m.metadata.group_id for m in grid.sent} == {"1", "2"}, "nothing sent for round 3"


def test_a_run_that_is_not_stopped_has_no_reason() -> None:
    grid = FakeGrid(linear_node, node_ids=[1, 2, 3])
    result = BudgetedFedAvg(rounds=5).start(
        grid, initial_arrays=ArrayRecord({"w": np.zeros(2, np.float32)}), num_rounds=2
    )
    assert result.history.stopped_reason is None and len(result.history.rounds) == 2


def test_stopped_reason_survives_json() -> None:
    history = History(
        rounds=[RoundRecord(server_round=1, train=PhaseSummary(sampled=2, replied=2))],
        stopped_reason="privacy budget spent",
    )
    back = History.from_dict(json.loads(json.dumps(history.to_dict())))
    assert back == history
    assert History.from_dict({"rounds": []}).stopped_reason is None


def test_to_dict_is_asdict_and_shares_nothing_with_the_history() -> None:
    # Written out for speed: it must stay what dataclasses.asdict gives, field for field.
    history = History(initial_centralized={"accuracy": 0.1, "per_class": [1, 2]})
    history.rounds.append(
        RoundRecord(
            1,
            train=PhaseSummary(10, 9, 1, 0, {"loss": 0.5, "hist": [1, 2]}, ["node 3: x"], 0.2),
            centralized={"accuracy": 0.9},
            seconds=0.3,
        )
    )
    history.rounds.append(RoundRecord(2, evaluate=PhaseSummary(sampled=4, replied=4)))
    history.stopped_reason = "budget"

    data = history.to_dict()

    assert data == dataclasses.asdict(history)
    data["rounds"][0]["train"]["metrics"]["hist"].append(3)
    data["initial_centralized"]["per_class"].append(3)
    data["rounds"][0]["train"]["errors"].clear()
    assert history.rounds[0].train is not None
    assert history.rounds[0].train.metrics["hist"] == [1, 2]
    assert history.rounds[0].train.errors == ["node 3: x"]
    assert history.initial_centralized["per_class"] == [1, 2]
