"""SendSlots: a few transfers at once, taken in the order the instructions were sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable

__all__ = ["SendSlots"]


class SendSlots:
    """At most ``slots`` transfers at once, granted in the order :meth:`expect` was told.

    Why: the server streams a round's instructions to a few nodes at a time, and the
    ServerApp adds replies in the order it sent the instructions (so that a sum's
    rounding, and so the model, never depend on timing). Each node's stream wakes on
    its own, in whatever order the scheduler picks; served that way, the first
    instruction's reply was often among the last, and the ServerApp added all ten
    after the last arrived, alone on one core. Served in sending order, replies come
    back nearly in it and each is added while later ones are still on the wire.

    An instruction whose stream has not asked ``grace`` seconds after it was queued
    (its node is busy, slow or gone) loses its place once it is first in line, so one
    node never holds back the others, and any number of such instructions cost the
    others one grace period at most; one that :meth:`expect` was not told about (for
    example after a restart) goes when a slot is free.

    Examples
    --------
    >>> slots = SendSlots(1, grace=0.01)
    >>> slots.expect(["a", "b"])
    >>> slots.acquire("b", timeout=1.0)  # "a" never asks: "b" goes after the grace
    True
    >>> slots.acquire("c", timeout=0.01)  # the only slot is taken
    False
    >>> slots.release("b")
    """

    def __init__(self, slots: int, *, grace: float = 0.05) -> None:
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self._free = slots
        self._grace = grace
        self._line: dict[str, float] = {}  # expected ids not yet granted -> queued at
        self._waiting: set[str] = set()
        self._condition = threading.Condition()

    def expect(self, message_ids: Iterable[str]) -> None:
        """Queue instructions in the order they should be sent."""
        with self._condition:
            now = time.monotonic()
            for message_id in message_ids:
                self._line.setdefault(message_id, now)
            self._condition.notify_all()

    def acquire(self, message_id: str, *, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a slot and for this instruction's turn;
        ``False`` if none came (the caller decides whether to go on anyway)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            self._waiting.add(message_id)
            try:
                while not (self._free > 0 and self._is_next(message_id)):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self._line.pop(message_id, None)
                        return False
                    wait = remaining
                    if self._line:  # until the head's grace ends, at most
                        head_queued = next(iter(self._line.values()))
                        grace_left = head_queued + self._grace - time.monotonic()
                        wait = min(wait, max(grace_left, 0.001))
                    self._condition.wait(wait)
                self._line.pop(message_id, None)
                self._free -= 1
                return True
            finally:
                self._waiting.discard(message_id)
                self._condition.notify_all()

    def release(self, message_id: str) -> None:
        """Free the slot taken for ``message_id``."""
        with self._condition:
            self._line.pop(message_id, None)
            self._free += 1
            self._condition.notify_all()

    def _is_next(self, message_id: str) -> bool:
        """Whether ``message_id`` may go: it is first in line, or not in line at all,
        or every one before it has waited past its grace without asking."""
        if message_id not in self._line:
            return True
        now = time.monotonic()
        while self._line:
            head, queued_at = next(iter(self._line.items()))  # insertion = sending order
            if head == message_id:
                return True
            if head in self._waiting or now - queued_at < self._grace:
                return False  # it goes first: it is asking, or may still ask
            del self._line[head]  # absent past its grace: it loses its place
        return True
