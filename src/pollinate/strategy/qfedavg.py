"""q-FedAvg: fair resource allocation, more weight to the nodes the model serves worst."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import numpy as np

from pollinate.errors import AggregationError, ConfigError
from pollinate.records import ArrayRecord, ConfigRecord, Message, MetricRecord, keys
from pollinate.strategy.aggregate import cast_like
from pollinate.strategy.fedavg import FedAvg, required_metric

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only, never evaluated

    from pollinate.server.grid import Grid
    from pollinate.strategy.fedavg import FedAvgKwargs

__all__ = ["LOSS_EPSILON", "QFedAvg"]

#: Added to every node's loss before taking powers, as in the authors' reference code
#: (``litian96/fair_flearn``), so a node with zero loss gives no 0 ** (q - 1).
LOSS_EPSILON: Final = 1e-10


class QFedAvg(FedAvg):
    r"""q-FedAvg: minimize :math:`\sum_k p_k F_k^{q+1} / (q+1)`, fairer as ``q`` grows.

    Li, Sanjabi, Beirami and Smith, "Fair Resource Allocation in Federated Learning",
    ICLR 2020, https://arxiv.org/abs/1905.10497 (Algorithm 3).

    Each node trains from the global model :math:`w` to :math:`w_k` and reports
    :math:`F_k`, its loss of the *received* model :math:`w` (metric ``initial-loss``,
    measured before training). With the Lipschitz estimate :math:`L = 1/\eta` (the
    nodes' learning rate) and :math:`F_k` standing for :math:`F_k + 10^{-10}`
    (:data:`LOSS_EPSILON`):

    .. math::

        \Delta w_k = L (w - w_k), \qquad
        h_k = q F_k^{q-1} \|\Delta w_k\|^2 + L F_k^q, \qquad
        w_{\text{new}} = w - \frac{\sum_k F_k^q \Delta w_k}{\sum_k h_k}

    :math:`\|\cdot\|` is the L2 norm over all arrays of the model. The server does the
    arithmetic the paper puts on the nodes, so a node only trains and reports
    ``initial-loss``. The update streams as a weighted mean: node :math:`k` contributes
    :math:`w - F_k^q \Delta w_k / h_k` with weight :math:`h_k`, which the default
    aggregator folds in as replies arrive (O(model) memory). The reply metrics are
    averaged with the same weights :math:`h_k`. ``q = 0`` with every node equally
    weighted is FedAvg; larger ``q`` favours the nodes with the highest loss.

    Parameters
    ----------
    q:
        The fairness exponent (>= 0), sent to nodes in the config as ``q``.
    learning_rate:
        The nodes' local learning rate :math:`\eta`, sent to them in the config as
        ``learning-rate`` (it overrides a ``learning-rate`` in the train config):
        the update assumes the nodes trained with it.
    lipschitz:
        :math:`L`; defaults to ``1 / learning_rate`` as in the paper.
    **kwargs:
        :class:`FedAvg`'s parameters (no ``optimizer``).

    Examples
    --------
    >>> strategy = QFedAvg(q=1.0, learning_rate=0.1, rng=np.random.default_rng(0))
    >>> strategy.lipschitz
    10.0
    """

    def __init__(
        self,
        *,
        q: float = 0.2,
        learning_rate: float = 0.1,
        lipschitz: float | None = None,
        **kwargs: Unpack[FedAvgKwargs],
    ) -> None:
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q < math.inf:
            raise ConfigError(f"q must be a finite number >= 0, got {q!r}")
        for name, value in (("learning_rate", learning_rate), ("lipschitz", lipschitz)):
            if value is None and name == "lipschitz":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not 0 < value < math.inf
            ):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        super().__init__(**kwargs)
        self.q = float(q)
        self.learning_rate = float(learning_rate)
        self.lipschitz = float(lipschitz) if lipschitz is not None else 1.0 / self.learning_rate

    def __repr__(self) -> str:
        return (
            f"QFedAvg(q={self.q}, learning_rate={self.learning_rate}, "
            f"lipschitz={self.lipschitz}, fraction_train={self.fraction_train})"
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """FedAvg's train instructions, with ``q`` and ``learning-rate`` in the config."""
        config = config.copy()
        config[keys.Q] = self.q
        config[keys.LEARNING_RATE] = self.learning_rate
        return super().configure_train(server_round, arrays, config, grid)

    def update_from_reply(
        self, server_round: int, reply: Message, source: str
    ) -> tuple[ArrayRecord, float, MetricRecord] | None:
        """The node's share of the q-FedAvg step as ``(w - F^q dw / h, h, metrics)``."""
        update = super().update_from_reply(server_round, reply, source)
        if update is None:
            return None
        arrays, _, metrics = update
        current = self.global_arrays_for(arrays, source)
        loss = required_metric(
            metrics,
            keys.INITIAL_LOSS,
            source,
            positive=False,
            hint="q-FedAvg nodes report their loss of the received model, before training, "
            f"e.g. MetricRecord({{{keys.INITIAL_LOSS!r}: loss_before, ...}})",
        )
        lipschitz, q = self.lipschitz, self.q
        f = float(loss) + LOSS_EPSILON
        delta_w = {
            name: lipschitz * np.subtract(x, arrays[name], dtype=np.float64)
            for name, x in current.items()
        }
        squared_norm = math.fsum(float(np.vdot(d, d)) for d in delta_w.values())
        f_q = f**q
        h = q * f ** (q - 1.0) * squared_norm + lipschitz * f_q
        if not math.isfinite(h) or h <= 0:
            raise AggregationError(
                f"{source}: the q-FedAvg weight h = {h!r} is not a positive finite number "
                f"(initial-loss {loss!r}, q {q}); lower q or check the node's loss"
            )
        # Cast back so the aggregate keeps the model's dtypes.
        contribution = ArrayRecord(
            {
                name: cast_like(
                    np.subtract(x, (f_q / h) * delta_w[name], dtype=np.float64), x.dtype
                )
                for name, x in current.items()
            }
        )
        return contribution, h, metrics
