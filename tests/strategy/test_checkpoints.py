"""A run resumed from its last checkpoint ends exactly where an uninterrupted one does."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.records import ArrayRecord, Message, RecordDict
from pollinate.strategy import FedAdam, FedAvg, Strategy
from pollinate.testing.fakes import FakeGrid, linear_node


class Crash(Exception):
    pass


class DurableGrid(FakeGrid):
    """Keeps checkpoints like a server's state store; can crash at a chosen round."""

    def __init__(self, crash_at_round: int | None = None) -> None:
        super().__init__(self._node, node_ids=range(1, 21))
        self.crash_at_round = crash_at_round
        self.saved: tuple[int, RecordDict] | None = None

    def _node(self, message: Message) -> Message:
        if message.metadata.group_id == str(self.crash_at_round):
            self.crash_at_round = None  # crash once
            raise Crash
        return linear_node(message, scale=0.01)

    def save_checkpoint(self, server_round: int, state: RecordDict) -> None:
        self.saved = (server_round, state)

    def load_checkpoint(self) -> tuple[int, RecordDict] | None:
        return self.saved


@pytest.mark.parametrize(
    "factory",
    [
        lambda: FedAvg(fraction_train=0.5, fraction_evaluate=0.0, rng=np.random.default_rng(1)),
        lambda: FedAdam(
            eta=0.1, fraction_train=0.5, fraction_evaluate=0.0, rng=np.random.default_rng(1)
        ),
    ],
)
def test_resume_after_a_crash_gives_the_same_model(factory) -> None:
    initial = ArrayRecord({"w": np.zeros(4, np.float32)})
    reference = DurableGrid()
    expected = factory().start(reference, initial_arrays=initial, num_rounds=5)

    grid = DurableGrid(crash_at_round=3)
    with pytest.raises(Crash):
        factory().start(grid, initial_arrays=initial, num_rounds=5)
    assert grid.saved is not None and grid.saved[0] == 2
    fresh: Strategy = factory()  # a new process: nothing in memory but the checkpoint
    resumed = fresh.start(grid, initial_arrays=initial, num_rounds=5)

    assert resumed.arrays["w"].tobytes() == expected.arrays["w"].tobytes()
    assert [r.server_round for r in resumed.history.rounds] == [1, 2, 3, 4, 5]
    sent = [m.metadata.dst_node_id for m in grid.sent if m.metadata.group_id in ("4", "5")]
    sent_ref = [m.metadata.dst_node_id for m in reference.sent if m.metadata.group_id in ("4", "5")]
    assert sent == sent_ref
