"""The Adapter protocol and the checks every built-in adapter shares."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, Protocol, TypeVar, runtime_checkable

from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord

__all__ = ["Adapter", "ArraySpec", "check_arrays_match", "import_framework"]

_M = TypeVar("_M")

#: What a model expects of one named array: (dtype name, shape).
ArraySpec = tuple[str, tuple[int, ...]]

# Error messages list this many offending names, then "... and N more".
_MAX_LISTED = 8


@runtime_checkable
class Adapter(Protocol):
    """Moves a model's parameters to and from an :class:`~pollinate.records.ArrayRecord`.

    Implement it to teach :func:`pollinate.adapters.to_arrays` and
    :func:`pollinate.adapters.load_arrays` a new kind of model, then pass an instance
    to :func:`pollinate.adapters.register_adapter`.

    ``supports`` must be cheap and must not import a framework: a model of a
    framework can only exist once that framework has been imported, so checking
    ``sys.modules`` first is enough (see :class:`pollinate.adapters.torch.TorchAdapter`).
    """

    @property
    def name(self) -> str:
        """What this adapter handles, for error messages (e.g. ``"torch.nn.Module"``)."""
        ...

    def supports(self, model: object) -> bool:
        """Whether ``model`` is of a kind this adapter handles."""
        ...

    def to_arrays(self, model: Any) -> ArrayRecord:
        """The model's parameters as named arrays, sharing memory where possible."""
        ...

    def load_arrays(self, model: _M, arrays: ArrayRecord) -> _M:
        """The model with ``arrays`` loaded (in place, or a new model for immutable ones)."""
        ...


def import_framework(module: str, *, install_hint: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this model needs {module.split('.')[0]}, which is not installed: {install_hint}"
        ) from exc


def _listed(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown}, ... and {more} more" if more > 0 else shown


def check_arrays_match(
    owner: str,
    expected: Mapping[str, ArraySpec],
    arrays: ArrayRecord,
    *,
    check_dtype: bool = True,
) -> None:
    """Raise one ConfigError listing every way ``arrays`` differs from ``expected``.

    ``owner`` names the model in the message (e.g. ``"Net (torch.nn.Module)"``).
    Missing and unexpected names, shape mismatches and (if ``check_dtype``) dtype
    mismatches are all reported at once, so one run shows everything to fix.
    """
    if not isinstance(arrays, ArrayRecord):
        raise ConfigError(
            f"load_arrays needs an ArrayRecord, got {type(arrays).__name__}; "
            "wrap plain arrays with ArrayRecord(...)"
        )
    problems = []
    missing = [name for name in expected if name not in arrays]
    unexpected = [name for name in arrays if name not in expected]
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    shapes, dtypes = [], []
    for name, (dtype, shape) in expected.items():
        if name not in arrays:
            continue
        array = arrays[name]
        if tuple(array.shape) != tuple(shape):
            shapes.append(f"{name}: model {tuple(shape)}, arrays {tuple(array.shape)}")
        elif check_dtype and array.dtype.name != dtype:
            dtypes.append(f"{name}: model {dtype}, arrays {array.dtype.name}")
    if shapes:
        problems.append(f"shape mismatches: {_listed(shapes)}")
    if dtypes:
        problems.append(f"dtype mismatches: {_listed(dtypes)}")
    if problems:
        raise ConfigError(
            f"cannot load arrays into {owner}: {'; '.join(problems)}. The arrays must come "
            "from a model of the same architecture (to_arrays of the same class and config)"
        )
