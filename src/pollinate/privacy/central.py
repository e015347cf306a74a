"""Central differential privacy: a strategy wrapper that clips, noises and accounts.

DP-FedAvg (McMahan, Ramage, Talwar, Zhang, "Learning Differentially Private Recurrent
Language Models", ICLR 2018, https://arxiv.org/abs/1710.06963): every round, each
node's update ``local - global`` is clipped to L2 norm ``C`` (on the server, or on
the nodes with :func:`pollinate.privacy.local.clipping_mod`), the clipped updates are
averaged with equal weights, and Gaussian noise of standard deviation
``noise_multiplier * C / m`` is added to the mean of the ``m`` updates, *before* any
server optimizer (which is then post-processing). An :class:`Accountant` records one
sampled Gaussian release per round and reports epsilon at ``delta``.

**Design.** One wrapper, :class:`CentralDP`, with the clip-norm policy as a plug-in
(:class:`~pollinate.privacy.clipping.FixedClipping` or
:class:`~pollinate.privacy.clipping.AdaptiveClipping`) and ``clip_on`` as an option,
instead of Flower's four classes (server/client side x fixed/adaptive): the four
share everything but those two choices. It wraps the FedAvg family (FedAvg, FedProx,
FedAvgM, FedAdam, FedYogi, FedAdagrad): the strategies whose aggregate is a mean of
the updates, so that ``C / m`` bounds one node's influence. It works through FedAvg's
public seams, never its internals: the reply stream is clipped on its way in, and the
aggregator (the weighted mean) is replaced, in a shallow copy of the wrapped strategy,
by an equal-weight mean plus noise. Weights by example count would let one node with
many examples outweigh ``C / m``; order-based rules (median, Krum) and strategies that
transform updates (FedNova, q-FedAvg, SCAFFOLD) have other sensitivities and are
refused with a ConfigError.

**Reporting.** The train metrics of each round gain ``dp-epsilon`` (spent so far),
``dp-delta`` and ``dp-clip-norm`` (the norm used that round), so they reach the
progress display, ``history.json`` and checkpoints like any metric. With
``max_epsilon``, a round whose release would push epsilon past it is not run:
``configure_train`` raises :class:`~pollinate.errors.PrivacyBudgetExceededError`
before anything is sent, and :meth:`Strategy.start` ends the run there, cleanly,
recording why in ``History.stopped_reason``.

Only the model update is protected. Metrics the nodes report (loss, example counts)
travel as they are; keep them out of the reply, or aggregate them privately, if they
are sensitive.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

import numpy as np

from pollinate.errors import AggregationError, ConfigError
from pollinate.privacy.accounting import Accountant, RdpAccountant
from pollinate.privacy.accounting._base import check_round, ledger_json, replay_ledger
from pollinate.privacy.clipping import (
    CLIP_NORM_KEY,
    CLIPPED_KEY,
    ClippingPolicy,
    apply_update,
    clip_by_l2_norm_inplace,
    compute_update,
)
from pollinate.privacy.mechanisms import add_gaussian_noise, gaussian_noise_std
from pollinate.records import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)
from pollinate.strategy.aggregate import WeightedMean, WeightedMeanAccumulator
from pollinate.strategy.base import Strategy
from pollinate.strategy.fedavg import FedAvg
from pollinate.strategy.wrapper import StrategyWrapper

if TYPE_CHECKING:
    from pollinate.server.grid import Grid

__all__ = ["DELTA_KEY", "EPSILON_KEY", "CentralDP", "ClipOn"]

log = logging.getLogger("pollinate")

#: Train metric: the epsilon spent by the run so far, at :data:`DELTA_KEY`.
EPSILON_KEY: Final = "dp-epsilon"
#: Train metric: the delta the epsilon is reported at.
DELTA_KEY: Final = "dp-delta"
#: Where updates are clipped: by the server, or by the nodes before they reply.
ClipOn: TypeAlias = Literal["server", "nodes"]

_STATE_KEY = "privacy"
# Nodes clip in their model's dtype; float32 rounding may leave the norm a hair above C.
_NODE_CLIP_SLACK = 1e-4


@dataclass(frozen=True)
class _Round:
    """What configure_train decided for the round that aggregate_train finishes."""

    server_round: int
    arrays: ArrayRecord
    sample_rate: float
    clip_norm: float


class _NoisyMean:
    """Equal-weight mean of the (clipped) models plus ``N(0, (sum_std / m)**2)`` noise."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.sum_std = 0.0
        self.count = 0

    def aggregate(self, updates: Iterable[tuple[ArrayRecord, float]]) -> ArrayRecord | None:
        """Fold in each update with weight 1, then add the noise of the mean."""
        accumulator = WeightedMeanAccumulator()
        for index, (arrays, _weight) in enumerate(updates):
            accumulator.add(arrays, 1.0, source=f"update {index}")
        self.count = accumulator.count
        if not accumulator.count:
            return None
        return add_gaussian_noise(
            accumulator.result(), std=self.sum_std / accumulator.count, rng=self.rng
        )

    def __repr__(self) -> str:
        return "NoisyMean()"


