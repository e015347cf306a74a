"""The inline and process runtimes keep the same promises (check_grid) and give
bit-identical results for a fixed seed."""

from __future__ import annotations

import mmap
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollinate import ClientApp, Context, FedAvg, Grid, Message, ServerApp, run_simulation
from pollinate.records import ArrayRecord, ErrorCode, MetricRecord, RecordDict, keys
from pollinate.runtime.inline import InlineGrid
from pollinate.runtime.nodes import VirtualNodes
from pollinate.runtime.process import ProcessGrid
from pollinate.testing.apps import echo_app
from pollinate.testing.conformance import check_grid

RUNTIMES = ["inline", "process"]


def _grid(runtime: str, app: ClientApp, num_nodes: int = 4) -> Grid:
    nodes = VirtualNodes(num_nodes=num_nodes, run_id=1)
    if runtime == "inline":
        return InlineGrid(app, nodes)
    return ProcessGrid(app, nodes, num_workers=2)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_runtime_passes_the_grid_conformance_check(runtime: str) -> None:
    check_grid(lambda: _grid(runtime, echo_app))


# An app whose nodes misbehave on purpose, chosen by node id.
chaos_app = ClientApp()


@chaos_app.train()
def _chaos(message: Message, context: Context) -> Message:
    if context.node_id == 2:
        os._exit(17)  # the worker process dies mid-task
    if context.node_id == 3:
        time.sleep(60)  # misses any reasonable deadline
    arrays = message.content[keys.ARRAYS]
    return message.reply(
        RecordDict({keys.ARRAYS: arrays, keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 1})})
    )


def test_process_runtime_replaces_a_crashed_worker_and_cancels_a_late_node() -> None:
    content = RecordDict({keys.ARRAYS: ArrayRecord({"w": np.ones(3)})})
    messages = [Message(content, dst_node_id=n, message_type=keys.TRAIN) for n in (1, 2, 3, 4)]
    with _grid("process", chaos_app) as grid:
        replies = list(grid.send_and_receive(messages, timeout=3))
        codes = [r.error.code if r.error else None for r in replies]
        assert codes == [None, ErrorCode.WORKER_CRASHED, ErrorCode.TIMEOUT, None]
        assert "exit code 17" in replies[1].error.reason  # type: ignore[union-attr]
        # The pool is whole again: every node can be served.
        again = [Message(content, dst_node_id=n, message_type=keys.TRAIN) for n in (1, 4, 1, 4)]
        assert not any(r.has_error() for r in grid.send_and_receive(again, timeout=10))


def test_process_runtime_arrays_cross_in_shared_memory() -> None:
    content = RecordDict({keys.ARRAYS: ArrayRecord({"w": np.arange(1_000_000, dtype=np.float32)})})
    with _grid("process", echo_app) as grid:
        (reply,) = grid.send_and_receive(
            [Message(content, dst_node_id=1, message_type=keys.TRAIN)], timeout=10
        )
        array = reply.content[keys.ARRAYS]["w"]
        base: Any = array
        while getattr(base, "base", None) is not None:
            base = base.base
        if isinstance(base, memoryview):
            base = base.obj
        assert isinstance(base, mmap.mmap), f"reply array is backed by {type(base).__name__}"
        assert not array.flags.writeable
        np.testing.assert_array_equal(array, np.arange(1_000_000, dtype=np.float32))


counting_app = ClientApp()


@counting_app.train()
def _count(message: Message, context: Context) -> Message:
    calls = int(context.state["calls"]["n"]) + 1 if "calls" in context.state else 1
    context.state["calls"] = MetricRecord({"n": calls})
    context.state["history"] = ArrayRecord({"seen": np.full(calls, context.node_id)})
    arrays = message.content[keys.ARRAYS]
    return message.reply(
        RecordDict(
            {
                keys.ARRAYS: arrays,
                keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 1, "calls": calls}),
            }
        )
    )


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_node_state_persists_across_rounds(runtime: str) -> None:
    content = RecordDict({keys.ARRAYS: ArrayRecord({"w": np.ones(1)})})
    with _grid(runtime, counting_app) as grid:
        for expected in (1, 2, 3):
            messages = [
                Message(content, dst_node_id=n, message_type=keys.TRAIN) for n in (1, 2, 3, 4)
            ]
            replies = list(grid.send_and_receive(messages, timeout=10))
            assert [r.content[keys.METRICS]["calls"] for r in replies] == [expected] * 4


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_nodes_cannot_modify_the_global_model_in_place(runtime: str) -> None:
    app = ClientApp()

    @app.train()
    def mutate(message: Message, context: Context) -> Message:
        message.content[keys.ARRAYS]["w"] += 1.0
        return message.reply(RecordDict())

    global_model = np.zeros(3)
    content = RecordDict({keys.ARRAYS: ArrayRecord({"w": global_model})})
    with _grid(runtime, app) as grid:
        (reply,) = grid.send_and_receive(
            [Message(content, dst_node_id=1, message_type=keys.TRAIN)], timeout=10
        )
    assert reply.error is not None and "read-only" in reply.error.reason
    assert global_model.tolist() == [0.0, 0.0, 0.0]


QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


