"""The coordinator: nodes connect to it, runs are submitted to it, state survives it.

One gRPC server serves three services on one port (see ``proto/pollinate/v1/
service.proto``): Fleet for nodes, Control for the CLI, GridIo for the ServerApp of each
run. Each run's ServerApp runs in a child process of the server, so a run outlives the
terminal that submitted it and a failing app cannot take the server down.

Everything that must survive a crash is in the :class:`StateStore` before it is
acknowledged. Waiting is done on one condition variable that is notified whenever
instructions, replies or nodes change; every wait has a timeout.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc

from pollinate.errors import PollinateError, ProtocolError, SerializationError
from pollinate.records import ConfigRecord, ErrorCode, Message, Metadata
from pollinate.runtime.grpc._common import (
    NODE_ID_KEY,
    RUN_TOKEN_KEY,
    SERVER_OPTIONS,
    metadata_value,
)
from pollinate.runtime.grpc.apps import unpack_app
from pollinate.runtime.grpc.bulk import (
    BULK_MIN_BYTES,
    OP_FETCH,
    OP_UPLOAD,
    BulkRefusedError,
    BulkServer,
    Ticket,
    TicketBook,
    Upload,
    piece_digests,
    server_ssl_context,
)
from pollinate.runtime.grpc.chunks import (
    ChunkAssembler,
    chunk_digests,
    iter_cached_chunks,
    iter_chunks,
)
from pollinate.runtime.grpc.security import (
    AuthenticationError,
    RequestVerifier,
    control_method,
    is_loopback_peer,
)
from pollinate.runtime.grpc.slots import SendSlots
from pollinate.runtime.grpc.state import InstructionRow, StagedFile, StateStore
from pollinate.runtime.grpc.wire import (
    Chunk,
    ChunkLike,
    Delivery,
    add_fleet_servicer,
    add_grid_io_servicer,
)
from pollinate.serde import (
    message_from_bytes,
    message_parts_from_content,
    recorddict_from_bytes,
)
from pollinate.serde._proto.pollinate.v1 import service_pb2 as pb
from pollinate.serde._proto.pollinate.v1 import service_pb2_grpc as rpc

__all__ = ["Coordinator", "ServerSettings", "serve"]

log = logging.getLogger("pollinate.server")

_WAIT_SLICE = 2.0  # seconds a stream waits before re-checking its client and state
_INSTRUCTIONS = "instructions"  # the ConfigRecord of a broadcast's metadata listing
_CONCURRENT_SENDS = 2  # transfers to nodes at once (see Coordinator.sending)
#: Broadcasts at least this large are sent in sending order (smaller ones take no time
#: to send, and waiting for a node's stream to wake would cost more than it saves).
_ORDERED_SEND_BYTES = 1024 * 1024
_SEND_SLOT_WAIT = 2.0  # seconds a transfer waits for a slot before going anyway
_CACHED_CONTENTS = 1  # the content being sent (re-hashing another costs ~2 ms per 40 MB)
#: Seconds a bulk ticket lasts: longer than any training, since a node fetches its next
#: instruction only after training on the one before (the instruction expires first; a
#: node that registers again or is declared dead loses its tickets).
_TICKET_TTL = 7 * 24 * 3600.0


@dataclass
class ServerSettings:
    """How a server runs; the CLI fills it from its flags."""

    address: str
    state: Path
    credentials: grpc.ServerCredentials | None = None
    root_certificate: Path | None = None  # for the ServerApp processes to trust the server
    verifier: RequestVerifier | None = None
    #: Checks control calls (run, runs, logs, stop). Without it, only processes on this
    #: machine may make them: a run executes code on the server.
    operator_verifier: RequestVerifier | None = None
    heartbeat_interval: float = 5.0
    max_frame_bytes: int = 8 * 1024**3
    max_threads: int = 2048
    child_env: dict[str, str] = field(default_factory=dict)
    #: The bulk port nodes fetch and upload frames on (see :mod:`.bulk`): ``None`` for
    #: none (frames go over gRPC only), 0 for any free port.
    bulk_port: int | None = None
    #: The PEM files of the TLS certificate chain and key, for the bulk port.
    bulk_tls: tuple[Path, Path] | None = None
    #: The ServerApp maps reply files and writes contents into the state's staging
    #: directory (it runs on this machine); False makes it use the network, as one on
    #: another machine would (tests cover both paths this way).
    local_serverapp: bool = True


class Coordinator:
    """The server's shared state: the store, the wake-up signal, the runs' processes."""

    def __init__(self, settings: ServerSettings, store: StateStore) -> None:
        self.settings = settings
        self.store = store
        #: Submitted apps, unpacked once each (see pollinate.runtime.grpc.apps), kept
        #: while a pending or running run needs them (see prune_apps).
        self.apps_dir = store.path.parent / (store.path.name + ".apps")
        #: Held from unpacking an app until its run exists, and while pruning.
        self.apps_lock = threading.Lock()
        self.changed = threading.Condition()
        self.generation = 0
        self._tokens: dict[str, int] = {}
        self._processes: dict[int, subprocess.Popen[str]] = {}
        self._stopping: set[int] = set()
        self._node_events: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        #: Transfers to nodes at once: a few streams keep the link busy; more only add
        #: buffers, and every node would get its work later than if they took turns.
        #: Turns go in the order the ServerApp sent the instructions (see SendSlots).
        self.sending = SendSlots(_CONCURRENT_SENDS)
        self._contents: dict[str, tuple[memoryview, list[bytes]]] = {}
        self._contents_lock = threading.Lock()
        #: Tickets for the bulk port, and the port (0 while there is none).
        self.tickets = TicketBook()
        self.bulk_port = 0

    def content(self, row: InstructionRow) -> tuple[memoryview, list[bytes]]:
        """A broadcast's stored content, mapped, with the digests of its data section's
        chunks: hashed once, however many nodes it goes to."""
        key = str(row.path)
        with self._contents_lock:  # one thread hashes; the others wait for its result
            cached = self._contents.get(key)
            if cached is None:
                frame = self.store.read_blob(row.path)
                _, data = message_parts_from_content(row.metadata, frame)
                cached = (frame, chunk_digests(data))
                self._contents[key] = cached
                while len(self._contents) > _CACHED_CONTENTS:
                    self._contents.pop(next(iter(self._contents)))
            return cached

    def forget_contents(self) -> None:
        """Drop the contents kept mapped for sending: a ServerApp is done with a round,
        and a content still mapped here could not be recycled when it is retired (a
        node still receiving one keeps its own reference)."""
        with self._contents_lock:
            self._contents.clear()

    def notify(self) -> None:
        """Wake every waiting stream: something they may wait for changed."""
        with self.changed:
            self.generation += 1
            self.changed.notify_all()

    def node_event(self, node_id: int) -> threading.Event:
        """Set when work for ``node_id`` arrives; only that node's stream waits on it, so
        a round's instructions and replies do not wake every node's stream."""
        with self._lock:
            event = self._node_events.get(node_id)
            if event is None:
                event = self._node_events[node_id] = threading.Event()
            return event

    def wait(self, since: int, timeout: float) -> None:
        """Sleep until something changed after generation ``since``, or ``timeout`` passes.

        Callers read :attr:`generation` *before* looking at the store, so a change that
        lands between their look and their wait is never missed.
        """
        with self.changed:
            self.changed.wait_for(lambda: self.generation != since, timeout=max(0.0, timeout))

    # -- runs -----------------------------------------------------------------------------
    def start_run(self, run_id: int) -> None:
        """Start (or, after a restart, restart) the ServerApp process of a run."""
        run = self.store.run(run_id)
        if run is None:
            raise ProtocolError(f"no run {run_id}")
        token = secrets.token_hex(16)
        host, _, port = self.settings.address.rpartition(":")
        target = f"{'localhost' if host in ('', '0.0.0.0', '[::]') else host}:{port}"
        command = [sys.executable, "-m", "pollinate.cli.serverapp_process", "--server", target]
        if self.settings.root_certificate is not None:
            command += ["--root-certificate", str(self.settings.root_certificate)]
        else:
            command += ["--insecure"]
        env = {
            **os.environ,
            **self.settings.child_env,
            "POLLINATE_RUN_ID": str(run_id),
            "POLLINATE_RUN_TOKEN": token,
            "POLLINATE_APP_DIR": run.app_dir,
            "POLLINATE_RUN_CONFIG": json.dumps(dict(run.config)),
            "PYTHONUNBUFFERED": "1",
        }
        if self.settings.local_serverapp:
            # The ServerApp runs beside the state: it maps reply files instead of
            # receiving them, and writes contents where the server takes them over.
            env["POLLINATE_LOCAL_REPLIES"] = "1"
            env["POLLINATE_STAGING_DIR"] = str(self.store.staging_dir)
            env["POLLINATE_RECYCLE_DIR"] = str(self.store.recycle_dir)
        else:
            env.pop("POLLINATE_LOCAL_REPLIES", None)
            env.pop("POLLINATE_STAGING_DIR", None)
            env.pop("POLLINATE_RECYCLE_DIR", None)
        with self._lock:
            self._tokens[token] = run_id
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
            )
            self._processes[run_id] = process
        self.store.set_run_status(run_id, "running")
        threading.Thread(
            target=self._watch, args=(run_id, process, token), name=f"run-{run_id}", daemon=True
        ).start()

    def _watch(self, run_id: int, process: subprocess.Popen[str], token: str) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.store.append_log(run_id, line.rstrip("\n"))
            self.notify()
        code = process.wait()
        with self._lock:
            self._tokens.pop(token, None)
            self._processes.pop(run_id, None)
            stopped = run_id in self._stopping
        if self._closed.is_set():
            return  # the server is shutting down: the run resumes when it restarts
        if stopped:
            self.store.set_run_status(run_id, "stopped")
        elif code == 0:
            self.store.set_run_status(run_id, "completed")
        else:
            self.store.set_run_status(run_id, "failed", f"the ServerApp exited with code {code}")
        self.notify()
        self.prune_apps()

    def stop_run(self, run_id: int) -> bool:
        with self._lock:
            process = self._processes.get(run_id)
            if process is None:
                return False
            self._stopping.add(run_id)
        process.terminate()
        return True

    def run_of_token(self, token: str | None) -> int | None:
        with self._lock:
            return self._tokens.get(token or "")

    def prune_apps(self) -> list[Path]:
        """Delete the unpacked apps that no pending or running run needs (and what a
        crash left half unpacked); returns what was deleted. A finished run's app is
        not needed again: a new run sends its app anew."""
        if not self.apps_dir.is_dir():
            return []
        with self.apps_lock:
            needed = {
                Path(run.app_dir).resolve()
                for run in self.store.runs()
                if run.status in ("pending", "running")
            }
            # Unpacking happens under the same lock: a ".unpacking-*" left now is a crash's.
            doomed = [e for e in self.apps_dir.iterdir() if e.resolve() not in needed]
            for entry in doomed:
                shutil.rmtree(entry, ignore_errors=True)
        if doomed:
            log.info("removed %d app(s) no run needs", len(doomed))
        return doomed

    def resume_runs(self) -> None:
        """Restart the ServerApp of every run that was running when the server stopped."""
        runs = [run for run in self.store.runs() if run.status == "running"]
        if runs:
            # Instructions sent before the restart belong to rounds that will be redone.
            for node in self.store.nodes():
                self.store.fail_pending_for_node(
                    node.node_id, code=ErrorCode.TIMEOUT, reason="the server restarted"
                )
        for run in runs:
            if run.status == "running":
                log.warning("resuming run %d after a restart", run.run_id)
                self.start_run(run.run_id)

    # -- frames -------------------------------------------------------------------------
    def instruction_frame(self, instruction: InstructionRow) -> tuple[list[memoryview], int]:
        """An instruction's frame as segments, and the size of its first piece: a
        broadcast's head and shared content (the content hashed once for all its nodes),
        or a single stored frame (0: no separate head)."""
        if instruction.content_only:
            content, _ = self.content(instruction)
            head, data = message_parts_from_content(instruction.metadata, content)
            return [memoryview(head), data], len(head)
        return [self.store.read_blob(instruction.path)], 0

    def frame_digests(self, instruction: InstructionRow) -> tuple[int, int, list[bytes]]:
        """Size, first piece and piece digests of an instruction's frame (as
        :func:`.bulk.piece_digests` cuts it)."""
        if instruction.content_only:
            content, cached = self.content(instruction)
            head, data = message_parts_from_content(instruction.metadata, content)
            return len(head) + data.nbytes, len(head), [*piece_digests([head]), *cached]
        frame = self.store.read_blob(instruction.path)
        return frame.nbytes, 0, piece_digests([frame])

    def accept_reply(self, node_id: int, staged: StagedFile, *, reply_to: str = "") -> bool:
        """Store a reply that node ``node_id`` sent (its bytes in ``staged``): ``True``
        if new, ``False`` if a duplicate. ``reply_to``, if given, is the only instruction
        it may answer.

        Raises
        ------
        ReplyRefused
            If the frame is not a message, not this node's reply, or not storable.
        """
        try:
            frame = staged.map()
            metadata = message_from_bytes(frame).metadata
            del frame  # the decoded arrays map the file; only the metadata is needed
        except SerializationError as exc:
            raise ReplyRefused(
                grpc.StatusCode.INVALID_ARGUMENT, f"not a valid message frame: {exc}"
            ) from None
        if (
            not metadata.reply_to_message_id
            or metadata.src_node_id != node_id
            or (reply_to and metadata.reply_to_message_id != reply_to)
        ):
            raise ReplyRefused(
                grpc.StatusCode.PERMISSION_DENIED, f"node {node_id} may only send its own replies"
            )
        try:
            accepted = self.store.add_reply(metadata, staged)
        except (ProtocolError, PollinateError) as exc:
            raise ReplyRefused(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        self.store.heartbeat(node_id)
        self.notify()
        return accepted

    # -- liveness -----------------------------------------------------------------------
    def watch_liveness(self) -> None:
        """Declare silent nodes dead and expire old instructions, until closed."""
        interval = self.settings.heartbeat_interval
        while not self._closed.wait(interval / 2):
            for node_id in self.store.expire_nodes(2 * interval):
                failed = self.store.fail_pending_for_node(
                    node_id,
                    code=ErrorCode.NODE_UNAVAILABLE,
                    reason=f"node {node_id} stopped sending heartbeats",
                )
                self.tickets.forget_node(node_id)
                log.warning(
                    "node %d is dead (no heartbeat for %.0f s); %d pending instructions failed",
                    node_id,
                    2 * interval,
                    len(failed),
                )
            self.store.expire_instructions()
            self.notify()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            processes = list(self._processes.values())
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        self.notify()


class ReplyRefused(ProtocolError):
    """A reply the server will not store, with the gRPC status that says why."""

    def __init__(self, code: grpc.StatusCode, text: str) -> None:
        super().__init__(text)
        self.code = code


class FleetBulk:
    """The bulk port's service (see :mod:`.bulk`): instruction frames out, replies in,
    for holders of tickets that a node's Subscribe stream issued."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    def serve_fetch(
        self, ticket: Ticket, send: Callable[[Sequence[bytes | memoryview]], None]
    ) -> None:
        instruction = self.c.store.instruction(ticket.message_id)
        if (
            instruction is None
            or instruction.state != "queued"
            or instruction.metadata.dst_node_id != ticket.node_id
        ):
            raise BulkRefusedError(f"instruction {ticket.message_id} is not waiting for this node")
        segments, _ = self.c.instruction_frame(instruction)
        slot = self.c.sending.acquire(ticket.message_id, timeout=_SEND_SLOT_WAIT)
        try:
            send(segments)
        finally:
            if slot:
                self.c.sending.release(ticket.message_id)
        self.c.store.mark_delivered(ticket.message_id)

    def serve_upload(self, ticket: Ticket, upload: Upload) -> bool:
        if upload.size > self.c.settings.max_frame_bytes:
            raise BulkRefusedError(
                f"a reply of {upload.size} bytes exceeds {self.c.settings.max_frame_bytes}"
            )
        staged = self.c.store.stage(reply=True)
        try:
            upload.read_into(staged.write)
            try:
                return self.c.accept_reply(ticket.node_id, staged, reply_to=ticket.message_id)
            except ReplyRefused as exc:
                raise BulkRefusedError(str(exc)) from None
        finally:
            staged.discard()  # a no-op once the store moved it into place


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, text: str) -> NoReturn:
    log.warning("refused %s: %s", context.peer(), text)
    context.abort(code, text)
    raise AssertionError("unreachable")  # context.abort raises


