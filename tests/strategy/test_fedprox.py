"""FedProx: mu in every train instruction, partial work kept, FedAvg's promises kept."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord, ConfigRecord, Message, keys
from pollinate.strategy import FedAvg
from pollinate.strategy.fedprox import FedProx
from pollinate.testing.conformance import check_strategy
from pollinate.testing.fakes import FakeGrid, linear_node


def _model() -> ArrayRecord:
    return ArrayRecord({"w": np.zeros(2, np.float32)})


def _partial_node(message: Message) -> Message:
    """Odd nodes are stragglers that completed a quarter of the asked epochs."""
    reply = linear_node(message)
    if message.metadata.dst_node_id % 2:
        reply.content[keys.METRICS][keys.COMPLETED_FRACTION] = 0.25
    return reply


def test_fedprox_passes_the_strategy_conformance_checks() -> None:
    check_strategy(lambda seed: FedProx(proximal_mu=0.1, rng=np.random.default_rng(seed)))


def test_every_train_instruction_carries_proximal_mu() -> None:
    # Arrange
    grid = FakeGrid(linear_node, node_ids=range(1, 11))
    strategy = FedProx(proximal_mu=0.25, fraction_train=0.5, rng=np.random.default_rng(0))

    # Act
    strategy.start(grid, initial_arrays=_model(), num_rounds=3, train_config={"lr": 0.1})

    # Assert
    train = [m for m in grid.sent if m.metadata.message_type == keys.TRAIN]
    assert len(train) == 3 * 5
    for message in train:
        config = message.content.get_kind(keys.CONFIG, ConfigRecord)
        assert config[keys.PROXIMAL_MU] == 0.25
        assert config["lr"] == 0.1
        assert config[keys.SERVER_ROUND] == int(message.metadata.group_id)
    evaluate = [m for m in grid.sent if m.metadata.message_type == keys.EVALUATE]
    assert evaluate, "the evaluate phase ran"
    assert all(
        keys.PROXIMAL_MU not in m.content.get_kind(keys.CONFIG, ConfigRecord) for m in evaluate
    )


def test_configure_train_does_not_mutate_the_config() -> None:
    grid = FakeGrid(linear_node, node_ids=range(1, 5))
    config = ConfigRecord({keys.SERVER_ROUND: 1})
    FedProx(proximal_mu=1.0, rng=np.random.default_rng(0)).configure_train(
        1, _model(), config, grid
    )
    assert dict(config) == {keys.SERVER_ROUND: 1}


def test_strategy_mu_overrides_a_train_config_value() -> None:
    grid = FakeGrid(linear_node, node_ids=range(1, 5))
    FedProx(proximal_mu=1.0, rng=np.random.default_rng(0)).start(
        grid, initial_arrays=_model(), num_rounds=1, train_config={keys.PROXIMAL_MU: 0.5}
    )
    sent = grid.sent[0].content.get_kind(keys.CONFIG, ConfigRecord)
    assert sent[keys.PROXIMAL_MU] == 1.0


@pytest.mark.parametrize(
    ("strategy", "kept"),
    [
        (FedAvg(fraction_evaluate=0.0, rng=np.random.default_rng(0)), [2, 4]),
        (
            FedProx(proximal_mu=1.0, fraction_evaluate=0.0, rng=np.random.default_rng(0)),
            [1, 2, 3, 4],
        ),
        (
            FedProx(
                proximal_mu=1.0,
                fraction_evaluate=0.0,
                accept_partial_work=False,
                rng=np.random.default_rng(0),
            ),
            [2, 4],
        ),
    ],
    ids=["fedavg-drops", "fedprox-keeps", "fedprox-told-to-drop"],
)
def test_partial_work_fedavg_drops_it_fedprox_keeps_it(strategy: FedAvg, kept: list[int]) -> None:
    # Arrange: linear_node replies value n with weight n; odd nodes are stragglers.
    grid = FakeGrid(_partial_node, node_ids=[1, 2, 3, 4])

    # Act
    result = strategy.start(grid, initial_arrays=_model(), num_rounds=1)

    # Assert
    expected = sum(n * n for n in kept) / sum(kept)
    np.testing.assert_allclose(result.arrays["w"], [expected] * 2, rtol=1e-6)
    train = result.history.rounds[0].train
    assert train is not None and train.replied == 4 and train.failed == 0


def test_fedprox_keeps_partial_work_by_default() -> None:
    assert FedProx(proximal_mu=0.0).accept_partial_work is True
    assert FedAvg().accept_partial_work is False


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "1", True, None])
def test_proximal_mu_is_validated(bad: object) -> None:
    with pytest.raises(ConfigError, match="proximal_mu"):
        FedProx(proximal_mu=bad)  # type: ignore[arg-type]


def test_fedavg_options_are_validated_too() -> None:
    with pytest.raises(ConfigError, match="fraction_train"):
        FedProx(proximal_mu=1.0, fraction_train=2.0)


def test_repr_names_mu() -> None:
    assert "proximal_mu=0.5" in repr(FedProx(proximal_mu=0.5))
