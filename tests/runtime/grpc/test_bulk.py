"""The bulk port (``pollinate.runtime.grpc.bulk``): piece digests, tickets, fetch and upload
round trips, refusals, garbage on the port, timeouts and TLS, over real sockets on 127.0.0.1."""

from __future__ import annotations

import itertools
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from pollinate.runtime.grpc import bulk
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

MiB = 1024 * 1024
HEAD = 100
#: Larger than two pieces, not a multiple of one: a head, two whole pieces and a tail.
FRAME = random.Random(1).randbytes(9 * MiB)
REQUEST = struct.Struct(">4sBB32sQ")  # written out here, not taken from the module
NODE = 7


class FakeService:
    """Serves registered frames by message id; records uploads (``True`` when new,
    ``False`` for a duplicate); refuses uploads for ``refused_id``."""

    def __init__(self) -> None:
        self.frames: dict[str, Sequence[bytes | memoryview]] = {
            "m1": [FRAME[:HEAD], memoryview(FRAME)[HEAD : 5 * MiB], FRAME[5 * MiB :]],
            "empty": [],
        }
        self.uploads: dict[str, bytes] = {}
        self.upload_calls = 0
        self.refused_id = "refused"
        self.lock = threading.Lock()

    def serve_fetch(
        self, ticket: Ticket, send: Callable[[Sequence[bytes | memoryview]], None]
    ) -> None:
        send(self.frames[ticket.message_id])  # an unknown id: KeyError, a server bug

    def serve_upload(self, ticket: Ticket, upload: Upload) -> bool:
        with self.lock:
            self.upload_calls += 1
        if ticket.message_id == self.refused_id:
            raise BulkRefusedError(f"reply {ticket.message_id} is not wanted")
        received = bytearray()
        upload.read_into(received.extend)
        assert len(received) == upload.size
        with self.lock:
            new = ticket.message_id not in self.uploads
            if new:
                self.uploads[ticket.message_id] = bytes(received)
        return new


def start_server(service: FakeService, tickets: TicketBook, **kwargs: object) -> BulkServer:
    server = BulkServer("127.0.0.1", 0, service, tickets, **kwargs)  # type: ignore[arg-type]
    server.start()
    return server


@pytest.fixture
def service() -> FakeService:
    return FakeService()


@pytest.fixture
def tickets() -> TicketBook:
    return TicketBook()


@pytest.fixture
def server(service: FakeService, tickets: TicketBook) -> Iterator[BulkServer]:
    server = start_server(service, tickets)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def client(server: BulkServer) -> BulkClient:
    return BulkClient("127.0.0.1", server.port, timeout=10)


def fetch(client: BulkClient, ticket: bytes, **overrides: object) -> memoryview:
    """``client.fetch`` with the offer FRAME would come with, unless overridden."""
    arguments: dict[str, object] = {
        "size": len(FRAME),
        "head_size": HEAD,
        "digests": piece_digests([FRAME], first_piece=HEAD),
        "max_bytes": 64 * MiB,
    }
    arguments.update(overrides)
    return client.fetch(ticket, **arguments)  # type: ignore[arg-type]


def reference_digests(data: bytes, first_piece: int, piece: int = PIECE_BYTES) -> list[bytes]:
    """Digests computed independently: cut ``data`` by hand, hash each cut."""
    cuts = [0]
    step = first_piece or piece
    while cuts[-1] < len(data):
        cuts.append(min(cuts[-1] + step, len(data)))
        step = piece
    return [xxhash.xxh3_128(data[a:b]).digest() for a, b in itertools.pairwise(cuts)]


def read_until_closed(sock: socket.socket) -> bytes:
    received = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        received += data
    return bytes(received)


def parse_refusal(answer: bytes) -> str:
    """The reason of a refusal (status 1, u32 length, UTF-8), checking its framing."""
    assert answer[:1] == b"\x01", answer[:16]
    (length,) = struct.unpack(">I", answer[1:5])
    assert len(answer) == 5 + length
    return answer[5:].decode("utf-8")


