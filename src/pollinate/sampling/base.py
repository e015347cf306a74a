"""The Sampler plug-in: which nodes take part in a round."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from pollinate.records import ConfigValue

__all__ = [
    "FilteringSampler",
    "LearningSampler",
    "NodeInfo",
    "NodeOutcome",
    "Sampler",
    "eligible",
    "qualifies",
]


@dataclass(frozen=True)
class NodeInfo:
    """What the server knows about a node when it samples.

    Attributes
    ----------
    node_id:
        The node.
    attributes:
        Public facts the node declared (region, hardware, number of examples...). In
        simulation these are the node's ``node_config``.
    online:
        ``False`` when the server knows the node cannot be reached right now.
    busy:
        ``True`` when the node is still working on an earlier instruction.
    """

    node_id: int
    attributes: Mapping[str, ConfigValue] = field(default_factory=dict)
    online: bool = True
    busy: bool = False


@dataclass(frozen=True)
class NodeOutcome:
    """How one node did on one instruction; fed back to learning samplers."""

    node_id: int
    server_round: int
    ok: bool
    seconds: float | None = None
    metrics: Mapping[str, float | int | list[int] | list[float]] = field(default_factory=dict)
    #: "train" or "evaluate": which phase of the round the instruction belonged to.
    phase: str = "train"


@runtime_checkable
class Sampler(Protocol):
    """Chooses ``num_nodes`` of the known nodes for a round.

    Implementations are pure functions of their arguments and their own visible state:
    all randomness comes from ``rng``, so the same seed picks the same nodes in the same
    order on every runtime. When too few nodes qualify, raise
    :class:`~pollinate.errors.NodeUnavailableError` saying why; the strategy then waits
    for the situation to change, up to its timeout.
    """

    def sample(
        self,
        nodes: Sequence[NodeInfo],
        num_nodes: int,
        *,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Return ``num_nodes`` distinct node ids, in the order to message them."""
        ...


@runtime_checkable
class LearningSampler(Sampler, Protocol):
    """A sampler that learns from how sampled nodes did (utility-based selection)."""

    def observe(self, outcome: NodeOutcome) -> None:
        """Record one node's result of one instruction."""
        ...


@runtime_checkable
class FilteringSampler(Sampler, Protocol):
    """A sampler that only ever picks nodes passing a test (availability, attributes...).

    Strategies size a round by the nodes that qualify, so ``fraction_train=1.0`` means
    every qualifying node, not every known one.
    """

    def qualifies(self, node: NodeInfo) -> bool:
        """Whether this sampler may pick ``node`` (including its inner samplers' tests)."""
        ...


def qualifies(sampler: Sampler, node: NodeInfo) -> bool:
    """``sampler.qualifies(node)`` for filtering samplers; ``True`` for the others."""
    return sampler.qualifies(node) if isinstance(sampler, FilteringSampler) else True


def eligible(sampler: Sampler, nodes: Sequence[NodeInfo]) -> list[NodeInfo]:
    """The nodes ``sampler`` may pick from."""
    return [node for node in nodes if qualifies(sampler, node)]
