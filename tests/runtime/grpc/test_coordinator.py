"""Coordinator bookkeeping: which unpacked apps are kept, what is recycled, what the
bulk port serves to whom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pollinate.records import ArrayRecord, Message, MetricRecord, RecordDict
from pollinate.runtime.grpc.apps import pack_app, unpack_app
from pollinate.runtime.grpc.bulk import (
    OP_FETCH,
    OP_UPLOAD,
    BulkClient,
    BulkRefusedError,
    BulkServer,
)
from pollinate.runtime.grpc.server import Coordinator, FleetBulk, ServerSettings
from pollinate.runtime.grpc.state import StateStore
from pollinate.serde import message_from_bytes, message_to_segments, recorddict_to_segments


def _app(root: Path, name: str) -> Path:
    app = root / name
    app.mkdir()
    (app / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "1.0"\n')
    return app


def test_only_apps_of_pending_or_running_runs_are_kept(tmp_path: Path) -> None:
    with StateStore(tmp_path / "state.db") as store:
        coordinator = Coordinator(ServerSettings(address="127.0.0.1:0", state=store.path), store)
        unpacked = {
            name: unpack_app(pack_app(_app(tmp_path, name)), coordinator.apps_dir)
            for name in ("finished", "running", "pending")
        }
        for name, app_dir in unpacked.items():
            run_id = store.create_run(
                app_name=name, app_version="1.0", app_dir=str(app_dir), config={}
            )
            if name != "pending":
                store.set_run_status(run_id, "running" if name == "running" else "completed")
        leftover = coordinator.apps_dir / ".unpacking-crashed"
        leftover.mkdir()

        removed = coordinator.prune_apps()

        assert sorted(removed) == sorted([unpacked["finished"], leftover])
        assert sorted(coordinator.apps_dir.iterdir()) == sorted(
            [unpacked["running"], unpacked["pending"]]
        )
        assert coordinator.prune_apps() == []


def _retired_content_is_recycled(tmp_path: Path, *, forget: bool) -> bool:
    """Send a broadcast's content to its one node from the cache, answer and consume
    it, retire the round: whether the content's file went to the recycling pool."""
    with StateStore(tmp_path / "state.db", clock=lambda: 1000.0) as store:
        coordinator = Coordinator(ServerSettings(address="127.0.0.1:0", state=store.path), store)
        run_id = store.create_run(app_name="app", app_version="1", app_dir=".", config={})
        node = store.register_node(public_key=None, attributes={}, app_name="app", app_version="1")
        content = RecordDict({"arrays": ArrayRecord({"w": np.arange(6, dtype=np.float32)})})
        instruction = Message(content, dst_node_id=node, message_type="train", group_id="1")
        instruction = instruction.with_metadata(run_id=run_id, created_at=1000.0)
        store.add_broadcast([instruction.metadata], recorddict_to_segments(content))
        [row] = store.pending_for_node(node)
        coordinator.content(row)  # mapped and kept, as when it was sent
        reply = instruction.reply(RecordDict({"metrics": MetricRecord({"loss": 1.0})}))
        store.add_reply(reply.metadata, message_to_segments(reply))
        store.mark_reply_consumed(reply.metadata.message_id)

        if forget:
            coordinator.forget_contents()  # what RetireConsumed does first
        store.retire_consumed(run_id)
        store.settle()
        return any((store.blob_dir / "recycled").iterdir())


def test_a_content_kept_for_sending_is_recycled_once_forgotten(tmp_path: Path) -> None:
    assert not _retired_content_is_recycled(tmp_path / "kept", forget=False)
    assert _retired_content_is_recycled(tmp_path / "forgotten", forget=True)


def test_the_bulk_service_serves_a_node_its_own_instruction_and_reply_only(
    tmp_path: Path,
) -> None:
    # FleetBulk behind a real bulk port: a node fetches the broadcast made for it (the
    # head it gets matches the digests its offer would carry) and uploads its reply;
    # another node's ticket, a reply to another instruction and a second fetch are refused.
    with StateStore(tmp_path / "state.db", clock=lambda: 1000.0) as store:
        coordinator = Coordinator(ServerSettings(address="127.0.0.1:0", state=store.path), store)
        run_id = store.create_run(app_name="app", app_version="1", app_dir=".", config={})
        nodes = [
            store.register_node(public_key=None, attributes={}, app_name="app", app_version="1")
            for _ in range(2)
        ]
        content = RecordDict({"arrays": ArrayRecord({"w": np.arange(3_000_000, dtype=np.float32)})})
        instructions = [
            Message(content, dst_node_id=node, message_type="train", group_id="1").with_metadata(
                run_id=run_id, created_at=1000.0
            )
            for node in nodes
        ]
        store.add_broadcast([m.metadata for m in instructions], recorddict_to_segments(content))
        rows = [store.pending_for_node(node)[0] for node in nodes]
        bulk = BulkServer("127.0.0.1", 0, FleetBulk(coordinator), coordinator.tickets)
        bulk.start()
        try:
            client = BulkClient("127.0.0.1", bulk.port, timeout=10)
            size, head_size, digests = coordinator.frame_digests(rows[0])

            def ticket(op: int, node: int, row: int) -> bytes:
                message_id = rows[row].metadata.message_id
                return coordinator.tickets.issue(op, node, message_id, ttl=60)

            def fetch(token: bytes) -> memoryview:
                return client.fetch(
                    token, size=size, head_size=head_size, digests=digests, max_bytes=1 << 30
                )

            fetched = message_from_bytes(fetch(ticket(OP_FETCH, nodes[0], 0)))
            assert fetched.metadata.message_id == instructions[0].metadata.message_id
            w = fetched.content["arrays"]["w"]
            assert np.array_equal(w, content["arrays"]["w"])
            assert store.pending_for_node(nodes[0])[0].state == "delivered"
            # Delivered: a new ticket for it is refused (it is no longer waiting).
            with pytest.raises(BulkRefusedError, match="not waiting for this node"):
                fetch(ticket(OP_FETCH, nodes[0], 0))
            # Node 0 holding a ticket for node 1's instruction: not its instruction.
            with pytest.raises(BulkRefusedError, match="not waiting for this node"):
                fetch(ticket(OP_FETCH, nodes[0], 1))
            reply = fetched.reply(RecordDict({"arrays": ArrayRecord({"w": w + 1})}))
            # A reply must answer the instruction its upload ticket names.
            with pytest.raises(BulkRefusedError, match="may only send its own replies"):
                client.upload(ticket(OP_UPLOAD, nodes[0], 1), message_to_segments(reply))
            assert client.upload(ticket(OP_UPLOAD, nodes[0], 0), message_to_segments(reply))
            assert store.pending_for_node(nodes[0]) == []
            assert [r.metadata.message_id for r in store.pending_for_node(nodes[1])] == [
                instructions[1].metadata.message_id
            ]
        finally:
            bulk.close()
