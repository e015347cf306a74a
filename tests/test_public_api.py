"""Pins the public namespaces: adding or removing a public name is a deliberate act."""

from __future__ import annotations

import importlib

import pytest

import pollinate

EXPECTED_TOP_LEVEL = {
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
}


def test_top_level_all_is_pinned() -> None:
    assert set(pollinate.__all__) == EXPECTED_TOP_LEVEL


@pytest.mark.parametrize(
    "module",
    [
        "pollinate",
        "pollinate.records",
        "pollinate.client",
        "pollinate.server",
        "pollinate.strategy",
        "pollinate.sampling",
        "pollinate.data",
        "pollinate.serde",
        "pollinate.errors",
        "pollinate.testing",
        "pollinate.privacy",
        "pollinate.analytics",
        "pollinate.adapters",
    ],
)
def test_every_exported_name_exists_and_is_documented(module: str) -> None:
    namespace = importlib.import_module(module)
    assert namespace.__doc__, f"{module} has no module docstring"
    for name in namespace.__all__:
        value = getattr(namespace, name)
        if callable(value) and not name.startswith("__") and isinstance(value, type | type(len)):
            assert value.__doc__, f"{module}.{name} has no docstring"


def test_errors_form_one_tree() -> None:
    from pollinate import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.PollinateError)
    assert issubclass(errors.ConfigError, ValueError)
    assert issubclass(errors.TimeoutError, TimeoutError)
