"""Grid: how a ServerApp reaches nodes, whatever runtime carries the messages.

Each runtime (inline, process, ray, grpc) implements three primitives: ``nodes``,
``send`` and ``receive``. Everything built on them (``send_and_receive`` with its
deadline and ordering, ``wait_for_nodes``) is written once, here.

Replies from ``send_and_receive`` come back in the order the instructions were sent,
whatever order nodes finish in. A reply that arrives early waits until the ones before
it are in (or have timed out). That makes a round's aggregation, and so the final
model, bit-identical across runtimes for a fixed seed, while a streaming aggregator
still holds only a few replies at a time in practice.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pollinate.errors import ConfigError, NodeUnavailableError
from pollinate.records import Error, ErrorCode, Message, RecordDict
from pollinate.sampling.base import NodeInfo
from pollinate.strategy.history import NullObserver, RunObserver
from pollinate.testing.clock import Clock, SystemClock

__all__ = ["Grid"]

_RESULT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")


class Grid(ABC):
    """The server's view of the federation: which nodes exist and how to message them.

    Attributes
    ----------
    run_id:
        The run all messages of this grid belong to.
    observer:
        Told about each round's progress (progress display, history file).
    clock:
        Time source for deadlines.
    """

    def __init__(
        self,
        *,
        run_id: int = 0,
        observer: RunObserver | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.run_id = run_id
        self.observer: RunObserver = observer if observer is not None else NullObserver()
        self.clock: Clock = clock if clock is not None else SystemClock()

    def publish(self, name: str, data: Mapping[str, Any]) -> None:
        """Hand a named result of the run to whoever records it.

        For results that are not a model: the answers of analytics queries, a final
        report. ``pollinate simulate`` writes ``runs/<run>/<name>.json``; under
        ``pollinate run`` the result is printed to the run's log as one JSON line
        (``pollinate logs RUN_ID``).

        Raises
        ------
        ConfigError
            If ``name`` is not a plain file stem (letters, digits, ``-``, ``_``, ``.``)
            or ``data`` is not a JSON-serializable mapping.
        """
        if not isinstance(name, str) or not _RESULT_NAME.fullmatch(name):
            raise ConfigError(
                f"result name {name!r} must be letters, digits, '-', '_' or '.' (it names a "
                "file), e.g. 'analytics'"
            )
        try:
            json.dumps(dict(data), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"result {name!r} must be a mapping of JSON values (str, numbers, lists, "
                f"dicts; no NaN): {exc}"
            ) from None
        on_result = getattr(self.observer, "on_result", None)
        if on_result is not None:
            on_result(name, data)

    @abstractmethod
    def nodes(self) -> list[int]:
        """Ids of the nodes that are connected now, in ascending order."""

    def node_info(self) -> list[NodeInfo]:
        """What is known about each node (attributes, reachability), for samplers.

        The default knows only the ids; runtimes that know more override it.
        """
        return [NodeInfo(node_id) for node_id in self.nodes()]

    def save_checkpoint(self, server_round: int, state: RecordDict) -> None:  # noqa: B027
        """Keep a completed round's state where it survives a restart (optional hook).

        Runtimes without durable state (simulation) do nothing.
        """

    def load_checkpoint(self) -> tuple[int, RecordDict] | None:
        """The latest saved ``(server_round, state)`` of this run, if any."""
        return None

    def begin_round(self, server_round: int) -> None:  # noqa: B027 - optional hook
        """Told by the round loop that ``server_round`` starts (simulations use it to
        advance simulated availability)."""

    @abstractmethod
    def send(self, messages: Iterable[Message]) -> list[str]:
        """Queue instructions for delivery; returns their message ids in order.

        Raises :class:`~pollinate.errors.NodeUnavailableError` for an unknown
        destination, before anything is sent.
        """

    @abstractmethod
    def receive(self, message_ids: Sequence[str], *, timeout: float) -> Iterator[Message]:
        """Yield replies to ``message_ids`` as they arrive, until all came or ``timeout``.

        A node that fails or dies yields an error reply, never an exception. Replies
        that did not come within ``timeout`` seconds are not yielded; they are
        cancelled if the runtime can.
        """

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float, keep_first: int | None = None
    ) -> Iterator[Message]:
        """Send instructions and yield one reply per instruction, in sending order.

        An instruction without a reply by the deadline yields an error reply with code
        ``TIMEOUT`` made here, so callers always get exactly one reply each. With
        ``keep_first=k`` (over-selection), receiving stops as soon as ``k`` good
        replies are in; the instructions still outstanding are cancelled and yield
        error replies with code ``LATE``.
        """
        if timeout <= 0:
            raise ConfigError(f"timeout must be positive seconds, got {timeout}")
        if keep_first is not None and keep_first < 1:
            raise ConfigError(f"keep_first must be >= 1, got {keep_first}")
        requests = list(messages)
        if not requests:
            return
        message_ids = self.send(requests)
        position = {message_id: index for index, message_id in enumerate(message_ids)}
        waiting: dict[int, Message] = {}
        next_index = 0
        good = 0
        enough = False
        arrivals = self.receive(message_ids, timeout=timeout)
        try:
            for reply in arrivals:
                index = position.get(reply.metadata.reply_to_message_id)
                if index is None or index < next_index or index in waiting:
                    continue  # not ours, or a duplicate: never count a reply twice
                waiting[index] = reply
                good += not reply.has_error()
                enough = keep_first is not None and good >= keep_first
                if enough:
                    break
                while next_index in waiting:
                    yield waiting.pop(next_index)
                    next_index += 1
        finally:
            close = getattr(arrivals, "close", None)
            if close is not None:
                close()  # lets the runtime cancel what is still outstanding
        for index in range(next_index, len(requests)):
            if index in waiting:
                yield waiting.pop(index)
            elif enough:
                yield _late_reply(requests[index])
            else:
                yield _timeout_reply(requests[index], timeout)

    def wait_for_nodes(self, min_nodes: int, *, timeout: float) -> list[int]:
        """Block until at least ``min_nodes`` nodes are connected; return their ids.

        Raises :class:`~pollinate.errors.NodeUnavailableError` after ``timeout``
        seconds, saying how many nodes there were.
        """
        deadline = self.clock.now() + timeout
        while True:
            nodes = self.nodes()
            if len(nodes) >= min_nodes:
                return nodes
            remaining = deadline - self.clock.now()
            if remaining <= 0:
                raise NodeUnavailableError(
                    f"waited {timeout:g} s for {min_nodes} nodes but only {len(nodes)} are "
                    "connected; start more nodes or lower min_available_nodes"
                )
            self.clock.sleep(min(0.5, remaining))

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the runtime's resources (workers, connections). Idempotent."""

    def __enter__(self) -> Grid:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _late_reply(request: Message) -> Message:
    return request.reply(
        error=Error(
            ErrorCode.LATE,
            f"node {request.metadata.dst_node_id} was not needed: enough faster nodes replied",
        )
    )


def _timeout_reply(request: Message, timeout: float) -> Message:
    return request.reply(
        error=Error(
            ErrorCode.TIMEOUT,
            f"no reply from node {request.metadata.dst_node_id} within {timeout:g} s",
        )
    )
