"""Hostile and broken input: always a SerializationError that says why, never anything else."""

from __future__ import annotations

import mmap
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pollinate.errors import SerializationError
from pollinate.records import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from pollinate.serde import (
    message_from_bytes,
    message_to_bytes,
    recorddict_from_bytes,
    recorddict_to_bytes,
)
from pollinate.serde._proto.pollinate.v1 import envelope_pb2 as pb


def _small_message() -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}),
            "metrics": MetricRecord({"loss": 0.5, "n": 3, "hist": [1, 2]}),
            "config": ConfigRecord({"lr": 0.1, "opt": "sgd", "flags": [True, False]}),
        }
    )
    return Message(content, dst_node_id=9, message_type="train", group_id="3")


SMALL_MESSAGE = _small_message()
SMALL_FRAME = message_to_bytes(SMALL_MESSAGE)
# Where the data section starts: after the 16-byte prefix, the header and its padding.
SMALL_DATA_START = -(-(16 + struct.unpack_from("<I", SMALL_FRAME, 8)[0]) // 64) * 64


def frame(header: pb.Frame, data: bytes = b"", *, header_bytes: bytes | None = None) -> bytes:
    """A frame around any header, with a correct CRC, so the semantic checks are reached."""
    raw = header.SerializeToString() if header_bytes is None else header_bytes
    prefix = struct.pack("<4sB3sII", b"PLNT", 1, b"\0\0\0", len(raw), zlib.crc32(raw))
    head = prefix + raw
    return head + bytes(-len(head) % 64) + data


def array_frame(*descs: pb.ArrayDescriptor, data_nbytes: int = 128) -> bytes:
    header = pb.Frame(data_nbytes=data_nbytes)
    record = header.record_dict.records.add(name="a")
    record.array_record.arrays.extend(descs)
    return frame(header, bytes(data_nbytes))


def message_frame(**metadata: Any) -> pb.Frame:
    fields: dict[str, Any] = {"message_id": "m", "message_type": "train", "ttl": 10.0}
    fields.update(metadata)
    header = pb.Frame()
    header.message.metadata.CopyFrom(pb.Metadata(**fields))
    header.message.content.SetInParent()
    return header


def test_every_truncation_of_a_frame_is_refused() -> None:
    for length in range(len(SMALL_FRAME)):
        with pytest.raises(SerializationError):
            message_from_bytes(SMALL_FRAME[:length])


def test_truncation_error_says_expected_and_actual_length() -> None:
    cut = SMALL_FRAME[:-5]
    reason = rf"expected {len(SMALL_FRAME)} bytes, got {len(cut)}"
    with pytest.raises(SerializationError, match=reason):
        message_from_bytes(cut)


def test_every_single_bit_flip_is_refused_or_decodes_to_a_valid_message() -> None:
    for index in range(len(SMALL_FRAME)):
        for bit in range(8):
            corrupted = bytearray(SMALL_FRAME)
            corrupted[index] ^= 1 << bit
            try:
                msg = message_from_bytes(bytes(corrupted))
            except SerializationError:
                continue
            assert isinstance(msg, Message)
            assert index >= SMALL_DATA_START  # only array bytes are not checksummed


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_byte_corruption_is_refused_or_valid(data: st.DataObject) -> None:
    # Arrange
    corrupted = bytearray(SMALL_FRAME)
    index = data.draw(st.integers(0, len(corrupted) - 1))
    corrupted[index] = data.draw(st.integers(0, 255).filter(lambda b: b != SMALL_FRAME[index]))
    # Act / Assert
    try:
        msg = message_from_bytes(bytes(corrupted))
    except SerializationError:
        return
    assert isinstance(msg, Message)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_garbage_is_refused(garbage: bytes) -> None:
    with pytest.raises(SerializationError):
        message_from_bytes(garbage)
    with pytest.raises(SerializationError):
        recorddict_from_bytes(b"PLNT\x01\x00\x00\x00" + garbage)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.integers(0, 512))
def test_garbage_headers_with_a_valid_crc_are_refused_or_valid(raw: bytes, data_len: int) -> None:
    # The CRC is right, so this reaches the protobuf parser and the semantic checks.
    for read in (message_from_bytes, recorddict_from_bytes):
        try:
            result = read(frame(pb.Frame(), bytes(data_len), header_bytes=raw))
        except SerializationError:
            continue
        assert isinstance(result, (Message, RecordDict))