def send_raw(port: int, payload: bytes) -> bytes:
    """Send ``payload`` on a fresh connection; everything the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        return read_until_closed(sock)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------- digests
def test_piece_digests_honour_the_first_piece_then_whole_pieces() -> None:
    """A head of ``first_piece`` bytes, then PIECE_BYTES pieces, the last one short."""
    digests = piece_digests([FRAME], first_piece=HEAD)
    assert len(digests) == 4  # 100 B, 4 MiB, 4 MiB, 1 MiB - 100 B
    assert digests[0] == xxhash.xxh3_128(FRAME[:HEAD]).digest()
    assert digests[1] == xxhash.xxh3_128(FRAME[HEAD : HEAD + PIECE_BYTES]).digest()
    assert digests[-1] == xxhash.xxh3_128(FRAME[HEAD + 2 * PIECE_BYTES :]).digest()
    assert digests == reference_digests(FRAME, HEAD)
    # No head (0) cuts whole pieces from the start, like a head of one whole piece.
    plain = piece_digests([FRAME])
    assert plain == reference_digests(FRAME, 0) == piece_digests([FRAME], first_piece=PIECE_BYTES)
    assert len(plain) == 3 and plain != digests
    # A head longer than the frame: one piece, the whole frame.
    assert piece_digests([b"abc"], first_piece=HEAD) == [xxhash.xxh3_128(b"abc").digest()]


def test_piece_digests_do_not_depend_on_how_the_frame_is_segmented() -> None:
    """Segments cut across the head and piece boundaries, as bytes or memoryviews, hash
    like the frame in one buffer."""
    view = memoryview(FRAME)
    cuts = [0, 1, HEAD - 1, HEAD + 1, PIECE_BYTES, PIECE_BYTES + HEAD, 2 * PIECE_BYTES + 3]
    segments: list[bytes | memoryview] = []
    for index, (a, b) in enumerate(zip(cuts, [*cuts[1:], len(FRAME)], strict=True)):
        segments.append(view[a:b] if index % 2 else FRAME[a:b])
    segments.insert(3, b"")  # an empty segment changes nothing
    assert piece_digests(segments, first_piece=HEAD) == piece_digests([FRAME], first_piece=HEAD)
    assert piece_digests(segments) == piece_digests([FRAME])


def test_piece_digests_of_nothing_and_of_exact_pieces() -> None:
    """No bytes, no digests; a frame of exactly whole pieces has no empty trailing piece."""
    assert piece_digests([]) == []
    assert piece_digests([b"", memoryview(b"")]) == []
    assert piece_digests([], first_piece=HEAD) == []
    exact = FRAME[: 2 * PIECE_BYTES]
    assert len(piece_digests([exact])) == 2
    assert len(piece_digests([FRAME[: HEAD + PIECE_BYTES]], first_piece=HEAD)) == 2


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=200),
    first_piece=st.integers(min_value=0, max_value=40),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_piece_digests_match_a_reference_for_any_split(
    data: bytes, first_piece: int, cuts: list[int]
) -> None:
    """With a small piece size, any split of any frame hashes like cutting it by hand."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bulk, "PIECE_BYTES", 16)
        points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
        segments = [data[a:b] for a, b in itertools.pairwise(points)]
        assert piece_digests(segments, first_piece=first_piece) == reference_digests(
            data, first_piece, piece=16
        )


# ----------------------------------------------------------------------------- fetch
def test_a_fetch_returns_the_frame_intact_and_spends_its_ticket(
    client: BulkClient, tickets: TicketBook
) -> None:
    """A frame of several pieces, sent as three segments, arrives byte for byte; the
    fetch ticket works once."""
    ticket = tickets.issue(OP_FETCH, NODE, "m1", ttl=60)
    frame = fetch(client, ticket)
    assert frame.nbytes == len(FRAME)
    assert bytes(frame) == FRAME
    assert len(tickets) == 0
    with pytest.raises(BulkRefusedError, match="ticket"):
        fetch(client, ticket)


