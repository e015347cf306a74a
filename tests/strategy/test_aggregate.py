from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollinate.errors import AggregationError
from pollinate.records import ArrayRecord, MetricRecord
from pollinate.strategy import aggregate as aggregate_module
from pollinate.strategy.aggregate import (
    MetricMeanAccumulator,
    WeightedMeanAccumulator,
    aggregate_weighted_mean,
)

weights = st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=8)


@settings(max_examples=50, deadline=None)
@given(weights=weights, seed=st.integers(0, 2**32 - 1))
def test_weighted_mean_agrees_with_numpy_average(weights: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    stacked = rng.standard_normal((len(weights), 4, 3))
    records = [(ArrayRecord({"w": a}), float(w)) for a, w in zip(stacked, weights, strict=True)]

    result = aggregate_weighted_mean(records)

    np.testing.assert_allclose(
        result["w"], np.average(stacked, axis=0, weights=weights), rtol=1e-12
    )


@settings(max_examples=30, deadline=None)
@given(weights=weights, seed=st.integers(0, 2**32 - 1))
def test_weighted_mean_is_permutation_invariant_up_to_rounding(
    weights: list[int], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    records = [
        (ArrayRecord({"w": rng.standard_normal(5).astype(np.float32)}), float(w)) for w in weights
    ]
    forward = aggregate_weighted_mean(records)["w"]
    backward = aggregate_weighted_mean(reversed(records))["w"]
    np.testing.assert_allclose(forward, backward, rtol=1e-6)


def test_result_keeps_each_arrays_dtype() -> None:
    acc = WeightedMeanAccumulator()
    acc.add(
        ArrayRecord({"f": np.array([1.0], np.float16), "i": np.array([1]), "b": np.array([True])}),
        1,
    )
    acc.add(
        ArrayRecord({"f": np.array([2.0], np.float16), "i": np.array([4]), "b": np.array([False])}),
        3,
    )
    out = acc.result()
    assert out["f"].dtype == np.float16 and out["f"][0] == np.float16(1.75)
    assert out["i"].dtype == np.int64 and out["i"][0] == 3  # 3.25 rounds to 3
    assert out["b"].dtype == np.bool_ and not out["b"][0]


def test_mismatched_structures_name_both() -> None:
    acc = WeightedMeanAccumulator()
    acc.add(ArrayRecord({"w": np.zeros(3)}), 1)
    with pytest.raises(AggregationError, match=r"node 7.*w:float64\[4\].*w:float64\[3\]"):
        acc.add(ArrayRecord({"w": np.zeros(4)}), 1, source="node 7")


def test_no_positive_weight_is_an_error() -> None:
    acc = WeightedMeanAccumulator()
    acc.add(ArrayRecord({"w": np.zeros(3)}), 0)
    with pytest.raises(AggregationError, match="positive weight"):
        acc.result()
    with pytest.raises(AggregationError, match="finite"):
        acc.add(ArrayRecord({"w": np.zeros(3)}), float("nan"))


def test_inputs_are_not_mutated() -> None:
    a = np.ones(3, np.float32)
    a.flags.writeable = False  # would raise if written
    acc = WeightedMeanAccumulator()
    acc.add(ArrayRecord({"w": a}), 2)
    acc.add(ArrayRecord({"w": a}), 2)
    assert acc.result()["w"].tolist() == [1.0, 1.0, 1.0]


def test_metric_mean_weights_values_and_sums_counts() -> None:
    acc = MetricMeanAccumulator(sum_keys=["num-examples"])
    acc.add(MetricRecord({"loss": 1.0, "num-examples": 10, "hist": [1, 2]}), 10)
    acc.add(MetricRecord({"loss": 4.0, "num-examples": 30, "hist": [3, 4]}), 30)
    acc.add(MetricRecord({"extra": 2.0, "num-examples": 0}), 0)
    assert acc.result() == MetricRecord({"loss": 3.25, "num-examples": 40, "hist": [2.5, 3.5]})


def test_weighted_mean_in_blocks_equals_the_whole_array_computation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The scratch is block-sized; arrays span several blocks, one ends mid-block.
    import pollinate.strategy.aggregate as aggregate_module

    monkeypatch.setattr(aggregate_module, "_BLOCK", 7)
    rng = np.random.default_rng(0)
    records = [
        ArrayRecord(
            {
                "w": rng.standard_normal((5, 6)).astype(np.float32),
                "n": rng.integers(0, 9, 23).astype(np.int32),
                "s": np.asarray(rng.standard_normal(), np.float32),
            }
        )
        for _ in range(4)
    ]
    weights = [1.0, 3.0, 0.5, 2.0]
    accumulator = aggregate_module.WeightedMeanAccumulator()
    # Act
    for record, weight in zip(records, weights, strict=True):
        accumulator.add(record, weight)
    result = accumulator.result()
    # Assert
    total = sum(weights)
    for name in ("w", "n", "s"):
        expected = (
            sum(r[name].astype(np.float64) * w for r, w in zip(records, weights, strict=True))
            / total
        )
        expected = aggregate_module.cast_like(np.asarray(expected), records[0][name].dtype)
        np.testing.assert_array_equal(result[name], expected)
        assert result[name].dtype == records[0][name].dtype
        assert result[name].shape == records[0][name].shape


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_a_large_model_is_added_on_two_threads_with_the_same_bits_as_on_one(
    dtype: type[np.generic], monkeypatch: pytest.MonkeyPatch
) -> None:
    size = aggregate_module._PARALLEL_MIN + 12_345  # two halves and a partial block
    rng = np.random.default_rng(0)
    updates = [
        (ArrayRecord({"w": (rng.standard_normal(size) * 100).astype(dtype)}), weight)
        for weight in (3, 1, 7)
    ]
    threaded_threads: set[str] = set()
    real_over_blocks = aggregate_module._over_blocks

    def spy(size: int, work: Any, scratches: Any) -> None:
        def recording(block: slice, scratch: Any) -> None:
            threaded_threads.add(threading.current_thread().name)
            work(block, scratch)

        real_over_blocks(size, recording, scratches)

    monkeypatch.setattr(aggregate_module, "_over_blocks", spy)
    threaded = aggregate_weighted_mean(updates)["w"]
    monkeypatch.setattr(aggregate_module, "_helper_pool", lambda: None)
    single = aggregate_weighted_mean(updates)["w"]
    expected = sum(a["w"].astype(np.float64) * w for a, w in updates) / 11

    assert len(threaded_threads) == 2  # the helper thread took its half
    assert threaded.dtype == single.dtype == dtype
    np.testing.assert_array_equal(threaded, single)
    np.testing.assert_array_equal(threaded, aggregate_module.cast_like(expected, np.dtype(dtype)))
