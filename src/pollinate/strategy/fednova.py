"""FedNova: normalized averaging for nodes that take different numbers of local steps."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from pollinate.errors import AggregationError
from pollinate.records import ArrayRecord, Message, MetricRecord, keys
from pollinate.strategy.aggregate import cast_like
from pollinate.strategy.fedavg import FedAvg, required_metric

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only, never evaluated

    from pollinate.strategy.fedavg import FedAvgKwargs

__all__ = ["FedNova"]


class FedNova(FedAvg):
    r"""FedNova: average the nodes' updates normalized by their local steps.

    Wang, Liu, Liang, Joshi and Poor, "Tackling the Objective Inconsistency Problem in
    Heterogeneous Federated Optimization", NeurIPS 2020, https://arxiv.org/abs/2007.07481.

    Nodes that take more local steps move further; FedAvg then drifts towards their
    objectives. FedNova divides each node's update by its number of local steps
    :math:`\tau_i` (metric ``local-steps``) and rescales the average by the effective
    number of steps. With the global model :math:`x`, node :math:`i`'s model
    :math:`y_i` and example count :math:`n_i`, :math:`p_i = n_i / \sum_j n_j`:

    .. math::

        d_i = \frac{x - y_i}{\tau_i}, \qquad
        \tau_{\text{eff}} = \sum_i p_i \tau_i, \qquad
        x_{\text{new}} = x - \tau_{\text{eff}} \sum_i p_i d_i

    With local SGD, :math:`\tau_i` is the number of steps. A node with another local
    solver reports the paper's :math:`\|a_i\|_1` as its ``local-steps`` instead (local
    momentum :math:`\rho`: :math:`(\tau_i - \rho(1 - \rho^{\tau_i})/(1 - \rho)) /
    (1 - \rho)`). The update streams: the aggregator folds in the normalized models
    :math:`x - d_i` as they arrive and two running scalars give :math:`\tau_{\text{eff}}`,
    so memory stays at O(model).

    Partial work is FedNova's point, so ``accept_partial_work`` defaults to ``True``
    here. Every other parameter is :class:`FedAvg`'s; a server optimizer, if given,
    acts on the normalized step.

    Attributes
    ----------
    tau_eff:
        :math:`\tau_{\text{eff}}` of the last aggregated round (``None`` before).

    Examples
    --------
    >>> strategy = FedNova(fraction_train=0.5, rng=np.random.default_rng(0))
    >>> strategy.accept_partial_work
    True
    """

    def __init__(self, **kwargs: Unpack[FedAvgKwargs]) -> None:
        kwargs.setdefault("accept_partial_work", True)
        super().__init__(**kwargs)
        self.tau_eff: float | None = None
        # Running sums of the round being aggregated: sum n_i and sum n_i tau_i.
        self._sum_weights = 0.0
        self._sum_weighted_steps = 0.0

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Average the normalized models (streamed), then take ``tau_eff`` steps of it."""
        self._sum_weights = self._sum_weighted_steps = 0.0
        return super().aggregate_train(server_round, replies)

    def finalize_aggregate(self, server_round: int, aggregate: ArrayRecord) -> ArrayRecord:
        """``x - tau_eff * (x - mean)``, the normalized step, from the mean normalized model."""
        if self.current_arrays is None:
            return aggregate
        if self._sum_weights <= 0:
            raise AggregationError(
                f"round {server_round}: the train replies' weights sum to 0; FedNova needs "
                "at least one node with examples"
            )
        tau_eff = self._sum_weighted_steps / self._sum_weights
        self.tau_eff = tau_eff
        # mean = x - sum p_i d_i, so x - tau_eff * (x - mean) = x - tau_eff * sum p_i d_i.
        out = ArrayRecord()
        for name, x in self.current_arrays.items():
            x64 = x.astype(np.float64)
            out[name] = cast_like(x64 - tau_eff * (x64 - aggregate[name]), x.dtype)
        return out

    def update_from_reply(
        self, server_round: int, reply: Message, source: str
    ) -> tuple[ArrayRecord, float, MetricRecord] | None:
        """The normalized model :math:`x - (x - y_i)/\\tau_i` (float64) with weight :math:`n_i`."""
        update = super().update_from_reply(server_round, reply, source)
        if update is None:
            return None
        arrays, weight, metrics = update
        current = self.global_arrays_for(arrays, source)
        steps = required_metric(
            metrics,
            keys.LOCAL_STEPS,
            source,
            positive=True,
            hint="FedNova nodes report the local optimizer steps they took, e.g. "
            f"MetricRecord({{{keys.LOCAL_STEPS!r}: num_steps, ...}})",
        )
        normalized = ArrayRecord()
        for name, x in current.items():
            x64 = x.astype(np.float64)
            normalized[name] = x64 - (x64 - arrays[name]) / float(steps)
        self._sum_weights += weight
        self._sum_weighted_steps += weight * float(steps)
        return normalized, weight, metrics