def test_an_empty_frame_can_be_fetched(client: BulkClient, tickets: TicketBook) -> None:
    """Size 0 is a frame like any other, with no digests."""
    ticket = tickets.issue(OP_FETCH, NODE, "empty", ttl=60)
    assert bytes(fetch(client, ticket, size=0, digests=[])) == b""


def test_fetches_run_concurrently(client: BulkClient, tickets: TicketBook) -> None:
    """Several connections at once each get their own intact copy."""
    results: list[bytes] = []
    errors: list[BaseException] = []

    def one() -> None:
        try:
            results.append(bytes(fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60))))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len(results) == 4 and all(result == FRAME for result in results)


def test_a_fetch_with_a_wrong_digest_fails_its_hash_check(
    client: BulkClient, tickets: TicketBook
) -> None:
    """One wrong digest names its piece; a wrong number of digests is refused too."""
    wrong = piece_digests([FRAME], first_piece=HEAD)
    wrong[1] = bytes(16)
    with pytest.raises(BulkRefusedError, match="piece 1 fails its hash check"):
        fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60), digests=wrong)
    # Digests cut without the head do not match a frame cut with one.
    with pytest.raises(BulkRefusedError, match="fetched frame"):
        fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60), head_size=0)
    short = piece_digests([FRAME], first_piece=HEAD)[:-1]
    with pytest.raises(BulkRefusedError, match="4 pieces, but 3 digests"):
        fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60), digests=short)


@pytest.mark.parametrize("offered", [len(FRAME) - 1, len(FRAME) + 1, 10])
def test_a_fetch_refuses_a_frame_of_another_size_than_offered(
    client: BulkClient, tickets: TicketBook, offered: int
) -> None:
    """The size the server announces must be the offer's, or no byte is read."""
    with pytest.raises(BulkRefusedError, match=f"sends {len(FRAME)} bytes for an offer of"):
        fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60), size=offered)


def test_an_offer_over_max_bytes_is_refused_before_connecting(tickets: TicketBook) -> None:
    """Nothing listens on the port: the refusal proves no connection was tried, and the
    ticket was not presented."""
    client = BulkClient("127.0.0.1", closed_port(), timeout=10)
    ticket = tickets.issue(OP_FETCH, NODE, "m1", ttl=60)
    with pytest.raises(BulkRefusedError, match=f"{len(FRAME)} bytes exceeds {len(FRAME) - 1}"):
        fetch(client, ticket, max_bytes=len(FRAME) - 1)
    assert tickets.take(ticket, OP_FETCH) is not None


def test_a_fetch_the_service_fails_on_is_unavailable_not_refused(
    client: BulkClient, tickets: TicketBook, server: BulkServer
) -> None:
    """An exception in the service (here a KeyError) closes the connection without a
    refusal, so a node uses gRPC instead of dropping the instruction; the port keeps
    serving."""
    with pytest.raises(BulkUnavailableError):
        fetch(client, tickets.issue(OP_FETCH, NODE, "no such message", ttl=60))
    assert bytes(fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60))) == FRAME


# ---------------------------------------------------------------------------- upload
def test_an_upload_arrives_intact_and_its_ticket_is_spent(
    client: BulkClient, tickets: TicketBook, service: FakeService
) -> None:
    """Segments cut across piece boundaries arrive as one identical frame; once stored
    the ticket is spent (a retry with it is refused); a fresh ticket for the same reply
    is answered ``False``, a duplicate."""
    view = memoryview(FRAME)
    segments: list[bytes | memoryview] = [
        FRAME[:3],
        view[3 : PIECE_BYTES + 5],
        b"",
        view[PIECE_BYTES + 5 :],
    ]
    ticket = tickets.issue(OP_UPLOAD, NODE, "r1", ttl=60)
    assert client.upload(ticket, segments) is True
    assert service.uploads["r1"] == FRAME
    assert tickets.take(ticket, OP_UPLOAD) is None
    with pytest.raises(BulkRefusedError, match="unknown, spent or expired ticket"):
        client.upload(ticket, segments)
    assert service.upload_calls == 1  # refused before the service saw it
    again = tickets.issue(OP_UPLOAD, NODE, "r1", ttl=60)
    assert client.upload(again, [FRAME]) is False
    assert service.uploads["r1"] == FRAME
    assert tickets.take(again, OP_UPLOAD) is None  # a duplicate spends its ticket too


