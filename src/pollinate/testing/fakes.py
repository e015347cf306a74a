"""Fakes for testing strategies and server apps without a runtime.

:class:`FakeGrid` answers each instruction by calling a plain function, like httpx's
``MockTransport(handler)``: tests say what nodes reply, not how messages travel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from pollinate.errors import NodeUnavailableError
from pollinate.records import (
    ArrayRecord,
    Error,
    ErrorCode,
    Message,
    MetricRecord,
    RecordDict,
    keys,
)
from pollinate.server.grid import Grid
from pollinate.strategy.history import RunObserver
from pollinate.testing.clock import Clock, ManualClock

__all__ = ["FakeGrid", "NodeHandler", "make_error_reply", "make_reply"]

#: Answers one instruction; returns the reply, or ``None`` for "never replies".
NodeHandler = Callable[[Message], "Message | None"]


def make_reply(
    message: Message,
    arrays: ArrayRecord | Mapping[str, Any] | None = None,
    *,
    num_examples: int = 1,
    **metrics: float,
) -> Message:
    """A reply to ``message`` with arrays (if given) and metrics incl. ``num-examples``."""
    content = RecordDict()
    if arrays is not None:
        content[keys.ARRAYS] = arrays if isinstance(arrays, ArrayRecord) else ArrayRecord(arrays)
    content[keys.METRICS] = MetricRecord({keys.NUM_EXAMPLES: num_examples, **metrics})
    return message.reply(content)


def make_error_reply(message: Message, reason: str = "node failed") -> Message:
    """An error reply to ``message``."""
    return message.reply(error=Error(ErrorCode.CLIENT_APP_RAISED, reason))


class FakeGrid(Grid):
    """A Grid over ``node_ids`` whose replies come from ``handler``.

    The handler runs at ``receive`` time, in sending order. Returning ``None`` means
    the node never replies (the grid's deadline turns that into a timeout). Time comes
    from a :class:`ManualClock` by default, so waits never sleep.
    """

    def __init__(
        self,
        handler: NodeHandler,
        node_ids: Sequence[int] = tuple(range(1, 11)),
        *,
        run_id: int = 0,
        observer: RunObserver | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            run_id=run_id, observer=observer, clock=clock if clock is not None else ManualClock()
        )
        self.handler = handler
        self.node_ids = list(node_ids)
        self.sent: list[Message] = []
        self._pending: dict[str, Message] = {}

    def nodes(self) -> list[int]:
        return sorted(self.node_ids)

    def send(self, messages: Iterable[Message]) -> list[str]:
        batch = list(messages)
        for message in batch:
            if message.metadata.dst_node_id not in self.node_ids:
                raise NodeUnavailableError(f"no node {message.metadata.dst_node_id}")
        self.sent.extend(batch)
        for message in batch:
            self._pending[message.metadata.message_id] = message
        return [m.metadata.message_id for m in batch]

    def receive(self, message_ids: Sequence[str], *, timeout: float) -> Iterator[Message]:
        for message_id in message_ids:
            message = self._pending.pop(message_id, None)
            if message is None:
                continue
            reply = self.handler(message)
            if reply is not None:
                yield reply


def linear_node(message: Message, *, scale: float = 1.0) -> Message:
    """A deterministic node: returns the global arrays plus ``scale * node_id``."""
    arrays = message.content.get_kind(keys.ARRAYS, ArrayRecord)
    node_id = message.metadata.dst_node_id
    out = ArrayRecord({k: (v + np.asarray(scale * node_id, v.dtype)) for k, v in arrays.items()})
    return make_reply(message, out, num_examples=node_id, loss=float(node_id))
