"""The wire form of a query: what the server asks a node to compute, and checks on it.

A :class:`StatisticRequest` is plain data (a ConfigRecord on the wire): which summable
statistic, over which column, of which rows, clamped to which bounds. It carries no
code, so a node runs only the few computations written in :mod:`pollinate.analytics.node`
and checks every field it is sent before touching its data.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, TypeAlias, TypeVar, get_args

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import ConfigError, ProtocolError
from pollinate.records import ConfigRecord

__all__ = [
    "MAX_BINS",
    "OPERATORS",
    "Condition",
    "Operator",
    "Statistic",
    "StatisticRequest",
    "WhereSpec",
    "check_answer",
    "check_bounds",
    "check_edges",
    "parse_where",
]

#: Most histogram bins a request may ask for: bounds the memory a query costs a node.
MAX_BINS: Final = 10_000

Statistic: TypeAlias = Literal["count", "sum", "mean", "moments", "histogram"]
Operator: TypeAlias = Literal["==", "!=", "<", "<=", ">", ">="]
OPERATORS: Final[tuple[str, ...]] = get_args(Operator)
_STATISTICS: Final[tuple[str, ...]] = get_args(Statistic)

# Keys of the request's ConfigRecord.
REQUEST: Final = "query"  # name of the ConfigRecord in the instruction
STATISTIC: Final = "statistic"
COLUMN: Final = "column"
WHERE_COLUMNS: Final = "where-columns"
WHERE_OPS: Final = "where-ops"
WHERE_VALUES: Final = "where-values"
LOWER: Final = "lower"
UPPER: Final = "upper"
EDGES: Final = "edges"
SUMMABLE: Final = "summable"
SHIFT: Final = "shift"
# Name of the ArrayRecord in the reply, and of its one vector.
REPLY: Final = "statistic"
VECTOR: Final = "vector"


class Condition(NamedTuple):
    """One row filter, ``column <op> value``; a query's conditions are ANDed."""

    column: str
    op: str
    value: float


#: How a query's ``where`` is written: ``{"condition_x": 1}`` (equalities) or
#: ``[("age", ">=", 18), ("sex", "==", 1)]``.
WhereSpec: TypeAlias = Mapping[str, float] | Sequence[tuple[str, str, float]]


def parse_where(where: WhereSpec) -> tuple[Condition, ...]:
    """Normalize and check a ``where`` argument; a ConfigError names what is wrong.

    Examples
    --------
    >>> parse_where({"condition_x": True})
    (Condition(column='condition_x', op='==', value=1.0),)
    >>> parse_where([("age", ">=", 18)])
    (Condition(column='age', op='>=', value=18.0),)
    """
    items = (
        [(column, "==", value) for column, value in where.items()]
        if isinstance(where, Mapping)
        else list(where)
    )
    conditions = []
    for item in items:
        if not (isinstance(item, (tuple, list)) and len(item) == 3):
            raise ConfigError(
                f"where condition {item!r} must be a (column, op, value) triple, "
                "e.g. ('age', '>=', 18)"
            )
        column, op, value = item
        if not isinstance(column, str) or not column:
            raise ConfigError(f"where condition {item!r}: the column must be a non-empty str")
        if op not in OPERATORS:
            raise ConfigError(
                f"where condition {item!r}: operator {op!r} is not one of {', '.join(OPERATORS)}"
            )
        if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise ConfigError(
                f"where condition {item!r}: the value must be a finite number (bools are 1/0)"
            )
        conditions.append(Condition(column, str(op), float(value)))
    return tuple(conditions)


def check_bounds(bounds: object, *, what: str = "bounds") -> tuple[float, float]:
    """``bounds`` as ``(lower, upper)``, finite with ``lower < upper``; else ConfigError."""
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise ConfigError(f"{what} must be a (lower, upper) pair, got {bounds!r}")
    lower, upper = bounds
    if not all(isinstance(v, (int, float)) and math.isfinite(float(v)) for v in (lower, upper)):
        raise ConfigError(f"{what} {bounds!r} must be finite numbers")
    if not float(lower) < float(upper):
        raise ConfigError(f"{what} {bounds!r}: lower must be below upper")
    return float(lower), float(upper)


def check_edges(edges: Sequence[float]) -> tuple[float, ...]:
    """Histogram bin edges: 2 to MAX_BINS + 1 finite, strictly increasing numbers."""
    values = tuple(float(e) for e in edges)
    if not 2 <= len(values) <= MAX_BINS + 1:
        raise ConfigError(
            f"a histogram needs between 1 and {MAX_BINS} bins, i.e. 2 to {MAX_BINS + 1} edges; "
            f"got {len(values)} edges"
        )
    if not all(math.isfinite(e) for e in values):
        raise ConfigError("histogram edges must be finite numbers")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ConfigError("histogram edges must be strictly increasing")
    return values


