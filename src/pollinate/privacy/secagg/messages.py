"""The SecAgg+ stage messages, and how they travel as ordinary records.

Each stage is one request (server -> node) and one reply (node -> server). Here they
are frozen dataclasses, which the sans-I/O protocol (:mod:`.protocol`) takes and
returns; :func:`to_record` and the ``from_record`` class methods turn them into a
``ConfigRecord`` named :data:`SECAGG` inside a message's RecordDict and back. Bytes
travel as ConfigRecord ``bytes`` values, masked vectors as an ArrayRecord of unsigned
integers: nothing is pickled, and a record of the wrong shape raises
:class:`~pollinate.errors.ProtocolError` naming the field.

The stage messages keep the message type of the instruction they carry out (``train``
for a training round, ``query.<action>`` for analytics), so a node's mod knows which
handler to call at the masked-input stage; the ``stage`` field says which step it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Final, TypeVar

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import ProtocolError
from pollinate.records import ArrayRecord, ConfigRecord, RecordDict

__all__ = [
    "MASKED",
    "SECAGG",
    "MaskedInputReply",
    "MaskedInputRequest",
    "SecAggParams",
    "SetupReply",
    "SetupRequest",
    "ShareKeysReply",
    "ShareKeysRequest",
    "Stage",
    "StageMessage",
    "UnmaskReply",
    "UnmaskRequest",
    "RecordReader",
    "Structure",
    "from_content",
    "stage_of",
    "to_content",
]

#: Name of the ConfigRecord that carries a stage message inside a RecordDict.
SECAGG: Final = "secagg"
#: Name of the ArrayRecord that carries a masked vector.
MASKED: Final = "secagg-masked"
_VECTOR: Final = "vector"
_STAGE: Final = "stage"


class Stage:
    """The stage names, in protocol order."""

    SETUP: Final = "setup"
    SHARE_KEYS: Final = "share-keys"
    MASKED_INPUT: Final = "masked-input"
    UNMASK: Final = "unmask"
    ALL: Final = (SETUP, SHARE_KEYS, MASKED_INPUT, UNMASK)


#: (name, dtype, shape) of each array of an update, in order.
Structure = list[tuple[str, str, tuple[int, ...]]]


@dataclass(frozen=True)
class SecAggParams:
    """The settings of one SecAgg+ instance, sent to every node at setup.

    Attributes
    ----------
    session:
        16 random bytes naming this instance; bound into every derived key and
        ciphertext, so nothing from one round can be replayed in another.
    threshold:
        Shares needed to reconstruct a secret (``t`` of Shamir's t-of-n).
    clipping_range:
        Update entries are clipped to ``[-clipping_range, clipping_range]``.
    quantization_range:
        Number of quantization levels of that interval.
    modulus_bits:
        Arithmetic is modulo ``2**modulus_bits``.
    max_weight:
        With ``weighted``, a node scales its update by ``min(weight / max_weight, 1)``.
    weighted:
        Whether nodes send ``weight * update`` and ``weight`` (for a weighted mean)
        rather than the update alone (for a plain sum).
    arrays_key, metrics_key, weight_key:
        Where the inner handler's reply keeps its arrays, metrics and weight.
    noise_stddev:
        Standard deviation of the Gaussian noise each node adds to its clipped update
        before quantization (distributed DP); 0 for none.
    delta:
        Whether nodes send their update minus the instruction's arrays (the model
        change, small and centred on 0, so a small clipping range suffices) instead
        of the arrays themselves; the server adds the global arrays back.
    noise_clipping_norm:
        With noise: the L2 norm each node's update is clipped to first; 0 for none.
    """

    session: bytes
    threshold: int
    clipping_range: float
    quantization_range: int
    modulus_bits: int
    max_weight: float
    weighted: bool
    arrays_key: str
    metrics_key: str
    weight_key: str
    delta: bool = False
    noise_stddev: float = 0.0
    noise_clipping_norm: float = 0.0


@dataclass(frozen=True)
class SetupRequest:
    """Stage 0: the settings; the node answers with two fresh public keys."""

    stage: ClassVar[str] = Stage.SETUP
    params: SecAggParams


@dataclass(frozen=True)
class SetupReply:
    """Stage 0 reply: X25519 public keys for share encryption and for pairwise masks."""

    stage: ClassVar[str] = Stage.SETUP
    encryption_key: bytes
    masking_key: bytes


@dataclass(frozen=True)
class ShareKeysRequest:
    """Stage 1: the node's neighbours that completed setup, with their public keys."""

    stage: ClassVar[str] = Stage.SHARE_KEYS
    neighbours: Mapping[int, tuple[bytes, bytes]]  # id -> (encryption key, masking key)


