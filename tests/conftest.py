"""Session-wide test ordering.

JAX starts threads when it is imported, and forking a process that runs them can
deadlock (JAX warns on every fork). The process runtime forks, so tests that import
JAX (marked ``imports_jax``, and the doctests of ``pollinate/adapters/jax.py``) run
after every other test of the session.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "imports_jax: the test imports JAX; it runs after every test that forks"
    )


def _imports_jax(item: pytest.Item) -> bool:
    return item.get_closest_marker("imports_jax") is not None or item.path.name == "jax.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_imports_jax)  # stable: every other test keeps its order
