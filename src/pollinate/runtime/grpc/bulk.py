"""The bulk channel: model-sized frames over a plain socket beside gRPC.

gRPC carries every control message (registration, heartbeats, the instruction stream,
acknowledgements). Moving a frame through grpcio costs more than twice the CPU of a
socket: each 4 MiB chunk is copied into and out of gRPC's buffers and wrapped in Python
objects (``benchmarks/grpc_floor.py``: 0.95 against 0.39 CPU s for a 10M round's
800 MB). So the server can open a second port for frames alone, and a node that reaches
it fetches instructions and uploads replies there; one that cannot falls back to chunks
over gRPC, which always work.

Nothing on this port is trusted. A connection must first present a ticket: 32 random
bytes the server issued over the node's authenticated gRPC stream, for one transfer by
that node. Anything else (a wrong header, an unknown or spent ticket, a size over the
limit, a digest that does not match) is answered with an error status and the
connection closed; no byte of a frame is sent or stored before its ticket checks out.
TLS, when the server has certificates, uses the gRPC port's certificate. As with chunks,
each 4 MiB piece of a frame is checked against its XXH3-128 digest.

Wire format, integers big-endian::

    request    b"PLNB" | version u8 | op u8 | ticket (32 bytes) | size u64 (0 to fetch)
    fetch      server: status u8 | size u64 | the frame
    upload     client: the frame | digest (16 bytes) of each piece
               server: status u8 | accepted u8
    status     0 = ok; 1 = refused, followed by u32 length | UTF-8 reason

A fetched frame's digests come with its offer over gRPC (the server hashes a broadcast
once, whoever fetches it); its first piece is the frame's head, as long as the offer
says, then pieces of :data:`PIECE_BYTES`. An upload's pieces are all of that size.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import xxhash

from pollinate.errors import ProtocolError, TransportError
from pollinate.runtime.grpc.chunks import MAX_CHUNK_BYTES

__all__ = [
    "BULK_MIN_BYTES",
    "BulkClient",
    "BulkRefusedError",
    "BulkServer",
    "BulkService",
    "BulkUnavailableError",
    "PIECE_BYTES",
    "Ticket",
    "TicketBook",
    "piece_digests",
]

log = logging.getLogger("pollinate.bulk")

MAGIC: Final = b"PLNB"
VERSION: Final = 1
OP_FETCH: Final = 1
OP_UPLOAD: Final = 2
TICKET_BYTES: Final = 32
DIGEST_BYTES: Final = 16
#: Frames smaller than this go over gRPC even when the bulk port is open: a connection
#: of its own costs more than a few chunks.
BULK_MIN_BYTES: Final = 1024 * 1024
#: Bytes per hashed piece: the same as a gRPC chunk, so a broadcast's digests serve both.
PIECE_BYTES: Final = MAX_CHUNK_BYTES
_REQUEST: Final = struct.Struct(f">4sBB{TICKET_BYTES}sQ")
_FETCH_ANSWER: Final = struct.Struct(">BQ")  # status, size
_UPLOAD_ANSWER: Final = struct.Struct(">BB")
_REFUSAL: Final = struct.Struct(">BI")
_OK: Final = 0
_REFUSED: Final = 1
_MAX_REASON: Final = 4096
#: Seconds a socket operation may stall before the connection is given up.
IO_TIMEOUT: Final = 60.0
#: After a refusal, how long and how much the server still reads (see _drain).
_DRAIN_SECONDS: Final = 2.0
_DRAIN_BYTES: Final = 64 * 1024 * 1024
#: Seconds a connection has to complete TLS and send its request.
_REQUEST_TIMEOUT: Final = 10.0
#: Connections served at once; more are closed at once (a node falls back to gRPC).
MAX_CONNECTIONS: Final = 256
_IO_BYTES: Final = 1024 * 1024  # per send/recv call: a slice of a piece
#: Seconds to connect: a firewalled port is given up quickly (the node uses gRPC).
_CONNECT_TIMEOUT: Final = 5.0


class BulkUnavailableError(TransportError):
    """The bulk port could not be used (unreachable, closed mid-transfer, timed out):
    the transfer should go over gRPC instead."""


class BulkRefusedError(ProtocolError):
    """The other end refused a transfer, saying why (a bad ticket, a bad digest...)."""


# ------------------------------------------------------------------------------ hashing
def piece_digests(segments: Sequence[bytes | memoryview], *, first_piece: int = 0) -> list[bytes]:
    """The digests of a frame's pieces: ``first_piece`` bytes (if any), then pieces of
    :data:`PIECE_BYTES`, the frame given as consecutive ``segments``."""
    hasher = _PieceHasher(first_piece)
    for segment in segments:
        hasher.update(memoryview(segment).cast("B"))
    return hasher.finish()


class _PieceHasher:
    """Digests of consecutive pieces of a byte stream fed in any slices."""

    def __init__(self, first_piece: int = 0) -> None:
        self._left = first_piece or PIECE_BYTES
        self._hash = xxhash.xxh3_128()
        self._fed = 0
        self.digests: list[bytes] = []

    def update(self, data: memoryview) -> None:
        while data.nbytes:
            take = min(self._left, data.nbytes)
            self._hash.update(data[:take])
            self._fed += take
            self._left -= take
            data = data[take:]
            if self._left == 0:
                self.digests.append(self._hash.digest())
                self._hash.reset()
                self._fed = 0
                self._left = PIECE_BYTES

    def finish(self) -> list[bytes]:
        if self._fed:
            self.digests.append(self._hash.digest())
            self._hash.reset()
            self._fed = 0
        return self.digests


def _check_digests(got: list[bytes], expected: Sequence[bytes], what: str) -> None:
    if len(got) != len(expected):
        raise BulkRefusedError(f"{what}: {len(got)} pieces, but {len(expected)} digests")
    for index, (a, b) in enumerate(zip(got, expected, strict=True)):
        if a != b:
            raise BulkRefusedError(f"{what}: piece {index} fails its hash check")


# ----------------------------------------------------------------------------- sockets
def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from ``sock``; a closed connection before that is an error."""
    while view.nbytes:
        received = sock.recv_into(view, min(view.nbytes, _IO_BYTES))
        if received == 0:
            raise BulkUnavailableError("the connection closed in the middle of a transfer")
        view = view[received:]


