"""The server's durable state: round trips, exactly-once replies, crashes, corruption."""

from __future__ import annotations

import hashlib
import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pollinate.errors import (
    ConfigError,
    NodeUnavailableError,
    ProtocolError,
    SerializationError,
)
from pollinate.records import ArrayRecord, ErrorCode, Message, MetricRecord, RecordDict
from pollinate.runtime.grpc.state import SCHEMA_VERSION, StateStore
from pollinate.serde import (
    message_from_bytes,
    message_parts_from_content,
    message_to_bytes,
    message_to_segments,
    recorddict_from_bytes,
    recorddict_to_segments,
)
from pollinate.testing import ManualClock

START = 1_000_000.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "server.db"


@pytest.fixture
def store(db: Path, clock: ManualClock) -> Iterator[StateStore]:
    with StateStore(db, clock=clock.now) as opened:
        yield opened


@pytest.fixture
def file_store(db: Path, clock: ManualClock) -> Iterator[StateStore]:
    """A store that keeps every reply in a file (none in the database), for the tests
    of how reply files are written, moved and retired."""
    with StateStore(db, clock=clock.now, inline_reply_bytes=0) as opened:
        yield opened


def _node(store: StateStore, key: bytes | None = None) -> int:
    return store.register_node(
        public_key=key, attributes={"cores": 4}, app_name="app", app_version="1"
    )


def _run(store: StateStore) -> int:
    return store.create_run(app_name="app", app_version="1", app_dir="/apps/x", config={"lr": 0.1})


def _instruction(
    run_id: int, node_id: int, *, created_at: float = START, ttl: float = 60.0
) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": np.arange(6, dtype=np.float32)})})
    msg = Message(content, dst_node_id=node_id, message_type="train", group_id="1", ttl=ttl)
    return msg.with_metadata(run_id=run_id, created_at=created_at)


def _reply(instruction: Message, value: float = 1.0) -> Message:
    return instruction.reply(RecordDict({"metrics": MetricRecord({"loss": value})}))


def _add(store: StateStore, msg: Message) -> None:
    store.add_instruction(msg.metadata, message_to_segments(msg))


def _files(store: StateStore, kind: str) -> list[str]:
    return sorted(p.name for p in (store.blob_dir / kind).iterdir())


