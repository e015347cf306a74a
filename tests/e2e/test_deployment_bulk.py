"""The bulk port end to end: frames beside gRPC, and gRPC when the port cannot be used."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from pollinate.cli.project import load_project
from pollinate.client import ClientApp
from pollinate.runtime.grpc.bulk import BulkClient, BulkUnavailableError
from pollinate.runtime.grpc.node import NodeAgent, NodeSettings
from pollinate.runtime.loading import load_object
from pollinate.testing.processes import Processes, free_port

BIGAPP = Path(__file__).resolve().parent / "apps" / "bigapp"
PARAMETERS = 1_500_007  # 6 MB: two pieces and a bit, over the bulk threshold


def _run(procs: Processes, port: int, *extra: str) -> str:
    result = procs.run(
        "run",
        str(BIGAPP),
        "--server",
        f"127.0.0.1:{port}",
        *extra,
        "--config",
        f"num-parameters={PARAMETERS}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("bulk_port", ["auto", "off"])
def test_a_model_crosses_the_bulk_port_or_grpc_intact(procs: Processes, bulk_port: str) -> None:
    port = free_port()
    procs.start_server(port, "--insecure", "--bulk-port", bulk_port, heartbeat_interval=5)
    procs.start_nodes(port, BIGAPP, 1, "--insecure")
    assert f"bytes {PARAMETERS * 4} equal True" in _run(procs, port, "--insecure")
    uses_bulk = f"frames on its bulk port {port + 1}" in procs.log("node0")
    assert uses_bulk == (bulk_port == "auto"), procs.log("node0")


def test_the_bulk_port_over_tls(procs: Processes) -> None:
    port = free_port()
    certs = procs.workdir / "certs"
    assert procs.run("certificates", str(certs)).returncode == 0
    procs.start_server(port, "--certificates", str(certs), heartbeat_interval=5)
    root = ("--root-certificate", str(certs / "ca.pem"))
    procs.start_nodes(port, BIGAPP, 1, *root)
    assert f"bytes {PARAMETERS * 4} equal True" in _run(procs, port, *root)
    assert "bulk port" in procs.log("node0")
    assert "frames go over gRPC" not in procs.log("node0")
    # The port speaks TLS only: a plaintext request gets no answer but a closed socket.
    with socket.create_connection(("127.0.0.1", port + 1), timeout=5) as sock:
        sock.sendall(b"PLNB" + bytes(42))
        try:
            answer = sock.recv(64)
        except ConnectionResetError:
            answer = b""
        assert answer == b""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("failing", ["fetch", "upload"])
def test_a_node_that_cannot_use_the_bulk_port_falls_back_to_grpc(
    procs: Processes,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    failing: str,
) -> None:
    # As behind a firewall that lets the gRPC port through but not the bulk port: the
    # node's fetch finds nothing listening (it subscribes again without the bulk port),
    # or its upload fails (the reply goes by PushReply).
    port = free_port()
    procs.start_server(port, "--insecure", heartbeat_interval=5)
    if failing == "fetch":
        closed = _closed_port()
        original = NodeAgent._bulk_client

        def unreachable(self: NodeAgent, bulk_port: int) -> BulkClient | None:
            client = original(self, bulk_port)
            return None if client is None else BulkClient("127.0.0.1", closed)

        monkeypatch.setattr(NodeAgent, "_bulk_client", unreachable)
    else:

        def refuse(self: BulkClient, *args: object, **kwargs: object) -> bool:
            raise BulkUnavailableError("the connection was reset (test)")

        monkeypatch.setattr(BulkClient, "upload", refuse)
    project = load_project(BIGAPP)
    project.add_to_path()
    stop = threading.Event()
    agent = NodeAgent(
        NodeSettings(
            server=f"127.0.0.1:{port}",
            app=load_object(project.client_app, ClientApp),
            app_name="bigapp",
            app_version="1.0.0",
        ),
        stop=stop,
    )
    thread = threading.Thread(target=agent.run, daemon=True)
    with caplog.at_level("WARNING", logger="pollinate.node"):
        thread.start()
        try:
            assert f"bytes {PARAMETERS * 4} equal True" in _run(procs, port, "--insecure")
        finally:
            stop.set()
            thread.join(timeout=10)
    expected = {
        "fetch": "frames go over gRPC for the next 600 s",
        "upload": "sending the reply over gRPC",
    }[failing]
    assert expected in caplog.text
    assert not thread.is_alive()


def test_garbage_on_the_bulk_port_is_refused_while_a_run_goes_on(procs: Processes) -> None:
    port = free_port()
    procs.start_server(port, "--insecure", heartbeat_interval=5)
    procs.start_nodes(port, BIGAPP, 1, "--insecure")
    answers = []
    for payload in (b"\x00" * 64, b"GET / HTTP/1.1\r\n\r\n", b"PLNB\x01\x01" + bytes(40)):
        with socket.create_connection(("127.0.0.1", port + 1), timeout=5) as sock:
            sock.sendall(payload)
            answers.append(sock.recv(4096))
    assert all(answer[:1] == b"\x01" for answer in answers), answers
    assert b"not a Pollinate bulk request" in answers[0]
    assert b"unknown, spent or expired ticket" in answers[2]
    assert f"bytes {PARAMETERS * 4} equal True" in _run(procs, port, "--insecure")
    assert "refused" in procs.log("server")


@pytest.mark.parametrize("taken", ["grpc", "bulk"])
def test_a_port_in_use_is_a_clear_error(procs: Processes, taken: str) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port + (taken == "bulk")))
        holder.listen()
        result = procs.run(
            "server",
            "--address",
            f"127.0.0.1:{port}",
            "--state",
            str(procs.workdir / "state.db"),
            "--insecure",
            timeout=30,
        )
    assert result.returncode != 0
    expected = {
        "grpc": f"cannot listen on 127.0.0.1:{port}; is the port in use?",
        "bulk": f"cannot open the bulk port 127.0.0.1:{port + 1}",
    }[taken]
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
