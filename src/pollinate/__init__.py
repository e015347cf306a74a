"""Pollinate: federated learning that moves the computation to the data.

Write a :class:`ClientApp` (what runs next to the data) and a :class:`ServerApp` (the
round loop, usually a :class:`~pollinate.strategy.Strategy`), then run them unchanged
in simulation (``pollinate simulate``) or across machines.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Names are imported on first use, so ``import pollinate.records`` loads only the
# records layer (the import-contract test relies on it) and start-up stays fast.
_EXPORTS: dict[str, str] = {
    "ClientApp": "pollinate.client",
    "Mod": "pollinate.client",
    "AggregationError": "pollinate.errors",
    "ClientAppError": "pollinate.errors",
    "ConfigError": "pollinate.errors",
    "NodeUnavailableError": "pollinate.errors",
    "PollinateError": "pollinate.errors",
    "SerializationError": "pollinate.errors",
    "ArrayRecord": "pollinate.records",
    "ConfigRecord": "pollinate.records",
    "Context": "pollinate.records",
    "Error": "pollinate.records",
    "ErrorCode": "pollinate.records",
    "Message": "pollinate.records",
    "MetricRecord": "pollinate.records",
    "RecordDict": "pollinate.records",
    "keys": "pollinate.records",
    "run_simulation": "pollinate.runtime.simulation",
    "Grid": "pollinate.server",
    "ServerApp": "pollinate.server",
    "FedAvg": "pollinate.strategy",
    "Result": "pollinate.strategy",
    "Strategy": "pollinate.strategy",
}

__all__ = [
    "AggregationError",
    "ArrayRecord",
    "ClientApp",
    "ClientAppError",
    "ConfigError",
    "ConfigRecord",
    "Context",
    "Error",
    "ErrorCode",
    "FedAvg",
    "Grid",
    "Message",
    "MetricRecord",
    "Mod",
    "NodeUnavailableError",
    "PollinateError",
    "RecordDict",
    "Result",
    "SerializationError",
    "ServerApp",
    "Strategy",
    "keys",
    "run_simulation",
    "__version__",
]

if TYPE_CHECKING:
    from pollinate.client import ClientApp, Mod
    from pollinate.errors import (
        AggregationError,
        ClientAppError,
        ConfigError,
        NodeUnavailableError,
        PollinateError,
        SerializationError,
    )
    from pollinate.records import (
        ArrayRecord,
        ConfigRecord,
        Context,
        Error,
        ErrorCode,
        Message,
        MetricRecord,
        RecordDict,
        keys,
    )
    from pollinate.runtime.simulation import run_simulation
    from pollinate.server import Grid, ServerApp
    from pollinate.strategy import FedAvg, Result, Strategy


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pollinate' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
