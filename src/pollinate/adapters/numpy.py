"""NumPy models: an ArrayRecord, a dict of arrays, or a list/tuple of arrays.

A NumPy model is its parameters, so this adapter only renames and checks: nothing is
copied. Lists and tuples are named ``"0"``, ``"1"``, ... in order (as
:meth:`ArrayRecord.from_list`). Loading returns a *new* container of the same kind
and never changes the one given. Arrays loaded from a received message are
read-only views of the message's buffer; a training loop that updates arrays in
place must copy them first (``np.array(a)``), as ``examples/quickstart`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast, final

import numpy as np

from pollinate.adapters._base import ArraySpec, check_arrays_match
from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord

__all__ = ["NumpyAdapter"]

_M = TypeVar("_M")


def _is_array(value: object) -> bool:
    return isinstance(value, (np.ndarray, np.generic))


@final
class NumpyAdapter:
    """The adapter for ArrayRecords, dicts of arrays and lists/tuples of arrays.

    Examples
    --------
    >>> adapter = NumpyAdapter()
    >>> model = {"w": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float32)}
    >>> record = adapter.to_arrays(model)
    >>> record["w"] is model["w"]  # no copy
    True
    >>> loaded = adapter.load_arrays(model, ArrayRecord({"w": np.zeros((2, 2), np.float32),
    ...                                                  "b": np.ones(2, np.float32)}))
    >>> loaded["b"].tolist(), model["b"].tolist()  # a new dict; the given one is unchanged
    ([1.0, 1.0], [0.0, 0.0])
    """

    @property
    def name(self) -> str:
        """What this adapter handles."""
        return "ArrayRecord, dict or list/tuple of numpy arrays"

    def supports(self, model: object) -> bool:
        """ArrayRecords, and non-empty dicts (str keys) / lists / tuples of numpy arrays."""
        if isinstance(model, ArrayRecord):
            return True
        if isinstance(model, Mapping):
            return bool(model) and all(
                isinstance(k, str) and _is_array(v) for k, v in model.items()
            )
        if isinstance(model, (list, tuple)):
            return bool(model) and all(_is_array(v) for v in model)
        return False

    def to_arrays(self, model: Any) -> ArrayRecord:
        """The arrays of ``model``, by reference (an ArrayRecord is returned as is)."""
        if isinstance(model, ArrayRecord):
            return model
        if not self.supports(model):
            raise ConfigError(f"NumpyAdapter handles {self.name}, got {type(model).__name__}")
        if isinstance(model, Mapping):
            return ArrayRecord(model)
        return ArrayRecord.from_list(model)

    def load_arrays(self, model: _M, arrays: ArrayRecord) -> _M:
        """A new container like ``model`` holding ``arrays`` (names, shapes, dtypes checked)."""
        template = self.to_arrays(model)
        expected: dict[str, ArraySpec] = {
            name: (array.dtype.name, tuple(array.shape)) for name, array in template.items()
        }
        check_arrays_match(type(model).__name__, expected, arrays)
        if isinstance(model, ArrayRecord):
            return cast(_M, ArrayRecord({name: arrays[name] for name in expected}))
        if isinstance(model, Mapping):
            return cast(_M, {name: arrays[name] for name in expected})
        values = [arrays[name] for name in expected]
        if isinstance(model, list):
            return cast(_M, values)
        if hasattr(type(model), "_fields"):  # a NamedTuple keeps its type
            return type(model)(*values)
        return cast(_M, tuple(values))
