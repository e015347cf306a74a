"""Records and messages <-> the protobuf header, arrays <-> the data section.

Writing fills a protobuf ``RecordDict`` and hands each array's memory to a
:class:`~pollinate.serde._frame.DataLayout`, which decides its offset. Reading checks
every descriptor before touching the buffer (dtype, shape arithmetic without overflow,
bounds, alignment, overlaps) and then maps each array onto the buffer with
``numpy.frombuffer``: no copy on little-endian hosts.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import ConfigError, SerializationError
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
    keys,
)
from pollinate.serde._frame import ALIGNMENT, DataLayout, ParsedFrame
from pollinate.serde._proto.pollinate.v1 import envelope_pb2 as pb

__all__ = [
    "decode_message",
    "decode_recorddict",
    "encode_message",
    "encode_recorddict",
]

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1
# NumPy refuses arrays whose byte size does not fit in a signed 64-bit index.
_MAX_ARRAY_NBYTES: Final = 2**63 - 1
_MAX_NDIM: Final = 64
_WIRE_DTYPES: Final = {name: np.dtype(name).newbyteorder("<") for name in SUPPORTED_DTYPES}
_BIG_ENDIAN_HOST: Final = sys.byteorder == "big"


# --------------------------------------------------------------------------- writing


def _check_int(what: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SerializationError(f"cannot serialize {what}: {value!r} is not an int")
    value = int(value)
    if not low <= value <= high:
        raise SerializationError(
            f"cannot serialize {what}: {value} is outside the wire range [{low}, {high}]"
        )
    return value


def _wire_bytes(array: NDArray[Any]) -> memoryview:
    """The array's bytes, little-endian and C-ordered, as a flat view (copy only if needed)."""
    if array.dtype.byteorder == ">" or (array.dtype.byteorder == "=" and _BIG_ENDIAN_HOST):
        array = array.astype(array.dtype.newbyteorder("<"))
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array.reshape(-1).data.cast("B")


def _encode_arrays(name: str, record: ArrayRecord, layout: DataLayout, out: pb.ArrayRecord) -> None:
    for key, array in record.items():
        if array.dtype.name not in _WIRE_DTYPES:
            raise SerializationError(
                f"cannot serialize array {key!r} of record {name!r}: dtype {array.dtype} "
                "cannot travel"
            )
        view = _wire_bytes(array)
        desc = out.arrays.add()
        desc.name = key
        desc.dtype = array.dtype.name
        desc.shape.extend(int(d) for d in array.shape)
        desc.offset = layout.add(view)
        desc.nbytes = view.nbytes


def _encode_int_list(what: str, values: list[Any], out: pb.SInt64List) -> None:
    out.SetInParent()  # an empty list must still be marked as present
    out.values.extend(_check_int(what, v, _INT64_MIN, _INT64_MAX) for v in values)


def _encode_metric(what: str, value: Any, out: pb.Value) -> None:
    if isinstance(value, bool):
        raise SerializationError(f"cannot serialize {what}: a bool is not a metric")
    if isinstance(value, int):
        out.sint64_value = _check_int(what, value, _INT64_MIN, _INT64_MAX)
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, list) and all(isinstance(v, float) for v in value) and value:
        out.double_list.values.extend(value)
    elif isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        _encode_int_list(what, value, out.sint64_list)
    else:
        raise SerializationError(
            f"cannot serialize {what}: {value!r} is not an int, float or a list of one of them"
        )


def _encode_config(what: str, value: Any, out: pb.Value) -> None:
    if isinstance(value, bool):
        out.bool_value = value
    elif isinstance(value, int):
        out.sint64_value = _check_int(what, value, _INT64_MIN, _INT64_MAX)
    elif isinstance(value, float):
        out.double_value = value
    elif isinstance(value, str):
        out.string_value = value
    elif isinstance(value, bytes):
        out.bytes_value = value
    elif isinstance(value, list) and not value:
        out.sint64_list.SetInParent()
    elif isinstance(value, list):
        # ConfigRecord guarantees one element type per list; the first one names it.
        kind = type(value[0])
        if not all(type(v) is kind for v in value):
            raise SerializationError(f"cannot serialize {what}: the list mixes types")
        if kind is bool:
            out.bool_list.values.extend(value)
        elif kind is int:
            _encode_int_list(what, value, out.sint64_list)
        elif kind is float:
            out.double_list.values.extend(value)
        elif kind is str:
            out.string_list.values.extend(value)
        elif kind is bytes:
            out.bytes_list.values.extend(value)
        else:
            raise SerializationError(f"cannot serialize {what}: lists of {kind.__name__}")
    else:
        raise SerializationError(f"cannot serialize {what}: {value!r} is not a config value")


