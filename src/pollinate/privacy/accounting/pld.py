"""Privacy-loss-distribution accounting of sampled Gaussian releases (dp-accounting).

Koskela, Jälkö, Honkela, "Computing Tight Differential Privacy Guarantees Using FFT",
AISTATS 2020, https://arxiv.org/abs/1906.03049; Doroshenko, Ghazi, Kamath, Kumar,
Manurangsi, "Connect the Dots: Tighter Discrete Approximations of Privacy Loss
Distributions", PETS 2022, https://arxiv.org/abs/2207.04380.
"""

from __future__ import annotations

import math
from typing import final

from pollinate.errors import ConfigError
from pollinate.privacy.accounting._base import (
    PrivacyStep,
    Sampling,
    StepLedger,
    check_delta,
    check_sampling,
    gaussian_event,
    grouped,
    neighboring_relation,
    quiet_dp_accounting,
)

__all__ = ["PldAccountant"]


@final
class PldAccountant(StepLedger):
    """An :class:`~pollinate.privacy.accounting.Accountant` by privacy loss distributions.

    Tighter than RDP (it is numerically exact up to the discretization), but each
    :meth:`epsilon` composes the whole ledger again: about a second for hundreds of
    rounds with the same settings. Only Poisson sampling is supported, because
    dp-accounting's PLD accountant has no fixed-size sampling event; use
    :class:`RdpAccountant` with ``sampling="fixed-size"`` for that.

    Parameters
    ----------
    sampling:
        ``"poisson"`` (the only one supported, see above).
    value_discretization_interval:
        Grid of the privacy loss; smaller is tighter and slower.

    Examples
    --------
    >>> accountant = PldAccountant()
    >>> accountant.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=50)
    >>> round(accountant.epsilon(1e-5), 2)
    5.15
    """

    def __init__(
        self, *, sampling: Sampling = "poisson", value_discretization_interval: float = 1e-3
    ) -> None:
        if check_sampling(sampling) != "poisson":
            raise ConfigError(
                "PldAccountant supports only sampling='poisson' (dp-accounting has no PLD of "
                "fixed-size sampling); use RdpAccountant(sampling='fixed-size')"
            )
        if not (
            isinstance(value_discretization_interval, float)
            and math.isfinite(value_discretization_interval)
            and 0 < value_discretization_interval < 1
        ):
            raise ConfigError(
                "value_discretization_interval must be a float within (0, 1), got "
                f"{value_discretization_interval!r}"
            )
        self.sampling: Sampling = sampling
        self.value_discretization_interval = value_discretization_interval
        super().__init__()
        self._cache: tuple[tuple[PrivacyStep, ...], float, float] | None = None

    def epsilon(self, delta: float) -> float:
        """The epsilon of the composed ledger at ``delta`` (``0.0`` before any step)."""
        delta = check_delta(delta)
        steps = self.spent()
        if not steps:
            return 0.0
        if self._cache is not None and self._cache[:2] == (steps, delta):
            return self._cache[2]
        from dp_accounting.pld import PLDAccountant  # type: ignore[import-untyped]

        engine = PLDAccountant(
            neighboring_relation=neighboring_relation(self.sampling),
            value_discretization_interval=self.value_discretization_interval,
        )
        with quiet_dp_accounting():
            for sigma, q, count in grouped(steps):
                engine.compose(gaussian_event(self.sampling, sigma, q), count)
            epsilon = float(engine.get_epsilon(delta))
        self._cache = (steps, delta, epsilon)
        return epsilon
