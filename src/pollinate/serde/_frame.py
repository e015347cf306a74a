"""The frame: fixed prefix, protobuf header, 64-byte-aligned data section.

This module knows bytes and offsets, not records: it lays array buffers out behind a
header on the way out and checks the prefix, length and checksum on the way in. The
layout is specified at the top of ``proto/pollinate/v1/envelope.proto``.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias, Union

from pollinate.errors import SerializationError
from pollinate.serde._proto.pollinate.v1 import envelope_pb2 as pb

__all__ = [
    "ALIGNMENT",
    "FORMAT_VERSION",
    "MAGIC",
    "PREFIX_NBYTES",
    "DataLayout",
    "ParsedFrame",
    "Segment",
    "align",
    "as_byte_view",
    "frame_nbytes",
    "parse_frame",
]

#: One buffer of a frame: small ``bytes`` (prefix, header, padding) or an array's memory.
Segment: TypeAlias = Union[bytes, memoryview]  # noqa: UP007 - a runtime alias on 3.10

MAGIC: Final = b"PLNT"
FORMAT_VERSION: Final = 1
ALIGNMENT: Final = 64
# magic, version, 3 reserved bytes, header length, header CRC-32; all little-endian.
_PREFIX: Final = struct.Struct("<4sB3sII")
PREFIX_NBYTES: Final = _PREFIX.size
_RESERVED: Final = b"\x00\x00\x00"
_MAX_HEADER_NBYTES: Final = 2**32 - 1
_ZEROS: Final = bytes(ALIGNMENT)


def align(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`ALIGNMENT`."""
    return -(-n // ALIGNMENT) * ALIGNMENT


def frame_nbytes(segments: Iterable[Segment]) -> int:
    """Total length in bytes of a frame given as segments (e.g. from ``*_to_segments``).

    Examples
    --------
    >>> frame_nbytes([b"abc", memoryview(b"de")])
    5
    """
    return sum(memoryview(s).nbytes for s in segments)


class DataLayout:
    """Places array buffers in the data section, each at a 64-byte-aligned offset."""

    __slots__ = ("_chunks", "nbytes")

    def __init__(self) -> None:
        self._chunks: list[tuple[int, memoryview]] = []
        #: Length of the data section so far: the end of the last non-empty buffer.
        self.nbytes = 0

    def add(self, view: memoryview) -> int:
        """Reserve room for ``view`` (1-d, bytes); return its offset in the data section."""
        if view.nbytes == 0:
            return 0  # empty arrays take no room; the format says they use offset 0
        offset = align(self.nbytes)
        self._chunks.append((offset, view))
        self.nbytes = offset + view.nbytes
        return offset

    def segments(self, header: bytes) -> list[Segment]:
        """The frame: prefix + header + padding as one ``bytes``, then the data buffers."""
        if len(header) > _MAX_HEADER_NBYTES:
            raise SerializationError(
                f"cannot serialize: the header is {len(header)} bytes, over the format's "
                f"limit of {_MAX_HEADER_NBYTES} (put large values in an ArrayRecord)"
            )
        head_end = PREFIX_NBYTES + len(header)
        prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, _RESERVED, len(header), zlib.crc32(header))
        out: list[Segment] = [b"".join((prefix, header, _ZEROS[: align(head_end) - head_end]))]
        position = 0
        for offset, view in self._chunks:
            if offset > position:
                out.append(_ZEROS[: offset - position])
            out.append(view)
            position = offset + view.nbytes
        return out


def as_byte_view(data: object) -> memoryview:
    """``data`` as a flat, read-only-if-it-was, unsigned-byte memoryview (no copy)."""
    if isinstance(data, str):
        raise SerializationError(
            "expected a bytes-like object (bytes, bytearray, memoryview), got str; "
            "frames are binary, not text"
        )
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            "expected a bytes-like object (bytes, bytearray, memoryview), got "
            f"{type(data).__name__}"
        ) from exc
    if not view.c_contiguous:
        raise SerializationError("expected a contiguous buffer, got a strided memoryview")
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


@dataclass(frozen=True)
class ParsedFrame:
    """A frame whose prefix, length and header checksum have been verified."""

    header: pb.Frame
    buffer: memoryview
    data_start: int
    data_nbytes: int


def parse_frame(data: object) -> ParsedFrame:
    """Check the prefix, header checksum and total length; parse the header."""
    view = as_byte_view(data)
    size = view.nbytes
    head = bytes(view[:PREFIX_NBYTES])
    if head[:4] != MAGIC[: len(head[:4])]:
        raise SerializationError(
            f"not a Pollinate frame: it starts with {head[:4]!r}, expected {MAGIC!r}"
        )
    if size < PREFIX_NBYTES:
        raise SerializationError(
            f"truncated frame: expected at least {PREFIX_NBYTES} bytes (the prefix), got {size}"
        )
    _, version, reserved, header_nbytes, header_crc = _PREFIX.unpack(head)
    if version != FORMAT_VERSION:
        raise SerializationError(
            f"unsupported frame format version {version}; this Pollinate reads version "
            f"{FORMAT_VERSION} (upgrade the reader, or the writer is newer)"
        )
    if reserved != _RESERVED:
        raise SerializationError(f"corrupted frame: reserved prefix bytes are {reserved!r}, not 0")
    header_end = PREFIX_NBYTES + header_nbytes
    if size < header_end:
        raise SerializationError(
            f"truncated frame: the header needs {header_end} bytes, got {size}"
        )
    header_bytes = bytes(view[PREFIX_NBYTES:header_end])
    actual_crc = zlib.crc32(header_bytes)
    if actual_crc != header_crc:
        raise SerializationError(
            f"corrupted frame: header CRC-32 is {actual_crc:#010x}, the prefix says "
            f"{header_crc:#010x}"
        )
    header = pb.Frame()
    try:
        header.ParseFromString(header_bytes)
    except Exception as exc:  # upb raises DecodeError; translate anything at this boundary
        raise SerializationError(
            f"corrupted frame: the header is not valid protobuf ({exc})"
        ) from exc
    data_start = align(header_end)
    expected = data_start + header.data_nbytes
    if size < expected:
        raise SerializationError(f"truncated frame: expected {expected} bytes, got {size}")
    if view[header_end:data_start].tobytes().strip(b"\0"):
        raise SerializationError("corrupted frame: the padding after the header is not zero")
    if size > expected:
        raise SerializationError(
            f"malformed frame: expected {expected} bytes, got {size} "
            f"({size - expected} trailing bytes)"
        )
    return ParsedFrame(header, view, data_start, header.data_nbytes)
