"""GrpcGrid on the server's machine: stored replies and checkpoints (no server needed)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from pollinate.errors import ProtocolError, SerializationError
from pollinate.records import Message, MetricRecord, RecordDict
from pollinate.runtime.grpc.grid import GrpcGrid, _reply_frame
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


def test_a_checkpoint_written_in_the_background_fails_the_next_call(tmp_path: Path) -> None:
    grid = GrpcGrid("127.0.0.1:9", run_id=1, token="t", staging_dir=tmp_path)
    calls: list[pb.CheckpointFile] = []

    def refuse(request: pb.CheckpointFile, **_: object) -> None:
        calls.append(request)
        raise ProtocolError("refused")

    grid._stub.SaveCheckpointLocal = refuse
    grid._stub.RetireConsumed = lambda request, **_: pb.RetireConsumedResponse()
    state = RecordDict({"m": MetricRecord({"loss": 0.5})})
    grid.save_checkpoint(1, state)  # returns before the file is written

    with pytest.raises(ProtocolError, match="refused"):
        grid.save_checkpoint(2, state)  # round 1's error; round 2 is not written
    grid.save_checkpoint(3, state)
    with pytest.raises(ProtocolError, match="refused"):
        grid.close()
    assert [c.server_round for c in calls] == [1, 3]
    assert len(calls[0].sha256) == 64
    assert list(tmp_path.iterdir()) == []  # the refused files were removed


class _Unimplemented(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("server_retires", [True, False])
def test_consumed_replies_are_retired_before_the_checkpoint_is_written(
    tmp_path: Path, server_retires: bool
) -> None:
    # So the files of the round's replies are free for the checkpoint and the next
    # round's content; a server without the call (older) is no error.
    grid = GrpcGrid("127.0.0.1:9", run_id=1, token="t", staging_dir=tmp_path)
    calls: list[str] = []

    def retire(request: pb.RetireConsumedRequest, **_: object) -> pb.RetireConsumedResponse:
        calls.append("retire")
        if not server_retires:
            raise _Unimplemented()
        return pb.RetireConsumedResponse(retired=10)

    def save(request: pb.CheckpointFile, **_: object) -> pb.SendResponse:
        calls.append(f"save {request.server_round}")
        return pb.SendResponse()

    grid._stub.RetireConsumed = retire
    grid._stub.SaveCheckpointLocal = save
    state = RecordDict({"m": MetricRecord({"loss": 0.5})})
    grid.save_checkpoint(1, state)
    grid.save_checkpoint(2, state)
    grid.close()
    assert calls == ["retire", "save 1", "retire", "save 2"]
