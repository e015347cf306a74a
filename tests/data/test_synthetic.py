"""Tests for pollinate.data.synthetic: the FedProx Synthetic(alpha, beta) generator."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from pollinate.data import Partition, split_devices, synthetic_fedprox
from pollinate.errors import ConfigError

Devices = list[tuple[NDArray[np.float32], NDArray[np.int64]]]


def label_histograms(devices: Devices, num_classes: int = 10) -> NDArray[np.float64]:
    """One row per device: the fraction of each label."""
    counts = np.array([np.bincount(y, minlength=num_classes) for _, y in devices], float)
    fractions: NDArray[np.float64] = counts / counts.sum(axis=1, keepdims=True)
    return fractions


def label_heterogeneity(devices: Devices) -> float:
    """Mean total-variation distance of each device's label mix from the pooled mix."""
    hist = label_histograms(devices)
    pooled = np.bincount(np.concatenate([y for _, y in devices]), minlength=10)
    pooled = pooled / pooled.sum()
    return float(np.mean(0.5 * np.abs(hist - pooled).sum(axis=1)))


def feature_heterogeneity(devices: Devices) -> float:
    """Spread across devices of the per-device mean feature vector."""
    means = np.array([x.mean(axis=0) for x, _ in devices])
    return float(means.std(axis=0).mean())


def test_shapes_and_dtypes() -> None:
    devices = synthetic_fedprox(0.5, 0.5, num_devices=7, seed=0)

    assert len(devices) == 7
    for x, y in devices:
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.ndim == 2 and x.shape[1] == 60
        assert y.shape == (x.shape[0],)
        assert y.min() >= 0 and y.max() < 10


def test_custom_shape() -> None:
    devices = synthetic_fedprox(1.0, 1.0, num_devices=3, num_features=5, num_classes=3, seed=2)

    assert all(x.shape[1] == 5 and y.max() < 3 for x, y in devices)


def test_same_seed_same_data_different_seed_different_data() -> None:
    first = synthetic_fedprox(1.0, 1.0, num_devices=5, seed=42)
    again = synthetic_fedprox(1.0, 1.0, num_devices=5, seed=42)
    other = synthetic_fedprox(1.0, 1.0, num_devices=5, seed=43)

    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0][:50], other[0][0][:50])


def test_does_not_touch_global_numpy_state() -> None:
    np.random.seed(0)
    expected = np.random.random()
    np.random.seed(0)

    synthetic_fedprox(0.0, 0.0, num_devices=2, seed=0)

    assert np.random.random() == expected


def test_sample_counts_at_least_50_and_heavy_tailed() -> None:
    devices = synthetic_fedprox(0.0, 0.0, num_devices=200, seed=0)

    sizes = np.array([len(y) for _, y in devices])
    assert sizes.min() >= 50
    # int(LogNormal(4, 2)) + 50: median about 50 + e^4 = 105, max over 200 devices far larger
    assert 70 < np.median(sizes) < 160
    assert sizes.max() / np.median(sizes) > 20


def max_class_fraction(devices: Devices) -> float:
    """Mean over devices of the fraction of the device's most common label."""
    return float(np.mean([np.bincount(y).max() / len(y) for _, y in devices]))


def mean_over_seeds(metric: Any, alpha: float, beta: float, *, iid: bool = False) -> float:
    runs = [synthetic_fedprox(alpha, beta, num_devices=30, seed=s, iid=iid) for s in range(10)]
    return float(np.mean([metric(devices) for devices in runs]))


def test_non_iid_label_distributions_differ_far_more_than_iid() -> None:
    iid = mean_over_seeds(label_heterogeneity, 0.0, 0.0, iid=True)
    synthetic_00 = mean_over_seeds(label_heterogeneity, 0.0, 0.0)
    synthetic_11 = mean_over_seeds(label_heterogeneity, 1.0, 1.0)

    assert iid < 0.2
    assert synthetic_00 > 3 * iid
    assert synthetic_11 >= synthetic_00


def test_label_skew_grows_with_beta() -> None:
    skew = [mean_over_seeds(max_class_fraction, 0.0, beta) for beta in (0.0, 1.0, 3.0)]

    assert skew == sorted(skew)
    assert skew[-1] > skew[0] + 0.03


def test_feature_heterogeneity_grows_with_beta() -> None:
    spread = [mean_over_seeds(feature_heterogeneity, 1.0, beta) for beta in (0.0, 0.5, 1.0)]

    assert spread == sorted(spread)
    assert spread[-1] > 1.3 * spread[0]