DESCRIPTORS = st.builds(
    pb.ArrayDescriptor,
    name=st.sampled_from(["a", "b", "c"]),
    dtype=st.sampled_from(["float32", "uint8", "bool", "float16", "complex64", "object", ""]),
    shape=st.lists(
        st.one_of(st.integers(0, 9), st.sampled_from([2**31, 2**32 + 1, 2**62, 2**64 - 1])),
        max_size=4,
    ),
    offset=st.one_of(st.sampled_from([0, 64, 128, 1, 2**64 - 64]), st.integers(0, 2**64 - 1)),
    nbytes=st.one_of(st.integers(0, 200), st.sampled_from([2**62, 2**64 - 1])),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(DESCRIPTORS, max_size=3), st.integers(0, 256))
def test_fuzzed_array_descriptors_are_refused_or_valid(
    descs: list[pb.ArrayDescriptor], data_nbytes: int
) -> None:
    try:
        rd = recorddict_from_bytes(array_frame(*descs, data_nbytes=data_nbytes))
    except SerializationError:
        return
    for array in rd["a"].values():
        assert array.nbytes <= data_nbytes


@pytest.mark.parametrize("value", ["text", 42, None, 3.5, [1, 2], {"a": 1}, object()])
def test_wrong_input_types_are_refused_naming_the_type(value: Any) -> None:
    with pytest.raises(SerializationError, match=rf"got {type(value).__name__}\b"):
        message_from_bytes(value)


def test_strided_and_released_buffers_are_refused() -> None:
    strided = memoryview(SMALL_FRAME)[::2]
    with pytest.raises(SerializationError, match="contiguous"):
        message_from_bytes(strided)
    released = memoryview(SMALL_FRAME)
    released.release()
    with pytest.raises(SerializationError, match="memoryview"):
        message_from_bytes(released)


def test_other_contiguous_buffers_are_accepted(tmp_path: Path) -> None:
    # Arrange
    two_dimensional = memoryview(SMALL_FRAME).cast("B", (1, len(SMALL_FRAME)))
    path = tmp_path / "frame.bin"
    path.write_bytes(SMALL_FRAME)
    # Act / Assert
    assert message_from_bytes(two_dimensional).metadata == SMALL_MESSAGE.metadata
    with path.open("rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        msg = message_from_bytes(mapped)  # type: ignore[arg-type]
        assert msg.content["arrays"]["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
        del msg  # the arrays are views of the map: drop them before it closes


def test_encoders_refuse_wrong_types() -> None:
    with pytest.raises(SerializationError, match="expected a Message, got RecordDict"):
        message_to_bytes(RecordDict())  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="expected a RecordDict, got dict"):
        recorddict_to_bytes({})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "shape",
    [[2**31, 2**31], [2**62], [2**64 - 1, 2**64 - 1, 2**64 - 1], [0, 2**63], [2**8] * 64],
)
def test_absurd_shapes_are_refused_without_allocating(shape: list[int]) -> None:
    # Arrange
    desc = pb.ArrayDescriptor(name="x", dtype="uint8", shape=shape, offset=0, nbytes=2**62)
    data = array_frame(desc, data_nbytes=64)
    tracemalloc.start()
    # Act / Assert (a hang would be caught by the suite's per-test timeout)
    try:
        with pytest.raises(SerializationError):
            recorddict_from_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_huge_data_section_claim_is_a_truncation_not_an_allocation() -> None:
    header = pb.Frame(data_nbytes=2**64 - 1)
    header.record_dict.SetInParent()
    with pytest.raises(SerializationError, match="truncated"):
        recorddict_from_bytes(frame(header))


def _desc(**fields: Any) -> pb.ArrayDescriptor:
    defaults: dict[str, Any] = {"name": "x", "dtype": "float32", "shape": [4], "nbytes": 16}
    defaults.update(fields)
    return pb.ArrayDescriptor(**defaults)


def _prefix_changed(offset: int, value: bytes) -> bytes:
    return SMALL_FRAME[:offset] + value + SMALL_FRAME[offset + len(value) :]


def _with_header(header: pb.Frame) -> bytes:
    return frame(header)


def _record_frame(record: pb.Record) -> bytes:
    header = pb.Frame()
    header.record_dict.records.append(record)
    return frame(header)


def _metric_frame(value: pb.Value) -> bytes:
    record = pb.Record(name="m")
    record.metric_record.items.add(name="k").value.CopyFrom(value)
    return _record_frame(record)