def encode_recorddict(rd: RecordDict, layout: DataLayout, out: pb.RecordDict) -> None:
    """Fill ``out`` with ``rd``; array buffers go to ``layout``."""
    if not isinstance(rd, RecordDict):
        raise SerializationError(f"expected a RecordDict, got {type(rd).__name__}")
    out.SetInParent()  # an empty RecordDict must still be present in its oneof
    for name, record in rd.items():
        entry = out.records.add()
        entry.name = name
        if isinstance(record, ArrayRecord):
            entry.array_record.SetInParent()
            _encode_arrays(name, record, layout, entry.array_record)
        elif isinstance(record, MetricRecord):
            entry.metric_record.SetInParent()
            for key, value in record.items():
                item = entry.metric_record.items.add()
                item.name = key
                _encode_metric(f"metric {key!r} of record {name!r}", value, item.value)
        elif isinstance(record, ConfigRecord):
            entry.config_record.SetInParent()
            for key, value in record.items():
                item = entry.config_record.items.add()
                item.name = key
                _encode_config(f"config {key!r} of record {name!r}", value, item.value)
        else:
            raise SerializationError(
                f"cannot serialize record {name!r}: {type(record).__name__} is not a record"
            )


def _metadata_problem(message_type: str, ttl: float) -> str | None:
    """Why these fields make an invalid message (the rules of ``Message.__init__``), or None."""
    base = message_type.split(".", 1)[0]
    if base not in keys.MESSAGE_TYPES or message_type.endswith("."):
        return (
            f"message type {message_type!r} is not one of {', '.join(keys.MESSAGE_TYPES)} "
            "(optionally followed by '.<action>')"
        )
    if math.isnan(ttl) or ttl <= 0:
        return f"ttl must be positive seconds, got {ttl}"
    return None


def encode_message(msg: Message, layout: DataLayout, out: pb.Message) -> None:
    """Fill ``out`` with ``msg``; array buffers go to ``layout``."""
    if not isinstance(msg, Message):
        raise SerializationError(f"expected a Message, got {type(msg).__name__}")
    md = msg.metadata
    problem = _metadata_problem(md.message_type, md.ttl)
    if problem is not None:
        raise SerializationError(f"cannot serialize message {md.message_id}: {problem}")
    wire = out.metadata
    wire.SetInParent()
    wire.run_id = _check_int("run_id", md.run_id, _INT64_MIN, _INT64_MAX)
    wire.message_id = md.message_id
    wire.src_node_id = _check_int("src_node_id", md.src_node_id, 0, _UINT64_MAX)
    wire.dst_node_id = _check_int("dst_node_id", md.dst_node_id, 0, _UINT64_MAX)
    wire.reply_to_message_id = md.reply_to_message_id
    wire.group_id = md.group_id
    wire.message_type = md.message_type
    wire.ttl = md.ttl
    wire.created_at = md.created_at
    error = msg.error
    if error is not None:
        out.error.SetInParent()
        out.error.code = _check_int("error code", error.code, _INT64_MIN, _INT64_MAX)
        out.error.reason = error.reason
    else:
        encode_recorddict(msg.content, layout, out.content)


# --------------------------------------------------------------------------- reading


class _ArrayReader:
    """Maps array descriptors onto a verified frame, checking each one first."""

    def __init__(self, frame: ParsedFrame) -> None:
        self._frame = frame
        self._regions: list[tuple[int, int, str]] = []

    def read(self, where: str, desc: pb.ArrayDescriptor) -> NDArray[Any]:
        dtype = _WIRE_DTYPES.get(desc.dtype)
        if dtype is None:
            raise SerializationError(
                f"{where}: unknown dtype {desc.dtype!r} (known: {', '.join(SUPPORTED_DTYPES)})"
            )
        shape = tuple(desc.shape)
        if len(shape) > _MAX_NDIM:
            raise SerializationError(f"{where}: {len(shape)} dimensions, at most {_MAX_NDIM}")
        # Multiply step by step and stop as soon as the size is impossible, so a hostile
        # shape like (2**63, 2**63, ...) costs nothing. Zero dims are skipped here because
        # NumPy also insists that the non-zero dims of an empty array fit in an index.
        nonzero_nbytes = dtype.itemsize
        for dim in shape:
            if dim:
                nonzero_nbytes *= dim
                if nonzero_nbytes > _MAX_ARRAY_NBYTES:
                    raise SerializationError(
                        f"{where}: shape {list(shape)} of {desc.dtype} is too large for any array"
                    )
        count = 0 if 0 in shape else nonzero_nbytes // dtype.itemsize
        if count * dtype.itemsize != desc.nbytes:
            raise SerializationError(
                f"{where}: shape {list(shape)} of {desc.dtype} needs "
                f"{count * dtype.itemsize} bytes, but the descriptor says {desc.nbytes}"
            )
        if desc.offset % ALIGNMENT:
            raise SerializationError(
                f"{where}: offset {desc.offset} is not a multiple of {ALIGNMENT}"
            )
        end = desc.offset + desc.nbytes
        if end > self._frame.data_nbytes:
            raise SerializationError(
                f"{where}: bytes [{desc.offset}, {end}) lie outside the data section "
                f"of {self._frame.data_nbytes} bytes"
            )
        if desc.nbytes:
            self._regions.append((desc.offset, end, where))
        array = np.frombuffer(
            self._frame.buffer,
            dtype=dtype,
            count=count,
            offset=self._frame.data_start + desc.offset,
        ).reshape(shape)
        if _BIG_ENDIAN_HOST:
            array = array.astype(dtype.newbyteorder("="))
        return array

    def check_overlaps(self) -> None:
        """Refuse frames where two arrays share bytes (a write to one would change both)."""
        self._regions.sort()
        pairs = zip(self._regions, self._regions[1:], strict=False)
        for (_, end, first), (start, _, second) in pairs:
            if start < end:
                raise SerializationError(f"{second} overlaps {first} in the data section")


