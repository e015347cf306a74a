"""kill -9 of the server mid-run, then the same command again: the run resumes from its
last completed round and ends with the model an uninterrupted run ends with."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
from pathlib import Path

from pollinate.testing.processes import Processes, free_port, wait_for

RESUMEAPP = Path(__file__).resolve().parent / "apps" / "resumeapp"


def _start_server(procs: Processes, port: int, state: Path, name: str) -> None:
    procs.start(
        "server",
        "--address",
        f"127.0.0.1:{port}",
        "--state",
        str(state),
        "--insecure",
        "--heartbeat-interval",
        "1",
        name=name,
    )
    wait_for(lambda: "listening" in procs.log(name), 20, "the server to listen")


def _start_nodes(procs: Processes, port: int, prefix: str) -> None:
    for i in range(4):
        procs.start(
            "node",
            "--server",
            f"127.0.0.1:{port}",
            "--app",
            str(RESUMEAPP),
            "--insecure",
            "--node-config",
            f"partition-id={i}",
            name=f"{prefix}{i}",
        )
    wait_for(
        lambda: all("connected" in procs.log(f"{prefix}{i}") for i in range(4)),
        30,
        "the nodes to connect",
    )


def _final(procs: Processes, port: int, run_id: str) -> str:
    logs = procs.run("logs", run_id, "--server", f"127.0.0.1:{port}", "--insecure")
    found = re.findall(r"final w ([0-9a-f]+)", logs.stdout)
    assert found, logs.stdout + logs.stderr
    return found[-1]


def test_a_killed_server_resumes_the_run_and_ends_with_the_same_model(procs: Processes) -> None:
    port = free_port()
    state = procs.workdir / "state.db"
    _start_server(procs, port, state, "server")
    _start_nodes(procs, port, "node")
    submitted = procs.run(
        "run", str(RESUMEAPP), "--server", f"127.0.0.1:{port}", "--insecure", "--detach"
    )
    run_id = submitted.stdout.split()[1]

    def round_done(n: int) -> bool:
        logs = procs.run("logs", run_id, "--server", f"127.0.0.1:{port}", "--insecure")
        return f"round {n} |" in logs.stdout

    wait_for(lambda: round_done(2), 60, "round 2 to complete")
    server = next(p for p in procs.started if "server" in p.args and str(state) in p.args)  # type: ignore[operator]
    os.kill(server.pid, signal.SIGKILL)  # the server only; its ServerApp child notices
    server.wait(timeout=10)

    _start_server(procs, port, state, "server-again")

    def finished() -> bool:
        runs = procs.run("runs", "--server", f"127.0.0.1:{port}", "--insecure").stdout
        return "completed" in runs or "failed" in runs

    wait_for(finished, 120, "the run to finish")
    logs = procs.run("logs", run_id, "--server", f"127.0.0.1:{port}", "--insecure").stdout
    runs = procs.run("runs", "--server", f"127.0.0.1:{port}", "--insecure").stdout
    assert "completed" in runs, runs + logs
    assert re.search(r"resuming from the checkpoint of round [2-5]", logs), logs
    assert any("reconnecting" in procs.log(f"node{i}") for i in range(4))

    # The same run again, uninterrupted, on the same server and nodes (same node ids,
    # so the same seed samples the same nodes): it must end with the same model.
    reference = procs.run("run", str(RESUMEAPP), "--server", f"127.0.0.1:{port}", "--insecure")
    assert reference.returncode == 0, reference.stdout + reference.stderr
    assert _final(procs, port, run_id) == _final(procs, port, reference.stdout.split()[1])
    # Resumed, not restarted: 6 rounds x 2 sampled nodes, plus at most the one round that
    # was in flight at the kill; starting over would resend the 2+ completed rounds too.
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        (sent,) = db.execute(
            "SELECT COUNT(*) FROM instructions WHERE run_id = ?", (int(run_id),)
        ).fetchone()
    assert 12 <= sent <= 14, sent
