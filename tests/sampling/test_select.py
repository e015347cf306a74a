from __future__ import annotations

import numpy as np
import pytest

from pollinate.errors import ConfigError, NodeUnavailableError
from pollinate.records import ArrayRecord
from pollinate.sampling.base import LearningSampler, NodeInfo, NodeOutcome
from pollinate.sampling.select import AttributeSampler, ExplicitSampler
from pollinate.sampling.uniform import UniformSampler
from pollinate.sampling.utility import UtilitySampler
from pollinate.sampling.weighted import WeightedSampler
from pollinate.strategy import FedAvg
from pollinate.testing.clock import ManualClock
from pollinate.testing.fakes import FakeGrid, linear_node
from pollinate.testing.sampler_conformance import check_sampler, sample_nodes


def _model() -> ArrayRecord:
    return ArrayRecord({"w": np.zeros(2, np.float32)})


# -- AttributeSampler ----------------------------------------------------------------
def test_attribute_sampler_passes_the_conformance_check() -> None:
    check_sampler(lambda: AttributeSampler({"region": "eu"}), num_qualifying=8)
    check_sampler(
        lambda: AttributeSampler(lambda n: int(n.attributes["num-examples"]) > 100),  # type: ignore[arg-type]
        num_qualifying=6,
    )
    check_sampler(
        lambda: AttributeSampler({"region": "us"}, then=WeightedSampler()), num_qualifying=8
    )


def test_attribute_sampler_only_returns_matching_nodes() -> None:
    nodes = sample_nodes()
    eu = {n.node_id for n in nodes if n.attributes["region"] == "eu"}
    sampler = AttributeSampler({"region": "eu"})
    rng = np.random.default_rng(0)

    picked = [sampler.sample(nodes, 4, server_round=1, rng=rng) for _ in range(200)]

    assert all(set(p) <= eu for p in picked)
    assert set().union(*picked) == eu  # and every matching node gets its chance


def test_attribute_sampler_needs_every_attribute_with_exactly_that_value() -> None:
    nodes = [
        NodeInfo(1, {"gpu": True, "region": "eu"}),
        NodeInfo(2, {"gpu": 1, "region": "eu"}),  # 1 is not True
        NodeInfo(3, {"region": "eu"}),  # no gpu attribute
        NodeInfo(4, {"gpu": True, "region": "us"}),
    ]
    sampler = AttributeSampler({"gpu": True, "region": "eu"})

    assert [n.node_id for n in nodes if sampler.qualifies(n)] == [1]
    assert sampler.sample(nodes, 1, server_round=1, rng=np.random.default_rng(0)) == [1]


def test_attribute_sampler_says_how_many_match_when_too_few_do() -> None:
    with pytest.raises(
        NodeUnavailableError, match=r"only 8 of 16 nodes match where=\{'region': 'eu'\}"
    ):
        AttributeSampler({"region": "eu"}).sample(
            sample_nodes(), 9, server_round=1, rng=np.random.default_rng(0)
        )


def test_attribute_sampler_copies_where_and_forwards_outcomes() -> None:
    where = {"region": "eu"}
    learner = UtilitySampler()
    sampler = AttributeSampler(where, then=learner)
    where["region"] = "us"

    sampler.observe(NodeOutcome(3, 1, ok=True, metrics={"num-examples": 5, "train-loss": 1.0}))

    assert sampler.where == {"region": "eu"}
    assert learner.statistical_utility == {3: 5.0}
    assert isinstance(sampler, LearningSampler)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"where": 3}, "where must be"),
        ({"where": {1: "x"}}, "attribute names"),
        ({"where": {}, "then": 3}, "then"),
    ],
)
def test_attribute_sampler_bad_settings_are_config_errors(
    kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        AttributeSampler(**kwargs)  # type: ignore[arg-type]


# -- ExplicitSampler -----------------------------------------------------------------
def test_explicit_sampler_passes_the_conformance_check() -> None:
    check_sampler(lambda: ExplicitSampler([45, 3, 17]), num_qualifying=3)


def test_explicit_sampler_returns_the_listed_nodes_in_the_listed_order() -> None:
    nodes = [NodeInfo(i) for i in range(1, 11)]
    sampler = ExplicitSampler([9, 2, 5])

    for seed in range(5):
        rng = np.random.default_rng(seed)
        assert sampler.sample(nodes, 3, server_round=seed + 1, rng=rng) == [9, 2, 5]
    assert sampler.sample(nodes, 2, server_round=1, rng=np.random.default_rng(0)) == [9, 2]


def test_explicit_sampler_names_the_unknown_nodes() -> None:
    nodes = [NodeInfo(i) for i in range(1, 6)]

    with pytest.raises(NodeUnavailableError, match=r"node\(s\) \[7, 12\] are not among the 5"):
        ExplicitSampler([7, 1, 12]).sample(nodes, 3, server_round=1, rng=np.random.default_rng(0))
    with pytest.raises(NodeUnavailableError, match=r"names only 3 \(\[7, 1, 12\]\)"):
        ExplicitSampler([7, 1, 12]).sample(nodes, 4, server_round=1, rng=np.random.default_rng(0))


@pytest.mark.parametrize(
    ("node_ids", "match"),
    [
        ([], "at least one"),
        ([1, 2, 1], r"\[1\] appear more than once"),
        ([1, "2"], "ints"),
        ("12", "sequence"),
    ],
)
def test_explicit_sampler_bad_lists_are_config_errors(node_ids: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ExplicitSampler(node_ids)  # type: ignore[arg-type]


def test_explicit_sampler_drives_fedavg_to_exactly_those_nodes() -> None:
    grid = FakeGrid(linear_node, node_ids=range(1, 11))
    strategy = FedAvg(
        fraction_train=0.3,  # asks for 3 of the 10 nodes: the 3 listed
        fraction_evaluate=0.0,
        min_train_nodes=3,
        sampler=ExplicitSampler([8, 3, 6]),
        rng=np.random.default_rng(0),
    )

    strategy.start(grid, initial_arrays=_model(), num_rounds=2)

    assert [m.metadata.dst_node_id for m in grid.sent] == [8, 3, 6, 8, 3, 6]


# -- FedAvg waits for a sampler, then fails clearly ---------------------------------
def test_fedavg_fails_with_node_unavailable_after_wait_timeout_when_no_node_qualifies() -> None:
    clock = ManualClock()
    grid = FakeGrid(linear_node, node_ids=range(1, 11), clock=clock)
    strategy = FedAvg(
        min_train_nodes=1,
        wait_timeout=30.0,
        sampler=AttributeSampler({"region": "mars"}),
        rng=np.random.default_rng(0),
    )

    with pytest.raises(
        NodeUnavailableError, match=r"round 1: .*within 30 s: only 0 of 10 nodes match"
    ):
        strategy.start(grid, initial_arrays=_model(), num_rounds=1)

    assert clock.now() >= 30.0  # it waited the whole timeout (without sleeping)...
    assert clock.now() < 31.0  # ...and no longer
    assert grid.sent == []


def test_uniform_default_is_used_after_filtering() -> None:
    sampler = AttributeSampler({"region": "eu"})
    assert isinstance(sampler.then, UniformSampler)
