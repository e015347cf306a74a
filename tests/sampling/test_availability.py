from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pollinate import ClientApp, Context, FedAvg, Grid, Message, ServerApp, run_simulation
from pollinate.errors import ConfigError, NodeUnavailableError
from pollinate.records import ArrayRecord, MetricRecord, RecordDict, keys
from pollinate.sampling.availability import AvailabilitySampler
from pollinate.sampling.base import LearningSampler, NodeInfo, NodeOutcome, Sampler
from pollinate.sampling.uniform import UniformSampler
from pollinate.sampling.utility import UtilitySampler
from pollinate.sampling.weighted import WeightedSampler
from pollinate.testing.sampler_conformance import check_sampler, sample_nodes

app = ClientApp()


@app.train()
def _train(message: Message, context: Context) -> Message:
    arrays = message.content[keys.ARRAYS]
    metrics = MetricRecord({keys.NUM_EXAMPLES: 1})
    return message.reply(RecordDict({keys.ARRAYS: arrays, keys.METRICS: metrics}))


def test_passes_the_conformance_check() -> None:
    check_sampler(AvailabilitySampler, num_qualifying=11)
    check_sampler(lambda: AvailabilitySampler(skip_busy=False), num_qualifying=13)
    check_sampler(lambda: AvailabilitySampler(WeightedSampler()), num_qualifying=11)


@pytest.mark.parametrize("skip_busy", [True, False])
def test_never_returns_offline_or_busy_nodes(skip_busy: bool) -> None:
    nodes = sample_nodes()
    allowed = {n.node_id for n in nodes if n.online and not (skip_busy and n.busy)}
    sampler = AvailabilitySampler(skip_busy=skip_busy)
    rng = np.random.default_rng(0)

    picked = [sampler.sample(nodes, 5, server_round=1, rng=rng) for _ in range(300)]

    assert all(set(p) <= allowed for p in picked)
    assert set().union(*picked) == allowed


def test_says_how_many_are_offline_and_busy_when_too_few_are_reachable() -> None:
    with pytest.raises(
        NodeUnavailableError, match=r"only 11 of 16 nodes are reachable \(3 offline, 2 busy\)"
    ):
        AvailabilitySampler().sample(
            sample_nodes(), 12, server_round=1, rng=np.random.default_rng(0)
        )


def test_forwards_outcomes_to_a_learning_sampler_only() -> None:
    learner = UtilitySampler()
    outcome = NodeOutcome(3, 1, ok=True, metrics={"num-examples": 2, "train-loss": 0.5})

    AvailabilitySampler(learner).observe(outcome)
    AvailabilitySampler(UniformSampler()).observe(outcome)  # nothing to forward to: no error

    assert learner.statistical_utility == {3: 1.0}
    assert isinstance(AvailabilitySampler(), LearningSampler)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="then must be a Sampler"):
        AvailabilitySampler(then=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="skip_busy"):
        AvailabilitySampler(skip_busy="yes")  # type: ignore[arg-type]


def _simulate(sampler: Sampler) -> Any:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> Any:
        strategy = FedAvg(
            fraction_train=0.25,
            fraction_evaluate=0.0,
            min_train_nodes=1,
            min_available_nodes=1,
            wait_timeout=5.0,
            sampler=sampler,
            rng=np.random.default_rng(0),
        )
        return strategy.start(
            grid, initial_arrays=ArrayRecord({"w": np.ones(2)}), num_rounds=6, timeout=30.0
        )

    return run_simulation(
        server,
        app,
        num_nodes=20,
        node_config_fn=lambda partition_id: {"sim-unavailable-p": 0.4 if partition_id % 2 else 0.1},
        run_config={"seed": 11},
    )


def test_in_a_simulation_no_offline_node_is_ever_contacted() -> None:
    aware = _simulate(AvailabilitySampler())
    blind = _simulate(UniformSampler())

    rounds = [(r.train.sampled, r.train.replied, r.train.failed) for r in aware.history.rounds]
    # The round is sized by the reachable nodes (fraction of those, at least 3).
    assert all(
        sampled >= 3 and replied == sampled and failed == 0 for sampled, replied, failed in rounds
    ), rounds
    assert sum(r.train.failed for r in blind.history.rounds) > 0


def test_skips_nodes_a_grid_reports_offline() -> None:
    nodes = [NodeInfo(i, online=i % 3 != 0) for i in range(1, 31)]

    picked = AvailabilitySampler().sample(nodes, 20, server_round=1, rng=np.random.default_rng(1))

    assert sorted(picked) == [i for i in range(1, 31) if i % 3]


def test_fraction_one_means_every_reachable_node() -> None:
    from pollinate.testing.fakes import FakeGrid, linear_node

    class PartlyOffline(FakeGrid):
        def node_info(self) -> list[NodeInfo]:
            return [NodeInfo(n, online=n % 4 != 0) for n in self.nodes()]

    grid = PartlyOffline(linear_node, node_ids=range(1, 21))
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        sampler=AvailabilitySampler(),
        rng=np.random.default_rng(0),
    )
    result = strategy.start(grid, initial_arrays=ArrayRecord({"w": np.ones(2)}), num_rounds=1)
    assert sorted(m.metadata.dst_node_id for m in grid.sent) == [n for n in range(1, 21) if n % 4]
    assert result.history.rounds[0].train.failed == 0  # type: ignore[union-attr]