def _receive_frame(
    chunks: Iterator[ChunkLike],
    context: grpc.ServicerContext,
    max_bytes: int,
    staged: StagedFile | None = None,
) -> memoryview:
    """One transfer from the stream: in memory, or written to ``staged`` as it arrives
    (then mapped back read-only)."""
    assembler = ChunkAssembler(max_bytes=max_bytes, sink=None if staged is None else staged.write)
    try:
        for chunk in chunks:
            if assembler.add(chunk):
                return assembler.frame() if staged is None else staged.map()
    except ProtocolError as exc:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "the transfer ended before its last chunk")


def _deliveries(
    chunks: Iterator[Chunk], run_info: tuple[str, str, str] | None
) -> Iterator[Delivery]:
    """Chunks as deliveries, the first carrying the run's app name, version and config."""
    first = True
    for chunk in chunks:
        delivery = Delivery(chunk=chunk)
        if first and run_info is not None:
            delivery.app_name, delivery.app_version, delivery.run_config_json = run_info
        first = False
        yield delivery


def _decode(frame: memoryview, context: grpc.ServicerContext) -> Message:
    try:
        return message_from_bytes(frame)
    except SerializationError as exc:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"not a valid message frame: {exc}")


class FleetServicer:
    """What nodes call."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    def _node(self, context: grpc.ServicerContext, method: str, node_id: int) -> int:
        """Authenticate a node's call and check it is a known node."""
        metadata = context.invocation_metadata()
        row = self.c.store.node(node_id)
        if self.c.settings.verifier is not None:
            try:
                key = self.c.settings.verifier.verify(method, node_id, metadata)
            except AuthenticationError as exc:
                _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
            if row is not None and row.public_key != key:
                _abort(
                    context,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"node id {node_id} does not belong to this key",
                )
        if row is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"unknown node {node_id}; register again")
        return node_id

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> Any:
        key = None
        if self.c.settings.verifier is not None:
            try:
                key = self.c.settings.verifier.verify(
                    "Register", None, context.invocation_metadata()
                )
            except AuthenticationError as exc:
                _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        node_id = self.c.store.register_node(
            public_key=key,
            attributes=dict(request.attributes),
            app_name=request.app_name,
            app_version=request.app_version,
            requested_node_id=request.node_id or None,
        )
        self.c.store.heartbeat(node_id)
        log.info("node %d registered (%s %s)", node_id, request.app_name, request.app_version)
        self.c.notify()
        self.c.tickets.forget_node(node_id)  # a node that registers again starts afresh
        return pb.RegisterResponse(
            node_id=node_id,
            heartbeat_interval=self.c.settings.heartbeat_interval,
            bulk_port=self.c.bulk_port,
        )

    def Heartbeat(self, request: pb.HeartbeatRequest, context: grpc.ServicerContext) -> Any:
        key = None
        if self.c.settings.verifier is not None:
            try:  # authenticate before saying anything about the node id
                key = self.c.settings.verifier.verify(
                    "Heartbeat", request.node_id, context.invocation_metadata()
                )
            except AuthenticationError as exc:
                _abort(context, grpc.StatusCode.UNAUTHENTICATED, str(exc))
        row = self.c.store.node(request.node_id)
        if row is None:
            return pb.HeartbeatResponse(known=False)
        if key is not None and row.public_key != key:
            _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"node id {request.node_id} does not belong to this key",
            )
        self.c.store.heartbeat(request.node_id)
        return pb.HeartbeatResponse(known=True)

    def Subscribe(self, request: pb.SubscribeRequest, context: grpc.ServicerContext) -> Any:
        node_id = self._node(context, "Subscribe", request.node_id)
        work = self.c.node_event(node_id)
        bulk = request.bulk and self.c.bulk_port != 0
        offered: set[str] = set()  # offers made on this stream, fetched or not yet
        while context.is_active():
            work.clear()  # before looking, so work added meanwhile is not missed
            pending = self.c.store.pending_for_node(node_id)
            sent_any = False
            for instruction in pending:
                if instruction.state != "queued" or instruction.metadata.message_id in offered:
                    continue
                run = self.c.store.run(instruction.metadata.run_id)
                run_info = (
                    None
                    if run is None
                    else (run.app_name, run.app_version, json.dumps(dict(run.config)))
                )
                message_id = instruction.metadata.message_id
                if bulk and instruction.size >= BULK_MIN_BYTES:
                    offered.add(message_id)
                    yield self._offer(node_id, instruction, run_info)
                    sent_any = True
                    continue
                if instruction.content_only:
                    content, digests = self.c.content(instruction)
                    head, data = message_parts_from_content(instruction.metadata, content)
                    chunks = iter_cached_chunks(message_id, head, data, digests)
                else:
                    chunks = iter_chunks(message_id, [self.c.store.read_blob(instruction.path)])
                # A slot is waited for briefly, never for long: a node on a slow link
                # must not hold the others back.
                slot = self.c.sending.acquire(message_id, timeout=_SEND_SLOT_WAIT)
                try:
                    yield from _deliveries(chunks, run_info)
                finally:
                    if slot:
                        self.c.sending.release(message_id)
                self.c.store.mark_delivered(message_id)
                sent_any = True
            if not sent_any:
                work.wait(_WAIT_SLICE)
                yield Delivery(keepalive=True)

    def _offer(
        self, node_id: int, instruction: InstructionRow, run_info: tuple[str, str, str] | None
    ) -> Delivery:
        """A bulk offer of ``instruction``: tickets to fetch it and to upload its reply.
        The fetch is marked delivered once its bytes are sent (see FleetBulk)."""
        message_id = instruction.metadata.message_id
        size, head_size, digests = self.c.frame_digests(instruction)
        offer = pb.BulkOffer(
            message_id=message_id,
            ticket=self.c.tickets.issue(OP_FETCH, node_id, message_id, ttl=_TICKET_TTL),
            size=size,
            head_size=head_size,
            digests=digests,
            reply_ticket=self.c.tickets.issue(OP_UPLOAD, node_id, message_id, ttl=_TICKET_TTL),
        )
        delivery = Delivery(offer=offer)
        if run_info is not None:
            delivery.app_name, delivery.app_version, delivery.run_config_json = run_info
        return delivery

    def PushReply(self, request_iterator: Iterator[Chunk], context: grpc.ServicerContext) -> Any:
        claimed = metadata_value(context.invocation_metadata(), NODE_ID_KEY)
        if claimed is None or not claimed.isdigit():
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"missing {NODE_ID_KEY} metadata with the node id",
            )
        node_id = self._node(context, "PushReply", int(claimed))
        staged = self.c.store.stage(reply=True)
        try:
            frame = _receive_frame(
                request_iterator, context, self.c.settings.max_frame_bytes, staged
            )
            del frame  # accept_reply reads it from the staged file
            try:
                accepted = self.c.accept_reply(node_id, staged)
            except ReplyRefused as exc:
                _abort(context, exc.code, str(exc))
        finally:
            staged.discard()  # a no-op once the store moved it into place
        return pb.PushReplyResponse(accepted=accepted)