def test_an_empty_upload(client: BulkClient, tickets: TicketBook, service: FakeService) -> None:
    """No segments, no bytes: stored as an empty frame."""
    assert client.upload(tickets.issue(OP_UPLOAD, NODE, "r0", ttl=60), []) is True
    assert service.uploads["r0"] == b""


def test_an_upload_with_a_bad_digest_is_refused_and_its_ticket_kept(
    server: BulkServer, client: BulkClient, tickets: TicketBook, service: FakeService
) -> None:
    """A raw upload whose digest does not match is refused with the piece named; the
    ticket stays valid, so the upload can be retried with it."""
    ticket = tickets.issue(OP_UPLOAD, NODE, "r2", ttl=60)
    payload = os.urandom(5000)
    bad_digest = bytes(16)
    answer = send_raw(
        server.port, REQUEST.pack(b"PLNB", 1, OP_UPLOAD, ticket, 5000) + payload + bad_digest
    )
    assert "uploaded frame: piece 0 fails its hash check" in parse_refusal(answer)
    assert client.upload(ticket, [payload]) is True
    assert service.uploads["r2"] == payload


def test_a_refusal_by_the_service_reaches_the_client_and_keeps_the_ticket(
    client: BulkClient, tickets: TicketBook, service: FakeService
) -> None:
    """BulkRefusedError from serve_upload is reported with its reason, even though the
    client sent a frame larger than the socket buffers that the service never read."""
    ticket = tickets.issue(OP_UPLOAD, NODE, "refused", ttl=60)
    with pytest.raises(BulkRefusedError, match="reply refused is not wanted"):
        client.upload(ticket, [FRAME])
    assert "refused" not in service.uploads
    assert tickets.take(ticket, OP_UPLOAD) is not None


def test_an_upload_over_max_upload_bytes_is_refused_before_the_service_sees_it(
    service: FakeService, tickets: TicketBook
) -> None:
    """The announced size is checked against the limit first; a size at the limit passes."""
    server = start_server(service, tickets, max_upload_bytes=1000)
    try:
        client = BulkClient("127.0.0.1", server.port, timeout=10)
        with pytest.raises(BulkRefusedError, match="an upload of 1001 bytes exceeds 1000"):
            client.upload(tickets.issue(OP_UPLOAD, NODE, "big", ttl=60), [b"z" * 1001])
        with pytest.raises(BulkRefusedError, match="exceeds 1000"):
            client.upload(tickets.issue(OP_UPLOAD, NODE, "big", ttl=60), [FRAME])
        assert service.upload_calls == 0
        assert client.upload(tickets.issue(OP_UPLOAD, NODE, "fits", ttl=60), [b"z" * 1000])
        assert service.uploads["fits"] == b"z" * 1000
    finally:
        server.close()


# ---------------------------------------------------------------------------- tickets
def test_unknown_tickets_are_refused_for_either_operation(client: BulkClient) -> None:
    with pytest.raises(BulkRefusedError, match="unknown, spent or expired ticket"):
        fetch(client, os.urandom(32))
    with pytest.raises(BulkRefusedError, match="unknown, spent or expired ticket"):
        client.upload(os.urandom(32), [b"data"])


def test_a_ticket_serves_only_its_own_operation(
    client: BulkClient, tickets: TicketBook, service: FakeService
) -> None:
    """A fetch ticket cannot upload and an upload ticket cannot fetch. Presenting a
    ticket for the wrong operation does not spend it."""
    fetch_ticket = tickets.issue(OP_FETCH, NODE, "m1", ttl=60)
    with pytest.raises(BulkRefusedError, match="ticket"):
        client.upload(fetch_ticket, [b"data"])
    assert service.upload_calls == 0
    upload_ticket = tickets.issue(OP_UPLOAD, NODE, "m1", ttl=60)
    with pytest.raises(BulkRefusedError, match="ticket"):
        fetch(client, upload_ticket)
    assert bytes(fetch(client, fetch_ticket)) == FRAME
    assert client.upload(upload_ticket, [b"data"]) is True


