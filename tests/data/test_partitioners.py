"""Tests for pollinate.data.partitioners: each built-in's defining property, plus the contract."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from pollinate.data import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    PowerLawPartitioner,
    ShardPartitioner,
)
from pollinate.errors import ConfigError

ALL_PARTITIONERS: list[Partitioner] = [
    IidPartitioner(),
    DirichletPartitioner(alpha=0.5, min_partition_size=1),
    ShardPartitioner(shards_per_partition=2),
    PowerLawPartitioner(sigma=2.0),
]
IDS = ["iid", "dirichlet", "shard", "powerlaw"]
NOT_A_NUMBER: Any = "0.5"
NOT_AN_INT: Any = 1.5


def balanced_labels(num_classes: int = 10, per_class: int = 100) -> NDArray[np.int64]:
    """Labels with ``per_class`` samples of each class, in a shuffled order."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    return np.random.default_rng(1234).permutation(labels)


def class_fractions(labels: NDArray[Any], part: NDArray[np.int64], num_classes: int) -> Any:
    """The label distribution of one partition, as fractions."""
    counts = np.bincount(labels[part], minlength=num_classes)
    return counts / max(counts.sum(), 1)


def assert_disjoint_and_complete(parts: list[NDArray[np.int64]], num_samples: int) -> None:
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0), "indices must be sorted and unique"
    merged = np.concatenate(parts)
    assert merged.size == num_samples, "partitions overlap or miss samples"
    np.testing.assert_array_equal(np.sort(merged), np.arange(num_samples))


# ------------------------------------------------------------------ shared contract


@pytest.mark.parametrize("partitioner", ALL_PARTITIONERS, ids=IDS)
def test_is_a_partitioner(partitioner: Partitioner) -> None:
    assert isinstance(partitioner, Partitioner)


@pytest.mark.parametrize("partitioner", ALL_PARTITIONERS, ids=IDS)
def test_disjoint_complete_and_sorted(partitioner: Partitioner) -> None:
    labels = balanced_labels()

    parts = partitioner.partition(labels, 10, rng=np.random.default_rng(0))

    assert len(parts) == 10
    assert_disjoint_and_complete(parts, labels.size)


@pytest.mark.parametrize("partitioner", ALL_PARTITIONERS, ids=IDS)
def test_same_seed_same_partitions(partitioner: Partitioner) -> None:
    labels = balanced_labels()

    first = partitioner.partition(labels, 10, rng=np.random.default_rng(7))
    second = partitioner.partition(labels, 10, rng=np.random.default_rng(7))

    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("partitioner", ALL_PARTITIONERS, ids=IDS)