@dataclass(frozen=True)
class ShareKeysReply:
    """Stage 1 reply: one encrypted pair of shares per neighbour, by destination."""

    stage: ClassVar[str] = Stage.SHARE_KEYS
    ciphertexts: Mapping[int, bytes]


@dataclass(frozen=True)
class MaskedInputRequest:
    """Stage 2: the ciphertexts addressed to this node, by sender.

    The instruction's own records (model, config) travel beside it in the same message.
    """

    stage: ClassVar[str] = Stage.MASKED_INPUT
    ciphertexts: Mapping[int, bytes]


@dataclass(frozen=True)
class MaskedInputReply:
    """Stage 2 reply: the masked, quantized update and the structure to rebuild it."""

    stage: ClassVar[str] = Stage.MASKED_INPUT
    vector: NDArray[np.uint64]
    structure: Structure


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3: which of the node's neighbours sent a masked input and which dropped."""

    stage: ClassVar[str] = Stage.UNMASK
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskReply:
    """Stage 3 reply: self-mask seed shares of survivors, key shares of dropped nodes."""

    stage: ClassVar[str] = Stage.UNMASK
    seed_shares: Mapping[int, bytes]
    key_shares: Mapping[int, bytes]


StageMessage = (
    SetupRequest
    | SetupReply
    | ShareKeysRequest
    | ShareKeysReply
    | MaskedInputRequest
    | MaskedInputReply
    | UnmaskRequest
    | UnmaskReply
)
_M = TypeVar("_M", bound=StageMessage)


# -- encoding ---------------------------------------------------------------------------
def _put_map(record: ConfigRecord, name: str, mapping: Mapping[int, bytes]) -> None:
    record[f"{name}.ids"] = [int(k) for k in mapping]
    record[f"{name}.values"] = [bytes(v) for v in mapping.values()]


def to_content(message: StageMessage) -> RecordDict:
    """The RecordDict that carries ``message`` (a ConfigRecord, plus an ArrayRecord
    for a masked vector)."""
    record = ConfigRecord({_STAGE: message.stage, "kind": type(message).__name__})
    content = RecordDict({SECAGG: record})
    if isinstance(message, SetupRequest):
        for field in fields(SecAggParams):
            record[f"params.{field.name}"] = getattr(message.params, field.name)
    elif isinstance(message, SetupReply):
        record["encryption-key"] = message.encryption_key
        record["masking-key"] = message.masking_key
    elif isinstance(message, ShareKeysRequest):
        record["neighbours.ids"] = [int(k) for k in message.neighbours]
        record["neighbours.encryption-keys"] = [v[0] for v in message.neighbours.values()]
        record["neighbours.masking-keys"] = [v[1] for v in message.neighbours.values()]
    elif isinstance(message, (ShareKeysReply, MaskedInputRequest)):
        _put_map(record, "ciphertexts", message.ciphertexts)
    elif isinstance(message, MaskedInputReply):
        record["structure.names"] = [name for name, _, _ in message.structure]
        record["structure.dtypes"] = [dtype for _, dtype, _ in message.structure]
        record["structure.ndims"] = [len(shape) for _, _, shape in message.structure]
        record["structure.shape"] = [d for _, _, shape in message.structure for d in shape]
        content[MASKED] = ArrayRecord({_VECTOR: message.vector})
    elif isinstance(message, UnmaskRequest):
        record["survivors"] = list(message.survivors)
        record["dropped"] = list(message.dropped)
    else:
        _put_map(record, "seed-shares", message.seed_shares)
        _put_map(record, "key-shares", message.key_shares)
    return content


# -- decoding ---------------------------------------------------------------------------
_FIELD_TYPES: Final[dict[str, type | tuple[type, ...]]] = {
    "bytes": bytes,
    "int": int,
    "float": (int, float),
    "bool": bool,
    "str": str,
}


