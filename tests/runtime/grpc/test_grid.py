"""GrpcGrid's reading of stored replies on the server's machine (no server needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pollinate.errors import SerializationError
from pollinate.records import Message, MetricRecord, RecordDict
from pollinate.runtime.grpc.grid import _reply_frame
from pollinate.serde import message_from_bytes, message_to_bytes
from pollinate.serde._proto.pollinate.v1 import service_pb2 as pb


def _frame() -> bytes:
    instruction = Message(RecordDict(), dst_node_id=3, message_type="train", group_id="1")
    return message_to_bytes(instruction.reply(RecordDict({"m": MetricRecord({"loss": 0.5})})))


def test_a_reply_comes_inline_or_from_its_file(tmp_path: Path) -> None:
    frame = _frame()
    path = tmp_path / "reply.bin"
    path.write_bytes(frame)

    size = len(frame)

    inline = _reply_frame(pb.ReplyLocation(reply_to_message_id="i", size=size, frame=frame))
    mapped = _reply_frame(pb.ReplyLocation(reply_to_message_id="i", size=size, path=str(path)))

    assert bytes(inline) == bytes(mapped) == frame
    assert message_from_bytes(inline).content["m"]["loss"] == 0.5


def test_a_reply_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    frame = _frame()
    path = tmp_path / "reply.bin"
    path.write_bytes(frame[:-8])

    with pytest.raises(SerializationError, match="expected"):
        _reply_frame(pb.ReplyLocation(reply_to_message_id="i", size=len(frame), frame=frame[:-8]))
    with pytest.raises(SerializationError, match="expected"):
        _reply_frame(pb.ReplyLocation(reply_to_message_id="i", size=len(frame), path=str(path)))
