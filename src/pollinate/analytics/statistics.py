"""Summable statistics: what a node sends so the server can combine without the data.

Pure arithmetic, no messages. Each statistic has a merge that gives exactly what the
pooled computation over all nodes' records would give (up to float rounding):

- :class:`Moments` (count, mean, M2) merged with Chan, Golub and LeVeque's parallel
  formula, numerically stable whatever the data's offset; convertible to and from
  *shifted sums* ``(n, sum(x - c), sum((x - c)**2))``, which are plain vector sums and
  so can travel under secure aggregation and take Gaussian noise;
- fixed-bin histogram counts (plain vector sums), and quantiles read off them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pollinate.errors import AggregationError, ConfigError

__all__ = ["Moments", "histogram_counts", "quantiles_from_histogram"]


@dataclass(frozen=True)
class Moments:
    """Count, mean and sum of squared deviations (M2) of a set of values.

    ``a + b`` gives the moments of the union of the two sets (Chan et al.'s parallel
    update), so nodes' moments merge in any order and grouping into the pooled ones.

    Chan, Golub and LeVeque, "Updating Formulae and a Pairwise Algorithm for Computing
    Sample Variances", COMPSTAT 1982 (Stanford tech. report STAN-CS-79-773).

    Examples
    --------
    >>> a = Moments.of([1.0, 2.0, 3.0])
    >>> b = Moments.of([10.0, 20.0])
    >>> merged = a + b
    >>> merged.count, merged.mean, round(merged.variance(ddof=1), 6)
    (5, 7.2, 63.7)
    >>> round(Moments.of([1.0, 2.0, 3.0, 10.0, 20.0]).variance(ddof=1), 6)  # pooled
    63.7
    """

    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    @classmethod
    def of(cls, values: ArrayLike) -> Moments:
        """The moments of ``values``, by the two-pass formula (stable for any offset)."""
        array = np.asarray(values, dtype=np.float64).ravel()
        if array.size == 0:
            return cls()
        mean = float(array.mean())
        return cls(int(array.size), mean, float(np.sum((array - mean) ** 2)))

    def __add__(self, other: Moments) -> Moments:
        if not isinstance(other, Moments):
            return NotImplemented
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / count)
        return Moments(count, mean, m2)

    def variance(self, *, ddof: int = 1) -> float:
        """``M2 / (count - ddof)``: the sample variance for ``ddof=1``."""
        if self.count - ddof <= 0:
            raise AggregationError(
                f"a variance with ddof={ddof} needs more than {ddof} records, got {self.count}"
            )
        return self.m2 / (self.count - ddof)

    def shifted_sums(self, shift: float) -> NDArray[np.float64]:
        """``[n, sum(x - shift), sum((x - shift)**2)]``: a vector that merges by addition."""
        offset = self.mean - shift
        return np.array(
            [self.count, self.count * offset, self.m2 + self.count * offset * offset],
            dtype=np.float64,
        )

    @classmethod
    def from_shifted_sums(cls, sums: ArrayLike, shift: float) -> Moments:
        """The inverse of :meth:`shifted_sums` (also for noisy sums: M2 is kept >= 0).

        The count is rounded to an integer; with a count below 1 there are no moments.
        """
        n, s1, s2 = (float(v) for v in np.asarray(sums, dtype=np.float64).ravel()[:3])
        count = round(n)
        if count < 1:
            return cls()
        offset = s1 / n
        return cls(count, shift + offset, max(s2 - n * offset * offset, 0.0))


def histogram_counts(values: ArrayLike, edges: Sequence[float]) -> NDArray[np.int64]:
    """Counts of ``values`` in the bins ``[e0, e1), [e1, e2), ..., [e_{k-1}, e_k]``.

    Values outside ``[e0, e_k]`` are clamped into the first or last bin (callers clamp
    on purpose: the bounds are part of the query). NaNs are ignored.

    Examples
    --------
    >>> histogram_counts([0.0, 1.0, 1.5, 9.0, 99.0], [0.0, 1.0, 2.0, 10.0]).tolist()
    [1, 2, 2]
    """
    edges_array = np.asarray(edges, dtype=np.float64)
    array = np.asarray(values, dtype=np.float64).ravel()
    array = np.clip(array[~np.isnan(array)], edges_array[0], edges_array[-1])
    counts, _ = np.histogram(array, bins=edges_array)
    return counts.astype(np.int64)


def quantiles_from_histogram(
    counts: ArrayLike, edges: Sequence[float], qs: Iterable[float]
) -> list[float]:
    """Quantiles read off histogram counts, interpolating linearly inside a bin.

    Each estimate lies in the same bin as the exact (inverted-CDF) quantile of the
    histogrammed values, so its error is at most that bin's width. Noisy counts (even
    negative ones) are read through their running total, made non-decreasing.

    Examples
    --------
    >>> quantiles_from_histogram([0, 4, 4, 0], [0.0, 1.0, 2.0, 3.0, 4.0], [0.25, 0.5, 1.0])
    [1.5, 2.0, 3.0]
    """
    raw = np.asarray(counts, dtype=np.float64).ravel()
    edges_array = np.asarray(edges, dtype=np.float64)
    if raw.size != edges_array.size - 1:
        raise ConfigError(f"{raw.size} counts do not fit {edges_array.size} bin edges")
    # The cumulative counts, made non-decreasing. With noisy counts this keeps the noise
    # centred, where clipping each bin at 0 would pile noise mass into the empty tails.
    cumulative = np.maximum.accumulate(np.clip(np.cumsum(raw), 0.0, None))
    total = float(cumulative[-1])
    if total <= 0:
        raise AggregationError("no records to take quantiles of (all histogram counts are 0)")
    weights = np.diff(cumulative, prepend=0.0)
    results: list[float] = []
    for q in qs:
        target = q * total
        # The first non-empty bin whose cumulative count reaches the target.
        candidates = np.flatnonzero((cumulative >= target * (1 - 1e-12)) & (weights > 0))
        index = int(candidates[0]) if candidates.size else int(np.flatnonzero(weights)[-1])
        before = float(cumulative[index] - weights[index])
        fraction = min(max((target - before) / weights[index], 0.0), 1.0)
        low, high = float(edges_array[index]), float(edges_array[index + 1])
        results.append(float(low + fraction * (high - low)))
    return results
