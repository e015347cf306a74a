"""The inline runtime: nodes are called in the server's own process, one at a time.

Deterministic and debuggable: a breakpoint in a ClientApp stops the whole run right
there. Nodes receive read-only views of the server's arrays (as they would receive
read-only buffers in the process runtime), so a handler that updates the global model
in place fails loudly instead of corrupting the other nodes' input.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence

from pollinate.client import ClientApp
from pollinate.records import ArrayRecord, Error, ErrorCode, Message, RecordDict
from pollinate.runtime.nodes import VirtualGrid, VirtualNodes, dated_as_if_alone
from pollinate.strategy.history import RunObserver
from pollinate.testing.clock import Clock

__all__ = ["InlineGrid", "readonly_view"]


def readonly_view(content: RecordDict) -> RecordDict:
    """The same records, with every array replaced by a read-only view of itself."""
    out = RecordDict()
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            views = ArrayRecord()
            for key, array in record.items():
                view = array.view()
                view.flags.writeable = False
                views[key] = view
            out[name] = views
        else:
            out[name] = record.copy()
    return out


class InlineGrid(VirtualGrid):
    """A Grid whose nodes are called in this process, in the order messages were sent."""

    def __init__(
        self,
        client_app: ClientApp,
        nodes: VirtualNodes,
        *,
        observer: RunObserver | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(nodes, observer=observer, clock=clock)
        self._app = client_app
        self._pending: dict[str, Message] = {}

    def send(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message, view in self._prepare(messages, readonly_view):
            self._pending[message.metadata.message_id] = Message.from_parts(
                message.metadata, view, None
            )
            ids.append(message.metadata.message_id)
        return ids

    def receive(self, message_ids: Sequence[str], *, timeout: float) -> Iterator[Message]:
        deadline = self.clock.now() + timeout
        try:
            for message_id in message_ids:
                message = self._pending.pop(message_id, None)
                if message is None:
                    continue
                if self.clock.now() > deadline:
                    continue  # too late to start: the caller turns it into a timeout
                yield self._run(message)
        finally:
            for message_id in message_ids:  # the caller stopped listening: drop the rest
                self._pending.pop(message_id, None)

    def _run(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        context = self._nodes.context(node_id)
        if time.time() > message.metadata.created_at + message.metadata.ttl:
            return message.reply(error=Error(ErrorCode.TIMEOUT, "instruction expired (ttl)"))
        started = self.clock.now()
        reply = self._nodes.call(self._app, message, context)
        self._nodes.keep_state(node_id, context.state)
        return dated_as_if_alone(reply, message.metadata.created_at, self.clock.now() - started)

    def close(self) -> None:
        self._pending.clear()
