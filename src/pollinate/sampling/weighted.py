"""Weighted sampling without replacement: bigger nodes are picked more often.

The draw is Efraimidis and Spirakis' A-ES scheme: every candidate gets the key
``u ** (1 / w)`` for a uniform ``u`` and its weight ``w``, and the ``k`` largest keys
win, in key order. That is exactly *successive sampling*: pick one node with
probability proportional to its weight, remove it, pick the next among the rest, and
so on. It costs one uniform draw per candidate and a sort, and the result does not
depend on the order nodes are listed in (they are sorted by id first).

Know its bias: only the first pick is exactly proportional to weight. The chance
that node ``i`` is *among* the ``k`` picked is not ``k * w_i / sum(w)`` (that can
exceed 1): heavy nodes are included less than proportionally and light ones more.
Also note that FedAvg weights each reply by its example count again, so sampling by
example count and then averaging by example count counts size twice; Li et al.
(ICLR 2020) show that sampling *with* replacement by ``p_k`` followed by a plain
mean is the unbiased combination.

References
----------
.. [1] P. S. Efraimidis and P. G. Spirakis, "Weighted random sampling with a
   reservoir", Information Processing Letters 97(5), 2006,
   https://doi.org/10.1016/j.ipl.2005.11.003
.. [2] X. Li et al., "On the Convergence of FedAvg on Non-IID Data", ICLR 2020,
   https://arxiv.org/abs/1907.02189
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import final

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import ConfigError, NodeUnavailableError
from pollinate.records import keys
from pollinate.sampling.base import NodeInfo, NodeOutcome
from pollinate.sampling.select import _check_count, _nodes_by_id

__all__ = ["WeightedSampler"]


def _weighted_order(weights: NDArray[np.float64], rng: np.random.Generator) -> NDArray[np.intp]:
    """Indices in A-ES key order: positive weights by descending key, then zeros at random."""
    u = 1.0 - rng.random(len(weights))  # in (0, 1], so log(u) is finite
    positive = weights > 0
    # log(u ** (1 / w)) = log(u) / w orders like the key itself, without underflow.
    log_keys = np.log(u) / np.where(positive, weights, 1.0)
    # lexsort: the last key is the primary one. Positives first, larger key first, then index.
    return np.lexsort((np.arange(len(weights)), -log_keys, ~positive))


def _number(value: object) -> float | None:
    """``value`` as a finite float >= 0, or None if it is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


@final
class WeightedSampler:
    """Picks nodes with probability proportional to a numeric weight, without replacement.

    See the module docstring for the scheme (Efraimidis-Spirakis keys, i.e.
    successive sampling) and its bias.

    A node's weight is, in order of precedence:

    1. its attribute ``attribute`` (in simulation, its ``node_config``), which must
       then be a finite number >= 0;
    2. the last value of the reply metric of the same name it reported (learned by
       :meth:`observe`; kept in :attr:`learned`), so that with the default
       ``"num-examples"`` the sampler learns each node's example count from its
       first successful reply;
    3. ``default``, or, when ``default`` is None, the mean weight of the candidates
       whose weight is known (1 when none is), so new nodes get an average chance.

    Nodes of weight 0 never qualify.

    Parameters
    ----------
    attribute:
        Name of the node attribute and reply metric that weighs a node.
    default:
        Weight of a node for which neither is known (see above).

    Raises
    ------
    ConfigError
        If ``attribute`` is not a non-empty string or ``default`` is not a finite
        number >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> nodes = [NodeInfo(i, {"num-examples": 10 * i}) for i in range(1, 6)]
    >>> WeightedSampler().sample(nodes, 2, server_round=1, rng=np.random.default_rng(0))
    [4, 3]
    """

    def __init__(self, attribute: str = keys.NUM_EXAMPLES, *, default: float | None = None) -> None:
        if not isinstance(attribute, str) or not attribute:
            raise ConfigError(f"attribute must be a non-empty string, got {attribute!r}")
        if default is not None and _number(default) is None:
            raise ConfigError(f"default must be a finite number >= 0 or None, got {default!r}")
        self.attribute = attribute
        self.default = None if default is None else float(default)
        #: Node id -> the last valid ``attribute`` metric it replied with.
        self.learned: dict[int, float] = {}

    def __repr__(self) -> str:
        return f"WeightedSampler(attribute={self.attribute!r}, default={self.default!r})"

    def weights(self, nodes: Sequence[NodeInfo]) -> dict[int, float]:
        """Each node's weight (node id -> weight, ascending ids), resolved as documented.

        Raises
        ------
        ConfigError
            If a node's ``attribute`` is present but not a finite number >= 0.
        """
        known: dict[int, float | None] = {}
        for node_id, node in _nodes_by_id(nodes).items():
            if self.attribute in node.attributes:
                value = node.attributes[self.attribute]
                weight = _number(value)
                if weight is None:
                    raise ConfigError(
                        f"node {node_id} has {self.attribute}={value!r}; a sampling weight "
                        "must be a finite number >= 0"
                    )
                known[node_id] = weight
            else:
                known[node_id] = self.learned.get(node_id)
        fallback = self.default
        if fallback is None:
            found = [w for w in known.values() if w is not None]
            fallback = sum(found) / len(found) if found else 1.0
        return {node_id: fallback if w is None else w for node_id, w in known.items()}

    def sample(
        self,
        nodes: Sequence[NodeInfo],
        num_nodes: int,
        *,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Draw ``num_nodes`` distinct nodes, each pick proportional to weight among the rest.

        Raises
        ------
        NodeUnavailableError
            If fewer than ``num_nodes`` nodes have a positive weight.
        ConfigError
            If a node's weight attribute is not a finite number >= 0.
        """
        _check_count(num_nodes)
        weights = self.weights(nodes)
        positive = sum(1 for w in weights.values() if w > 0)
        if num_nodes > positive:
            raise NodeUnavailableError(
                f"only {positive} of {len(weights)} nodes have a positive {self.attribute!r} "
                f"weight; cannot sample {num_nodes}"
            )
        ids = list(weights)
        order = _weighted_order(np.fromiter(weights.values(), np.float64, len(ids)), rng)
        return [ids[int(i)] for i in order[:num_nodes]]

    def observe(self, outcome: NodeOutcome) -> None:
        """Learn a node's weight from the ``attribute`` metric of a successful reply.

        Failed replies, and metrics that are not a finite number >= 0, are ignored.
        """
        if not outcome.ok:
            return
        weight = _number(outcome.metrics.get(self.attribute))
        if weight is not None:
            self.learned[outcome.node_id] = weight
