"""The Gaussian mechanism: noise calibrated to a contribution bound, from an injected rng.

Differential privacy here is split in two (as in pfl-research's
``SplitPrivacyMechanism``): *bound the sensitivity* (clip each node's update to L2
norm ``C``, :mod:`pollinate.privacy.clipping`), then *add noise* of standard
deviation ``noise_multiplier * C`` (this module). Dwork and Roth, "The Algorithmic
Foundations of Differential Privacy", 2014, Appendix A (the Gaussian mechanism).

Randomness always comes from an ``np.random.Generator`` passed in. NumPy's generators
are not cryptographically secure; that matches the threat model of simulation and of
a trusted server, not of an adversary who can observe the generator's state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol, final

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord

__all__ = [
    "GaussianMechanism",
    "Mechanism",
    "add_gaussian_noise",
    "add_gaussian_noise_inplace",
    "gaussian_noise_std",
]


def gaussian_noise_std(*, clip_norm: float, noise_multiplier: float, num_shares: int = 1) -> float:
    """Standard deviation of the Gaussian noise for contributions bounded by ``clip_norm``.

    The noise of a sum of contributions of L2 norm at most ``clip_norm`` has standard
    deviation ``noise_multiplier * clip_norm`` (DP-FedAvg: McMahan, Ramage, Talwar,
    Zhang, "Learning Differentially Private Recurrent Language Models", ICLR 2018,
    https://arxiv.org/abs/1710.06963). With ``num_shares = n``, this is the share of
    each of ``n`` parties whose independent noises add up to it (distributed DP under
    secure aggregation): each adds ``N(0, (noise_multiplier * clip_norm)**2 / n)``.

    Examples
    --------
    >>> gaussian_noise_std(clip_norm=0.5, noise_multiplier=2.0)
    1.0
    >>> gaussian_noise_std(clip_norm=0.5, noise_multiplier=2.0, num_shares=4)
    0.5
    """
    for name, value in (("clip_norm", clip_norm), ("noise_multiplier", noise_multiplier)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (math.isfinite(value) and value >= 0)
        ):
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(num_shares, bool) or not isinstance(num_shares, int) or num_shares < 1:
        raise ConfigError(f"num_shares must be an int >= 1, got {num_shares!r}")
    return float(noise_multiplier) * float(clip_norm) / math.sqrt(num_shares)


def add_gaussian_noise_inplace(
    arrays: MutableMapping[str, NDArray[Any]], *, std: float, rng: np.random.Generator
) -> None:
    """Add independent ``N(0, std**2)`` noise to every entry of float arrays, in place.

    Arrays must be writable floats (noise cannot be added to integers or bools without
    changing what it means); the noise is drawn in float64, in the arrays' order.
    """
    _check_std(std)
    for name, array in arrays.items():
        _check_float(name, array)
        if not array.flags.writeable:
            raise ConfigError(
                f"array {name!r} is read-only (e.g. received off the wire); use "
                "add_gaussian_noise, which returns new arrays"
            )
        if std > 0:
            noise = rng.normal(0.0, std, size=array.shape)
            np.add(array, noise, out=array, casting="unsafe")


def add_gaussian_noise(
    arrays: Mapping[str, NDArray[Any]], *, std: float, rng: np.random.Generator
) -> ArrayRecord:
    """New arrays: ``arrays`` plus independent ``N(0, std**2)`` noise (see the _inplace form).

    Examples
    --------
    >>> noisy = add_gaussian_noise(ArrayRecord({"w": np.zeros(3)}), std=0.0,
    ...                            rng=np.random.default_rng(0))
    >>> noisy["w"]
    array([0., 0., 0.])
    """
    out = ArrayRecord()
    for name, array in arrays.items():
        _check_float(name, array)
        out[name] = np.array(array, copy=True)
    add_gaussian_noise_inplace(out, std=std, rng=rng)
    return out


class Mechanism(Protocol):
    """Adds noise calibrated to a sensitivity: the add-noise half of a DP release."""

    def noise_std(self, sensitivity: float) -> float:
        """The standard deviation of the noise for this L2 sensitivity."""
        ...

    def add_noise(
        self, arrays: Mapping[str, NDArray[Any]], *, sensitivity: float, rng: np.random.Generator
    ) -> ArrayRecord:
        """New arrays with the noise added."""
        ...


@final
@dataclass(frozen=True)
class GaussianMechanism:
    """The Gaussian mechanism with a fixed ``noise_multiplier`` (std / sensitivity).

    ``num_shares`` splits the noise among that many parties (see
    :func:`gaussian_noise_std`), so that the sum of their outputs carries it whole.

    Examples
    --------
    >>> GaussianMechanism(noise_multiplier=1.2).noise_std(sensitivity=0.5)
    0.6
    """

    noise_multiplier: float
    num_shares: int = 1

    def __post_init__(self) -> None:
        gaussian_noise_std(
            clip_norm=1.0, noise_multiplier=self.noise_multiplier, num_shares=self.num_shares
        )

    def noise_std(self, sensitivity: float) -> float:
        """``noise_multiplier * sensitivity / sqrt(num_shares)``."""
        return gaussian_noise_std(
            clip_norm=sensitivity,
            noise_multiplier=self.noise_multiplier,
            num_shares=self.num_shares,
        )

    def add_noise(
        self, arrays: Mapping[str, NDArray[Any]], *, sensitivity: float, rng: np.random.Generator
    ) -> ArrayRecord:
        """New arrays with Gaussian noise of :meth:`noise_std` added."""
        return add_gaussian_noise(arrays, std=self.noise_std(sensitivity), rng=rng)


def _check_std(std: float) -> None:
    if (
        isinstance(std, bool)
        or not isinstance(std, (int, float))
        or not (math.isfinite(std) and std >= 0)
    ):
        raise ConfigError(f"the noise std must be a finite number >= 0, got {std!r}")


def _check_float(name: str, array: NDArray[Any]) -> None:
    if array.dtype.kind != "f":
        raise ConfigError(
            f"array {name!r} has dtype {array.dtype}; noise can only be added to float arrays "
            "(keep integer and bool state out of the privatized update)"
        )