@pytest.mark.parametrize("ttl", [0.0, -1.0])
def test_an_expired_ticket_is_refused(
    client: BulkClient, tickets: TicketBook, service: FakeService, ttl: float
) -> None:
    fetch_ticket = tickets.issue(OP_FETCH, NODE, "m1", ttl=ttl)
    upload_ticket = tickets.issue(OP_UPLOAD, NODE, "r", ttl=ttl)
    time.sleep(0.01)  # ttl 0: past its expiry on any clock
    with pytest.raises(BulkRefusedError, match="expired"):
        fetch(client, fetch_ticket)
    with pytest.raises(BulkRefusedError, match="expired"):
        client.upload(upload_ticket, [b"data"])
    assert service.upload_calls == 0


def test_the_ticket_book_takes_fetch_tickets_once_and_upload_tickets_until_spent() -> None:
    book = TicketBook()
    token = book.issue(OP_FETCH, 3, "m", ttl=60)
    assert len(token) == 32
    taken = book.take(token, OP_FETCH)
    assert taken is not None
    assert (taken.op, taken.node_id, taken.message_id) == (OP_FETCH, 3, "m")
    assert book.take(token, OP_FETCH) is None
    upload = book.issue(OP_UPLOAD, 3, "r", ttl=60)
    assert book.take(upload, OP_UPLOAD) is not None
    assert book.take(upload, OP_UPLOAD) is not None
    book.spend(upload)
    assert book.take(upload, OP_UPLOAD) is None
    book.spend(upload)  # spending twice is harmless
    assert len(book) == 0


def test_a_ticket_book_needs_room_for_one_ticket() -> None:
    with pytest.raises(ValueError, match="max_tickets must be at least 1"):
        TicketBook(max_tickets=0)


def test_forget_node_voids_only_that_nodes_tickets() -> None:
    book = TicketBook()
    mine = [book.issue(OP_FETCH, 1, "a", ttl=60), book.issue(OP_UPLOAD, 1, "b", ttl=60)]
    theirs = [book.issue(OP_FETCH, 2, "a", ttl=60), book.issue(OP_UPLOAD, 2, "b", ttl=60)]
    book.forget_node(1)
    assert len(book) == 2
    assert book.take(mine[0], OP_FETCH) is None
    assert book.take(mine[1], OP_UPLOAD) is None
    kept = [book.take(theirs[0], OP_FETCH), book.take(theirs[1], OP_UPLOAD)]
    assert [t.node_id if t else None for t in kept] == [2, 2]
    book.forget_node(99)  # a node without tickets: nothing happens


def test_a_full_ticket_book_drops_expired_tickets_then_the_oldest() -> None:
    book = TicketBook(max_tickets=3)
    first, second, third = (book.issue(OP_UPLOAD, 1, name, ttl=60) for name in "abc")
    fourth = book.issue(OP_UPLOAD, 1, "d", ttl=60)
    assert len(book) == 3
    assert book.take(first, OP_UPLOAD) is None  # the oldest went
    assert all(book.take(t, OP_UPLOAD) is not None for t in (second, third, fourth))
    # An expired ticket goes before any live one, however old.
    book = TicketBook(max_tickets=3)
    old = book.issue(OP_UPLOAD, 1, "a", ttl=60)
    book.issue(OP_UPLOAD, 1, "dead", ttl=-1)
    live = book.issue(OP_UPLOAD, 1, "c", ttl=60)
    newest = book.issue(OP_UPLOAD, 1, "d", ttl=60)
    assert len(book) == 3
    assert all(book.take(t, OP_UPLOAD) is not None for t in (old, live, newest))


