"""Real Pollinate processes on 127.0.0.1 for end-to-end tests: start, watch, clean up.

Every wait is bounded; every process started is killed (with its process group) when
the test ends, so a failing test never leaves a server or node behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["Processes", "free_port", "wait_for"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Processes:
    """Starts pollinate commands and kills whatever is left at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[subprocess.Popen[str]] = []

    def start(self, *args: str, name: str) -> subprocess.Popen[str]:
        log = open(self.workdir / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-m", "pollinate.cli.main", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=self.workdir,
            start_new_session=True,
        )
        self.started.append(process)
        return process

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pollinate.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
        )

    def start_server(
        self, port: int, *extra: str, name: str = "server", heartbeat_interval: float = 0.5
    ) -> subprocess.Popen[str]:
        """``pollinate server`` on 127.0.0.1:``port`` with its state here; waits until it
        listens."""
        process = self.start(
            "server",
            "--address",
            f"127.0.0.1:{port}",
            "--state",
            str(self.workdir / "state.db"),
            "--heartbeat-interval",
            str(heartbeat_interval),
            *extra,
            name=name,
        )
        wait_for(lambda: "listening" in self.log(name), 20, f"{name} to listen")
        return process

    def start_nodes(
        self, port: int, app: str | Path, count: int, *extra: str, prefix: str = "node"
    ) -> list[subprocess.Popen[str]]:
        """``count`` ``pollinate node`` processes with ``partition-id`` 0 to count-1;
        waits until all are connected."""
        processes = [
            self.start(
                "node",
                "--server",
                f"127.0.0.1:{port}",
                "--app",
                str(app),
                *extra,
                "--node-config",
                f"partition-id={i}",
                name=f"{prefix}{i}",
            )
            for i in range(count)
        ]
        wait_for(
            lambda: all("connected" in self.log(f"{prefix}{i}") for i in range(count)),
            30,
            f"the {count} nodes to connect",
        )
        return processes

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.started:
            process.wait(timeout=10)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` every 0.1 s; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
