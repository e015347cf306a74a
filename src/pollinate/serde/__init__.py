"""Records and messages <-> bytes: protobuf envelopes, raw array buffers, no pickle.

A *frame* is a 16-byte prefix (magic ``PLNT``, format version, header length, header
CRC-32), a protobuf header (``proto/pollinate/v1/envelope.proto``, the language-neutral
contract, which documents the layout byte by byte), and a data section holding each
array's raw little-endian C-order bytes at 64-byte-aligned offsets.

Design notes:

- **Zero copy both ways.** ``*_to_segments`` returns the frame as buffers whose array
  parts are memoryviews of the arrays themselves, for ``writelines``/``sendmsg``/mmap;
  ``*_to_bytes`` joins them (one copy). Reading maps each array onto the input buffer
  with ``numpy.frombuffer``: no copy on little-endian hosts (big-endian hosts swap).
- **Hostile input is expected.** Every length, offset and shape is checked before it is
  used (with overflow-safe arithmetic), so malformed input raises
  :class:`~pollinate.errors.SerializationError` with the reason, never another exception,
  a hang, or an allocation sized by a length field. Nothing is unpickled or evaluated.
- Only this package imports the generated protobuf code in ``serde/_proto``. It is
  checked in; regenerate it with ``make proto`` after editing the ``.proto`` (protoc from
  grpcio-tools, with ``--python_out`` and ``--mypy_out`` for the ``.pyi`` stubs).

Examples
--------
>>> import numpy as np
>>> from pollinate.records import ArrayRecord, RecordDict
>>> rd = RecordDict({"arrays": ArrayRecord({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})})
>>> data = recorddict_to_bytes(rd)
>>> recorddict_from_bytes(data)["arrays"]["w"].tolist()
[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
"""

from pollinate.errors import SerializationError
from pollinate.serde._codec import (
    message_from_bytes,
    message_parts_from_content,
    message_to_bytes,
    message_to_segments,
    recorddict_from_bytes,
    recorddict_to_bytes,
    recorddict_to_segments,
)
from pollinate.serde._frame import Segment, frame_nbytes

__all__ = [
    "Segment",
    "SerializationError",
    "frame_nbytes",
    "message_from_bytes",
    "message_parts_from_content",
    "message_to_bytes",
    "message_to_segments",
    "recorddict_from_bytes",
    "recorddict_to_bytes",
    "recorddict_to_segments",
]
