"""Tests for pollinate.data.federated_dataset: FederatedDataset and load_sklearn."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from pollinate.data import (
    SKLEARN_DATASETS,
    DirichletPartitioner,
    FederatedDataset,
    IidPartitioner,
    Partition,
    ShardPartitioner,
    load_sklearn,
)
from pollinate.errors import ConfigError

# name -> (samples, features, classes)
SIZES = {
    "breast_cancer": (569, 30, 2),
    "digits": (1797, 64, 10),
    "iris": (150, 4, 3),
    "wine": (178, 13, 3),
}


def small_dataset(**overrides: Any) -> FederatedDataset:
    """Ten training samples in two partitions, four test samples."""
    kwargs: dict[str, Any] = {
        "x": np.arange(20, dtype=np.float64).reshape(10, 2),
        "y": np.arange(10) % 2,
        "partitions": [np.arange(0, 5), np.arange(5, 10)],
        "x_test": np.zeros((4, 2)),
        "y_test": np.arange(4) % 2,
    }
    kwargs.update(overrides)
    return FederatedDataset(**kwargs)


# ----------------------------------------------------------------- FederatedDataset


def test_dataset_converts_dtypes_and_counts() -> None:
    ds = small_dataset()

    assert ds.x.dtype == np.float32 and ds.x_test.dtype == np.float32
    assert ds.y.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert (ds.num_partitions, ds.num_classes, ds.num_features) == (2, 2, 2)


def test_partition_splits_its_samples_into_train_and_test() -> None:
    ds = small_dataset(node_test_fraction=0.4)

    part = ds.partition(1)

    assert isinstance(part, Partition)
    assert (part.num_train, part.num_test) == (3, 2)
    rows = np.concatenate([part.x_train, part.x_test])[:, 0]
    np.testing.assert_array_equal(np.sort(rows), [10, 12, 14, 16, 18])
    np.testing.assert_array_equal(part.y_train, (part.x_train[:, 0] // 2) % 2)


def test_partition_split_is_deterministic_and_order_independent() -> None:
    first, second = small_dataset(seed=3), small_dataset(seed=3)

    a = first.partition(1)
    second.partition(0)  # asking for another node first must not change node 1's split
    b = second.partition(1)

    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_train, b.y_train)


def test_partition_split_depends_on_seed() -> None:
    ds = small_dataset(
        x=np.arange(400.0).reshape(200, 2),
        y=np.arange(200) % 2,
        partitions=[np.arange(200)],
    )
    other = FederatedDataset(
        x=ds.x, y=ds.y, partitions=ds.partitions, x_test=ds.x_test, y_test=ds.y_test, seed=1
    )

    assert not np.array_equal(ds.partition(0).x_test, other.partition(0).x_test)


def test_zero_node_test_fraction_keeps_everything_for_training() -> None:
    part = small_dataset(node_test_fraction=0.0).partition(0)

    assert (part.num_train, part.num_test) == (5, 0)
    assert part.x_test.shape == (0, 2)


def test_centralized_test_returns_the_held_out_split() -> None:
    x_test, y_test = small_dataset().centralized_test()

    assert x_test.shape == (4, 2)
    np.testing.assert_array_equal(y_test, [0, 1, 0, 1])


def test_dataset_arrays_are_read_only_and_arguments_untouched() -> None:
    x = np.arange(20, dtype=np.float32).reshape(10, 2)

    ds = small_dataset(x=x)

    assert x.flags.writeable, "the caller's array must not be changed"
    with pytest.raises(ValueError, match="read-only"):
        ds.x[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        ds.partitions[0][0] = 3


@pytest.mark.parametrize("partition_id", [-1, 2, 100])
def test_partition_id_out_of_range(partition_id: int) -> None:
    with pytest.raises(ConfigError, match=r"out of range.*2 partitions, ids 0 to 1"):
        small_dataset().partition(partition_id)


def test_partition_id_must_be_an_integer() -> None:
    with pytest.raises(ConfigError, match="partition_id must be an integer"):
        small_dataset().partition("0")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"y": np.zeros(9)}, "one label per feature row"),
        ({"y_test": np.zeros(3)}, "one label per feature row"),
        ({"x_test": np.zeros((4, 3))}, "share one feature space"),
        ({"partitions": []}, "partitions is empty"),
        ({"partitions": [np.array([0, 10])]}, r"partition 0 has indices outside \[0, 10\)"),
        ({"partitions": [np.array([0.5])]}, "1-D integer index array"),
        ({"node_test_fraction": 1.0}, r"node_test_fraction must be in \[0, 1\)"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_invalid_dataset_raises_config_error(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        small_dataset(**overrides)


# --------------------------------------------------------------------- load_sklearn


@pytest.mark.parametrize("name", SKLEARN_DATASETS)
def test_load_sklearn_shapes_and_dtypes(name: str) -> None:
    num_samples, num_features, num_classes = SIZES[name]

    ds = load_sklearn(name, num_partitions=4, partitioner=IidPartitioner())

    x_test, y_test = ds.centralized_test()
    assert y_test.shape == (x_test.shape[0],)
    assert ds.x.shape[1] == x_test.shape[1] == num_features
    assert ds.x.shape[0] + x_test.shape[0] == num_samples
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64
    assert ds.num_classes == num_classes
    assert ds.num_partitions == 4
    assert sum(ds.partition(i).num_train + ds.partition(i).num_test for i in range(4)) == len(ds.y)


def test_centralized_split_is_stratified() -> None:
    ds = load_sklearn("digits", num_partitions=2, partitioner=IidPartitioner(), test_fraction=0.25)

    x_test, y_test = ds.centralized_test()

    assert abs(x_test.shape[0] - 0.25 * 1797) <= 10
    train_mix = np.bincount(ds.y) / ds.y.size
    test_mix = np.bincount(y_test) / y_test.size
    np.testing.assert_allclose(test_mix, train_mix, atol=0.01)


def test_centralized_test_samples_are_held_out_of_every_partition() -> None:
    ds = load_sklearn("iris", num_partitions=3, partitioner=IidPartitioner(), standardize=False)
    x_test, _ = ds.centralized_test()

    train_rows = {tuple(row) for row in ds.x.tolist()}
    test_rows = [tuple(row) for row in x_test.tolist()]

    # iris has one duplicated flower; every other test row is absent from training
    assert sum(row in train_rows for row in test_rows) <= 1
    assert len(ds.y) + len(test_rows) == 150


def test_standardization_uses_training_statistics_only() -> None:
    ds = load_sklearn("wine", num_partitions=2, partitioner=IidPartitioner())

    np.testing.assert_allclose(ds.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x.std(axis=0), 1.0, atol=1e-4)
    # The test split is transformed with the same statistics, so it is not exactly 0/1.
    x_test, _ = ds.centralized_test()
    assert np.abs(x_test.mean(axis=0)).max() > 1e-3


def test_standardize_false_keeps_raw_values() -> None:
    from sklearn.datasets import load_iris

    ds = load_sklearn("iris", num_partitions=2, partitioner=IidPartitioner(), standardize=False)

    raw = {tuple(np.float32(v) for v in row) for row in load_iris().data}
    assert all(tuple(row) in raw for row in ds.x)


def test_constant_features_do_not_produce_nans() -> None:
    ds = load_sklearn("digits", num_partitions=2, partitioner=IidPartitioner())

    assert np.isfinite(ds.x).all() and np.isfinite(ds.centralized_test()[0]).all()


def test_load_sklearn_is_cached_and_deterministic() -> None:
    kwargs: dict[str, Any] = {
        "num_partitions": 5,
        "partitioner": DirichletPartitioner(alpha=0.5, min_partition_size=5),
        "seed": 11,
    }

    first = load_sklearn("digits", **kwargs)
    again = load_sklearn("digits", **kwargs)

    assert again is first
    with pytest.raises(ValueError, match="read-only"):
        first.x[0, 0] = 42.0


def test_load_sklearn_same_seed_same_partitions_without_cache() -> None:
    from pollinate.data import federated_dataset

    partitioner = ShardPartitioner(2)
    first = load_sklearn("digits", num_partitions=10, partitioner=partitioner, seed=4)
    federated_dataset._build_sklearn_cached.cache_clear()

    second = load_sklearn("digits", num_partitions=10, partitioner=partitioner, seed=4)

    assert second is not first
    for a, b in zip(first.partitions, second.partitions, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first.partition(3).x_test, second.partition(3).x_test)


def test_load_sklearn_different_seeds_differ() -> None:
    a = load_sklearn("iris", num_partitions=3, partitioner=IidPartitioner(), seed=0)
    b = load_sklearn("iris", num_partitions=3, partitioner=IidPartitioner(), seed=1)

    assert not np.array_equal(a.y_test, b.y_test) or not np.array_equal(a.x, b.x)
    assert any(not np.array_equal(p, q) for p, q in zip(a.partitions, b.partitions, strict=True))


def test_partitioner_controls_label_skew() -> None:
    ds = load_sklearn("digits", num_partitions=10, partitioner=ShardPartitioner(2))

    distinct = []
    for i in range(ds.num_partitions):
        part = ds.partition(i)
        distinct.append(np.unique(np.concatenate([part.y_train, part.y_test])).size)

    # 2 shards, each of which may straddle one label boundary (digits' classes are uneven)
    assert max(distinct) <= 4
    assert np.mean(distinct) <= 3.5


def test_unhashable_custom_partitioner_bypasses_the_cache() -> None:
    class HalvesPartitioner:
        __hash__ = None  # type: ignore[assignment]

        def partition(
            self, labels: NDArray[Any], num_partitions: int, *, rng: np.random.Generator
        ) -> list[NDArray[np.int64]]:
            return [p.astype(np.int64) for p in np.array_split(np.arange(len(labels)), 2)]

    ds = load_sklearn("iris", num_partitions=2, partitioner=HalvesPartitioner())

    assert ds.num_partitions == 2


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="unknown data set 'mnist'; choose one of breast_cancer"):
        load_sklearn("mnist", num_partitions=2, partitioner=IidPartitioner())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_partitions": 0}, "num_partitions must be >= 1"),
        ({"num_partitions": 1000}, "num_partitions=1000 exceeds"),
        ({"num_partitions": "2"}, "num_partitions must be an integer"),
        ({"partitioner": "iid"}, r"got the string 'iid'; pass e.g. IidPartitioner\(\)"),
        ({"partitioner": object()}, "partitioner must implement pollinate.data.Partitioner"),
        ({"seed": -3}, "seed must be a non-negative integer"),
        ({"test_fraction": 0.0}, r"test_fraction must be in \(0, 1\)"),
        ({"test_fraction": 1.5}, r"test_fraction must be in \(0, 1\)"),
        ({"node_test_fraction": -0.1}, r"node_test_fraction must be in \[0, 1\)"),
        ({"standardize": "yes"}, "standardize must be True or False"),
    ],
)
def test_load_sklearn_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"num_partitions": 2, "partitioner": IidPartitioner()}
    arguments.update(kwargs)

    with pytest.raises(ConfigError, match=match):
        load_sklearn("iris", **arguments)


def test_importing_pollinate_data_does_not_import_sklearn() -> None:
    code = "import sys, pollinate.data; print('sklearn' in sys.modules)"

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )

    assert result.stdout.strip() == "False"
