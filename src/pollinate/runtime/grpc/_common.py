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
    "SERVER_OPTIONS",
    "NODE_ID_KEY",
    "RUN_TOKEN_KEY",
    "metadata_value",
    "NODE_MALLOC",
    "SERVERAPP_MALLOC",
    "SERVER_MALLOC",
    "tune_malloc",
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
    # HTTP/2 frames of up to one chunk instead of 16 KiB: a quarter less CPU to receive
    # a chunk (benchmarks/grpc_floor.py). 10M steady rounds 1.83/1.87/1.92/1.85 s against
    # 2.12/2.07/1.90/2.04 s with 16 KiB frames (interleaved pairs), 8k rounds unchanged
    # (0.068/0.076 against 0.069/0.072 s). An earlier session measured the 8k round 40%
    # slower with it, before sends were ordered and small broadcasts kept in the cache.
    ("grpc.http2.max_frame_size", 4 * 1024 * 1024),
    # gRPC's transport tuned for bulk transfer (it gathers more per write): 10M steady
    # rounds 1.69/1.86/1.90/1.80/1.86 s against 2.20/2.01/1.77/2.10/1.93 s for the default
    # (interleaved pairs); 8k rounds within the noise (0.061/0.080 against 0.070/0.073 s).
    ("grpc.optimization_target", "throughput"),
]


_M_TRIM_THRESHOLD: Final = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8


#: The server's: without BDP probing, a stream's HTTP/2 window stays small, so ten nodes
#: uploading at once do not each get megabytes buffered in gRPC's core ahead of the
#: handler reading them (server peak at 10M: 403 -> 258 MB; no round got slower).
SERVER_OPTIONS: Final[list[tuple[str, Any]]] = [*CHANNEL_OPTIONS, ("grpc.http2.bdp_probe", 0)]


def tune_malloc(*, mmap_threshold: int, trim_threshold: int | None = None, arenas: int = 2) -> bool:
    """Set how glibc's allocator treats the chunk- and frame-sized buffers of transfers.

    A process allocates and frees one 4 MiB chunk after another on many gRPC threads,
    and a frame or model of tens of MB per message. Left alone, glibc raises its mmap
    threshold after the first large free, so later buffers come from per-thread heaps
    that keep their memory: a 10-node round of 40 MB models held hundreds of MB that no
    frame needed. Fixing ``mmap_threshold`` (buffers of that size or more are mapped and
    unmapped, smaller ones come from the heap) with few ``arenas`` keeps resident memory
    near what is in use. ``trim_threshold`` (free heap kept before giving it back) trades
    memory for speed: every fresh page costs a page fault, about 5 us in a VM, and a node
    touches ~100 MB of fresh pages per round of a 40 MB model unless it keeps them.
    Returns whether it applied (glibc only; elsewhere a no-op).
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
    applied = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    if trim_threshold is not None:
        applied = applied and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    return applied and bool(mallopt(_M_ARENA_MAX, arenas))


#: The server: chunk buffers from the heap, and up to 32 MiB of them kept between
#: transfers (a 10-node round of a 40 MB model faulted in ~150 MB of fresh pages
#: without it); anything larger is mapped and given back (the server's memory is the
#: deployment's memory target).
SERVER_MALLOC: Final = {"mmap_threshold": 8 * 1024 * 1024, "trim_threshold": 32 * 1024 * 1024}
#: A node: chunk, frame and model buffers kept for the next round (a third of its CPU
#: was page faults on fresh buffers). One arena: the ClientApp runs on a worker thread,
#: and a thread's own arena gives a freed model-sized block back to the system at once.
NODE_MALLOC: Final = {
    "mmap_threshold": 1024 * 1024 * 1024,
    "trim_threshold": 256 * 1024 * 1024,
    "arenas": 1,
}
#: A run's ServerApp: model-sized blocks (the float64 sums, the new global model, the
#: checkpoint's snapshot) are given back when freed, as the server's are, since the
#: ServerApp runs beside the server and counts toward its memory. Keeping them for the
#: next round (NODE_MALLOC) saves their page faults: at 10M, server + ServerApp peak
#: 464-474 MB against 390-398 MB, rounds 0.85-1.24 s against 0.97-1.18 s (six
#: interleaved pairs with the bulk port; medians 0.95 and 1.05 s).
SERVERAPP_MALLOC: Final = SERVER_MALLOC


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