def _recv_bytes(sock: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    _recv_exactly(sock, memoryview(buffer))
    return bytes(buffer)


def _send_all(sock: socket.socket, segments: Sequence[bytes | memoryview]) -> None:
    for segment in segments:
        view = memoryview(segment).cast("B")
        for start in range(0, view.nbytes, _IO_BYTES):
            sock.sendall(view[start : start + _IO_BYTES])


def _drain(sock: socket.socket) -> None:
    """Read what the peer still sends, briefly, after a refusal: closing with unread bytes
    would reset the connection and could destroy the refusal before the peer reads it."""
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(_DRAIN_SECONDS)
    scratch = bytearray(_IO_BYTES)
    left = _DRAIN_BYTES
    while left > 0 and (received := sock.recv_into(scratch)):
        left -= received


def _refusal(reason: str) -> bytes:
    text = reason.encode("utf-8")[:_MAX_REASON]
    return _REFUSAL.pack(_REFUSED, len(text)) + text


def _expect_ok(sock: socket.socket, what: str) -> None:
    """Read a status; a refusal raises BulkRefusedError with the server's reason."""
    if _recv_bytes(sock, 1)[0] == _OK:
        return
    length = struct.unpack(">I", _recv_bytes(sock, 4))[0]
    if length > _MAX_REASON:
        raise BulkUnavailableError("the bulk port answered with an oversized error")
    reason = _recv_bytes(sock, length).decode("utf-8", "replace")
    raise BulkRefusedError(f"the server refused the {what}: {reason}")


# ------------------------------------------------------------------------------ client
class BulkClient:
    """A node's side of the bulk port: fetches instruction frames, uploads replies.

    Parameters
    ----------
    host, port
        The server's bulk port (the host the node reaches gRPC on; the port it
        announced at registration).
    ssl_context
        TLS trusting the server's CA (see :func:`client_ssl_context`), or ``None`` for
        plaintext (``--insecure``).
    """

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        *,
        timeout: float = IO_TIMEOUT,
    ) -> None:
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._timeout = timeout

    def _connect(self) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=_CONNECT_TIMEOUT)
            sock.settimeout(self._timeout)
        except OSError as exc:
            raise BulkUnavailableError(
                f"cannot reach the bulk port {self.host}:{self.port}: {exc}"
            ) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl is None:
            return sock
        try:
            return self._ssl.wrap_socket(sock, server_hostname=self.host)
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise BulkUnavailableError(f"TLS with the bulk port failed: {exc}") from None

    def fetch(
        self,
        ticket: bytes,
        *,
        size: int,
        head_size: int,
        digests: Sequence[bytes],
        max_bytes: int,
    ) -> memoryview:
        """The frame a fetch ticket stands for, checked against the offer's ``size`` and
        ``digests``. Raises BulkUnavailableError (use gRPC) or BulkRefusedError."""
        if size > max_bytes:
            raise BulkRefusedError(f"an offered frame of {size} bytes exceeds {max_bytes}")
        try:
            with self._connect() as sock:
                sock.sendall(_REQUEST.pack(MAGIC, VERSION, OP_FETCH, ticket, 0))
                _expect_ok(sock, "fetch")
                announced = struct.unpack(">Q", _recv_bytes(sock, 8))[0]
                if announced != size:
                    raise BulkRefusedError(
                        f"the server sends {announced} bytes for an offer of {size}"
                    )
                try:
                    buffer = np.empty(size, dtype=np.uint8)
                except MemoryError:
                    raise BulkRefusedError(f"cannot allocate {size} bytes for a frame") from None
                frame = memoryview(buffer.data).cast("B")
                _recv_exactly(sock, frame)
        except OSError as exc:  # timeouts, resets
            raise BulkUnavailableError(f"fetching over the bulk port failed: {exc}") from None
        _check_digests(piece_digests([frame], first_piece=head_size), digests, "fetched frame")
        return frame

    def upload(self, ticket: bytes, segments: Sequence[bytes | memoryview]) -> bool:
        """Send a reply frame with an upload ticket; ``True`` if the server stored it,
        ``False`` if it already had it. Returns only once the server has it durably."""
        views = [memoryview(s).cast("B") for s in segments]
        size = sum(v.nbytes for v in views)
        try:
            with self._connect() as sock:
                try:
                    sock.sendall(_REQUEST.pack(MAGIC, VERSION, OP_UPLOAD, ticket, size))
                    hasher = _PieceHasher()
                    for view in views:
                        for start in range(0, view.nbytes, _IO_BYTES):
                            piece = view[start : start + _IO_BYTES]
                            sock.sendall(piece)
                            hasher.update(piece)
                    sock.sendall(b"".join(hasher.finish()))
                except OSError:
                    # The server may have refused before reading it all (a spent ticket,
                    # an oversized upload) and stopped reading: say why if it said so.
                    _expect_ok(sock, "upload")
                    raise
                _expect_ok(sock, "upload")
                return bool(_recv_bytes(sock, 1)[0])
        except OSError as exc:
            raise BulkUnavailableError(f"uploading over the bulk port failed: {exc}") from None


