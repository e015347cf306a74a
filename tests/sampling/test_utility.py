from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pollinate.errors import ConfigError, NodeUnavailableError
from pollinate.records import ArrayRecord, Message
from pollinate.sampling.availability import AvailabilitySampler
from pollinate.sampling.base import LearningSampler, NodeInfo, NodeOutcome
from pollinate.sampling.utility import UtilitySampler
from pollinate.strategy import FedAvg
from pollinate.testing.fakes import FakeGrid, make_reply
from pollinate.testing.sampler_conformance import check_sampler, sample_nodes


def _outcome(
    node_id: int, *, loss: float, seconds: float, size: int = 100, server_round: int = 1
) -> NodeOutcome:
    return NodeOutcome(
        node_id,
        server_round,
        ok=True,
        seconds=seconds,
        metrics={"num-examples": size, "train-loss": loss},
    )


def test_passes_the_conformance_check_fresh() -> None:
    check_sampler(UtilitySampler, num_qualifying=16)


def test_passes_the_conformance_check_after_learning() -> None:
    def learned() -> UtilitySampler:
        sampler = UtilitySampler(min_exploration=0.1)
        for position, node in enumerate(sample_nodes()[:10]):
            loss = 0.2 * (position + 1)
            sampler.observe(_outcome(node.node_id, loss=loss, seconds=1.0 + position % 3))
        return sampler

    check_sampler(learned, num_nodes=5, num_qualifying=16)


def _trained() -> UtilitySampler:
    """Nodes 1-3: high loss, fast. 4-6: high loss, slow. 7-10: low loss, fast. 11-30: unknown."""
    sampler = UtilitySampler()
    for node_id in range(1, 11):
        high = node_id <= 6
        slow = 4 <= node_id <= 6
        sampler.observe(
            _outcome(
                node_id, loss=2.0 if high else 0.1, seconds=10.0 if slow else 1.0, server_round=99
            )
        )
    return sampler


def test_prefers_useful_fast_nodes_but_keeps_exploring() -> None:
    sampler = _trained()
    nodes = [NodeInfo(i) for i in range(1, 31)]
    rng = np.random.default_rng(5)
    draws = 300

    picks = [sampler.sample(nodes, 5, server_round=100, rng=rng) for _ in range(draws)]

    counts = Counter(i for p in picks for i in p)
    # Epsilon is at its floor (0.2): one pick in five explores an unknown node.
    assert all(sum(1 for i in p if i > 10) == 1 for p in picks)
    assert len({i for p in picks for i in p if i > 10}) == 20  # all unknown nodes get a turn
    # Exploitation: 4 picks from {1, 2, 3} (score ~1.07) and {7..10} (~0.12).
    # Sampling proportional to score: the useful nodes make it in >90% of rounds (seen:
    # 93-95%), the others in ~30% (seen: 23-33%), not never: the cut-off window admits them.
    assert all(counts[i] > 0.9 * draws for i in (1, 2, 3))
    assert all(0.1 * draws < counts[i] < 0.4 * draws for i in (7, 8, 9, 10))
    # Slow nodes score below the cut-off: as useful as 1-3, but never picked.
    assert all(counts[i] == 0 for i in (4, 5, 6))


def test_early_rounds_mostly_explore() -> None:
    sampler = _trained()
    nodes = [NodeInfo(i) for i in range(1, 31)]

    picked = sampler.sample(nodes, 10, server_round=1, rng=np.random.default_rng(0))

    assert sum(1 for i in picked if i > 10) == 9  # round(0.9 * 10)
    assert sampler.exploration_share(1) == 0.9
    assert sampler.exploration_share(2) == pytest.approx(0.882)
    assert sampler.exploration_share(1000) == 0.2


def test_exploits_more_when_few_nodes_are_unexplored() -> None:
    sampler = _trained()
    nodes = [NodeInfo(i) for i in range(1, 12)]  # only node 11 is unexplored

    picked = sampler.sample(nodes, 8, server_round=1, rng=np.random.default_rng(0))

    assert 11 in picked and len(set(picked)) == 8


def test_scores_follow_the_oort_formula() -> None:
    sampler = UtilitySampler(preferred_duration=2.0, alpha=2.0, staleness=0.1)
    sampler.observe(_outcome(1, loss=1.0, seconds=1.0, size=50, server_round=4))
    sampler.observe(_outcome(2, loss=-2.0, seconds=8.0, size=100, server_round=2))

    scores = sampler.scores([2, 1, 3], server_round=10)

    # Utilities 50 and 200; the 95th percentile (192.5) caps and scales them.
    bonus_1, bonus_2 = np.sqrt(0.1 * np.log(10) / 4), np.sqrt(0.1 * np.log(10) / 2)
    assert scores == pytest.approx({1: 50 / 192.5 + bonus_1, 2: (1.0 + bonus_2) * (2.0 / 8.0) ** 2})
    assert sampler.statistical_utility == {1: 50.0, 2: 200.0}  # |loss| counts


def test_the_preferred_duration_defaults_to_the_median_seen() -> None:
    sampler = UtilitySampler()
    assert sampler.round_duration() == float("inf")
    for node_id, seconds in enumerate([1.0, 3.0, 10.0], start=1):
        sampler.observe(_outcome(node_id, loss=1.0, seconds=seconds))
    assert sampler.round_duration() == 3.0


def test_failures_and_replies_without_loss_do_not_count_as_explored() -> None:
    sampler = UtilitySampler()

    sampler.observe(NodeOutcome(1, 1, ok=False))
    sampler.observe(NodeOutcome(1, 2, ok=False))
    sampler.observe(NodeOutcome(2, 1, ok=True, seconds=1.0, metrics={"num-examples": 10}))

    assert sampler.failures == {1: 2}
    assert sampler.statistical_utility == {} and sampler.duration == {}
    assert sampler.scores([1, 2], server_round=3) == {}


def test_too_many_is_a_node_unavailable_error() -> None:
    with pytest.raises(NodeUnavailableError, match="cannot sample 3 nodes from 2"):
        UtilitySampler().sample(
            [NodeInfo(1), NodeInfo(2)], 3, server_round=1, rng=np.random.default_rng(0)
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"exploration": 1.5}, "exploration must"),
        ({"exploration_decay": 0.0}, "exploration_decay"),
        ({"min_exploration": 0.95}, "min_exploration"),
        ({"cutoff": -0.1}, "cutoff"),
        ({"alpha": float("nan")}, "alpha"),
        ({"preferred_duration": 0.0}, "preferred_duration"),
        ({"duration_quantile": 2}, "duration_quantile"),
        ({"staleness": -1}, "staleness"),
        ({"loss_key": ""}, "loss_key"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        UtilitySampler(**kwargs)  # type: ignore[arg-type]


def test_fedavg_feeds_it_every_reply() -> None:
    def node(message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        arrays = message.content["arrays"]
        return make_reply(message, arrays, num_examples=node_id, **{"train-loss": 1.0})

    sampler = UtilitySampler()
    grid = FakeGrid(node, node_ids=range(1, 11))
    strategy = FedAvg(
        fraction_train=0.5,
        fraction_evaluate=0.0,
        sampler=AvailabilitySampler(sampler),
        rng=np.random.default_rng(0),
    )

    strategy.start(grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=3)

    sent = {m.metadata.dst_node_id for m in grid.sent}
    assert set(sampler.statistical_utility) == sent
    assert all(sampler.statistical_utility[i] == float(i) for i in sent)
    assert set(sampler.last_round.values()) <= {1, 2, 3}
    assert isinstance(sampler, LearningSampler)