@dataclass(frozen=True)
class StatisticRequest:
    """What one node is asked to compute over its own records.

    Attributes
    ----------
    statistic:
        ``count`` -> ``[n]``; ``sum`` -> ``[n, sum x]``; ``mean`` -> ``[n, mean]``
        (summable: ``[n, sum(x - shift)]``); ``moments`` -> ``[n, mean, M2]``
        (summable: ``[n, sum(x - shift), sum((x - shift)**2)]``); ``histogram`` ->
        the counts per bin.
    column:
        The value column (``None`` for a count of rows).
    conditions:
        Row filters, ANDed. Rows whose value or filter column is missing (NaN) never count.
    bounds:
        Values are clamped into ``[lower, upper]`` before anything is computed.
    edges:
        Histogram bin edges.
    summable:
        Whether the vector must merge by plain addition (for secure aggregation and
        noise); otherwise mean and moments use the stabler (n, mean, M2) form.
    shift:
        The offset of the summable mean and moments (the middle of the bounds).
    """

    statistic: Statistic
    column: str | None = None
    conditions: tuple[Condition, ...] = ()
    bounds: tuple[float, float] | None = None
    edges: tuple[float, ...] = ()
    summable: bool = False
    shift: float = 0.0

    def __post_init__(self) -> None:
        if self.statistic not in _STATISTICS:
            raise ConfigError(
                f"unknown statistic {self.statistic!r}; one of {', '.join(_STATISTICS)}"
            )
        if self.statistic != "count" and not self.column:
            raise ConfigError(f"a {self.statistic} needs a column")
        if self.column is not None and (not isinstance(self.column, str) or not self.column):
            raise ConfigError(f"column must be a non-empty str, got {self.column!r}")
        if self.bounds is not None:
            check_bounds(self.bounds)
        if self.statistic == "histogram":
            check_edges(self.edges)
        if not math.isfinite(self.shift):
            raise ConfigError(f"shift must be finite, got {self.shift}")

    @property
    def vector_length(self) -> int:
        """How many numbers a node's answer has."""
        if self.statistic == "histogram":
            return len(self.edges) - 1
        return {"count": 1, "sum": 2, "mean": 2, "moments": 3}[self.statistic]

    def to_config(self) -> ConfigRecord:
        """The ConfigRecord that carries this request in an instruction."""
        lower, upper = self.bounds if self.bounds is not None else (0.0, 0.0)
        return ConfigRecord(
            {
                STATISTIC: self.statistic,
                COLUMN: self.column or "",
                WHERE_COLUMNS: [c.column for c in self.conditions],
                WHERE_OPS: [c.op for c in self.conditions],
                WHERE_VALUES: [c.value for c in self.conditions],
                LOWER: lower,
                UPPER: upper,
                EDGES: list(self.edges),
                SUMMABLE: self.summable,
                SHIFT: self.shift,
            }
        )

    @classmethod
    def from_config(cls, config: ConfigRecord) -> StatisticRequest:
        """Read and check a request sent by the server; ConfigError names a bad field."""
        columns, ops, values = (
            _field(config, k, list) for k in (WHERE_COLUMNS, WHERE_OPS, WHERE_VALUES)
        )
        if not len(columns) == len(ops) == len(values):
            raise ConfigError(
                "the query's where-columns, where-ops and where-values differ in length"
            )
        edges = _field(config, EDGES, list)
        if len(edges) > MAX_BINS + 1:
            raise ConfigError(f"the query asks for more than {MAX_BINS} bins")
        if not all(_is_number(e) for e in edges):
            raise ConfigError("query field 'edges' must be a list of numbers")
        lower, upper = _number(config, LOWER), _number(config, UPPER)
        statistic = _field(config, STATISTIC, str)
        return cls(
            statistic=statistic,  # type: ignore[arg-type]  # checked in __post_init__
            column=_field(config, COLUMN, str) or None,
            conditions=parse_where(list(zip(columns, ops, values, strict=True))),
            # (0, 0) is never valid bounds, so it stands for "none".
            bounds=None if lower == upper == 0 else check_bounds((lower, upper)),
            edges=tuple(float(e) for e in edges),
            summable=_field(config, SUMMABLE, bool),
            shift=_number(config, SHIFT),
        )


_T = TypeVar("_T", str, bool, list)  # type: ignore[type-arg]


def _field(config: ConfigRecord, key: str, kind: type[_T]) -> _T:
    """``config[key]``, checked to be a ``kind``."""
    if key not in config:
        raise ConfigError(f"the query has no {key!r} field; was it sent by pollinate.analytics?")
    value = config[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"query field {key!r} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(config: ConfigRecord, key: str) -> float:
    """``config[key]`` as a finite float."""
    if key not in config:
        raise ConfigError(f"the query has no {key!r} field; was it sent by pollinate.analytics?")
    value = config[key]
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ConfigError(f"query field {key!r} must be a finite number, got {value!r}")
    return float(value)


def check_answer(request: StatisticRequest, vector: NDArray[Any]) -> NDArray[np.float64]:
    """A node's answer to ``request`` as float64, or ProtocolError saying what is wrong.

    A node is another party: its vector must have the requested length, be finite, have
    whole non-negative counts and, for the plain forms, a mean within the bounds and a
    non-negative M2. (A node can still lie within these limits; bounds cap its effect.)
    """
    if vector.ndim != 1 or vector.shape[0] != request.vector_length:
        raise ProtocolError(
            f"answered a {request.statistic} with shape {list(vector.shape)}, "
            f"expected [{request.vector_length}]"
        )
    if vector.dtype.kind not in "iuf":
        raise ProtocolError(f"answered with {vector.dtype} numbers")
    values = vector.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ProtocolError("answered with a non-finite number")
    counts = values if request.statistic == "histogram" else values[:1]
    if np.any(counts < 0) or np.any(counts != np.round(counts)):
        raise ProtocolError("answered with a count that is not a whole number >= 0")
    if request.statistic in ("mean", "moments") and not request.summable:
        if request.bounds is not None and values[0] > 0:
            lower, upper = request.bounds
            slack = 1e-9 * max(1.0, abs(lower), abs(upper))  # float rounding of a mean
            if not lower - slack <= values[1] <= upper + slack:
                raise ProtocolError(f"answered a mean {values[1]} outside the bounds")
        if request.statistic == "moments" and values[2] < 0:
            raise ProtocolError("answered a negative sum of squared deviations")
    return values
