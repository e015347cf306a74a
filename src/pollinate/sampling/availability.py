"""Availability-aware sampling: never pick a node that is known to be unreachable.

Messaging an offline node costs a round a failed reply (or a whole deadline); a busy
node is still working on an earlier instruction and would reply late. The grid
reports both in :class:`~pollinate.sampling.NodeInfo` (simulations draw them from
the nodes' ``sim-unavailable-p`` profiles), and :class:`AvailabilitySampler` drops
those nodes before another sampler chooses. It composes: ``AvailabilitySampler(
UtilitySampler())`` is Oort over the reachable nodes, as in the paper, where only
the nodes checked in for a round are candidates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import final

import numpy as np

from pollinate.errors import ConfigError, NodeUnavailableError
from pollinate.sampling.base import NodeInfo, NodeOutcome, Sampler, qualifies
from pollinate.sampling.select import _check_count, _forward, _nodes_by_id
from pollinate.sampling.uniform import UniformSampler

__all__ = ["AvailabilitySampler"]


@final
@dataclass(frozen=True)
class AvailabilitySampler:
    """Drops the nodes known to be offline (and busy ones), then lets ``then`` choose.

    Parameters
    ----------
    then:
        Chooses among the reachable nodes; uniform by default. Outcomes given to
        :meth:`observe` are passed on to it if it learns from them.
    skip_busy:
        Also drop nodes still busy with an earlier instruction (default). With
        ``False``, busy nodes qualify and their reply waits for their current work.

    Raises
    ------
    ConfigError
        If ``then`` is not a sampler or ``skip_busy`` is not a bool.

    Examples
    --------
    >>> import numpy as np
    >>> nodes = [NodeInfo(1), NodeInfo(2, online=False), NodeInfo(3, busy=True), NodeInfo(4)]
    >>> sorted(AvailabilitySampler().sample(nodes, 2, server_round=1,
    ...                                     rng=np.random.default_rng(0)))
    [1, 4]
    """

    then: Sampler = field(default_factory=UniformSampler)
    _: KW_ONLY
    skip_busy: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.then, Sampler):
            raise ConfigError(f"then must be a Sampler, got {self.then!r}")
        if not isinstance(self.skip_busy, bool):
            raise ConfigError(f"skip_busy must be a bool, got {self.skip_busy!r}")

    def qualifies(self, node: NodeInfo) -> bool:
        """Whether ``node`` is online (and, with ``skip_busy``, idle), and passes ``then``."""
        return node.online and not (self.skip_busy and node.busy) and qualifies(self.then, node)

    def sample(
        self,
        nodes: Sequence[NodeInfo],
        num_nodes: int,
        *,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Let ``then`` choose ``num_nodes`` of the reachable nodes.

        Raises
        ------
        NodeUnavailableError
            If fewer than ``num_nodes`` nodes are reachable; the message counts the
            offline and busy ones.
        """
        _check_count(num_nodes)
        known = list(_nodes_by_id(nodes).values())
        candidates = [node for node in known if self.qualifies(node)]
        if num_nodes > len(candidates):
            offline = sum(1 for node in known if not node.online)
            busy = sum(1 for node in known if node.online and node.busy)
            reasons = f"{offline} offline" + (f", {busy} busy" if self.skip_busy else "")
            raise NodeUnavailableError(
                f"only {len(candidates)} of {len(known)} nodes are reachable ({reasons}); "
                f"cannot sample {num_nodes}"
            )
        return self.then.sample(candidates, num_nodes, server_round=server_round, rng=rng)

    def observe(self, outcome: NodeOutcome) -> None:
        """Pass ``outcome`` on to ``then`` if it learns from outcomes."""
        _forward(self.then, outcome)
