"""run_query: every operator over any split of the records gives the pooled answer; node
failures are data; thresholds hold; DP adds the noise it claims and reports its cost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollinate.analytics import (
    Count,
    Histogram,
    HistogramCounts,
    Mean,
    Quantiles,
    QueryPrivacy,
    Sum,
    Variance,
    answer,
    gaussian_epsilon,
    handle_queries,
    run_query,
)
from pollinate.analytics.request import REPLY, VECTOR
from pollinate.errors import AggregationError, ConfigError, NodeUnavailableError
from pollinate.records import ArrayRecord, Message, RecordDict
from pollinate.testing.fakes import FakeGrid, make_error_reply

Table = Mapping[str, np.ndarray]


def _grid(tables: Sequence[Table], **node_min_count: int) -> FakeGrid:
    """Nodes 1..n, node i answering from ``tables[i - 1]`` like handle_queries would."""

    def handler(message: Message) -> Message:
        node = message.metadata.dst_node_id
        return answer(message, tables[node - 1], min_count=node_min_count.get(f"n{node}", 0))

    return FakeGrid(handler, node_ids=range(1, len(tables) + 1))


def _split(table: Table, cuts: list[int]) -> list[Table]:
    size = len(next(iter(table.values())))
    positions = sorted(min(c, size) for c in cuts)
    parts = [np.split(column, positions) for column in table.values()]
    return [dict(zip(table, columns, strict=True)) for columns in zip(*parts, strict=True)]


def _records(seed: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    onset = np.round(rng.normal(55, 12, size), 1)
    onset[rng.random(size) < 0.1] = np.nan  # missing values
    return {"onset": onset, "x": (rng.random(size) < 0.6).astype(float)}


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(30, 200),
    cuts=st.lists(st.integers(0, 200), min_size=1, max_size=5),
)
def test_every_operator_over_any_split_equals_the_pooled_computation(
    seed: int, size: int, cuts: list[int]
) -> None:
    pooled = _records(seed, size)
    grid = _grid(_split(pooled, cuts))
    where = {"x": 1}
    bounds = (30.0, 80.0)
    selected = pooled["onset"][(pooled["x"] == 1) & ~np.isnan(pooled["onset"])]
    clamped = np.clip(selected, *bounds)
    edges = np.linspace(30.0, 80.0, 11)

    count = run_query(grid, Count(where=where), min_nodes=1)
    total = run_query(grid, Sum(column="onset", where=where, bounds=bounds), min_nodes=1)
    mean = run_query(grid, Mean(column="onset", where=where), min_nodes=1)
    variance = run_query(grid, Variance(column="onset", where=where, bounds=bounds), min_nodes=1)
    histogram = run_query(
        grid, Histogram(column="onset", where=where, bounds=bounds, num_bins=10), min_nodes=1
    )
    quantiles = run_query(
        grid,
        Quantiles(column="onset", where=where, bounds=bounds, num_bins=100, qs=(0.1, 0.5, 0.9)),
        min_nodes=1,
    )

    assert count.value == count.count == int((pooled["x"] == 1).sum())
    assert total.value == pytest.approx(clamped.sum(), rel=1e-12)
    assert mean.value == pytest.approx(selected.mean(), rel=1e-12)  # no bounds: no clamping
    assert variance.value == pytest.approx(np.var(clamped, ddof=1), rel=1e-9)
    assert variance.count == mean.count == len(selected)
    assert histogram.value.counts == tuple(np.histogram(clamped, bins=edges)[0])
    for q, estimate in quantiles.value.items():
        exact = np.quantile(clamped, q, method="inverted_cdf")
        assert abs(estimate - exact) <= 0.5 + 1e-9  # one bin of (80 - 30) / 100


def test_a_failing_a_declining_and_a_lying_node_are_left_out_and_named() -> None:
    good = {"onset": np.array([50.0, 60.0, 70.0]), "x": np.ones(3)}
    tiny = {"onset": np.array([90.0]), "x": np.ones(1)}

    def handler(message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if node == 3:
            return make_error_reply(message, "disk on fire")
        if node == 4:
            return answer(message, tiny, min_count=2)
        if node == 5:
            bad = ArrayRecord({VECTOR: np.array([3.0, 1e9])})  # a mean far out of bounds
            return message.reply(RecordDict({REPLY: bad}))
        if node == 6:
            return None  # never answers
        return answer(message, good)

    grid = FakeGrid(handler, node_ids=range(1, 7))

    result = run_query(grid, Mean(column="onset", bounds=(0, 120)), timeout=5.0)

    assert result.value == pytest.approx(60.0) and result.count == 6
    assert result.nodes == (1, 2)
    assert set(result.failures) == {3, 4, 5, 6}
    assert "disk on fire" in result.failures[3]
    assert result.failures[4].startswith("declined: fewer than 2 matching records")
    assert "outside the bounds" in result.failures[5]
    assert "no reply from node 6" in result.failures[6]


def test_too_few_answers_stop_the_query_with_the_reasons() -> None:
    grid = FakeGrid(lambda m: make_error_reply(m, "no data"), node_ids=[1, 2, 3])

    with pytest.raises(AggregationError, match=r"only 0 of 3 nodes answered .* node 1: no data"):
        run_query(grid, Count())


def test_a_single_answering_node_is_not_enough_by_default() -> None:
    grid = _grid([{"a": np.ones(5)}, {"a": np.ones(5)}], n2=100)

    with pytest.raises(AggregationError, match="only 1 of 2 nodes answered and 2 are needed"):
        run_query(grid, Count(column="a"))


def test_a_result_covering_fewer_than_min_count_records_is_withheld() -> None:
    grid = _grid([{"a": np.ones(3)}, {"a": np.ones(4)}])

    with pytest.raises(AggregationError, match="covers 7 records, fewer than min_count=10"):
        run_query(grid, Count(column="a"), min_count=10)
    assert run_query(grid, Count(column="a"), min_count=7).value == 7


def test_node_ids_choose_whom_to_ask() -> None:
    grid = _grid([{"a": np.ones(1)}, {"a": np.ones(10)}, {"a": np.ones(100)}])

    result = run_query(grid, Count(column="a"), node_ids=[3, 1])

    assert result.value == 101 and result.nodes == (1, 3)
    assert sorted(m.metadata.dst_node_id for m in grid.sent) == [1, 3]


def test_waiting_for_too_few_nodes_times_out() -> None:
    grid = _grid([{"a": np.ones(1)}])

    with pytest.raises(NodeUnavailableError, match="waited 3 s for 2 nodes"):
        run_query(grid, Count(), timeout=3.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_nodes": 0}, "min_nodes must be an int >= 1"),
        ({"min_count": -1}, "min_count must be an int >= 0"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"node_ids": [1]}, "node_ids names 1 nodes but min_nodes is 2"),
        ({"secure": True}, "secure aggregation needs at least 3 nodes"),
    ],
)
def test_bad_options_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    grid = _grid([{"a": np.ones(1)}, {"a": np.ones(1)}])

    with pytest.raises(ConfigError, match=message):
        run_query(grid, Count(), **kwargs)


def test_dp_needs_bounds_to_know_the_sensitivity() -> None:
    grid = _grid([{"a": np.ones(1)}, {"a": np.ones(1)}])

    with pytest.raises(ConfigError, match="needs bounds=\\(lower, upper\\)"):
        run_query(grid, Mean(column="a"), privacy=QueryPrivacy(noise_multiplier=1.0))
    assert not grid.sent  # refused before asking anyone


@pytest.mark.parametrize(
    ("query", "bad_args"),
    [
        (lambda: Mean(column=""), "needs a column name"),
        (lambda: Mean(column="a", bounds=(3, 3)), "lower must be below upper"),
        (lambda: Variance(column="a", ddof=2), "ddof must be 0 or 1"),
        (lambda: Histogram(column="a"), "needs bounds=\\(lower, upper\\) or edges"),
        (lambda: Histogram(column="a", bounds=(0, 1), num_bins=0), "num_bins must be a positive"),
        (lambda: Histogram(column="a", edges=[0, 1], bounds=(0, 2)), "disagree"),
        (lambda: Quantiles(column="a", bounds=(0, 1), qs=(1.5,)), "qs must be levels in"),
        (lambda: Count(where=[("a", "~", 1)]), "operator '~' is not one of"),
        (lambda: Count(where={"a": float("nan")}), "must be a finite number"),
    ],
)
def test_a_malformed_query_is_a_config_error(query: Any, bad_args: str) -> None:
    with pytest.raises(ConfigError, match=bad_args):
        query()


def _noise_draws(query: Any, tables: list[Table], repeats: int, z: float) -> np.ndarray:
    grid = _grid(tables)
    rng = np.random.default_rng(7)
    privacy = QueryPrivacy(noise_multiplier=z)
    return np.array(
        [run_query(grid, query, privacy=privacy, rng=rng).value for _ in range(repeats)]
    )


def test_dp_noise_on_a_sum_has_the_calibrated_standard_deviation() -> None:
    tables = [{"a": np.full(10, 50.0)}, {"a": np.full(10, 20.0)}]
    query = Sum(column="a", bounds=(-10.0, 100.0))

    draws = _noise_draws(query, tables, repeats=400, z=0.5)

    expected_std = 0.5 * np.sqrt(2) * 100.0  # z * L2 sensitivity of (n, sum) * |bound|
    assert abs(draws.mean() - 700.0) < 4 * expected_std / np.sqrt(400)
    assert draws.std() == pytest.approx(expected_std, rel=0.15)


def test_dp_result_reports_its_cost_and_steps_the_accountant() -> None:
    class Ledger:
        def __init__(self) -> None:
            self.steps: list[tuple[float, float, int]] = []

        def step(self, *, noise_multiplier: float, sample_rate: float, num_steps: int = 1) -> None:
            self.steps.append((noise_multiplier, sample_rate, num_steps))

        def epsilon(self, delta: float) -> float:
            return 10.0 * len(self.steps)

    ledger = Ledger()
    privacy = QueryPrivacy(noise_multiplier=2.0, delta=1e-5, accountant=ledger)
    grid = _grid([{"a": np.full(30, 40.0)}, {"a": np.full(30, 60.0)}])

    first = run_query(grid, Variance(column="a", bounds=(0, 100)), privacy=privacy)
    second = run_query(grid, Histogram(column="a", bounds=(0, 100)), privacy=privacy)

    assert ledger.steps == [(2.0, 1.0, 1), (2.0, 1.0, 1)]
    assert first.privacy is not None and second.privacy is not None
    assert first.privacy.epsilon == pytest.approx(gaussian_epsilon(2.0, 1e-5))
    assert (first.privacy.total_epsilon, second.privacy.total_epsilon) == (10.0, 20.0)
    assert first.privacy.sensitivity == pytest.approx(np.sqrt(3))
    assert first.privacy.noise_std == pytest.approx(
        (2 * np.sqrt(3), 2 * np.sqrt(3) * 50, 2 * np.sqrt(3) * 2500)
    )
    assert second.privacy.sensitivity == 1.0 and set(second.privacy.noise_std) == {2.0}
    assert isinstance(second.value, HistogramCounts) and min(second.value.counts) >= 0


def test_dp_values_stay_within_what_the_bounds_allow() -> None:
    tables = [{"a": np.full(200, 0.5)}, {"a": np.full(200, 0.5)}]
    query = Mean(column="a", bounds=(0.0, 10.0))

    draws = _noise_draws(query, tables, repeats=50, z=20.0)  # noise often crosses 0

    assert draws.min() == 0.0 and draws.max() <= 10.0


def test_result_to_dict_is_json_ready() -> None:
    import json

    grid = _grid([{"a": np.array([1.0, 2.0])}, {"a": np.array([3.0])}])
    result = run_query(grid, Quantiles(column="a", bounds=(0, 4), num_bins=4, qs=(0.5,)))

    data = json.loads(json.dumps(result.to_dict()))

    assert data["query"] == "quantiles" and data["value"] == {"0.5": 2.5}
    assert data["count"] == 3 and data["nodes"] == [1, 2] and data["privacy"] is None


# ----------------------------------------------------------------------------- secure


def _hospital_table(node_id: int) -> dict[str, Any]:
    rng = np.random.default_rng(node_id)
    size = 40 + 10 * node_id
    return {
        "age": rng.uniform(20, 90, size).round(1),
        "condition_x": (rng.random(size) < 0.4).astype(float),
    }


def test_secure_queries_equal_the_plain_ones_and_name_every_node() -> None:
    # SecAgg+ between 5 real in-process nodes: the server sees only the sum.
    from pollinate.client import ClientApp
    from pollinate.privacy.secagg import secaggplus_mod
    from pollinate.runtime.inline import InlineGrid
    from pollinate.runtime.nodes import VirtualNodes

    app = ClientApp(mods=[secaggplus_mod])
    handle_queries(app, lambda context: _hospital_table(context.node_id))
    queries = [
        Count(where={"condition_x": 1}),
        Mean(column="age", where={"condition_x": 1}, bounds=(0, 120)),
        Histogram(column="age", edges=[0, 40, 60, 80, 120]),
    ]
    with InlineGrid(app, VirtualNodes(num_nodes=5, run_id=1)) as grid:
        for query in queries:
            # Act
            secure = run_query(grid, query, secure=True)
            plain = run_query(grid, query)
            # Assert
            assert secure.secure and secure.nodes == plain.nodes == (1, 2, 3, 4, 5)
            assert secure.count == plain.count  # counts are exact after rounding
            if isinstance(plain.value, HistogramCounts):
                assert secure.value == plain.value  # counts: exact after rounding
            else:
                # The mean is shift + S / C (shift 60, the middle of the bounds); S and C
                # are each off by less than 5 nodes x 2**-9 (the quantization step).
                error = 5 * 2**-9 * (1 + abs(plain.value - 60)) / plain.count
                assert abs(secure.value - plain.value) <= error
