"""SendSlots: transfers granted in sending order, never held up for long by one node."""

from __future__ import annotations

import threading
import time

import pytest

from pollinate.runtime.grpc.slots import SendSlots


def _take_in_turn(slots: SendSlots, ids: list[str], granted: list[str]) -> list[threading.Thread]:
    """One thread per id, started in the given order, each holding its slot briefly."""

    def take(message_id: str) -> None:
        assert slots.acquire(message_id, timeout=30)
        granted.append(message_id)
        time.sleep(0.01)
        slots.release(message_id)

    threads = []
    for message_id in ids:
        thread = threading.Thread(target=take, args=(message_id,))
        thread.start()
        threads.append(thread)
        time.sleep(0.005)  # they ask in this order
    return threads


def test_slots_are_granted_in_sending_order_whatever_order_the_streams_ask_in() -> None:
    slots = SendSlots(1, grace=10.0)
    order = [f"m{i}" for i in range(6)]
    slots.expect(order)
    assert slots.acquire("blocker", timeout=1)  # not in line: goes when a slot is free
    granted: list[str] = []
    threads = _take_in_turn(slots, list(reversed(order)), granted)
    slots.release("blocker")
    for thread in threads:
        thread.join(30)

    assert granted == order


def test_an_instruction_whose_stream_never_asks_loses_its_place() -> None:
    slots = SendSlots(1, grace=0.05)
    slots.expect(["absent", "present"])

    assert slots.acquire("present", timeout=30)  # after the grace, not after 30 s
    slots.release("present")
    assert slots.acquire("absent", timeout=1)  # out of line now: it goes when free


def test_a_full_set_of_slots_times_out_and_the_waiter_leaves_the_line() -> None:
    slots = SendSlots(2, grace=10.0)
    slots.expect(["a", "b", "c", "d"])
    assert slots.acquire("a", timeout=1) and slots.acquire("b", timeout=1)

    assert slots.acquire("c", timeout=0.05) is False
    slots.release("a")
    assert slots.acquire("d", timeout=1)  # "c" gave up its place when it timed out


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="slots must be >= 1"):
        SendSlots(0)


def test_many_instructions_whose_streams_never_ask_cost_one_grace_period_not_one_each() -> None:
    slots = SendSlots(1, grace=0.2)
    slots.expect([f"gone{i}" for i in range(50)] + ["present"])
    time.sleep(0.25)  # every instruction ahead is past its grace

    # Granted within the timeout: one grace each would have taken 50 x 0.2 = 10 s.
    assert slots.acquire("present", timeout=5)