def client_ssl_context(root_certificate: bytes) -> ssl.SSLContext:
    """TLS 1.2+ trusting only ``root_certificate`` (PEM), checking the host name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=root_certificate.decode("ascii"))
    return context


def server_ssl_context(certificate_chain: str, private_key: str) -> ssl.SSLContext:
    """TLS 1.2+ with the gRPC port's certificate (files in PEM)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate_chain, private_key)
    return context


# ------------------------------------------------------------------------------ server
@dataclass(frozen=True)
class Ticket:
    """What a ticket lets its holder do: fetch one instruction, or upload its reply."""

    op: int
    node_id: int
    message_id: str
    expires: float


class TicketBook:
    """Tickets issued and not yet spent. Fetch tickets are spent when presented; an
    upload ticket stays valid until :meth:`spend` (a failed upload may be retried)."""

    def __init__(self, *, max_tickets: int = 100_000) -> None:
        if max_tickets < 1:
            raise ValueError(f"max_tickets must be at least 1, got {max_tickets}")
        self._tickets: dict[bytes, Ticket] = {}
        self._lock = threading.Lock()
        self._max = max_tickets

    def issue(self, op: int, node_id: int, message_id: str, *, ttl: float) -> bytes:
        token = secrets.token_bytes(TICKET_BYTES)
        now = time.monotonic()
        with self._lock:
            if len(self._tickets) >= self._max:
                self._expire(now)
                while len(self._tickets) >= self._max:  # oldest first
                    self._tickets.pop(next(iter(self._tickets)))
            self._tickets[token] = Ticket(op, node_id, message_id, now + ttl)
        return token

    def take(self, token: bytes, op: int) -> Ticket | None:
        """The ticket ``token`` stands for if it is valid for ``op``, else ``None``."""
        with self._lock:
            ticket = self._tickets.get(token)
            if ticket is None or ticket.op != op or ticket.expires < time.monotonic():
                return None
            if op == OP_FETCH:
                del self._tickets[token]
            return ticket

    def spend(self, token: bytes) -> None:
        with self._lock:
            self._tickets.pop(token, None)

    def forget_node(self, node_id: int) -> None:
        """Void a node's tickets (it was declared dead, or registered again)."""
        with self._lock:
            for token in [t for t, ticket in self._tickets.items() if ticket.node_id == node_id]:
                del self._tickets[token]

    def _expire(self, now: float) -> None:
        for token in [t for t, ticket in self._tickets.items() if ticket.expires < now]:
            del self._tickets[token]

    def __len__(self) -> int:
        return len(self._tickets)


