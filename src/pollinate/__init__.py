"""Pollinate: federated learning that moves the computation to the data.

Write a :class:`ClientApp` (what runs next to the data) and a :class:`ServerApp` (the
round loop, usually a :class:`~pollinate.strategy.Strategy`), then run them unchanged
in simulation (``pollinate simulate``) or across machines.
"""

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

__version__ = "0.1.0"

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
    "__version__",
    "keys",
    "run_simulation",
]
