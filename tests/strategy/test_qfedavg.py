"""q-FedAvg (Li et al., ICLR 2020): fair resource allocation."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.errors import AggregationError, ConfigError
from pollinate.records import ArrayRecord, ConfigRecord, Message, MetricRecord, keys
from pollinate.strategy.qfedavg import QFedAvg
from pollinate.testing.conformance import check_strategy
from pollinate.testing.fakes import FakeGrid, linear_node, make_reply

# Node 1 moves by [1, 0] and had loss F_1 = 1 on the received model;
# node 2 moves by [0, 2] and had loss F_2 = 3.
NODES = {1: (np.array([1.0, 0.0]), 1.0), 2: (np.array([0.0, 2.0]), 3.0)}


def loss_node(message: Message) -> Message:
    x = message.content.get_kind(keys.ARRAYS, ArrayRecord)
    offset, loss = NODES[message.metadata.dst_node_id]
    return make_reply(message, {"w": x["w"] + offset}, **{keys.INITIAL_LOSS: loss})


def conformance_node(message: Message) -> Message:
    """The conformance node, plus the initial loss a q-FedAvg node reports."""
    reply = linear_node(message)
    metrics = reply.content.get_kind(keys.METRICS, MetricRecord)
    metrics[keys.INITIAL_LOSS] = 0.5 * message.metadata.dst_node_id
    return reply


def start(strategy: QFedAvg) -> tuple[ArrayRecord, FakeGrid]:
    grid = FakeGrid(loss_node, node_ids=[1, 2])
    result = strategy.start(grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=1)
    return result.arrays, grid


def test_qfedavg_hand_computed() -> None:
    # q = 1, learning rate 0.5, so L = 2; w = [0, 0].
    # dw_1 = 2 * (0 - [1, 0]) = [-2, 0], |dw_1|^2 = 4;  dw_2 = [0, -4], |dw_2|^2 = 16
    # h_1 = 1 * F_1^0 * 4 + 2 * F_1 = 4 + 2 = 6;  h_2 = 16 + 2 * 3 = 22
    # sum F_k dw_k = 1 * [-2, 0] + 3 * [0, -4] = [-2, -12]
    # w_new = 0 - [-2, -12] / (6 + 22) = [1/14, 3/7]
    strategy = QFedAvg(
        q=1.0, learning_rate=0.5, fraction_evaluate=0.0, rng=np.random.default_rng(0)
    )

    arrays, grid = start(strategy)

    np.testing.assert_allclose(arrays["w"], [1 / 14, 3 / 7], rtol=1e-9)
    configs = [m.content.get_kind(keys.CONFIG, ConfigRecord) for m in grid.sent]
    assert all(c[keys.Q] == 1.0 and c[keys.LEARNING_RATE] == 0.5 for c in configs)


def test_q_two_favours_the_worse_node_more() -> None:
    # q = 2, L = 2: F^q = [1, 9], q F^(q-1) = [2, 6]
    # h_1 = 2 * 4 + 2 * 1 = 10;  h_2 = 6 * 16 + 2 * 9 = 114
    # sum F^2 dw = [-2, 0] + 9 * [0, -4] = [-2, -36];  w_new = [2, 36] / 124 = [1/62, 9/31]
    strategy = QFedAvg(
        q=2.0, learning_rate=0.5, fraction_evaluate=0.0, rng=np.random.default_rng(0)
    )
    arrays, _ = start(strategy)
    np.testing.assert_allclose(arrays["w"], [1 / 62, 9 / 31], rtol=1e-9)


def test_q_zero_is_the_unweighted_mean_of_the_node_models() -> None:
    # q = 0: h_k = L, so w_new = w - sum dw_k / (2 L) = mean of [1, 0] and [0, 2] = [0.5, 1].
    strategy = QFedAvg(
        q=0.0, learning_rate=0.5, fraction_evaluate=0.0, rng=np.random.default_rng(0)
    )
    arrays, _ = start(strategy)
    np.testing.assert_allclose(arrays["w"], [0.5, 1.0], rtol=1e-9)


def test_an_explicit_lipschitz_constant_overrides_one_over_the_learning_rate() -> None:
    # q = 1, L = 4: dw = [-4, 0], [0, -8]; h = 16 + 4 = 20, 64 + 12 = 76
    # sum F dw = [-4, -24];  w_new = [4, 24] / 96 = [1/24, 1/4]
    strategy = QFedAvg(q=1.0, lipschitz=4.0, fraction_evaluate=0.0, rng=np.random.default_rng(0))
    arrays, _ = start(strategy)
    np.testing.assert_allclose(arrays["w"], [1 / 24, 1 / 4], rtol=1e-9)


def test_the_train_config_is_not_mutated() -> None:
    strategy = QFedAvg(q=1.0)
    config = ConfigRecord({keys.SERVER_ROUND: 1})
    grid = FakeGrid(loss_node, node_ids=[1, 2])
    messages = strategy.configure_train(1, ArrayRecord({"w": np.zeros(2)}), config, grid)
    assert dict(config) == {keys.SERVER_ROUND: 1}
    assert messages[0].content.get_kind(keys.CONFIG, ConfigRecord)[keys.Q] == 1.0


@pytest.mark.parametrize("loss", [None, -1.0, float("inf")])
def test_a_missing_or_bad_initial_loss_is_an_aggregation_error(loss: float | None) -> None:
    def node(message: Message) -> Message:
        extra = {} if loss is None else {keys.INITIAL_LOSS: loss}
        return make_reply(message, message.content.get_kind(keys.ARRAYS, ArrayRecord), **extra)

    grid = FakeGrid(node, node_ids=[1, 2])
    with pytest.raises(AggregationError, match="initial-loss"):
        QFedAvg(rng=np.random.default_rng(0)).start(
            grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=1
        )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"q": -1.0}, "q"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"lipschitz": -2.0}, "lipschitz"),
        ({"q": float("nan")}, "q"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        QFedAvg(**kwargs)  # type: ignore[arg-type]


def test_qfedavg_passes_the_strategy_conformance_check() -> None:
    check_strategy(
        lambda seed: QFedAvg(q=1.0, fraction_train=0.5, rng=np.random.default_rng(seed)),
        node=conformance_node,
    )
