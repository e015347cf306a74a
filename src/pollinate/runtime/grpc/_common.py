"""What the server, the node agent and the ServerApp process share: metadata names,
channel options, and the translation of gRPC errors into Pollinate's."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Sequence
from typing import Any, Final

import grpc

from pollinate.errors import NodeUnavailableError, ProtocolError, TransportError
from pollinate.runtime.grpc.chunks import GRPC_MESSAGE_LIMIT

__all__ = [
    "CHANNEL_OPTIONS",
    "NODE_ID_KEY",
    "RUN_TOKEN_KEY",
    "metadata_value",
    "return_large_buffers_to_the_os",
    "translate_rpc_error",
]

NODE_ID_KEY: Final = "x-pollinate-node-id"
RUN_TOKEN_KEY: Final = "x-pollinate-run-token"

#: Both ends accept one chunk plus its fields; keepalives notice dead peers.
CHANNEL_OPTIONS: Final[list[tuple[str, Any]]] = [
    ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT),
    ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # A 4 MiB chunk in one HTTP/2 frame rather than 256 of 16 KiB: a quarter less CPU to
    # receive one (measured with grpcio alone, 400 MB over loopback).
    ("grpc.http2.max_frame_size", 4 * 1024 * 1024),
]


_M_MMAP_THRESHOLD: Final = -3  # glibc's mallopt parameters (malloc.h)
_M_ARENA_MAX: Final = -8


def return_large_buffers_to_the_os(threshold: int = 8 * 1024 * 1024, arenas: int = 2) -> bool:
    """Make glibc give chunk-sized buffers back to the system as soon as they are freed.

    Servers and nodes allocate and free one 4 MiB chunk after another on many gRPC
    threads. glibc raises its mmap threshold after the first such free, so later chunks
    come from per-thread heaps that keep their memory: a 10-node round of 40 MB models
    held hundreds of MB that no frame needed. A fixed threshold (buffers of ``threshold``
    bytes or more are mapped and unmapped) and few ``arenas`` keep resident memory near
    what is in use. Returns whether it applied (glibc only; elsewhere a no-op).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(mallopt(_M_ARENA_MAX, arenas))


def metadata_value(metadata: Sequence[tuple[str, str | bytes]] | None, key: str) -> str | None:
    """The value of ``key`` in gRPC metadata, as text."""
    for name, value in metadata or ():
        if name == key:
            return value.decode() if isinstance(value, bytes) else value
    return None


def translate_rpc_error(error: grpc.RpcError, what: str) -> TransportError | ProtocolError:
    """A Pollinate error for a failed call: the one place grpc errors are translated."""
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return NodeUnavailableError(f"{what}: the server is unreachable ({details})")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return ProtocolError(f"{what}: refused by the server: {details}")
    if code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    ):
        return ProtocolError(f"{what}: {details}")
    return TransportError(f"{what}: {code.name if code else 'error'}: {details}")