class GridIoServicer:
    """What a run's ServerApp process calls."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    def _run(self, context: grpc.ServicerContext) -> int:
        token = metadata_value(context.invocation_metadata(), RUN_TOKEN_KEY)
        run_id = self.c.run_of_token(token)
        if run_id is None:
            _abort(context, grpc.StatusCode.UNAUTHENTICATED, "unknown or missing run token")
        return run_id

    def ListNodes(self, request: pb.ListNodesRequest, context: grpc.ServicerContext) -> Any:
        self._run(context)
        return pb.ListNodesResponse(
            nodes=[
                pb.NodeState(
                    node_id=n.node_id,
                    online=n.online,
                    attributes={k: str(v) for k, v in n.attributes.items()},
                )
                for n in self.c.store.nodes()
            ]
        )

    def Send(self, request_iterator: Iterator[Chunk], context: grpc.ServicerContext) -> Any:
        run_id = self._run(context)
        staged = self.c.store.stage()
        try:
            frame = _receive_frame(
                request_iterator, context, self.c.settings.max_frame_bytes, staged
            )
            metadata = _decode(frame, context).metadata
            del frame
            if metadata.reply_to_message_id or metadata.run_id != run_id:
                _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"only instructions of run {run_id} can be sent with this token",
                )
            node = self.c.store.node(metadata.dst_node_id)
            if node is None:
                _abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"no node {metadata.dst_node_id} is registered",
                )
            self.c.store.add_instruction(metadata, staged)
        finally:
            staged.discard()
        self._queued([metadata])
        return pb.SendResponse(message_id=metadata.message_id)

    def _queued(self, metadatas: list[Metadata], *, in_order: bool = False) -> None:
        """Wake the destination nodes; fail at once what went to nodes known to be gone.

        ``in_order``: send them in this order (a large broadcast: its replies are added
        in sending order, see SendSlots); small ones go as their streams ask.
        """
        if in_order:
            self.c.sending.expect(m.message_id for m in metadatas)
        for metadata in metadatas:
            node = self.c.store.node(metadata.dst_node_id)
            if node is None:
                continue
            self.c.node_event(node.node_id).set()
            if not node.online:
                self.c.store.fail_pending_for_node(
                    node.node_id,
                    code=ErrorCode.NODE_UNAVAILABLE,
                    reason=f"node {node.node_id} is offline",
                )
        self.c.notify()

    def SendBroadcast(
        self, request_iterator: Iterator[Chunk], context: grpc.ServicerContext
    ) -> Any:
        run_id = self._run(context)
        staged = self.c.store.stage()
        try:
            _receive_frame(request_iterator, context, self.c.settings.max_frame_bytes, staged)
            listing = _receive_frame(request_iterator, context, 64 * 1024 * 1024)
            try:
                record = recorddict_from_bytes(listing).get_kind(_INSTRUCTIONS, ConfigRecord)
                entries = json.loads(str(record["json"]))
            except (PollinateError, ValueError, TypeError, KeyError) as exc:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed broadcast: {exc}")
            if next(request_iterator, None) is not None:
                _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "a broadcast is 2 transfers (content, instructions), got more",
                )
            return self._broadcast(run_id, entries, staged, context)
        finally:
            staged.discard()

    def SendBroadcastLocal(self, request: pb.BroadcastFile, context: grpc.ServicerContext) -> Any:
        run_id = self._run(context)
        try:
            staged = self.c.store.adopt(request.path)
        except PollinateError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            try:
                entries = json.loads(request.instructions_json)
            except ValueError as exc:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed broadcast: {exc}")
            return self._broadcast(run_id, entries, staged, context)
        finally:
            staged.discard()

    def _broadcast(
        self, run_id: int, entries: Any, staged: StagedFile, context: grpc.ServicerContext
    ) -> pb.SendBroadcastResponse:
        """Check a broadcast's content and instructions, then store the content once."""
        content_frame = staged.map()
        try:
            recorddict_from_bytes(content_frame)  # refuse a malformed content now
            if not isinstance(entries, list) or not entries:
                raise ValueError("the instructions must be a non-empty JSON list")
            metadatas = [Metadata(**entry) for entry in entries]
        except (PollinateError, ValueError, TypeError) as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed broadcast: {exc}")
        for metadata in metadatas:
            if metadata.reply_to_message_id or metadata.run_id != run_id:
                _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"only instructions of run {run_id} can be sent with this token",
                )
            if self.c.store.node(metadata.dst_node_id) is None:
                _abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"no node {metadata.dst_node_id} is registered",
                )
            try:
                message_parts_from_content(metadata, content_frame)
            except PollinateError as exc:
                _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"malformed metadata: {exc}")
        del content_frame
        try:
            self.c.store.add_broadcast(metadatas, staged)
        except PollinateError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._queued(metadatas, in_order=staged.size >= _ORDERED_SEND_BYTES)
        return pb.SendBroadcastResponse(message_ids=[m.message_id for m in metadatas])

    def _arrivals(self, request: pb.ReceiveRequest, context: grpc.ServicerContext) -> Iterator[Any]:
        """Stored replies to the requested instructions, as they arrive, until all came,
        the request's timeout passed, or the caller went away."""
        run_id = self._run(context)
        deadline = time.monotonic() + max(0.0, request.timeout)
        waiting = list(request.message_ids)
        while waiting and context.is_active():
            seen = self.c.generation
            for row in self.c.store.replies_for(run_id, waiting):
                yield row
                self.c.store.mark_reply_consumed(row.metadata.message_id)
                waiting.remove(row.metadata.reply_to_message_id)
            remaining = deadline - time.monotonic()
            if not waiting or remaining <= 0:
                return
            self.c.wait(seen, min(remaining, _WAIT_SLICE))

    def Receive(self, request: pb.ReceiveRequest, context: grpc.ServicerContext) -> Any:
        for row in self._arrivals(request, context):
            frame = self.c.store.read_blob(row.path)
            yield from iter_chunks(row.metadata.reply_to_message_id, [frame])

    def ReceiveLocal(self, request: pb.ReceiveRequest, context: grpc.ServicerContext) -> Any:
        for row in self._arrivals(request, context):
            if row.inline:  # a small reply kept in the database: its bytes, not a path
                yield pb.ReplyLocation(
                    reply_to_message_id=row.metadata.reply_to_message_id,
                    size=row.size,
                    frame=bytes(self.c.store.read_blob(row.path)),
                )
            else:
                yield pb.ReplyLocation(
                    reply_to_message_id=row.metadata.reply_to_message_id,
                    path=str(row.path),
                    size=row.size,
                )

    def SaveCheckpoint(
        self, request_iterator: Iterator[Chunk], context: grpc.ServicerContext
    ) -> Any:
        run_id = self._run(context)
        server_round_text = metadata_value(context.invocation_metadata(), "x-pollinate-round")
        if server_round_text is None or not server_round_text.isdigit():
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "missing x-pollinate-round")
        staged = self.c.store.stage(hashed=True)
        try:
            _receive_frame(request_iterator, context, self.c.settings.max_frame_bytes, staged)
            self.c.store.save_checkpoint(run_id, int(server_round_text), staged)
        finally:
            staged.discard()
        return pb.SendResponse(message_id=f"checkpoint-{server_round_text}")

    def SaveCheckpointLocal(self, request: pb.CheckpointFile, context: grpc.ServicerContext) -> Any:
        run_id = self._run(context)
        try:
            staged = self.c.store.adopt(request.path, sha256=request.sha256)
        except PollinateError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            if not request.sha256:
                _abort(
                    context, grpc.StatusCode.INVALID_ARGUMENT, "a checkpoint file needs its sha256"
                )
            self.c.store.save_checkpoint(run_id, request.server_round, staged)
        except PollinateError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            staged.discard()
        return pb.SendResponse(message_id=f"checkpoint-{request.server_round}")

    def RetireConsumed(
        self, request: pb.RetireConsumedRequest, context: grpc.ServicerContext
    ) -> Any:
        run_id = self._run(context)
        self.c.forget_contents()
        try:
            retired = self.c.store.retire_consumed(run_id)
        except PollinateError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.RetireConsumedResponse(retired=retired)

    def LoadCheckpoint(self, request: pb.CheckpointRequest, context: grpc.ServicerContext) -> Any:
        run_id = self._run(context)
        checkpoint = self.c.store.latest_checkpoint(run_id)
        if checkpoint is not None:
            yield from iter_chunks(f"checkpoint-{checkpoint.server_round}", [checkpoint.data])


