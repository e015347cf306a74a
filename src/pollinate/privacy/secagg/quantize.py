"""Fixed-point quantization into a power-of-two modulus, and modular vector arithmetic.

Secure aggregation sums integers modulo ``2**bits``, so each node maps its float
update onto integers first: values are clipped to ``[low, high]`` and mapped linearly
onto ``{0, ..., levels - 1}`` (Bonawitz et al., CCS 2017, Section 3; Bell et al.,
CCS 2020, use the same encoding). The sum of ``n`` such vectors lies in
``[0, n * (levels - 1)]``; as long as that is below the modulus, the modular sum *is*
the integer sum and maps back to the float sum exactly up to rounding.

Rounding is stochastic when an ``rng`` is given (``floor(v + u)``, ``u ~ U[0, 1)``):
unbiased, so the errors of many nodes cancel on average, with each entry off by less
than one step. Without an ``rng`` it rounds to nearest (off by at most half a step).
All arithmetic is vectorised on ``uint64`` arrays; wrap-around modulo ``2**64`` and a
final mask give the arithmetic modulo any ``2**bits`` with ``bits <= 64``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import ConfigError

__all__ = ["add_mod", "dequantize_sum", "mask_of", "quantize", "step_of", "sub_mod"]


def step_of(low: float, high: float, levels: int) -> float:
    """The width of one quantization level: ``(high - low) / (levels - 1)``."""
    return (high - low) / (levels - 1)


def _check(low: float, high: float, levels: int) -> None:
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ConfigError(f"quantization needs finite low < high, got [{low}, {high}]")
    if not isinstance(levels, int) or levels < 2:
        raise ConfigError(f"quantization needs at least 2 levels, got {levels!r}")


def quantize(
    values: NDArray[Any],
    *,
    low: float,
    high: float,
    levels: int,
    rng: np.random.Generator | None = None,
) -> NDArray[np.uint64]:
    """Clip ``values`` to ``[low, high]`` and map them onto ``{0, ..., levels - 1}``.

    Examples
    --------
    >>> quantize(np.array([-1.0, 0.0, 0.5, 7.0]), low=-1.0, high=1.0, levels=5)
    array([0, 2, 3, 4], dtype=uint64)
    """
    _check(low, high, levels)
    scaled = np.clip(np.asarray(values, np.float64), low, high)
    scaled -= low
    scaled *= (levels - 1) / (high - low)
    if rng is None:
        np.rint(scaled, out=scaled)
    else:
        scaled += rng.random(scaled.shape)
        np.floor(scaled, out=scaled)
    np.clip(scaled, 0, levels - 1, out=scaled)  # guards float error at the edges
    return scaled.astype(np.uint64)


def dequantize_sum(
    total: NDArray[np.uint64], *, count: int, low: float, high: float, levels: int
) -> NDArray[np.float64]:
    """The float sum of ``count`` quantized vectors from their integer sum ``total``.

    Examples
    --------
    >>> a = quantize(np.array([0.25, -0.5]), low=-1.0, high=1.0, levels=9)
    >>> b = quantize(np.array([0.5, 0.25]), low=-1.0, high=1.0, levels=9)
    >>> dequantize_sum(a + b, count=2, low=-1.0, high=1.0, levels=9)
    array([ 0.75, -0.25])
    """
    _check(low, high, levels)
    return total.astype(np.float64) * step_of(low, high, levels) + count * low


def mask_of(bits: int) -> np.uint64:
    """``2**bits - 1`` as a uint64, the mask that reduces modulo ``2**bits``."""
    if not 1 <= bits <= 64:
        raise ConfigError(f"modulus_bits must be within [1, 64], got {bits}")
    return np.uint64((1 << bits) - 1)


def add_mod(a: NDArray[np.uint64], b: NDArray[np.uint64], bits: int) -> NDArray[np.uint64]:
    """``(a + b) mod 2**bits``, in place into ``a`` (which must be a writable uint64 array).

    Examples
    --------
    >>> add_mod(np.array([250], np.uint64), np.array([10], np.uint64), 8)
    array([4], dtype=uint64)
    """
    np.add(a, b, out=a)
    np.bitwise_and(a, mask_of(bits), out=a)
    return a


def sub_mod(a: NDArray[np.uint64], b: NDArray[np.uint64], bits: int) -> NDArray[np.uint64]:
    """``(a - b) mod 2**bits``, in place into ``a``.

    Examples
    --------
    >>> sub_mod(np.array([4], np.uint64), np.array([10], np.uint64), 8)
    array([250], dtype=uint64)
    """
    np.subtract(a, b, out=a)
    np.bitwise_and(a, mask_of(bits), out=a)
    return a
