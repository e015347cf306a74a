"""Round trips: what goes in comes out, exactly, and arrays are never copied."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pollinate.records import (
    SUPPORTED_DTYPES,
    ArrayRecord,
    ConfigRecord,
    Error,
    ErrorCode,
    Message,
    Metadata,
    MetricRecord,
    RecordDict,
)
from pollinate.serde import (
    frame_nbytes,
    message_from_bytes,
    message_parts_from_content,
    message_to_bytes,
    message_to_segments,
    recorddict_from_bytes,
    recorddict_to_bytes,
    recorddict_to_segments,
)

INT64 = st.integers(-(2**63), 2**63 - 1)
UINT64 = st.integers(0, 2**64 - 1)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    """Any supported dtype and shape; non-bool values are arbitrary bit patterns (NaNs too)."""
    dtype = np.dtype(draw(st.sampled_from(SUPPORTED_DTYPES)))
    shape = draw(SHAPES)
    if dtype == np.bool_:
        return draw(hnp.arrays(dtype, shape))
    size = math.prod(shape) * dtype.itemsize
    raw = draw(st.binary(min_size=size, max_size=size))
    return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


NAMES = st.text(max_size=8)
ARRAY_RECORDS = st.dictionaries(NAMES, arrays(), max_size=4).map(ArrayRecord)
METRIC_VALUES = st.one_of(
    INT64,
    st.floats(),
    st.lists(INT64, max_size=5),
    st.lists(st.floats(), min_size=1, max_size=5),
)
CONFIG_SCALARS: list[st.SearchStrategy[Any]] = [
    st.booleans(),
    INT64,
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=10),
]
CONFIG_VALUES = st.one_of(*CONFIG_SCALARS, *(st.lists(s, max_size=4) for s in CONFIG_SCALARS))
METRIC_RECORDS = st.dictionaries(NAMES, METRIC_VALUES, max_size=5).map(MetricRecord)
CONFIG_RECORDS = st.dictionaries(NAMES, CONFIG_VALUES, max_size=5).map(ConfigRecord)
RECORD_DICTS = st.dictionaries(
    NAMES, st.one_of(ARRAY_RECORDS, METRIC_RECORDS, CONFIG_RECORDS), max_size=4
).map(RecordDict)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    metadata = Metadata(
        run_id=draw(INT64),
        message_id=draw(st.text(max_size=32)),
        src_node_id=draw(UINT64),
        dst_node_id=draw(UINT64),
        reply_to_message_id=draw(st.text(max_size=32)),
        group_id=draw(st.text(max_size=8)),
        message_type=draw(st.sampled_from(["train", "evaluate", "query", "query.histogram"])),
        ttl=draw(st.floats(min_value=1e-300, allow_infinity=True)),
        created_at=draw(st.floats(allow_nan=False)),
    )
    if draw(st.booleans()):
        return Message.from_parts(metadata, draw(RECORD_DICTS), None)
    code = draw(st.one_of(st.sampled_from(list(ErrorCode)), INT64))
    return Message.from_parts(metadata, None, Error(code, draw(st.text(max_size=40))))


def _canonical(value: Any) -> Any:
    """Floats as their bits, so NaN payloads and -0.0 compare exactly."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return (type(value).__name__, value)


def assert_same_records(expected: RecordDict, actual: RecordDict) -> None:
    # Arrange-free helper: records equal by name, order, kind, dtype, shape and bytes.
    assert list(actual) == list(expected)
    for name, record in expected.items():
        got = actual[name]
        assert type(got) is type(record)
        assert list(got) == list(record)
        if isinstance(record, ArrayRecord):
            for key, array in record.items():
                assert got[key].dtype == array.dtype
                assert got[key].shape == array.shape
                assert got[key].tobytes() == array.tobytes()
        else:
            assert {k: _canonical(v) for k, v in got.items()} == {
                k: _canonical(v) for k, v in record.items()
            }


