"""Conformance checks every Strategy and every Grid must pass.

Call them from a test with a factory; they raise AssertionError naming the broken
promise.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pollinate.errors import AggregationError
from pollinate.records import ArrayRecord, Message, RecordDict, keys
from pollinate.server.grid import Grid
from pollinate.strategy.base import Strategy
from pollinate.testing.fakes import FakeGrid, linear_node, make_error_reply
from pollinate.testing.sampler_conformance import check_sampler

__all__ = ["check_grid", "check_sampler", "check_strategy"]


def _model() -> ArrayRecord:
    return ArrayRecord(
        {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.float32)}
    )


def check_strategy(
    factory: Callable[[int], Strategy],
    *,
    num_rounds: int = 3,
    node: Callable[[Message], Message] = linear_node,
) -> None:
    """Check a strategy built by ``factory(seed)`` for the promises of the round loop.

    ``node`` plays every node's part (it must be deterministic and stateless); the
    default returns the global arrays shifted by the node id. Strategies that need more
    from nodes (local steps, control variates) pass a node that provides it.

    - same seed, same nodes and same final arrays; the inputs are never mutated;
    - error replies are counted as failures and left out of aggregation;
    - a round with no good replies stops the run with an AggregationError.
    """
    initial = _model()
    pristine = initial.copy()

    def run(
        seed: int, handler: Callable[[Message], Message | None]
    ) -> tuple[ArrayRecord, list[int]]:
        grid = FakeGrid(handler, node_ids=range(1, 21))
        result = factory(seed).start(grid, initial_arrays=initial, num_rounds=num_rounds)
        return result.arrays, [m.metadata.dst_node_id for m in grid.sent]

    first, nodes_first = run(7, node)
    second, nodes_second = run(7, node)
    assert nodes_first == nodes_second, "same seed must sample the same nodes in the same order"
    assert first == second, "same seed must give bit-identical final arrays"
    assert initial == pristine, "the strategy mutated the initial arrays"
    assert first.structure() == initial.structure(), "the model's structure changed"

    def half_fail(message: Message) -> Message:
        if message.metadata.dst_node_id % 2:
            return make_error_reply(message)
        return node(message)

    grid = FakeGrid(half_fail, node_ids=range(1, 21))
    result = factory(7).start(grid, initial_arrays=initial, num_rounds=1)
    train = result.history.rounds[0].train
    if train is not None:
        sampled = [m for m in grid.sent if m.metadata.message_type == keys.TRAIN]
        odd = sum(1 for m in sampled if m.metadata.dst_node_id % 2)
        assert train.failed == odd, f"counted {train.failed} failures, expected {odd}"
        assert train.replied == len(sampled) - odd
        assert all(np.isfinite(a).all() for a in result.arrays.values())

    grid = FakeGrid(make_error_reply, node_ids=range(1, 21))
    try:
        factory(7).start(grid, initial_arrays=initial, num_rounds=1)
    except AggregationError:
        pass
    else:
        raise AssertionError("a round without any good reply must raise AggregationError")


def check_grid(make_grid: Callable[[], Grid]) -> None:
    """Check a Grid built by ``make_grid()`` whose nodes run the echo app of
    :func:`pollinate.testing.apps.echo_app`: one reply per instruction, in order,
    unknown nodes refused, failures as error replies."""
    from pollinate.errors import NodeUnavailableError

    with make_grid() as grid:
        nodes = grid.nodes()
        assert nodes == sorted(nodes) and len(set(nodes)) == len(nodes), (
            "nodes() must be sorted, unique"
        )
        content = RecordDict({keys.ARRAYS: _model()})
        messages = [
            Message(
                content, dst_node_id=n, message_type=keys.TRAIN, group_id="1", run_id=grid.run_id
            )
            for n in reversed(nodes)
        ]
        replies = list(grid.send_and_receive(messages, timeout=30))
        assert [r.metadata.reply_to_message_id for r in replies] == [
            m.metadata.message_id for m in messages
        ], "one reply per instruction, in sending order"
        for reply, message in zip(replies, messages, strict=True):
            assert not reply.has_error(), reply.error
            assert reply.metadata.src_node_id == message.metadata.dst_node_id
            echoed = reply.content.get_kind(keys.ARRAYS, ArrayRecord)
            assert echoed == _model(), "arrays must arrive intact"
        failing = Message(
            content, dst_node_id=nodes[0], message_type="query.fail", run_id=grid.run_id
        )
        (reply,) = grid.send_and_receive([failing], timeout=30)
        assert reply.has_error(), "a failing handler must give an error reply"
        try:
            grid.send([Message(content, dst_node_id=max(nodes) + 1000, message_type=keys.TRAIN)])
        except NodeUnavailableError:
            pass
        else:
            raise AssertionError("sending to an unknown node must raise NodeUnavailableError")
