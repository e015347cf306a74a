"""The chunk-carrying messages on the wire, encoded and decoded without protobuf's copies.

``Chunk`` and ``Delivery`` (``proto/pollinate/v1/service.proto``) carry up to 4 MiB of
frame bytes each. Through the protobuf library a chunk's bytes were copied four times per
hop (into the message, into the enclosing Delivery, by ``SerializeToString``, and again
when parsed); together they cost more CPU than anything else in a deployment round. Here
the few small fields go through protobuf as usual and the ``data`` field is written and
read by hand: one join on the way out, a zero-copy view on the way in. The bytes are
exactly the schema's encoding, so any protobuf implementation (another language's node,
a test's generated stub) reads and writes them.

The gRPC services are registered, and their stubs made, with these (de)serializers for
the methods that carry chunks and with the generated protobuf ones for the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from pollinate.errors import ProtocolError
from pollinate.serde._proto.pollinate.v1 import service_pb2 as pb
from pollinate.serde._proto.pollinate.v1 import service_pb2_grpc as rpc

__all__ = [
    "Chunk",
    "ChunkLike",
    "Delivery",
    "add_fleet_servicer",
    "add_grid_io_servicer",
    "decode_chunk",
    "decode_delivery",
    "encode_chunk",
    "encode_delivery",
    "fleet_stub",
    "grid_io_stub",
]

_LEN = 2  # protobuf wire type of length-delimited fields
_VARINT = 0
_CHUNK_DATA_TAG = bytes([(4 << 3) | _LEN])  # Chunk.data = 4
_DELIVERY_CHUNK_TAG = bytes([(1 << 3) | _LEN])  # Delivery.chunk = 1


class ChunkLike(Protocol):
    """What a chunk has, whether made here or by generated protobuf code."""

    transfer_id: str
    total_size: int
    index: int
    data: bytes | memoryview
    digest: bytes
    last: bool


@dataclass(slots=True)
class Chunk:
    """One piece of a frame (the schema's ``Chunk``); ``data`` may view a larger buffer."""

    transfer_id: str
    total_size: int
    index: int
    data: bytes | memoryview
    digest: bytes
    last: bool


@dataclass(slots=True)
class Delivery:
    """What a node's subscription stream carries (the schema's ``Delivery``)."""

    chunk: Chunk | None = None
    keepalive: bool = False
    offer: pb.BulkOffer | None = None
    app_name: str = ""
    app_version: str = ""
    run_config_json: str = ""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _chunk_parts(chunk: ChunkLike) -> list[bytes | memoryview]:
    head = pb.Chunk(
        transfer_id=chunk.transfer_id,
        total_size=chunk.total_size,
        index=chunk.index,
        digest=chunk.digest,
        last=chunk.last,
    ).SerializeToString()
    data = chunk.data
    if not len(data):
        return [head]
    return [head, _CHUNK_DATA_TAG, _varint(len(data)), data]


def encode_chunk(chunk: ChunkLike) -> bytes:
    """The schema's encoding of a chunk, its data copied once."""
    return b"".join(_chunk_parts(chunk))


def encode_delivery(delivery: Delivery) -> bytes:
    """The schema's encoding of a delivery, its chunk's data copied once."""
    rest = pb.Delivery(
        app_name=delivery.app_name,
        app_version=delivery.app_version,
        run_config_json=delivery.run_config_json,
    )
    if delivery.keepalive:
        rest.keepalive = True
    if delivery.offer is not None:
        rest.offer.CopyFrom(delivery.offer)
    tail = rest.SerializeToString()
    if delivery.chunk is None:
        return tail
    parts = _chunk_parts(delivery.chunk)
    size = sum(len(part) for part in parts)
    return b"".join([_DELIVERY_CHUNK_TAG, _varint(size), *parts, tail])


def _read_varint(view: memoryview, position: int, what: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(view):
            raise ProtocolError(f"malformed {what}: truncated varint")
        byte = view[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
        if shift > 63:
            raise ProtocolError(f"malformed {what}: varint longer than 10 bytes")


def _fields(view: memoryview, what: str) -> Iterator[tuple[int, int, int | memoryview]]:
    """``(field number, wire type, value)`` of each field; unknown fields are skipped."""
    position, end = 0, len(view)
    while position < end:
        key, position = _read_varint(view, position, what)
        number, wire_type = key >> 3, key & 7
        value: int | memoryview
        if wire_type == _VARINT:
            value, position = _read_varint(view, position, what)
        elif wire_type == _LEN:
            length, position = _read_varint(view, position, what)
            if position + length > end:
                raise ProtocolError(f"malformed {what}: field {number} runs past the end")
            value, position = view[position : position + length], position + length
        elif wire_type in (1, 5):  # fixed64 / fixed32: no such field here, skip it
            position += 8 if wire_type == 1 else 4
            if position > end:
                raise ProtocolError(f"malformed {what}: field {number} runs past the end")
            continue
        else:
            raise ProtocolError(f"malformed {what}: wire type {wire_type} of field {number}")
        yield number, wire_type, value


def _text(value: int | memoryview, what: str) -> str:
    if isinstance(value, int):
        raise ProtocolError(f"malformed {what}: a text field holds a number")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"malformed {what}: text that is not UTF-8") from None


def _number(value: int | memoryview, what: str) -> int:
    if not isinstance(value, int):
        raise ProtocolError(f"malformed {what}: a number field holds bytes")
    return value


def _decode_chunk_view(view: memoryview) -> Chunk:
    chunk = Chunk(transfer_id="", total_size=0, index=0, data=b"", digest=b"", last=False)
    for number, _, value in _fields(view, "chunk"):
        if number == 1:
            chunk.transfer_id = _text(value, "chunk")
        elif number == 2:
            chunk.total_size = _number(value, "chunk")
        elif number == 3:
            chunk.index = _number(value, "chunk")
        elif number == 4:
            if isinstance(value, int):
                raise ProtocolError("malformed chunk: data is a number")
            chunk.data = value
        elif number == 5:
            if isinstance(value, int):
                raise ProtocolError("malformed chunk: digest is a number")
            chunk.digest = bytes(value)
        elif number == 6:
            chunk.last = bool(_number(value, "chunk"))
    return chunk


def decode_chunk(data: bytes) -> Chunk:
    """A chunk from its encoding; ``data`` is a view of the received bytes (no copy).

    Raises
    ------
    ProtocolError
        If the bytes are not a valid encoding of the schema's ``Chunk``.
    """
    return _decode_chunk_view(memoryview(data))


def decode_delivery(data: bytes) -> Delivery:
    """A delivery from its encoding; its chunk's data is a view of ``data`` (no copy).

    Raises
    ------
    ProtocolError
        If the bytes are not a valid encoding of the schema's ``Delivery``.
    """
    delivery = Delivery()
    for number, _, value in _fields(memoryview(data), "delivery"):
        if number == 1:
            if isinstance(value, int):
                raise ProtocolError("malformed delivery: chunk is a number")
            delivery.chunk = _decode_chunk_view(value)
        elif number == 2:
            delivery.keepalive = bool(_number(value, "delivery"))
        elif number == 3:
            delivery.app_name = _text(value, "delivery")
        elif number == 4:
            delivery.app_version = _text(value, "delivery")
        elif number == 5:
            delivery.run_config_json = _text(value, "delivery")
        elif number == 6:
            if isinstance(value, int):
                raise ProtocolError("malformed delivery: offer is a number")
            try:
                delivery.offer = pb.BulkOffer.FromString(bytes(value))
            except DecodeError:
                raise ProtocolError("malformed delivery: a bad bulk offer") from None
    return delivery


# -- services and stubs -------------------------------------------------------------------
def _register(server: grpc.Server, service: str, handlers: dict[str, Any]) -> None:
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def add_fleet_servicer(servicer: Any, server: grpc.Server) -> None:
    """Register the Fleet service (what nodes call)."""
    _register(
        server,
        "pollinate.v1.Fleet",
        {
            "Register": grpc.unary_unary_rpc_method_handler(
                servicer.Register,
                request_deserializer=pb.RegisterRequest.FromString,
                response_serializer=pb.RegisterResponse.SerializeToString,
            ),
            "Heartbeat": grpc.unary_unary_rpc_method_handler(
                servicer.Heartbeat,
                request_deserializer=pb.HeartbeatRequest.FromString,
                response_serializer=pb.HeartbeatResponse.SerializeToString,
            ),
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                servicer.Subscribe,
                request_deserializer=pb.SubscribeRequest.FromString,
                response_serializer=encode_delivery,
            ),
            "PushReply": grpc.stream_unary_rpc_method_handler(
                servicer.PushReply,
                request_deserializer=decode_chunk,
                response_serializer=pb.PushReplyResponse.SerializeToString,
            ),
        },
    )


def add_grid_io_servicer(servicer: Any, server: grpc.Server) -> None:
    """Register the GridIo service (what a run's ServerApp process calls)."""

    def unary(method: Callable[..., Any], request: Any, response: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            method,
            request_deserializer=request.FromString,
            response_serializer=response.SerializeToString,
        )

    def upload(method: Callable[..., Any], response: Any) -> Any:
        return grpc.stream_unary_rpc_method_handler(
            method,
            request_deserializer=decode_chunk,
            response_serializer=response.SerializeToString,
        )

    def download(method: Callable[..., Any], request: Any) -> Any:
        return grpc.unary_stream_rpc_method_handler(
            method, request_deserializer=request.FromString, response_serializer=encode_chunk
        )

    _register(
        server,
        "pollinate.v1.GridIo",
        {
            "ListNodes": unary(servicer.ListNodes, pb.ListNodesRequest, pb.ListNodesResponse),
            "Send": upload(servicer.Send, pb.SendResponse),
            "SendBroadcast": upload(servicer.SendBroadcast, pb.SendBroadcastResponse),
            "SendBroadcastLocal": unary(
                servicer.SendBroadcastLocal, pb.BroadcastFile, pb.SendBroadcastResponse
            ),
            "Receive": download(servicer.Receive, pb.ReceiveRequest),
            "ReceiveLocal": grpc.unary_stream_rpc_method_handler(
                servicer.ReceiveLocal,
                request_deserializer=pb.ReceiveRequest.FromString,
                response_serializer=pb.ReplyLocation.SerializeToString,
            ),
            "SaveCheckpoint": upload(servicer.SaveCheckpoint, pb.SendResponse),
            "SaveCheckpointLocal": unary(
                servicer.SaveCheckpointLocal, pb.CheckpointFile, pb.SendResponse
            ),
            "LoadCheckpoint": download(servicer.LoadCheckpoint, pb.CheckpointRequest),
            "RetireConsumed": unary(
                servicer.RetireConsumed, pb.RetireConsumedRequest, pb.RetireConsumedResponse
            ),
        },
    )


def fleet_stub(channel: grpc.Channel) -> Any:
    """The Fleet stub, its chunk-carrying methods using this module's encoding."""
    stub: Any = rpc.FleetStub(channel)
    stub.Subscribe = channel.unary_stream(
        "/pollinate.v1.Fleet/Subscribe",
        request_serializer=pb.SubscribeRequest.SerializeToString,
        response_deserializer=decode_delivery,
    )
    stub.PushReply = channel.stream_unary(
        "/pollinate.v1.Fleet/PushReply",
        request_serializer=encode_chunk,
        response_deserializer=pb.PushReplyResponse.FromString,
    )
    return stub


def grid_io_stub(channel: grpc.Channel) -> Any:
    """The GridIo stub, its chunk-carrying methods using this module's encoding."""
    stub: Any = rpc.GridIoStub(channel)
    for name, response in (
        ("Send", pb.SendResponse),
        ("SendBroadcast", pb.SendBroadcastResponse),
        ("SaveCheckpoint", pb.SendResponse),
    ):
        setattr(
            stub,
            name,
            channel.stream_unary(
                f"/pollinate.v1.GridIo/{name}",
                request_serializer=encode_chunk,
                response_deserializer=response.FromString,
            ),
        )
    for name, request in (("Receive", pb.ReceiveRequest), ("LoadCheckpoint", pb.CheckpointRequest)):
        setattr(
            stub,
            name,
            channel.unary_stream(
                f"/pollinate.v1.GridIo/{name}",
                request_serializer=request.SerializeToString,
                response_deserializer=decode_chunk,
            ),
        )
    return stub
