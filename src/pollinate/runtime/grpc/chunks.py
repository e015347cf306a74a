"""Frames in pieces: how payloads of any size cross gRPC.

A frame (see :mod:`pollinate.serde`) is cut into :class:`Chunk` messages of at most
4 MiB, each with the XXH3-128 hash of its bytes (see ``service.proto`` for why not a
cryptographic hash). The receiver checks the transfer id, the
order, every hash and the announced size, and refuses a transfer larger than its limit
before allocating anything. A receiver either holds the frame in memory or, with a
``sink``, hands each checked chunk on (the server writes them straight to a file, so a
1 GiB upload costs it one chunk of memory).

A content sent to many nodes is hashed once: :func:`chunk_digests` computes the digests
of its data section and :func:`iter_cached_chunks` streams each node's frame as its own
small head followed by that shared data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final

import numpy as np
import xxhash
from numpy.typing import NDArray

from pollinate.errors import ProtocolError
from pollinate.runtime.grpc.wire import Chunk, ChunkLike

__all__ = [
    "MAX_CHUNK_BYTES",
    "ChunkAssembler",
    "chunk_digests",
    "iter_cached_chunks",
    "iter_chunks",
    "read_frames",
]

#: Bytes of frame per chunk (gRPC's default message limit is 4 MiB; the channel options
#: leave room for the chunk's own fields).
MAX_CHUNK_BYTES: Final = 4 * 1024 * 1024 - 64 * 1024
#: The gRPC message size both ends allow: one chunk and its fields.
GRPC_MESSAGE_LIMIT: Final = 5 * 1024 * 1024


def _digest(data: bytes | memoryview) -> bytes:
    """A chunk's XXH3-128 digest."""
    return xxhash.xxh3_128_digest(data)


def iter_chunks(
    transfer_id: str,
    segments: Sequence[bytes | memoryview],
    *,
    chunk_bytes: int = MAX_CHUNK_BYTES,
) -> Iterator[Chunk]:
    """Cut a frame, given as its segments, into hashed chunks without joining it first
    (a chunk inside one segment is a view of it; one spanning segments is joined)."""
    views = [memoryview(s).cast("B") for s in segments]
    total = sum(v.nbytes for v in views)
    index = 0
    pending: list[memoryview] = []
    pending_bytes = 0

    def make(last: bool) -> Chunk:
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        return Chunk(
            transfer_id=transfer_id,
            total_size=total,
            index=index,
            data=data,
            digest=_digest(data),
            last=last,
        )

    sent = 0
    for view in views:
        offset = 0
        while offset < view.nbytes:
            take = min(chunk_bytes - pending_bytes, view.nbytes - offset)
            pending.append(view[offset : offset + take])
            pending_bytes += take
            offset += take
            if pending_bytes == chunk_bytes:
                sent += pending_bytes
                yield make(last=sent == total)
                index += 1
                pending, pending_bytes = [], 0
    if pending_bytes or total == 0:
        yield make(last=True)


def chunk_digests(data: memoryview, *, chunk_bytes: int = MAX_CHUNK_BYTES) -> list[bytes]:
    """The hash of each ``chunk_bytes`` piece of ``data``, for :func:`iter_cached_chunks`."""
    view = memoryview(data).cast("B")
    return [
        _digest(view[start : start + chunk_bytes]) for start in range(0, view.nbytes, chunk_bytes)
    ]


