"""Utility-based sampling in the spirit of Oort: prefer nodes that are useful and fast.

Oort (Lai et al., OSDI 2021) treats node selection as a multi-armed bandit. A node
that has taken part has a *utility*: how much its data would move the model
(statistical utility, large when it has many examples with a high loss) discounted
when it would make the round wait (system utility). Each round a share ``epsilon``
of the picks *explores* nodes never heard from, and the rest *exploit* the known
utilities. ``epsilon`` decays as the federation becomes known.

How this implementation maps the paper (Algorithm 1 and Section 4):

- Statistical utility ``|B_i| * sqrt(mean_{k in B_i} loss_k ** 2)`` needs each
  sample's loss; a reply carries only ``num-examples`` and the mean ``train-loss``,
  so we use ``num_examples * |train_loss|``. That is a lower bound (the root mean
  square is at least the mean) and equals it when a node's losses are alike. A
  ClientApp that reports the root mean square loss under its own metric name gets
  the exact value with ``loss_key=...``.
- Utilities are capped at their 95th percentile and scaled by that cap, so that one
  outlier does not flatten everybody else (Oort's implementation also rescales them)
  and the staleness bonus is on a known scale.
- Staleness bonus ``sqrt(staleness * log(R) / L_i)``, ``R`` the current round and
  ``L_i`` the round of node ``i``'s last reply, added to the scaled utility; it
  grows for nodes not heard from for a long time.
- System penalty: a node slower than the preferred round duration ``T`` has its
  score multiplied by ``(T / t_i) ** alpha``. ``T`` is fixed, or a quantile of the
  durations seen so far (a fixed stand-in for the paper's pacer, which moves ``T``
  when utility stalls; the pacer is not implemented).
- Exploitation admits every explored node whose score is at least ``cutoff`` times
  the k-th best score (the paper's c = 95%), then samples among them with
  probability proportional to score, without replacement.
- Exploration samples uniformly among unexplored nodes (the paper prefers faster
  ones when device speed is known in advance; here it is not).
- Not implemented: the participation blacklist and robustness to corrupted losses.

References
----------
.. [1] F. Lai, X. Zhu, H. V. Madhyastha and M. Chowdhury, "Oort: Efficient Federated
   Learning via Guided Participant Selection", OSDI 2021,
   https://www.usenix.org/conference/osdi21/presentation/lai
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import final

import numpy as np

from pollinate.errors import ConfigError, NodeUnavailableError
from pollinate.records import keys
from pollinate.sampling.base import NodeInfo, NodeOutcome
from pollinate.sampling.select import _check_count, _nodes_by_id
from pollinate.sampling.weighted import _number, _weighted_order

__all__ = ["UtilitySampler"]

#: Utilities above this quantile are capped before scaling (outlier robustness).
_UTILITY_CAP_QUANTILE = 0.95


def _in_range(name: str, value: object, low: float, high: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise ConfigError(f"{name} must be a number within [{low:g}, {high:g}], got {value!r}")
    return float(value)


@final
class UtilitySampler:
    """Oort's guided participant selection: exploit useful fast nodes, explore the rest.

    See the module docstring for the formulas and how they approximate the paper.
    The sampler learns through :meth:`observe` (a strategy calls it with every
    reply); all it knows is in :attr:`statistical_utility`, :attr:`duration`,
    :attr:`last_round` and :attr:`failures`, and all randomness comes from ``rng``.
    Wrap it in :class:`~pollinate.sampling.availability.AvailabilitySampler` to
    consider only reachable nodes, as Oort does.

    Parameters
    ----------
    exploration:
        The exploration share ``epsilon`` in round 1.
    exploration_decay:
        ``epsilon`` is multiplied by this every round...
    min_exploration:
        ...but never falls below this.
    cutoff:
        Exploitation admits the explored nodes scoring at least ``cutoff`` times the
        k-th best score (the paper's ``c``).
    alpha:
        Exponent of the penalty for nodes slower than the preferred duration.
    preferred_duration:
        The preferred round duration ``T`` in seconds; ``None`` uses the
        ``duration_quantile`` of the durations observed so far.
    duration_quantile:
        See ``preferred_duration``.
    staleness:
        The factor of the staleness bonus (0.1 in the paper).
    size_key, loss_key:
        Reply metrics with the node's number of examples and its training loss.
        Outcomes without both (evaluate replies, typically) are ignored.

    Raises
    ------
    ConfigError
        If a setting is out of range; the message names it.

    Examples
    --------
    >>> import numpy as np
    >>> sampler = UtilitySampler()
    >>> for node_id, loss, seconds in [(1, 2.0, 1.0), (2, 0.1, 1.0), (3, 2.0, 30.0)]:
    ...     sampler.observe(NodeOutcome(node_id, 1, ok=True, seconds=seconds,
    ...                     metrics={"num-examples": 100, "train-loss": loss}))
    >>> {k: round(v, 3) for k, v in sampler.scores([1, 2, 3], server_round=2).items()}
    {1: 1.263, 2: 0.313, 3: 0.001}
    >>> nodes = [NodeInfo(i) for i in range(1, 9)]
    >>> sampler.exploration_share(2)  # explore nodes 4 to 8 almost only, at first
    0.882
    >>> sampler.exploration_share(100)  # later, one pick in five explores
    0.2
    >>> sampler.sample(nodes, 3, server_round=100, rng=np.random.default_rng(0))
    [2, 1, 5]
    """

    def __init__(
        self,
        *,
        exploration: float = 0.9,
        exploration_decay: float = 0.98,
        min_exploration: float = 0.2,
        cutoff: float = 0.95,
        alpha: float = 2.0,
        preferred_duration: float | None = None,
        duration_quantile: float = 0.5,
        staleness: float = 0.1,
        size_key: str = keys.NUM_EXAMPLES,
        loss_key: str = keys.TRAIN_LOSS,
    ) -> None:
        self.exploration = _in_range("exploration", exploration, 0.0, 1.0)
        self.exploration_decay = _in_range("exploration_decay", exploration_decay, 0.0, 1.0)
        if self.exploration_decay == 0.0:
            raise ConfigError("exploration_decay must be within (0, 1], got 0")
        self.min_exploration = _in_range("min_exploration", min_exploration, 0.0, self.exploration)
        self.cutoff = _in_range("cutoff", cutoff, 0.0, 1.0)
        self.alpha = _in_range("alpha", alpha, 0.0, 100.0)
        self.preferred_duration = (
            None
            if preferred_duration is None
            else _in_range("preferred_duration", preferred_duration, 0.0, math.inf)
        )
        if self.preferred_duration == 0.0:
            raise ConfigError("preferred_duration must be positive seconds or None, got 0")
        self.duration_quantile = _in_range("duration_quantile", duration_quantile, 0.0, 1.0)
        self.staleness = _in_range("staleness", staleness, 0.0, math.inf)
        for name, key in (("size_key", size_key), ("loss_key", loss_key)):
            if not isinstance(key, str) or not key:
                raise ConfigError(f"{name} must be a non-empty string, got {key!r}")
        self.size_key = size_key
        self.loss_key = loss_key
        #: Node id -> its last statistical utility, ``num_examples * |train_loss|``.
        self.statistical_utility: dict[int, float] = {}
        #: Node id -> seconds its last successful reply took.
        self.duration: dict[int, float] = {}
        #: Node id -> the round of its last successful reply.
        self.last_round: dict[int, int] = {}
        #: Node id -> how many of its replies were errors.
        self.failures: dict[int, int] = {}

    def __repr__(self) -> str:
        return (
            f"UtilitySampler(exploration={self.exploration}, "
            f"exploration_decay={self.exploration_decay}, "
            f"min_exploration={self.min_exploration}, cutoff={self.cutoff}, alpha={self.alpha}, "
            f"preferred_duration={self.preferred_duration}, "
            f"duration_quantile={self.duration_quantile}, staleness={self.staleness})"
        )

    # -- the model ---------------------------------------------------------------------
    def exploration_share(self, server_round: int) -> float:
        """``epsilon`` in ``server_round``: decayed once per round, floored."""
        decayed = self.exploration * self.exploration_decay ** max(0, server_round - 1)
        return max(self.min_exploration, decayed)

    def round_duration(self) -> float:
        """The preferred round duration ``T`` (infinite while no duration is known)."""
        if self.preferred_duration is not None:
            return self.preferred_duration
        if not self.duration:
            return math.inf
        seen = np.fromiter(self.duration.values(), np.float64, len(self.duration))
        return float(np.quantile(seen, self.duration_quantile))

    def scores(self, node_ids: Sequence[int], *, server_round: int) -> dict[int, float]:
        """The exploitation score of each explored node of ``node_ids`` (ascending ids).

        Score = capped-and-scaled statistical utility + staleness bonus, times the
        speed penalty. Unexplored nodes have no score.
        """
        explored = sorted({i for i in node_ids if i in self.statistical_utility})
        if not explored:
            return {}
        utility = np.array([self.statistical_utility[i] for i in explored], np.float64)
        cap = float(np.quantile(utility, _UTILITY_CAP_QUANTILE))
        scaled = np.minimum(utility, cap) / cap if cap > 0 else np.zeros_like(utility)
        preferred = self.round_duration()
        log_round = math.log(max(1, server_round))
        scores: dict[int, float] = {}
        for node_id, value in zip(explored, scaled, strict=True):
            bonus = math.sqrt(self.staleness * log_round / max(1, self.last_round[node_id]))
            score = float(value) + bonus
            seconds = self.duration.get(node_id)
            if seconds is not None and seconds > preferred:
                score *= (preferred / seconds) ** self.alpha
            scores[node_id] = score
        return scores

    # -- the Sampler protocol ----------------------------------------------------------
    def sample(
        self,
        nodes: Sequence[NodeInfo],
        num_nodes: int,
        *,
        server_round: int,
        rng: np.random.Generator,
    ) -> list[int]:
        """Pick ``num_nodes`` nodes: exploited ones first (best first), then explored ones.

        About ``epsilon * num_nodes`` (rounded) picks go to unexplored nodes, fewer if
        there are not that many, more if too few nodes are explored. Choosing does not
        change the sampler's state; only :meth:`observe` does.

        Raises
        ------
        NodeUnavailableError
            If fewer than ``num_nodes`` nodes are given.
        """
        _check_count(num_nodes)
        ids = list(_nodes_by_id(nodes))
        if num_nodes > len(ids):
            raise NodeUnavailableError(
                f"cannot sample {num_nodes} nodes from {len(ids)} known ones"
            )
        scores = self.scores(ids, server_round=server_round)
        unexplored = [i for i in ids if i not in scores]
        wanted = math.floor(self.exploration_share(server_round) * num_nodes + 0.5)
        num_explore = max(min(wanted, len(unexplored)), num_nodes - len(scores))
        num_exploit = num_nodes - num_explore

        picked: list[int] = []
        if num_exploit:
            ranked = sorted(scores, key=lambda i: (-scores[i], i))
            threshold = self.cutoff * scores[ranked[num_exploit - 1]]
            pool = [i for i in ranked if scores[i] >= threshold]
            weights = np.array([scores[i] for i in pool], np.float64)
            order = _weighted_order(weights, rng)
            picked.extend(pool[int(j)] for j in order[:num_exploit])
        if num_explore:
            chosen = rng.choice(len(unexplored), size=num_explore, replace=False)
            picked.extend(unexplored[int(j)] for j in chosen)
        return picked

    def observe(self, outcome: NodeOutcome) -> None:
        """Update a node's utility, duration and last round from one reply.

        A failed reply only counts in :attr:`failures`. A successful one needs the
        ``size_key`` and ``loss_key`` metrics (finite numbers; size >= 0); without them
        it is ignored.
        """
        node_id = outcome.node_id
        if not outcome.ok:
            self.failures[node_id] = self.failures.get(node_id, 0) + 1
            return
        size = _number(outcome.metrics.get(self.size_key))
        loss = outcome.metrics.get(self.loss_key)
        if (
            size is None
            or isinstance(loss, bool)
            or not isinstance(loss, (int, float))
            or not math.isfinite(loss)
        ):
            return
        self.statistical_utility[node_id] = size * abs(float(loss))
        self.last_round[node_id] = outcome.server_round
        if outcome.seconds is not None and math.isfinite(outcome.seconds):
            self.duration[node_id] = max(0.0, float(outcome.seconds))
