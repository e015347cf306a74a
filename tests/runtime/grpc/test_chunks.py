"""Frames in hashed chunks: round trips of any size, and everything a peer could get wrong."""

from __future__ import annotations

import itertools
import math
import os
import tracemalloc
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from pollinate.errors import ProtocolError
from pollinate.runtime.grpc.chunks import (
    GRPC_MESSAGE_LIMIT,
    MAX_CHUNK_BYTES,
    ChunkAssembler,
    chunk_digests,
    iter_cached_chunks,
    iter_chunks,
    read_frames,
)
from pollinate.runtime.grpc.wire import encode_chunk
from pollinate.serde._proto.pollinate.v1 import service_pb2 as pb

MiB = 1024 * 1024


def _chunk(
    data: bytes,
    *,
    index: int = 0,
    total: int | None = None,
    last: bool = True,
    transfer: str = "t",
    digest: bytes | None = None,
) -> pb.Chunk:
    return pb.Chunk(
        transfer_id=transfer,
        total_size=len(data) if total is None else total,
        index=index,
        data=data,
        digest=xxhash.xxh3_128_digest(data) if digest is None else digest,
        last=last,
    )


def _assemble(chunks: list[pb.Chunk], max_bytes: int = 1 << 30) -> bytes:
    assembler = ChunkAssembler(max_bytes=max_bytes)
    done = [assembler.add(chunk) for chunk in chunks]
    assert done == [False] * (len(chunks) - 1) + [True]
    return bytes(assembler.frame())


def _check_well_formed(chunks: list[pb.Chunk], data: bytes, chunk_bytes: int) -> None:
    assert len(chunks) == max(1, math.ceil(len(data) / chunk_bytes))
    for position, chunk in enumerate(chunks):
        assert chunk.transfer_id == "t"
        assert chunk.index == position
        assert chunk.total_size == len(data)
        assert len(chunk.data) <= chunk_bytes
        assert chunk.data or not data  # never empty unless the frame is
        assert chunk.digest == xxhash.xxh3_128_digest(chunk.data)
        assert chunk.last == (position == len(chunks) - 1)


# ------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 5 * 16, 5 * 16 + 3])
def test_round_trip_at_the_chunk_boundaries(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    chunks = list(iter_chunks("t", [data], chunk_bytes=16))
    _check_well_formed(chunks, data, 16)
    assert _assemble(chunks) == data
    assert list(read_frames(chunks, max_bytes=size)) == [("t", memoryview(data))]


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=300),
    chunk_bytes=st.integers(min_value=1, max_value=40),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=6),
)
def test_round_trip_of_any_frame_cut_into_any_segments(
    data: bytes, chunk_bytes: int, cuts: list[int]
) -> None:
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    segments = [data[a:b] for a, b in itertools.pairwise(bounds)] or [b""]
    chunks = list(iter_chunks("t", segments, chunk_bytes=chunk_bytes))
    _check_well_formed(chunks, data, chunk_bytes)
    assert _assemble(chunks, max_bytes=len(data)) == data


def test_segments_of_any_buffer_type_travel_as_their_raw_bytes() -> None:
    arrays = [np.arange(7, dtype=np.float64), np.eye(3, dtype=np.int32)]
    segments = [memoryview(b"head"), *arrays, bytearray(b"tail")]
    expected = b"head" + b"".join(a.tobytes() for a in arrays) + b"tail"
    chunks = list(iter_chunks("t", segments, chunk_bytes=10))
    _check_well_formed(chunks, expected, 10)
    assert _assemble(chunks) == expected


def test_default_chunks_fit_in_a_grpc_message() -> None:
    data = b"\xab" * (2 * MAX_CHUNK_BYTES + 1)
    chunks = list(iter_chunks("a-message-id", [data]))
    assert [len(c.data) for c in chunks] == [MAX_CHUNK_BYTES, MAX_CHUNK_BYTES, 1]
    assert max(len(c.data) for c in chunks) <= 4 * MiB
    assert all(len(encode_chunk(c)) <= GRPC_MESSAGE_LIMIT for c in chunks)
    assert _assemble(chunks) == data


