"""The Sampler plug-in: which nodes take part in a round."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Sampler"]


@runtime_checkable
class Sampler(Protocol):
    """Chooses ``num_nodes`` of the available nodes for a round.

    Implementations are pure functions of their arguments and their own declared
    state: all randomness comes from ``rng``, so the same seed picks the same nodes in
    the same order on every runtime.
    """

    def sample(
        self,
        node_ids: Sequence[int],
        num_nodes: int,
        *,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Return ``num_nodes`` distinct ids from ``node_ids``, in the order to message them."""
        ...