class ControlServicer(rpc.ControlServicer):
    """What the CLI calls. A run executes its ServerApp's code on this machine, and logs
    show a run's metrics, so each call is authenticated: signed by an operator key when
    the server has ``--operator-keys``, otherwise made from this machine."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    def _authorize(self, context: grpc.ServicerContext, name: str) -> None:
        verifier = self.c.settings.operator_verifier
        peer = context.peer()
        if verifier is not None:
            try:
                verifier.verify(control_method(name), None, context.invocation_metadata())
            except AuthenticationError as exc:
                log.warning("control call %s from %s refused: %s", name, peer, exc)
                _abort(
                    context,
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{exc} (control calls need --key FILE with a key the server lists in "
                    "its --operator-keys)",
                )
        elif not is_loopback_peer(peer):
            log.warning("control call %s from %s refused: no --operator-keys", name, peer)
            _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                f"control calls from another machine ({peer}) are refused: start the "
                "server with --operator-keys FILE and give the client --key FILE (a key "
                "from `pollinate keys`)",
            )

    def SubmitRun(self, request: pb.SubmitRunRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "SubmitRun")
        try:
            config = json.loads(request.config_json or "{}")
        except json.JSONDecodeError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"config is not JSON: {exc}")
        with self.c.apps_lock:  # the unpacked app is needed from now on
            app_dir = self._app_dir(request, context)
            run_id = self.c.store.create_run(
                app_name=request.app_name,
                app_version=request.app_version,
                app_dir=str(app_dir),
                config=config,
            )
        self.c.start_run(run_id)
        return pb.SubmitRunResponse(run_id=run_id)

    def _app_dir(self, request: pb.SubmitRunRequest, context: grpc.ServicerContext) -> Path:
        """Where the run's app is on this machine: its bundle unpacked, or the named
        directory of an app installed here."""
        if not request.app_bundle:
            if not Path(request.app_dir).is_dir():
                _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"app directory {request.app_dir!r} does not exist on the server",
                )
            return Path(request.app_dir)
        try:
            app_dir = unpack_app(request.app_bundle, self.c.apps_dir)
        except ProtocolError as exc:
            log.warning("app bundle from %s refused: %s", context.peer(), exc)
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not (app_dir / "pyproject.toml").is_file():
            _abort(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                "app bundle has no pyproject.toml at its top: pack a project directory",
            )
        return app_dir

    def ListRuns(self, request: pb.ListRunsRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "ListRuns")
        return pb.ListRunsResponse(
            runs=[
                pb.Run(
                    run_id=r.run_id,
                    app_name=r.app_name,
                    app_version=r.app_version,
                    status=r.status,
                    error=r.error or "",
                    created_at=r.created_at,
                )
                for r in self.c.store.runs()
            ]
        )

    def StreamLogs(self, request: pb.StreamLogsRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "StreamLogs")
        if self.c.store.run(request.run_id) is None:
            _abort(context, grpc.StatusCode.NOT_FOUND, f"no run {request.run_id}")
        after = request.after
        while context.is_active():
            seen = self.c.generation
            lines = self.c.store.logs(request.run_id, after=after)
            for seq, text in lines:
                yield pb.LogLine(seq=seq, text=text)
                after = seq
            run = self.c.store.run(request.run_id)
            finished = run is not None and run.status not in ("pending", "running")
            if finished and not lines:
                yield pb.LogLine(seq=after, final_status=run.status if run else "unknown")
                return
            if not request.follow and not lines:
                return
            if not lines:
                self.c.wait(seen, _WAIT_SLICE)

    def StopRun(self, request: pb.StopRunRequest, context: grpc.ServicerContext) -> Any:
        self._authorize(context, "StopRun")
        return pb.StopRunResponse(stopped=self.c.stop_run(request.run_id))


def serve(
    settings: ServerSettings,
    *,
    ready: threading.Event | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Run a server until ``stop`` is set (or forever), resuming unfinished runs."""
    store = StateStore(settings.state)
    store.mark_all_offline()  # before listening: nodes come back as they reconnect
    coordinator = Coordinator(settings, store)
    # Each node's Subscribe stream holds a thread for as long as it is connected, so the
    # pool is sized for nodes, not for CPU: past it, new calls would queue behind streams.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_threads), options=SERVER_OPTIONS
    )
    add_fleet_servicer(FleetServicer(coordinator), server)
    add_grid_io_servicer(GridIoServicer(coordinator), server)
    rpc.add_ControlServicer_to_server(ControlServicer(coordinator), server)
    try:
        if settings.credentials is not None:
            port = server.add_secure_port(settings.address, settings.credentials)
        else:
            port = server.add_insecure_port(settings.address)
    except RuntimeError:  # grpcio raises where older versions returned 0
        port = 0
    if port == 0:
        raise PollinateError(f"cannot listen on {settings.address}; is the port in use?")
    bulk = _start_bulk(settings, coordinator)  # before serving: nodes learn its port
    server.start()
    threading.Thread(target=coordinator.watch_liveness, name="liveness", daemon=True).start()
    log.warning(
        "Pollinate server listening on %s (%s), state in %s",
        settings.address,
        "TLS" if settings.credentials is not None else "INSECURE, plaintext",
        settings.state,
    )
    coordinator.resume_runs()
    coordinator.prune_apps()
    if ready is not None:
        ready.set()
    try:
        while not (stop.wait(1.0) if stop is not None else False):
            if stop is None:
                time.sleep(1.0)
    finally:
        coordinator.close()
        if bulk is not None:
            bulk.close()
        server.stop(grace=2).wait(5)
        store.close()


def _start_bulk(settings: ServerSettings, coordinator: Coordinator) -> BulkServer | None:
    """Open the bulk port beside the gRPC one, if asked to; nodes learn its number when
    they register. A port that cannot be opened is an error: a second server may hold
    it."""
    if settings.bulk_port is None:
        return None
    host = settings.address.rsplit(":", 1)[0].strip("[]") or "0.0.0.0"
    tls = settings.bulk_tls
    context = None if tls is None else server_ssl_context(str(tls[0]), str(tls[1]))
    try:
        bulk = BulkServer(
            host,
            settings.bulk_port,
            FleetBulk(coordinator),
            coordinator.tickets,
            ssl_context=context,
            max_upload_bytes=settings.max_frame_bytes,
        )
    except OSError as exc:
        raise PollinateError(
            f"cannot open the bulk port {host}:{settings.bulk_port}: {exc}; free it or give "
            "--bulk-port another port (or --bulk-port off)"
        ) from None
    bulk.start()
    coordinator.bulk_port = bulk.port
    log.warning("bulk port %d open (%s)", bulk.port, "TLS" if context else "plaintext")
    return bulk