def test_every_supported_dtype_round_trips_its_bytes() -> None:
    # Arrange
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, size=8 * 7, dtype=np.uint8).tobytes()
    record = ArrayRecord(
        {
            name: np.arange(7) % 2 == 0 if name == "bool" else np.frombuffer(raw, name)[:7]
            for name in SUPPORTED_DTYPES
        }
    )
    rd = RecordDict({"arrays": record})
    # Act
    back = recorddict_from_bytes(recorddict_to_bytes(rd))
    # Assert
    assert_same_records(rd, back)
    assert [a.dtype.name for a in back["arrays"].values()] == list(SUPPORTED_DTYPES)


def test_special_float_values_round_trip_bit_exactly() -> None:
    # Arrange
    values = [np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45, 6e-8]
    record = ArrayRecord({d: np.array(values, dtype=d) for d in ("float16", "float32", "float64")})
    # Act
    back = recorddict_from_bytes(recorddict_to_bytes(RecordDict({"a": record})))["a"]
    # Assert
    for key, array in record.items():
        assert np.array_equal(back[key], array, equal_nan=True)
        assert back[key].tobytes() == array.tobytes()


@pytest.mark.parametrize("shape", [(0,), (3, 0, 2), (1,), (2, 3), (2, 1, 3, 1), (0, 0)])
def test_shapes_round_trip(shape: tuple[int, ...]) -> None:
    # Arrange
    array = np.arange(math.prod(shape), dtype=np.int32).reshape(shape)
    rd = RecordDict({"a": ArrayRecord({"x": array})})
    # Act
    back = recorddict_from_bytes(recorddict_to_bytes(rd))
    # Assert
    assert back["a"]["x"].shape == shape
    assert np.array_equal(back["a"]["x"], array)


def test_zero_dimensional_array_keeps_its_shape() -> None:
    rd = RecordDict({"a": ArrayRecord({"x": np.array(3.5, dtype=np.float32)})})
    back = recorddict_from_bytes(recorddict_to_bytes(rd))
    assert back["a"]["x"].shape == ()


def test_non_contiguous_and_big_endian_arrays_round_trip_as_values() -> None:
    # Arrange
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    record = ArrayRecord(
        {
            "fortran": np.asfortranarray(base),
            "strided": base[::2, ::3],
            "big": base.astype(">f8"),
        }
    )
    # Act
    back = recorddict_from_bytes(recorddict_to_bytes(RecordDict({"a": record})))["a"]
    # Assert
    assert np.array_equal(back["fortran"], base)
    assert np.array_equal(back["strided"], base[::2, ::3])
    assert np.array_equal(back["big"], base)
    assert back["big"].dtype == np.dtype("float64")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORD_DICTS)
def test_recorddicts_round_trip(rd: RecordDict) -> None:
    # Act
    data = recorddict_to_bytes(rd)
    back = recorddict_from_bytes(data)
    # Assert
    assert_same_records(rd, back)
    assert frame_nbytes(recorddict_to_segments(rd)) == len(data)
    assert b"".join(recorddict_to_segments(rd)) == data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_messages_round_trip(msg: Message) -> None:
    # Act
    data = message_to_bytes(msg)
    back = message_from_bytes(data)
    # Assert
    assert back.metadata == msg.metadata
    assert b"".join(message_to_segments(msg)) == data
    if msg.error is not None:
        assert back.error == msg.error
        known = msg.error.code in set(ErrorCode)
        assert type(back.error.code) is (ErrorCode if known else int)
        assert back.has_error()
    else:
        assert back.error is None
        assert_same_records(msg.content, back.content)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_a_message_frame_is_its_head_plus_its_contents_data_section(msg: Message) -> None:
    # The server stores a broadcast's content once and makes each node's frame from it.
    if msg.error is not None:
        return  # error replies carry no content; broadcasts are instructions
    content_frame = recorddict_to_bytes(msg.content)
    # Act
    head, data = message_parts_from_content(msg.metadata, content_frame)
    # Assert
    assert head + bytes(data) == message_to_bytes(msg)
    assert data.obj is content_frame  # a view of the stored content, not a copy