class RecordReader:
    """Typed access to a ConfigRecord from another party (or from storage): every
    missing or mistyped field is a ProtocolError naming it."""

    def __init__(self, record: ConfigRecord, what: str) -> None:
        self.record = record
        self.what = what

    def get(self, name: str, kind: type | tuple[type, ...]) -> Any:
        value = self.record.get(name)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ProtocolError(
                f"{self.what}: field {name!r} is {type(value).__name__}, expected "
                f"{getattr(kind, '__name__', kind)}"
            )
        return value

    def ints(self, name: str) -> list[int]:
        values = self.get(name, list)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ProtocolError(f"{self.what}: field {name!r} must be a list of ints")
        return list(values)

    def blobs(self, name: str, length: int) -> list[bytes]:
        values = self.get(name, list)
        if len(values) != length or not all(isinstance(v, bytes) for v in values):
            raise ProtocolError(f"{self.what}: field {name!r} must be {length} bytes values")
        return list(values)

    def strs(self, name: str) -> list[str]:
        values = self.get(name, list)
        if not all(isinstance(v, str) for v in values):
            raise ProtocolError(f"{self.what}: field {name!r} must be a list of str")
        return list(values)

    def id_map(self, name: str) -> dict[int, bytes]:
        ids = self.ints(f"{name}.ids")
        if len(set(ids)) != len(ids):
            raise ProtocolError(f"{self.what}: field {name!r} names a node twice")
        return dict(zip(ids, self.blobs(f"{name}.values", len(ids)), strict=True))


def stage_of(content: RecordDict) -> str | None:
    """The stage a message's content belongs to, or ``None`` if it is no SecAgg+ message."""
    record = content.get(SECAGG)
    if not isinstance(record, ConfigRecord):
        return None
    stage = record.get(_STAGE)
    return stage if isinstance(stage, str) else None


def from_content(content: RecordDict, kind: type[_M]) -> _M:
    """Read a stage message of ``kind`` from a RecordDict; ProtocolError if it is not one."""
    what = f"a SecAgg+ {kind.__name__}"
    record = content.get(SECAGG)
    if not isinstance(record, ConfigRecord):
        raise ProtocolError(
            f"expected {what} but the message has no {SECAGG!r} ConfigRecord (has the node "
            "the secaggplus_mod among its ClientApp mods?)"
        )
    read = RecordReader(record, what)
    if read.get("kind", str) != kind.__name__:
        raise ProtocolError(f"expected {what}, got a {record.get('kind')}")
    message: StageMessage
    if kind is SetupRequest:
        values = {}
        for field in fields(SecAggParams):
            expected = _FIELD_TYPES[str(field.type)]
            values[field.name] = read.get(f"params.{field.name}", expected)
        message = SetupRequest(SecAggParams(**values))
    elif kind is SetupReply:
        message = SetupReply(read.get("encryption-key", bytes), read.get("masking-key", bytes))
    elif kind is ShareKeysRequest:
        ids = read.ints("neighbours.ids")
        encryption = read.blobs("neighbours.encryption-keys", len(ids))
        masking = read.blobs("neighbours.masking-keys", len(ids))
        if len(set(ids)) != len(ids):
            raise ProtocolError(f"{what}: a neighbour is listed twice")
        pairs = zip(encryption, masking, strict=True)
        message = ShareKeysRequest(dict(zip(ids, pairs, strict=True)))
    elif kind is ShareKeysReply:
        message = ShareKeysReply(read.id_map("ciphertexts"))
    elif kind is MaskedInputRequest:
        message = MaskedInputRequest(read.id_map("ciphertexts"))
    elif kind is MaskedInputReply:
        message = MaskedInputReply(_vector(content, what), _structure(read))
    elif kind is UnmaskRequest:
        message = UnmaskRequest(tuple(read.ints("survivors")), tuple(read.ints("dropped")))
    else:
        message = UnmaskReply(read.id_map("seed-shares"), read.id_map("key-shares"))
    return message  # type: ignore[return-value]


def _vector(content: RecordDict, what: str) -> NDArray[np.uint64]:
    arrays = content.get(MASKED)
    vector = arrays.get(_VECTOR) if isinstance(arrays, ArrayRecord) else None
    if vector is None or vector.ndim != 1 or vector.dtype.kind != "u" or vector.itemsize < 4:
        raise ProtocolError(
            f"{what}: expected a 1-d uint32/uint64 array {MASKED}/{_VECTOR}, "
            f"got {None if vector is None else f'{vector.dtype}{list(vector.shape)}'}"
        )
    return vector.astype(np.uint64)


def _structure(read: RecordReader) -> Structure:
    names = read.strs("structure.names")
    dtypes = read.strs("structure.dtypes")
    ndims = read.ints("structure.ndims")
    dims = read.ints("structure.shape")
    if not len(names) == len(dtypes) == len(ndims) or sum(ndims) != len(dims):
        raise ProtocolError(f"{read.what}: the structure fields do not agree in length")
    if any(n < 0 for n in ndims) or any(d < 0 for d in dims):
        raise ProtocolError(f"{read.what}: the structure has a negative dimension")
    structure: Structure = []
    offset = 0
    for name, dtype, ndim in zip(names, dtypes, ndims, strict=True):
        structure.append((name, dtype, tuple(dims[offset : offset + ndim])))
        offset += ndim
    return structure
