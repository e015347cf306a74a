"""Framework adapters: a model's parameters <-> an :class:`~pollinate.records.ArrayRecord`.

Design note. Strategies only ever see ArrayRecords; a ClientApp turns its framework's
model into one to reply, and loads the global model into its own before training::

    from pollinate.adapters import load_arrays, to_arrays

    model = load_arrays(Net(), msg.content["arrays"])   # torch: in place
    ...train...
    return msg.reply(RecordDict({"arrays": to_arrays(model), "metrics": metrics}))

The adapter is chosen from the *model's type* on every call, never from a global
"current framework" setting (unlike pfl-research's ``pfl/internal/ops/selector.py``),
so one process can use PyTorch and scikit-learn side by side. Each adapter is a
small object implementing the :class:`Adapter` protocol (pfl's
``pfl/internal/bridge/base.py`` shape); the built-in ones live one per module:

=============================  ==============================================  ==========
module                         models                                          load
=============================  ==============================================  ==========
:mod:`~.adapters.numpy`        ArrayRecord, dict / list / tuple of arrays      new object
:mod:`~.adapters.torch`        ``torch.nn.Module`` (``state_dict``)            in place
:mod:`~.adapters.jax`          pytrees of JAX arrays                           new pytree
:mod:`~.adapters.sklearn`      linear models and MLPs                          in place
=============================  ==============================================  ==========

Importing this package imports no framework: an adapter's ``supports`` looks in
``sys.modules`` first (a torch module cannot exist before torch is imported), and a
framework is imported only to convert a model of it. Adapters registered with
:func:`register_adapter` are asked first, newest first, so they can add model kinds
or replace a built-in's handling of one.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pollinate.adapters._base import Adapter
from pollinate.adapters.jax import JaxAdapter
from pollinate.adapters.numpy import NumpyAdapter
from pollinate.adapters.sklearn import SklearnAdapter
from pollinate.adapters.torch import TorchAdapter
from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord

__all__ = [
    "Adapter",
    "JaxAdapter",
    "NumpyAdapter",
    "SklearnAdapter",
    "TorchAdapter",
    "adapter_for",
    "load_arrays",
    "register_adapter",
    "to_arrays",
    "unregister_adapter",
]

_M = TypeVar("_M")

#: Asked after the registered adapters, in this order.
_BUILTIN: tuple[Adapter, ...] = (NumpyAdapter(), TorchAdapter(), JaxAdapter(), SklearnAdapter())
#: Adapters from register_adapter, newest first.
_registered: list[Adapter] = []


def register_adapter(adapter: Adapter) -> None:
    """Make ``adapter`` the first one asked by :func:`to_arrays` and :func:`load_arrays`.

    Register once, at import time of the app (both the server's and the nodes' code
    must see it). Undo with :func:`unregister_adapter`.

    Examples
    --------
    >>> import numpy as np
    >>> class Scalar:  # a toy model kind: one float
    ...     def __init__(self, value: float) -> None:
    ...         self.value = value
    >>> class ScalarAdapter:
    ...     name = "Scalar"
    ...     def supports(self, model): return isinstance(model, Scalar)
    ...     def to_arrays(self, model): return ArrayRecord({"value": np.float64(model.value)})
    ...     def load_arrays(self, model, arrays): return Scalar(float(arrays["value"]))
    >>> adapter = ScalarAdapter()
    >>> register_adapter(adapter)
    >>> to_arrays(Scalar(2.5))["value"]
    array(2.5)
    >>> unregister_adapter(adapter)
    """
    missing = [
        method
        for method in ("supports", "to_arrays", "load_arrays")
        if not callable(getattr(adapter, method, None))
    ]
    if missing or not isinstance(getattr(adapter, "name", None), str):
        raise ConfigError(
            f"{type(adapter).__name__} is not an Adapter: it needs a name (str) and the "
            f"methods supports, to_arrays and load_arrays (missing: {missing or ['name']})"
        )
    if any(existing is adapter for existing in _registered):
        raise ConfigError(f"{adapter!r} is already registered")
    _registered.insert(0, adapter)


def unregister_adapter(adapter: Adapter) -> None:
    """Remove an adapter added by :func:`register_adapter`."""
    for index, existing in enumerate(_registered):
        if existing is adapter:
            del _registered[index]
            return
    raise ConfigError(f"{adapter!r} is not registered (built-in adapters cannot be removed)")


def adapter_for(model: object) -> Adapter:
    """The adapter that handles ``model``'s type; registered adapters are asked first.

    Raises
    ------
    ConfigError
        No adapter handles it; the message names its type and the supported kinds.

    Examples
    --------
    >>> import numpy as np
    >>> adapter_for({"w": np.zeros(2)}).name
    'ArrayRecord, dict or list/tuple of numpy arrays'
    """
    for adapter in (*_registered, *_BUILTIN):
        if adapter.supports(model):
            return adapter
    supported = "; ".join(adapter.name for adapter in (*_registered, *_BUILTIN))
    kind = type(model)
    raise ConfigError(
        f"no adapter for a model of type {kind.__module__}.{kind.__qualname__}; "
        f"supported: {supported}. Register your own with "
        "pollinate.adapters.register_adapter"
    )


def to_arrays(model: Any) -> ArrayRecord:
    """The parameters of ``model`` as an ArrayRecord, without copying where possible.

    See the adapter of the model's kind for what is included and what is shared
    (a torch module's record is a live view of its memory on the CPU).

    Examples
    --------
    >>> import numpy as np
    >>> to_arrays([np.zeros(2), np.ones(3)])
    ArrayRecord({0: float64[2], 1: float64[3]})
    """
    return adapter_for(model).to_arrays(model)


def load_arrays(model: _M, arrays: ArrayRecord) -> _M:
    """Return ``model`` with ``arrays`` loaded (in place for torch and scikit-learn).

    Torch modules and scikit-learn estimators are changed in place and returned;
    NumPy containers and JAX pytrees are immutable here: a new one is returned.
    Names, shapes (and dtypes, except for scikit-learn) must match the model; one
    :class:`~pollinate.errors.ConfigError` lists every mismatch.

    Examples
    --------
    >>> import numpy as np
    >>> load_arrays({"w": np.zeros(2)}, ArrayRecord({"w": np.ones(2)}))["w"]
    array([1., 1.])
    """
    return adapter_for(model).load_arrays(model, arrays)
