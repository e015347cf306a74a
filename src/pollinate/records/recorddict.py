"""RecordDict: the content of a message, named records of the three kinds."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from typing import TypeAlias, TypeVar

from pollinate.errors import ConfigError
from pollinate.records.arrays import ArrayRecord
from pollinate.records.scalars import ConfigRecord, MetricRecord

__all__ = ["Record", "RecordDict"]

Record: TypeAlias = ArrayRecord | MetricRecord | ConfigRecord
_R = TypeVar("_R", ArrayRecord, MetricRecord, ConfigRecord)


class RecordDict(MutableMapping[str, Record]):
    """Named records: ArrayRecords, MetricRecords and ConfigRecords, in insertion order.

    Examples
    --------
    >>> import numpy as np
    >>> content = RecordDict({"arrays": ArrayRecord({"w": np.ones(3)}),
    ...                       "config": ConfigRecord({"lr": 0.1})})
    >>> list(content.array_records), list(content.config_records)
    (['arrays'], ['config'])
    """

    __slots__ = ("_data",)

    def __init__(self, records: Mapping[str, Record] | None = None) -> None:
        self._data: dict[str, Record] = {}
        if records is not None:
            for key, value in records.items():
                self[key] = value

    def __getitem__(self, key: str) -> Record:
        return self._data[key]

    def __setitem__(self, key: str, value: Record) -> None:
        if not isinstance(key, str):
            raise ConfigError(f"RecordDict keys must be str, got {type(key).__name__}")
        if not isinstance(value, (ArrayRecord, MetricRecord, ConfigRecord)):
            raise ConfigError(
                f"RecordDict entry {key!r} is a {type(value).__name__}; it must be an "
                "ArrayRecord, MetricRecord or ConfigRecord"
            )
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RecordDict):
            return NotImplemented
        return list(self._data.items()) == list(other._data.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"RecordDict({self._data!r})"

    def _of_kind(self, kind: type[_R]) -> dict[str, _R]:
        return {k: v for k, v in self._data.items() if isinstance(v, kind)}

    @property
    def array_records(self) -> dict[str, ArrayRecord]:
        """The ArrayRecords by name (a new dict; the records themselves are shared)."""
        return self._of_kind(ArrayRecord)

    @property
    def metric_records(self) -> dict[str, MetricRecord]:
        """The MetricRecords by name."""
        return self._of_kind(MetricRecord)

    @property
    def config_records(self) -> dict[str, ConfigRecord]:
        """The ConfigRecords by name."""
        return self._of_kind(ConfigRecord)

    def get_kind(self, key: str, kind: type[_R]) -> _R:
        """The record ``key``, checked to be of ``kind``; a clear error otherwise."""
        try:
            value = self._data[key]
        except KeyError:
            raise ConfigError(
                f"message content has no {kind.__name__} named {key!r} "
                f"(it has: {', '.join(self._data) or 'nothing'})"
            ) from None
        if not isinstance(value, kind):
            raise ConfigError(
                f"message content {key!r} is a {type(value).__name__}, expected {kind.__name__}"
            )
        return value

    def copy(self) -> RecordDict:
        """A deep copy: copied records, copied arrays."""
        return RecordDict({k: v.copy() for k, v in self._data.items()})
