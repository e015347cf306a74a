"""GrpcGrid: the Grid a run's ServerApp uses when it runs under a Pollinate server."""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc

from pollinate.errors import NodeUnavailableError, SerializationError
from pollinate.records import ConfigRecord, Message, RecordDict
from pollinate.runtime.grpc._common import CHANNEL_OPTIONS, RUN_TOKEN_KEY, translate_rpc_error
from pollinate.runtime.grpc.chunks import iter_chunks, read_frames
from pollinate.runtime.grpc.recycle import RecyclePool
from pollinate.runtime.grpc.wire import Chunk, grid_io_stub
from pollinate.sampling import NodeInfo
from pollinate.serde import (
    message_from_bytes,
    message_to_segments,
    recorddict_from_bytes,
    recorddict_to_segments,
)
from pollinate.serde._proto.pollinate.v1 import service_pb2 as pb
from pollinate.server.grid import Grid
from pollinate.strategy.history import RunObserver

__all__ = ["GrpcGrid"]

_INSTRUCTIONS = "instructions"  # the ConfigRecord of a broadcast's metadata listing


class GrpcGrid(Grid):
    """Messages go through the server, which stores them and streams them to nodes."""

    def __init__(
        self,
        server: str,
        *,
        run_id: int,
        token: str,
        credentials: grpc.ChannelCredentials | None = None,
        observer: RunObserver | None = None,
        max_frame_bytes: int = 8 * 1024**3,
        local_replies: bool = False,
        staging_dir: str | Path | None = None,
        recycle_dir: str | Path | None = None,
    ) -> None:
        super().__init__(run_id=run_id, observer=observer)
        if credentials is not None:
            self._channel = grpc.secure_channel(server, credentials, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(server, options=CHANNEL_OPTIONS)
        self._stub = grid_io_stub(self._channel)
        self._metadata: tuple[tuple[str, str | bytes], ...] = ((RUN_TOKEN_KEY, token),)
        self._max_frame_bytes = max_frame_bytes
        #: On the server's machine: map reply files rather than stream them.
        self._local_replies = local_replies
        #: On the server's machine: write contents there rather than upload them.
        self._staging_dir = None if staging_dir is None else Path(staging_dir)
        #: Retired files of the server's to overwrite rather than create new ones.
        self._recycled = None if recycle_dir is None else RecyclePool(Path(recycle_dir))
        #: A checkpoint being written on a thread of its own (on the server's machine).
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint: Future[None] | None = None

    def node_info(self) -> list[NodeInfo]:
        try:
            response = self._stub.ListNodes(
                pb.ListNodesRequest(), metadata=self._metadata, timeout=30
            )
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, "listing nodes") from None
        return sorted(
            (
                NodeInfo(n.node_id, attributes=dict(n.attributes), online=n.online)
                for n in response.nodes
            ),
            key=lambda info: info.node_id,
        )

    def nodes(self) -> list[int]:
        return [info.node_id for info in self.node_info() if info.online]

    def send(self, messages: Iterable[Message]) -> list[str]:
        """Send instructions; those sharing one content object upload it once."""
        batch = list(messages)
        groups: dict[int, list[Message]] = {}
        for message in batch:
            groups.setdefault(id(message.content), []).append(message)
        for group in groups.values():
            if self._staging_dir is not None:
                self._send_local(group)
            elif len(group) == 1:
                self._send_one(group[0])
            else:
                self._send_broadcast(group)
        return [message.metadata.message_id for message in batch]

    def _send_one(self, message: Message) -> None:
        segments = message_to_segments(message)
        self._call(
            "sending an instruction",
            self._stub.Send,
            iter_chunks(message.metadata.message_id, segments),
        )

    def _send_broadcast(self, group: list[Message]) -> None:
        listing = RecordDict(
            {
                _INSTRUCTIONS: ConfigRecord(
                    {"json": json.dumps([asdict(message.metadata) for message in group])}
                )
            }
        )
        content_id = f"content-{group[0].metadata.message_id}"

        def chunks() -> Iterator[Chunk]:
            yield from iter_chunks(content_id, recorddict_to_segments(group[0].content))
            yield from iter_chunks(f"{content_id}-instructions", recorddict_to_segments(listing))

        self._call("sending instructions", self._stub.SendBroadcast, chunks())

    def _send_local(self, group: list[Message]) -> None:
        """Write the shared content where the server takes it over: no upload at all."""
        assert self._staging_dir is not None
        path = self._staging_dir / f"{uuid.uuid4().hex}.upload"
        try:
            _write_file(path, recorddict_to_segments(group[0].content), reuse=self._recycled)
            request = pb.BroadcastFile(
                path=str(path),
                instructions_json=json.dumps([asdict(message.metadata) for message in group]),
            )
            self._call("sending instructions", self._stub.SendBroadcastLocal, request)
        finally:
            if path.exists():  # the server moves it on success; clean up after a refusal
                os.unlink(path)

    def _call(self, what: str, method: Any, request: Any) -> None:
        try:
            method(request, metadata=self._metadata, timeout=600)
        except grpc.RpcError as exc:
            error = translate_rpc_error(exc, what)
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NodeUnavailableError(str(error)) from None
            raise error from None

    def receive(self, message_ids: Sequence[str], *, timeout: float) -> Iterator[Message]:
        # Saving a checkpoint retires the replies consumed so far: the previous round's
        # must be saved before this round's replies are consumed.
        self._finish_checkpoint()
        request = pb.ReceiveRequest(message_ids=list(message_ids), timeout=timeout)
        call: Any
        frames: Iterator[tuple[str, Any]]
        if self._local_replies:
            call = self._stub.ReceiveLocal(request, metadata=self._metadata, timeout=timeout + 30)
            frames = ((location.reply_to_message_id, _reply_frame(location)) for location in call)
        else:
            call = self._stub.Receive(request, metadata=self._metadata, timeout=timeout + 30)
            frames = read_frames(call, max_bytes=self._max_frame_bytes)
        try:
            for _, frame in frames:
                yield message_from_bytes(frame)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise translate_rpc_error(exc, "receiving replies") from None
        finally:
            call.cancel()

    def save_checkpoint(self, server_round: int, state: RecordDict) -> None:
        """Store a completed round's state on the server (it survives a server restart).

        On the server's machine the state is copied now and written on a thread of its
        own while the next round's instructions go out: it is durable before that
        round's replies are received (and before :meth:`close` returns); an error in
        writing it is raised then.
        """
        self._finish_checkpoint()
        self._retire_consumed()
        if self._staging_dir is not None:
            snapshot = b"".join(recorddict_to_segments(state))  # immune to later changes
            if self._checkpointer is None:
                self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="checkpoint")
            self._checkpoint = self._checkpointer.submit(
                self._save_checkpoint_local, server_round, snapshot
            )
            return
        metadata = (*self._metadata, ("x-pollinate-round", str(server_round)))
        try:
            self._stub.SaveCheckpoint(
                iter_chunks(f"checkpoint-{server_round}", recorddict_to_segments(state)),
                metadata=metadata,
                timeout=600,
            )
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, "saving a checkpoint") from None

    def _retire_consumed(self) -> None:
        """Let the server retire the replies this process has consumed before the
        checkpoint is stored (which would retire them too), so their files are free to
        be reused for the checkpoint and the next round's content."""
        try:
            self._stub.RetireConsumed(
                pb.RetireConsumedRequest(), metadata=self._metadata, timeout=30
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED:  # an older server: no matter
                raise translate_rpc_error(exc, "retiring consumed replies") from None

    def _finish_checkpoint(self) -> None:
        """Wait for the checkpoint being written, raising its error if it failed."""
        pending, self._checkpoint = self._checkpoint, None
        if pending is not None:
            pending.result()

    def _save_checkpoint_local(self, server_round: int, frame: bytes) -> None:
        """Write the checkpoint where the server takes it over, durably: no upload."""
        assert self._staging_dir is not None
        path = self._staging_dir / f"{uuid.uuid4().hex}.upload"
        try:
            digest = _write_file(path, [frame], sync=True, reuse=self._recycled)
            request = pb.CheckpointFile(path=str(path), server_round=server_round, sha256=digest)
            self._call("saving a checkpoint", self._stub.SaveCheckpointLocal, request)
        finally:
            if path.exists():  # the server moves it on success; clean up after a refusal
                os.unlink(path)

    def load_checkpoint(self) -> tuple[int, RecordDict] | None:
        """The latest valid checkpoint of this run, if any."""
        self._finish_checkpoint()
        call = self._stub.LoadCheckpoint(
            pb.CheckpointRequest(), metadata=self._metadata, timeout=600
        )
        try:
            for transfer_id, frame in read_frames(call, max_bytes=self._max_frame_bytes):
                return int(transfer_id.rsplit("-", 1)[1]), recorddict_from_bytes(frame)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, "loading a checkpoint") from None
        return None

    def close(self) -> None:
        try:
            self._finish_checkpoint()
        finally:
            if self._checkpointer is not None:
                self._checkpointer.shutdown()
                self._checkpointer = None
            self._channel.close()