BAD_RECORDDICT_FRAMES: dict[str, tuple[bytes, str]] = {
    "magic": (b"GIF89a" + SMALL_FRAME[6:], "not a Pollinate frame"),
    "short magic": (b"PX", "not a Pollinate frame"),
    "version": (_prefix_changed(4, b"\x02"), "unsupported frame format version 2"),
    "reserved": (_prefix_changed(5, b"\x01"), "reserved"),
    "crc": (_prefix_changed(12, b"\0\0\0\0"), "CRC"),
    "header length": (_prefix_changed(8, struct.pack("<I", 2**32 - 1)), "truncated"),
    "trailing": (SMALL_FRAME + b"\0", "1 trailing bytes"),
    "protobuf": (frame(pb.Frame(), header_bytes=b"\xff\xff\xff"), "not valid protobuf"),
    "no payload": (frame(pb.Frame()), "neither a Message nor a RecordDict"),
    "wrong kind": (SMALL_FRAME, "holds a Message, not a RecordDict"),
    "dtype": (array_frame(_desc(dtype="object")), "unknown dtype 'object'"),
    "nbytes": (array_frame(_desc(nbytes=12)), "needs 16 bytes, but the descriptor says 12"),
    "ndim": (array_frame(_desc(shape=[1] * 65, nbytes=4)), "65 dimensions"),
    "bounds": (array_frame(_desc(offset=128)), "outside the data section"),
    "offset overflow": (array_frame(_desc(offset=2**64 - 64)), "outside the data section"),
    "alignment": (array_frame(_desc(offset=4)), "not a multiple of 64"),
    "overlap": (
        array_frame(_desc(name="x"), _desc(name="y", shape=[2], nbytes=8)),
        "overlaps",
    ),
    "duplicate array": (array_frame(_desc(), _desc(offset=64)), "two entries named 'x'"),
    "no record kind": (_record_frame(pb.Record(name="r")), "has no kind"),
    "bool metric": (_metric_frame(pb.Value(bool_value=True)), "is a bool_value"),
    "str metric": (_metric_frame(pb.Value(string_value="x")), "is a string_value"),
    "empty value": (_metric_frame(pb.Value()), "has no value"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECORDDICT_FRAMES))
def test_malformed_frames_name_the_problem(case: str) -> None:
    data, reason = BAD_RECORDDICT_FRAMES[case]
    with pytest.raises(SerializationError, match=reason):
        recorddict_from_bytes(data)


def test_duplicate_record_names_are_refused() -> None:
    header = pb.Frame()
    for _ in range(2):
        header.record_dict.records.add(name="same").config_record.SetInParent()
    with pytest.raises(SerializationError, match="two records are named 'same'"):
        recorddict_from_bytes(frame(header))


BAD_MESSAGE_HEADERS: dict[str, tuple[pb.Frame, str]] = {
    "message type": (message_frame(message_type="trian"), "message type 'trian'"),
    "empty action": (message_frame(message_type="train."), "message type 'train.'"),
    "zero ttl": (message_frame(ttl=0.0), "ttl must be positive"),
    "nan ttl": (message_frame(ttl=float("nan")), "ttl must be positive"),
    "wrong kind": (pb.Frame(record_dict=pb.RecordDict()), "holds a RecordDict, not a Message"),
}


@pytest.mark.parametrize("case", sorted(BAD_MESSAGE_HEADERS))
def test_malformed_messages_name_the_problem(case: str) -> None:
    header, reason = BAD_MESSAGE_HEADERS[case]
    with pytest.raises(SerializationError, match=reason):
        message_from_bytes(frame(header))


def test_message_without_metadata_or_body_is_refused() -> None:
    no_metadata = pb.Frame()
    no_metadata.message.content.SetInParent()
    no_body = message_frame()
    no_body.message.ClearField("content")
    with pytest.raises(SerializationError, match="no metadata"):
        message_from_bytes(frame(no_metadata))
    with pytest.raises(SerializationError, match="neither content nor an error"):
        message_from_bytes(frame(no_body))


def _message(**changes: Any) -> Message:
    return _small_message().with_metadata(**changes)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: _message(dst_node_id=-1), "dst_node_id"),
        (lambda: _message(run_id=2**63), "run_id"),
        (lambda: _message(message_type="bogus"), "message type 'bogus'"),
        (lambda: _message(ttl=float("nan")), "ttl"),
        (lambda: _message(group_id="\ud800"), "cannot serialize"),
        (
            lambda: _small_message().reply(error=Error(2**64, "x")),
            "error code",
        ),
    ],
)
def test_unrepresentable_messages_are_refused_on_encode(make: Any, reason: str) -> None:
    with pytest.raises(SerializationError, match=reason):
        message_to_bytes(make())


def test_metadata_is_rebuilt_exactly() -> None:
    back = message_from_bytes(SMALL_FRAME)
    assert isinstance(back.metadata, Metadata)
    assert back.metadata == SMALL_MESSAGE.metadata


def test_padding_after_the_header_must_be_zero() -> None:
    corrupted = bytearray(SMALL_FRAME)
    corrupted[SMALL_DATA_START - 1] = 1
    with pytest.raises(SerializationError, match="padding"):
        message_from_bytes(bytes(corrupted))
