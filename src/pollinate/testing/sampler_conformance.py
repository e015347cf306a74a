"""The conformance check every Sampler must pass.

Call :func:`check_sampler` from a test with a factory; it raises AssertionError
naming the broken promise, like trio's ``check_one_way_stream``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np

from pollinate.errors import NodeUnavailableError
from pollinate.sampling.base import NodeInfo, Sampler

__all__ = ["check_sampler", "sample_nodes"]


def sample_nodes() -> list[NodeInfo]:
    """The default federation of :func:`check_sampler`: 16 nodes with gappy ids.

    Ids are ``3, 10, 17, ...`` (so index/id confusions show), every node has
    ``num-examples`` (``10 * (position + 1)``) and ``region`` (``"eu"`` / ``"us"``
    alternating), nodes at positions 2, 7 and 11 are offline and at 4 and 13 busy:
    11 nodes are online and idle.
    """
    return [
        NodeInfo(
            7 * position + 3,
            attributes={"num-examples": 10 * (position + 1), "region": ("eu", "us")[position % 2]},
            online=position not in (2, 7, 11),
            busy=position in (4, 13),
        )
        for position in range(16)
    ]


def _call(
    sampler: Sampler, nodes: Sequence[NodeInfo], num_nodes: int, seed: int, server_round: int
) -> list[int]:
    return sampler.sample(
        nodes, num_nodes, server_round=server_round, rng=np.random.default_rng(seed)
    )


def check_sampler(
    factory: Callable[[], Sampler],
    *,
    nodes: Sequence[NodeInfo] | None = None,
    num_nodes: int = 3,
    num_qualifying: int | None = None,
) -> None:
    """Check the samplers built by ``factory()`` for the promises of the Sampler protocol.

    - it is a :class:`~pollinate.sampling.Sampler`;
    - the same rng seed gives the same ids in the same order, whatever order the
      nodes are listed in;
    - it returns exactly ``num_nodes`` distinct ``int`` ids, all of the given nodes;
    - it does not mutate its inputs;
    - asking for more nodes than qualify raises
      :class:`~pollinate.errors.NodeUnavailableError`, not something else;
    - ``num_nodes=0`` gives ``[]``.

    Parameters
    ----------
    factory:
        Builds a fresh sampler; called several times. To check a learning sampler
        in a learned state, let the factory feed it outcomes before returning it.
    nodes:
        The candidates; :func:`sample_nodes` by default.
    num_nodes:
        How many nodes to ask for (at most as many as qualify).
    num_qualifying:
        How many of ``nodes`` qualify, if known: then asking for exactly that many
        must work and one more must raise. Without it, one more than all the nodes
        must raise.
    """
    given = list(sample_nodes() if nodes is None else nodes)
    pristine = copy.deepcopy(given)
    known = {node.node_id for node in given}
    shuffled = [given[int(i)] for i in np.random.default_rng(12345).permutation(len(given))]

    assert isinstance(factory(), Sampler), "the factory must build a Sampler (a .sample method)"
    for seed in (0, 1, 2):
        for server_round in (1, 2, 5):
            first = _call(factory(), given, num_nodes, seed, server_round)
            assert all(type(i) is int for i in first), (
                f"node ids must be plain ints, got {[type(i).__name__ for i in first]}"
            )
            assert len(first) == num_nodes, f"asked for {num_nodes} nodes, got {len(first)}"
            assert len(set(first)) == len(first), f"a node was picked twice: {first}"
            assert set(first) <= known, f"picked unknown nodes {sorted(set(first) - known)}"
            again = _call(factory(), given, num_nodes, seed, server_round)
            assert again == first, (
                f"same seed must pick the same nodes in the same order: {first} then {again}"
            )
            for listing, name in ((given[::-1], "reversed"), (shuffled, "shuffled")):
                other = _call(factory(), listing, num_nodes, seed, server_round)
                assert other == first, (
                    f"the choice must not depend on the order nodes are listed in: {first} "
                    f"with the nodes as given, {other} with them {name}"
                )
    assert given == pristine, "the sampler mutated the nodes it was given"

    assert _call(factory(), given, 0, 0, 1) == [], "num_nodes=0 must give []"

    too_many = len(given) + 1
    if num_qualifying is not None:
        full = _call(factory(), given, num_qualifying, 0, 1)
        assert len(set(full)) == num_qualifying, (
            f"asked for all {num_qualifying} qualifying nodes, got {full}"
        )
        too_many = num_qualifying + 1
    try:
        _call(factory(), given, too_many, 0, 1)
    except NodeUnavailableError:
        pass
    except Exception as exc:
        raise AssertionError(
            f"asking for {too_many} nodes when fewer qualify must raise NodeUnavailableError, "
            f"not {type(exc).__name__}: {exc}"
        ) from exc
    else:
        raise AssertionError(
            f"asking for {too_many} nodes when fewer qualify must raise NodeUnavailableError"
        )
    assert given == pristine, "the sampler mutated the nodes it was given"
