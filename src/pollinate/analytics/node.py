"""The node side of federated analytics: a node's records in, one statistic vector out.

A node holds a *table*: a mapping from column names to equally long 1-d arrays (a dict
of NumPy arrays; a pandas DataFrame's ``{c: df[c].to_numpy() for c in df}``). It never
sends rows, only the statistic the server asked for (:mod:`pollinate.analytics.request`).

The node keeps one policy of its own, whoever asks: ``min_count``, the fewest matching
records it will answer about. Below it the node declines (an error reply), so a query
cannot single out a tiny group of its patients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Final, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pollinate.analytics.request import REPLY, REQUEST, VECTOR, StatisticRequest
from pollinate.analytics.statistics import Moments, histogram_counts
from pollinate.client import ClientApp
from pollinate.errors import ConfigError
from pollinate.records import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    ErrorCode,
    Message,
    RecordDict,
)

__all__ = [
    "ACTIONS",
    "DECLINED",
    "Table",
    "TableFn",
    "answer",
    "compute_statistic",
    "handle_queries",
]

#: A node's records: column name -> 1-d array, all of one length.
Table: TypeAlias = Mapping[str, ArrayLike]
#: Loads this node's table (called once per query; cache it if loading is slow).
TableFn: TypeAlias = Callable[[Context], Table]

#: The ``query.<action>`` message types of the built-in operators.
ACTIONS: Final = ("count", "sum", "mean", "variance", "histogram", "quantiles")
#: Start of the reason of a reply in which a node declines (too few matching records).
DECLINED: Final = "declined"

_COMPARE: Final = {
    "==": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


def _column(table: Table, name: str) -> NDArray[np.float64]:
    """Column ``name`` as a 1-d float64 array; ConfigError if missing or not numeric."""
    if name not in table:
        raise ConfigError(
            f"this node has no column {name!r} (it has: {', '.join(sorted(table)) or 'none'})"
        )
    try:
        values = np.asarray(table[name], dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"column {name!r} is not numeric on this node") from None
    if values.ndim != 1:
        raise ConfigError(f"column {name!r} must be 1-d, it has shape {values.shape}")
    return values


def _num_rows(table: Table, names: Iterable[str]) -> int:
    lengths = {name: len(_column(table, name)) for name in names}
    if not lengths:
        lengths = {name: len(np.asarray(value).reshape(-1)) for name, value in table.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"this node's columns differ in length: {lengths}")
    return next(iter(lengths.values()), 0)


def _selected_values(request: StatisticRequest, table: Table) -> NDArray[np.float64]:
    """The request's column over the rows it selects, NaNs dropped, clamped to bounds.

    For a count without a column, a vector of zeros, one per selected row.
    """
    used = [c.column for c in request.conditions]
    if request.column is not None:
        used.append(request.column)
    num_rows = _num_rows(table, used)
    keep = np.ones(num_rows, dtype=bool)
    for condition in request.conditions:
        column = _column(table, condition.column)
        keep &= ~np.isnan(column) & _COMPARE[condition.op](column, condition.value)
    if request.column is None:
        return np.zeros(int(keep.sum()), dtype=np.float64)
    values = _column(table, request.column)
    values = values[keep & ~np.isnan(values)]
    if request.bounds is not None:
        values = np.clip(values, *request.bounds)
    return values


def compute_statistic(request: StatisticRequest, table: Table) -> NDArray[np.float64]:
    """This node's statistic vector for ``request`` (layouts in StatisticRequest).

    Examples
    --------
    >>> from pollinate.analytics.request import parse_where
    >>> table = {"age": [30.0, 50.0, 70.0, 90.0], "x": [1, 0, 1, 1]}
    >>> request = StatisticRequest("mean", column="age", conditions=parse_where({"x": 1}))
    >>> compute_statistic(request, table).tolist()
    [3.0, 63.333333333333336]
    """
    values = _selected_values(request, table)
    n = float(values.size)
    statistic = request.statistic
    if statistic == "count":
        return np.array([n])
    if statistic == "sum":
        return np.array([n, float(np.sum(values))])
    if statistic == "histogram":
        return histogram_counts(values, request.edges).astype(np.float64)
    if request.summable:
        centred = values - request.shift
        sums = [n, float(np.sum(centred)), float(np.sum(centred * centred))]
        return np.array(sums[:2] if statistic == "mean" else sums)
    moments = Moments.of(values)
    plain = [n, moments.mean, moments.m2]
    return np.array(plain[:2] if statistic == "mean" else plain)


def _matching(request: StatisticRequest, vector: NDArray[np.float64]) -> int:
    """How many records went into ``vector``."""
    return int(vector.sum()) if request.statistic == "histogram" else int(vector[0])


def answer(message: Message, table: Table, *, min_count: int = 0) -> Message:
    """Reply to an analytics query with this node's statistic over ``table``.

    The whole body of a ``@app.query("mean")`` handler. A node with fewer than
    ``min_count`` matching records declines with an error reply (reason starting
    with :data:`DECLINED`), never revealing the statistic of so small a group.

    Raises
    ------
    ConfigError
        The query is malformed or names a column this node lacks (the ClientApp turns
        it into an error reply that says so).
    """
    if min_count < 0:
        raise ConfigError(f"min_count must be >= 0, got {min_count}")
    request = StatisticRequest.from_config(message.content.get_kind(REQUEST, ConfigRecord))
    vector = compute_statistic(request, table)
    matching = _matching(request, vector)
    if matching < min_count:
        return message.reply(
            error=Error(
                ErrorCode.CLIENT_APP_RAISED,
                f"{DECLINED}: fewer than {min_count} matching records on this node "
                "(its min_count policy)",
            )
        )
    return message.reply(RecordDict({REPLY: ArrayRecord({VECTOR: vector})}))


def handle_queries(
    app: ClientApp,
    table_fn: TableFn,
    *,
    min_count: int = 0,
    actions: Iterable[str] = ACTIONS,
) -> None:
    """Register handlers on ``app`` answering the built-in operators from ``table_fn``.

    Parameters
    ----------
    app:
        The node's ClientApp; gets one ``@app.query(action)`` handler per action.
    table_fn:
        Loads this node's table from its Context (e.g. from ``node_config`` paths).
    min_count:
        This node's threshold: it declines queries matching fewer records.
    actions:
        The operators to answer (default: all of :data:`ACTIONS`).

    Examples
    --------
    >>> app = ClientApp()
    >>> handle_queries(app, lambda context: {"age": [40.0, 60.0]}, min_count=1)
    >>> sorted(app.message_types)[:2]
    ['query.count', 'query.histogram']
    """
    if min_count < 0:
        raise ConfigError(f"min_count must be >= 0, got {min_count}")

    def handler(message: Message, context: Context) -> Message:
        return answer(message, table_fn(context), min_count=min_count)

    for action in actions:
        if action not in ACTIONS:
            raise ConfigError(f"unknown analytics action {action!r}; one of {', '.join(ACTIONS)}")
        app.query(action)(handler)
