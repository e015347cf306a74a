"""Differential privacy for queries: the Gaussian mechanism on bounded sums, and its cost.

Split as pfl-research splits it: *bound sensitivity* (each query clamps values to its
declared bounds, so one record moves its statistic vector by at most a known L2 norm;
see ``Query.unit_sensitivities``) and *add noise* (Gaussian noise of standard
deviation ``noise_multiplier * sensitivity`` on the merged, normalized sums, added by
the server). The neighbouring
relation is record level: two data sets differ by adding or removing one record (one
patient), wherever it is. The noise itself is :class:`pollinate.privacy.mechanisms.
GaussianMechanism`'s.

The cost of one query is exact: Balle and Wang's analytic Gaussian mechanism gives the
smallest epsilon for which Gaussian noise of a given multiplier is (epsilon, delta)-DP.
Costs of several queries add up in an accountant (anything with
``step(*, noise_multiplier, sample_rate, num_steps)`` and ``epsilon(delta)``, such as
the ones of ``pollinate.privacy.accounting``), which :func:`run_query` steps per query.

Balle and Wang, "Improving the Gaussian Mechanism for Differential Privacy: Analytical
Calibration and Optimal Denoising", ICML 2018, https://arxiv.org/abs/1805.06530.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from pollinate.errors import ConfigError

__all__ = [
    "PrivacyAccountant",
    "PrivacyCost",
    "QueryPrivacy",
    "gaussian_epsilon",
    "gaussian_noise_multiplier",
]


@runtime_checkable
class PrivacyAccountant(Protocol):
    """Adds up the privacy cost of a sequence of Gaussian releases."""

    def step(self, *, noise_multiplier: float, sample_rate: float, num_steps: int = 1) -> None:
        """Record ``num_steps`` releases with this noise multiplier and sampling rate."""
        ...

    def epsilon(self, delta: float) -> float:
        """The epsilon of everything recorded so far, at ``delta``."""
        ...


def _phi(x: float) -> float:
    """The standard normal CDF."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _delta_for(epsilon: float, noise_multiplier: float) -> float:
    """The tight delta of the Gaussian mechanism at ``epsilon`` (Balle and Wang, Thm. 8)."""
    z = noise_multiplier
    a, b = 1.0 / (2.0 * z), epsilon * z
    tail = _phi(-a - b)
    second = 0.0 if tail == 0.0 else math.exp(epsilon + math.log(tail))
    return max(_phi(a - b) - second, 0.0)


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise ConfigError(f"delta must be in (0, 1), got {delta!r}; 1e-6 is a common choice")


def gaussian_epsilon(noise_multiplier: float, delta: float) -> float:
    """The smallest epsilon of one Gaussian release with this noise multiplier at ``delta``.

    Examples
    --------
    >>> round(gaussian_epsilon(1.0, 1e-5), 3)
    4.377
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(f"noise_multiplier must be positive, got {noise_multiplier!r}")
    _check_delta(delta)
    if _delta_for(0.0, noise_multiplier) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while _delta_for(high, noise_multiplier) > delta:
        low, high = high, high * 2.0
        if high > 1e6:
            return math.inf
    for _ in range(100):  # bisection to float precision
        middle = 0.5 * (low + high)
        if _delta_for(middle, noise_multiplier) > delta:
            low = middle
        else:
            high = middle
    return high


def gaussian_noise_multiplier(epsilon: float, delta: float) -> float:
    """The smallest noise multiplier whose one release is (epsilon, delta)-DP.

    Examples
    --------
    >>> z = gaussian_noise_multiplier(1.0, 1e-6)
    >>> round(z, 3), round(gaussian_epsilon(z, 1e-6), 6)
    (4.225, 1.0)
    """
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ConfigError(f"epsilon must be positive, got {epsilon!r}")
    _check_delta(delta)
    low, high = 1e-3, 1.0
    while _delta_for(epsilon, high) > delta:
        low, high = high, high * 2.0
    for _ in range(100):
        middle = 0.5 * (low + high)
        if _delta_for(epsilon, middle) > delta:
            low = middle
        else:
            high = middle
    return high


@dataclass(frozen=True)
class QueryPrivacy:
    """Run a query under differential privacy (Gaussian noise on bounded sums).

    Parameters
    ----------
    noise_multiplier:
        Noise standard deviation per unit of L2 sensitivity. Use
        :meth:`for_epsilon` to choose it from a per-query epsilon instead.
    delta:
        The delta at which costs are reported.
    accountant:
        If given, stepped once per query, and the result reports its running total.

    Examples
    --------
    >>> QueryPrivacy.for_epsilon(1.0, delta=1e-6).noise_multiplier > 3
    True
    """

    noise_multiplier: float
    delta: float = 1e-6
    accountant: PrivacyAccountant | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        z = self.noise_multiplier
        if not (isinstance(z, (int, float)) and math.isfinite(z) and z > 0):
            raise ConfigError(f"noise_multiplier must be a positive number, got {z!r}")
        _check_delta(self.delta)
        if self.accountant is not None and not isinstance(self.accountant, PrivacyAccountant):
            raise ConfigError(
                "accountant must have step(*, noise_multiplier, sample_rate, num_steps) and "
                f"epsilon(delta); got {type(self.accountant).__name__}"
            )

    @classmethod
    def for_epsilon(
        cls, epsilon: float, *, delta: float = 1e-6, accountant: PrivacyAccountant | None = None
    ) -> QueryPrivacy:
        """The least noise that makes each query (epsilon, delta)-DP."""
        return cls(gaussian_noise_multiplier(epsilon, delta), delta, accountant)


@dataclass(frozen=True)
class PrivacyCost:
    """What a query spent, reported with its result.

    Attributes
    ----------
    epsilon, delta:
        The query's own guarantee (record-level, add/remove one record).
    noise_multiplier:
        Noise standard deviation per unit of L2 sensitivity.
    sensitivity:
        L2 sensitivity of the released vector after normalizing its components.
    noise_std:
        Standard deviation of the noise added to each component of the vector.
    total_epsilon:
        The accountant's running total at ``delta`` (``None`` without an accountant).
    """

    epsilon: float
    delta: float
    noise_multiplier: float
    sensitivity: float
    noise_std: tuple[float, ...]
    total_epsilon: float | None = None