def _child(db: Path, body: str, *, inline: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter with ``store``, helpers and ``db`` defined
    (``inline``: the store keeps small replies in the database, as by default)."""
    prelude = f"""
        import os, signal
        from pathlib import Path
        import numpy as np
        from pollinate.records import ArrayRecord, Message, MetricRecord, RecordDict
        from pollinate.runtime.grpc.state import StateStore
        from pollinate.serde import message_to_segments
        store = StateStore(Path({str(db)!r}), inline_reply_bytes={262144 if inline else 0})
        [row] = store.pending_for_node(store.nodes()[0].node_id, now={START!r})
        reply = Message.from_parts(row.metadata, RecordDict(), None).reply(
            RecordDict({{"metrics": MetricRecord({{"loss": 0.5}})}})
        )
    """
    code = textwrap.dedent(prelude) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


# ----------------------------------------------------------------------------- nodes


def test_nodes_register_again_by_key_and_by_requested_id(store: StateStore) -> None:
    # Arrange / Act
    keyed = _node(store, b"key-a")
    again = store.register_node(
        public_key=b"key-a", attributes={"gpu": True}, app_name="app", app_version="2"
    )
    anon_1, anon_2 = _node(store), _node(store)
    back = store.register_node(
        public_key=None, attributes={}, app_name="app", app_version="1", requested_node_id=anon_1
    )
    not_yours = store.register_node(
        public_key=None, attributes={}, app_name="app", app_version="1", requested_node_id=keyed
    )
    fresh = store.register_node(
        public_key=None, attributes={}, app_name="app", app_version="1", requested_node_id=42
    )

    # Assert
    assert again == keyed
    row = store.node(keyed)
    assert row is not None
    assert (row.public_key, row.attributes, row.app_version) == (b"key-a", {"gpu": True}, "2")
    assert anon_1 != anon_2 and back == anon_1
    assert not_yours not in (keyed, anon_1, anon_2)
    assert fresh == 42
    assert all(0 < n < 2**63 for n in (keyed, anon_1, anon_2, not_yours))
    assert [n.node_id for n in store.nodes()] == [keyed, anon_1, anon_2, not_yours, 42]
    assert store.node(7) is None


def test_node_attributes_and_ids_are_validated(store: StateStore) -> None:
    with pytest.raises(ProtocolError, match="attribute"):
        store.register_node(
            public_key=None,
            attributes={"bad": [1, 2]},  # type: ignore[dict-item]
            app_name="a",
            app_version="1",
        )
    with pytest.raises(ProtocolError, match="requested node id"):
        store.register_node(
            public_key=None, attributes={}, app_name="a", app_version="1", requested_node_id=0
        )


def test_heartbeat_and_expiry_follow_the_injected_clock(
    store: StateStore, clock: ManualClock
) -> None:
    # Arrange
    quiet, chatty = _node(store), _node(store)
    clock.advance(15)
    store.heartbeat(chatty)

    # Act
    clock.advance(10)  # quiet: silent 25 s; chatty: 10 s
    expired = store.expire_nodes(20.0)

    # Assert
    assert expired == [quiet]
    assert [n.node_id for n in store.nodes(online_only=True)] == [chatty]
    assert store.node(chatty).last_seen == START + 15  # type: ignore[union-attr]
    assert store.expire_nodes(20.0) == []  # already offline
    store.heartbeat(quiet)
    assert store.node(quiet).online  # type: ignore[union-attr]
    store.set_online(quiet, False)
    assert not store.node(quiet).online  # type: ignore[union-attr]
    with pytest.raises(ProtocolError, match="not registered"):
        store.heartbeat(12345)
    with pytest.raises(ProtocolError, match="not registered"):
        store.set_online(12345, True)
    with pytest.raises(ConfigError):
        store.expire_nodes(0)


def test_a_restart_takes_every_node_offline_until_it_shows_a_sign_of_life(
    store: StateStore, clock: ManualClock
) -> None:
    # A server down for longer than two heartbeats must not declare nodes dead for its
    # own downtime, nor sample nodes whose connections died with it.
    _, second = _node(store), _node(store)
    clock.advance(60)

    assert store.mark_all_offline() == 2
    assert store.nodes(online_only=True) == []
    assert store.expire_nodes(20.0) == []  # offline nodes are not declared dead again
    store.heartbeat(second)
    assert [n.node_id for n in store.nodes(online_only=True)] == [second]
    assert store.mark_all_offline() == 1


# ----------------------------------------------------------------------------- runs


def test_runs_status_and_logs(store: StateStore) -> None:
    # Arrange
    run_id = _run(store)
    other = _run(store)

    # Act
    store.set_run_status(run_id, "failed", "boom")
    seqs = [store.append_log(run_id, f"line {i}") for i in range(5)]
    store.append_log(other, "elsewhere")

    # Assert
    row = store.run(run_id)
    assert row is not None
    assert (row.status, row.error, row.config, row.app_dir) == (
        "failed",
        "boom",
        {"lr": 0.1},
        "/apps/x",
    )
    assert [r.run_id for r in store.runs()] == [run_id, other]
    assert seqs == [1, 2, 3, 4, 5]
    assert store.logs(run_id, after=2, limit=2) == [(3, "line 2"), (4, "line 3")]
    assert store.logs(other) == [(1, "elsewhere")]
    assert store.run(999) is None
    with pytest.raises(ConfigError, match="not one of"):
        store.set_run_status(run_id, "done")
    with pytest.raises(ConfigError, match="does not exist"):
        store.set_run_status(999, "running")
    with pytest.raises(ConfigError, match="JSON"):
        store.create_run(app_name="a", app_version="1", app_dir=".", config={"x": object()})


# ----------------------------------------------------------------------------- instructions


def test_instruction_round_trip_delivery_and_ttl(store: StateStore, clock: ManualClock) -> None:
    # Arrange
    run_id, node_id = _run(store), _node(store)
    first = _instruction(run_id, node_id, created_at=START, ttl=100)
    second = _instruction(run_id, node_id, created_at=START + 1, ttl=10)

    # Act
    _add(store, second)
    _add(store, first)
    _add(store, first)  # idempotent
    store.mark_delivered(first.metadata.message_id)
    pending = store.pending_for_node(node_id)

    # Assert
    assert [p.metadata for p in pending] == [first.metadata, second.metadata]
    assert [p.state for p in pending] == ["delivered", "queued"]
    assert pending[0].delivered_at == START
    assert len(_files(store, "instructions")) == 2
    decoded = message_from_bytes(store.read_blob(pending[0].path, verify=True))
    assert decoded.metadata == first.metadata
    assert decoded.content["arrays"]["w"].tolist() == list(range(6))
    assert store.instruction(second.metadata.message_id) == pending[1]
    clock.advance(11)  # second's ttl has passed
    assert [p.metadata.message_id for p in store.pending_for_node(node_id)] == [
        first.metadata.message_id
    ]
    assert store.pending_for_node(node_id, now=START) == pending


def test_instruction_for_unknown_node_or_run_is_refused(store: StateStore) -> None:
    run_id, node_id = _run(store), _node(store)
    with pytest.raises(NodeUnavailableError, match="not registered"):
        _add(store, _instruction(run_id, 777))
    with pytest.raises(ConfigError, match="run 5 does not exist"):
        _add(store, _instruction(5, node_id))
    with pytest.raises(ConfigError, match="is a reply"):
        _add(store, _reply(_instruction(run_id, node_id)))
    with pytest.raises(ProtocolError, match="no instruction"):
        store.mark_delivered("nope")
    assert _files(store, "instructions") == []


# ----------------------------------------------------------------------------- replies


def test_reply_round_trip_and_deduplication(file_store: StateStore) -> None:
    # Arrange
    store = file_store
    run_id, node_id = _run(store), _node(store)
    instruction = _instruction(run_id, node_id)
    _add(store, instruction)
    reply = _reply(instruction, 0.25)
    second_answer = _reply(instruction, 0.75)  # another reply id, same instruction

    # Act
    stored = store.add_reply(reply.metadata, message_to_segments(reply))
    same_again = store.add_reply(reply.metadata, message_to_segments(reply))
    other = store.add_reply(second_answer.metadata, message_to_segments(second_answer))

    # Assert
    assert (stored, same_again, other) == (True, False, False)
    [row] = store.replies_for(run_id, [instruction.metadata.message_id, "unknown"])
    assert row.metadata == reply.metadata
    assert row.size == row.path.stat().st_size and len(row.sha256) == 64
    assert message_from_bytes(store.read_blob(row.path)).content["metrics"]["loss"] == 0.25
    assert len(_files(store, "replies")) == 1  # duplicates left no files
    assert store.pending_for_node(node_id) == []
    assert store.instruction(instruction.metadata.message_id).state == "replied"  # type: ignore[union-attr]
    store.mark_reply_consumed(reply.metadata.message_id)
    assert store.replies_for(run_id, [instruction.metadata.message_id], unconsumed_only=True) == []
    assert store.replies_for(run_id, [instruction.metadata.message_id])[0].consumed
    assert store.replies_for(run_id + 1, [instruction.metadata.message_id]) == []


def test_a_small_reply_is_kept_in_the_database_and_survives_a_reopen(
    db: Path, clock: ManualClock
) -> None:
    # Arrange: one reply arrives as segments, one through a staged upload in chunks
    with StateStore(db, clock=clock.now) as store:
        run_id, node_id = _run(store), _node(store)
        first, second = _instruction(run_id, node_id), _instruction(run_id, node_id)
        _add(store, first)
        _add(store, second)
        by_segments, by_upload = _reply(first, 0.25), _reply(second, 0.5)
        frame = message_to_bytes(by_upload)
        staged = store.stage(reply=True)
        for start in range(0, len(frame), 100):
            staged.write(frame[start : start + 100])
        decoded = message_from_bytes(staged.map())

        # Act
        assert store.add_reply(by_segments.metadata, message_to_segments(by_segments))
        assert store.add_reply(decoded.metadata, staged)

        # Assert: no file anywhere, the rows say so
        assert staged.in_memory
        assert (_files(store, "replies"), _files(store, "tmp")) == ([], [])
        rows = store.replies_for(run_id, [first.metadata.message_id, second.metadata.message_id])
        assert [row.inline for row in rows] == [True, True]
        assert bytes(store.read_blob(rows[1].path, verify=True)) == frame

    # Assert: committed is durable; a duplicate is still dropped; retiring removes them
    with StateStore(db, clock=clock.now) as store:
        rows = store.replies_for(run_id, [first.metadata.message_id, second.metadata.message_id])
        losses = [
            message_from_bytes(store.read_blob(row.path)).content["metrics"]["loss"] for row in rows
        ]
        assert losses == [0.25, 0.5]
        assert store.add_reply(by_segments.metadata, message_to_segments(by_segments)) is False
        for row in rows:
            store.mark_reply_consumed(row.metadata.message_id)
        store.save_checkpoint(run_id, 1, recorddict_to_segments(_arrays(1.0)))
        with pytest.raises(ConfigError, match="not a blob"):
            store.read_blob(rows[0].path)
        assert store.replies_for(run_id, [first.metadata.message_id]) == []


def test_a_reply_over_the_inline_limit_goes_to_a_file(db: Path, clock: ManualClock) -> None:
    # Arrange: a limit below the reply's size, reached in the middle of the upload
    with StateStore(db, clock=clock.now, inline_reply_bytes=1024) as store:
        run_id, node_id = _run(store), _node(store)
        instruction = _instruction(run_id, node_id)
        _add(store, instruction)
        reply = instruction.reply(
            RecordDict({"arrays": ArrayRecord({"w": np.arange(1000, dtype=np.float32)})})
        )
        frame = message_to_bytes(reply)
        staged = store.stage(reply=True)

        # Act
        for start in range(0, len(frame), 512):
            staged.write(frame[start : start + 512])
        spilled = not staged.in_memory
        assert store.add_reply(reply.metadata, staged)

        # Assert
        assert spilled
        [row] = store.replies_for(run_id, [instruction.metadata.message_id])
        assert not row.inline and row.path.stat().st_size == len(frame)
        arrays = message_from_bytes(store.read_blob(row.path)).content["arrays"]
        assert arrays["w"].tolist() == list(range(1000))


def test_reply_from_wrong_node_or_to_unknown_instruction_is_refused(file_store: StateStore) -> None:
    # Arrange
    store = file_store
    run_id, node_id, intruder = _run(store), _node(store), _node(store)
    instruction = _instruction(run_id, node_id)
    _add(store, instruction)
    reply = _reply(instruction)

    # Act / Assert
    forged = reply.with_metadata(src_node_id=intruder)
    with pytest.raises(ProtocolError, match=f"comes from node {intruder}.*sent to node {node_id}"):
        store.add_reply(forged.metadata, message_to_segments(forged))
    stray = reply.with_metadata(reply_to_message_id="missing")
    with pytest.raises(ProtocolError, match="unknown instruction"):
        store.add_reply(stray.metadata, message_to_segments(stray))
    wrong_run = reply.with_metadata(run_id=run_id + 1)
    with pytest.raises(ProtocolError, match="names run"):
        store.add_reply(wrong_run.metadata, message_to_segments(wrong_run))
    with pytest.raises(ProtocolError, match="not a reply"):
        store.add_reply(instruction.metadata, message_to_segments(instruction))
    assert store.add_reply(reply.metadata, message_to_segments(reply))
    other = _instruction(run_id, node_id)
    _add(store, other)
    reused_id = _reply(other).with_metadata(message_id=reply.metadata.message_id)
    with pytest.raises(ProtocolError, match="already used"):
        store.add_reply(reused_id.metadata, message_to_segments(reused_id))
    assert len(_files(store, "replies")) == 1


def test_fail_pending_for_node_makes_decodable_error_replies(store: StateStore) -> None:
    # Arrange
    run_id, dead, alive = _run(store), _node(store), _node(store)
    answered = _instruction(run_id, dead)
    lost = [_instruction(run_id, dead, created_at=START + i) for i in range(1, 3)]
    elsewhere = _instruction(run_id, alive)
    for msg in (answered, *lost, elsewhere):
        _add(store, msg)
    store.mark_delivered(lost[0].metadata.message_id)
    store.add_reply(_reply(answered).metadata, message_to_segments(_reply(answered)))

    # Act
    failed = store.fail_pending_for_node(dead, code=ErrorCode.NODE_UNAVAILABLE, reason="gone")

    # Assert
    assert failed == [m.metadata.message_id for m in lost]
    rows = store.replies_for(run_id, failed)
    for row, instruction in zip(rows, lost, strict=True):
        decoded = message_from_bytes(store.read_blob(row.path, verify=True))
        assert decoded.error is not None
        assert (decoded.error.code, decoded.error.reason) == (ErrorCode.NODE_UNAVAILABLE, "gone")
        assert decoded.metadata.reply_to_message_id == instruction.metadata.message_id
        assert decoded.metadata.src_node_id == dead
        assert row.metadata == decoded.metadata
    late = _reply(lost[0])
    assert not store.add_reply(late.metadata, message_to_segments(late))  # error came first
    assert store.fail_pending_for_node(dead, code=ErrorCode.NODE_UNAVAILABLE, reason="x") == []
    assert len(store.pending_for_node(alive)) == 1


def test_expire_instructions_answers_with_timeout_errors(
    store: StateStore, clock: ManualClock
) -> None:
    # Arrange
    run_id, node_id = _run(store), _node(store)
    short = _instruction(run_id, node_id, ttl=5)
    long = _instruction(run_id, node_id, ttl=500)
    _add(store, short)
    _add(store, long)

    # Act
    assert store.expire_instructions() == []
    clock.advance(5)
    expired = store.expire_instructions()

    # Assert
    assert expired == [short.metadata.message_id]
    [row] = store.replies_for(run_id, expired)
    decoded = message_from_bytes(store.read_blob(row.path))
    assert decoded.error is not None and decoded.error.code == ErrorCode.TIMEOUT
    assert store.expire_instructions(now=START + 1000) == [long.metadata.message_id]


def test_read_blob_checks_size_hash_and_location(store: StateStore) -> None:
    # Arrange
    run_id, node_id = _run(store), _node(store)
    msg = _instruction(run_id, node_id)
    _add(store, msg)
    [row] = store.pending_for_node(node_id)
    relative = row.path.relative_to(store.blob_dir)
    data = bytearray(row.path.read_bytes())

    # Act / Assert
    assert bytes(store.read_blob(relative)) == bytes(data)
    data[-1] ^= 0xFF
    row.path.write_bytes(data)
    store.read_blob(row.path)  # same size: only the hash can tell
    with pytest.raises(SerializationError, match="corrupt"):
        store.read_blob(row.path, verify=True)
    row.path.write_bytes(data[:-1])
    with pytest.raises(SerializationError, match="bytes, but"):
        store.read_blob(row.path)
    row.path.unlink()
    with pytest.raises(SerializationError, match="missing"):
        store.read_blob(row.path)
    with pytest.raises(ConfigError):
        store.read_blob(store.blob_dir / "instructions" / ".." / ".." / "server.db")
    with pytest.raises(ConfigError):
        store.read_blob("/etc/passwd")


def test_delete_run_messages_removes_rows_and_files(store: StateStore) -> None:
    # Arrange
    run_id, keep_run, node_id = _run(store), _run(store), _node(store)
    msg, kept = _instruction(run_id, node_id), _instruction(keep_run, node_id)
    _add(store, msg)
    _add(store, kept)
    store.add_reply(_reply(msg).metadata, message_to_segments(_reply(msg)))

    # Act
    store.delete_run_messages(run_id)

    # Assert
    assert store.replies_for(run_id, [msg.metadata.message_id]) == []
    assert store.instruction(msg.metadata.message_id) is None
    assert _files(store, "replies") == []
    assert len(_files(store, "instructions")) == 1
    assert [p.metadata for p in store.pending_for_node(node_id)] == [kept.metadata]


def test_a_checkpoint_retires_consumed_replies_and_answered_instructions(
    file_store: StateStore,
) -> None:
    store = file_store
    # Arrange: a broadcast to two nodes, one answered and consumed, one still waiting;
    # a single instruction answered but not consumed yet; and another run's messages.
    run_id, other_run = _run(store), _run(store)
    first, second, third = _node(store), _node(store), _node(store)
    shared = [_instruction(run_id, n) for n in (first, second)]
    content = shared[0].content
    store.add_broadcast([m.metadata for m in shared], recorddict_to_segments(content))
    single = _instruction(run_id, third)
    _add(store, single)
    elsewhere = _instruction(other_run, third)
    _add(store, elsewhere)
    answered = _reply(shared[0])
    store.add_reply(answered.metadata, message_to_segments(answered))
    store.mark_reply_consumed(answered.metadata.message_id)
    unread = _reply(single)
    store.add_reply(unread.metadata, message_to_segments(unread))
    assert (len(_files(store, "instructions")), len(_files(store, "replies"))) == (3, 2)

    # Act
    store.save_checkpoint(run_id, 1, recorddict_to_segments(_arrays(1.0)))
    store.settle()  # the files go on a thread of their own

    # Assert: the consumed reply and the answered single instruction are gone; the
    # broadcast content stays while the second node has not answered.
    assert len(_files(store, "replies")) == 1
    assert len(_files(store, "instructions")) == 2
    assert store.replies_for(run_id, [shared[0].metadata.message_id]) == []
    [row] = store.replies_for(run_id, [single.metadata.message_id])
    assert message_from_bytes(store.read_blob(row.path)).content["metrics"]["loss"] == 1.0
    [pending] = store.pending_for_node(second)
    assert pending.metadata == shared[1].metadata and pending.content_only
    kept = recorddict_from_bytes(store.read_blob(pending.path))
    assert kept["arrays"]["w"].tolist() == content["arrays"]["w"].tolist()
    # Retired rows still de-duplicate: the same reply again is dropped, not stored.
    assert store.add_reply(answered.metadata, message_to_segments(answered)) is False
    assert len(_files(store, "replies")) == 1

    # Act: the rest is answered and consumed, and the next checkpoint retires it all.
    store.mark_reply_consumed(unread.metadata.message_id)
    late = _reply(shared[1])
    store.add_reply(late.metadata, message_to_segments(late))
    store.mark_reply_consumed(late.metadata.message_id)
    store.save_checkpoint(run_id, 2, recorddict_to_segments(_arrays(2.0)))
    store.settle()

    # Assert: only the other run's instruction is left; the run's end still cleans up.
    assert _files(store, "replies") == []
    assert len(_files(store, "instructions")) == 1
    store.delete_run_messages(run_id)
    assert [p.metadata for p in store.pending_for_node(third)] == [elsewhere.metadata]


def test_consumed_replies_can_be_retired_before_the_checkpoint(file_store: StateStore) -> None:
    store = file_store
    run_id, node = _run(store), _node(store)
    consumed, waiting = _instruction(run_id, node), _instruction(run_id, node)
    _add(store, consumed)
    _add(store, waiting)
    reply = _reply(consumed)
    store.add_reply(reply.metadata, message_to_segments(reply))
    store.mark_reply_consumed(reply.metadata.message_id)

    # Act: the consumed reply and its answered instruction go; the waiting one stays.
    assert store.retire_consumed(run_id) == 2
    store.settle()

    assert _files(store, "replies") == [] and len(_files(store, "instructions")) == 1
    assert store.replies_for(run_id, [consumed.metadata.message_id]) == []
    assert store.add_reply(reply.metadata, message_to_segments(reply)) is False  # still known
    assert store.retire_consumed(run_id) == 0
    with pytest.raises(ConfigError, match="run"):
        store.retire_consumed(run_id + 1000)


def test_a_retired_reply_file_is_overwritten_by_a_later_reply(file_store: StateStore) -> None:
    store = file_store
    run_id, node = _run(store), _node(store)

    def answer(size: int) -> Message:
        instruction = _instruction(run_id, node)
        _add(store, instruction)
        reply = instruction.reply(
            RecordDict({"arrays": ArrayRecord({"w": np.arange(size, dtype=np.float32)})})
        )
        assert store.add_reply(reply.metadata, message_to_segments(reply))
        store.mark_reply_consumed(reply.metadata.message_id)
        return reply

    # Arrange: a large reply, consumed and retired by the round's checkpoint.
    answer(100_000)
    store.save_checkpoint(run_id, 1, recorddict_to_segments(_arrays(1.0)))
    store.settle()
    recycled = {p.stat().st_ino for p in (store.blob_dir / "recycled").iterdir()}
    assert len(recycled) == 2  # the reply and its answered instruction

    # Act: a smaller reply arrives.
    small = answer(10)

    # Assert: it went into a recycled file, cut to its own length, and reads back whole.
    [row] = store.replies_for(run_id, [small.metadata.reply_to_message_id])
    path = store.blob_dir / row.path
    assert path.stat().st_ino in recycled
    assert path.stat().st_size == row.size
    stored = message_from_bytes(store.read_blob(row.path, verify=True))
    assert stored.content["arrays"]["w"].tolist() == list(range(10))
    # Closing the store deletes what is left in the pool.
    store.close()
    assert list((store.blob_dir / "recycled").iterdir()) == []


# ----------------------------------------------------------------------------- checkpoints


def _arrays(value: float) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({"w": np.full(4, value, dtype=np.float64)})})


def test_checkpoints_keep_the_newest_three(store: StateStore) -> None:
    # Arrange
    run_id = _run(store)

    # Act
    for server_round in range(5):
        store.save_checkpoint(
            run_id, server_round, recorddict_to_segments(_arrays(server_round)), meta={"r": 1}
        )
    store.save_checkpoint(run_id, 4, recorddict_to_segments(_arrays(40.0)))  # redo a round

    # Assert
    latest = store.latest_checkpoint(run_id)
    assert latest is not None
    assert (latest.server_round, latest.meta) == (4, {})
    assert recorddict_from_bytes(latest.data)["arrays"]["w"].tolist() == [40.0] * 4
    store.settle()  # older files go on the reaper's thread
    assert len(_files(store, "checkpoints")) == 3
    assert store.latest_checkpoint(_run(store)) is None
    with pytest.raises(ConfigError, match="meta"):
        store.save_checkpoint(run_id, 5, [b"x"], meta={"bad": None})  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match="server_round"):
        store.save_checkpoint(run_id, -1, [b"x"])
    store.settle()
    assert len(_files(store, "checkpoints")) == 3


def test_corrupt_checkpoint_falls_back_to_the_previous_one(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    # Arrange
    run_id = _run(store)
    for server_round in (1, 2, 3):
        store.save_checkpoint(run_id, server_round, recorddict_to_segments(_arrays(server_round)))
    newest = store.latest_checkpoint(run_id)
    assert newest is not None and newest.server_round == 3
    data = bytearray(newest.path.read_bytes())
    data[-1] ^= 0x01
    newest.path.write_bytes(data)
    newest.data.release()

    # Act
    with caplog.at_level(logging.WARNING, logger="pollinate"):
        fallback = store.latest_checkpoint(run_id)

    # Assert
    assert fallback is not None and fallback.server_round == 2
    assert recorddict_from_bytes(fallback.data)["arrays"]["w"].tolist() == [2.0] * 4
    assert newest.path.name in caplog.text and "corrupt" in caplog.text
    fallback.path.unlink()  # missing counts as unusable too
    older = store.latest_checkpoint(run_id)
    assert older is not None and older.server_round == 1
    older.path.write_bytes(b"short")
    with pytest.raises(SerializationError, match="every checkpoint of run"):
        store.latest_checkpoint(run_id)


# ----------------------------------------------------------------------------- durability


def test_everything_survives_reopening(db: Path, clock: ManualClock) -> None:
    # Arrange
    with StateStore(db, clock=clock.now) as store:
        run_id, node_id = _run(store), _node(store, b"k")
        msg = _instruction(run_id, node_id)
        _add(store, msg)
        store.append_log(run_id, "hello")

    # Act
    with StateStore(db, clock=clock.now) as store:
        # Assert
        assert store.run(run_id) is not None and store.node(node_id) is not None
        assert [p.metadata for p in store.pending_for_node(node_id)] == [msg.metadata]
        assert store.logs(run_id) == [(1, "hello")]
        mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_acknowledged_reply_survives_kill_9(db: Path, clock: ManualClock) -> None:
    # Arrange
    with StateStore(db, clock=clock.now) as store:
        run_id, node_id = _run(store), _node(store)
        instruction = _instruction(run_id, node_id)
        _add(store, instruction)

    # Act: the child is killed the instant add_reply returns (before any clean-up)
    child = _child(
        db,
        """
        assert store.add_reply(reply.metadata, message_to_segments(reply))
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )

    # Assert
    assert child.returncode == -signal.SIGKILL, child.stderr
    with StateStore(db, clock=clock.now) as store:
        [row] = store.replies_for(run_id, [instruction.metadata.message_id])
        decoded = message_from_bytes(store.read_blob(row.path, verify=True))
        assert decoded.content["metrics"]["loss"] == 0.5
        assert store.pending_for_node(node_id, now=START) == []


