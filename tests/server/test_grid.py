from __future__ import annotations

import numpy as np
import pytest

from pollinate.errors import ConfigError, NodeUnavailableError
from pollinate.records import ErrorCode, Message, RecordDict, keys
from pollinate.testing.clock import ManualClock
from pollinate.testing.fakes import FakeGrid, make_reply


def _messages(node_ids: list[int]) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type=keys.TRAIN) for n in node_ids]


class ShuffledGrid(FakeGrid):
    """Replies arrive in reverse order, and node 2's reply arrives twice."""

    def receive(self, message_ids, *, timeout):  # type: ignore[no-untyped-def]
        replies = list(super().receive(message_ids, timeout=timeout))
        duplicates = [r for r in replies if r.metadata.src_node_id == 2]
        return iter(replies[::-1] + duplicates)


def test_send_and_receive_yields_one_reply_per_instruction_in_sending_order() -> None:
    grid = ShuffledGrid(lambda m: make_reply(m), node_ids=[1, 2, 3, 4])
    messages = _messages([3, 1, 4, 2])

    replies = list(grid.send_and_receive(messages, timeout=10))

    assert [r.metadata.reply_to_message_id for r in replies] == [
        m.metadata.message_id for m in messages
    ]


def test_missing_replies_become_timeout_errors() -> None:
    grid = FakeGrid(
        lambda m: None if m.metadata.dst_node_id == 1 else make_reply(m), node_ids=[1, 2]
    )
    replies = list(grid.send_and_receive(_messages([1, 2]), timeout=3))
    assert replies[0].error is not None and replies[0].error.code == ErrorCode.TIMEOUT
    assert "node 1 within 3 s" in replies[0].error.reason
    assert not replies[1].has_error()


def test_wait_for_nodes_uses_the_injected_clock() -> None:
    clock = ManualClock()
    grid = FakeGrid(lambda m: make_reply(m), node_ids=[1], clock=clock)
    with pytest.raises(NodeUnavailableError, match="waited 30 s for 2 nodes"):
        grid.wait_for_nodes(2, timeout=30)
    assert clock.now() == pytest.approx(30)
    assert grid.wait_for_nodes(1, timeout=30) == [1]


def test_bad_timeout_and_unknown_node() -> None:
    grid = FakeGrid(lambda m: make_reply(m), node_ids=[1])
    with pytest.raises(ConfigError, match="timeout"):
        list(grid.send_and_receive(_messages([1]), timeout=0))
    with pytest.raises(NodeUnavailableError):
        grid.send(_messages([99]))


def test_empty_send_yields_nothing() -> None:
    grid = FakeGrid(lambda m: make_reply(m, {"w": np.zeros(1)}))
    assert list(grid.send_and_receive([], timeout=1)) == []


def test_publish_checks_the_result_and_tells_observers_that_take_results() -> None:
    from pollinate.strategy.history import NullObserver
    from pollinate.testing.fakes import linear_node

    published: list[tuple[str, dict[str, object]]] = []

    class Recorder(NullObserver):
        def on_result(self, name: str, data: dict[str, object]) -> None:
            published.append((name, dict(data)))

    grid = FakeGrid(linear_node, observer=Recorder())
    grid.publish("analytics", {"mean": 54.8, "nodes": [1, 2]})
    FakeGrid(linear_node).publish("ignored", {"a": 1})  # an observer without on_result
    assert published == [("analytics", {"mean": 54.8, "nodes": [1, 2]})]
    with pytest.raises(ConfigError, match="names a file"):
        grid.publish("../escape", {})
    with pytest.raises(ConfigError, match="JSON values"):
        grid.publish("x", {"bad": float("nan")})
