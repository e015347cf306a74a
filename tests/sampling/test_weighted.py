from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from pollinate.errors import ConfigError, NodeUnavailableError
from pollinate.sampling.base import LearningSampler, NodeInfo, NodeOutcome
from pollinate.sampling.weighted import WeightedSampler
from pollinate.testing.sampler_conformance import check_sampler, sample_nodes


def _nodes(weights: list[float]) -> list[NodeInfo]:
    return [NodeInfo(i + 1, {"num-examples": w}) for i, w in enumerate(weights)]


def _inclusion(weights: list[float], k: int) -> list[float]:
    """Exact chance that each node is among ``k`` picks of successive sampling."""
    total = [0.0] * len(weights)
    for order in itertools.permutations(range(len(weights)), k):
        p, left = 1.0, sum(weights)
        for i in order:
            p *= weights[i] / left
            left -= weights[i]
        for i in order:
            total[i] += p
    return total


def _frequencies(
    sampler: WeightedSampler, nodes: list[NodeInfo], k: int, draws: int
) -> Counter[int]:
    rng = np.random.default_rng(2024)
    return Counter(
        node_id
        for _ in range(draws)
        for node_id in sampler.sample(nodes, k, server_round=1, rng=rng)
    )


def test_passes_the_sampler_conformance_check() -> None:
    check_sampler(WeightedSampler, num_qualifying=16)


def test_passes_the_conformance_check_with_learned_weights_only() -> None:
    def learned() -> WeightedSampler:
        sampler = WeightedSampler()
        for node in sample_nodes()[::2]:
            sampler.observe(NodeOutcome(node.node_id, 1, ok=True, metrics={"num-examples": 5}))
        return sampler

    bare = [NodeInfo(node.node_id) for node in sample_nodes()]
    check_sampler(learned, nodes=bare, num_qualifying=16)


def test_a_single_pick_is_proportional_to_weight() -> None:
    weights = [10.0, 20.0, 30.0, 40.0, 100.0]
    draws = 20_000

    counts = _frequencies(WeightedSampler(), _nodes(weights), 1, draws)

    for node_id, weight in enumerate(weights, start=1):
        expected = draws * weight / sum(weights)
        # Deterministic at this seed; 5 binomial standard deviations of slack.
        assert abs(counts[node_id] - expected) < 5 * np.sqrt(expected), (node_id, counts)


def test_several_picks_follow_successive_sampling_exactly() -> None:
    weights = [1.0, 2.0, 3.0, 4.0, 10.0]
    draws = 20_000

    counts = _frequencies(WeightedSampler(), _nodes(weights), 2, draws)

    exact = _inclusion(weights, 2)
    for node_id, p in enumerate(exact, start=1):
        expected = draws * p
        assert abs(counts[node_id] - expected) < 5 * np.sqrt(expected), (node_id, counts, exact)
    # The documented bias: the heaviest node is included less than 2 * w / W = 100%.
    assert exact[4] < 2 * weights[4] / sum(weights)


def test_nodes_of_weight_zero_never_qualify() -> None:
    nodes = _nodes([0, 5, 0, 5])
    rng = np.random.default_rng(0)

    picked = {
        i for _ in range(200) for i in WeightedSampler().sample(nodes, 2, server_round=1, rng=rng)
    }

    assert picked == {2, 4}
    with pytest.raises(NodeUnavailableError, match="only 2 of 4 nodes have a positive"):
        WeightedSampler().sample(nodes, 3, server_round=1, rng=rng)


def test_weights_come_from_attribute_then_learned_metric_then_the_mean() -> None:
    sampler = WeightedSampler()
    sampler.observe(NodeOutcome(2, 1, ok=True, metrics={"num-examples": 30}))
    sampler.observe(NodeOutcome(1, 1, ok=True, metrics={"num-examples": 999}))  # attribute wins
    sampler.observe(NodeOutcome(3, 1, ok=False, metrics={"num-examples": 999}))  # failed: ignored
    sampler.observe(NodeOutcome(3, 1, ok=True, metrics={"num-examples": -1}))  # invalid: ignored
    nodes = [NodeInfo(1, {"num-examples": 10}), NodeInfo(2), NodeInfo(3)]

    weights = sampler.weights(nodes)

    assert weights == {1: 10.0, 2: 30.0, 3: 20.0}
    assert sampler.learned == {1: 999.0, 2: 30.0}
    assert WeightedSampler(default=1.0).weights(nodes)[3] == 1.0
    assert WeightedSampler().weights([NodeInfo(5), NodeInfo(4)]) == {4: 1.0, 5: 1.0}


def test_a_custom_attribute() -> None:
    nodes = [NodeInfo(1, {"battery": 0.0}), NodeInfo(2, {"battery": 0.9})]

    picked = WeightedSampler("battery").sample(
        nodes, 1, server_round=1, rng=np.random.default_rng(0)
    )

    assert picked == [2]


@pytest.mark.parametrize("value", ["many", -3, float("nan"), True])
def test_a_bad_weight_attribute_is_a_config_error_naming_node_and_value(value: object) -> None:
    nodes = [NodeInfo(1, {"num-examples": 4}), NodeInfo(7, {"num-examples": value})]  # type: ignore[dict-item]

    with pytest.raises(ConfigError, match=r"node 7 has num-examples="):
        WeightedSampler().sample(nodes, 1, server_round=1, rng=np.random.default_rng(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attribute": ""}, "attribute"),
        ({"default": -1.0}, "default"),
        ({"default": float("inf")}, "default"),
    ],
)
def test_bad_settings_are_config_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        WeightedSampler(**kwargs)  # type: ignore[arg-type]


def test_it_is_a_learning_sampler() -> None:
    assert isinstance(WeightedSampler(), LearningSampler)