def test_alpha_does_not_change_labels_as_in_the_reference_generator() -> None:
    # W_k and b_k share one mean u_k across all entries, so alpha adds the same amount,
    # u_k * (sum(x) + 1), to every class's logit and the argmax cannot change. This pins
    # the reference generator's behaviour: in Synthetic(alpha, beta) only beta and the
    # per-device draws of W_k, b_k make the labelling functions differ.
    low = synthetic_fedprox(0.0, 1.0, num_devices=5, seed=3)
    high = synthetic_fedprox(1.0, 1.0, num_devices=5, seed=3)

    for (x0, y0), (x1, y1) in zip(low, high, strict=True):
        np.testing.assert_array_equal(x0, x1)
        assert np.mean(y0 == y1) > 0.99  # equal up to floating-point ties


def transfer_accuracies(devices: Devices) -> list[float]:
    """Fit one linear model on the first half of the devices, score it on the rest."""
    from sklearn.linear_model import LogisticRegression

    half = len(devices) // 2
    x = np.concatenate([d[0] for d in devices[:half]])
    y = np.concatenate([d[1] for d in devices[:half]])
    model = LogisticRegression(max_iter=200).fit(x, y)
    return [float(model.score(dx, dy)) for dx, dy in devices[half:]]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("seed", [0, 1])
def test_iid_variant_shares_one_model(seed: int) -> None:
    iid = transfer_accuracies(synthetic_fedprox(1.0, 1.0, num_devices=12, seed=seed, iid=True))
    non_iid = transfer_accuracies(synthetic_fedprox(1.0, 1.0, num_devices=12, seed=seed))

    # One shared labelling function transfers to unseen devices; per-device ones do not.
    assert min(iid) > 0.65
    assert np.mean(non_iid) < 0.3


def test_iid_feature_means_are_shared() -> None:
    devices = synthetic_fedprox(0.0, 5.0, num_devices=10, seed=0, iid=True)

    assert feature_heterogeneity(devices) < 0.3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": -1.0}, "alpha must be a finite number >= 0"),
        ({"beta": float("inf")}, "beta must be a finite number >= 0"),
        ({"alpha": "1"}, "alpha must be a number"),
        ({"num_devices": 0}, "num_devices must be an integer >= 1, got 0"),
        ({"num_features": 2.5}, "num_features must be an integer"),
        ({"num_classes": 1}, "num_classes must be an integer >= 2"),
        ({"seed": -1}, "seed must be an integer >= 0"),
        ({"iid": 1}, "iid must be True or False"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"alpha": 0.0, "beta": 0.0}
    arguments.update(kwargs)

    with pytest.raises(ConfigError, match=match):
        synthetic_fedprox(**arguments)


# -------------------------------------------------------------------- split_devices


def test_split_devices_90_10() -> None:
    devices = synthetic_fedprox(0.5, 0.5, num_devices=5, seed=0)

    parts = split_devices(devices, seed=0)

    assert all(isinstance(p, Partition) for p in parts)
    for (x, y), part in zip(devices, parts, strict=True):
        assert part.num_train == int(0.9 * len(y))
        assert part.num_train + part.num_test == len(y)
        assert part.x_train.shape[1] == x.shape[1]
        # the split is a permutation of the device's own rows
        all_rows = np.concatenate([part.x_train, part.x_test])
        np.testing.assert_array_equal(np.sort(all_rows, axis=0), np.sort(x, axis=0))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), fraction=st.floats(0.0, 0.9))
def test_split_devices_deterministic_per_seed(seed: int, fraction: float) -> None:
    devices = synthetic_fedprox(1.0, 1.0, num_devices=3, num_features=4, seed=1)

    a = split_devices(devices, test_fraction=fraction, seed=seed)
    b = split_devices(devices, test_fraction=fraction, seed=seed)

    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p.x_test, q.x_test)
        np.testing.assert_array_equal(p.y_train, q.y_train)


def test_split_devices_seed_changes_split() -> None:
    devices = synthetic_fedprox(1.0, 1.0, num_devices=2, seed=1)

    a, b = split_devices(devices, seed=0), split_devices(devices, seed=1)

    assert not np.array_equal(a[0].x_test, b[0].x_test)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test_fraction": 1.0}, r"test_fraction must be in \[0, 1\)"),
        ({"test_fraction": "0.1"}, "test_fraction must be a number"),
        ({"seed": -1}, "seed must be a non-negative integer"),
    ],
)
def test_split_devices_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    devices = synthetic_fedprox(0.0, 0.0, num_devices=1, seed=0)

    with pytest.raises(ConfigError, match=match):
        split_devices(devices, **kwargs)


def test_split_devices_mismatched_lengths() -> None:
    with pytest.raises(ConfigError, match="device 0 has 3 feature rows but 2 labels"):
        split_devices([(np.zeros((3, 2), np.float32), np.zeros(2, np.int64))])