def test_different_seeds_differ(partitioner: Partitioner) -> None:
    labels = balanced_labels()

    first = partitioner.partition(labels, 10, rng=np.random.default_rng(1))
    second = partitioner.partition(labels, 10, rng=np.random.default_rng(2))

    assert any(not np.array_equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("partitioner", ALL_PARTITIONERS, ids=IDS)
def test_does_not_mutate_labels(partitioner: Partitioner) -> None:
    labels = balanced_labels()
    before = labels.copy()

    partitioner.partition(labels, 5, rng=np.random.default_rng(0))

    np.testing.assert_array_equal(labels, before)


@pytest.mark.parametrize("partitioner", ALL_PARTITIONERS, ids=IDS)
def test_string_labels_work(partitioner: Partitioner) -> None:
    labels = np.array(["cat", "dog", "eel", "fox"] * 50)

    parts = partitioner.partition(labels, 4, rng=np.random.default_rng(0))

    assert_disjoint_and_complete(parts, labels.size)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    num_samples=st.integers(min_value=1, max_value=300),
    num_classes=st.integers(min_value=1, max_value=12),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_property_disjoint_complete_for_any_input(
    data: st.DataObject, num_samples: int, num_classes: int, seed: int
) -> None:
    labels = np.random.default_rng(seed).integers(num_classes, size=num_samples)
    num_partitions = data.draw(st.integers(min_value=1, max_value=min(num_samples, 20)))
    shards = data.draw(st.integers(min_value=1, max_value=max(1, num_samples // num_partitions)))
    partitioners: list[Partitioner] = [
        IidPartitioner(),
        DirichletPartitioner(alpha=data.draw(st.floats(0.05, 100.0)), min_partition_size=0),
        ShardPartitioner(shards_per_partition=shards),
        PowerLawPartitioner(sigma=data.draw(st.floats(0.1, 5.0))),
    ]

    for partitioner in partitioners:
        parts = partitioner.partition(labels, num_partitions, rng=np.random.default_rng(seed))

        assert len(parts) == num_partitions
        assert_disjoint_and_complete(parts, num_samples)


# ------------------------------------------------------------------------------ IID


@settings(max_examples=40, deadline=None)
@given(
    num_samples=st.integers(min_value=1, max_value=500),
    data=st.data(),
)
def test_iid_sizes_differ_by_at_most_one(num_samples: int, data: st.DataObject) -> None:
    num_partitions = data.draw(st.integers(min_value=1, max_value=num_samples))

    parts = IidPartitioner().partition(
        np.zeros(num_samples), num_partitions, rng=np.random.default_rng(0)
    )

    sizes = [p.size for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_label_distribution_close_to_global() -> None:
    labels = balanced_labels(num_classes=10, per_class=500)

    parts = IidPartitioner().partition(labels, 5, rng=np.random.default_rng(0))

    for part in parts:
        # 1000 samples per part: a class fraction's std is about 0.0095.
        np.testing.assert_allclose(class_fractions(labels, part, 10), 0.1, atol=0.04)


# ------------------------------------------------------------------------ Dirichlet


def mean_max_class_fraction(alpha: float, seed: int) -> float:
    labels = balanced_labels(num_classes=10, per_class=200)
    parts = DirichletPartitioner(alpha=alpha, min_partition_size=1).partition(
        labels, 10, rng=np.random.default_rng(seed)
    )
    return float(np.mean([class_fractions(labels, p, 10).max() for p in parts]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dirichlet_smaller_alpha_means_more_label_skew(seed: int) -> None:
    skewed = mean_max_class_fraction(alpha=0.1, seed=seed)
    near_iid = mean_max_class_fraction(alpha=100.0, seed=seed)

    assert skewed > 0.5
    assert near_iid < 0.2
    assert skewed > 2.5 * near_iid


def test_dirichlet_skew_is_monotone_in_alpha_on_average() -> None:
    alphas = [0.05, 0.5, 5.0, 500.0]

    skew = [np.mean([mean_max_class_fraction(a, s) for s in range(3)]) for a in alphas]

    assert skew == sorted(skew, reverse=True)


@settings(max_examples=25, deadline=None)
@given(
    alpha=st.floats(min_value=0.1, max_value=10.0),
    min_size=st.integers(min_value=0, max_value=30),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_dirichlet_respects_min_partition_size(alpha: float, min_size: int, seed: int) -> None:
    labels = balanced_labels(num_classes=10, per_class=100)
    partitioner = DirichletPartitioner(alpha=alpha, min_partition_size=min_size, max_attempts=500)

    parts = partitioner.partition(labels, 10, rng=np.random.default_rng(seed))

    assert min(p.size for p in parts) >= min_size
    assert_disjoint_and_complete(parts, labels.size)


def test_dirichlet_gives_up_with_a_clear_error() -> None:
    labels = balanced_labels(num_classes=2, per_class=50)
    partitioner = DirichletPartitioner(alpha=0.01, min_partition_size=9, max_attempts=3)

    with pytest.raises(ConfigError, match=r"max_attempts=3.*raise alpha"):
        partitioner.partition(labels, 10, rng=np.random.default_rng(0))


def test_dirichlet_impossible_min_size_fails_before_drawing() -> None:
    with pytest.raises(ConfigError, match="need 200 samples but there are only 100"):
        DirichletPartitioner(alpha=1.0, min_partition_size=20).partition(
            np.zeros(100), 10, rng=np.random.default_rng(0)
        )


def test_dirichlet_tiny_alpha_still_partitions() -> None:
    labels = balanced_labels(num_classes=10, per_class=50)

    parts = DirichletPartitioner(alpha=1e-4, min_partition_size=0).partition(
        labels, 5, rng=np.random.default_rng(0)
    )

    assert_disjoint_and_complete(parts, labels.size)


# ---------------------------------------------------------------------------- Shard


@settings(max_examples=30, deadline=None)
@given(
    num_classes=st.integers(min_value=1, max_value=10),
    num_partitions=st.integers(min_value=1, max_value=20),
    shards_per_partition=st.integers(min_value=1, max_value=4),
    shard_size=st.integers(min_value=1, max_value=10),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_shard_partitions_hold_at_most_shards_per_partition_labels(
    num_classes: int, num_partitions: int, shards_per_partition: int, shard_size: int, seed: int
) -> None:
    # Make every class a whole number of shards, so shards are label-pure.
    num_shards = num_partitions * shards_per_partition
    shards_per_class = np.array_split(np.arange(num_shards), num_classes)
    labels = np.concatenate(
        [np.full(len(s) * shard_size, c) for c, s in enumerate(shards_per_class)]
    )
    labels = np.random.default_rng(seed).permutation(labels)

    parts = ShardPartitioner(shards_per_partition).partition(
        labels, num_partitions, rng=np.random.default_rng(seed)
    )

    assert_disjoint_and_complete(parts, labels.size)
    for part in parts:
        assert part.size == shards_per_partition * shard_size
        assert np.unique(labels[part]).size <= shards_per_partition


def test_shard_mcmahan_setting_is_pathologically_non_iid() -> None:
    # McMahan et al.: 100 clients x 2 shards; here 1000 samples, 10 labels.
    labels = balanced_labels(num_classes=10, per_class=100)

    parts = ShardPartitioner(2).partition(labels, 50, rng=np.random.default_rng(0))

    distinct = [np.unique(labels[p]).size for p in parts]
    assert max(distinct) <= 2
    assert all(p.size == 20 for p in parts)  # 100 shards of 10 samples


def test_shard_rejects_more_shards_than_samples() -> None:
    with pytest.raises(ConfigError, match="shards_per_partition=3"):
        ShardPartitioner(3).partition(np.zeros(20), 10, rng=np.random.default_rng(0))


# ------------------------------------------------------------------------- PowerLaw


def test_power_law_sizes_are_heavy_tailed() -> None:
    labels = balanced_labels(num_classes=10, per_class=1000)

    ratios = []
    for seed in range(5):
        parts = PowerLawPartitioner(sigma=2.0).partition(
            labels, 50, rng=np.random.default_rng(seed)
        )
        sizes = np.array([p.size for p in parts])
        ratios.append(sizes.max() / np.median(sizes))

    assert min(ratios) > 5.0
    assert np.median(ratios) > 10.0


def test_power_law_larger_sigma_means_heavier_tail() -> None:
    labels = np.zeros(20_000)

    def ratio(sigma: float) -> float:
        values = []
        for seed in range(5):
            parts = PowerLawPartitioner(sigma=sigma).partition(
                labels, 50, rng=np.random.default_rng(seed)
            )
            sizes = np.array([p.size for p in parts])
            values.append(sizes.max() / np.median(sizes))
        return float(np.median(values))

    assert ratio(0.25) < 2.0 < ratio(2.0)


def test_power_law_labels_are_iid_within_partitions() -> None:
    labels = balanced_labels(num_classes=10, per_class=2000)

    parts = PowerLawPartitioner(sigma=1.5).partition(labels, 20, rng=np.random.default_rng(0))

    for part in parts:
        if part.size >= 1000:  # large enough for a tight check
            np.testing.assert_allclose(class_fractions(labels, part, 10), 0.1, atol=0.04)
    # Pooled over every partition, the deviation from the global mix stays small.
    deviations = [
        np.abs(class_fractions(labels, p, 10) - 0.1).max() * np.sqrt(p.size) for p in parts
    ]
    assert np.median(deviations) < 1.0


@settings(max_examples=30, deadline=None)
@given(
    num_partitions=st.integers(min_value=1, max_value=100),
    min_size=st.integers(min_value=1, max_value=5),
    sigma=st.floats(min_value=0.1, max_value=50.0),
    seed=st.integers(min_value=0, max_value=10_000),
)
def test_power_law_every_partition_non_empty(
    num_partitions: int, min_size: int, sigma: float, seed: int
) -> None:
    parts = PowerLawPartitioner(sigma=sigma, min_partition_size=min_size).partition(
        np.zeros(500), num_partitions, rng=np.random.default_rng(seed)
    )

    assert min(p.size for p in parts) >= min_size
    assert_disjoint_and_complete(parts, 500)


# -------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: DirichletPartitioner(alpha=0.0), "alpha must be a finite number > 0, got 0.0"),
        (lambda: DirichletPartitioner(alpha=-1.0), "alpha"),
        (lambda: DirichletPartitioner(alpha=float("nan")), "alpha"),
        (lambda: DirichletPartitioner(alpha=NOT_A_NUMBER), "alpha must be a positive number"),
        (lambda: DirichletPartitioner(alpha=1.0, min_partition_size=-1), "min_partition_size"),
        (lambda: DirichletPartitioner(alpha=1.0, max_attempts=0), "max_attempts must be >= 1"),
        (lambda: ShardPartitioner(0), "shards_per_partition must be >= 1, got 0"),
        (lambda: ShardPartitioner(NOT_AN_INT), "shards_per_partition must be an integer"),
        (lambda: PowerLawPartitioner(sigma=0.0), "sigma"),
        (lambda: PowerLawPartitioner(min_partition_size=0), "min_partition_size must be >= 1"),
    ],
)
def test_bad_settings_raise_config_error(factory: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        factory()


@pytest.mark.parametrize("partitioner", ALL_PARTITIONERS, ids=IDS)
@pytest.mark.parametrize(
    ("labels", "num_partitions", "rng", "match"),
    [
        (np.zeros(10), 0, np.random.default_rng(0), "num_partitions must be >= 1, got 0"),
        (np.zeros(10), 11, np.random.default_rng(0), "num_partitions=11 exceeds"),
        (np.zeros(10), 2.0, np.random.default_rng(0), "num_partitions must be an integer"),
        (np.zeros(10), True, np.random.default_rng(0), "num_partitions must be an integer"),
        (np.zeros((10, 2)), 2, np.random.default_rng(0), r"one-dimensional.*argmax"),
        (np.zeros(0), 1, np.random.default_rng(0), "labels is empty"),
        (np.zeros(10), 2, 42, "rng must be a numpy.random.Generator, got int"),
    ],
)
def test_bad_call_arguments_raise_config_error(
    partitioner: Partitioner, labels: Any, num_partitions: Any, rng: Any, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        partitioner.partition(labels, num_partitions, rng=rng)


def test_partitioners_are_frozen_and_hashable() -> None:
    partitioner = DirichletPartitioner(alpha=0.5)

    with pytest.raises(AttributeError):
        partitioner.alpha = 1.0  # type: ignore[misc]
    assert hash(partitioner) == hash(DirichletPartitioner(alpha=0.5))
