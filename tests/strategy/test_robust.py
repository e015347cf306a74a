from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollinate.errors import AggregationError, ConfigError
from pollinate.records import ArrayRecord
from pollinate.strategy.aggregate import Aggregator
from pollinate.strategy.fedavg import FedAvg
from pollinate.strategy.robust import Bulyan, FedMedian, Krum, Median, MultiKrum, TrimmedMean
from pollinate.testing.conformance import check_strategy

Updates = list[tuple[ArrayRecord, float]]


def scalars(*values: float) -> Updates:
    """One single-coordinate update per value, all of weight 1."""
    return [(ArrayRecord({"w": np.array([float(v)])}), 1.0) for v in values]


def from_rows(rows: np.ndarray, weights: list[float] | None = None) -> Updates:
    """One update per row, split into arrays "a" (first 2 columns) and "b" (the rest)."""
    weights = weights or [1.0] * len(rows)
    return [
        (ArrayRecord({"a": row[:2].copy(), "b": row[2:].copy()}), w)
        for row, w in zip(rows, weights, strict=True)
    ]


def as_rows(result: ArrayRecord | None) -> np.ndarray:
    assert result is not None
    return np.concatenate([result["a"].ravel(), result["b"].ravel()])


# The Krum hand case: 5 updates of 3 coordinates, arrays a = [x, y] and b = [z].
#   u0 = (0, 0, 0), u1 = (1, 0, 0), u2 = (0, 2, 0), u3 = (0, 0, 3), u4 = (10, 10, 10)
# Squared distances (b counts: the arrays are flattened into one vector):
#   d01 = 1, d02 = 4, d03 = 9, d04 = 300, d12 = 1 + 4 = 5, d13 = 1 + 9 = 10,
#   d14 = 81 + 100 + 100 = 281, d23 = 4 + 9 = 13, d24 = 100 + 64 + 100 = 264,
#   d34 = 100 + 100 + 49 = 249.
# With f = 1, each score sums the n - f - 2 = 2 smallest distances:
#   s0 = 1 + 4 = 5, s1 = 1 + 5 = 6, s2 = 4 + 5 = 9, s3 = 9 + 10 = 19, s4 = 249 + 264 = 513.
KRUM_ROWS = np.array(
    [[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [10, 10, 10]],
    dtype=np.float64,
)


# -- hand-computed cases ---------------------------------------------------------------
def test_median_hand_computed_even_and_odd() -> None:
    # column 0 sorted: 1, 2, 3, 100 -> (2 + 3) / 2 = 2.5; column 1: -5, 10, 20, 30 -> 15
    updates = [
        (ArrayRecord({"w": np.array([1.0, 10.0])}), 1.0),
        (ArrayRecord({"w": np.array([100.0, -5.0])}), 50.0),  # weights are ignored
        (ArrayRecord({"w": np.array([3.0, 30.0])}), 1.0),
        (ArrayRecord({"w": np.array([2.0, 20.0])}), 1.0),
    ]
    np.testing.assert_array_equal(Median().aggregate(updates)["w"], [2.5, 15.0])
    # odd: 1, 2, 3, 100, 7 -> sorted 1, 2, 3, 7, 100 -> 3
    np.testing.assert_array_equal(Median().aggregate(scalars(1, 2, 3, 100, 7))["w"], [3.0])


def test_trimmed_mean_hand_computed() -> None:
    # beta = 0.2, n = 5: trim floor(1.0) = 1 per side.
    # sorted -50, 1, 2, 6, 70 -> mean(1, 2, 6) = 3
    result = TrimmedMean(beta=0.2).aggregate(scalars(70, 1, -50, 6, 2))
    np.testing.assert_array_equal(result["w"], [3.0])
    # beta = 0.25, n = 8: trim 2 per side; sorted -9, -8, 1, 2, 3, 4, 90, 99 -> 10 / 4
    result = TrimmedMean(beta=0.25).aggregate(scalars(99, 1, -9, 2, 90, 3, -8, 4))
    np.testing.assert_array_equal(result["w"], [2.5])
    # beta = 0.1, n = 5: floor(0.5) = 0, the plain mean 29 / 5
    result = TrimmedMean(beta=0.1).aggregate(scalars(70, 1, -50, 6, 2))
    np.testing.assert_allclose(result["w"], [5.8])


def test_trimmed_mean_trims_per_coordinate() -> None:
    # column 0: 0, 1, 2, 9 -> drop 0 and 9 -> 1.5; column 1: -7, 3, 4, 8 -> drop -7, 8 -> 3.5
    rows = np.array([[9.0, 3.0], [0.0, 8.0], [1.0, -7.0], [2.0, 4.0]])
    updates = [(ArrayRecord({"w": row}), 1.0) for row in rows]
    np.testing.assert_array_equal(TrimmedMean(beta=0.25).aggregate(updates)["w"], [1.5, 3.5])


def test_krum_hand_computed_flattens_all_arrays() -> None:
    result = Krum(num_byzantine=1).aggregate(from_rows(KRUM_ROWS))
    np.testing.assert_array_equal(as_rows(result), [0, 0, 0])  # s0 = 5 is the lowest


def test_multikrum_hand_computed_plain_and_weighted() -> None:
    # m = 3: u0, u1, u2 (scores 5, 6, 9); plain mean a = (1/3, 2/3), b = 0
    plain = MultiKrum(num_byzantine=1, num_selected=3).aggregate(from_rows(KRUM_ROWS))
    np.testing.assert_allclose(as_rows(plain), [1 / 3, 2 / 3, 0])
    # weighted by 1, 2, 3: a = ((0 + 2 + 0) / 6, (0 + 0 + 6) / 6) = (1/3, 1)
    weighted = MultiKrum(num_byzantine=1, num_selected=3, weighted=True).aggregate(
        from_rows(KRUM_ROWS, [1.0, 2.0, 3.0, 4.0, 5.0])
    )
    np.testing.assert_allclose(as_rows(weighted), [1 / 3, 1, 0])
    # default m = n - f = 4: u0..u3 -> (1/4, 2/4, 3/4)
    default = MultiKrum(num_byzantine=1).aggregate(from_rows(KRUM_ROWS))
    np.testing.assert_allclose(as_rows(default), [0.25, 0.5, 0.75])


def test_bulyan_hand_computed() -> None:
    # n = 7, f = 1: theta = n - 2f = 5 selected by recursive Krum, beta = theta - 2f = 3.
    # values 0, 1, 3, 4, 9, 13, 100 (indices 0..6)
    # step 1, 7 left, 4 neighbours: s(0) = 1+9+16+81 = 107, s(1) = 1+4+9+64 = 78,
    #   s(3) = 1+4+9+36 = 50, s(4) = 1+9+16+25 = 51, s(9) = 141, s(13) = 341 -> 3
    # step 2, 6 left, 3 neighbours: s(0) = 1+16+81 = 98, s(1) = 1+9+64 = 74,
    #   s(4) = 9+16+25 = 50, s(9) = 105, s(13) = 241 -> 4
    # step 3, 5 left, 2 neighbours: s(0) = 1+81 = 82, s(1) = 1+64 = 65, s(9) = 16+64 = 80,
    #   s(13) = 16+144 = 160 -> 1
    # step 4, 4 left, 1 neighbour: s(0) = 81, s(9) = 16, s(13) = 16 -> tie, the earlier: 9
    # step 5, 3 left, 1 neighbour: s(0) = 169, s(13) = 169, s(100) = 7569 -> tie: 0
    # selected 3, 4, 1, 9, 0; sorted 0, 1, 3, 4, 9, median 3; the beta = 3 closest to it:
    # 3, 4, 1 (distances 0, 1, 2) -> 8 / 3. (Had 13 won a tie, the selection would be
    # 0, 1, 3, 4, 13 or 1, 3, 4, 9, 13: the same 3 values are closest to the median.)
    updates = scalars(0, 1, 3, 4, 9, 13, 100)
    bulyan = Bulyan(num_byzantine=1)
    assert bulyan.select([arrays for arrays, _ in updates]) == [2, 3, 1, 4, 0]
    np.testing.assert_allclose(bulyan.aggregate(updates)["w"], [8 / 3])


def test_bulyan_is_coordinatewise_after_selection() -> None:
    # n = 3, f = 0: all 3 selected, beta = 3: the plain mean per coordinate.
    rows = np.array([[0.0, 3.0, 1.0], [6.0, 0.0, 1.0], [3.0, 9.0, 4.0]])
    np.testing.assert_allclose(as_rows(Bulyan(0).aggregate(from_rows(rows))), [3, 4, 2])
    # n = 7, f = 1, the 1-D case above in column 0, an offset copy in column 2:
    # both columns take the same 3 values around their median.
    col = np.array([0, 1, 3, 4, 9, 13, 100], dtype=np.float64)
    rows = np.stack([col, np.zeros(7), col + 5], axis=1)
    np.testing.assert_allclose(as_rows(Bulyan(1).aggregate(from_rows(rows))), [8 / 3, 0, 23 / 3])


# -- preconditions and validation ------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "n", "message"),
    [
        (Krum(2), 6, "Krum needs n >= 2f + 3 updates, got n=6 with f=2"),
        (MultiKrum(2, 3), 6, "MultiKrum needs n >= 2f + 3 updates, got n=6 with f=2"),
        (MultiKrum(1, 5), 5, "MultiKrum needs num_selected <= n - f, got m=5, n=5 with f=1"),
        (Bulyan(2), 10, "Bulyan needs n >= 4f + 3 updates, got n=10 with f=2"),
        (Median(num_byzantine=2), 4, "Median needs n >= 2f + 1 updates, got n=4 with f=2"),
        (
            TrimmedMean(0.1, num_byzantine=1),
            9,
            "TrimmedMean(beta=0.1) needs floor(beta * n) >= f, got n=9 with f=1",
        ),
    ],
)
def test_precondition_errors_name_rule_n_f_and_condition(
    rule: Aggregator, n: int, message: str
) -> None:
    with pytest.raises(AggregationError, match=re.escape(message)):
        rule.aggregate(scalars(*range(n)))