def _write_file(
    path: Path, segments: Iterable[Any], *, sync: bool = False, reuse: RecyclePool | None = None
) -> str:
    """Write a frame to a new file (or one taken from ``reuse``); returns its SHA-256
    (hex) if ``sync``, after an fsync (a checkpoint must be durable before the server
    records it)."""
    digest = hashlib.sha256()
    reused = reuse.take(path) if reuse is not None else None
    with reused or open(path, "xb") as file:
        for segment in segments:
            view = memoryview(segment).cast("B")
            if sync:
                digest.update(view)
            file.write(view)
        file.truncate()  # a recycled file is longer than what was written
        if sync:
            file.flush()
            os.fsync(file.fileno())
    return digest.hexdigest()


def _reply_frame(location: pb.ReplyLocation) -> memoryview:
    """A stored reply's frame: given inline (a small reply), or mapped from its file."""
    if not location.path:
        if len(location.frame) != location.size:
            raise SerializationError(
                f"inline reply to {location.reply_to_message_id} has {len(location.frame)} "
                f"bytes, expected {location.size}"
            )
        return memoryview(location.frame)
    return _map_file(location.path, location.size)


def _map_file(path: str, size: int) -> memoryview:
    """A read-only map of a reply frame the server stored, checked for its size."""
    with open(path, "rb") as file:
        # Not MAP_POPULATE: replies wait in sending order (Grid.send_and_receive), and a
        # waiting reply must cost its header's pages, not the whole model, until it is
        # aggregated (the kernel maps 64 KiB per fault then, from the page cache).
        mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
    if mapped is None:
        return memoryview(b"")
    if len(mapped) != size:
        raise SerializationError(f"reply file {path} has {len(mapped)} bytes, expected {size}")
    return memoryview(mapped)
