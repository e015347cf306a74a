"""The built-in query operators: count, sum, mean, variance, histogram and quantiles.

A query is a frozen description (column, row filter, bounds) that knows three things:
what to ask each node (:meth:`Query.request`), how far one record can move the answer
(:meth:`Query.unit_sensitivities`, :meth:`Query.sensitivity`; for DP), and how to turn
merged statistics into the value a statistician wants (:meth:`Query.from_sums` for
summed vectors, possibly noisy; :meth:`Query.from_plain` for the nodes' plain
vectors). Running it is
:func:`pollinate.analytics.run_query`'s job.

Bounds: when given, every value is clamped into them on the node before anything is
computed, with or without DP, so a query means the same thing under both. DP needs
them (except for counts): they fix the sensitivity.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from pollinate.analytics.request import (
    Condition,
    StatisticRequest,
    WhereSpec,
    check_bounds,
    check_edges,
    parse_where,
)
from pollinate.analytics.statistics import Moments, quantiles_from_histogram
from pollinate.errors import AggregationError, ConfigError

__all__ = [
    "Count",
    "Histogram",
    "HistogramCounts",
    "Mean",
    "Quantiles",
    "Query",
    "Sum",
    "Variance",
]

T = TypeVar("T")

_NO_RECORDS = (
    "no records matched the query on the nodes that answered "
    "(or, under DP, the noisy count is below 1)"
)


def _whole(value: float) -> int:
    """A possibly noisy count as a whole number >= 0 (post-processing, free under DP)."""
    return max(round(value), 0)


@dataclass(frozen=True, kw_only=True)
class Query(ABC, Generic[T]):
    """Base of the operators: a column of the nodes' records, filtered by ``where``.

    Parameters
    ----------
    where:
        Which records count: ``{"condition_x": 1}`` (equalities) or
        ``[("age", ">=", 18)]``; conditions are ANDed, missing values never match.
    """

    #: The ``query.<action>`` message type nodes answer it under.
    action: ClassVar[str]

    where: WhereSpec = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "where", parse_where(self.where))

    @property
    def conditions(self) -> tuple[Condition, ...]:
        """``where``, normalized."""
        return tuple(Condition(*c) for c in self.where)

    @abstractmethod
    def request(self, *, summable: bool) -> StatisticRequest:
        """What each node computes; ``summable`` when vectors must merge by addition."""

    @abstractmethod
    def unit_sensitivities(self) -> NDArray[np.float64]:
        """How far adding or removing one record can move each component of the summed
        vector (needs bounds). Dividing by them *normalizes* the vector."""

    def sensitivity(self) -> float:
        """L2 sensitivity of the normalized vector: sqrt(components), as one record can
        move every component by its unit at once."""
        return math.sqrt(len(self.unit_sensitivities()))

    def noise_std(self, noise_multiplier: float) -> NDArray[np.float64]:
        """Standard deviation of the Gaussian noise on each component of the sum."""
        return noise_multiplier * self.sensitivity() * self.unit_sensitivities()

    @abstractmethod
    def from_sums(self, total: NDArray[np.float64]) -> tuple[T, int]:
        """The value and record count from the sum of the nodes' summable vectors."""

    def from_plain(self, vectors: Sequence[NDArray[np.float64]]) -> tuple[T, int]:
        """The value and record count from each node's plain vector."""
        return self.from_sums(np.sum(vectors, axis=0))

    def _needs_bounds(self, bounds: tuple[float, float] | None) -> tuple[float, float]:
        if bounds is None:
            raise ConfigError(
                f"{self!r} has no bounds; differential privacy needs bounds=(lower, upper) "
                "to know how far one record can move the result"
            )
        return bounds


@dataclass(frozen=True, kw_only=True)
class Count(Query[int]):
    """How many records match ``where`` (with ``column``: have a value there).

    Examples
    --------
    >>> Count(where={"condition_x": 1}).request(summable=False).statistic
    'count'
    """

    action: ClassVar[str] = "count"
    column: str | None = None

    def request(self, *, summable: bool) -> StatisticRequest:
        return StatisticRequest("count", self.column, self.conditions, summable=summable)

    def unit_sensitivities(self) -> NDArray[np.float64]:
        return np.ones(1)

    def from_sums(self, total: NDArray[np.float64]) -> tuple[int, int]:
        count = _whole(float(total[0]))
        return count, count


