"""ArrayRecord: named n-dimensional arrays, the payload of model parameters.

Arrays are held as NumPy arrays by reference: building a record from a model's arrays
copies nothing, and records read off the wire are read-only views of the received
buffer. Nothing in Pollinate mutates a record it was given; code that needs to change
arrays makes new ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import ConfigError

__all__ = ["SUPPORTED_DTYPES", "ArrayRecord"]

#: The dtypes an ArrayRecord can hold, by their NumPy names (also their wire names).
SUPPORTED_DTYPES: Final[tuple[str, ...]] = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)
# (kind, itemsize) of the supported dtypes: checked per array on every record built,
# and much cheaper than ``dtype.name``.
_SUPPORTED_KINDS = frozenset((np.dtype(n).kind, np.dtype(n).itemsize) for n in SUPPORTED_DTYPES)


def _as_supported_array(name: str, value: Any) -> NDArray[Any]:
    """Return ``value`` as a C-contiguous array of a supported dtype, copying only if needed."""
    if not isinstance(value, np.ndarray):
        if isinstance(value, (np.generic, int, float, bool)):
            value = np.asarray(value)
        else:
            raise ConfigError(
                f"ArrayRecord entry {name!r} is a {type(value).__name__}, not a numpy array; "
                "convert it first (for framework models use pollinate.adapters)"
            )
    dtype = value.dtype
    if (dtype.kind, dtype.itemsize) not in _SUPPORTED_KINDS or dtype.fields is not None:
        raise ConfigError(
            f"ArrayRecord entry {name!r} has dtype {value.dtype}, which cannot travel; "
            f"use one of {', '.join(SUPPORTED_DTYPES)}"
        )
    if not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))
    # ascontiguousarray would turn 0-d arrays into shape (1,); copy only when needed.
    return value if value.flags.c_contiguous else np.ascontiguousarray(value)


class ArrayRecord(MutableMapping[str, NDArray[Any]]):
    """An ordered mapping from names to NumPy arrays.

    Parameters
    ----------
    arrays:
        A mapping of names to arrays, or a sequence of arrays (named ``"0"``, ``"1"``, ...
        in order). Arrays are kept by reference when they are already C-contiguous.

    Examples
    --------
    >>> import numpy as np
    >>> record = ArrayRecord({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    >>> record.num_parameters
    9
    >>> [a.shape for a in ArrayRecord.from_list(record.to_list()).values()]
    [(2, 3), (3,)]
    """

    __slots__ = ("_data",)

    def __init__(
        self, arrays: Mapping[str, NDArray[Any]] | Iterable[NDArray[Any]] | None = None
    ) -> None:
        self._data: dict[str, NDArray[Any]] = {}
        if arrays is None:
            return
        if isinstance(arrays, Mapping):
            for key, value in arrays.items():
                self[key] = value
        else:
            for index, value in enumerate(arrays):
                self[str(index)] = value

    @classmethod
    def from_list(cls, arrays: Iterable[NDArray[Any]]) -> ArrayRecord:
        """Name a sequence of arrays ``"0"``, ``"1"``, ... in order."""
        return cls(list(arrays))

    def to_list(self) -> list[NDArray[Any]]:
        """The arrays in insertion order (the inverse of :meth:`from_list`)."""
        return list(self._data.values())

    # MutableMapping protocol
    def __getitem__(self, key: str) -> NDArray[Any]:
        return self._data[key]

    def __setitem__(self, key: str, value: NDArray[Any]) -> None:
        if not isinstance(key, str):
            raise ConfigError(f"ArrayRecord keys must be str, got {type(key).__name__}")
        self._data[key] = _as_supported_array(key, value)

    def __delitem__(self, key: str) -> None:
        del self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self._data.items())
        return f"ArrayRecord({{{inner}}})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArrayRecord):
            return NotImplemented
        return list(self._data) == list(other._data) and all(
            a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
            for a, b in zip(self._data.values(), other._data.values(), strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    @property
    def num_parameters(self) -> int:
        """Total number of scalar entries over all arrays."""
        return sum(int(a.size) for a in self._data.values())

    @property
    def nbytes(self) -> int:
        """Total size of the array data in bytes."""
        return sum(int(a.nbytes) for a in self._data.values())

    def copy(self) -> ArrayRecord:
        """A deep copy: new arrays with the same names, dtypes, shapes and values."""
        return ArrayRecord({k: v.copy() for k, v in self._data.items()})

    def structure(self) -> list[tuple[str, np.dtype[Any], tuple[int, ...]]]:
        """(name, dtype, shape) of each array, in order; equal structures can be aggregated."""
        return [(k, v.dtype, v.shape) for k, v in self._data.items()]