def test_the_same_seed_gives_bit_identical_models_on_both_runtimes() -> None:
    sys.path.insert(0, str(QUICKSTART))
    try:
        from quickstart.client_app import app as client_app  # type: ignore[import-not-found]
        from quickstart.server_app import app as server_app  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(QUICKSTART))
    config: dict[str, Any] = {
        "num-server-rounds": 3,
        "fraction-train": 0.5,
        "fraction-evaluate": 0.5,
        "local-epochs": 1,
        "batch-size": 16,
        "learning-rate": 0.05,
        "hidden-units": 16,
        "dirichlet-alpha": 0.5,
        "seed": 11,
    }
    results = {
        runtime: run_simulation(
            server_app, client_app, num_nodes=12, run_config=config, runtime=runtime, num_workers=2
        )  # type: ignore[arg-type]
        for runtime in RUNTIMES
    }
    inline, process = results["inline"].arrays, results["process"].arrays
    assert list(inline) == list(process)
    for name in inline:
        assert inline[name].tobytes() == process[name].tobytes(), name
    assert results["inline"].history.to_dict() != {}
    assert [r.train.metrics for r in results["inline"].history.rounds] == [
        r.train.metrics for r in results["process"].history.rounds
    ]


def test_run_simulation_with_a_server_app_main() -> None:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> Any:
        return FedAvg(rng=np.random.default_rng(0)).start(
            grid, initial_arrays=ArrayRecord({"w": np.ones(2)}), num_rounds=2
        )

    result = run_simulation(server, echo_app, num_nodes=3, runtime="process", num_workers=1)
    assert result.arrays["w"].tolist() == [1.0, 1.0]
    assert [r.train.replied for r in result.history.rounds] == [3, 3]


def test_process_runtime_leaves_no_files_behind() -> None:
    content = RecordDict({keys.ARRAYS: ArrayRecord({"w": np.ones(100)})})
    grid = ProcessGrid(counting_app, VirtualNodes(num_nodes=5), num_workers=2)
    directory = grid._dir
    with grid:
        for _ in range(5):
            messages = [
                Message(content, dst_node_id=n, message_type=keys.TRAIN) for n in range(1, 6)
            ]
            assert not any(r.has_error() for r in grid.send_and_receive(messages, timeout=10))
        # Only the five nodes' persisted states remain between rounds.
        assert sorted(p.name.rsplit("-", 1)[-1] for p in directory.iterdir()) == ["state"] * 5
    assert not directory.exists()
    grid.close()  # idempotent


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_message_for_an_unknown_node_is_refused_before_anything_is_sent(runtime: str) -> None:
    from pollinate.errors import NodeUnavailableError

    content = RecordDict()
    with _grid(runtime, echo_app) as grid:
        messages = [Message(content, dst_node_id=n, message_type=keys.TRAIN) for n in (1, 99)]
        with pytest.raises(NodeUnavailableError, match="no node 99"):
            grid.send(messages)
        assert list(grid.receive([messages[0].metadata.message_id], timeout=0.5)) == []


def test_inline_runtime_does_not_start_nodes_after_the_deadline() -> None:
    from pollinate.testing.clock import ManualClock

    clock = ManualClock()
    app = ClientApp()

    @app.train()
    def slow(message: Message, context: Context) -> Message:
        clock.advance(10)  # each node takes 10 s
        return message.reply(RecordDict())

    grid = InlineGrid(app, VirtualNodes(num_nodes=3), clock=clock)
    messages = [Message(RecordDict(), dst_node_id=n, message_type=keys.TRAIN) for n in (1, 2, 3)]
    replies = list(grid.send_and_receive(messages, timeout=15))
    assert [r.has_error() for r in replies] == [False, False, True]
    assert replies[2].error is not None and replies[2].error.code == ErrorCode.TIMEOUT


def test_process_replies_are_dated_by_each_node_own_duration() -> None:
    # One worker for three nodes: they queue for it. The time from an instruction to its
    # reply must still be the node's own (Oort's speed signal), not the queue's.
    app = ClientApp()

    @app.train()
    def slow(message: Message, context: Context) -> Message:
        time.sleep(0.2 * context.node_id)
        return message.reply(RecordDict())

    grid = ProcessGrid(app, VirtualNodes(num_nodes=3), num_workers=1)
    try:
        messages = [
            Message(RecordDict(), dst_node_id=n, message_type=keys.TRAIN) for n in (1, 2, 3)
        ]
        replies = list(grid.send_and_receive(messages, timeout=60))
    finally:
        grid.close()
    pairs = zip(messages, replies, strict=True)
    took = [r.metadata.created_at - m.metadata.created_at for m, r in pairs]
    # Each node slept 0.2 s x its id. Queued behind the others, node 3 would answer
    # 1.2 s after its instruction; on its own it takes 0.6 s and a little.
    assert [t >= 0.2 * n for n, t in zip((1, 2, 3), took, strict=True)] == [True] * 3
    assert took[2] < 1.0


def test_inline_replies_are_dated_by_each_node_own_duration() -> None:
    # Nodes run one after the other here, side by side in a federation: the time from
    # an instruction to its reply must be the node's own (Oort's speed signal), not the
    # queue's.
    from pollinate.testing.clock import ManualClock

    clock = ManualClock()
    app = ClientApp()

    @app.train()
    def slow(message: Message, context: Context) -> Message:
        clock.advance(10 * context.node_id)
        return message.reply(RecordDict())

    grid = InlineGrid(app, VirtualNodes(num_nodes=3), clock=clock)
    messages = [Message(RecordDict(), dst_node_id=n, message_type=keys.TRAIN) for n in (1, 2, 3)]
    replies = list(grid.send_and_receive(messages, timeout=100))
    pairs = zip(messages, replies, strict=True)
    took = [r.metadata.created_at - m.metadata.created_at for m, r in pairs]
    assert took == pytest.approx([10, 20, 30])
