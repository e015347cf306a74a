"""What grpcio alone costs to move a deployment round's bytes: the floor under Pollinate.

A 10M-parameter round with 10 nodes moves 10 x 40 MB from the server to the nodes and
10 x 40 MB back. This streams the same volume (4 MiB messages, bytes in and out: no
protobuf, no hashing, no disk) between two processes over 127.0.0.1 with Pollinate's
channel options, and reports the CPU seconds each side spends. The sum over a round's
four roles (server sending and receiving, nodes receiving and sending) is CPU that any
gRPC-based deployment pays on this machine; divided by the cores it is a lower bound on
the round's wall time when server and nodes share them.

Usage: ``.venv/bin/python benchmarks/grpc_floor.py`` (about 5 s; prints a table).
"""

from __future__ import annotations

import os
import resource
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from pollinate.runtime.grpc._common import CHANNEL_OPTIONS
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


def main() -> None:
    server, port = _serve()
    read, write = os.pipe()
    start = _cpu()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _client(port, write)
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    server_cpu = (_cpu() - start) / REPEATS
    server.stop(None)
    rows = [line.split() for line in os.fdopen(read).read().split("\n") if line]
    receive = min(float(row[1]) for row in rows)
    send = min(float(row[2]) for row in rows)
    wall_down = min(float(row[3]) for row in rows)
    wall_up = min(float(row[4]) for row in rows)
    volume = int(rows[0][0]) / 1e6
    print(
        f"grpcio {grpc.__version__}, {volume:.0f} MB each way in 4 MiB messages, best of {REPEATS}"
    )
    print("| role | CPU s | wall s |")
    print("| --- | --- | --- |")
    print(f"| receiving {volume:.0f} MB (the nodes' downloads) | {receive:.2f} | {wall_down:.2f} |")
    print(f"| sending {volume:.0f} MB (the nodes' uploads) | {send:.2f} | {wall_up:.2f} |")
    print(f"| serving both directions (mean per repeat) | {server_cpu:.2f} | - |")
    floor = receive + send + server_cpu
    cores = os.cpu_count() or 1
    print(
        f"\nA 10M round's transport alone: {floor:.2f} CPU s; on {cores} cores shared by "
        f"server and nodes, at least {floor / cores:.2f} s of wall time before any work."
    )


if __name__ == "__main__":
    main()
