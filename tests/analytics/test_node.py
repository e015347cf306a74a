"""The node side: a request survives the wire, bad requests are refused clearly, and a
node computes its statistic over exactly the rows asked for, clamped to the bounds."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.analytics import (
    DECLINED,
    Count,
    Histogram,
    Mean,
    StatisticRequest,
    Sum,
    Variance,
    answer,
    compute_statistic,
    handle_queries,
)
from pollinate.analytics.request import REPLY, REQUEST, VECTOR, check_answer, parse_where
from pollinate.client import ClientApp
from pollinate.errors import ConfigError, ProtocolError
from pollinate.records import ArrayRecord, ConfigRecord, Context, ErrorCode, Message, RecordDict
from pollinate.serde import message_from_bytes, message_to_bytes

TABLE = {
    "age": np.array([25.0, 40.0, 61.0, 75.0, np.nan, 130.0]),
    "x": np.array([1, 0, 1, 1, 1, 1]),
    "sex": np.array([0, 1, 1, 0, 1, np.nan]),
}


def _instruction(request: StatisticRequest, action: str = "mean") -> Message:
    return Message(
        RecordDict({REQUEST: request.to_config()}), dst_node_id=3, message_type=f"query.{action}"
    )


def _through_the_wire(message: Message) -> Message:
    return message_from_bytes(message_to_bytes(message))


@pytest.mark.parametrize(
    "query",
    [
        Count(),
        Count(column="age", where=[("age", ">=", 30)]),
        Sum(column="age", bounds=(0, 100), where={"x": 1}),
        Mean(column="age", bounds=(-5.5, 120), where=[("x", "==", 1), ("sex", "!=", 0)]),
        Variance(column="age"),
        Histogram(column="age", edges=[0, 18, 65, 120]),
    ],
)
@pytest.mark.parametrize("summable", [False, True])
def test_a_request_is_the_same_after_the_wire(query: object, summable: bool) -> None:
    request = query.request(summable=summable)  # type: ignore[attr-defined]

    received = _through_the_wire(_instruction(request))

    assert StatisticRequest.from_config(received.content.get_kind(REQUEST, ConfigRecord)) == request


def _config(**changes: object) -> ConfigRecord:
    config = StatisticRequest("mean", "age", bounds=(0.0, 120.0)).to_config()
    for key, value in changes.items():
        config[key.replace("_", "-")] = value  # type: ignore[assignment]
    return config


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"statistic": "median"}, "unknown statistic 'median'"),
        ({"statistic": 3}, "query field 'statistic' is a int, not a str"),
        ({"column": ""}, "a mean needs a column"),
        ({"where_ops": ["=~"]}, "the query's where-columns, where-ops and where-values differ"),
        (
            {"where_columns": ["x"], "where_ops": ["=~"], "where_values": [1.0]},
            "operator '=~' is not one of",
        ),
        ({"lower": 5.0, "upper": 1.0}, "lower must be below upper"),
        ({"lower": float("nan")}, "query field 'lower' must be a finite number"),
        ({"statistic": "histogram", "edges": [0.0, 2.0, 1.0]}, "strictly increasing"),
        ({"statistic": "histogram", "edges": list(range(10_003))}, "more than 10000 bins"),
        ({"summable": 1}, "query field 'summable' is a int, not a bool"),
    ],
)
def test_a_malformed_request_is_a_config_error_naming_the_field(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        StatisticRequest.from_config(_config(**changes))


def test_a_missing_field_says_which() -> None:
    config = _config()
    del config["shift"]

    with pytest.raises(ConfigError, match="the query has no 'shift' field"):
        StatisticRequest.from_config(config)


def test_rows_are_filtered_missing_values_dropped_and_values_clamped() -> None:
    request = StatisticRequest("sum", "age", parse_where({"x": 1}), bounds=(30.0, 100.0))

    vector = compute_statistic(request, TABLE)

    # x == 1 and age present: 25 -> 30 (clamped), 61, 75, 130 -> 100 (clamped).
    assert vector.tolist() == [4.0, 30.0 + 61.0 + 75.0 + 100.0]


def test_a_missing_filter_value_never_matches_even_for_not_equal() -> None:
    request = StatisticRequest("count", None, parse_where([("sex", "!=", 0)]))

    assert compute_statistic(request, TABLE).tolist() == [3.0]  # NaN sex is not "!= 0"


def test_plain_and_summable_moments_describe_the_same_values() -> None:
    plain = StatisticRequest("moments", "age", bounds=(0.0, 120.0))
    summable = StatisticRequest("moments", "age", bounds=(0.0, 120.0), summable=True, shift=60.0)
    values = np.array([25.0, 40.0, 61.0, 75.0, 120.0])

    n, mean, m2 = compute_statistic(plain, TABLE)
    n2, s1, s2 = compute_statistic(summable, TABLE)

    assert (n, n2) == (5, 5)
    assert mean == pytest.approx(values.mean()) and m2 == pytest.approx(np.var(values) * 5)
    assert s1 == pytest.approx(np.sum(values - 60)) and s2 == pytest.approx(
        np.sum((values - 60) ** 2)
    )


def test_a_missing_column_is_an_error_reply_naming_the_columns_there_are() -> None:
    app = ClientApp()
    handle_queries(app, lambda context: TABLE)
    message = _instruction(StatisticRequest("mean", "weight"))

    reply = app(message, Context(run_id=1, node_id=3))

    assert reply.error is not None and reply.error.code == ErrorCode.CLIENT_APP_RAISED
    assert "no column 'weight' (it has: age, sex, x)" in reply.error.reason


def test_columns_of_different_lengths_are_refused() -> None:
    table = {"age": np.ones(3), "x": np.ones(4)}

    with pytest.raises(ConfigError, match="columns differ in length"):
        compute_statistic(StatisticRequest("mean", "age", parse_where({"x": 1})), table)


def test_a_node_declines_a_group_smaller_than_its_min_count() -> None:
    message = _instruction(StatisticRequest("mean", "age", parse_where({"x": 1})))

    declined = answer(message, TABLE, min_count=5)  # 4 patients with x == 1 and an age
    answered = answer(message, TABLE, min_count=4)

    assert declined.error is not None
    assert declined.error.reason.startswith(DECLINED) and "fewer than 5" in declined.error.reason
    assert answered.content.get_kind(REPLY, ArrayRecord)[VECTOR][0] == 4.0


def test_handle_queries_answers_every_builtin_action() -> None:
    app = ClientApp()

    handle_queries(app, lambda context: TABLE)

    assert app.message_types == {
        f"query.{a}" for a in ("count", "sum", "mean", "variance", "histogram", "quantiles")
    }


def test_handle_queries_refuses_an_unknown_action_and_a_negative_min_count() -> None:
    with pytest.raises(ConfigError, match="unknown analytics action 'median'"):
        handle_queries(ClientApp(), lambda context: TABLE, actions=["median"])
    with pytest.raises(ConfigError, match="min_count must be >= 0"):
        handle_queries(ClientApp(), lambda context: TABLE, min_count=-1)


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (np.array([1.0, 2.0, 3.0]), r"shape \[3\], expected \[2\]"),
        (np.array([np.inf, 2.0]), "non-finite"),
        (np.array([-1.0, 2.0]), "count that is not a whole number"),
        (np.array([2.5, 2.0]), "count that is not a whole number"),
        (np.array([3.0, 500.0]), "mean 500.0 outside the bounds"),
        (np.array([True, False]), "bool numbers"),
    ],
)
def test_a_malformed_answer_is_a_protocol_error(vector: np.ndarray, message: str) -> None:
    request = StatisticRequest("mean", "age", bounds=(0.0, 120.0))

    with pytest.raises(ProtocolError, match=message):
        check_answer(request, vector)
