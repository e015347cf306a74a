"""Message: what the server and nodes send each other.

A message is metadata (who, what, which run and round) plus either content (a
RecordDict) or an :class:`Error`. Instructions are made by the server with
``Message(content, dst_node_id=..., message_type=...)``; a node answers with
``message.reply(content)`` or ``message.reply(error=Error(...))``, which fills the
routing fields so a reply can never be misaddressed.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Final

from pollinate.errors import ConfigError
from pollinate.records import keys
from pollinate.records.recorddict import RecordDict

__all__ = ["DEFAULT_TTL", "SERVER_NODE_ID", "Error", "ErrorCode", "Message", "Metadata"]

#: Seconds an instruction stays valid unless its sender says otherwise.
DEFAULT_TTL: Final = 3600.0
#: The node id of the server (the source of instructions, the destination of replies).
SERVER_NODE_ID: Final = 0


class ErrorCode(IntEnum):
    """Why a reply carries an error instead of content."""

    UNKNOWN = 0
    CLIENT_APP_RAISED = 1
    NO_HANDLER = 2
    BAD_REPLY = 3
    NODE_UNAVAILABLE = 4
    TIMEOUT = 5
    WORKER_CRASHED = 6
    LATE = 7


@dataclass(frozen=True)
class Error:
    """A failure reported in place of a reply's content.

    ``reason`` is a one-line, human-readable summary. Tracebacks stay in the node's log
    and never travel on the wire, so a failure cannot leak a node's data or paths.
    """

    code: ErrorCode | int
    reason: str = ""


@dataclass(frozen=True)
class Metadata:
    """Routing and bookkeeping fields of a message."""

    run_id: int
    message_id: str
    src_node_id: int
    dst_node_id: int
    reply_to_message_id: str
    group_id: str
    message_type: str
    ttl: float
    created_at: float


def _new_message_id() -> str:
    return uuid.uuid4().hex


def _check_message_type(message_type: str) -> None:
    base = message_type.split(".", 1)[0]
    if base not in keys.MESSAGE_TYPES or message_type.endswith("."):
        raise ConfigError(
            f"message type {message_type!r} is not one of {', '.join(keys.MESSAGE_TYPES)} "
            "(optionally followed by '.<action>', e.g. 'train.finetune')"
        )


@dataclass(frozen=True, init=False)
class Message:
    """A unit of work (instruction) or its answer (reply).

    Parameters
    ----------
    content:
        The payload; ``None`` only for error replies.
    dst_node_id:
        The node this instruction is for.
    message_type:
        ``"train"``, ``"evaluate"`` or ``"query"``, optionally with a sub-action:
        ``"query.histogram"`` reaches the handler registered as ``@app.query("histogram")``.
    group_id:
        Groups the messages of one step; the round loop uses the round number.
    ttl:
        Seconds the instruction stays valid.
    run_id:
        The run this message belongs to.

    Examples
    --------
    >>> msg = Message(RecordDict(), dst_node_id=7, message_type="train", group_id="1")
    >>> reply = msg.reply(RecordDict())
    >>> (reply.metadata.src_node_id, reply.metadata.reply_to_message_id == msg.metadata.message_id)
    (7, True)
    """

    metadata: Metadata
    _content: RecordDict | None = field(repr=False)
    _error: Error | None = field(repr=False)

    def __init__(
        self,
        content: RecordDict,
        *,
        dst_node_id: int,
        message_type: str,
        group_id: str = "",
        ttl: float = DEFAULT_TTL,
        run_id: int = 0,
    ) -> None:
        if not isinstance(content, RecordDict):
            raise ConfigError(f"message content must be a RecordDict, got {type(content).__name__}")
        _check_message_type(message_type)
        if not (isinstance(ttl, (int, float)) and math.isfinite(ttl) and ttl > 0):
            raise ConfigError(f"ttl must be a positive, finite number of seconds, got {ttl!r}")
        metadata = Metadata(
            run_id=run_id,
            message_id=_new_message_id(),
            src_node_id=SERVER_NODE_ID,
            dst_node_id=int(dst_node_id),
            reply_to_message_id="",
            group_id=str(group_id),
            message_type=message_type,
            ttl=float(ttl),
            created_at=time.time(),
        )
        object.__setattr__(self, "metadata", metadata)
        object.__setattr__(self, "_content", content)
        object.__setattr__(self, "_error", None)

    @classmethod
    def from_parts(
        cls, metadata: Metadata, content: RecordDict | None, error: Error | None
    ) -> Message:
        """Rebuild a message from its parts (used by deserialization and runtimes)."""
        if (content is None) == (error is None):
            raise ConfigError("a message has exactly one of content and error")
        message = object.__new__(cls)
        object.__setattr__(message, "metadata", metadata)
        object.__setattr__(message, "_content", content)
        object.__setattr__(message, "_error", error)
        return message

    @property
    def content(self) -> RecordDict:
        """The payload. Raises if this is an error reply: check :meth:`has_error` first."""
        if self._content is None:
            assert self._error is not None
            raise ConfigError(
                f"message {self.metadata.message_id} carries an error, not content: "
                f"{self._error.reason}"
            )
        return self._content

    @property
    def error(self) -> Error | None:
        """The error of an error reply, else ``None``."""
        return self._error

    def has_error(self) -> bool:
        """Whether this is an error reply."""
        return self._error is not None

    @property
    def is_reply(self) -> bool:
        """Whether this message answers another one."""
        return bool(self.metadata.reply_to_message_id)

    def reply(self, content: RecordDict | None = None, *, error: Error | None = None) -> Message:
        """Answer this instruction with content or with an error (exactly one of them)."""
        if (content is None) == (error is None):
            raise ConfigError("reply with exactly one of content and error=")
        if content is not None and not isinstance(content, RecordDict):
            raise ConfigError(f"reply content must be a RecordDict, got {type(content).__name__}")
        request = self.metadata
        metadata = Metadata(
            run_id=request.run_id,
            message_id=_new_message_id(),
            src_node_id=request.dst_node_id,
            dst_node_id=request.src_node_id,
            reply_to_message_id=request.message_id,
            group_id=request.group_id,
            message_type=request.message_type,
            ttl=request.ttl,
            created_at=time.time(),
        )
        return Message.from_parts(metadata, content, error)

    def with_metadata(self, **changes: object) -> Message:
        """A copy of this message with some metadata fields replaced (content shared)."""
        return Message.from_parts(replace(self.metadata, **changes), self._content, self._error)  # type: ignore[arg-type]
