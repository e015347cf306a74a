"""Fixtures for end-to-end tests: real processes on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pollinate.testing.processes import Processes


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if call.when == "call":
        item.stash[_FAILED] = report.failed  # type: ignore[attr-defined]
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.stop_all()
        if request.node.stash.get(_FAILED, False):
            # The processes' own logs say why a run stalled; show their ends.
            for log in sorted(tmp_path.glob("*.log")):
                lines = log.read_text(errors="replace").splitlines()
                print(f"\n----- {log.name} (last 40 of {len(lines)} lines) -----")
                print("\n".join(lines[-40:]))