_KILL_BEFORE_COMMIT = "store._commit_reply = lambda *a: os.kill(os.getpid(), signal.SIGKILL)"


@pytest.mark.parametrize(
    ("crash", "inline"),
    [
        # killed while the blob is still a temp file (the fsync is never reached)
        ("os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)", False),
        # killed after the blob is in place but before the row is committed
        (_KILL_BEFORE_COMMIT, False),
        # a small reply: killed before the transaction holding its bytes commits
        (_KILL_BEFORE_COMMIT, True),
    ],
    ids=["mid-blob", "before-commit", "inline-before-commit"],
)
def test_reply_killed_before_commit_is_not_visible(
    db: Path, clock: ManualClock, crash: str, inline: bool
) -> None:
    # Arrange
    with StateStore(db, clock=clock.now) as store:
        run_id, node_id = _run(store), _node(store)
        instruction = _instruction(run_id, node_id)
        _add(store, instruction)

    # Act
    child = _child(
        db,
        f"""
        {crash}
        store.add_reply(reply.metadata, message_to_segments(reply))
        raise SystemExit("not killed")
        """,
        inline=inline,
    )

    # Assert
    assert child.returncode == -signal.SIGKILL, child.stderr
    blobs = db.parent / "server.db.blobs"
    leftovers = [*blobs.glob("tmp/*"), *blobs.glob("replies/*")]
    assert bool(leftovers) != inline, "a reply file is left behind unless it was inline"
    with StateStore(db, clock=clock.now) as store:
        assert store.replies_for(run_id, [instruction.metadata.message_id]) == []
        assert len(store.pending_for_node(node_id, now=START)) == 1
        assert _files(store, "replies") == [] and _files(store, "tmp") == []
        reply = _reply(instruction)
        assert store.add_reply(reply.metadata, message_to_segments(reply))  # retry works


