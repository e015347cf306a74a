"""Summable statistics merge into exactly what the pooled computation gives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollinate.analytics.statistics import Moments, histogram_counts, quantiles_from_histogram
from pollinate.errors import AggregationError, ConfigError


def _split(values: np.ndarray, cuts: list[int]) -> list[np.ndarray]:
    """``values`` cut at the (sorted, clipped) positions ``cuts``: some parts may be empty."""
    positions = sorted(min(c, len(values)) for c in cuts)
    return np.split(values, positions)


samples = st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=60).map(np.array)
cuts = st.lists(st.integers(0, 60), max_size=6)


@settings(max_examples=60, deadline=None)
@given(values=samples, cuts=cuts, offset=st.sampled_from([0.0, 1e6, -3e7]))
def test_merged_moments_equal_the_pooled_two_pass_moments(
    values: np.ndarray, cuts: list[int], offset: float
) -> None:
    data = values + offset  # far from 0: a naive sum of squares would lose the variance
    parts = _split(data, cuts)

    merged = sum((Moments.of(p) for p in parts), Moments())

    assert merged.count == len(data)
    assert merged.mean == pytest.approx(np.mean(data), rel=1e-12, abs=1e-9)
    assert merged.variance(ddof=1) == pytest.approx(np.var(data, ddof=1), rel=1e-7, abs=1e-6)
    assert merged.variance(ddof=0) == pytest.approx(np.var(data), rel=1e-7, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(values=samples, cuts=cuts)
def test_moments_merge_in_any_order(values: np.ndarray, cuts: list[int]) -> None:
    parts = [Moments.of(p) for p in _split(values, cuts)]

    forward = sum(parts, Moments())
    backward = sum(reversed(parts), Moments())

    assert forward.count == backward.count
    assert forward.mean == pytest.approx(backward.mean, rel=1e-12, abs=1e-9)
    assert forward.m2 == pytest.approx(backward.m2, rel=1e-9, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(values=samples, cuts=cuts, shift=st.floats(-1e3, 1e3))
def test_summed_shifted_sums_give_the_pooled_moments(
    values: np.ndarray, cuts: list[int], shift: float
) -> None:
    parts = _split(values, cuts)

    total = np.sum([Moments.of(p).shifted_sums(shift) for p in parts], axis=0)
    merged = Moments.from_shifted_sums(total, shift)

    assert merged.count == len(values)
    assert merged.mean == pytest.approx(np.mean(values), rel=1e-9, abs=1e-9)
    assert merged.variance(ddof=1) == pytest.approx(np.var(values, ddof=1), rel=1e-6, abs=1e-6)


def test_noisy_shifted_sums_never_give_a_negative_m2() -> None:
    moments = Moments.from_shifted_sums([10.0, 5.0, 1.0], shift=0.0)  # s2 < s1**2 / n

    assert moments.m2 == 0.0 and moments.count == 10


def test_variance_of_too_few_records_is_an_aggregation_error() -> None:
    with pytest.raises(AggregationError, match="needs more than 1 records, got 1"):
        Moments.of([3.0]).variance(ddof=1)


@settings(max_examples=40, deadline=None)
@given(values=samples, cuts=cuts, num_bins=st.integers(1, 30))
def test_summed_histograms_equal_the_histogram_of_the_pooled_clamped_values(
    values: np.ndarray, cuts: list[int], num_bins: int
) -> None:
    edges = np.linspace(-500.0, 500.0, num_bins + 1).tolist()
    parts = _split(values, cuts)

    total = np.sum([histogram_counts(p, edges) for p in parts], axis=0)

    expected, _ = np.histogram(np.clip(values, -500.0, 500.0), bins=edges)
    np.testing.assert_array_equal(total, expected)
    assert total.sum() == len(values)  # values outside the range are clamped, not dropped


def test_histogram_ignores_missing_values() -> None:
    counts = histogram_counts([1.0, np.nan, 2.5], [0.0, 2.0, 4.0])

    assert counts.tolist() == [1, 1]


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.floats(0, 100, allow_nan=False), min_size=1, max_size=80).map(np.array),
    num_bins=st.integers(1, 200),
    q=st.floats(0.0, 1.0),
)
def test_a_quantile_is_within_one_bin_of_the_exact_one(
    values: np.ndarray, num_bins: int, q: float
) -> None:
    edges = np.linspace(0.0, 100.0, num_bins + 1)
    counts = histogram_counts(values, edges.tolist())

    (estimate,) = quantiles_from_histogram(counts, edges.tolist(), [q])

    exact = float(np.quantile(values, q, method="inverted_cdf"))
    assert abs(estimate - exact) <= 100.0 / num_bins + 1e-9


def test_quantiles_of_an_empty_histogram_are_an_aggregation_error() -> None:
    with pytest.raises(AggregationError, match="no records"):
        quantiles_from_histogram([0, 0], [0.0, 1.0, 2.0], [0.5])


def test_counts_that_do_not_fit_the_edges_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="3 counts do not fit 3 bin edges"):
        quantiles_from_histogram([1, 2, 3], [0.0, 1.0, 2.0], [0.5])


def test_noisy_negative_counts_still_give_ordered_quantiles_in_range() -> None:
    counts = [-2.0, 5.0, -1.0, 7.0, 3.0, -4.0]
    edges = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]

    estimates = quantiles_from_histogram(counts, edges, [0.0, 0.1, 0.5, 0.9, 1.0])

    assert estimates == sorted(estimates)
    assert estimates[0] >= 0.0 and estimates[-1] <= 6.0
