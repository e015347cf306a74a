"""MetricRecord and ConfigRecord: named scalars and lists of scalars.

Values are normalized to plain Python types on the way in (NumPy scalars become
``int``/``float``), so what a handler puts in is exactly what the other side reads out,
in any language.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, TypeAlias

import numpy as np

from pollinate.errors import ConfigError

__all__ = ["ConfigRecord", "ConfigValue", "MetricRecord", "MetricValue", "Scalar"]

Scalar: TypeAlias = bool | int | float | str | bytes
MetricValue: TypeAlias = int | float | list[int] | list[float]
ConfigValue: TypeAlias = (
    bool
    | int
    | float
    | str
    | bytes
    | list[bool]
    | list[int]
    | list[float]
    | list[str]
    | list[bytes]
)


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _plain_number(value: Any) -> int | float | None:
    """``value`` as a Python int/float if it is a (NumPy) real number but not a bool.

    Integers must fit in 64 bits, the widest any wire format carries.
    """
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        number = int(value)
        return number if _INT64_MIN <= number <= _INT64_MAX else None
    if isinstance(value, (float, np.floating)):
        return float(value)
    return None


def _plain_scalar(value: Any) -> Scalar | None:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    number = _plain_number(value)
    if number is not None:
        return number
    if isinstance(value, (str, bytes)):
        return value
    return None


def normalize_metric(key: str, value: Any) -> MetricValue:
    """Validate a metric value and return it as plain Python numbers."""
    number = _plain_number(value)
    if number is not None:
        return number
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        maybe = [_plain_number(v) for v in value]
        numbers = [v for v in maybe if v is not None]
        if len(numbers) == len(maybe):
            if all(isinstance(v, int) for v in numbers):
                return [int(v) for v in numbers]
            return [float(v) for v in numbers]
    raise ConfigError(
        f"metric {key!r} is {value!r} ({type(value).__name__}); metrics are int, float, "
        "or a list of them"
    )


def normalize_config(key: str, value: Any) -> ConfigValue:
    """Validate a config value and return it as plain Python values."""
    scalar = _plain_scalar(value)
    if scalar is not None:
        return scalar
    if isinstance(value, (list, tuple)):
        items = [_plain_scalar(v) for v in value]
        if all(v is not None for v in items):
            kinds = {type(v) for v in items}
            if len(kinds) <= 1:
                return list(items)  # type: ignore[return-value]
            if kinds <= {int, float}:
                return [float(v) for v in items]  # type: ignore[arg-type]
            raise ConfigError(
                f"config {key!r} mixes {sorted(k.__name__ for k in kinds)} in one list; "
                "lists must hold one type"
            )
    raise ConfigError(
        f"config {key!r} is {value!r} ({type(value).__name__}); config values are bool, int, "
        "float, str, bytes, or a list of one of them"
    )


class _ScalarRecord(MutableMapping[str, Any]):
    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data: dict[str, Any] = {}
        if data is not None:
            for key, value in data.items():
                self[key] = value

    def _normalize(self, key: str, value: Any) -> Any:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise ConfigError(f"{type(self).__name__} keys must be str, got {type(key).__name__}")
        self._data[key] = self._normalize(key, value)

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._data == other._data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._data!r})"

    def copy(self) -> Any:
        return type(self)({k: list(v) if isinstance(v, list) else v for k, v in self._data.items()})


class MetricRecord(_ScalarRecord, MutableMapping[str, MetricValue]):
    """Named metrics: ``int``, ``float``, or lists of them.

    Examples
    --------
    >>> MetricRecord({"loss": 0.25, "num-examples": 120})
    MetricRecord({'loss': 0.25, 'num-examples': 120})
    """

    __slots__ = ()

    def _normalize(self, key: str, value: Any) -> MetricValue:
        return normalize_metric(key, value)

    def copy(self) -> MetricRecord:
        """A copy that shares no lists with this record."""
        return MetricRecord(self._data)


class ConfigRecord(_ScalarRecord, MutableMapping[str, ConfigValue]):
    """Named configuration values: bool, int, float, str, bytes, or a list of one of them.

    Examples
    --------
    >>> ConfigRecord({"lr": 0.1, "server-round": 3, "optimizer": "sgd"})["lr"]
    0.1
    """

    __slots__ = ()

    def _normalize(self, key: str, value: Any) -> ConfigValue:
        return normalize_config(key, value)

    def copy(self) -> ConfigRecord:
        """A copy that shares no lists with this record."""
        return ConfigRecord(self._data)