def test_preconditions_hold_at_the_boundary() -> None:
    assert Krum(2).aggregate(scalars(*range(7))) is not None
    assert Bulyan(2).aggregate(scalars(*range(11))) is not None
    assert Median(num_byzantine=2).aggregate(scalars(*range(5))) is not None
    assert TrimmedMean(0.1, num_byzantine=1).aggregate(scalars(*range(10))) is not None


@pytest.mark.parametrize(
    "make",
    [
        lambda: Krum(-1),
        lambda: Krum(1.5),  # type: ignore[arg-type]
        lambda: Krum(True),
        lambda: Bulyan("2"),  # type: ignore[arg-type]
        lambda: MultiKrum(1, 0),
        lambda: MultiKrum(1, 2, weighted="yes"),  # type: ignore[arg-type]
        lambda: TrimmedMean(0.5),
        lambda: TrimmedMean(-0.1),
        lambda: TrimmedMean(float("nan")),
        lambda: Median(num_byzantine=-1),
    ],
)
def test_bad_arguments_raise_config_error(make: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        make()


RULES: list[Aggregator] = [Median(), TrimmedMean(0.2), Krum(1), MultiKrum(1, 2), Bulyan(1)]


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_no_updates_gives_none(rule: Aggregator) -> None:
    assert rule.aggregate([]) is None


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_mismatched_structures_and_bad_weights_raise(rule: Aggregator) -> None:
    mixed = [*scalars(1, 2, 3, 4, 5, 6), (ArrayRecord({"v": np.zeros(1)}), 1.0)]
    with pytest.raises(AggregationError, match="same model structure"):
        rule.aggregate(mixed)
    negative = [*scalars(1, 2, 3, 4, 5, 6), (ArrayRecord({"w": np.zeros(1)}), -1.0)]
    with pytest.raises(AggregationError, match="weight"):
        rule.aggregate(negative)


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_keeps_dtypes_and_does_not_mutate_inputs(rule: Aggregator) -> None:
    rng = np.random.default_rng(0)
    updates = [
        (
            ArrayRecord(
                {
                    "f": rng.standard_normal((2, 3)).astype(np.float32),
                    "i": rng.integers(0, 9, 4),
                    "h": rng.standard_normal(2).astype(np.float16),
                }
            ),
            1.0,
        )
        for _ in range(7)
    ]
    before = [arrays.copy() for arrays, _ in updates]
    result = rule.aggregate(updates)
    assert result is not None
    assert result.structure() == updates[0][0].structure()
    assert all(arrays == copy for (arrays, _), copy in zip(updates, before, strict=True))
    result["f"][...] = 0  # the result is a new record, not a reply's arrays
    assert all(arrays == copy for (arrays, _), copy in zip(updates, before, strict=True))


# -- properties -----------------------------------------------------------------------
seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), seed=seeds)
def test_median_agrees_with_numpy(n: int, seed: int) -> None:
    rows = np.random.default_rng(seed).standard_normal((n, 5))
    np.testing.assert_array_equal(as_rows(Median().aggregate(from_rows(rows))), np.median(rows, 0))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), beta=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.3, 0.45]), seed=seeds)
