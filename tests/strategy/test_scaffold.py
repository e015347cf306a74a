"""SCAFFOLD (Karimireddy et al., ICML 2020): control variates against client drift."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pollinate import ClientApp, Context, Grid, ServerApp, run_simulation
from pollinate.client.algorithms import (
    load_control,
    scaffold_correction,
    scaffold_update_control,
    store_control,
)
from pollinate.errors import AggregationError, ConfigError
from pollinate.records import ArrayRecord, Message, MetricRecord, RecordDict, keys
from pollinate.strategy import FedAvg
from pollinate.strategy.scaffold import Scaffold
from pollinate.testing.conformance import check_strategy
from pollinate.testing.fakes import FakeGrid, linear_node, make_reply

# Node 1 moves by [2, 0] and changes its control variate by [1, 1] (1 example);
# node 2 moves by [0, 4] and changes it by [3, -1] (3 examples: SCAFFOLD ignores that).
NODES = {
    1: (np.array([2.0, 0.0]), np.array([1.0, 1.0]), 1),
    2: (np.array([0.0, 4.0]), np.array([3.0, -1.0]), 3),
}


def fixed_node(message: Message) -> Message:
    x = message.content.get_kind(keys.ARRAYS, ArrayRecord)
    # Odd nodes behave as node 1, even nodes as node 2.
    offset, control_delta, num_examples = NODES[(message.metadata.dst_node_id - 1) % 2 + 1]
    reply = make_reply(message, {"w": x["w"] + offset}, num_examples=num_examples)
    reply.content[keys.CONTROL_DELTA] = ArrayRecord({"w": control_delta})
    return reply


def stateless_scaffold_node(message: Message) -> Message:
    """The conformance node as a SCAFFOLD node that forgets c_i (c_i = 0 every round)."""
    reply = linear_node(message)
    if message.metadata.message_type != keys.TRAIN:
        return reply
    x = message.content.get_kind(keys.ARRAYS, ArrayRecord)
    c = message.content.get_kind(keys.CONTROL, ArrayRecord)
    y = reply.content.get_kind(keys.ARRAYS, ArrayRecord)
    zeros = {k: np.zeros_like(v) for k, v in c.items()}
    update = scaffold_update_control(zeros, c, x, y, num_steps=2, learning_rate=0.5)
    reply.content[keys.CONTROL_DELTA] = ArrayRecord(update.delta)
    return reply


def test_scaffold_two_rounds_hand_computed() -> None:
    # eta_g = 0.5, N = 4 nodes of which |S| = 2 reply; unweighted means.
    # round 1: x = 0 + 0.5 * mean([2, 0], [0, 4]) = 0.5 * [1, 2] = [0.5, 1]
    #          c = 0 + (2/4) * mean([1, 1], [3, -1]) = 0.5 * [2, 0] = [1, 0]
    # round 2: sends c = [1, 0]; x = [0.5, 1] + [0.5, 1] = [1, 2]; c = [1, 0] + [1, 0] = [2, 0]
    strategy = Scaffold(
        global_learning_rate=0.5, num_nodes=4, fraction_evaluate=0.0, rng=np.random.default_rng(0)
    )
    grid = FakeGrid(fixed_node, node_ids=[1, 2])
    initial = ArrayRecord({"w": np.zeros(2)})

    result = strategy.start(grid, initial_arrays=initial, num_rounds=2)

    np.testing.assert_allclose(result.arrays["w"], [1.0, 2.0], rtol=1e-12)
    assert strategy.control is not None
    np.testing.assert_allclose(strategy.control["w"], [2.0, 0.0], rtol=1e-12)
    sent = [m.content.get_kind(keys.CONTROL, ArrayRecord)["w"].tolist() for m in grid.sent]
    assert sent == [[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.0]]
    assert initial == ArrayRecord({"w": np.zeros(2)})


def test_n_defaults_to_the_connected_nodes() -> None:
    # 2 of 4 nodes sampled, N = 4: c = (2/4) * mean(delta_1, delta_2), e.g. [1, 0] for
    # one odd and one even node, (2/4) * [1, 1] for two odd ones.
    strategy = Scaffold(fraction_train=0.5, fraction_evaluate=0.0, rng=np.random.default_rng(0))
    grid = FakeGrid(fixed_node, node_ids=[1, 2, 3, 4])
    strategy.start(grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=1)
    assert strategy.round_num_nodes == 4
    deltas = [NODES[(m.metadata.dst_node_id - 1) % 2 + 1][1] for m in grid.sent]
    assert len(deltas) == 2 and strategy.control is not None
    np.testing.assert_allclose(strategy.control["w"], 0.5 * np.mean(deltas, axis=0), rtol=1e-12)


def test_the_control_variate_is_replaced_not_mutated() -> None:
    strategy = Scaffold(fraction_evaluate=0.0, rng=np.random.default_rng(0))
    grid = FakeGrid(fixed_node, node_ids=[1, 2])
    strategy.start(grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=1)
    held = strategy.control
    assert held is not None
    snapshot = held.copy()
    strategy.start(grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=1)
    assert held == snapshot and strategy.control is not held


def test_a_missing_or_misshapen_control_delta_is_an_aggregation_error() -> None:
    grid = FakeGrid(linear_node, node_ids=[1, 2])
    with pytest.raises(AggregationError, match="control-delta"):
        Scaffold(rng=np.random.default_rng(0)).start(
            grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=1
        )

    def misshapen(message: Message) -> Message:
        reply = linear_node(message)
        reply.content[keys.CONTROL_DELTA] = ArrayRecord({"w": np.zeros(3)})
        return reply

    grid = FakeGrid(misshapen, node_ids=[1, 2])
    with pytest.raises(AggregationError, match="control-delta"):
        Scaffold(rng=np.random.default_rng(0)).start(
            grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=1
        )


def test_another_model_needs_a_reset_control() -> None:
    strategy = Scaffold(fraction_evaluate=0.0, rng=np.random.default_rng(0))
    grid = FakeGrid(fixed_node, node_ids=[1, 2])
    strategy.start(grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=1)
    with pytest.raises(ConfigError, match="control = None"):
        strategy.start(grid, initial_arrays=ArrayRecord({"v": np.zeros(2)}), num_rounds=1)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"global_learning_rate": 0.0}, "global_learning_rate"), ({"num_nodes": 0}, "num_nodes")],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Scaffold(**kwargs)  # type: ignore[arg-type]


def test_scaffold_passes_the_strategy_conformance_check() -> None:
    check_strategy(
        lambda seed: Scaffold(fraction_train=0.5, rng=np.random.default_rng(seed)),
        node=stateless_scaffold_node,
    )


# -- end to end: heterogeneous quadratics ----------------------------------------------
# Node i minimizes f_i(w) = 1/2 sum_j H[i, j] (w_j - A[i, j])^2 with K = 10 local gradient
# steps of size 0.1. The federation's optimum is w* = sum_i H_i A_i / sum_i H_i per
# coordinate. Local steps pull each node towards its own A_i, so FedAvg settles at a
# biased point; SCAFFOLD's correction c - c_i cancels that drift.
H = np.array([[1.0, 4.0], [2.0, 3.0], [3.0, 0.5], [4.0, 1.0], [0.5, 2.0]])
A = np.array([[5.0, -1.0], [-3.0, 2.0], [1.0, 4.0], [-2.0, -3.0], [4.0, 0.0]])
OPTIMUM = (H * A).sum(axis=0) / H.sum(axis=0)
STEPS, LR = 10, 0.1

quadratic_app = ClientApp()


@quadratic_app.train()
def _train(message: Message, context: Context) -> Message:
    i = context.node_config[keys.PARTITION_ID]
    assert isinstance(i, int)
    x = message.content.get_kind(keys.ARRAYS, ArrayRecord)
    y = x["w"].astype(np.float64)
    scaffold = keys.CONTROL in message.content
    if scaffold:
        c = message.content.get_kind(keys.CONTROL, ArrayRecord)
        c_i = load_control(context, like=c)
        correction = scaffold_correction(c, c_i)["w"]
    for _ in range(STEPS):
        gradient = H[i] * (y - A[i])
        y = y - LR * (gradient + correction if scaffold else gradient)
    metrics = MetricRecord({keys.NUM_EXAMPLES: 1, keys.LOCAL_STEPS: STEPS})
    content = RecordDict({keys.ARRAYS: ArrayRecord({"w": y}), keys.METRICS: metrics})
    if scaffold:
        update = scaffold_update_control(c_i, c, x, {"w": y}, num_steps=STEPS, learning_rate=LR)
        store_control(context, update.control)
        content[keys.CONTROL_DELTA] = ArrayRecord(update.delta)
    return message.reply(content)


def _simulate(strategy: FedAvg, num_rounds: int) -> Any:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> Any:
        return strategy.start(
            grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=num_rounds
        )

    return run_simulation(server, quadratic_app, num_nodes=len(H), run_config={"seed": 0})


def test_scaffold_converges_where_fedavg_drifts() -> None:
    rounds = 30
    fedavg = _simulate(FedAvg(fraction_evaluate=0.0, rng=np.random.default_rng(0)), rounds)
    scaffold = _simulate(Scaffold(fraction_evaluate=0.0, rng=np.random.default_rng(0)), rounds)

    fedavg_error = np.linalg.norm(fedavg.arrays["w"] - OPTIMUM)
    scaffold_error = np.linalg.norm(scaffold.arrays["w"] - OPTIMUM)

    assert fedavg_error > 0.1, "the problem is heterogeneous enough for FedAvg to drift"
    assert scaffold_error < 1e-3
    assert scaffold_error < fedavg_error / 100


def test_scaffold_with_partial_participation_still_beats_fedavg() -> None:
    rounds = 60
    fedavg = _simulate(
        FedAvg(fraction_train=0.6, fraction_evaluate=0.0, rng=np.random.default_rng(1)), rounds
    )
    scaffold = _simulate(
        Scaffold(fraction_train=0.6, fraction_evaluate=0.0, rng=np.random.default_rng(1)), rounds
    )
    fedavg_error = np.linalg.norm(fedavg.arrays["w"] - OPTIMUM)
    scaffold_error = np.linalg.norm(scaffold.arrays["w"] - OPTIMUM)
    assert scaffold_error < fedavg_error / 10
