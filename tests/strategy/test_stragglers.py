"""Deadlines, minimum replies and over-selection in the round loop."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.records import ArrayRecord, ErrorCode, Message, RecordDict
from pollinate.strategy import FedAvg
from pollinate.testing.fakes import FakeGrid, linear_node


def _model() -> ArrayRecord:
    return ArrayRecord({"w": np.zeros(2, np.float32)})


def test_over_selection_asks_more_and_keeps_the_first_replies() -> None:
    grid = FakeGrid(linear_node, node_ids=range(1, 21))
    strategy = FedAvg(
        fraction_train=0.5, fraction_evaluate=0.0, over_selection=1.5, rng=np.random.default_rng(0)
    )

    result = strategy.start(grid, initial_arrays=_model(), num_rounds=1)

    train = result.history.rounds[0].train
    assert train is not None
    assert (train.sampled, train.replied, train.failed, train.late) == (15, 10, 0, 5)
    kept = [m.metadata.dst_node_id for m in grid.sent[:10]]
    expected = sum(n * n for n in kept) / sum(kept)  # linear_node: value n, weight n
    np.testing.assert_allclose(result.arrays["w"], [expected] * 2, rtol=1e-6)


def test_late_cuts_are_error_replies_with_code_late() -> None:
    grid = FakeGrid(linear_node, node_ids=[1, 2, 3])
    content = RecordDict({"arrays": _model()})
    messages = [Message(content, dst_node_id=n, message_type="train") for n in (1, 2, 3)]
    replies = list(grid.send_and_receive(messages, timeout=5, keep_first=2))
    assert [r.error.code if r.error else None for r in replies] == [None, None, ErrorCode.LATE]


@pytest.mark.parametrize("bad", [0.5, 11, "2"])
def test_over_selection_is_validated(bad: object) -> None:
    from pollinate.errors import ConfigError

    with pytest.raises(ConfigError, match="over_selection"):
        FedAvg(over_selection=bad)  # type: ignore[arg-type]


def _partial_node(message: Message) -> Message:
    """Odd nodes are stragglers that completed half of the asked epochs."""
    reply = linear_node(message)
    if message.metadata.dst_node_id % 2:
        reply.content["metrics"]["completed-fraction"] = 0.5
    return reply


@pytest.mark.parametrize(("accept", "expected_nodes"), [(False, [2, 4]), (True, [1, 2, 3, 4])])
def test_partial_work_is_dropped_unless_accepted(accept: bool, expected_nodes: list[int]) -> None:
    grid = FakeGrid(_partial_node, node_ids=[1, 2, 3, 4])
    strategy = FedAvg(
        fraction_evaluate=0.0, accept_partial_work=accept, rng=np.random.default_rng(0)
    )
    result = strategy.start(grid, initial_arrays=_model(), num_rounds=1)
    expected = sum(n * n for n in expected_nodes) / sum(expected_nodes)
    np.testing.assert_allclose(result.arrays["w"], [expected] * 2, rtol=1e-6)
