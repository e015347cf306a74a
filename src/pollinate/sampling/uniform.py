"""Uniform sampling without replacement."""

from __future__ import annotations

from collections.abc import Sequence
from typing import final

import numpy as np

from pollinate.errors import ConfigError

__all__ = ["UniformSampler"]


@final
class UniformSampler:
    """Every available node is equally likely; no node is picked twice in a round.

    Node ids are sorted before drawing, so the choice depends only on the set of
    available nodes and the generator's state, not on the order a runtime lists them.

    Examples
    --------
    >>> import numpy as np
    >>> UniformSampler().sample([5, 1, 9, 3], 2, server_round=1, rng=np.random.default_rng(0))
    [5, 9]
    """

    def sample(
        self,
        node_ids: Sequence[int],
        num_nodes: int,
        *,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Draw ``num_nodes`` distinct nodes uniformly at random."""
        candidates = sorted(set(node_ids))
        if not 0 <= num_nodes <= len(candidates):
            raise ConfigError(
                f"cannot sample {num_nodes} nodes from {len(candidates)} available ones"
            )
        picked = rng.choice(len(candidates), size=num_nodes, replace=False)
        return [candidates[int(i)] for i in picked]
