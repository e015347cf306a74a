"""The deployment's robustness promises, against real processes on 127.0.0.1.

Malformed transfers and forged replies get a clear status and leave the server serving;
a node with another app version answers with error replies; a wrong address is a clear
error within seconds; nodes reconnect after a server restart; runs can be followed and
stopped from the CLI; node authentication refuses forged, replayed and stale requests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from pollinate.records import Message, RecordDict
from pollinate.runtime.grpc._common import NODE_ID_KEY, RUN_TOKEN_KEY
from pollinate.runtime.grpc.chunks import iter_chunks
from pollinate.runtime.grpc.security import RequestSigner, load_private_key, write_node_key
from pollinate.runtime.grpc.wire import Chunk, encode_chunk
from pollinate.serde import message_to_segments
from pollinate.serde._proto.pollinate.v1 import service_pb2 as pb
from pollinate.serde._proto.pollinate.v1 import service_pb2_grpc as rpc
from pollinate.testing.processes import Processes, free_port, wait_for

APPS = Path(__file__).resolve().parent / "apps"
SLOWAPP = APPS / "slowapp"
TOKENAPP = APPS / "tokenapp"
FINAL = "final w [2.0, 2.0, 2.0]"
Code = grpc.StatusCode


# ------------------------------------------------------------------------------ helpers


def _server(procs: Processes, port: int, *extra: str, name: str = "server") -> None:
    procs.start(
        "server",
        "--address",
        f"127.0.0.1:{port}",
        "--state",
        str(procs.workdir / "state.db"),
        "--heartbeat-interval",
        "0.5",
        *extra,
        name=name,
    )
    wait_for(lambda: "listening" in procs.log(name), 20, f"{name} to listen")


def _node(procs: Processes, port: int, name: str, *extra: str, app: Path = SLOWAPP) -> None:
    procs.start("node", "--server", f"127.0.0.1:{port}", "--app", str(app), *extra, name=name)


def _connected(procs: Processes, *names: str, times: int = 1) -> None:
    wait_for(
        lambda: all(procs.log(n).count("connected to") >= times for n in names),
        30,
        f"{', '.join(names)} to connect",
    )


def _node_ids(procs: Processes, name: str) -> list[int]:
    return [int(i) for i in re.findall(r"connected to \S+ as node (\d+)", procs.log(name))]


def _run(procs: Processes, port: int, *extra: str, app: Path = SLOWAPP, timeout: float = 60) -> str:
    result = procs.run(
        "run", str(app), "--server", f"127.0.0.1:{port}", "--insecure", *extra, timeout=timeout
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _submit(procs: Processes, port: int, *extra: str, app: Path = SLOWAPP) -> int:
    out = _run(procs, port, "--detach", *extra, app=app, timeout=30)
    match = re.search(r"run (\d+) submitted", out)
    assert match, out
    return int(match.group(1))


def _refused(call: Callable[[], object], code: grpc.StatusCode, phrase: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call()
    error = info.value
    assert error.code() == code, (error.code(), error.details())
    assert phrase in (error.details() or ""), error.details()


def _generated(chunks: Iterable[Chunk]) -> list[pb.Chunk]:
    """Chunks as protobuf's generated code holds them: what a peer in any language sends."""
    return [pb.Chunk.FromString(encode_chunk(chunk)) for chunk in chunks]


def _reply_chunks(reply: Message, chunk_bytes: int = 32) -> list[pb.Chunk]:
    return _generated(
        iter_chunks(reply.metadata.message_id, message_to_segments(reply), chunk_bytes=chunk_bytes)
    )


def _instruction(dst: int, run_id: int = 1) -> Message:
    return Message(RecordDict(), dst_node_id=dst, message_type="train", run_id=run_id)


