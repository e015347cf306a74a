"""SecAggPlus: a strategy wrapper that trains under secure aggregation.

The wrapped strategy decides the round as usual (``configure_train``: which nodes,
which model); the wrapper replaces only the *exchange* of that round: instead of each
node's reply, the server runs SecAgg+ (:func:`~.server.run_secagg`) and hands the
wrapped strategy's ``aggregate_train`` a single reply that carries the survivors'
weighted mean and their total weight. FedAvg's weighted mean of that one reply is the
mean itself, so FedAvg, FedAvgM, FedAdam... compose unchanged. Aggregators that need
individual updates (median, Krum) cannot work under secure aggregation by design.

The seam is the Grid the round loop talks to: :meth:`SecAggPlus.start` runs the
ordinary loop over a thin proxy of the real grid whose ``send_and_receive`` carries
out this round's train instructions through the protocol and yields one reply per
sampled node (an empty one for each survivor, the error that dropped each of the
others), so the loop's counts, minimums and history stay per node. Everything else
(evaluation, checkpoints, sampling) goes straight to the wrapped strategy and grid.

With ``noise_multiplier``, nodes clip their update (``local - global``) to
``clipping_norm`` and each adds Gaussian noise of standard deviation
``noise_multiplier * clipping_norm / sqrt(n)`` for the ``n`` sampled nodes, so the
sum carries the noise central DP would add (distributed DP; Kairouz, Liu, Steinke,
"The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation", ICML 2021, https://arxiv.org/abs/2102.06387, with continuous noise
quantized here rather than discrete noise). The mean is then unweighted, as in
DP-FedAvg. Nodes that drop take their share of the noise with them: with ``d`` of
``n`` dropped the sum's noise is ``sqrt((n - d) / n)`` of the target.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pollinate.errors import ConfigError, PollinateError
from pollinate.privacy.accounting import Accountant, RdpAccountant
from pollinate.privacy.accounting._base import check_round, ledger_json, replay_ledger
from pollinate.privacy.central import DELTA_KEY, EPSILON_KEY
from pollinate.privacy.mechanisms import gaussian_noise_std
from pollinate.privacy.secagg.config import SecAggConfig
from pollinate.privacy.secagg.messages import SecAggParams
from pollinate.privacy.secagg.server import SecAggOutcome, run_secagg
from pollinate.records import (
    ArrayRecord,
    ConfigRecord,
    ConfigValue,
    Message,
    MetricRecord,
    RecordDict,
    keys,
)
from pollinate.strategy.base import EvaluateFn, Result, Strategy
from pollinate.strategy.wrapper import StrategyWrapper

if TYPE_CHECKING:
    from pollinate.server.grid import Grid

__all__ = ["SecAggPlus"]

_LEDGER_KEY = "secagg-dp-ledger"  # the ConfigRecord of state() holding the ledger

log = logging.getLogger("pollinate")


class SecAggPlus(StrategyWrapper):
    """Train ``strategy`` with SecAgg+: the server learns only the sum of the updates.

    Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead",
    CCS 2020, https://eprint.iacr.org/2020/704. Nodes need
    :data:`~pollinate.privacy.secagg.secaggplus_mod` among their ClientApp's mods.

    Parameters
    ----------
    strategy:
        The strategy to wrap; its aggregate must be a (weighted) mean (FedAvg family).
    config:
        The protocol's settings (:class:`SecAggConfig`: shares, threshold,
        quantization, timeout); the defaults when omitted.
    send_delta:
        Nodes send ``local - global`` instead of the model itself (finer quantization
        for the same clipping range; the server adds the global model back).
    noise_multiplier, clipping_norm:
        Distributed DP (see the module docstring). ``clipping_norm`` is required with
        a positive ``noise_multiplier``; both imply ``send_delta`` and an unweighted
        mean.
    rng:
        Draws each round's SecAgg+ graph.
    accountant, delta, max_epsilon:
        With distributed DP, each round is accounted (RDP, fixed-size sampling by
        default) at the noise the sum really carries: nodes that dropped took their
        share of the noise with them, so a round with ``s`` of ``n`` sampled nodes
        counts at ``noise_multiplier * sqrt(s / n)``. Epsilon at ``delta`` is reported
        in the round's train metrics (``dp-epsilon``), hence in the display and
        ``history.json``; a round that would pass ``max_epsilon`` is not started.

    Examples
    --------
    >>> from pollinate.strategy import FedAvg
    >>> strategy = SecAggPlus(FedAvg(), config=SecAggConfig(num_shares=6,
    ...                       reconstruction_threshold=4, clipping_range=2.0))
    >>> strategy.config.num_shares
    6
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        config: SecAggConfig | None = None,
        send_delta: bool = False,
        noise_multiplier: float = 0.0,
        clipping_norm: float | None = None,
        rng: np.random.Generator | None = None,
        accountant: Accountant | None = None,
        delta: float = 1e-5,
        max_epsilon: float | None = None,
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise ConfigError(f"SecAggPlus wraps a Strategy, got {type(strategy).__name__}")
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ConfigError(f"noise_multiplier must be >= 0, got {noise_multiplier!r}")
        if noise_multiplier > 0 and not (
            clipping_norm is not None and math.isfinite(clipping_norm) and clipping_norm > 0
        ):
            raise ConfigError(
                "distributed DP needs a positive clipping_norm to calibrate its noise to, "
                f"got {clipping_norm!r}"
            )
        super().__init__(strategy)
        self.config = config if config is not None else SecAggConfig()
        self.noise_multiplier = float(noise_multiplier)
        self.clipping_norm = clipping_norm
        self.send_delta = send_delta or noise_multiplier > 0 or clipping_norm is not None
        self.rng = rng if rng is not None else np.random.default_rng()
        self._train_ids: set[str] = set()
        self._outcome: SecAggOutcome | None = None
        self._sent: ArrayRecord | None = None
        self._params: SecAggParams | None = None
        self.accountant: Accountant = (
            accountant if accountant is not None else RdpAccountant(sampling="fixed-size")
        )
        if not 0 < delta < 1:
            raise ConfigError(f"delta must be within (0, 1), got {delta!r}")
        if max_epsilon is not None and not max_epsilon > 0:
            raise ConfigError(f"max_epsilon must be positive, got {max_epsilon!r}")
        self.delta = float(delta)
        self.max_epsilon = max_epsilon
        self._sample_rate = 0.0

    def epsilon(self) -> float:
        """The epsilon spent so far at ``delta`` (0 without distributed DP)."""
        return self.accountant.epsilon(self.delta) if self.accountant.spent() else 0.0

    def __repr__(self) -> str:
        return f"SecAggPlus({self.strategy!r}, config={self.config!r})"

    # -- keys of the wrapped strategy (FedAvg's attribute names, else the defaults) ----
    def _key(self, name: str, default: str) -> str:
        value = getattr(self.strategy, name, default)
        return value if isinstance(value, str) else default

    # -- the loop, over a grid whose train exchange is secure --------------------------
    def start(
        self,
        grid: Grid,
        *,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600.0,
        train_config: Mapping[str, ConfigValue] | None = None,
        evaluate_config: Mapping[str, ConfigValue] | None = None,
        evaluate_fn: EvaluateFn | None = None,
    ) -> Result:
        """:meth:`Strategy.start`, with each round's train exchange run through SecAgg+."""
        return super().start(
            cast("Grid", _SecureTrainGrid(grid, self)),
            initial_arrays=initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )

    def _is_secure(self, messages: list[Message]) -> bool:
        return bool(messages) and all(m.metadata.message_id in self._train_ids for m in messages)

    def _secure_exchange(
        self, grid: Grid, messages: list[Message], timeout: float
    ) -> Iterator[Message]:
        """Run SecAgg+ on this round's train instructions; one reply per instruction."""
        self._train_ids = set()
        self._outcome = None
        dp = self.noise_multiplier > 0
        params = self.config.params(
            weighted=not dp,
            delta=self.send_delta,
            arrays_key=self._key("arrays_key", keys.ARRAYS),
            metrics_key=self._key("metrics_key", keys.METRICS),
            weight_key=self._key("weight_key", keys.NUM_EXAMPLES),
            noise_stddev=(
                gaussian_noise_std(
                    clip_norm=float(self.clipping_norm or 0.0),
                    noise_multiplier=self.noise_multiplier,
                    num_shares=len(messages),
                )
                if dp
                else 0.0
            ),
            noise_clipping_norm=self.clipping_norm or 0.0,
        )
        if self.send_delta:
            self._sent = messages[0].content.get_kind(params.arrays_key, ArrayRecord)
        self._outcome = run_secagg(
            grid,
            messages,
            params,
            num_shares=self.config.num_shares,
            timeout=self.config.timeout or timeout,
            rng=self.rng,
        )
        self._params = params
        survivors = set(self._outcome.survivors)
        for message in messages:
            node = message.metadata.dst_node_id
            if node in survivors:
                yield message.reply(RecordDict())
            else:
                yield message.reply(error=self._outcome.dropped[node])

    # -- the Strategy hooks ------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """The wrapped strategy's instructions, remembered so the exchange secures them."""
        messages = self.strategy.configure_train(server_round, arrays, config, grid)
        self._train_ids = {m.metadata.message_id for m in messages}
        if self.noise_multiplier > 0 and messages:
            self._sample_rate = len(messages) / max(len(grid.nodes()), len(messages))
            try:
                check_round(
                    self.accountant,
                    noise_multiplier=self.noise_multiplier,
                    sample_rate=self._sample_rate,
                    delta=self.delta,
                    max_epsilon=self.max_epsilon,
                    server_round=server_round,
                )
            except PollinateError:
                self._train_ids = set()
                raise
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Hand the wrapped strategy one reply holding the securely aggregated mean."""
        first = None
        for reply in replies:  # the per-node acknowledgements: counted by the loop
            first = first or reply
        outcome, self._outcome = self._outcome, None
        params = self._params
        if outcome is None or first is None or params is None:
            return self.strategy.aggregate_train(server_round, [])
        mean = outcome.sum.mean(params)
        if params.delta and self._sent is not None:
            mean = ArrayRecord({name: a + self._sent[name] for name, a in mean.items()})
        content = RecordDict(
            {
                params.arrays_key: outcome.sum.in_dtypes(mean),
                params.metrics_key: MetricRecord({params.weight_key: outcome.sum.weight}),
            }
        )
        aggregate = Message.from_parts(first.metadata, content, None)
        arrays, metrics = self.strategy.aggregate_train(server_round, [aggregate])
        if self.noise_multiplier <= 0 or arrays is None:
            return arrays, metrics
        # The sum carries the noise of the survivors only: sigma * C * sqrt(s / n) for s
        # of the n sampled nodes, so this round is accounted at that noise multiplier.
        sampled = len(outcome.survivors) + len(outcome.dropped)
        effective = self.noise_multiplier * math.sqrt(len(outcome.survivors) / sampled)
        self.accountant.step(noise_multiplier=effective, sample_rate=self._sample_rate)
        reported = MetricRecord(metrics) if metrics is not None else MetricRecord()
        reported[EPSILON_KEY] = self.epsilon()
        reported[DELTA_KEY] = self.delta
        return arrays, reported

    def keep_first(self, phase: str, num_sampled: int) -> int | None:
        """No over-selection for training: every sampled node is part of the protocol."""
        return None if phase == keys.TRAIN else self.strategy.keep_first(phase, num_sampled)

    def state(self) -> RecordDict:
        """The wrapped strategy's state, plus the privacy ledger of distributed DP."""
        state = self.strategy.state()
        state[_LEDGER_KEY] = ConfigRecord({"steps": ledger_json(self.accountant)})
        return state

    def load_state(self, state: RecordDict) -> None:
        """Restore the wrapped strategy's state; the ledger is replayed into the accountant."""
        saved = state.get(_LEDGER_KEY)
        self.strategy.load_state(RecordDict({k: v for k, v in state.items() if k != _LEDGER_KEY}))
        if isinstance(saved, ConfigRecord):
            replay_ledger(self.accountant, str(saved["steps"]))


class _SecureTrainGrid:
    """The real grid, except that the train exchange runs through SecAgg+."""

    def __init__(self, grid: Grid, owner: SecAggPlus) -> None:
        self._grid = grid
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float, keep_first: int | None = None
    ) -> Iterator[Message]:
        batch = list(messages)
        if self._owner._is_secure(batch):
            return self._owner._secure_exchange(self._grid, batch, timeout)
        return self._grid.send_and_receive(batch, timeout=timeout, keep_first=keep_first)