def iter_cached_chunks(
    transfer_id: str,
    head: bytes,
    data: memoryview,
    digests: Sequence[bytes],
    *,
    chunk_bytes: int = MAX_CHUNK_BYTES,
) -> Iterator[Chunk]:
    """A frame made of a small ``head`` and a shared ``data`` part whose chunk digests are
    known (from :func:`chunk_digests` with the same ``chunk_bytes``): the head is the
    first chunk, then each piece of data goes with its cached digest."""
    view = memoryview(data).cast("B")
    if len(digests) != -(-view.nbytes // chunk_bytes):
        raise ValueError(f"{len(digests)} digests for {view.nbytes} bytes of data")
    if len(head) > chunk_bytes:
        raise ValueError(f"a head of {len(head)} bytes does not fit one chunk")
    total = len(head) + view.nbytes
    yield Chunk(
        transfer_id=transfer_id,
        total_size=total,
        index=0,
        data=head,
        digest=_digest(head),
        last=not view.nbytes,
    )
    for index, digest in enumerate(digests):
        start = index * chunk_bytes
        piece = view[start : start + chunk_bytes]
        yield Chunk(
            transfer_id=transfer_id,
            total_size=total,
            index=index + 1,
            data=piece,
            digest=digest,
            last=start + len(piece) == view.nbytes,
        )


class ChunkAssembler:
    """Reassembles one transfer, checking everything a peer could get wrong.

    The buffer is allocated at the announced size (at most ``max_bytes``) when the first
    chunk arrives, and each chunk is copied into place once; its pages become resident
    only as bytes arrive, so a peer announcing gigabytes and sending a few bytes costs
    no memory. (A buffer growing with each chunk copied a 40 MB frame about five times
    over, and left the allocator fresh pages to fault in every round.) With a ``sink``,
    each checked chunk's bytes go to it instead of a buffer.
    """

    def __init__(
        self, *, max_bytes: int, sink: Callable[[bytes | memoryview], object] | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.transfer_id = ""
        self._sink = sink
        self._received = 0
        self._buffer: NDArray[np.uint8] = np.empty(0, np.uint8)
        self._total: int | None = None
        self._next_index = 0
        self.complete = False

    def add(self, chunk: ChunkLike) -> bool:
        """Take the next chunk; returns True once the transfer is complete."""
        if self.complete:
            raise ProtocolError(f"transfer {self.transfer_id!r}: a chunk arrived after the last")
        if self._total is None:
            if chunk.total_size > self.max_bytes:
                raise ProtocolError(
                    f"transfer {chunk.transfer_id!r} announces {chunk.total_size} bytes, more "
                    f"than the {self.max_bytes} this end accepts"
                )
            self.transfer_id = chunk.transfer_id
            self._total = int(chunk.total_size)
        if chunk.transfer_id != self.transfer_id:
            raise ProtocolError(
                f"chunk of transfer {chunk.transfer_id!r} inside transfer {self.transfer_id!r}"
            )
        if chunk.index != self._next_index:
            raise ProtocolError(
                f"transfer {self.transfer_id!r}: chunk {chunk.index} arrived, "
                f"{self._next_index} was expected"
            )
        if chunk.total_size != self._total:
            raise ProtocolError(f"transfer {self.transfer_id!r}: the total size changed")
        data = chunk.data
        if not data and not chunk.last:
            raise ProtocolError(f"transfer {self.transfer_id!r}: an empty chunk before the last")
        if _digest(data) != chunk.digest:
            raise ProtocolError(
                f"transfer {self.transfer_id!r}: chunk {chunk.index} fails its hash check"
            )
        if self._received + len(data) > self._total:
            raise ProtocolError(
                f"transfer {self.transfer_id!r}: more bytes than the announced {self._total}"
            )
        if self._sink is None:
            self._reserve(self._received + len(data))
            self._buffer[self._received : self._received + len(data)] = np.frombuffer(
                data, np.uint8
            )
        else:
            self._sink(data)
        self._received += len(data)
        self._next_index += 1
        if chunk.last:
            if self._received != self._total:
                raise ProtocolError(
                    f"transfer {self.transfer_id!r} ended after {self._received} of "
                    f"{self._total} bytes"
                )
            self.complete = True
        return self.complete

    def _reserve(self, needed: int) -> None:
        """Allocate the whole announced frame before its first bytes land (uninitialised:
        only the pages written become resident)."""
        if needed <= len(self._buffer):
            return
        assert self._total is not None and self._received == 0
        try:
            self._buffer = np.empty(self._total, np.uint8)
        except MemoryError:
            raise ProtocolError(
                f"transfer {self.transfer_id!r} announces {self._total} bytes, more than "
                "this machine can allocate; lower the peer's frame size or add memory"
            ) from None

    @property
    def started(self) -> bool:
        """Whether a first chunk has arrived."""
        return self._total is not None

    @property
    def size(self) -> int:
        """Bytes received so far."""
        return self._received

    def frame(self) -> memoryview:
        """The reassembled frame (once complete; not kept with a ``sink``)."""
        if self._sink is not None:
            raise ProtocolError(f"transfer {self.transfer_id!r} went to a sink, not a buffer")
        if not self.complete:
            raise ProtocolError(f"transfer {self.transfer_id!r} is incomplete")
        return self._buffer.data[: self._received]


def read_frames(chunks: Iterable[ChunkLike], *, max_bytes: int) -> Iterator[tuple[str, memoryview]]:
    """The frames of a stream of consecutive transfers, as ``(transfer_id, frame)``."""
    assembler = ChunkAssembler(max_bytes=max_bytes)
    for chunk in chunks:
        if assembler.add(chunk):
            yield assembler.transfer_id, assembler.frame()
            assembler = ChunkAssembler(max_bytes=max_bytes)
    if assembler.started and not assembler.complete:
        raise ProtocolError(f"transfer {assembler.transfer_id!r} was cut off")