@settings(max_examples=100, deadline=None)
@given(METRIC_RECORDS, CONFIG_RECORDS)
def test_metric_and_config_values_keep_their_python_types(
    metrics: MetricRecord, config: ConfigRecord
) -> None:
    # Arrange
    rd = RecordDict({"m": metrics, "c": config})
    # Act
    back = recorddict_from_bytes(recorddict_to_bytes(rd))
    # Assert
    assert_same_records(rd, back)


def test_unknown_error_codes_stay_plain_ints() -> None:
    # Arrange
    request = Message(RecordDict(), dst_node_id=5, message_type="query.count")
    reply = request.reply(error=Error(1234, "custom failure"))
    # Act
    back = message_from_bytes(message_to_bytes(reply))
    # Assert
    assert back.error == Error(1234, "custom failure")
    assert back.error is not None and type(back.error.code) is int
    known = message_from_bytes(message_to_bytes(request.reply(error=Error(ErrorCode.TIMEOUT))))
    assert known.error is not None and known.error.code is ErrorCode.TIMEOUT


def test_decoded_arrays_are_read_only_views_of_bytes_input() -> None:
    # Arrange
    rd = RecordDict({"a": ArrayRecord({"w": np.arange(100.0), "b": np.ones((3, 4), np.int8)})})
    data = recorddict_to_bytes(rd)
    # Act
    back = recorddict_from_bytes(data)
    # Assert
    whole = np.frombuffer(data, np.uint8)
    for array in back["a"].values():
        assert np.shares_memory(array, whole)
        assert not array.flags.writeable


def test_decoded_arrays_are_writable_views_of_a_bytearray_and_64_byte_aligned() -> None:
    # Arrange
    rd = RecordDict({"a": ArrayRecord({"x": np.arange(3, dtype=np.int8), "y": np.arange(5.0)})})
    buffer = bytearray(recorddict_to_bytes(rd))
    # Act
    back = recorddict_from_bytes(memoryview(buffer))
    # Assert
    start = np.frombuffer(buffer, np.uint8).ctypes.data
    for array in back["a"].values():
        assert array.flags.writeable
        assert (array.ctypes.data - start) % 64 == 0
    back["a"]["y"][0] = 42.0
    assert recorddict_from_bytes(buffer)["a"]["y"][0] == 42.0


def test_segments_reference_the_arrays_without_copying() -> None:
    # Arrange
    weights: np.ndarray[Any, Any] = np.arange(1000, dtype=np.float32)
    bias: np.ndarray[Any, Any] = np.ones((10, 10), np.float64)
    msg = Message(
        RecordDict({"arrays": ArrayRecord({"w": weights, "b": bias})}),
        dst_node_id=1,
        message_type="train",
    )
    # Act
    segments = message_to_segments(msg)
    # Assert
    views = [np.frombuffer(s, np.uint8) for s in segments if isinstance(s, memoryview)]
    assert len(views) == 2
    assert np.shares_memory(views[0], weights)
    assert np.shares_memory(views[1], bias)
    assert all(len(s) < 64 + 200 for s in segments if isinstance(s, bytes))
    assert frame_nbytes(segments) == len(message_to_bytes(msg))


def test_large_array_round_trips_without_copy_on_decode() -> None:
    # Arrange
    big = np.random.default_rng(1).standard_normal(10_000_000, dtype=np.float32)
    rd = RecordDict({"arrays": ArrayRecord({"big": big})})
    # Act
    segments = recorddict_to_segments(rd)
    data = b"".join(segments)
    back = recorddict_from_bytes(data)["arrays"]["big"]
    # Assert
    assert any(isinstance(s, memoryview) and np.shares_memory(np.asarray(s), big) for s in segments)
    assert np.shares_memory(back, np.frombuffer(data, np.uint8))
    assert np.array_equal(back, big)
