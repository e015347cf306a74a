"""Deployment end to end: a real server and real nodes on 127.0.0.1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

from pollinate.testing.processes import Processes, free_port, wait_for

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"
SLOWAPP = Path(__file__).resolve().parent / "apps" / "slowapp"


def _server(procs: Processes, port: int, *extra: str, interval: str = "0.5") -> None:
    procs.start(
        "server",
        "--address",
        f"127.0.0.1:{port}",
        "--state",
        str(procs.workdir / "state.db"),
        "--heartbeat-interval",
        interval,
        *extra,
        name="server",
    )
    wait_for(lambda: "listening" in procs.log("server"), 20, "the server to listen")


def _nodes(procs: Processes, port: int, app: str, count: int, *extra: str) -> None:
    for i in range(count):
        procs.start(
            "node",
            "--server",
            f"127.0.0.1:{port}",
            "--app",
            app,
            *extra,
            "--node-config",
            f"partition-id={i}",
            "--node-config",
            f"num-partitions={count}",
            name=f"node{i}",
        )
    wait_for(
        lambda: all("connected" in procs.log(f"node{i}") for i in range(count)),
        30,
        "the nodes to connect",
    )


@pytest.mark.parametrize("serverapp", ["local", "over-network"])
def test_quickstart_over_one_server_and_five_nodes(procs: Processes, serverapp: str) -> None:
    # "local": the ServerApp writes contents into the server's staging directory and maps
    # reply files; "over-network": it uploads and downloads them as one on another
    # machine would.
    port = free_port()
    extra = ("--serverapp-over-network",) if serverapp == "over-network" else ()
    _server(procs, port, "--insecure", *extra)
    _nodes(procs, port, str(QUICKSTART), 5, "--insecure")

    result = procs.run(
        "run",
        str(QUICKSTART),
        "--server",
        f"127.0.0.1:{port}",
        "--insecure",
        "--rounds",
        "3",
        "--config",
        "fraction-train=1.0",
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "round 3 | train 5/5 replied" in result.stdout
    assert "completed" in result.stdout.splitlines()[-1]
    listing = procs.run("runs", "--server", f"127.0.0.1:{port}", "--insecure")
    assert "completed" in listing.stdout and "quickstart" in listing.stdout


def test_a_node_killed_mid_round_fails_its_message_and_the_round_goes_on(
    procs: Processes,
) -> None:
    port = free_port()
    _server(procs, port, "--insecure")
    _nodes(procs, port, str(SLOWAPP), 2, "--insecure")
    procs.start(
        "node",
        "--server",
        f"127.0.0.1:{port}",
        "--app",
        str(SLOWAPP),
        "--insecure",
        "--node-config",
        "slow=true",
        name="slow",
    )
    wait_for(lambda: "connected" in procs.log("slow"), 30, "the slow node")
    run = procs.start(
        "run", str(SLOWAPP), "--server", f"127.0.0.1:{port}", "--insecure", name="run"
    )
    time.sleep(3)  # the slow node is now inside its 60 s training call
    slow = next(p for p in procs.started if "slow=true" in p.args)  # type: ignore[operator]
    os.killpg(slow.pid, signal.SIGKILL)

    assert run.wait(timeout=60) == 0, procs.log("run")
    log = procs.log("run")
    assert "round 1 | train 2/3 replied (1 failed)" in log
    assert "final w [2.0, 2.0, 2.0]" in log


def test_tls_with_generated_certificates(procs: Processes) -> None:
    port = free_port()
    certs = procs.workdir / "certs"
    assert procs.run("certificates", str(certs)).returncode == 0
    _server(procs, port, "--certificates", str(certs))
    _nodes(procs, port, str(SLOWAPP), 3, "--root-certificate", str(certs / "ca.pem"))
    result = procs.run(
        "run",
        str(SLOWAPP),
        "--server",
        f"127.0.0.1:{port}",
        "--root-certificate",
        str(certs / "ca.pem"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "final w [2.0, 2.0, 2.0]" in result.stdout
    plaintext = procs.run("runs", "--server", f"127.0.0.1:{port}", "--insecure", timeout=60)
    assert plaintext.returncode != 0


def test_an_unauthorized_node_is_refused_and_the_others_are_served(procs: Processes) -> None:
    port = free_port()
    keys = procs.workdir / "keys"
    keys.mkdir()
    for name in ("a", "b", "c", "stranger"):
        assert procs.run("keys", str(keys / name)).returncode == 0
    authorized = procs.workdir / "authorized_keys"
    authorized.write_text("".join((keys / f"{n}.pub").read_text() for n in ("a", "b", "c")))
    _server(procs, port, "--insecure", "--authorized-keys", str(authorized))

    stranger = procs.run(
        "node",
        "--server",
        f"127.0.0.1:{port}",
        "--app",
        str(SLOWAPP),
        "--insecure",
        "--key",
        str(keys / "stranger"),
        timeout=60,
    )
    assert stranger.returncode == 2
    assert "unknown" in stranger.stderr.lower() and "Traceback" not in stranger.stderr
    for name in ("a", "b", "c"):
        procs.start(
            "node",
            "--server",
            f"127.0.0.1:{port}",
            "--app",
            str(SLOWAPP),
            "--insecure",
            "--key",
            str(keys / name),
            name=f"node-{name}",
        )
    wait_for(lambda: all("connected" in procs.log(f"node-{n}") for n in "abc"), 30, "nodes")
    result = procs.run("run", str(SLOWAPP), "--server", f"127.0.0.1:{port}", "--insecure")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "refused" in procs.log("server")


def test_control_calls_need_an_operator_key_when_the_server_lists_them(procs: Processes) -> None:
    port = free_port()
    keys = procs.workdir / "keys"
    keys.mkdir()
    for name in ("operator", "stranger"):
        assert procs.run("keys", str(keys / name)).returncode == 0
    operators = procs.workdir / "operator_keys"
    operators.write_text((keys / "operator.pub").read_text())
    _server(procs, port, "--insecure", "--operator-keys", str(operators))
    address = ("--server", f"127.0.0.1:{port}", "--insecure")

    unsigned = procs.run("runs", *address, timeout=60)
    stranger = procs.run("runs", *address, "--key", str(keys / "stranger"), timeout=60)
    operator = procs.run("runs", *address, "--key", str(keys / "operator"), timeout=60)
    # A streaming call is signed too: it gets past authentication to "no such run".
    logs = procs.run("logs", "4242", *address, "--key", str(keys / "operator"), timeout=60)

    assert unsigned.returncode != 0 and "--key" in unsigned.stderr, unsigned.stderr
    assert stranger.returncode != 0 and "unknown key" in stranger.stderr, stranger.stderr
    assert "Traceback" not in unsigned.stderr + stranger.stderr
    assert operator.returncode == 0 and "status" in operator.stdout, operator.stderr
    assert logs.returncode != 0 and "no run 4242" in logs.stderr, logs.stderr
    assert "control call ListRuns from" in procs.log("server")


def test_a_run_uses_the_app_as_submitted_not_the_submitters_directory(
    procs: Processes,
) -> None:
    # Arrange: the app submitted from a copy that is deleted as soon as it is submitted
    port = free_port()
    copy = procs.workdir / "submitted-app"
    shutil.copytree(SLOWAPP, copy, ignore=shutil.ignore_patterns("__pycache__"))
    _server(procs, port, "--insecure")
    _nodes(procs, port, str(SLOWAPP), 3, "--insecure")
    address = ("--server", f"127.0.0.1:{port}", "--insecure")

    # Act
    submitted = procs.run("run", str(copy), *address, "--detach", timeout=60)
    shutil.rmtree(copy)
    run_id = submitted.stdout.split()[1]
    logs = procs.run("logs", run_id, *address, "--follow", timeout=120)

    # Assert: the server ran its own unpacked copy (the submitted one was gone), and
    # removed it once the run ended
    assert submitted.returncode == 0, submitted.stderr
    assert logs.returncode == 0 and "final w [2.0, 2.0, 2.0]" in logs.stdout, logs.stderr
    apps = procs.workdir / "state.db.apps"
    wait_for(lambda: not any(apps.iterdir()), 20, "the finished run's app to be removed")


def test_garbage_bytes_are_refused_while_a_run_goes_on(procs: Processes) -> None:
    port = free_port()
    _server(procs, port, "--insecure")
    _nodes(procs, port, str(SLOWAPP), 3, "--insecure")
    run = procs.start(
        "run", str(SLOWAPP), "--server", f"127.0.0.1:{port}", "--insecure", name="run"
    )
    for payload in (b"\x00" * 64, b"GET / HTTP/1.1\r\n\r\n", os.urandom(4096)):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(payload)
    assert run.wait(timeout=60) == 0, procs.log("run")
    assert "final w [2.0, 2.0, 2.0]" in procs.log("run")


BIGAPP = Path(__file__).resolve().parent / "apps" / "bigapp"


def test_a_300_mb_model_makes_the_round_trip(procs: Processes) -> None:
    port = free_port()
    _server(procs, port, "--insecure", interval="5")
    _nodes(procs, port, str(BIGAPP), 1, "--insecure")
    result = procs.run(
        "run", str(BIGAPP), "--server", f"127.0.0.1:{port}", "--insecure", timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"bytes {78643200 * 4} equal True" in result.stdout


def test_a_single_instruction_over_the_network_path_arrives_intact(procs: Processes) -> None:
    # One node: single instructions (not broadcasts), uploaded by the ServerApp through
    # the socket as from another machine; 4 MB spans several chunks.
    port = free_port()
    _server(procs, port, "--insecure", "--serverapp-over-network", interval="5")
    _nodes(procs, port, str(BIGAPP), 1, "--insecure")
    result = procs.run(
        "run",
        str(BIGAPP),
        "--server",
        f"127.0.0.1:{port}",
        "--insecure",
        "--config",
        "num-parameters=1000003",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"bytes {1000003 * 4} equal True" in result.stdout