def test_consecutive_transfers_are_read_one_frame_each() -> None:
    frames = {"a": b"first frame", "b": b"", "c": b"x" * 50}
    stream = [c for key, value in frames.items() for c in iter_chunks(key, [value], chunk_bytes=8)]
    assert [(key, bytes(frame)) for key, frame in read_frames(stream, max_bytes=64)] == list(
        frames.items()
    )
    assert list(read_frames([], max_bytes=64)) == []


# ------------------------------------------------------------------------ memory


def _peak_bytes(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        action()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_cutting_a_frame_never_joins_it() -> None:
    frame = np.ones(32 * MiB, dtype=np.uint8)  # allocated before tracing starts

    def consume() -> None:
        for chunk in iter_chunks("t", [frame[: 16 * MiB], frame[16 * MiB :]], chunk_bytes=MiB):
            assert len(chunk.data) == MiB

    assert _peak_bytes(consume) < 4 * MiB


def test_assembling_a_frame_holds_the_frame_plus_a_chunk() -> None:
    frame = b"\x01" * (32 * MiB)
    chunks = list(iter_chunks("t", [frame], chunk_bytes=MiB))
    result: list[bytes] = []

    def assemble() -> None:
        for _, assembled in read_frames(chunks, max_bytes=len(frame)):
            result.append(assembled[:16].tobytes())

    assert _peak_bytes(assemble) < len(frame) + 4 * MiB
    assert result == [frame[:16]]


def test_a_size_above_the_limit_is_refused_before_allocating() -> None:
    assembler = ChunkAssembler(max_bytes=MiB)
    huge = _chunk(b"abc", total=1 << 40, last=False)
    errors: list[str] = []

    def add() -> None:
        try:
            assembler.add(huge)
        except ProtocolError as exc:
            errors.append(str(exc))

    assert _peak_bytes(add) < 64 * 1024
    assert errors and "announces 1099511627776 bytes" in errors[0] and "1048576" in errors[0]
    just_above = _chunk(b"", total=MiB + 1, last=False)
    with pytest.raises(ProtocolError, match="more than the 1048576 this end accepts"):
        ChunkAssembler(max_bytes=MiB).add(just_above)
    assert ChunkAssembler(max_bytes=3).add(_chunk(b"abc"))  # exactly the limit is fine


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_follows_the_bytes_received_not_the_bytes_announced() -> None:
    assembler = ChunkAssembler(max_bytes=1 << 31)
    before = _resident_bytes()
    assembler.add(_chunk(b"abc", total=1 << 30, last=False))
    assert _resident_bytes() - before < 16 * MiB  # of the 1 GiB announced


def test_an_announced_size_that_cannot_be_allocated_is_a_protocol_error() -> None:
    assembler = ChunkAssembler(max_bytes=1 << 62)
    with pytest.raises(ProtocolError, match="more than this machine can allocate"):
        assembler.add(_chunk(b"abc", total=1 << 61, last=False))


# ------------------------------------------------------------------------ what a peer gets wrong


def _good(data: bytes = b"0123456789abcdef", chunk_bytes: int = 4) -> list[pb.Chunk]:
    return list(iter_chunks("t", [data], chunk_bytes=chunk_bytes))


def _fails_at(chunks: list[pb.Chunk], match: str, *, max_bytes: int = 1 << 20) -> int:
    """Feed chunks until one is refused; return its position."""
    assembler = ChunkAssembler(max_bytes=max_bytes)
    for position, chunk in enumerate(chunks):
        try:
            assembler.add(chunk)
        except ProtocolError as exc:
            assert match in str(exc), str(exc)
            if not assembler.complete:
                with pytest.raises(ProtocolError, match="incomplete"):
                    assembler.frame()
            return position
    raise AssertionError("every chunk was accepted")


def test_a_chunk_whose_bytes_do_not_match_its_hash_is_refused() -> None:
    chunks = _good()
    chunks[2].data = b"89aX"
    assert _fails_at(chunks, "chunk 2 fails its hash check") == 2
    chunks = _good()
    chunks[0].digest = b""
    assert _fails_at(chunks, "chunk 0 fails its hash check") == 0


@pytest.mark.parametrize(
    ("order", "match"),
    [
        ([1, 0, 2, 3], "chunk 1 arrived, 0 was expected"),
        ([0, 2, 1, 3], "chunk 2 arrived, 1 was expected"),
        ([0, 1, 1, 2, 3], "chunk 1 arrived, 2 was expected"),
    ],
)
def test_chunks_out_of_order_skipped_or_repeated_are_refused(order: list[int], match: str) -> None:
    chunks = _good()
    fed = [chunks[i] for i in order]
    assert _fails_at(fed, match) == next(p for p, i in enumerate(order) if i != p)


def test_a_total_size_that_changes_mid_transfer_is_refused() -> None:
    chunks = _good()
    chunks[1].total_size = 17
    assert _fails_at(chunks, "the total size changed") == 1


def test_more_bytes_than_announced_are_refused() -> None:
    chunks = _good()
    extra = b"4567"
    chunks[3].last = False
    chunks.append(_chunk(extra, index=4, total=16))
    assert _fails_at(chunks, "more bytes than the announced 16") == 4
    one_big = [_chunk(b"0123456789", total=4)]
    assert _fails_at(one_big, "more bytes than the announced 4") == 0


def test_a_last_chunk_before_all_bytes_came_is_refused() -> None:
    chunks = _good()[:2]
    chunks[1].last = True
    assert _fails_at(chunks, "ended after 8 of 16 bytes") == 1


def test_a_chunk_after_the_last_is_refused() -> None:
    chunks = [*_good(), _chunk(b"", index=4, total=16)]
    assert _fails_at(chunks, "a chunk arrived after the last") == 4


def test_a_chunk_of_another_transfer_is_refused() -> None:
    chunks = _good()
    chunks[1].transfer_id = "other"
    assert _fails_at(chunks, "chunk of transfer 'other' inside transfer 't'") == 1


@pytest.mark.parametrize("transfer", ["t", ""])
def test_a_transfer_cut_off_is_an_error_not_a_missing_frame(transfer: str) -> None:
    chunks = list(iter_chunks(transfer, [b"0123456789abcdef"], chunk_bytes=4))
    whole = list(iter_chunks("before", [b"ok"], chunk_bytes=4))
    frames: list[str] = []

    def read(stream: list[pb.Chunk]) -> Iterator[str]:
        for key, _ in read_frames(stream, max_bytes=64):
            frames.append(key)
            yield key

    with pytest.raises(ProtocolError, match=f"transfer {transfer!r} was cut off"):
        list(read(whole + chunks[:3]))
    assert frames == ["before"]  # the complete frame before it still came through


def test_read_frames_refuses_what_the_assembler_refuses() -> None:
    chunks = _good()
    chunks[1].digest = xxhash.xxh3_128_digest(b"something else")
    with pytest.raises(ProtocolError, match="hash check"):
        list(read_frames(chunks, max_bytes=64))
    with pytest.raises(ProtocolError, match="announces 16 bytes, more than the 15"):
        list(read_frames(_good(), max_bytes=15))


@pytest.mark.parametrize("data_size", [0, 1, 3 * MiB + 5, 2 * MAX_CHUNK_BYTES])
def test_a_head_and_shared_data_with_cached_digests_reassemble_to_their_concatenation(
    data_size: int,
) -> None:
    # A broadcast: each node's small head, then the content's data hashed once.
    head = b"head of node 7" * 5
    data = memoryview(np.random.default_rng(data_size).bytes(data_size))
    digests = chunk_digests(data)
    assembler = ChunkAssembler(max_bytes=len(head) + data_size)
    # Act
    chunks = list(iter_cached_chunks("m1", head, data, digests))
    done = [assembler.add(chunk) for chunk in chunks]
    # Assert
    assert done[-1] and not any(done[:-1])
    assert bytes(assembler.frame()) == head + bytes(data)
    assert all(len(chunk.data) <= MAX_CHUNK_BYTES for chunk in chunks)


def test_cached_digests_must_match_the_data_they_describe() -> None:
    data = memoryview(bytes(2 * MAX_CHUNK_BYTES))
    with pytest.raises(ValueError, match="1 digests for"):
        list(iter_cached_chunks("m1", b"h", data, chunk_digests(data)[:1]))
    stale = [*chunk_digests(memoryview(bytes(MAX_CHUNK_BYTES))), b"x" * 16]
    assembler = ChunkAssembler(max_bytes=len(data) + 1)
    with pytest.raises(ProtocolError, match="chunk 2 fails its hash check"):
        for chunk in iter_cached_chunks("m1", b"h", data, stale):
            assembler.add(chunk)
