"""FedNova (Wang et al., NeurIPS 2020): normalized averaging."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.errors import AggregationError
from pollinate.records import ArrayRecord, Message, MetricRecord, keys
from pollinate.strategy import FedAvg
from pollinate.strategy.fednova import FedNova
from pollinate.testing.conformance import check_strategy
from pollinate.testing.fakes import FakeGrid, linear_node, make_reply

# Node 1 takes tau = 1 step on 1 example and moves by [1, 2];
# node 2 takes tau = 4 steps on 3 examples and moves by [4, -8].
NODES = {1: (np.array([1.0, 2.0]), 1, 1), 2: (np.array([4.0, -8.0]), 3, 4)}


def two_step_counts(message: Message) -> Message:
    x = message.content.get_kind(keys.ARRAYS, ArrayRecord)
    offset, num_examples, steps = NODES[message.metadata.dst_node_id]
    return make_reply(
        message, {"w": x["w"] + offset}, num_examples=num_examples, **{keys.LOCAL_STEPS: steps}
    )


def steps_node(message: Message) -> Message:
    """The conformance node, plus the local steps a FedNova node reports (1 to 3)."""
    reply = linear_node(message)
    metrics = reply.content.get_kind(keys.METRICS, MetricRecord)
    metrics[keys.LOCAL_STEPS] = message.metadata.dst_node_id % 3 + 1
    return reply


def start(strategy: FedAvg, num_rounds: int = 1) -> ArrayRecord:
    grid = FakeGrid(two_step_counts, node_ids=[1, 2])
    initial = ArrayRecord({"w": np.zeros(2)})
    return strategy.start(grid, initial_arrays=initial, num_rounds=num_rounds).arrays


def test_fednova_hand_computed() -> None:
    # p = [1/4, 3/4]; d_1 = -[1, 2] / 1 = [-1, -2]; d_2 = -[4, -8] / 4 = [-1, 2]
    # sum p_i d_i = [-1/4 - 3/4, -2/4 + 6/4] = [-1, 1]
    # tau_eff = 1/4 * 1 + 3/4 * 4 = 3.25
    # x_new = 0 - 3.25 * [-1, 1] = [3.25, -3.25]; round 2 adds the same: [6.5, -6.5]
    # (FedAvg: 1/4 * [1, 2] + 3/4 * [4, -8] = [3.25, -5.5], pulled towards node 2.)
    strategy = FedNova(fraction_evaluate=0.0, rng=np.random.default_rng(0))

    one_round = start(strategy)

    np.testing.assert_allclose(one_round["w"], [3.25, -3.25], rtol=1e-12)
    assert strategy.tau_eff == pytest.approx(3.25)
    two_rounds = start(FedNova(fraction_evaluate=0.0, rng=np.random.default_rng(0)), 2)
    np.testing.assert_allclose(two_rounds["w"], [6.5, -6.5], rtol=1e-12)
    fedavg = start(FedAvg(fraction_evaluate=0.0, rng=np.random.default_rng(0)))
    np.testing.assert_allclose(fedavg["w"], [3.25, -5.5], rtol=1e-12)


def test_equal_step_counts_reduce_to_fedavg() -> None:
    # With every tau_i = tau: d_i = (x - y_i) / tau and tau_eff = tau, so FedNova = FedAvg.
    grid = FakeGrid(steps_node, node_ids=[3, 6])  # both report 3 % 3 + 1 = 1 step
    initial = ArrayRecord({"w": np.array([0.5, 1.0])})
    nova = FedNova(rng=np.random.default_rng(0)).start(grid, initial_arrays=initial, num_rounds=1)
    grid = FakeGrid(steps_node, node_ids=[3, 6])
    avg = FedAvg(rng=np.random.default_rng(0)).start(grid, initial_arrays=initial, num_rounds=1)
    np.testing.assert_allclose(nova.arrays["w"], avg.arrays["w"], rtol=1e-12)


def test_partial_work_is_kept_by_default() -> None:
    def straggler(message: Message) -> Message:
        reply = two_step_counts(message)
        if message.metadata.dst_node_id == 2:
            reply.content.get_kind(keys.METRICS, MetricRecord)[keys.COMPLETED_FRACTION] = 0.5
        return reply

    grid = FakeGrid(straggler, node_ids=[1, 2])
    result = FedNova(fraction_evaluate=0.0, rng=np.random.default_rng(0)).start(
        grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=1
    )
    np.testing.assert_allclose(result.arrays["w"], [3.25, -3.25], rtol=1e-12)
    assert FedNova(accept_partial_work=False).accept_partial_work is False


@pytest.mark.parametrize("steps", [None, 0, -2.0, float("nan")])
def test_a_missing_or_bad_step_count_is_an_aggregation_error(steps: float | None) -> None:
    def node(message: Message) -> Message:
        x = message.content.get_kind(keys.ARRAYS, ArrayRecord)
        extra = {} if steps is None else {keys.LOCAL_STEPS: steps}
        return make_reply(message, x, **extra)

    grid = FakeGrid(node, node_ids=[1, 2])
    with pytest.raises(AggregationError, match="local-steps"):
        FedNova(rng=np.random.default_rng(0)).start(
            grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=1
        )


def test_fednova_keeps_dtypes_and_leaves_inputs_alone() -> None:
    initial = ArrayRecord({"w": np.ones(3, np.float32), "n": np.array([2], np.int64)})
    pristine = initial.copy()
    grid = FakeGrid(steps_node, node_ids=[1, 2, 3])
    result = FedNova(rng=np.random.default_rng(0)).start(grid, initial_arrays=initial, num_rounds=2)
    assert result.arrays.structure() == initial.structure()
    assert initial == pristine


def test_fednova_passes_the_strategy_conformance_check() -> None:
    check_strategy(
        lambda seed: FedNova(fraction_train=0.5, rng=np.random.default_rng(seed)),
        node=steps_node,
    )