def _malformed(frame_chunks: list[pb.Chunk]) -> Iterable[tuple[list[pb.Chunk], Code, str]]:
    """Streams that are wrong at the chunk level, with the status they must get."""
    assert len(frame_chunks) >= 3
    bad_hash = [pb.Chunk(), *frame_chunks[1:]]
    bad_hash[0].CopyFrom(frame_chunks[0])
    bad_hash[0].digest = b"\x00" * 32
    huge = pb.Chunk()
    huge.CopyFrom(frame_chunks[0])
    huge.total_size = 1 << 40  # 1 TiB, above the server's 8 GiB limit
    garbage = _generated(iter_chunks("garbage", [os.urandom(1000)], chunk_bytes=256))
    yield bad_hash, Code.INVALID_ARGUMENT, "chunk 0 fails its hash check"
    yield [frame_chunks[1], *frame_chunks], Code.INVALID_ARGUMENT, "chunk 1 arrived, 0 was"
    yield frame_chunks[:-1], Code.INVALID_ARGUMENT, "the transfer ended before its last chunk"
    yield [huge], Code.INVALID_ARGUMENT, "announces 1099511627776 bytes, more than the"
    yield garbage, Code.INVALID_ARGUMENT, "not a valid message frame"


# ------------------------------------------------------------------------------ 1. bad streams


