"""Server optimizers (Reddi et al. 2021, Hsu et al. 2019) and the FedOpt strategies."""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import pytest

from pollinate.errors import AggregationError, ConfigError
from pollinate.records import ArrayRecord, Message, keys
from pollinate.strategy import FedAvg
from pollinate.strategy.fedavg import FedAvgKwargs
from pollinate.strategy.fedopt import (
    Adagrad,
    Adam,
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedYogi,
    ServerSGD,
    Yogi,
)
from pollinate.strategy.optimizer import ServerOptimizer
from pollinate.testing.conformance import check_strategy
from pollinate.testing.fakes import FakeGrid, make_reply

# Two nodes add fixed offsets to whatever model they receive:
#   node 1: +[1, 2] with 1 example, node 2: +[4, -4] with 2 examples,
# so every round's weighted mean is x + ([1, 2] + 2 * [4, -4]) / 3 = x + [3, -2]:
# Reddi et al.'s Delta_t = aggregate - x = [3, -2] in every round.
OFFSETS = {1: (np.array([1.0, 2.0]), 1), 2: (np.array([4.0, -4.0]), 2)}
DELTA = np.array([3.0, -2.0])


def offset_node(message: Message) -> Message:
    x = message.content[keys.ARRAYS]
    offset, num_examples = OFFSETS[message.metadata.dst_node_id]
    return make_reply(message, {"w": x["w"] + offset}, num_examples=num_examples)


def run(strategy: FedAvg, num_rounds: int) -> ArrayRecord:
    grid = FakeGrid(offset_node, node_ids=[1, 2])
    initial = ArrayRecord({"w": np.zeros(2)})
    return strategy.start(grid, initial_arrays=initial, num_rounds=num_rounds).arrays


# -- hand-computed cases --------------------------------------------------------------


def test_fedavgm_two_rounds_hand_computed() -> None:
    # lr 1, momentum 0.5; pseudo-gradient g = -Delta = [-3, 2] every round.
    # round 1: v = g = [-3, 2];                    x = 0 - v = [3, -2]
    # round 2: v = 0.5 * [-3, 2] + [-3, 2] = [-4.5, 3]; x = [3, -2] - v = [7.5, -5]
    strategy = FedAvgM(server_momentum=0.5, fraction_evaluate=0.0, rng=np.random.default_rng(0))
    result = run(strategy, 2)
    np.testing.assert_allclose(result["w"], [7.5, -5.0])
    assert isinstance(strategy.optimizer, ServerSGD)
    velocity = strategy.optimizer.velocity
    assert velocity is not None
    np.testing.assert_allclose(velocity["w"], [-4.5, 3.0])


def test_fedavgm_with_a_server_learning_rate_and_nesterov_hand_computed() -> None:
    # lr 0.5, momentum 0.5, Nesterov: step = g + 0.5 * v, x -= 0.5 * step.
    # round 1: v = [-3, 2];   step = [-3, 2] + [-1.5, 1] = [-4.5, 3];   x = [2.25, -1.5]
    # round 2: v = [-4.5, 3]; step = [-3, 2] + [-2.25, 1.5] = [-5.25, 3.5];
    #          x = [2.25, -1.5] + 0.5 * [5.25, -3.5] = [4.875, -3.25]
    strategy = FedAvgM(
        server_learning_rate=0.5,
        server_momentum=0.5,
        nesterov=True,
        fraction_evaluate=0.0,
        rng=np.random.default_rng(0),
    )
    np.testing.assert_allclose(run(strategy, 2)["w"], [4.875, -3.25])


