"""Node profiles make simulated nodes slow, offline or crashing, the same on every runtime."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pollinate import ClientApp, Context, FedAvg, Grid, Message, ServerApp, run_simulation
from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord, ErrorCode, MetricRecord, RecordDict, keys
from pollinate.runtime.inline import InlineGrid
from pollinate.runtime.nodes import VirtualNodes
from pollinate.runtime.profiles import NodeProfile

app = ClientApp()


@app.train()
def _train(message: Message, context: Context) -> Message:
    arrays = message.content[keys.ARRAYS]
    metrics = MetricRecord({keys.NUM_EXAMPLES: 1})
    return message.reply(RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics}))


def _run(runtime: str, profile_of: Any, *, rounds: int = 3, timeout: float = 30.0) -> Any:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> Any:
        return FedAvg(fraction_evaluate=0.0, min_train_nodes=1, rng=np.random.default_rng(0)).start(
            grid, initial_arrays=ArrayRecord({"w": np.ones(2)}), num_rounds=rounds, timeout=timeout
        )

    return run_simulation(
        server,
        app,
        num_nodes=6,
        runtime=runtime,
        num_workers=2,  # type: ignore[arg-type]
        node_config_fn=profile_of,
        run_config={"seed": 3},
    )


def _counts(result: Any) -> list[tuple[int, int, int]]:
    return [(r.train.replied, r.train.failed, r.train.late) for r in result.history.rounds]


@pytest.mark.parametrize("runtime", ["inline", "process"])
def test_unavailable_and_crashing_nodes_fail_identically_on_both_runtimes(runtime: str) -> None:
    def profile(partition_id: int) -> dict[str, float]:
        return {"sim-unavailable-p": 0.5} if partition_id < 3 else {"sim-crash-p": 0.3}

    counts = _counts(_run(runtime, profile, rounds=4))
    expected = _counts(_run("inline", profile, rounds=4))
    assert counts == expected
    assert all(replied + failed == 6 and late == 0 for replied, failed, late in counts)
    assert sum(failed for _, failed, _ in counts) > 0


def test_a_slow_node_misses_the_deadline_and_counts_as_late() -> None:
    result = _run("process", lambda p: {"sim-delay": 5.0} if p == 0 else {}, rounds=1, timeout=1.0)
    assert _counts(result) == [(5, 0, 1)]


def test_offline_nodes_are_reported_by_node_info() -> None:
    nodes = VirtualNodes(num_nodes=40, seed=1, node_config_fn=lambda p: {"sim-unavailable-p": 0.5})
    grid = InlineGrid(app, nodes)
    grid.begin_round(1)
    first = [n.online for n in grid.node_info()]
    grid.begin_round(2)
    second = [n.online for n in grid.node_info()]
    assert 8 < sum(first) < 32 and first != second
    content = RecordDict({keys.ARRAYS: ArrayRecord({"w": np.ones(1)})})
    offline = next(i + 1 for i, online in enumerate(second) if not online)
    message = Message(content, dst_node_id=offline, message_type=keys.TRAIN, group_id="2")
    (reply,) = grid.send_and_receive([message], timeout=5)
    assert reply.error is not None and reply.error.code == ErrorCode.NODE_UNAVAILABLE


def test_bad_profiles_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"sim-crash-p=1\.5"):
        NodeProfile.from_config({"sim-crash-p": 1.5})
