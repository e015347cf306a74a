"""Choosing nodes by what they are: by attribute, or by an explicit list of ids.

:class:`AttributeSampler` narrows the candidates and hands the rest to another
sampler, so "uniformly among the European nodes with a GPU" is
``AttributeSampler({"region": "eu", "gpu": True})``. :class:`ExplicitSampler` takes
no decision at all: it returns the nodes it was given, in its order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias, final

import numpy as np

from pollinate.errors import ConfigError, NodeUnavailableError
from pollinate.records import ConfigValue
from pollinate.sampling.base import LearningSampler, NodeInfo, NodeOutcome, Sampler, qualifies
from pollinate.sampling.uniform import UniformSampler

__all__ = ["AttributeSampler", "ExplicitSampler", "NodePredicate"]

#: Decides whether one node qualifies.
NodePredicate: TypeAlias = Callable[[NodeInfo], bool]


def _nodes_by_id(nodes: Sequence[NodeInfo]) -> dict[int, NodeInfo]:
    """The nodes keyed by id, in ascending id order, whatever order they were listed in."""
    found: dict[int, NodeInfo] = {}
    for node in nodes:
        seen = found.setdefault(node.node_id, node)
        if seen != node:
            raise ConfigError(
                f"node {node.node_id} is listed twice with different information "
                f"({seen!r} and {node!r})"
            )
    return dict(sorted(found.items()))


def _check_count(num_nodes: int) -> None:
    """Reject a negative number of nodes (a caller's bug, not a lack of nodes)."""
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, int) or num_nodes < 0:
        raise ConfigError(f"num_nodes must be an int >= 0, got {num_nodes!r}")


def _same(actual: ConfigValue | None, wanted: ConfigValue) -> bool:
    # ``True == 1`` in Python; an attribute filter must not confuse a flag with a count.
    if isinstance(actual, bool) != isinstance(wanted, bool):
        return False
    return actual == wanted


def _forward(sampler: Sampler, outcome: NodeOutcome) -> None:
    """Pass an outcome on to a wrapped sampler that learns from outcomes."""
    if isinstance(sampler, LearningSampler):
        sampler.observe(outcome)


