"""Chunks and deliveries encoded by hand are exactly the schema's protobuf encoding."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollinate.errors import ProtocolError
from pollinate.runtime.grpc.wire import (
    Chunk,
    Delivery,
    decode_chunk,
    decode_delivery,
    encode_chunk,
    encode_delivery,
)
from pollinate.serde._proto.pollinate.v1 import service_pb2 as pb

CHUNKS = st.builds(
    Chunk,
    transfer_id=st.text(max_size=40),
    total_size=st.integers(0, 2**64 - 1),
    index=st.integers(0, 2**32 - 1),
    data=st.binary(max_size=3000),
    digest=st.binary(max_size=16),
    last=st.booleans(),
)


def _fields(chunk: Chunk | pb.Chunk) -> tuple[object, ...]:
    return (
        chunk.transfer_id,
        chunk.total_size,
        chunk.index,
        bytes(chunk.data),
        bytes(chunk.digest),
        chunk.last,
    )


@settings(max_examples=200, deadline=None)
@given(CHUNKS)
def test_chunks_read_and_write_like_the_generated_protobuf_code(chunk: Chunk) -> None:
    encoded = encode_chunk(chunk)
    assert _fields(pb.Chunk.FromString(encoded)) == _fields(chunk)
    generated = pb.Chunk(
        **dict(zip(pb.Chunk.DESCRIPTOR.fields_by_name, _fields(chunk), strict=False))
    )
    assert _fields(decode_chunk(generated.SerializeToString())) == _fields(chunk)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.none(), CHUNKS), st.booleans(), st.text(max_size=20), st.text(max_size=200))
def test_deliveries_read_and_write_like_the_generated_protobuf_code(
    chunk: Chunk | None, keepalive: bool, app_name: str, config: str
) -> None:
    delivery = Delivery(chunk=chunk, app_name=app_name, run_config_json=config)
    if chunk is None:
        delivery.keepalive = keepalive
    parsed = pb.Delivery.FromString(encode_delivery(delivery))
    assert parsed.app_name == app_name and parsed.run_config_json == config
    if chunk is None:
        assert not parsed.HasField("chunk") and parsed.keepalive == keepalive
    else:
        assert _fields(parsed.chunk) == _fields(chunk)
    back = decode_delivery(parsed.SerializeToString())
    assert (back.app_name, back.run_config_json) == (app_name, config)
    assert (back.chunk is None) == (chunk is None)
    if chunk is not None and back.chunk is not None:
        assert _fields(back.chunk) == _fields(chunk)


def test_a_decoded_chunk_views_the_received_bytes() -> None:
    received = encode_chunk(Chunk("t", 4096, 0, bytes(range(256)) * 16, b"d" * 16, True))
    chunk = decode_chunk(received)
    assert isinstance(chunk.data, memoryview) and chunk.data.obj is received
    assert bytes(chunk.data) == bytes(range(256)) * 16


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_a_protocol_error_or_a_harmless_chunk(data: bytes) -> None:
    for decode in (decode_chunk, decode_delivery):
        with contextlib.suppress(ProtocolError):  # anything else would fail the test
            decode(data)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x22\x05abc", "runs past the end"),  # data field longer than the message
        (b"\x10" + b"\xff" * 11, "varint longer"),
        (b"\x0a\x02\xff\xfe", "not UTF-8"),  # transfer id
        (b"\x0f", "wire type 7"),
        (b"\x22", "truncated varint"),
    ],
)
def test_malformed_chunks_name_their_problem(data: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        decode_chunk(data)