# ---------------------------------------------------------------------------- garbage
@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"Q" + random.Random(2).randbytes(63), "not a Pollinate bulk request"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(20), "not a Pollinate bulk request"),
        (b"plnb" + bytes(42), "not a Pollinate bulk request"),
        (REQUEST.pack(b"PLNB", 2, OP_FETCH, bytes(32), 0), "bulk protocol version 2"),
        (REQUEST.pack(b"PLNB", 0, OP_FETCH, bytes(32), 0), "bulk protocol version 0"),
        (REQUEST.pack(b"PLNB", 1, 9, bytes(32), 0), "unknown bulk operation 9"),
        (REQUEST.pack(b"PLNB", 1, 0, bytes(32), 0), "unknown bulk operation 0"),
    ],
    ids=["random", "http", "lowercase-magic", "version-2", "version-0", "op-9", "op-0"],
)
def test_garbage_is_refused_with_a_reason_and_the_port_keeps_serving(
    server: BulkServer, client: BulkClient, tickets: TicketBook, payload: bytes, reason: str
) -> None:
    assert reason in parse_refusal(send_raw(server.port, payload))
    assert bytes(fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60))) == FRAME


def test_a_valid_ticket_behind_a_wrong_version_is_not_spent(
    server: BulkServer, client: BulkClient, tickets: TicketBook
) -> None:
    """The header is checked before the ticket is looked up."""
    ticket = tickets.issue(OP_FETCH, NODE, "m1", ttl=60)
    answer = send_raw(server.port, REQUEST.pack(b"PLNB", 2, OP_FETCH, ticket, 0))
    assert "version 2" in parse_refusal(answer)
    assert bytes(fetch(client, ticket)) == FRAME


def test_connections_cut_short_do_not_break_the_port(
    server: BulkServer, client: BulkClient, tickets: TicketBook
) -> None:
    """Closing at once, after half a header, or after a full upload header with half
    its frame: each only ends its own connection."""
    socket.create_connection(("127.0.0.1", server.port), timeout=10).close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"PLNB\x01\x01" + bytes(10))
    ticket = tickets.issue(OP_UPLOAD, NODE, "cut", ttl=60)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(REQUEST.pack(b"PLNB", 1, OP_UPLOAD, ticket, 10_000) + bytes(5000))
    for _ in range(3):
        assert bytes(fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60))) == FRAME
    assert client.upload(ticket, [b"whole"]) is True  # the cut upload kept its ticket


def test_a_silent_connection_is_dropped_after_the_request_timeout(
    service: FakeService, tickets: TicketBook
) -> None:
    """A connection that never sends its request does not hold a slot for long."""
    server = start_server(service, tickets, io_timeout=0.5)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            assert read_until_closed(sock) == b""  # closed by the server, no answer
    finally:
        server.close()


def test_connections_over_the_limit_are_closed_and_slots_come_back(
    monkeypatch: pytest.MonkeyPatch, service: FakeService, tickets: TicketBook
) -> None:
    """With every slot held, another connection is closed (the client sees the port as
    unavailable); once the holder leaves, the port serves again."""
    monkeypatch.setattr(bulk, "MAX_CONNECTIONS", 1)
    server = start_server(service, tickets)
    try:
        client = BulkClient("127.0.0.1", server.port, timeout=10)
        holder = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        try:
            time.sleep(0.2)  # accepted, holding the one slot
            with pytest.raises(BulkUnavailableError):
                fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60))
        finally:
            holder.close()
        deadline = time.monotonic() + 5
        while True:
            try:
                assert bytes(fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60))) == FRAME
                break
            except BulkUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        server.close()


# ------------------------------------------------------------------------ unreachable
def test_a_closed_port_is_unavailable_at_once(service: FakeService, tickets: TicketBook) -> None:
    """Fetch and upload to a port nobody listens on (a server that was closed) fail with
    BulkUnavailableError, not a refusal."""
    server = start_server(service, tickets)
    port = server.port
    server.close()
    client = BulkClient("127.0.0.1", port, timeout=10)
    with pytest.raises(BulkUnavailableError, match="cannot reach the bulk port"):
        fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60))
    with pytest.raises(BulkUnavailableError, match="cannot reach the bulk port"):
        client.upload(tickets.issue(OP_UPLOAD, NODE, "r", ttl=60), [b"x"])