def test_trimmed_mean_agrees_with_scipy(n: int, beta: float, seed: int) -> None:
    from scipy.stats import trim_mean

    rows = np.random.default_rng(seed).standard_normal((n, 5))
    result = as_rows(TrimmedMean(beta).aggregate(from_rows(rows)))
    np.testing.assert_allclose(result, trim_mean(rows, beta, axis=0), rtol=1e-12, atol=1e-15)


PERMUTED_RULES: list[Aggregator] = [
    Median(),
    TrimmedMean(0.2),
    Krum(2),
    MultiKrum(2, 5),
    MultiKrum(2, weighted=True),
    # f = 3 keeps Krum at >= 2 neighbours in Bulyan's last steps; with 1 neighbour the
    # two closest updates always tie and the earlier wins.
    Bulyan(3),
]


@settings(max_examples=15, deadline=None)
@given(n=st.integers(15, 18), seed=seeds, data=st.data())
def test_every_rule_is_permutation_invariant(n: int, seed: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal((n, 6))
    weights = [float(w) for w in rng.integers(1, 50, n)]
    order = data.draw(st.permutations(range(n)))
    for rule in PERMUTED_RULES:
        forward = as_rows(rule.aggregate(from_rows(rows, weights)))
        shuffled = as_rows(rule.aggregate(from_rows(rows[order], [weights[i] for i in order])))
        np.testing.assert_allclose(shuffled, forward, rtol=1e-12, atol=1e-12, err_msg=repr(rule))


@settings(max_examples=30, deadline=None)
@given(f=st.integers(1, 4), extra=st.integers(0, 4), seed=seeds)
def test_krum_picks_an_honest_update_when_outliers_are_far(f: int, extra: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    honest = rng.standard_normal((f + 3 + extra, 6))
    byzantine = 50 + rng.standard_normal((f, 6)) * 5
    rows = np.concatenate([byzantine, honest])[rng.permutation(len(honest) + f)]
    result = as_rows(Krum(f).aggregate(from_rows(rows)))
    assert any(np.array_equal(result, h) for h in honest)
    selected = as_rows(MultiKrum(f, len(honest)).aggregate(from_rows(rows)))
    np.testing.assert_allclose(selected, honest.mean(0))


@settings(max_examples=30, deadline=None)
@given(
    seed=seeds,
    magnitude=st.sampled_from([1e3, 1e8, 1e150, 1e300, -1e300]),
    position=st.integers(0, 8),
)
def test_one_huge_outlier_stays_within_the_honest_range(
    seed: int, magnitude: float, position: int
) -> None:
    rng = np.random.default_rng(seed)
    honest = rng.standard_normal((8, 5))
    rows = np.insert(honest, position, magnitude, axis=0)  # n = 9
    low, high = honest.min(0), honest.max(0)
    for rule in (Median(), TrimmedMean(0.15), Krum(1), MultiKrum(1), Bulyan(1)):
        result = as_rows(rule.aggregate(from_rows(rows)))
        assert np.all((low <= result) & (result <= high)), rule


def test_non_finite_updates_are_never_chosen() -> None:
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((9, 4))
    rows[2] = np.nan
    rows[5, 1] = np.inf
    honest = np.delete(rows, [2, 5], axis=0)
    for rule in (Median(), TrimmedMean(0.25), Krum(2), MultiKrum(2), Bulyan(1)):
        result = as_rows(rule.aggregate(from_rows(rows)))
        assert np.all(np.isfinite(result)), rule
        assert np.all((honest.min(0) <= result) & (result <= honest.max(0))), rule


def test_chunked_distances_match_a_direct_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    from pollinate.strategy import robust

    rows = np.random.default_rng(2).standard_normal((11, 40)) + 1e6  # far from the origin
    expected = ((rows[:, None, :] - rows[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(expected, np.inf)
    monkeypatch.setattr(robust, "_CHUNK_ELEMENTS", 50)  # blocks of 4 columns
    distances = robust._squared_distances([arrays for arrays, _ in from_rows(rows)])
    np.testing.assert_allclose(distances, expected, rtol=1e-9)
    median = as_rows(Median().aggregate(from_rows(rows)))
    np.testing.assert_array_equal(median, np.median(rows, 0))


# -- strategies -----------------------------------------------------------------------
# check_strategy runs 20 nodes, all sampled; its half-failing round leaves n = 10, so
# f is chosen to hold at n = 10: Krum/MultiKrum need 2f + 3 <= 10, Bulyan 4f + 3 <= 10.
CONFORMANCE: dict[str, Callable[[], Aggregator]] = {
    "median": Median,
    "trimmed-mean": lambda: TrimmedMean(0.2, num_byzantine=2),
    "krum": lambda: Krum(3),
    "multi-krum": lambda: MultiKrum(3, 5),
    "bulyan": lambda: Bulyan(1),
}


@pytest.mark.parametrize("make_rule", CONFORMANCE.values(), ids=CONFORMANCE.keys())
def test_robust_rules_pass_strategy_conformance(make_rule: Callable[[], Aggregator]) -> None:
    check_strategy(lambda seed: FedAvg(aggregator=make_rule(), rng=np.random.default_rng(seed)))


def test_fed_median_passes_strategy_conformance() -> None:
    check_strategy(lambda seed: FedMedian(rng=np.random.default_rng(seed)))


def test_fed_median_uses_median_and_refuses_another_aggregator() -> None:
    strategy = FedMedian(num_byzantine=2, fraction_train=0.5)
    assert isinstance(strategy.aggregator, Median)
    assert strategy.aggregator.num_byzantine == 2
    assert strategy.fraction_train == 0.5
    with pytest.raises(ConfigError, match="FedMedian fixes aggregator"):
        FedMedian(aggregator=Krum(1))


def test_rules_are_aggregators() -> None:
    for rule in RULES:
        assert isinstance(rule, Aggregator)