class _ClipCounts:
    """How many replies a round saw, and how many of them were not clipped."""

    def __init__(self) -> None:
        self.seen = 0
        self.unclipped = 0


class CentralDP(StrategyWrapper):
    """Differentially private FedAvg-family training, with a reported privacy budget.

    See the module docstring for the algorithm, the design and what is protected.

    Parameters
    ----------
    strategy:
        The strategy to privatize: FedAvg or a strategy built on it that aggregates
        with the weighted mean and does not transform updates. It is copied (shallow),
        not changed: its sampler, optimizer and rng are used as they are.
    noise_multiplier:
        Noise std / clip norm of each round's release (the ``z`` of DP-FedAvg). With
        adaptive clipping, part of it pays for the noised clipped count.
    clipping:
        :class:`~pollinate.privacy.clipping.FixedClipping` or
        :class:`~pollinate.privacy.clipping.AdaptiveClipping`.
    clip_on:
        ``"server"`` clips each reply's update on arrival; ``"nodes"`` sends the clip
        norm in the train config (``dp-clip-norm``) for the nodes'
        :func:`~pollinate.privacy.local.clipping_mod`, which also reports
        ``dp-clipped`` for adaptive clipping (the server still clips what arrives, so
        a node without the mod cannot break the bound).
    accountant:
        Records each round; by default an :class:`RdpAccountant` for fixed-size
        sampling, which is how FedAvg's samplers choose nodes.
    delta:
        The delta epsilon is reported at; keep it below 1 / number of nodes.
    max_epsilon:
        Stop before a round that would spend more than this (``None``: never stop).
    rng:
        Source of the noise (and of the clipped count's noise); seed it for
        reproducible runs. Checkpointed with the clip norm and the ledger.

    Examples
    --------
    >>> from pollinate.privacy import FixedClipping
    >>> strategy = CentralDP(FedAvg(fraction_train=0.1), noise_multiplier=1.0,
    ...                      clipping=FixedClipping(0.5), max_epsilon=8.0,
    ...                      rng=np.random.default_rng(0))
    >>> strategy.clip_norm, strategy.epsilon()
    (0.5, 0.0)
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        noise_multiplier: float,
        clipping: ClippingPolicy,
        clip_on: ClipOn = "server",
        accountant: Accountant | None = None,
        delta: float = 1e-5,
        max_epsilon: float | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        wrapped = _check_wrappable(strategy)
        if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)):
            raise ConfigError(f"noise_multiplier must be a number, got {noise_multiplier!r}")
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ConfigError(
                f"noise_multiplier must be positive and finite, got {noise_multiplier!r}"
            )
        if clip_on not in ("server", "nodes"):
            raise ConfigError(f"clip_on must be 'server' or 'nodes', got {clip_on!r}")
        if not (isinstance(delta, float) and 0 < delta < 1):
            raise ConfigError(f"delta must be a float within (0, 1), got {delta!r}")
        if max_epsilon is not None and not (
            isinstance(max_epsilon, (int, float)) and max_epsilon > 0
        ):
            raise ConfigError(f"max_epsilon must be a positive number or None, got {max_epsilon!r}")
        self.noise_multiplier = float(noise_multiplier)
        self.clipping = clipping
        #: The noise multiplier of the updates once the clipped count took its share.
        self.update_noise_multiplier = clipping.update_noise_multiplier(self.noise_multiplier)
        self.clip_on: ClipOn = clip_on
        self.accountant: Accountant = (
            accountant if accountant is not None else RdpAccountant(sampling="fixed-size")
        )
        self.delta = delta
        self.max_epsilon = None if max_epsilon is None else float(max_epsilon)
        self.rng = rng if rng is not None else np.random.default_rng()
        #: The clip norm of the next round (adapted after each round by ``clipping``).
        self.clip_norm = float(clipping.initial_norm)
        self._aggregator = _NoisyMean(self.rng)
        inner = copy.copy(wrapped)
        inner.aggregator = self._aggregator
        super().__init__(inner)
        #: The wrapped strategy (a shallow copy whose aggregator adds the noise).
        self.strategy: FedAvg = inner
        self._round: _Round | None = None
        self._warned_delta = False

    def __repr__(self) -> str:
        return (
            f"CentralDP({self.strategy!r}, noise_multiplier={self.noise_multiplier}, "
            f"clipping={self.clipping!r}, clip_on={self.clip_on!r}, delta={self.delta:g}, "
            f"max_epsilon={self.max_epsilon})"
        )

    def epsilon(self) -> float:
        """The epsilon spent so far, at ``delta``."""
        return self.accountant.epsilon(self.delta)

    # -- train: clip, noise, account -----------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The wrapped strategy's instructions, once the budget allows the round.

        Raises PrivacyBudgetExceededError, before anything is sent, when the round's
        release would take epsilon past ``max_epsilon``.
        """
        _check_float_model(arrays)
        if self.clip_on == "nodes":
            config = config.copy()  # the caller's record stays as it was
            config[CLIP_NORM_KEY] = self.clip_norm
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        self._round = None
        if not messages:
            return messages
        population = max(len(grid.nodes()), len(messages))
        sample_rate = len(messages) / population
        if not self._warned_delta and self.delta >= 1 / population:
            self._warned_delta = True
            log.warning(
                "delta=%g is not below 1 / %d nodes: a guarantee this weak allows "
                "revealing a node outright; use delta < %g",
                self.delta,
                population,
                1 / population,
            )
        check_round(
            self.accountant,
            noise_multiplier=self.noise_multiplier,
            sample_rate=sample_rate,
            delta=self.delta,
            max_epsilon=self.max_epsilon,
            server_round=server_round,
        )
        self._round = _Round(server_round, arrays, sample_rate, self.clip_norm)
        self._aggregator.sum_std = gaussian_noise_std(
            clip_norm=self.clip_norm, noise_multiplier=self.update_noise_multiplier
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip the replies' updates, aggregate them with noise, account for the round."""
        current = self._round
        if current is None or current.server_round != server_round:
            raise AggregationError(
                f"round {server_round}: CentralDP aggregates the round it configured, but "
                "configure_train did not send train instructions for it"
            )
        counts = _ClipCounts()
        arrays, metrics = self.strategy.aggregate_train(
            server_round, self._clipped(current, replies, counts)
        )
        self._round = None
        if arrays is None:  # nothing released, nothing spent
            return None, metrics
        self.accountant.step(
            noise_multiplier=self.noise_multiplier, sample_rate=current.sample_rate
        )
        self.clip_norm = self.clipping.next_norm(
            current.clip_norm,
            num_unclipped=counts.unclipped,
            num_updates=counts.seen,
            rng=self.rng,
        )
        reported = MetricRecord(metrics) if metrics is not None else MetricRecord()
        reported[EPSILON_KEY] = self.epsilon()
        reported[DELTA_KEY] = self.delta
        reported[CLIP_NORM_KEY] = current.clip_norm
        return arrays, reported

    def _clipped(
        self, current: _Round, replies: Iterable[Message], counts: _ClipCounts
    ) -> Iterator[Message]:
        """Each reply with its update clipped to the round's norm (counted for adaptive
        clipping); malformed replies pass unchanged for the wrapped strategy to reject."""
        inner = self.strategy
        norm = current.clip_norm
        for reply in replies:
            content = reply.content
            local = content.get(inner.arrays_key)
            if not isinstance(local, ArrayRecord):
                yield reply
                continue
            source = (
                f"round {current.server_round}: the train reply of node "
                f"{reply.metadata.src_node_id}"
            )
            try:
                update = compute_update(local, current.arrays)
            except ConfigError as exc:
                raise AggregationError(f"{source}: {exc}") from None
            before = clip_by_l2_norm_inplace(update, norm)
            counts.seen += 1
            if self.clip_on == "nodes":
                was_clipped = self._reported_clipped(content, source)
                if before > norm * (1 + _NODE_CLIP_SLACK):
                    log.warning(
                        "%s: update norm %.4g exceeds the clip norm %.4g; clipped on the "
                        "server (is pollinate.privacy.clipping_mod in the ClientApp's mods?)",
                        source,
                        before,
                        norm,
                    )
            else:
                was_clipped = before > norm
            counts.unclipped += not was_clipped
            clipped = RecordDict(dict(content.items()))
            clipped[inner.arrays_key] = apply_update(current.arrays, update)
            yield Message.from_parts(reply.metadata, clipped, None)

    def _reported_clipped(self, content: RecordDict, source: str) -> bool:
        """The node's ``dp-clipped`` metric; required when the clip norm adapts."""
        metrics = content.get(self.strategy.metrics_key)
        value = metrics.get(CLIPPED_KEY) if isinstance(metrics, MetricRecord) else None
        if value in (0, 1):
            return bool(value)
        if self.clipping.clipped_count_stddev > 0:
            raise AggregationError(
                f"{source} has no {CLIPPED_KEY!r} metric of 0 or 1 (got {value!r}); adaptive "
                "clipping with clip_on='nodes' needs the nodes to report it: add "
                "pollinate.privacy.clipping_mod to the ClientApp's mods"
            )
        return False

    # -- checkpoints -------------------------------------------------------------------
    def state(self) -> RecordDict:
        """The wrapped strategy's state, plus the clip norm, the ledger and the noise rng."""
        state = self.strategy.state()
        state[_STATE_KEY] = ConfigRecord(
            {
                "clip-norm": self.clip_norm,
                "steps": ledger_json(self.accountant),
                "rng": json.dumps(self.rng.bit_generator.state),
            }
        )
        return state

    def load_state(self, state: RecordDict) -> None:
        """Restore what :meth:`state` saved; the ledger is replayed into the accountant."""
        saved = state.get(_STATE_KEY)
        self.strategy.load_state(RecordDict({k: v for k, v in state.items() if k != _STATE_KEY}))
        if not isinstance(saved, ConfigRecord):
            return
        replay_ledger(self.accountant, str(saved["steps"]))
        self.clip_norm = float(saved["clip-norm"])
        self.rng.bit_generator.state = json.loads(str(saved["rng"]))


def _check_wrappable(strategy: Strategy) -> FedAvg:
    """``strategy`` if it aggregates a plain mean of untransformed updates, else ConfigError."""
    if not isinstance(strategy, FedAvg):
        raise ConfigError(
            f"CentralDP wraps FedAvg-family strategies (FedAvg, FedProx, FedAvgM, FedAdam, "
            f"FedYogi, FedAdagrad), got {type(strategy).__name__}: its noise is calibrated "
            "to a mean of clipped updates"
        )
    if not isinstance(strategy.aggregator, WeightedMean):
        raise ConfigError(
            f"CentralDP cannot wrap a strategy that aggregates with {strategy.aggregator!r}: "
            "its noise is calibrated to a mean of clipped updates, and order- or "
            "distance-based rules have another sensitivity; use the default aggregator"
        )
    for hook in ("aggregate_train", "update_from_reply", "finalize_aggregate"):
        if getattr(type(strategy), hook) is not getattr(FedAvg, hook):
            raise ConfigError(
                f"CentralDP cannot wrap {type(strategy).__name__}: it overrides {hook}, so "
                "the clip norm would not bound what one node changes in the aggregate"
            )
    return strategy


def _check_float_model(arrays: ArrayRecord) -> None:
    for name, array in arrays.items():
        if array.dtype.kind != "f":
            raise ConfigError(
                f"CentralDP privatizes float arrays only, but the model's {name!r} is "
                f"{array.dtype}; keep integer and bool state out of the federated model"
            )