@dataclass(frozen=True, kw_only=True)
class _Bounded(Query[T]):
    """A query of one column's values, optionally clamped into ``bounds``."""

    column: str
    bounds: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.column, str) or not self.column:
            raise ConfigError(f"{type(self).__name__} needs a column name, got {self.column!r}")
        if self.bounds is not None:
            object.__setattr__(self, "bounds", check_bounds(self.bounds))

    @property
    def _shift(self) -> float:
        """Summable moments are taken about the middle of the bounds (stabler than 0)."""
        return 0.0 if self.bounds is None else 0.5 * (self.bounds[0] + self.bounds[1])

    @property
    def _radius(self) -> float:
        lower, upper = self._needs_bounds(self.bounds)
        return 0.5 * (upper - lower)


@dataclass(frozen=True, kw_only=True)
class Sum(_Bounded[float]):
    """The sum of ``column`` over the matching records.

    Examples
    --------
    >>> Sum(column="cost", bounds=(-50, 1e4)).unit_sensitivities().tolist()
    [1.0, 10000.0]
    """

    action: ClassVar[str] = "sum"

    def request(self, *, summable: bool) -> StatisticRequest:
        return StatisticRequest("sum", self.column, self.conditions, self.bounds, summable=summable)

    def unit_sensitivities(self) -> NDArray[np.float64]:
        lower, upper = self._needs_bounds(self.bounds)
        return np.array([1.0, max(abs(lower), abs(upper))])

    def from_sums(self, total: NDArray[np.float64]) -> tuple[float, int]:
        return float(total[1]), _whole(float(total[0]))


@dataclass(frozen=True, kw_only=True)
class Mean(_Bounded[float]):
    """The mean of ``column`` over the matching records.

    Nodes send (count, mean), merged exactly like the pooled mean; under secure
    aggregation or DP, (count, sum of ``value - middle of bounds``) instead.

    Examples
    --------
    >>> Mean(column="age", bounds=(0, 120)).request(summable=True).shift
    60.0
    """

    action: ClassVar[str] = "mean"

    def request(self, *, summable: bool) -> StatisticRequest:
        return StatisticRequest(
            "mean", self.column, self.conditions, self.bounds, summable=summable, shift=self._shift
        )

    def unit_sensitivities(self) -> NDArray[np.float64]:
        return np.array([1.0, self._radius])

    def from_sums(self, total: NDArray[np.float64]) -> tuple[float, int]:
        count = _whole(float(total[0]))
        if count < 1:
            raise AggregationError(_NO_RECORDS)
        mean = self._shift + float(total[1]) / float(total[0])
        if self.bounds is not None:  # noise can push it out; the truth is inside
            mean = min(max(mean, self.bounds[0]), self.bounds[1])
        return mean, count

    def from_plain(self, vectors: Sequence[NDArray[np.float64]]) -> tuple[float, int]:
        moments = sum((Moments(int(v[0]), float(v[1])) for v in vectors), Moments())
        if moments.count < 1:
            raise AggregationError(_NO_RECORDS)
        return moments.mean, moments.count


@dataclass(frozen=True, kw_only=True)
class Variance(_Bounded[float]):
    """The variance of ``column`` over the matching records (sample variance by default).

    Nodes send (count, mean, M2), merged with Chan et al.'s parallel formula: the
    pooled two-pass variance, stable for data far from 0. Under secure aggregation or
    DP, shifted sums about the middle of the bounds instead.

    Parameters
    ----------
    ddof:
        Delta degrees of freedom: 1 for the sample variance, 0 for the population's.
    """

    action: ClassVar[str] = "variance"
    ddof: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ddof not in (0, 1):
            raise ConfigError(f"ddof must be 0 or 1, got {self.ddof!r}")

    def request(self, *, summable: bool) -> StatisticRequest:
        return StatisticRequest(
            "moments",
            self.column,
            self.conditions,
            self.bounds,
            summable=summable,
            shift=self._shift,
        )

    def unit_sensitivities(self) -> NDArray[np.float64]:
        radius = self._radius
        return np.array([1.0, radius, radius * radius])

    def _value(self, moments: Moments) -> tuple[float, int]:
        variance = moments.variance(ddof=self.ddof)
        if self.bounds is not None:  # no n values in the bounds vary more (noise may say so)
            n = moments.count
            variance = min(variance, self._radius**2 * n / (n - self.ddof))
        return variance, moments.count

    def from_sums(self, total: NDArray[np.float64]) -> tuple[float, int]:
        return self._value(Moments.from_shifted_sums(total, self._shift))

    def from_plain(self, vectors: Sequence[NDArray[np.float64]]) -> tuple[float, int]:
        moments = sum((Moments(int(v[0]), float(v[1]), float(v[2])) for v in vectors), Moments())
        return self._value(moments)


