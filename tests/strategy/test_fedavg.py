from __future__ import annotations

import numpy as np
import pytest

from pollinate.errors import AggregationError, ConfigError, NodeUnavailableError
from pollinate.records import ArrayRecord, Message, MetricRecord, RecordDict, keys
from pollinate.strategy import FedAvg
from pollinate.testing.conformance import check_strategy
from pollinate.testing.fakes import FakeGrid, linear_node, make_error_reply


def _model() -> ArrayRecord:
    return ArrayRecord({"w": np.zeros(2, np.float32)})


def test_fedavg_passes_the_strategy_conformance_check() -> None:
    check_strategy(lambda seed: FedAvg(fraction_train=0.5, rng=np.random.default_rng(seed)))


def test_fedavg_weights_by_example_count_hand_computed() -> None:
    # Nodes 1, 2, 3 return 1, 2, 3 with 1, 2, 3 examples: (1 + 4 + 9) / 6 = 14/6.
    grid = FakeGrid(linear_node, node_ids=[1, 2, 3])
    result = FedAvg(fraction_evaluate=0.0, rng=np.random.default_rng(0)).start(
        grid, initial_arrays=_model(), num_rounds=1
    )
    np.testing.assert_allclose(result.arrays["w"], [14 / 6, 14 / 6], rtol=1e-6)
    train = result.history.rounds[0].train
    assert train is not None
    assert train.metrics == {"num-examples": 6, "loss": pytest.approx(14 / 6)}


def test_fraction_train_samples_that_share_and_sends_the_round_number() -> None:
    grid = FakeGrid(linear_node, node_ids=range(1, 21))
    FedAvg(fraction_train=0.5, fraction_evaluate=0.0, rng=np.random.default_rng(1)).start(
        grid, initial_arrays=_model(), num_rounds=2, train_config={"lr": 0.1}
    )
    assert len(grid.sent) == 20
    configs = [m.content[keys.CONFIG] for m in grid.sent]
    assert [c[keys.SERVER_ROUND] for c in configs] == [1] * 10 + [2] * 10
    assert all(c["lr"] == 0.1 for c in configs)
    assert len({m.metadata.dst_node_id for m in grid.sent[:10]}) == 10


def test_failures_are_counted_and_too_few_replies_stop_the_run() -> None:
    def only_node_one(message: Message) -> Message:
        if message.metadata.dst_node_id == 1:
            return linear_node(message)
        return make_error_reply(message, "disk full")

    grid = FakeGrid(only_node_one, node_ids=[1, 2, 3])
    strategy = FedAvg(min_train_nodes=2, rng=np.random.default_rng(0))
    with pytest.raises(AggregationError, match=r"only 1 of 3 nodes replied to train.*disk full"):
        strategy.start(grid, initial_arrays=_model(), num_rounds=1)


def test_a_silent_node_times_out_and_the_round_goes_on() -> None:
    grid = FakeGrid(
        lambda m: None if m.metadata.dst_node_id == 2 else linear_node(m), node_ids=[1, 2, 3]
    )
    result = FedAvg(rng=np.random.default_rng(0)).start(
        grid, initial_arrays=_model(), num_rounds=1, timeout=5
    )
    train = result.history.rounds[0].train
    assert train is not None and (train.replied, train.failed, train.late) == (2, 0, 1)
    assert "within 5 s" in train.errors[0]
    np.testing.assert_allclose(result.arrays["w"], [10 / 4, 10 / 4], rtol=1e-6)


def test_missing_weight_metric_is_a_clear_aggregation_error() -> None:
    def no_weight(message: Message) -> Message:
        return message.reply(
            RecordDict({keys.ARRAYS: _model(), keys.METRICS: MetricRecord({"loss": 1.0})})
        )

    grid = FakeGrid(no_weight, node_ids=[1, 2])
    with pytest.raises(AggregationError, match="node 1 has no usable 'num-examples'"):
        FedAvg(rng=np.random.default_rng(0)).start(grid, initial_arrays=_model(), num_rounds=1)


def test_waiting_for_nodes_times_out_with_a_clear_error() -> None:
    grid = FakeGrid(linear_node, node_ids=[1])
    strategy = FedAvg(min_available_nodes=3, wait_timeout=2.0, rng=np.random.default_rng(0))
    with pytest.raises(NodeUnavailableError, match="only 1 are connected"):
        strategy.start(grid, initial_arrays=_model(), num_rounds=1)


@pytest.mark.parametrize(
    "kwargs", [{"fraction_train": 1.5}, {"min_train_nodes": -1}, {"wait_timeout": 0}]
)
def test_bad_settings_are_config_errors(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        FedAvg(**kwargs)  # type: ignore[arg-type]


def test_centralized_evaluation_runs_before_and_after_every_round() -> None:
    seen: list[int] = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        seen.append(server_round)
        return MetricRecord({"accuracy": float(server_round)})

    grid = FakeGrid(linear_node, node_ids=[1, 2])
    result = FedAvg(rng=np.random.default_rng(0)).start(
        grid, initial_arrays=_model(), num_rounds=2, evaluate_fn=evaluate
    )
    assert seen == [0, 1, 2]
    assert result.history.initial_centralized == {"accuracy": 0.0}
    assert result.history.series("centralized", "accuracy") == [(1, 1.0), (2, 2.0)]


def test_aggregation_streams_and_holds_no_earlier_reply() -> None:
    import gc
    import weakref

    instruction = Message(RecordDict(), dst_node_id=1, message_type=keys.TRAIN)
    alive_when_yielding: list[int] = []
    refs: list[weakref.ref[np.ndarray]] = []

    def replies():
        for _ in range(20):
            gc.collect()
            alive_when_yielding.append(sum(r() is not None for r in refs))
            array = np.ones(1000, np.float32)
            refs.append(weakref.ref(array))
            metrics = MetricRecord({keys.NUM_EXAMPLES: 1})
            yield instruction.reply(
                RecordDict({keys.ARRAYS: ArrayRecord({"w": array}), keys.METRICS: metrics})
            )

    arrays, _ = FedAvg().aggregate_train(1, replies())

    assert arrays is not None and arrays["w"].tolist() == [1.0] * 1000
    assert max(alive_when_yielding) <= 1, alive_when_yielding
