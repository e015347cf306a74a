"""SecAggConfig: the settings of secure aggregation, documented once.

Shared by the strategy wrapper (:class:`~pollinate.privacy.secagg.SecAggPlus`) and the
analytics entry point (:func:`~pollinate.privacy.secagg.secure_sum`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from pollinate.errors import ConfigError
from pollinate.privacy.secagg.messages import SecAggParams
from pollinate.records import keys

__all__ = ["SecAggConfig"]


@dataclass(frozen=True)
class SecAggConfig:
    """How SecAgg+ runs (Bell et al., CCS 2020, https://eprint.iacr.org/2020/704).

    Parameters
    ----------
    num_shares:
        Neighbours per node in the SecAgg+ graph (``k``): each node masks with and
        secret-shares over ``k`` others. Bell et al. take ``k = O(log n)``; ``k >= n -
        1`` is the complete graph of the original SecAgg (Bonawitz et al., CCS 2017).
        More shares tolerate more dropouts and cost more (per node: ``O(k)`` key
        agreements and mask expansions).
    reconstruction_threshold:
        Shares needed to reconstruct a node's secret (``t``, at least 2, at most
        ``num_shares``). A neighbourhood survives ``k - t`` dropouts; fewer than
        ``t`` colluding neighbours learn nothing. Every round also needs at least
        ``t`` inputs, so no sum of fewer than ``t`` updates is ever revealed.
    clipping_range:
        Update entries are clipped to ``[-clipping_range, clipping_range]`` before
        quantization. Values outside are changed, so choose it to cover the updates
        (with ``send_delta``, the change of the model in one round).
    quantization_range:
        Quantization levels of that interval: one step is ``2 * clipping_range /
        (quantization_range - 1)``, and each entry of the sum is off by less than
        one step per node (half a step on average, and unbiased).
    modulus_bits:
        Sums are computed modulo ``2**modulus_bits``; it must exceed ``num_nodes *
        quantization_range``. Masked vectors travel as uint32 up to 32 bits, as
        uint64 above.
    max_weight:
        For a weighted mean, a node scales its update by ``min(weight /
        max_weight, 1)``: weights above it are capped, and a large value for small
        weights costs precision (the update uses fewer levels).
    timeout:
        Seconds each stage waits for replies; nodes that have not answered by then
        count as dropped. ``None`` uses the caller's timeout (the round's).

    Examples
    --------
    >>> SecAggConfig(num_shares=8, reconstruction_threshold=5, clipping_range=1.0,
    ...              quantization_range=201).step
    0.01
    """

    num_shares: int = 10
    reconstruction_threshold: int = 6
    clipping_range: float = 8.0
    quantization_range: int = 1 << 22
    modulus_bits: int = 32
    max_weight: float = 1000.0
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.num_shares, int) or self.num_shares < 2:
            raise ConfigError(f"num_shares must be an int >= 2, got {self.num_shares!r}")
        t = self.reconstruction_threshold
        if not isinstance(t, int) or not 2 <= t <= self.num_shares:
            raise ConfigError(
                f"reconstruction_threshold must be an int within [2, num_shares="
                f"{self.num_shares}], got {t!r}"
            )
        if not (_finite(self.clipping_range) and self.clipping_range > 0):
            raise ConfigError(f"clipping_range must be positive, got {self.clipping_range!r}")
        if not (_finite(self.max_weight) and self.max_weight > 0):
            raise ConfigError(f"max_weight must be positive, got {self.max_weight!r}")
        if not isinstance(self.modulus_bits, int) or not 8 <= self.modulus_bits <= 64:
            raise ConfigError(
                f"modulus_bits must be an int within [8, 64], got {self.modulus_bits!r}"
            )
        q = self.quantization_range
        if not isinstance(q, int) or not 2 <= q < 1 << self.modulus_bits:
            raise ConfigError(
                f"quantization_range must be an int within [2, 2**modulus_bits), got {q!r}"
            )
        if self.timeout is not None and not (_finite(self.timeout) and self.timeout > 0):
            raise ConfigError(f"timeout must be positive seconds or None, got {self.timeout!r}")

    @property
    def step(self) -> float:
        """The quantization step: the largest rounding error of one entry of one node."""
        return 2 * self.clipping_range / (self.quantization_range - 1)

    def params(
        self,
        *,
        weighted: bool,
        delta: bool = False,
        arrays_key: str = keys.ARRAYS,
        metrics_key: str = keys.METRICS,
        weight_key: str = keys.NUM_EXAMPLES,
        noise_stddev: float = 0.0,
        noise_clipping_norm: float = 0.0,
    ) -> SecAggParams:
        """The settings of one session (with a fresh random session id)."""
        return SecAggParams(
            session=os.urandom(16),
            threshold=self.reconstruction_threshold,
            clipping_range=float(self.clipping_range),
            quantization_range=self.quantization_range,
            modulus_bits=self.modulus_bits,
            max_weight=float(self.max_weight),
            weighted=weighted,
            arrays_key=arrays_key,
            metrics_key=metrics_key,
            weight_key=weight_key,
            delta=delta,
            noise_stddev=float(noise_stddev),
            noise_clipping_norm=float(noise_clipping_norm),
        )


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