@final
@dataclass(frozen=True)
class AttributeSampler:
    """Only nodes whose attributes match qualify; another sampler chooses among them.

    Parameters
    ----------
    where:
        Either a mapping ``attribute -> value`` (a node qualifies when it has every
        attribute with exactly that value; ``True`` does not match ``1``), or a
        predicate ``where(node) -> bool`` for anything else (ranges, sets of values,
        reachability). The mapping is copied, so later changes to it have no effect.
    then:
        Chooses among the qualifying nodes; uniform by default. Outcomes given to
        :meth:`observe` are passed on to it if it learns from them.

    Raises
    ------
    ConfigError
        If ``where`` is neither a mapping with string keys nor a callable, or ``then``
        is not a sampler.

    Examples
    --------
    >>> import numpy as np
    >>> nodes = [NodeInfo(i, {"region": "eu" if i % 2 else "us"}) for i in range(1, 9)]
    >>> sampler = AttributeSampler({"region": "eu"})
    >>> sampler.sample(nodes, 2, server_round=1, rng=np.random.default_rng(0))
    [5, 7]
    >>> big = AttributeSampler(lambda node: node.node_id > 6)
    >>> sorted(big.sample(nodes, 2, server_round=1, rng=np.random.default_rng(0)))
    [7, 8]
    """

    where: Mapping[str, ConfigValue] | NodePredicate
    then: Sampler = field(default_factory=UniformSampler)

    def __post_init__(self) -> None:
        if isinstance(self.where, Mapping):
            bad = [key for key in self.where if not isinstance(key, str)]
            if bad:
                raise ConfigError(f"where must map attribute names (str) to values, got {bad!r}")
            object.__setattr__(self, "where", dict(self.where))
        elif not callable(self.where):
            raise ConfigError(
                "where must be a mapping of attribute values or a callable(NodeInfo) -> bool, "
                f"got {self.where!r}"
            )
        if not isinstance(self.then, Sampler):
            raise ConfigError(f"then must be a Sampler, got {self.then!r}")

    def qualifies(self, node: NodeInfo) -> bool:
        """Whether ``node`` passes the ``where`` filter (and ``then``'s own test, if any)."""
        if isinstance(self.where, Mapping):
            passes = all(
                key in node.attributes and _same(node.attributes[key], value)
                for key, value in self.where.items()
            )
        else:
            passes = bool(self.where(node))
        return passes and qualifies(self.then, node)

    def sample(
        self,
        nodes: Sequence[NodeInfo],
        num_nodes: int,
        *,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Filter ``nodes`` with ``where``, then let ``then`` choose ``num_nodes`` of them.

        Raises
        ------
        NodeUnavailableError
            If fewer than ``num_nodes`` nodes qualify.
        """
        _check_count(num_nodes)
        known = _nodes_by_id(nodes)
        candidates = [node for node in known.values() if self.qualifies(node)]
        if num_nodes > len(candidates):
            raise NodeUnavailableError(
                f"only {len(candidates)} of {len(known)} nodes match where={self.where!r}; "
                f"cannot sample {num_nodes}"
            )
        return self.then.sample(candidates, num_nodes, server_round=server_round, rng=rng)

    def observe(self, outcome: NodeOutcome) -> None:
        """Pass ``outcome`` on to ``then`` if it learns from outcomes."""
        _forward(self.then, outcome)


@final
class ExplicitSampler:
    """Exactly the nodes named, in the order named; no randomness.

    Asked for ``k`` nodes, it returns the first ``k`` ids of its list. Those nodes
    must be among the candidates; if some are not (not connected, or filtered out by
    a wrapping sampler) it raises :class:`~pollinate.errors.NodeUnavailableError`
    naming them, and a strategy waits for them to come, up to its timeout.

    To send every round to exactly these nodes, ask for ``len(node_ids)`` nodes
    (with FedAvg, ``min_train_nodes=len(node_ids)`` and a ``fraction_train`` that
    asks for no more than that).

    Parameters
    ----------
    node_ids:
        Distinct node ids, in the order to message them. Copied.

    Raises
    ------
    ConfigError
        If ``node_ids`` is empty, has an id twice, or has something that is not an int.

    Examples
    --------
    >>> import numpy as np
    >>> nodes = [NodeInfo(i) for i in range(1, 9)]
    >>> ExplicitSampler([7, 2, 5]).sample(nodes, 3, server_round=1, rng=np.random.default_rng())
    [7, 2, 5]
    """

    def __init__(self, node_ids: Sequence[int]) -> None:
        if isinstance(node_ids, (str, bytes)) or not isinstance(node_ids, Sequence):
            raise ConfigError(f"node_ids must be a sequence of ints, got {node_ids!r}")
        ids = tuple(node_ids)
        if not ids:
            raise ConfigError("node_ids must name at least one node, got an empty sequence")
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int)]
        if bad:
            raise ConfigError(f"node_ids must be ints, got {bad!r}")
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise ConfigError(f"node_ids must be distinct; {repeated} appear more than once")
        self._node_ids = ids

    @property
    def node_ids(self) -> tuple[int, ...]:
        """The nodes to message, in order."""
        return self._node_ids

    def __repr__(self) -> str:
        return f"ExplicitSampler({list(self._node_ids)!r})"

    def qualifies(self, node: NodeInfo) -> bool:
        """Whether ``node`` is on the list."""
        return node.node_id in self._node_ids

    def sample(
        self,
        nodes: Sequence[NodeInfo],
        num_nodes: int,
        *,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """The first ``num_nodes`` listed ids; ``rng`` is not used.

        Raises
        ------
        NodeUnavailableError
            If more nodes are asked for than are listed, or some of the ids to return
            are not among ``nodes`` (the message lists them).
        """
        _check_count(num_nodes)
        if num_nodes > len(self._node_ids):
            raise NodeUnavailableError(
                f"cannot sample {num_nodes} nodes: the explicit list names only "
                f"{len(self._node_ids)} ({list(self._node_ids)})"
            )
        chosen = list(self._node_ids[:num_nodes])
        known = {node.node_id for node in nodes}
        missing = [i for i in chosen if i not in known]
        if missing:
            raise NodeUnavailableError(
                f"explicitly listed node(s) {missing} are not among the {len(known)} "
                "candidate nodes (not connected, or filtered out)"
            )
        return chosen
