"""FedProx: FedAvg with a proximal term on the nodes and partial work kept.

The server side of FedProx is FedAvg with two changes: every train instruction tells
the nodes the proximal weight ``mu`` (config key ``proximal-mu``), and replies that
did only part of the asked local work (a ``completed-fraction`` metric below 1) are
aggregated instead of dropped. The proximal term itself is applied on the node, by
the ClientApp's training loop; :mod:`pollinate.client.fedprox` has the helpers for
NumPy and PyTorch loops.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord, ConfigRecord, Message, keys
from pollinate.strategy.fedavg import FedAvg

if TYPE_CHECKING:
    from pollinate.server.grid import Grid

__all__ = ["FedProx"]


class FedProx(FedAvg):
    r"""Federated Proximal optimization: each node minimizes a proximal local objective.

    Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
    https://arxiv.org/abs/1812.06127 (Algorithm 2).

    In round ``t`` node ``k`` approximately minimizes

    .. math:: h_k(w; w^t) = F_k(w) + \frac{\mu}{2} \lVert w - w^t \rVert^2

    where ``F_k`` is its local loss and ``w^t`` the global model it received. The
    proximal term keeps local models near the global one, which limits client drift
    under heterogeneous data and makes partial local work safe to aggregate. So,
    unlike FedAvg, FedProx keeps the replies of stragglers that returned fewer local
    epochs than asked (``accept_partial_work=True``; their ``completed-fraction``
    metric is below 1). With ``proximal_mu=0`` it is FedAvg that keeps partial work.

    The strategy only *sends* ``mu``: it adds ``proximal-mu`` (``keys.PROXIMAL_MU``)
    to every train instruction's config, overriding a ``train_config`` value of the
    same key. The node adds the term to its loss, e.g. with
    :func:`pollinate.client.fedprox.proximal_gradient` (NumPy) or
    :func:`pollinate.client.fedprox.torch_proximal_term` (PyTorch).

    Parameters
    ----------
    proximal_mu:
        The weight ``mu >= 0`` of the proximal term (the paper tunes it over
        {0.001, 0.01, 0.1, 1}; it uses 1 on its synthetic data sets).
    **kwargs:
        Any :class:`~pollinate.strategy.FedAvg` option. ``accept_partial_work``
        defaults to ``True`` here; pass ``False`` to drop stragglers as FedAvg does.

    Examples
    --------
    >>> import numpy as np
    >>> strategy = FedProx(proximal_mu=1.0, fraction_train=1 / 3,
    ...                    rng=np.random.default_rng(0))
    >>> strategy.proximal_mu, strategy.accept_partial_work
    (1.0, True)
    """

    def __init__(self, *, proximal_mu: float, **kwargs: Any) -> None:
        if (
            isinstance(proximal_mu, bool)
            or not isinstance(proximal_mu, (int, float))
            or not math.isfinite(proximal_mu)
            or proximal_mu < 0
        ):
            raise ConfigError(
                f"proximal_mu must be a finite number >= 0, got {proximal_mu!r} "
                "(the FedProx paper uses 0.001 to 1)"
            )
        kwargs.setdefault("accept_partial_work", True)
        super().__init__(**kwargs)
        self.proximal_mu = float(proximal_mu)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, proximal_mu={self.proximal_mu})"

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """FedAvg's train instructions, with ``proximal-mu`` added to their config."""
        with_mu = config.copy()  # the caller's record stays as it was
        with_mu[keys.PROXIMAL_MU] = self.proximal_mu
        return super().configure_train(server_round, arrays, with_mu, grid)
