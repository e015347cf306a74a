"""What grpcio alone costs to move a deployment round's bytes: the floor under Pollinate.

A 10M-parameter round with 10 nodes moves 10 x 40 MB from the server to the nodes and
10 x 40 MB back. This streams the same volume (4 MiB messages, bytes in and out: no
protobuf, no hashing, no disk) between two processes over 127.0.0.1 with Pollinate's
channel options and allocator settings, and reports the CPU seconds each side spends.
The sum over a round's four roles (server sending and receiving, nodes receiving and
sending) is CPU that any gRPC-based deployment pays on this machine; divided by the
cores it is a lower bound on the round's wall time when server and nodes share them.

The same volume over plain TCP sockets (``sendall`` of each 4 MiB message, ``recv_into``
one reused buffer) is measured beside it: what a data channel for bulk bytes beside
gRPC's control messages could cost instead.

Usage: ``.venv/bin/python benchmarks/grpc_floor.py`` (about 5 s; prints a table).
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from pollinate.runtime.grpc._common import (
    CHANNEL_OPTIONS,
    NODE_MALLOC,
    SERVER_MALLOC,
    tune_malloc,
)
from pollinate.runtime.grpc.chunks import MAX_CHUNK_BYTES

VOLUME = 400_000_000  # bytes each way: 10 nodes x 40 MB
MESSAGES = VOLUME // MAX_CHUNK_BYTES + 1
PAYLOAD = os.urandom(MAX_CHUNK_BYTES)
REPEATS = 3


def _identity(data: bytes) -> bytes:
    return data


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _serve() -> tuple[grpc.Server, int]:
    def down(request: bytes, context: grpc.ServicerContext) -> object:
        for _ in range(MESSAGES):
            yield PAYLOAD

    def up(requests: object, context: grpc.ServicerContext) -> bytes:
        total = sum(len(message) for message in requests)  # type: ignore[attr-defined]
        return total.to_bytes(8, "little")

    handlers = {
        "Down": grpc.unary_stream_rpc_method_handler(
            down, request_deserializer=_identity, response_serializer=_identity
        ),
        "Up": grpc.stream_unary_rpc_method_handler(
            up, request_deserializer=_identity, response_serializer=_identity
        ),
    }
    server = grpc.server(futures.ThreadPoolExecutor(4), options=CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("floor.F", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def _client(port: int, write: int) -> None:
    """In the child: stream down then up, write the CPU seconds of each to ``write``."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS)
    down = channel.unary_stream(
        "/floor.F/Down", request_serializer=_identity, response_deserializer=_identity
    )
    up = channel.stream_unary(
        "/floor.F/Up", request_serializer=_identity, response_deserializer=_identity
    )
    lines = []
    for _ in range(REPEATS):
        start, wall = _cpu(), time.perf_counter()
        received = sum(len(message) for message in down(b""))
        middle, wall_middle = _cpu(), time.perf_counter()
        up(iter([PAYLOAD] * MESSAGES))
        end, wall_end = _cpu(), time.perf_counter()
        lines.append(
            f"{received} {middle - start} {end - middle} {wall_middle - wall} "
            f"{wall_end - wall_middle}"
        )
    os.write(write, ("\n".join(lines) + "\n").encode())


def _raw_serve() -> tuple[socket.socket, threading.Thread]:
    """A TCP server: per connection, send the volume, then receive it back."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        buffer = bytearray(MAX_CHUNK_BYTES)
        for _ in range(REPEATS):
            connection, _ = listener.accept()
            with connection:
                for _ in range(MESSAGES):
                    connection.sendall(PAYLOAD)
                _receive(connection, buffer, MESSAGES * MAX_CHUNK_BYTES)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def _receive(connection: socket.socket, buffer: bytearray, total: int) -> int:
    view, received = memoryview(buffer), 0
    while received < total:
        n = connection.recv_into(view[: min(len(view), total - received)])
        if n == 0:
            break
        received += n
    return received


def _raw_client(port: int, write: int) -> None:
    """In the child: receive the volume, send it back; CPU seconds of each to ``write``."""
    buffer = bytearray(MAX_CHUNK_BYTES)
    lines = []
    for _ in range(REPEATS):
        with socket.create_connection(("127.0.0.1", port)) as connection:
            start, wall = _cpu(), time.perf_counter()
            received = _receive(connection, buffer, MESSAGES * MAX_CHUNK_BYTES)
            middle, wall_middle = _cpu(), time.perf_counter()
            for _ in range(MESSAGES):
                connection.sendall(PAYLOAD)
            end, wall_end = _cpu(), time.perf_counter()
        lines.append(
            f"{received} {middle - start} {end - middle} {wall_middle - wall} "
            f"{wall_end - wall_middle}"
        )
    os.write(write, ("\n".join(lines) + "\n").encode())


def _measure(serve: object, client: object) -> tuple[list[list[str]], float]:
    """Fork a client against a server started here; the client's rows, server CPU/repeat."""
    read, write = os.pipe()
    start = _cpu()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        tune_malloc(**NODE_MALLOC)  # as `pollinate node` does
        client(write)  # type: ignore[operator]
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    server_cpu = (_cpu() - start) / REPEATS
    rows = [line.split() for line in os.fdopen(read).read().split("\n") if line]
    return rows, server_cpu


def _table_rows(label: str, rows: list[list[str]], server_cpu: float) -> float:
    receive = min(float(row[1]) for row in rows)
    send = min(float(row[2]) for row in rows)
    wall_down = min(float(row[3]) for row in rows)
    wall_up = min(float(row[4]) for row in rows)
    volume = f"{int(rows[0][0]) / 1e6:.0f} MB"
    print(
        f"| {label} | receiving {volume} (the nodes' downloads) | {receive:.2f} | {wall_down:.2f} |"
    )
    print(f"| {label} | sending {volume} (the nodes' uploads) | {send:.2f} | {wall_up:.2f} |")
    print(f"| {label} | serving both directions (mean per repeat) | {server_cpu:.2f} | - |")
    return receive + send + server_cpu


def main() -> None:
    tune_malloc(**SERVER_MALLOC)  # as `pollinate server` does
    server, port = _serve()
    rows, server_cpu = _measure(server, lambda write: _client(port, write))
    server.stop(None)
    listener, thread = _raw_serve()
    raw_port = listener.getsockname()[1]
    raw_rows, raw_server_cpu = _measure(listener, lambda write: _raw_client(raw_port, write))
    thread.join(timeout=30)
    listener.close()

    print(
        f"grpcio {grpc.__version__}; {MESSAGES} messages of 4 MiB each way "
        f"({MESSAGES * MAX_CHUNK_BYTES / 1e6:.0f} MB), best of {REPEATS}"
    )
    print()
    print("| transport | role | CPU s | wall s |")
    print("| --- | --- | --- | --- |")
    floor = _table_rows("gRPC", rows, server_cpu)
    raw = _table_rows("TCP sockets", raw_rows, raw_server_cpu)
    cores = os.cpu_count() or 1
    print(
        f"\nA 10M round's transport alone: {floor:.2f} CPU s over gRPC, {raw:.2f} CPU s over "
        f"plain sockets; on {cores} cores shared by server and nodes, at least "
        f"{floor / cores:.2f} s (gRPC) or {raw / cores:.2f} s (sockets) of wall time before "
        "any work."
    )


if __name__ == "__main__":
    main()