def test_a_server_that_never_answers_times_out_as_unavailable(tickets: TicketBook) -> None:
    """A listener that accepts and says nothing: the client gives up after its timeout."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = BulkClient("127.0.0.1", listener.getsockname()[1], timeout=0.3)
        with pytest.raises(BulkUnavailableError):
            fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60))


def test_a_frame_cut_short_by_the_server_is_unavailable(tickets: TicketBook) -> None:
    """A server announcing a whole frame and closing halfway: unavailable, not a frame."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with listener.accept()[0] as conn:
            conn.recv(REQUEST.size)
            conn.sendall(struct.pack(">BQ", 0, len(FRAME)) + FRAME[:1000])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client = BulkClient("127.0.0.1", listener.getsockname()[1], timeout=10)
        with pytest.raises(BulkUnavailableError, match="closed in the middle"):
            fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60))
    finally:
        thread.join(timeout=10)
        listener.close()


# -------------------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bulk-certs")
    write_certificates(directory, hosts=("localhost", "127.0.0.1"))
    return directory


@pytest.fixture
def tls_server(certs: Path, service: FakeService, tickets: TicketBook) -> Iterator[BulkServer]:
    context = server_ssl_context(str(certs / "server.pem"), str(certs / "server.key"))
    server = start_server(service, tickets, ssl_context=context)
    try:
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_fetch_and_upload_over_tls(
    certs: Path, tls_server: BulkServer, tickets: TicketBook, service: FakeService, host: str
) -> None:
    """A client trusting the CA fetches and uploads intact frames, by address or name."""
    trusted = client_ssl_context((certs / "ca.pem").read_bytes())
    client = BulkClient(host, tls_server.port, trusted, timeout=10)
    assert bytes(fetch(client, tickets.issue(OP_FETCH, NODE, "m1", ttl=60))) == FRAME
    view = memoryview(FRAME)
    ticket = tickets.issue(OP_UPLOAD, NODE, "t1", ttl=60)
    assert client.upload(ticket, [view[:7], view[7:]]) is True
    assert service.uploads["t1"] == FRAME


def test_refusals_arrive_over_tls(certs: Path, tls_server: BulkServer, tickets: TicketBook) -> None:
    """A refused ticket and a refused upload say why through TLS as well."""
    client = BulkClient(
        "127.0.0.1", tls_server.port, client_ssl_context((certs / "ca.pem").read_bytes())
    )
    with pytest.raises(BulkRefusedError, match="unknown, spent or expired ticket"):
        fetch(client, os.urandom(32))
    with pytest.raises(BulkRefusedError, match="not wanted"):
        client.upload(tickets.issue(OP_UPLOAD, NODE, "refused", ttl=60), [FRAME])


def test_tls_with_another_ca_or_plaintext_is_unavailable(
    tls_server: BulkServer, tickets: TicketBook, tmp_path: Path
) -> None:
    """A client trusting another CA fails the handshake; a plaintext client gets nothing
    it can read. Both are unavailable (use gRPC), and neither spends the ticket."""
    write_certificates(tmp_path / "other", hosts=("localhost", "127.0.0.1"))
    stranger = BulkClient(
        "127.0.0.1",
        tls_server.port,
        client_ssl_context((tmp_path / "other" / "ca.pem").read_bytes()),
        timeout=10,
    )
    ticket = tickets.issue(OP_FETCH, NODE, "m1", ttl=60)
    with pytest.raises(BulkUnavailableError, match="TLS"):
        fetch(stranger, ticket)
    plaintext = BulkClient("127.0.0.1", tls_server.port, timeout=10)
    with pytest.raises(BulkUnavailableError):
        fetch(plaintext, ticket)
    assert tickets.take(ticket, OP_FETCH) is not None
