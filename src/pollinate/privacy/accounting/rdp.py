"""Rényi DP accounting of sampled Gaussian releases, through Google's dp-accounting.

Mironov, "Rényi Differential Privacy", CSF 2017, https://arxiv.org/abs/1702.07476;
Poisson sampling: Mironov, Talwar, Zhang, "Rényi Differential Privacy of the Sampled
Gaussian Mechanism", 2019, https://arxiv.org/abs/1908.10530; fixed-size sampling:
Wang, Balle, Kasiviswanathan, "Subsampled Rényi Differential Privacy and Analytical
Moments Accountant", AISTATS 2019, https://arxiv.org/abs/1808.00087.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, final

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import ConfigError
from pollinate.privacy.accounting._base import (
    Sampling,
    StepLedger,
    check_delta,
    check_sampling,
    gaussian_event,
    grouped,
    neighboring_relation,
    quiet_dp_accounting,
)

__all__ = ["RdpAccountant"]


@final
class RdpAccountant(StepLedger):
    """An :class:`~pollinate.privacy.accounting.Accountant` by Rényi DP.

    RDP composes by adding the per-order divergences, so each distinct
    ``(noise_multiplier, sample_rate)`` pair is evaluated once and cached; a long run
    with the same settings every round costs one evaluation. RDP's conversion to
    (epsilon, delta) is an upper bound, a little looser than :class:`PldAccountant`.

    Parameters
    ----------
    sampling:
        ``"poisson"`` or ``"fixed-size"`` (see :data:`~pollinate.privacy.accounting.Sampling`).
    orders:
        The RDP orders to evaluate; dp-accounting's defaults (1.1 to 1024) if omitted.

    Examples
    --------
    >>> accountant = RdpAccountant(sampling="poisson")
    >>> accountant.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=50)
    >>> round(accountant.epsilon(1e-5), 2)
    5.89
    >>> accountant.spent()
    (PrivacyStep(noise_multiplier=1.0, sample_rate=0.1, num_steps=50),)
    """

    def __init__(
        self, *, sampling: Sampling = "poisson", orders: Sequence[float] | None = None
    ) -> None:
        self.sampling: Sampling = check_sampling(sampling)
        if orders is not None and (not orders or any(not order > 1 for order in orders)):
            raise ConfigError(f"RDP orders must be a non-empty list of numbers > 1, got {orders!r}")
        self.orders: tuple[float, ...] | None = tuple(orders) if orders is not None else None
        super().__init__()
        self._per_step: dict[tuple[float, float], NDArray[np.float64]] = {}
        self._orders_used: NDArray[np.float64] | None = None

    def epsilon(self, delta: float) -> float:
        """The smallest epsilon over the orders at ``delta`` (``0.0`` before any step)."""
        delta = check_delta(delta)
        if not self._steps:
            return 0.0
        from dp_accounting.rdp import rdp_privacy_accountant  # type: ignore[import-untyped]

        total: NDArray[np.float64] | None = None
        for sigma, q, count in grouped(self.spent()):
            divergences = count * self._divergences(sigma, q)
            total = divergences if total is None else total + divergences
        assert total is not None and self._orders_used is not None
        epsilon, _ = rdp_privacy_accountant.compute_epsilon(self._orders_used, total, delta)
        return float(epsilon)

    def _divergences(self, noise_multiplier: float, sample_rate: float) -> NDArray[np.float64]:
        """The RDP of one release at each order (cached per pair)."""
        key = (noise_multiplier, sample_rate)
        cached = self._per_step.get(key)
        if cached is None:
            engine = self._engine()
            with quiet_dp_accounting():
                engine.compose(gaussian_event(self.sampling, noise_multiplier, sample_rate))
            cached = np.asarray(engine.rdp, np.float64)
            self._orders_used = np.asarray(engine.orders, np.float64)
            self._per_step[key] = cached
        return cached

    def _engine(self) -> Any:
        from dp_accounting.rdp import RdpAccountant as Engine

        return Engine(orders=self.orders, neighboring_relation=neighboring_relation(self.sampling))