def test_fedadam_two_rounds_hand_computed() -> None:
    # eta 0.1, beta_1 0.9, beta_2 0.99, tau 1e-3; m_-1 = 0, v_-1 = tau^2 = 1e-6.
    # round 1: m = 0.1 * [3, -2] = [0.3, -0.2]
    #          v = 0.99 * 1e-6 + 0.01 * [9, 4] = [0.09000099, 0.04000099]
    #          x = 0.1 * [0.3 / (sqrt(0.09000099) + 1e-3), -0.2 / (sqrt(0.04000099) + 1e-3)]
    #            = [0.03 / 0.3010016, -0.02 / 0.2010025] = [0.0996672, -0.0995013]
    # round 2: m = 0.9 * m + 0.1 * Delta = [0.57, -0.38]
    #          v = 0.99 * v + 0.01 * [9, 4] = [0.1791009801, 0.0796009801]
    #          x += 0.1 * [0.57 / (0.4232032 + 1e-3), -0.38 / (0.2821365 + 1e-3)]
    #            = [0.0996672 + 0.1343696, -0.0995013 - 0.1342109] = [0.2340368, -0.2337122]
    strategy = FedAdam(
        eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3, fraction_evaluate=0.0,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    first = run(strategy, 1)
    np.testing.assert_allclose(first["w"], [0.0996672, -0.0995013], rtol=1e-6)
    second = run(FedAdam(eta=0.1, tau=1e-3, fraction_evaluate=0.0, rng=np.random.default_rng(0)), 2)
    m2, v2 = np.array([0.57, -0.38]), np.array([0.1791009801, 0.0796009801])
    expected = first["w"] + 0.1 * m2 / (np.sqrt(v2) + 1e-3)
    np.testing.assert_allclose(second["w"], expected, rtol=1e-12)
    np.testing.assert_allclose(second["w"], [0.2340368, -0.2337122], rtol=1e-6)


def test_fedyogi_moves_its_second_moment_by_sign_hand_computed() -> None:
    # Same as FedAdam but v_t = v - 0.01 * Delta^2 * sign(v - Delta^2).
    # round 1: v = 1e-6 + 0.01 * [9, 4] = [0.090001, 0.040001]  (sign is -1)
    # round 2: v = [0.090001, 0.040001] + [0.09, 0.04] = [0.180001, 0.080001]
    #          (Adam would decay it: [0.1791009801, 0.0796009801])
    strategy = FedYogi(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3, fraction_evaluate=0.0,
                       rng=np.random.default_rng(0))  # fmt: skip
    result = run(strategy, 2)
    optimizer = strategy.optimizer
    assert isinstance(optimizer, Yogi) and optimizer.v is not None and optimizer.m is not None
    np.testing.assert_allclose(optimizer.v["w"], [0.180001, 0.080001], rtol=1e-12)
    np.testing.assert_allclose(optimizer.m["w"], [0.57, -0.38], rtol=1e-12)
    x1 = 0.1 * np.array([0.3, -0.2]) / (np.sqrt([0.090001, 0.040001]) + 1e-3)
    x2 = x1 + 0.1 * np.array([0.57, -0.38]) / (np.sqrt([0.180001, 0.080001]) + 1e-3)
    np.testing.assert_allclose(result["w"], x2, rtol=1e-12)


def test_fedadagrad_sums_squared_updates_hand_computed() -> None:
    # eta 0.1, tau 1e-3, beta_1 0 (m = Delta).
    # round 1: v = 1e-6 + [9, 4];  x = 0.1 * [3 / (3.00000017 + 1e-3), -2 / (2.00000025 + 1e-3)]
    #                                = [0.0999667, -0.0999500]
    # round 2: v = 1e-6 + [18, 8]; x += 0.1 * [3 / (4.2426408 + 1e-3), -2 / (2.8284273 + 1e-3)]
    #                                = [0.0999667 + 0.0706940, -0.0999500 - 0.0706857]
    strategy = FedAdagrad(eta=0.1, tau=1e-3, fraction_evaluate=0.0, rng=np.random.default_rng(0))
    result = run(strategy, 2)
    np.testing.assert_allclose(result["w"], [0.1706607, -0.1706357], rtol=1e-6)
    assert isinstance(strategy.optimizer, Adagrad) and strategy.optimizer.v is not None
    np.testing.assert_allclose(strategy.optimizer.v["w"], [18.000001, 8.000001], rtol=1e-12)


# -- optimizer properties ---------------------------------------------------------------

OPTIMIZERS: list[Any] = [
    lambda: ServerSGD(),
    lambda: ServerSGD(learning_rate=0.5, momentum=0.9, nesterov=True),
    lambda: Adam(),
    lambda: Yogi(),
    lambda: Adagrad(beta_1=0.5),
]


@pytest.mark.parametrize("make", OPTIMIZERS)
def test_optimizers_are_server_optimizers_that_mutate_nothing(make: Any) -> None:
    optimizer = make()
    assert isinstance(optimizer, ServerOptimizer)
    current = ArrayRecord({"w": np.array([1.0, 2.0], np.float32), "n": np.array([3], np.int64)})
    aggregate = ArrayRecord({"w": np.array([0.5, 2.5], np.float32), "n": np.array([5], np.int64)})
    before = (current.copy(), aggregate.copy())
    first = optimizer.step(current, aggregate)
    state = {k: v.copy() for k, v in vars(optimizer).items() if isinstance(v, ArrayRecord)}
    held = {k: v for k, v in vars(optimizer).items() if isinstance(v, ArrayRecord)}

    optimizer.step(first, aggregate)

    assert (current, aggregate) == before
    assert first.structure() == current.structure(), "dtypes and shapes are kept"
    for name, record in held.items():
        assert record == state[name], f"step changed the earlier {name} record in place"


def test_server_sgd_defaults_to_fedavg() -> None:
    current = ArrayRecord({"w": np.array([1.0, -2.0])})
    aggregate = ArrayRecord({"w": np.array([0.25, 4.0])})
    assert ServerSGD().step(current, aggregate) == aggregate


def test_a_structure_change_is_an_aggregation_error() -> None:
    optimizer = Adam()
    current = ArrayRecord({"w": np.zeros(2)})
    optimizer.step(current, ArrayRecord({"w": np.ones(2)}))
    with pytest.raises(AggregationError, match="aggregate has arrays"):
        optimizer.step(current, ArrayRecord({"w": np.ones(3)}))
    with pytest.raises(AggregationError, match="optimizer's m has"):
        optimizer.step(ArrayRecord({"w": np.zeros(3)}), ArrayRecord({"w": np.ones(3)}))
    optimizer.m = optimizer.v = None  # documented reset
    assert optimizer.step(ArrayRecord({"w": np.zeros(3)}), ArrayRecord({"w": np.ones(3)}))


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: ServerSGD(learning_rate=0), "learning_rate"),
        (lambda: ServerSGD(momentum=1.0), "momentum"),
        (lambda: ServerSGD(nesterov=True), "nesterov"),
        (lambda: Adam(eta=-1), "eta"),
        (lambda: Adam(beta_1=1.0), "beta_1"),
        (lambda: Adam(beta_2=-0.1), "beta_2"),
        (lambda: Yogi(tau=0), "tau"),
        (lambda: Adagrad(tau=math.inf), "tau"),
        (lambda: FedAdam(eta=0), "eta"),
        (lambda: FedAvgM(server_momentum=2), "momentum"),
    ],
)
def test_bad_settings_are_config_errors_naming_the_value(make: Any, name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        make()


def test_fedavg_kwargs_lists_every_fedavg_parameter_but_the_optimizer() -> None:
    parameters = set(inspect.signature(FedAvg.__init__).parameters) - {"self", "optimizer"}
    assert set(FedAvgKwargs.__annotations__) == parameters


def test_strategies_pass_fedavg_settings_through() -> None:
    strategy = FedAdam(fraction_train=0.3, min_train_nodes=4)
    assert (strategy.fraction_train, strategy.min_train_nodes) == (0.3, 4)
    assert isinstance(strategy.optimizer, Adam)


@pytest.mark.parametrize("cls", [FedAvgM, FedAdam, FedYogi, FedAdagrad])
def test_fedopt_strategies_pass_the_strategy_conformance_check(cls: type[FedAvg]) -> None:
    check_strategy(lambda seed: cls(fraction_train=0.5, rng=np.random.default_rng(seed)))
