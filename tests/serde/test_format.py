"""The byte layout matches the contract in proto/pollinate/v1/envelope.proto."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2

from pollinate.records import ArrayRecord, ConfigRecord, RecordDict
from pollinate.serde import frame_nbytes, recorddict_from_bytes, recorddict_to_bytes
from pollinate.serde._proto.pollinate.v1 import envelope_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]


def test_prefix_header_and_data_layout() -> None:
    # Arrange
    a: np.ndarray[Any, Any] = np.arange(5, dtype=np.int16)
    b: np.ndarray[Any, Any] = np.linspace(0, 1, 7, dtype=np.float64).reshape(7, 1)
    rd = RecordDict(
        {
            "arrays": ArrayRecord({"a": a, "empty": np.zeros((3, 0), np.uint8), "b": b}),
            "config": ConfigRecord({"lr": 0.5}),
        }
    )
    # Act
    data = recorddict_to_bytes(rd)
    # Assert: prefix
    magic, version, reserved, header_len, crc = struct.unpack_from("<4sB3sII", data)
    assert (magic, version, reserved) == (b"PLNT", 1, b"\0\0\0")
    header_bytes = data[16 : 16 + header_len]
    assert zlib.crc32(header_bytes) == crc
    # Assert: header
    header = pb.Frame.FromString(header_bytes)
    assert header.WhichOneof("payload") == "record_dict"
    records = header.record_dict.records
    assert [r.name for r in records] == ["arrays", "config"]
    descs = {d.name: d for d in records[0].array_record.arrays}
    assert [d.name for d in records[0].array_record.arrays] == ["a", "empty", "b"]
    assert (descs["a"].dtype, list(descs["a"].shape), descs["a"].nbytes) == ("int16", [5], 10)
    empty = descs["empty"]
    assert (empty.offset, empty.nbytes, list(empty.shape)) == (0, 0, [3, 0])
    assert records[1].config_record.items[0].value.double_value == 0.5
    # Assert: data section
    data_start = -(-(16 + header_len) // 64) * 64
    assert data[16 + header_len : data_start] == bytes(data_start - 16 - header_len)
    assert len(data) == data_start + header.data_nbytes
    for name, array in (("a", a), ("b", b)):
        desc = descs[name]
        assert desc.offset % 64 == 0
        start = data_start + desc.offset
        little_endian = array.astype(array.dtype.newbyteorder("<"))
        assert data[start : start + desc.nbytes] == little_endian.tobytes()
    assert descs["b"].offset == 64  # a takes 10 bytes, b starts at the next boundary


def test_a_frame_built_by_hand_from_the_contract_decodes() -> None:
    # Arrange: what a Go or Rust writer would do, without pollinate's encoder.
    header = pb.Frame()
    record = header.record_dict.records.add(name="arrays")
    record.array_record.arrays.add(name="m", dtype="uint16", shape=[2, 2], offset=0, nbytes=8)
    record.array_record.arrays.add(name="s", dtype="float32", shape=[], offset=64, nbytes=4)
    header.data_nbytes = 68
    raw = header.SerializeToString()
    head = struct.pack("<4sB3sII", b"PLNT", 1, b"\0\0\0", len(raw), zlib.crc32(raw)) + raw
    section = struct.pack("<4H", 1, 2, 3, 0xFFFF) + bytes(56) + struct.pack("<f", 2.5)
    data = head + bytes(-len(head) % 64) + section
    # Act
    rd = recorddict_from_bytes(data)
    # Assert
    assert rd["arrays"]["m"].tolist() == [[1, 2], [3, 0xFFFF]]
    assert rd["arrays"]["s"].size == 1 and float(rd["arrays"]["s"].item()) == 2.5


def test_frame_nbytes_counts_bytes_of_every_buffer_kind() -> None:
    assert frame_nbytes([b"ab", np.zeros(3, np.float64).data, memoryview(bytearray(5))]) == 31


def test_checked_in_protobuf_code_matches_the_proto(tmp_path: Path) -> None:
    # Arrange
    import grpc_tools  # noqa: F401 - make test installs it; `make proto` needs it too

    descriptor_set = tmp_path / "envelope.binpb"
    # Act: compile the .proto as `make proto` does, but to a descriptor (independent of
    # the protoc version, unlike the generated Python text)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            f"--descriptor_set_out={descriptor_set}",
            str(ROOT / "proto/pollinate/v1/envelope.proto"),
        ],
        check=True,
    )
    # Assert
    fresh = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file[0]
    for message in fresh.message_type:  # protoc adds json_name; generated code omits it
        assert not message.nested_type
        for field in message.field:
            field.ClearField("json_name")
    checked_in = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert fresh == checked_in, "the generated protobuf code is stale: run `make proto`"