# ----------------------------------------------------------------------------- threads


def test_concurrent_use_from_threads(file_store: StateStore) -> None:
    # Arrange
    store = file_store
    run_id = _run(store)
    nodes = [_node(store) for _ in range(8)]
    instructions = [_instruction(run_id, n) for n in nodes for _ in range(5)]
    for msg in instructions:
        _add(store, msg)
    outcomes: list[bool] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        try:
            barrier.wait()
            for msg in instructions:  # every thread answers everything: one must win each
                if msg.metadata.dst_node_id == nodes[index] or index % 2 == 0:
                    reply = _reply(msg, index)
                    ok = store.add_reply(reply.metadata, message_to_segments(reply))
                    with lock:
                        outcomes.append(ok)
                store.heartbeat(nodes[index])
                store.append_log(run_id, f"thread {index}")
        except ProtocolError:
            pass  # replies on behalf of other nodes are refused; that is fine here
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    # Act
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Assert
    assert errors == []
    ids = [m.metadata.message_id for m in instructions]
    replies = store.replies_for(run_id, ids)
    assert [r.metadata.reply_to_message_id for r in replies] == ids
    assert outcomes.count(True) == len(instructions)
    assert len(_files(store, "replies")) == len(instructions)


def test_racing_duplicates_store_exactly_one(file_store: StateStore) -> None:
    # Arrange
    store = file_store
    run_id, node_id = _run(store), _node(store)
    instruction = _instruction(run_id, node_id)
    _add(store, instruction)
    replies = [_reply(instruction, i) for i in range(8)]
    results: list[bool] = []
    barrier = threading.Barrier(len(replies))

    def send(reply: Message) -> None:
        barrier.wait()
        results.append(store.add_reply(reply.metadata, message_to_segments(reply)))

    # Act
    threads = [threading.Thread(target=send, args=(r,)) for r in replies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    # Assert
    assert sorted(results) == [False] * 7 + [True]
    assert len(_files(store, "replies")) == 1


# ----------------------------------------------------------------------------- opening


def test_newer_schema_is_refused(db: Path) -> None:
    # Arrange
    StateStore(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()

    # Act / Assert
    with pytest.raises(
        ConfigError, match=rf"newer Pollinate \(schema version {SCHEMA_VERSION + 1}"
    ):
        StateStore(db)
    StateStore(db.parent / "other.db").close()  # the failed open released its lock


def test_a_version_1_database_is_upgraded_in_place(db: Path) -> None:
    # Arrange: a database as version 1 wrote it (no content_only column, no inline data)
    with StateStore(db) as store:
        run_id = store.create_run(app_name="a", app_version="1", app_dir=".", config={})
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE instructions DROP COLUMN content_only")
        conn.execute("ALTER TABLE blobs DROP COLUMN data")
        conn.execute("UPDATE schema_version SET version = 1")
    conn.close()

    # Act
    with StateStore(db) as store:
        # Assert: its data is kept and broadcasts can be stored
        assert store.run(run_id) is not None
    with sqlite3.connect(db) as conn:
        version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(instructions)")]
        blob_columns = [row[1] for row in conn.execute("PRAGMA table_info(blobs)")]
    conn.close()
    assert version == SCHEMA_VERSION
    assert "content_only" in columns
    assert "data" in blob_columns


def test_foreign_files_and_second_owner_are_refused(db: Path, tmp_path: Path) -> None:
    not_sqlite = tmp_path / "junk.db"
    not_sqlite.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError, match="not a Pollinate state database"):
        StateStore(not_sqlite)
    other_sqlite = tmp_path / "other.db"
    with sqlite3.connect(other_sqlite) as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    with pytest.raises(ConfigError, match="not a Pollinate state database"):
        StateStore(other_sqlite)
    with StateStore(db), pytest.raises(ConfigError, match="in use"):
        StateStore(db)
    store = StateStore(db)  # free again after close
    store.close()
    store.close()  # idempotent
    with pytest.raises(ConfigError, match="closed"):
        store.runs()


# ----------------------------------------------------------------------------- broadcasts


def test_a_broadcast_stores_its_content_once_and_each_node_gets_its_own_frame(
    store: StateStore,
) -> None:
    # Arrange
    run_id = _run(store)
    nodes = [_node(store) for _ in range(3)]
    instructions = [_instruction(run_id, node) for node in nodes]
    content = instructions[0].content

    # Act
    stored = store.add_broadcast(
        [i.metadata for i in instructions], recorddict_to_segments(content)
    )
    again = store.add_broadcast([instructions[0].metadata], recorddict_to_segments(content))

    # Assert
    assert stored == [i.metadata.message_id for i in instructions]
    assert again == []  # already stored: skipped, and its file dropped
    assert len(_files(store, "instructions")) == 1
    for node, instruction in zip(nodes, instructions, strict=True):
        [row] = store.pending_for_node(node)
        assert row.content_only and row.metadata == instruction.metadata
        head, data = message_parts_from_content(row.metadata, store.read_blob(row.path))
        assert head + bytes(data) == b"".join(message_to_segments(instruction))
    store.delete_run_messages(run_id)
    assert _files(store, "instructions") == []


def test_a_broadcast_to_an_unknown_node_stores_nothing(store: StateStore) -> None:
    run_id, node = _run(store), _node(store)
    good, bad = _instruction(run_id, node), _instruction(run_id, node_id=424242)
    with pytest.raises(NodeUnavailableError, match="424242"):
        store.add_broadcast([good.metadata, bad.metadata], recorddict_to_segments(good.content))
    assert store.pending_for_node(node) == []
    assert _files(store, "instructions") == []


def test_a_staged_reply_is_moved_into_place_and_a_duplicate_staged_file_is_removed(
    store: StateStore,
) -> None:
    # Arrange: bytes arrive chunk by chunk into a staged file
    run_id, node_id = _run(store), _node(store)
    instruction = _instruction(run_id, node_id)
    _add(store, instruction)
    reply = _reply(instruction)
    frame = b"".join(message_to_segments(reply))
    staged, duplicate = store.stage(), store.stage()
    for part in (frame[:10], frame[10:]):
        staged.write(part)
        duplicate.write(part)

    # Act
    assert message_from_bytes(staged.map()).metadata == reply.metadata
    first, second = (
        store.add_reply(reply.metadata, staged),
        store.add_reply(reply.metadata, duplicate),
    )

    # Assert
    assert (first, second) == (True, False)
    [row] = store.replies_for(run_id, [instruction.metadata.message_id])
    assert bytes(store.read_blob(row.path)) == frame
    assert list(store.staging_dir.iterdir()) == []  # both staged files are gone


def test_only_upload_files_inside_the_staging_directory_are_adopted(
    store: StateStore, tmp_path: Path
) -> None:
    outside = tmp_path / "x.upload"
    outside.write_bytes(b"data")
    wrong_name = store.staging_dir / "x.part"
    wrong_name.write_bytes(b"data")
    link = store.staging_dir / "link.upload"
    link.symlink_to(outside)
    for path in (outside, wrong_name, link, store.staging_dir / "missing.upload"):
        with pytest.raises(ConfigError, match="not an upload file"):
            store.adopt(path)
    good = store.staging_dir / "y.upload"
    good.write_bytes(b"12345")
    assert store.adopt(good).size == 5


def test_an_adopted_checkpoint_keeps_its_writers_hash_and_a_wrong_one_is_caught(
    store: StateStore,
) -> None:
    # The ServerApp on this machine writes a checkpoint file and says its SHA-256.
    run_id = _run(store)
    for server_round, frame in ((1, b"round one"), (2, b"round two")):
        path = store.staging_dir / f"{server_round}.upload"
        path.write_bytes(frame)
        declared = hashlib.sha256(frame if server_round == 1 else b"other").hexdigest()
        store.save_checkpoint(run_id, server_round, store.adopt(path, sha256=declared))

    latest = store.latest_checkpoint(run_id)  # round 2's hash does not match its bytes
    assert latest is not None and latest.server_round == 1
    assert bytes(latest.data) == b"round one"
    another = store.staging_dir / "3.upload"
    another.write_bytes(b"round three")
    with pytest.raises(ConfigError, match="not a SHA-256"):
        store.adopt(another, sha256="ABC")


def test_acknowledged_replies_are_committed_with_fsync_and_bookkeeping_without(
    store: StateStore,
) -> None:
    # Which commits pay an fsync: SQLite's synchronous level at each INSERT/UPDATE.
    run_id, node_id = _run(store), _node(store)
    instruction = _instruction(run_id, node_id)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)  # type: ignore[union-attr]
    _add(store, instruction)
    store.mark_delivered(instruction.metadata.message_id)
    store.heartbeat(node_id)
    reply = _reply(instruction)
    store.add_reply(reply.metadata, message_to_segments(reply))
    store._conn.set_trace_callback(None)  # type: ignore[union-attr]

    level, levels = "FULL", {}
    for statement in statements:
        if statement.startswith("PRAGMA synchronous"):
            level = statement.rsplit(" ", 1)[1]
        elif statement.startswith(("INSERT INTO", "UPDATE")):
            levels.setdefault(" ".join(statement.split()[:3]), set()).add(level)
    assert levels["INSERT INTO replies"] == {"FULL"}
    assert levels["INSERT INTO instructions"] == {"NORMAL"}
    assert levels["UPDATE nodes SET"] == {"NORMAL"}
