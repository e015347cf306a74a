"""Uniform sampling without replacement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

import numpy as np

from pollinate.errors import NodeUnavailableError
from pollinate.sampling.base import NodeInfo

__all__ = ["UniformSampler"]


@final
class UniformSampler:
    """Every available node is equally likely; no node is picked twice in a round.

    Every known node is a candidate, reachable or not (availability-aware sampling
    is its own sampler). Node ids are sorted before drawing, so the choice depends
    only on the set of nodes and the generator's state, not on the order a runtime
    lists them.

    Examples
    --------
    >>> import numpy as np
    >>> nodes = [NodeInfo(i) for i in (5, 1, 9, 3)]
    >>> UniformSampler().sample(nodes, 2, server_round=1, rng=np.random.default_rng(0))
    [5, 9]
    """

    def sample(
        self,
        nodes: Sequence[NodeInfo],
        num_nodes: int,
        *,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Draw ``num_nodes`` distinct nodes uniformly at random."""
        candidates = sorted({node.node_id for node in nodes})
        if not 0 <= num_nodes <= len(candidates):
            raise NodeUnavailableError(
                f"cannot sample {num_nodes} nodes from {len(candidates)} known ones"
            )
        picked = rng.choice(len(candidates), size=num_nodes, replace=False)
        return [candidates[int(i)] for i in picked]