@dataclass(frozen=True)
class HistogramCounts:
    """Counts per bin: ``counts[i]`` records fell in ``[edges[i], edges[i + 1])``."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class _Binned(_Bounded[T]):
    """A query answered by fixed-bin histogram counts (a plain vector sum)."""

    num_bins: int = 10
    edges: Sequence[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.edges is not None:
            edges = check_edges(self.edges)
            if self.bounds is not None and self.bounds != (edges[0], edges[-1]):
                raise ConfigError(
                    f"bounds {self.bounds} disagree with the edges' range "
                    f"({edges[0]}, {edges[-1]}); give one of them"
                )
            object.__setattr__(self, "edges", edges)
            object.__setattr__(self, "bounds", (edges[0], edges[-1]))
            object.__setattr__(self, "num_bins", len(edges) - 1)
            return
        if self.bounds is None:
            raise ConfigError(f"{type(self).__name__} needs bounds=(lower, upper) or edges=[...]")
        if not isinstance(self.num_bins, int) or self.num_bins < 1:
            raise ConfigError(f"num_bins must be a positive int, got {self.num_bins!r}")
        lower, upper = self.bounds
        object.__setattr__(
            self, "edges", check_edges(np.linspace(lower, upper, self.num_bins + 1).tolist())
        )

    @property
    def bin_edges(self) -> tuple[float, ...]:
        """The bin edges, from ``edges`` or ``num_bins`` equal bins over ``bounds``."""
        return tuple(self.edges or ())  # always set by __post_init__

    def request(self, *, summable: bool) -> StatisticRequest:
        return StatisticRequest(
            "histogram",
            self.column,
            self.conditions,
            self.bounds,
            edges=self.bin_edges,
            summable=summable,
        )

    def unit_sensitivities(self) -> NDArray[np.float64]:
        return np.ones(len(self.bin_edges) - 1)

    def sensitivity(self) -> float:
        # One record is in exactly one bin: L2 sensitivity 1, whatever the bin count.
        return 1.0


@dataclass(frozen=True, kw_only=True)
class Histogram(_Binned[HistogramCounts]):
    """Counts of ``column`` in fixed bins: ``num_bins`` equal bins over ``bounds``, or
    explicit ``edges``. Values outside the range are clamped into the end bins.

    Examples
    --------
    >>> Histogram(column="age", bounds=(0, 100), num_bins=4).bin_edges
    (0.0, 25.0, 50.0, 75.0, 100.0)
    """

    action: ClassVar[str] = "histogram"

    def from_sums(self, total: NDArray[np.float64]) -> tuple[HistogramCounts, int]:
        counts = tuple(_whole(float(c)) for c in total)
        return HistogramCounts(self.bin_edges, counts), sum(counts)


@dataclass(frozen=True, kw_only=True)
class Quantiles(_Binned[dict[float, float]]):
    """Approximate quantiles of ``column``, read off a fixed-bin histogram.

    Each estimate is within one bin width of the exact quantile of the (clamped)
    values. A histogram rather than a mergeable sketch (KLL, t-digest): its counts are
    a plain vector sum, so it goes under secure aggregation and takes Gaussian noise
    with sensitivity 1, which no sketch's merge allows; the price is the fixed
    resolution, chosen with ``num_bins``.

    Parameters
    ----------
    qs:
        The quantile levels, each in [0, 1].

    Examples
    --------
    >>> Quantiles(column="age", bounds=(0, 120), num_bins=240).bin_edges[1]
    0.5
    """

    action: ClassVar[str] = "quantiles"
    qs: Sequence[float] = (0.25, 0.5, 0.75)
    num_bins: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        levels = tuple(float(q) for q in self.qs)
        if not levels or not all(0.0 <= q <= 1.0 for q in levels):
            raise ConfigError(f"qs must be levels in [0, 1], got {self.qs!r}")
        object.__setattr__(self, "qs", levels)

    def from_sums(self, total: NDArray[np.float64]) -> tuple[dict[float, float], int]:
        count = _whole(float(np.sum(total)))
        if count < 1:
            raise AggregationError(_NO_RECORDS)
        values = quantiles_from_histogram(total, self.bin_edges, self.qs)
        return dict(zip(self.qs, values, strict=True)), count
