"""Partitioners: split one labelled data set into the local data sets of many nodes.

A partitioner is a pure function of ``(labels, num_partitions, rng)``. It sees only the
labels (never the features), so the same partitioner works for images, text or
tabular data, and the same seed always gives the same partitions. Each built-in
models one kind of heterogeneity found in real federations:

============================  =====================================================
:class:`IidPartitioner`       none: the baseline every non-IID result is compared to
:class:`DirichletPartitioner` label skew, tuned smoothly by ``alpha``
:class:`ShardPartitioner`     extreme label skew (each node sees only a few classes)
:class:`PowerLawPartitioner`  quantity skew (a few nodes hold most of the data)
============================  =====================================================

Write your own by implementing the :class:`Partitioner` protocol; no base class needed.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Protocol, final, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import ConfigError

__all__ = [
    "DirichletPartitioner",
    "IidPartitioner",
    "Partitioner",
    "PowerLawPartitioner",
    "ShardPartitioner",
]


@runtime_checkable
class Partitioner(Protocol):
    """Split a data set, given its labels, into ``num_partitions`` disjoint parts.

    Implementations return, for each partition, the **sorted** ``int64`` indices of
    its samples in the data set. Partitions are disjoint and together cover every
    sample, unless the implementation documents otherwise. The result must depend
    only on the arguments, so the same ``rng`` seed gives the same partitions (that is
    what lets every virtual node of a simulation rebuild its own partition
    independently and agree with all the others).

    Examples
    --------
    >>> import numpy as np
    >>> class BlockPartitioner:
    ...     def partition(self, labels, num_partitions, *, rng):
    ...         return [np.sort(part).astype(np.int64) for part in
    ...                 np.array_split(np.arange(len(labels)), num_partitions)]
    >>> isinstance(BlockPartitioner(), Partitioner)
    True
    """

    def partition(
        self, labels: NDArray[Any], num_partitions: int, *, rng: np.random.Generator
    ) -> list[NDArray[np.int64]]:
        """Return the sorted sample indices of each of ``num_partitions`` partitions."""
        ...


# --------------------------------------------------------------------------- helpers


def _check_int(owner: str, name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(
            f"{owner}: {name} must be an integer >= {minimum}, got {value!r} "
            f"of type {type(value).__name__}"
        )
    as_int = operator.index(value)
    if as_int < minimum:
        raise ConfigError(f"{owner}: {name} must be >= {minimum}, got {as_int}")
    return as_int


def _check_positive_float(owner: str, name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number > 0, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(
            f"{owner}: {name} must be a positive number, got {value!r} "
            f"of type {type(value).__name__}"
        )
    as_float = float(value)
    if not math.isfinite(as_float) or as_float <= 0.0:
        raise ConfigError(f"{owner}: {name} must be a finite number > 0, got {as_float}")
    return as_float


def _check_call(
    owner: str, labels: object, num_partitions: object, rng: object
) -> tuple[NDArray[np.int64], int]:
    """Validate the arguments of ``partition``; return the labels as class codes 0..C-1."""
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(
            f"{owner}.partition: rng must be a numpy.random.Generator, got "
            f"{type(rng).__name__}; pass rng=numpy.random.default_rng(seed)"
        )
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ConfigError(
            f"{owner}.partition: labels must be one-dimensional (one label per sample), "
            f"got shape {array.shape}; for one-hot labels pass labels.argmax(axis=1)"
        )
    if array.size == 0:
        raise ConfigError(f"{owner}.partition: labels is empty; there is nothing to partition")
    count = _check_int(f"{owner}.partition", "num_partitions", num_partitions, minimum=1)
    if count > array.size:
        raise ConfigError(
            f"{owner}.partition: num_partitions={count} exceeds the number of samples "
            f"({array.size}); use at most {array.size} partitions or more data"
        )
    # Class codes make any label dtype (ints, strings) work the same way.
    _, codes = np.unique(array, return_inverse=True)
    return codes.astype(np.int64).reshape(-1), count


def _sorted_parts(parts: list[NDArray[Any]]) -> list[NDArray[np.int64]]:
    """Return each part as a sorted int64 array."""
    return [np.sort(part).astype(np.int64, copy=False) for part in parts]


def _allocate(weights: NDArray[np.float64], total: int) -> NDArray[np.int64]:
    """Split ``total`` into integer counts proportional to ``weights`` (largest remainder)."""
    raw = weights / weights.sum() * total
    counts: NDArray[np.int64] = np.floor(raw).astype(np.int64)
    shortfall = total - int(counts.sum())
    if shortfall > 0:
        # Stable sort keeps ties in partition order, so the result is deterministic.
        order = np.argsort(-(raw - counts), kind="stable")
        counts[order[:shortfall]] += 1
    return counts


# ------------------------------------------------------------------------ built-ins


@final
@dataclass(frozen=True)
class IidPartitioner:
    """Shuffle uniformly and cut into parts whose sizes differ by at most one.

    The IID baseline of McMahan et al., "Communication-Efficient Learning of Deep
    Networks from Decentralized Data", AISTATS 2017 (https://arxiv.org/abs/1602.05629):
    every partition is a uniform random sample, so its label distribution matches the
    global one up to sampling noise.

    Examples
    --------
    >>> import numpy as np
    >>> parts = IidPartitioner().partition(np.zeros(10), 3, rng=np.random.default_rng(0))
    >>> [len(p) for p in parts]
    [4, 3, 3]
    """

    def partition(
        self, labels: NDArray[Any], num_partitions: int, *, rng: np.random.Generator
    ) -> list[NDArray[np.int64]]:
        """Return ``num_partitions`` uniform random parts of nearly equal size."""
        codes, count = _check_call("IidPartitioner", labels, num_partitions, rng)
        return _sorted_parts(np.array_split(rng.permutation(codes.size), count))


@final
@dataclass(frozen=True)
class DirichletPartitioner:
    """Label skew: each class is spread over the partitions in Dirichlet proportions.

    For every class independently, proportions ``p ~ Dir(alpha, ..., alpha)`` over the
    partitions are drawn and that class's samples are dealt out accordingly, as in
    Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for
    Federated Visual Classification", 2019 (https://arxiv.org/abs/1909.06335) and
    Yurochkin et al., "Bayesian Nonparametric Federated Learning of Neural Networks",
    ICML 2019 (https://arxiv.org/abs/1905.12022). Small ``alpha`` (0.1) gives each
    partition a few dominant classes; large ``alpha`` (100) approaches IID.

    Small alpha can leave a partition (nearly) empty, so the whole draw is repeated
    until every partition holds at least ``min_partition_size`` samples, at most
    ``max_attempts`` times; then :class:`~pollinate.errors.ConfigError` says what to
    relax. Partition sizes are not balanced: label skew brings quantity skew with it.

    Parameters
    ----------
    alpha:
        Dirichlet concentration, > 0. Smaller means more label skew.
    min_partition_size:
        Fewest samples any partition may get, >= 0.
    max_attempts:
        How many draws to try before giving up, >= 1.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(10), 100)
    >>> parts = DirichletPartitioner(alpha=0.5).partition(
    ...     labels, 5, rng=np.random.default_rng(0))
    >>> sum(len(p) for p in parts)
    1000
    """

    alpha: float
    min_partition_size: int = 10
    max_attempts: int = 100

    def __post_init__(self) -> None:
        _check_positive_float("DirichletPartitioner", "alpha", self.alpha)
        _check_int("DirichletPartitioner", "min_partition_size", self.min_partition_size, minimum=0)
        _check_int("DirichletPartitioner", "max_attempts", self.max_attempts, minimum=1)

    def partition(
        self, labels: NDArray[Any], num_partitions: int, *, rng: np.random.Generator
    ) -> list[NDArray[np.int64]]:
        """Return ``num_partitions`` label-skewed parts, each of at least the minimum size."""
        codes, count = _check_call("DirichletPartitioner", labels, num_partitions, rng)
        if self.min_partition_size * count > codes.size:
            raise ConfigError(
                f"DirichletPartitioner: {count} partitions of at least "
                f"min_partition_size={self.min_partition_size} need "
                f"{self.min_partition_size * count} samples but there are only {codes.size}; "
                "lower min_partition_size or num_partitions"
            )
        by_class = [np.flatnonzero(codes == c) for c in range(int(codes.max()) + 1)]
        concentration = np.full(count, float(self.alpha))
        smallest = 0
        for _ in range(self.max_attempts):
            parts: list[list[NDArray[np.int64]]] = [[] for _ in range(count)]
            for members in by_class:
                proportions = rng.dirichlet(concentration)
                if not np.all(np.isfinite(proportions)) or proportions.sum() <= 0.0:
                    # Extremely small alpha can underflow; give the class to one partition.
                    proportions = np.zeros(count)
                    proportions[rng.integers(count)] = 1.0
                cuts = _allocate(proportions, members.size).cumsum()[:-1]
                for i, chunk in enumerate(np.split(rng.permutation(members), cuts)):
                    parts[i].append(chunk)
            merged = [np.concatenate(chunks) for chunks in parts]
            smallest = min(part.size for part in merged)
            if smallest >= self.min_partition_size:
                return _sorted_parts(merged)
        raise ConfigError(
            f"DirichletPartitioner(alpha={self.alpha}) could not give every one of {count} "
            f"partitions at least min_partition_size={self.min_partition_size} samples in "
            f"max_attempts={self.max_attempts} draws (last draw's smallest partition: "
            f"{smallest}); raise alpha or max_attempts, or lower min_partition_size or "
            "num_partitions"
        )


@final
@dataclass(frozen=True)
class ShardPartitioner:
    """Pathological label skew: sort by label, cut into shards, deal shards to partitions.

    The non-IID scheme of McMahan et al., "Communication-Efficient Learning of Deep
    Networks from Decentralized Data", AISTATS 2017 (https://arxiv.org/abs/1602.05629):
    samples are sorted by label, cut into ``num_partitions * shards_per_partition``
    contiguous shards of (nearly) equal size, and every partition gets
    ``shards_per_partition`` shards chosen at random. Their MNIST setting is 100
    partitions of 2 shards each, so most clients see only two digits.

    A shard holds one label when class sizes are multiples of the shard size, and then
    a partition holds at most ``shards_per_partition`` labels; otherwise a shard may
    straddle neighbouring labels (so a partition may hold a few more). Within a label,
    which samples land in which shard is random too.

    Parameters
    ----------
    shards_per_partition:
        Shards each partition receives, >= 1.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(10), 20)
    >>> parts = ShardPartitioner(shards_per_partition=2).partition(
    ...     labels, 10, rng=np.random.default_rng(0))
    >>> max(len(np.unique(labels[p])) for p in parts) <= 2
    True
    """

    shards_per_partition: int = 2

    def __post_init__(self) -> None:
        _check_int("ShardPartitioner", "shards_per_partition", self.shards_per_partition, minimum=1)

    def partition(
        self, labels: NDArray[Any], num_partitions: int, *, rng: np.random.Generator
    ) -> list[NDArray[np.int64]]:
        """Return ``num_partitions`` parts of ``shards_per_partition`` label-sorted shards."""
        codes, count = _check_call("ShardPartitioner", labels, num_partitions, rng)
        num_shards = count * self.shards_per_partition
        if num_shards > codes.size:
            raise ConfigError(
                f"ShardPartitioner: {count} partitions x shards_per_partition="
                f"{self.shards_per_partition} = {num_shards} shards, more than the "
                f"{codes.size} samples; lower shards_per_partition or num_partitions"
            )
        # Shuffle, then stable-sort by label: label-sorted with a random order within labels.
        shuffled = rng.permutation(codes.size)
        order = shuffled[np.argsort(codes[shuffled], kind="stable")]
        shards = np.array_split(order, num_shards)
        dealt = rng.permutation(num_shards).reshape(count, self.shards_per_partition)
        return _sorted_parts([np.concatenate([shards[s] for s in row]) for row in dealt])


@final
@dataclass(frozen=True)
class PowerLawPartitioner:
    """Quantity skew: heavy-tailed partition sizes, labels IID within each partition.

    Partition sizes are proportional to log-normal weights ``exp(N(0, sigma**2))``
    (on top of ``min_partition_size`` each), and each partition is a uniform random
    sample of that size. This is the "power law" of Li et al., "Federated
    Optimization in Heterogeneous Networks" (FedProx), MLSys 2020
    (https://arxiv.org/abs/1812.06127), and of the LEAF benchmark (Caldas et al.,
    2018, https://arxiv.org/abs/1812.01097), whose generators draw per-device sample
    counts from a log-normal. Larger ``sigma`` means a heavier tail: a few partitions
    hold most samples while the median partition is small.

    Parameters
    ----------
    sigma:
        Standard deviation of the log of the weights, > 0.
    min_partition_size:
        Fewest samples any partition gets, >= 1 (so no partition is empty).

    Examples
    --------
    >>> import numpy as np
    >>> parts = PowerLawPartitioner(sigma=2.0).partition(
    ...     np.zeros(1000), 20, rng=np.random.default_rng(0))
    >>> min(len(p) for p in parts) >= 1 and sum(len(p) for p in parts) == 1000
    True
    """

    sigma: float = 2.0
    min_partition_size: int = 1

    def __post_init__(self) -> None:
        _check_positive_float("PowerLawPartitioner", "sigma", self.sigma)
        _check_int("PowerLawPartitioner", "min_partition_size", self.min_partition_size, minimum=1)

    def partition(
        self, labels: NDArray[Any], num_partitions: int, *, rng: np.random.Generator
    ) -> list[NDArray[np.int64]]:
        """Return ``num_partitions`` IID parts with log-normally distributed sizes."""
        codes, count = _check_call("PowerLawPartitioner", labels, num_partitions, rng)
        floor_total = self.min_partition_size * count
        if floor_total > codes.size:
            raise ConfigError(
                f"PowerLawPartitioner: {count} partitions of at least min_partition_size="
                f"{self.min_partition_size} need {floor_total} samples but there are only "
                f"{codes.size}; lower min_partition_size or num_partitions"
            )
        # exp(z - max z) has the same proportions as exp(z) but cannot overflow.
        log_weights = rng.normal(0.0, float(self.sigma), size=count)
        weights = np.exp(log_weights - log_weights.max())
        sizes = self.min_partition_size + _allocate(weights, codes.size - floor_total)
        return _sorted_parts(np.split(rng.permutation(codes.size), sizes.cumsum()[:-1]))