class Upload:
    """An upload being received: hand :meth:`read_into` a sink for the frame's bytes;
    it returns once every byte arrived and every digest checked out."""

    def __init__(self, sock: socket.socket, size: int) -> None:
        self._sock = sock
        self.size = size
        self._buffer = bytearray(min(size, _IO_BYTES) or 1)

    def read_into(self, sink: Callable[[memoryview], None]) -> None:
        hasher = _PieceHasher()
        view = memoryview(self._buffer)
        left = self.size
        while left:
            part = view[: min(left, len(self._buffer))]
            _recv_exactly(self._sock, part)
            hasher.update(part)
            sink(part)
            left -= part.nbytes
        digests = hasher.finish()
        received = _recv_bytes(self._sock, DIGEST_BYTES * len(digests))
        expected = [received[i : i + DIGEST_BYTES] for i in range(0, len(received), DIGEST_BYTES)]
        _check_digests(digests, expected, "uploaded frame")


class BulkService(Protocol):
    """What the server does with a valid ticket (see pollinate.runtime.grpc.server)."""

    def serve_fetch(
        self, ticket: Ticket, send: Callable[[Sequence[bytes | memoryview]], None]
    ) -> None:
        """Send the ticket's instruction frame: ``send(segments)`` exactly once, after
        announcing nothing (the listener writes the status and size first)."""

    def serve_upload(self, ticket: Ticket, upload: Upload) -> bool:
        """Store the reply being uploaded; ``True`` if new, ``False`` if a duplicate.
        Raises BulkRefusedError to refuse it. It must read the whole upload (``upload.
        read_into``) before returning: unread bytes would reset the connection and lose
        the answer."""