def test_malformed_and_forged_streams_are_refused_and_the_server_keeps_serving(
    procs: Processes,
) -> None:
    port = free_port()
    _server(procs, port, "--insecure")
    for i in range(2):
        _node(procs, port, f"node{i}", "--insecure")
    _connected(procs, "node0", "node1")
    token_file = procs.workdir / "token"
    run_id = _submit(procs, port, "--config", f"token-file={token_file}", app=TOKENAPP)
    wait_for(token_file.exists, 20, "the token app to hand over its token")
    token = ((RUN_TOKEN_KEY, token_file.read_text()),)

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        fleet, grid_io = rpc.FleetStub(channel), rpc.GridIoStub(channel)
        hello = pb.RegisterRequest(app_name="rogue", app_version="0")
        rogue, other = (fleet.Register(hello, timeout=10).node_id for _ in range(2))
        as_rogue = ((NODE_ID_KEY, str(rogue)),)

        def push(
            chunks: list[pb.Chunk], metadata: tuple[tuple[str, str], ...] = as_rogue
        ) -> Callable[[], object]:
            return lambda: fleet.PushReply(iter(chunks), metadata=metadata, timeout=10)

        def send(
            chunks: list[pb.Chunk], metadata: tuple[tuple[str, str], ...] = token
        ) -> Callable[[], object]:
            return lambda: grid_io.Send(iter(chunks), metadata=metadata, timeout=10)

        # Fleet.PushReply: the chunk level, then replies that are well formed but forged.
        own_reply = _instruction(rogue).reply(RecordDict())
        for chunks, code, phrase in _malformed(_reply_chunks(own_reply)):
            _refused(push(chunks), code, phrase)
        _refused(push(_reply_chunks(own_reply)), Code.FAILED_PRECONDITION, "unknown instruction")
        as_other = _reply_chunks(_instruction(other).reply(RecordDict()))
        _refused(push(as_other), Code.PERMISSION_DENIED, f"node {rogue} may only send its own")
        not_a_reply = _reply_chunks(_instruction(rogue))
        _refused(push(not_a_reply), Code.PERMISSION_DENIED, "may only send its own replies")
        unknown = ((NODE_ID_KEY, "12345"),)
        _refused(push(_reply_chunks(own_reply), unknown), Code.NOT_FOUND, "unknown node 12345")
        _refused(push(_reply_chunks(own_reply), ()), Code.INVALID_ARGUMENT, NODE_ID_KEY)

        # GridIo.Send with the run's token: a rogue ServerApp gets the same treatment.
        listed = grid_io.ListNodes(pb.ListNodesRequest(), metadata=token, timeout=10).nodes
        assert {rogue, other} < {n.node_id for n in listed} and len(listed) == 4
        instruction = _instruction(rogue, run_id)
        frame = _reply_chunks(instruction)
        for chunks, code, phrase in _malformed(frame):
            _refused(send(chunks), code, phrase)
        _refused(send(frame, ()), Code.UNAUTHENTICATED, "unknown or missing run token")
        wrong_run = _reply_chunks(_instruction(rogue, run_id + 1))
        _refused(send(wrong_run), Code.INVALID_ARGUMENT, f"only instructions of run {run_id}")
        _refused(send(_reply_chunks(_instruction(99, run_id))), Code.NOT_FOUND, "no node 99")

        # The calls a ServerApp on the server's machine makes with files: only upload
        # files inside the server's staging directory, and a checkpoint with its hash.
        def save_local(path: Path, sha256: str) -> Callable[[], object]:
            request = pb.CheckpointFile(path=str(path), server_round=1, sha256=sha256)
            return lambda: grid_io.SaveCheckpointLocal(request, metadata=token, timeout=10)

        outside = procs.workdir / "elsewhere.upload"
        outside.write_bytes(b"\x00" * 64)
        _refused(save_local(outside, "a" * 64), Code.INVALID_ARGUMENT, "is not an upload file")
        staged = procs.workdir / "state.db.blobs" / "tmp" / "rogue.upload"
        staged.write_bytes(b"\x00" * 64)
        _refused(save_local(staged, "not-hex"), Code.INVALID_ARGUMENT, "is not a SHA-256")
        _refused(save_local(staged, ""), Code.INVALID_ARGUMENT, "needs its sha256")
        listing = pb.BroadcastFile(path=str(outside), instructions_json="[]")
        _refused(
            lambda: grid_io.SendBroadcastLocal(listing, metadata=token, timeout=10),
            Code.INVALID_ARGUMENT,
            "is not an upload file",
        )

    # A chunk above gRPC's message limit never reaches the handler.
    big = _generated(iter_chunks("big", [b"\x00" * (6 * 1024 * 1024)], chunk_bytes=6 * 1024 * 1024))
    options = [("grpc.max_send_message_length", 16 * 1024 * 1024)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        push_big = rpc.FleetStub(channel).PushReply
        _refused(
            lambda: push_big(iter(big), metadata=as_rogue, timeout=10),
            Code.RESOURCE_EXHAUSTED,
            "larger than max",
        )

    (procs.workdir / "token.done").touch()
    out = _run(procs, port)
    assert FINAL in out
    assert all(p.poll() is None for p in procs.started[:3]), "server or node died"
    server_log = procs.log("server")
    assert "fails its hash check" in server_log and "Traceback" not in server_log
    listing = procs.run("runs", "--server", f"127.0.0.1:{port}", "--insecure").stdout
    assert re.search(rf"\b{run_id}\s+completed\s+tokenapp", listing), listing


# ------------------------------------------------------------------------------ 2. versions


def test_a_node_with_another_app_version_answers_with_error_replies(
    procs: Processes, tmp_path: Path
) -> None:
    other = tmp_path / "slowapp-2"
    shutil.copytree(SLOWAPP, other, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = other / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('version = "1.0.0"', 'version = "2.0.0"'))
    assert 'version = "2.0.0"' in pyproject.read_text()
    port = free_port()
    _server(procs, port, "--insecure")
    _node(procs, port, "node0", "--insecure")
    _node(procs, port, "node1", "--insecure")
    _node(procs, port, "v2", "--insecure", app=other)
    _connected(procs, "node0", "node1", "v2")

    out = _run(procs, port)

    assert "round 1 | train 2/3 replied (1 failed)" in out, out
    assert "round 2 | train 2/3 replied (1 failed)" in out, out
    run_id = re.search(r"run (\d+) submitted", out)
    assert run_id, out
    reason = f"this node runs slowapp 2.0.0; run {run_id.group(1)} needs slowapp 1.0.0"
    assert reason in out, out
    assert FINAL in out
    assert "refusing an instruction" in procs.log("v2")
    assert "Traceback" not in procs.log("v2")
    assert procs.started[3].poll() is None  # the mismatched node keeps serving


# ------------------------------------------------------------------------------ 3. wrong address


@pytest.fixture
def foreign_server() -> Iterator[str]:
    """The address of a gRPC server that has none of Pollinate's services."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_an_unreachable_server_is_one_clear_error_within_seconds(
    procs: Processes, foreign_server: str
) -> None:
    port = free_port()  # nothing listens there
    address = f"127.0.0.1:{port}"
    commands = {
        "node": ("node", "--server", address, "--app", str(SLOWAPP), "--insecure"),
        "run": ("run", str(SLOWAPP), "--server", address, "--insecure"),
        "runs": ("runs", "--server", address, "--insecure"),
        "logs": ("logs", "1", "--server", address, "--insecure", "--follow"),
        "stop": ("stop", "1", "--server", address, "--insecure"),
    }
    started = {name: procs.start(*args, name=name) for name, args in commands.items()}
    for name, process in started.items():
        assert process.wait(timeout=30) == 2, procs.log(name)
        output = procs.log(name)
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, output
        assert f"cannot reach a Pollinate server at {address}" in errors[0], output
        assert "Traceback" not in output and "reconnecting" not in output, output
    assert "check --server" in procs.log("node")
    # A gRPC server that is not Pollinate's: the CLI says what went wrong, once.
    listing = procs.run("runs", "--server", foreign_server, "--insecure", timeout=30)
    assert listing.returncode == 2, listing.stderr
    assert listing.stderr.startswith("error: listing runs: UNIMPLEMENTED"), listing.stderr


def test_a_node_pointed_at_a_foreign_grpc_server_fails_fast(
    procs: Processes, foreign_server: str
) -> None:
    node = procs.start(
        "node", "--server", foreign_server, "--app", str(SLOWAPP), "--insecure", name="node"
    )
    try:
        code = node.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the node still retries after 15 s:\n" + procs.log("node"))
    assert code == 2, procs.log("node")
    assert "error:" in procs.log("node") and "Traceback" not in procs.log("node")


# ------------------------------------------------------------------------------ 4. reconnect


def test_nodes_reconnect_after_a_server_restart_and_serve_the_next_run(procs: Processes) -> None:
    port = free_port()
    _server(procs, port, "--insecure")
    for i in range(2):
        _node(procs, port, f"node{i}", "--insecure")
    _connected(procs, "node0", "node1")
    before = {n: _node_ids(procs, n) for n in ("node0", "node1")}

    server = procs.started[0]
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    wait_for(
        lambda: all("reconnecting to" in procs.log(n) for n in ("node0", "node1")),
        20,
        "the nodes to notice the server is gone",
    )
    _server(procs, port, "--insecure", name="server2")
    _connected(procs, "node0", "node1", times=2)

    for name in ("node0", "node1"):
        log = procs.log(name)
        assert re.search(rf"reconnecting to 127\.0\.0\.1:{port} in [\d.]+ s \(attempt 1\)", log)
        ids = _node_ids(procs, name)
        assert len(ids) >= 2 and set(ids) == set(before[name]), log  # same id after restart
    out = _run(procs, port)
    assert "round 1 | train 2/2 replied" in out and "round 2 | train 2/2 replied" in out, out
    assert FINAL in out  # both nodes added their 1.0 in both rounds


# ------------------------------------------------------------------------------ 5. logs, stop


def test_logs_follow_a_run_to_its_end_and_stop_ends_a_long_run(procs: Processes) -> None:
    port = free_port()
    address = ("--server", f"127.0.0.1:{port}", "--insecure")
    _server(procs, port, "--insecure")
    for i in range(2):
        _node(procs, port, f"node{i}", "--insecure")
    _connected(procs, "node0", "node1")

    quick = _submit(procs, port)
    followed = procs.run("logs", str(quick), *address, "--follow", timeout=60)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    lines = followed.stdout.splitlines()
    assert lines[0] == f"run {quick}: slowapp ServerApp started", lines
    assert FINAL in lines and lines[-1] == f"run {quick}: completed", lines
    again = procs.run("logs", str(quick), *address, timeout=30)
    assert again.stdout == followed.stdout  # without --follow: what is there, at once
    missing = procs.run("logs", "987654321", *address, timeout=30)
    assert missing.returncode == 2 and "no run 987654321" in missing.stderr, missing.stderr

    _node(procs, port, "slow", "--insecure", "--node-config", "slow=true")
    _connected(procs, "slow")
    slow = _submit(procs, port)  # round 1 waits up to 60 s for the slow node
    follow = procs.start("logs", str(slow), *address, "--follow", name="follow")
    wait_for(lambda: "ServerApp started" in procs.log("follow"), 20, "the log to stream")
    assert follow.poll() is None  # still following: the run goes on
    stopped = procs.run("stop", str(slow), *address, timeout=30)
    assert stopped.returncode == 0 and f"run {slow} stopping" in stopped.stdout, stopped
    assert follow.wait(timeout=20) == 0, procs.log("follow")
    assert FINAL not in procs.log("follow")
    listing = procs.run("runs", *address, timeout=30).stdout
    assert re.search(rf"\b{slow}\s+stopped\b", listing), listing
    assert re.search(rf"\b{quick}\s+completed\b", listing), listing
    second = procs.run("stop", str(slow), *address, timeout=30)
    assert f"run {slow} is not running" in second.stdout, second


# ------------------------------------------------------------------------------ 6. auth


def test_forged_replayed_and_stale_signed_requests_are_refused(procs: Processes) -> None:
    keys = procs.workdir / "keys"
    keys.mkdir()
    for name in ("a", "b", "c", "d", "stranger"):
        write_node_key(keys / name, comment=f"node-{name}")
    authorized = procs.workdir / "authorized_keys"
    authorized.write_text("".join((keys / f"{n}.pub").read_text() for n in "abcd"))
    port = free_port()
    _server(procs, port, "--insecure", "--authorized-keys", str(authorized))

    key_a = load_private_key(keys / "a")
    a = RequestSigner(key_a)
    b = RequestSigner(load_private_key(keys / "b"))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        fleet = rpc.FleetStub(channel)

        def register(signer: RequestSigner) -> int:
            request = pb.RegisterRequest(app_name="slowapp", app_version="1.0.0")
            return int(
                fleet.Register(request, metadata=signer.sign("Register", None), timeout=10).node_id
            )

        def heartbeat(node_id: int, metadata: list[tuple[str, str]]) -> Callable[[], object]:
            request = pb.HeartbeatRequest(node_id=node_id)
            return lambda: fleet.Heartbeat(request, metadata=metadata, timeout=10)

        id_a, id_b = register(a), register(b)
        assert id_a != id_b and register(a) == id_a  # a key always gets its id back

        # A listed key, validly signing for the id of another key's node.
        foreign = f"node id {id_b} does not belong to this key"
        _refused(heartbeat(id_b, a.sign("Heartbeat", id_b)), Code.PERMISSION_DENIED, foreign)
        subscribe = pb.SubscribeRequest(node_id=id_b)
        metadata = a.sign("Subscribe", id_b)
        _refused(
            lambda: next(fleet.Subscribe(subscribe, metadata=metadata, timeout=10)),
            Code.PERMISSION_DENIED,
            foreign,
        )
        reply = _reply_chunks(_instruction(id_b).reply(RecordDict()))
        metadata = [(NODE_ID_KEY, str(id_b)), *a.sign("PushReply", id_b)]
        _refused(
            lambda: fleet.PushReply(iter(reply), metadata=metadata, timeout=10),
            Code.PERMISSION_DENIED,
            foreign,
        )
        # Signed for one id, sent for another; signed for another method.
        signed_for_a = a.sign("Heartbeat", id_a)
        _refused(heartbeat(id_b, signed_for_a), Code.UNAUTHENTICATED, "bad signature")
        _refused(heartbeat(id_a, a.sign("Subscribe", id_a)), Code.UNAUTHENTICATED, "bad signature")

        # The same metadata twice: the second is a replay.
        once = a.sign("Heartbeat", id_a)
        assert fleet.Heartbeat(pb.HeartbeatRequest(node_id=id_a), metadata=once).known
        _refused(heartbeat(id_a, once), Code.UNAUTHENTICATED, "replayed request")

        # A clock ten minutes behind; an unknown key; no signature at all.
        late = RequestSigner(key_a, clock=lambda: time.time() - 600)
        _refused(heartbeat(id_a, late.sign("Heartbeat", id_a)), Code.UNAUTHENTICATED, "stale")
        stranger = RequestSigner(load_private_key(keys / "stranger"))
        _refused(lambda: register(stranger), Code.UNAUTHENTICATED, "unknown key")
        _refused(heartbeat(id_a, []), Code.UNAUTHENTICATED, "missing metadata")
        assert fleet.Heartbeat(
            pb.HeartbeatRequest(node_id=id_a), metadata=a.sign("Heartbeat", id_a)
        ).known  # the legitimate node is still served

    server_log = procs.log("server")
    for phrase in (foreign, "replayed request", "stale request", "unknown key", "bad signature"):
        assert "refused" in server_log and phrase in server_log, phrase
    for name in "cd":
        _node(procs, port, f"node-{name}", "--insecure", "--key", str(keys / name))
    _connected(procs, "node-c", "node-d")
    out = _run(procs, port)
    assert FINAL in out and procs.started[0].poll() is None
