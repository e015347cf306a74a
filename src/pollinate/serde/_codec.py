"""The public encode/decode functions: records and messages to frames and back."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from google.protobuf.message import EncodeError

from pollinate.errors import SerializationError
from pollinate.records import Message, Metadata, RecordDict
from pollinate.serde._frame import DataLayout, Segment, frame_nbytes, parse_frame
from pollinate.serde._proto.pollinate.v1 import envelope_pb2 as pb
from pollinate.serde._records import (
    decode_message,
    decode_recorddict,
    encode_message,
    encode_recorddict,
)

__all__ = [
    "frame_nbytes",
    "message_from_bytes",
    "message_parts_from_content",
    "message_to_bytes",
    "message_to_segments",
    "recorddict_from_bytes",
    "recorddict_to_bytes",
    "recorddict_to_segments",
]

_T = TypeVar("_T")


def _to_segments(fill: Callable[[pb.Frame, DataLayout], None]) -> list[Segment]:
    header = pb.Frame()
    layout = DataLayout()
    try:
        fill(header, layout)
        header.data_nbytes = layout.nbytes
        header_bytes = header.SerializeToString(deterministic=True)
    except SerializationError:
        raise
    except (ValueError, TypeError, EncodeError) as exc:
        # protobuf refuses e.g. a str with lone surrogates (not UTF-8) or a non-str name
        raise SerializationError(f"cannot serialize: {exc}") from exc
    return layout.segments(header_bytes)


def message_to_segments(msg: Message) -> list[Segment]:
    """Serialize a message as a list of buffers, without copying array data.

    The concatenation of the buffers is exactly :func:`message_to_bytes`. Array buffers
    are read-only memoryviews of the message's own arrays, so write the segments out
    (``file.writelines``, ``socket.sendmsg``, into an mmap) before changing those arrays.

    Raises
    ------
    SerializationError
        If a value cannot be represented on the wire (e.g. an int beyond 64 bits).

    Examples
    --------
    >>> import numpy as np
    >>> from pollinate.records import ArrayRecord
    >>> msg = Message(RecordDict({"arrays": ArrayRecord({"w": np.ones(1000)})}),
    ...               dst_node_id=1, message_type="train")
    >>> segments = message_to_segments(msg)
    >>> frame_nbytes(segments) == len(message_to_bytes(msg))
    True
    """
    return _to_segments(lambda header, layout: encode_message(msg, layout, header.message))


def recorddict_to_segments(rd: RecordDict) -> list[Segment]:
    """Serialize a bare RecordDict as a list of buffers; see :func:`message_to_segments`."""
    return _to_segments(lambda header, layout: encode_recorddict(rd, layout, header.record_dict))


def message_to_bytes(msg: Message) -> bytes:
    """Serialize a message to one ``bytes`` frame (one copy of the array data).

    Examples
    --------
    >>> msg = Message(RecordDict(), dst_node_id=3, message_type="evaluate", group_id="2")
    >>> back = message_from_bytes(message_to_bytes(msg))
    >>> back.metadata == msg.metadata and back.content == msg.content
    True
    """
    return b"".join(message_to_segments(msg))


def recorddict_to_bytes(rd: RecordDict) -> bytes:
    """Serialize a bare RecordDict to one ``bytes`` frame.

    Examples
    --------
    >>> from pollinate.records import MetricRecord
    >>> rd = RecordDict({"metrics": MetricRecord({"loss": 0.5})})
    >>> recorddict_from_bytes(recorddict_to_bytes(rd)) == rd
    True
    """
    return b"".join(recorddict_to_segments(rd))


def message_from_bytes(data: bytes | bytearray | memoryview) -> Message:
    """Read a message from a frame, mapping arrays onto ``data`` without copying.

    The arrays of the result are views of ``data`` (read-only if ``data`` is, e.g.
    ``bytes``), so they keep it alive; copy an array to let the buffer go. Any
    contiguous buffer works (``bytes``, ``bytearray``, ``memoryview``, ``mmap``).

    Raises
    ------
    SerializationError
        For anything that is not exactly one valid frame holding a message: the error
        says what is wrong (truncated, corrupted header, bad array descriptor, ...).
    """
    return decode_message(parse_frame(data))


def recorddict_from_bytes(data: bytes | bytearray | memoryview) -> RecordDict:
    """Read a bare RecordDict from a frame; see :func:`message_from_bytes`."""
    return decode_recorddict(parse_frame(data))


def message_parts_from_content(
    metadata: Metadata, content_frame: bytes | bytearray | memoryview
) -> tuple[bytes, memoryview]:
    """A message's frame as ``(head, data)``, its data section shared with a content frame.

    ``content_frame`` is a RecordDict frame (:func:`recorddict_to_segments`); the message
    with ``metadata`` and that content has the same data section, byte for byte, so
    ``head + data`` is exactly :func:`message_to_bytes` of it while ``data`` is a view of
    ``content_frame``. A server sending one content to many nodes stores it once and makes
    only each node's small head.

    Raises
    ------
    SerializationError
        If ``content_frame`` is not a valid RecordDict frame.

    Examples
    --------
    >>> import numpy as np
    >>> from pollinate.records import ArrayRecord
    >>> content = RecordDict({"arrays": ArrayRecord({"w": np.arange(100.0)})})
    >>> msg = Message(content, dst_node_id=7, message_type="train")
    >>> head, data = message_parts_from_content(msg.metadata, recorddict_to_bytes(content))
    >>> head + bytes(data) == message_to_bytes(msg)
    True
    """
    parsed = parse_frame(content_frame)
    content = decode_recorddict(parsed)
    segments = message_to_segments(Message.from_parts(metadata, content, None))
    head = bytes(segments[0])
    data = parsed.buffer[parsed.data_start : parsed.data_start + parsed.data_nbytes]
    if frame_nbytes(segments) - len(head) != data.nbytes:  # pragma: no cover - format bug
        raise SerializationError("the message's data section differs from its content's")
    return head, data