class BulkServer:
    """Listens on the bulk port; each connection is served on a thread of its own.

    Parameters
    ----------
    host, port
        Where to listen (``port`` 0 picks a free one; see :attr:`port`).
    service
        What valid tickets are served with.
    tickets
        Where tickets are looked up.
    ssl_context
        From :func:`server_ssl_context`, or ``None`` for plaintext.
    max_upload_bytes
        Larger uploads are refused before a byte of them is read.
    """

    def __init__(
        self,
        host: str,
        port: int,
        service: BulkService,
        tickets: TicketBook,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_upload_bytes: int = 8 * 1024**3,
        io_timeout: float = IO_TIMEOUT,
    ) -> None:
        self._service = service
        self._tickets = tickets
        self._ssl = ssl_context
        self._max_upload = max_upload_bytes
        self._timeout = io_timeout
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._closed = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((host, port))
        except OSError:
            self._listener.close()
            raise
        self._listener.listen(128)
        self._listener.settimeout(0.5)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="bulk-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=2)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                sock, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                continue
            if not self._slots.acquire(blocking=False):
                log.warning("bulk port: %s refused, %d connections open", peer, MAX_CONNECTIONS)
                sock.close()
                continue
            threading.Thread(
                target=self._serve, args=(sock, peer), name="bulk", daemon=True
            ).start()

    def _serve(self, raw: socket.socket, peer: object) -> None:
        sock = raw
        try:
            # Until the request is in, a short timeout: a connection that says nothing
            # must not hold one of the MAX_CONNECTIONS for long.
            raw.settimeout(min(self._timeout, _REQUEST_TIMEOUT))
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(raw, server_side=True)
            self._handle(sock)
        except BulkRefusedError as exc:
            log.warning("bulk port: refused %s: %s", peer, exc)
            with contextlib.suppress(OSError):
                sock.sendall(_refusal(str(exc)))
                _drain(sock)
        except (OSError, ssl.SSLError, BulkUnavailableError) as exc:
            log.warning("bulk port: connection from %s failed: %s", peer, exc)
        except Exception:  # a bug or a disk error must not take the listener down
            # Closed without a refusal: the node takes it as the port being unusable and
            # uses gRPC, where the instruction (still queued) or the reply still goes.
            log.exception("bulk port: serving %s failed", peer)
        finally:
            sock.close()
            self._slots.release()

    def _handle(self, sock: socket.socket) -> None:
        start = _recv_bytes(sock, len(MAGIC))  # another protocol is refused at once
        if start != MAGIC:
            raise BulkRefusedError("not a Pollinate bulk request")
        _, version, op, token, size = _REQUEST.unpack(
            start + _recv_bytes(sock, _REQUEST.size - len(MAGIC))
        )
        sock.settimeout(self._timeout)
        if version != VERSION:
            raise BulkRefusedError(f"bulk protocol version {version}; this server speaks {VERSION}")
        if op not in (OP_FETCH, OP_UPLOAD):
            raise BulkRefusedError(f"unknown bulk operation {op}")
        ticket = self._tickets.take(token, op)
        if ticket is None:
            raise BulkRefusedError("unknown, spent or expired ticket; use gRPC")
        if op == OP_FETCH:
            self._fetch(sock, ticket)
            return
        if size > self._max_upload:
            raise BulkRefusedError(f"an upload of {size} bytes exceeds {self._max_upload}")
        accepted = self._service.serve_upload(ticket, Upload(sock, size))
        self._tickets.spend(token)
        sock.sendall(_UPLOAD_ANSWER.pack(_OK, int(accepted)))

    def _fetch(self, sock: socket.socket, ticket: Ticket) -> None:
        def send(segments: Sequence[bytes | memoryview]) -> None:
            size = sum(memoryview(s).nbytes for s in segments)
            sock.sendall(_FETCH_ANSWER.pack(_OK, size))
            _send_all(sock, segments)

        self._service.serve_fetch(ticket, send)
