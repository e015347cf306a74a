"""Load an app object from a ``"module:attribute"`` reference."""

from __future__ import annotations

import importlib
from typing import TypeVar

from pollinate.errors import ConfigError

__all__ = ["load_object"]

_T = TypeVar("_T")


def load_object(reference: str, kind: type[_T]) -> _T:
    """Import ``module:attribute`` and check it is a ``kind``; ConfigError otherwise."""
    module_name, sep, attribute = reference.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"app reference {reference!r} must look like 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r} for {reference!r}: {exc}") from exc
    try:
        value = getattr(module, attribute)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{reference!r} is a {type(value).__name__}, not a {kind.__name__}")
    return value