def _decode_metric(where: str, value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "sint64_value":
        return value.sint64_value
    if kind == "double_value":
        return value.double_value
    if kind == "sint64_list":
        return list(value.sint64_list.values)
    if kind == "double_list":
        return list(value.double_list.values)
    if kind is None:
        raise SerializationError(f"{where} has no value")
    raise SerializationError(
        f"{where} is a {kind}; metrics are sint64, double, or a list of one of them"
    )


def _decode_config(where: str, value: pb.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind is None:
        raise SerializationError(f"{where} has no value")
    if kind.endswith("_list"):
        return list(getattr(value, kind).values)
    return getattr(value, kind)


def _decode_record(
    name: str, record: pb.Record, reader: _ArrayReader
) -> ArrayRecord | MetricRecord | ConfigRecord:
    kind = record.WhichOneof("kind")
    values: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if key in values:
            raise SerializationError(f"record {name!r} has two entries named {key!r}")
        values[key] = value

    if kind == "array_record":
        for desc in record.array_record.arrays:
            put(desc.name, reader.read(f"array {desc.name!r} of record {name!r}", desc))
        return ArrayRecord(values)
    if kind == "metric_record":
        for item in record.metric_record.items:
            put(item.name, _decode_metric(f"metric {item.name!r} of record {name!r}", item.value))
        return MetricRecord(values)
    if kind == "config_record":
        for item in record.config_record.items:
            put(item.name, _decode_config(f"config {item.name!r} of record {name!r}", item.value))
        return ConfigRecord(values)
    raise SerializationError(f"record {name!r} has no kind (array, metric or config record)")


def _decode_recorddict(wire: pb.RecordDict, reader: _ArrayReader) -> RecordDict:
    records: dict[str, ArrayRecord | MetricRecord | ConfigRecord] = {}
    for record in wire.records:
        if record.name in records:
            raise SerializationError(f"two records are named {record.name!r}")
        records[record.name] = _decode_record(record.name, record, reader)
    reader.check_overlaps()
    try:
        return RecordDict(records)
    except ConfigError as exc:  # cannot happen for records built above; keep the contract
        raise SerializationError(str(exc)) from exc


def decode_recorddict(frame: ParsedFrame) -> RecordDict:
    """The RecordDict of a frame that holds a bare RecordDict."""
    kind = frame.header.WhichOneof("payload")
    if kind != "record_dict":
        raise SerializationError(_wrong_payload(kind, "a RecordDict", "message_from_bytes"))
    try:
        return _decode_recorddict(frame.header.record_dict, _ArrayReader(frame))
    except ConfigError as exc:  # records refuse a value the checks above let through
        raise SerializationError(f"invalid record content: {exc}") from exc


def decode_message(frame: ParsedFrame) -> Message:
    """The Message of a frame that holds a Message."""
    kind = frame.header.WhichOneof("payload")
    if kind != "message":
        raise SerializationError(_wrong_payload(kind, "a Message", "recorddict_from_bytes"))
    wire = frame.header.message
    if not wire.HasField("metadata"):
        raise SerializationError("the message has no metadata")
    md = wire.metadata
    problem = _metadata_problem(md.message_type, md.ttl)
    if problem is not None:
        raise SerializationError(f"invalid message {md.message_id!r}: {problem}")
    metadata = Metadata(
        run_id=md.run_id,
        message_id=md.message_id,
        src_node_id=md.src_node_id,
        dst_node_id=md.dst_node_id,
        reply_to_message_id=md.reply_to_message_id,
        group_id=md.group_id,
        message_type=md.message_type,
        ttl=md.ttl,
        created_at=md.created_at,
    )
    body = wire.WhichOneof("body")
    content: RecordDict | None = None
    error: Error | None = None
    try:
        if body == "content":
            content = _decode_recorddict(wire.content, _ArrayReader(frame))
        elif body == "error":
            error = Error(_error_code(wire.error.code), wire.error.reason)
        else:
            raise SerializationError("the message has neither content nor an error")
        return Message.from_parts(metadata, content, error)
    except ConfigError as exc:
        raise SerializationError(f"invalid message content: {exc}") from exc


def _error_code(code: int) -> ErrorCode | int:
    """A known code as its ErrorCode; codes from newer writers stay plain ints."""
    try:
        return ErrorCode(code)
    except ValueError:
        return code


def _wrong_payload(kind: str | None, expected: str, other_function: str) -> str:
    if kind is None:
        return "the frame header holds neither a Message nor a RecordDict"
    found = "a Message" if kind == "message" else "a RecordDict"
    return f"the frame holds {found}, not {expected}; read it with {other_function}"
