"""The bulk port's protocol: tickets, digests, refusals, TLS (real sockets on 127.0.0.1)."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from pollinate.runtime.grpc.bulk import (
    OP_FETCH,
    OP_UPLOAD,
    PIECE_BYTES,
    BulkClient,
    BulkRefusedError,
    BulkServer,
    BulkUnavailableError,
    Ticket,
    TicketBook,
    Upload,
    client_ssl_context,
    piece_digests,
    server_ssl_context,
)
from pollinate.runtime.grpc.security import write_certificates

FRAME = os.urandom(2 * PIECE_BYTES + 12345)  # two whole pieces and a bit
HEAD = 100


class FakeService:
    """Frames to fetch by message id; uploads recorded; one message id refused."""

    def __init__(self) -> None:
        self.frames: dict[str, list[bytes]] = {"m1": [FRAME[:HEAD], FRAME[HEAD:]]}
        self.uploads: dict[str, bytes] = {}
        self.refuse = "refused"
        self.lock = threading.Lock()

    def serve_fetch(
        self, ticket: Ticket, send: Callable[[Sequence[bytes | memoryview]], None]
    ) -> None:
        send(self.frames[ticket.message_id])

    def serve_upload(self, ticket: Ticket, upload: Upload) -> bool:
        if ticket.message_id == self.refuse:
            raise BulkRefusedError("this reply is not wanted")
        received = bytearray()
        upload.read_into(received.extend)
        with self.lock:
            new = ticket.message_id not in self.uploads
            self.uploads[ticket.message_id] = bytes(received)
        return new


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def tickets() -> TicketBook:
    return TicketBook()


def _server(service: FakeService, tickets: TicketBook, **kwargs: object) -> BulkServer:
    server = BulkServer("127.0.0.1", 0, service, tickets, **kwargs)  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture
def server(service: FakeService, tickets: TicketBook) -> Iterator[BulkServer]:
    server = _server(service, tickets)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def client(server: BulkServer) -> BulkClient:
    return BulkClient("127.0.0.1", server.port, timeout=10)


def _fetch(client: BulkClient, ticket: bytes, **overrides: object) -> memoryview:
    arguments: dict[str, object] = {
        "size": len(FRAME),
        "head_size": HEAD,
        "digests": piece_digests([FRAME], first_piece=HEAD),
        "max_bytes": 1 << 30,
    }
    arguments.update(overrides)
    return client.fetch(ticket, **arguments)  # type: ignore[arg-type]


# -- digests ------------------------------------------------------------------------------
def test_piece_digests_cut_a_head_then_whole_pieces_whatever_the_segments() -> None:
    joined = piece_digests([FRAME], first_piece=HEAD)
    assert len(joined) == 1 + 2 + 1  # the head, two whole pieces, the rest
    split = [FRAME[:7], FRAME[7 : PIECE_BYTES + 3], memoryview(FRAME)[PIECE_BYTES + 3 :]]
    assert piece_digests(split, first_piece=HEAD) == joined
    assert piece_digests([FRAME]) != joined  # without a head, the cut differs
    assert len(piece_digests([FRAME])) == 3
    assert piece_digests([]) == []
    assert piece_digests([b""]) == []


# -- fetch --------------------------------------------------------------------------------
def test_a_fetched_frame_arrives_intact_and_its_ticket_is_spent(
    client: BulkClient, tickets: TicketBook
) -> None:
    ticket = tickets.issue(OP_FETCH, 7, "m1", ttl=60)
    assert bytes(_fetch(client, ticket)) == FRAME
    with pytest.raises(BulkRefusedError, match="unknown, spent or expired ticket"):
        _fetch(client, ticket)


def test_a_fetch_checks_digests_and_size(client: BulkClient, tickets: TicketBook) -> None:
    wrong = piece_digests([FRAME], first_piece=HEAD)
    wrong[2] = bytes(16)
    with pytest.raises(BulkRefusedError, match="piece 2 fails its hash check"):
        _fetch(client, tickets.issue(OP_FETCH, 7, "m1", ttl=60), digests=wrong)
    with pytest.raises(BulkRefusedError, match=f"sends {len(FRAME)} bytes for an offer of 5"):
        _fetch(client, tickets.issue(OP_FETCH, 7, "m1", ttl=60), size=5)


def test_a_frame_over_the_limit_is_refused_before_connecting(tickets: TicketBook) -> None:
    client = BulkClient("127.0.0.1", 1)  # nothing to connect to: never tried
    with pytest.raises(BulkRefusedError, match="exceeds 1000"):
        _fetch(client, tickets.issue(OP_FETCH, 7, "m1", ttl=60), max_bytes=1000)


# -- upload -------------------------------------------------------------------------------
def test_an_upload_arrives_intact_and_its_ticket_is_spent_once_stored(
    client: BulkClient, tickets: TicketBook, service: FakeService
) -> None:
    ticket = tickets.issue(OP_UPLOAD, 7, "r1", ttl=60)
    segments = [FRAME[:10], memoryview(FRAME)[10 : PIECE_BYTES + 1], FRAME[PIECE_BYTES + 1 :]]
    assert client.upload(ticket, segments) is True
    assert service.uploads["r1"] == FRAME
    # Stored: the ticket is gone (a node whose acknowledgement was lost retries over
    # gRPC, where the reply is recognised as a duplicate).
    with pytest.raises(BulkRefusedError, match="ticket"):
        client.upload(ticket, [b"again"])
    # A second ticket for the same reply (a new offer after a reconnection) is told
    # the reply is a duplicate.
    assert client.upload(tickets.issue(OP_UPLOAD, 7, "r1", ttl=60), [FRAME]) is False


def test_an_empty_upload(client: BulkClient, tickets: TicketBook, service: FakeService) -> None:
    assert client.upload(tickets.issue(OP_UPLOAD, 7, "r0", ttl=60), []) is True
    assert service.uploads["r0"] == b""


def test_a_refused_upload_says_why_and_keeps_its_ticket(
    client: BulkClient, tickets: TicketBook
) -> None:
    ticket = tickets.issue(OP_UPLOAD, 7, "refused", ttl=60)
    with pytest.raises(BulkRefusedError, match="this reply is not wanted"):
        client.upload(ticket, [b"x" * 1000])
    assert tickets.take(ticket, OP_UPLOAD) is not None


def test_an_upload_with_a_bad_digest_is_refused(
    server: BulkServer, tickets: TicketBook, service: FakeService
) -> None:
    ticket = tickets.issue(OP_UPLOAD, 7, "r2", ttl=60)
    payload = b"y" * 1000
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(struct.pack(">4sBB32sQ", b"PLNB", 1, OP_UPLOAD, ticket, len(payload)))
        sock.sendall(payload + bytes(16))  # a digest of zeros
        answer = _read_all(sock)
    assert answer[:1] == b"\x01"
    assert b"piece 0 fails its hash check" in answer
    assert "r2" not in service.uploads


def test_an_upload_over_the_limit_is_refused_before_its_bytes(
    service: FakeService, tickets: TicketBook
) -> None:
    server = _server(service, tickets, max_upload_bytes=1000)
    try:
        client = BulkClient("127.0.0.1", server.port, timeout=10)
        with pytest.raises(BulkRefusedError, match="exceeds 1000"):
            client.upload(tickets.issue(OP_UPLOAD, 7, "big", ttl=60), [b"z" * 5000])
        assert "big" not in service.uploads
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            ticket = tickets.issue(OP_UPLOAD, 7, "big", ttl=60)
            sock.sendall(struct.pack(">4sBB32sQ", b"PLNB", 1, OP_UPLOAD, ticket, 5000))
            assert b"exceeds 1000" in _read_all(sock)
    finally:
        server.close()


# -- tickets ------------------------------------------------------------------------------
def test_tickets_are_for_one_operation_and_expire(client: BulkClient, tickets: TicketBook) -> None:
    upload_ticket = tickets.issue(OP_UPLOAD, 7, "m1", ttl=60)
    with pytest.raises(BulkRefusedError, match="ticket"):
        _fetch(client, upload_ticket)
    fetch_ticket = tickets.issue(OP_FETCH, 7, "r3", ttl=60)
    with pytest.raises(BulkRefusedError, match="ticket"):
        client.upload(fetch_ticket, [b"data"])
    expired = tickets.issue(OP_FETCH, 7, "m1", ttl=-1)
    with pytest.raises(BulkRefusedError, match="expired"):
        _fetch(client, expired)
    with pytest.raises(BulkRefusedError, match="ticket"):
        _fetch(client, os.urandom(32))


def test_a_ticket_book_forgets_a_node_and_stays_bounded() -> None:
    book = TicketBook(max_tickets=3)
    mine = book.issue(OP_FETCH, 1, "a", ttl=60)
    theirs = book.issue(OP_FETCH, 2, "b", ttl=60)
    book.forget_node(1)
    assert book.take(mine, OP_FETCH) is None
    taken = book.take(theirs, OP_FETCH)
    assert taken is not None and taken.node_id == 2 and taken.message_id == "b"
    first = book.issue(OP_UPLOAD, 3, "c", ttl=60)
    for name in "defg":
        book.issue(OP_UPLOAD, 3, name, ttl=60)
    assert len(book) == 3
    assert book.take(first, OP_UPLOAD) is None  # the oldest went first


# -- garbage ------------------------------------------------------------------------------
def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", b"not a Pollinate bulk request"),
        (os.urandom(64).replace(b"P", b"Q"), b"not a Pollinate bulk request"),
        (b"PLNB\x02\x01" + bytes(40), b"bulk protocol version 2"),
        (b"PLNB\x01\x09" + bytes(40), b"unknown bulk operation 9"),
    ],
)
def test_garbage_is_refused_and_the_port_keeps_serving(
    server: BulkServer, client: BulkClient, tickets: TicketBook, payload: bytes, reason: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(payload)
        answer = _read_all(sock)
    assert answer[:1] == b"\x01"
    (length,) = struct.unpack(">I", answer[1:5])
    assert reason in answer[5 : 5 + length]
    # A half request and a silent close do not take the port down either.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"PLNB\x01")
    socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
    assert bytes(_fetch(client, tickets.issue(OP_FETCH, 7, "m1", ttl=60))) == FRAME


def test_an_unreachable_port_is_unavailable_not_refused(tickets: TicketBook) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = BulkClient("127.0.0.1", port)
    with pytest.raises(BulkUnavailableError, match="cannot reach the bulk port"):
        _fetch(client, tickets.issue(OP_FETCH, 7, "m1", ttl=60))
    with pytest.raises(BulkUnavailableError):
        client.upload(tickets.issue(OP_UPLOAD, 7, "r", ttl=60), [b"x"])


def test_a_connection_closed_mid_frame_is_unavailable(tickets: TicketBook) -> None:
    # A server that announces a frame and hangs up half way.
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(46)
            conn.sendall(struct.pack(">BQ", 0, len(FRAME)) + FRAME[:1000])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client = BulkClient("127.0.0.1", listener.getsockname()[1], timeout=10)
        with pytest.raises(BulkUnavailableError, match="closed in the middle"):
            _fetch(client, tickets.issue(OP_FETCH, 7, "m1", ttl=60))
    finally:
        thread.join(timeout=10)
        listener.close()


# -- TLS ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    write_certificates(directory, hosts=("localhost", "127.0.0.1"))
    return directory


def test_fetch_and_upload_over_tls(
    certs: Path, service: FakeService, tickets: TicketBook, tmp_path: Path
) -> None:
    context = server_ssl_context(str(certs / "server.pem"), str(certs / "server.key"))
    server = _server(service, tickets, ssl_context=context)
    try:
        trusted = client_ssl_context((certs / "ca.pem").read_bytes())
        client = BulkClient("127.0.0.1", server.port, trusted, timeout=10)
        assert bytes(_fetch(client, tickets.issue(OP_FETCH, 7, "m1", ttl=60))) == FRAME
        assert client.upload(tickets.issue(OP_UPLOAD, 7, "t1", ttl=60), [FRAME]) is True
        assert service.uploads["t1"] == FRAME
        other = tmp_path / "other"
        write_certificates(other, hosts=("localhost", "127.0.0.1"))
        stranger = BulkClient(
            "127.0.0.1", server.port, client_ssl_context((other / "ca.pem").read_bytes())
        )
        with pytest.raises(BulkUnavailableError, match="TLS"):
            _fetch(stranger, tickets.issue(OP_FETCH, 7, "m1", ttl=60))
        plaintext = BulkClient("127.0.0.1", server.port, timeout=10)
        with pytest.raises(BulkUnavailableError):
            _fetch(plaintext, tickets.issue(OP_FETCH, 7, "m1", ttl=60))
    finally:
        server.close()
