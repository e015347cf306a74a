from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from pollinate.errors import NodeUnavailableError
from pollinate.sampling import NodeInfo, Sampler, UniformSampler


def test_same_seed_same_nodes_same_order_whatever_the_listing_order() -> None:
    nodes = [NodeInfo(i) for i in range(1, 51)]
    a = UniformSampler().sample(nodes, 10, server_round=1, rng=np.random.default_rng(3))
    b = UniformSampler().sample(nodes[::-1], 10, server_round=1, rng=np.random.default_rng(3))
    assert a == b and len(set(a)) == 10 and set(a) <= {n.node_id for n in nodes}


def test_is_uniform() -> None:
    rng = np.random.default_rng(0)
    counts = Counter(
        n
        for _ in range(2000)
        for n in UniformSampler().sample(
            [NodeInfo(i) for i in range(10)], 3, server_round=1, rng=rng
        )
    )
    expected = 2000 * 3 / 10
    assert all(abs(c - expected) < 0.1 * expected for c in counts.values())


def test_too_many_is_a_clear_error() -> None:
    with pytest.raises(NodeUnavailableError, match="cannot sample 4 nodes from 3"):
        UniformSampler().sample(
            [NodeInfo(i) for i in (1, 2, 3)], 4, server_round=1, rng=np.random.default_rng(0)
        )


def test_satisfies_the_protocol() -> None:
    assert isinstance(UniformSampler(), Sampler)
