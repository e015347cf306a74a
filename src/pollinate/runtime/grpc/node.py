"""The node agent: runs next to the data, pulls work, runs the local ClientApp.

A node only ever runs the ClientApp installed on its own machine: instructions carry
data, never code. It registers, keeps a heartbeat going on its own thread (so a long
training call never looks like a dead node), receives instructions on a stream as soon
as they exist, and pushes each reply back, retrying until the server acknowledges it
(replies are de-duplicated by id, so a retry never counts twice). When the connection
drops it reconnects with exponential backoff and jitter, saying so in its log. The
first connection fails fast with a clear error instead, so a wrong address is noticed
within seconds.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from pollinate.client import ClientApp
from pollinate.errors import NodeUnavailableError, ProtocolError
from pollinate.records import ConfigValue, Context, Error, ErrorCode, Message, RecordDict
from pollinate.runtime.grpc._common import CHANNEL_OPTIONS, NODE_ID_KEY, translate_rpc_error
from pollinate.runtime.grpc.bulk import (
    BULK_MIN_BYTES,
    BulkClient,
    BulkRefusedError,
    BulkUnavailableError,
    client_ssl_context,
)
from pollinate.runtime.grpc.chunks import ChunkAssembler, iter_chunks
from pollinate.runtime.grpc.security import RequestSigner
from pollinate.runtime.grpc.wire import Delivery, fleet_stub
from pollinate.serde import message_from_bytes, message_to_segments
from pollinate.serde._proto.pollinate.v1 import service_pb2 as pb

__all__ = ["NodeAgent", "NodeSettings"]


#: Seconds a node uses gRPC for frames after the bulk port failed, before trying it again.
_BULK_RETRY_AFTER = 600.0


class _UseGrpc(Exception):
    """The bulk port failed: subscribe again, asking for instructions over gRPC."""


log = logging.getLogger("pollinate.node")


@dataclass
class NodeSettings:
    """Who this node is and how it reaches its server."""

    server: str
    app: ClientApp
    app_name: str
    app_version: str
    node_config: dict[str, ConfigValue] = field(default_factory=dict)
    channel_credentials: grpc.ChannelCredentials | None = None
    signer: RequestSigner | None = None
    connect_timeout: float = 10.0
    max_backoff: float = 30.0
    max_frame_bytes: int = 8 * 1024**3
    #: The CA certificate (PEM) the server's TLS certificate is checked against on the
    #: bulk port; with ``channel_credentials`` but without it, the bulk port is not used.
    root_certificate: bytes | None = None
    #: Use the server's bulk port for frames when it has one (see :mod:`.bulk`).
    bulk: bool = True


class NodeAgent:
    """Connects, serves instructions, reconnects; :meth:`run` returns when stopped."""

    def __init__(self, settings: NodeSettings, *, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()
        self.node_id = 0
        self._states: dict[int, RecordDict] = {}  # Context.state per run
        self._forgotten = threading.Event()  # the server no longer knows this node
        self._bulk: BulkClient | None = None  # the server's bulk port, while usable
        self._bulk_retry_at = 0.0  # after a failure, frames go over gRPC until then

    # -- connection -------------------------------------------------------------------
    def _channel(self) -> grpc.Channel:
        if self.settings.channel_credentials is not None:
            return grpc.secure_channel(
                self.settings.server, self.settings.channel_credentials, options=CHANNEL_OPTIONS
            )
        return grpc.insecure_channel(self.settings.server, options=CHANNEL_OPTIONS)

    def _metadata(self, method: str) -> tuple[tuple[str, str | bytes], ...]:
        entries: list[tuple[str, str | bytes]] = [(NODE_ID_KEY, str(self.node_id))]
        if self.settings.signer is not None:
            entries += self.settings.signer.sign(method, self.node_id or None)
        return tuple(entries)

    def run(self) -> None:
        """Serve until stopped. Raises NodeUnavailableError if the first connection fails,
        and ProtocolError if the server refuses this node (bad key, wrong app...)."""
        attempt = 0
        connected_once = False
        while not self.stop.is_set():
            channel = self._channel()
            try:
                grpc.channel_ready_future(channel).result(timeout=self.settings.connect_timeout)
                self._serve(fleet_stub(channel))
                attempt = 0
            except grpc.FutureTimeoutError:
                if not connected_once:
                    raise NodeUnavailableError(
                        f"cannot reach a Pollinate server at {self.settings.server} within "
                        f"{self.settings.connect_timeout:g} s; check --server and that the "
                        "server runs (and TLS settings match)"
                    ) from None
            except _UseGrpc:
                connected_once = True  # reconnect at once, without the bulk port
                continue
            except grpc.RpcError as exc:
                error = translate_rpc_error(exc, "node")
                if not connected_once and self.node_id == 0:
                    # Never registered: a wrong address, a refusal or a server that is not
                    # Pollinate. Say so now rather than retry forever.
                    raise error from None
                log.warning("connection lost: %s", error)
            finally:
                channel.close()
            connected_once = connected_once or self.node_id != 0
            if self.stop.is_set():
                return
            delay = min(self.settings.max_backoff, 0.5 * 2**attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            log.warning(
                "reconnecting to %s in %.1f s (attempt %d)", self.settings.server, delay, attempt
            )
            self.stop.wait(delay)

    def _serve(self, stub: Any) -> None:
        response = stub.Register(
            pb.RegisterRequest(
                app_name=self.settings.app_name,
                app_version=self.settings.app_version,
                attributes={k: str(v) for k, v in self.settings.node_config.items()},
                node_id=self.node_id,
            ),
            metadata=self._metadata("Register"),
            timeout=self.settings.connect_timeout,
        )
        self.node_id = int(response.node_id)
        self._forgotten.clear()
        self._bulk = self._bulk_client(int(response.bulk_port))
        log.warning(
            "connected to %s as node %d%s",
            self.settings.server,
            self.node_id,
            "" if self._bulk is None else f" (frames on its bulk port {self._bulk.port})",
        )
        beat = threading.Event()
        heart = threading.Thread(
            target=self._heartbeat,
            args=(stub, float(response.heartbeat_interval), beat),
            name="heartbeat",
            daemon=True,
        )
        heart.start()
        deliveries = stub.Subscribe(
            pb.SubscribeRequest(node_id=self.node_id, bulk=self._bulk is not None),
            metadata=self._metadata("Subscribe"),
        )
        stopper = threading.Thread(
            target=self._cancel_on_stop, args=(deliveries, beat), daemon=True
        )
        stopper.start()
        try:
            for message, run_info in self._instructions(deliveries):
                reply = self._handle(message, run_info)
                # Freed now, not when the next instruction replaces them: a model-sized
                # frame and reply each, which the next round's buffers can then reuse.
                del message
                self._push(stub, reply, run_info.offer.reply_ticket if run_info.offer else b"")
                del reply
        finally:
            beat.set()
            deliveries.cancel()

    def _bulk_client(self, port: int) -> BulkClient | None:
        """A client for the server's bulk port, if it has one and this node may use it."""
        settings = self.settings
        if not port or not settings.bulk or time.monotonic() < self._bulk_retry_at:
            return None
        context = None
        if settings.channel_credentials is not None:
            if settings.root_certificate is None:
                return None
            context = client_ssl_context(settings.root_certificate)
        host = settings.server.rsplit(":", 1)[0].strip("[]")
        return BulkClient(host, port, context)

    def _cancel_on_stop(self, call: Any, done: threading.Event) -> None:
        """End the subscription when stopped, or when the server forgot this node (the
        run loop then registers again)."""
        while not done.wait(0.2):
            if self.stop.is_set() or self._forgotten.is_set():
                call.cancel()
                return

    def _heartbeat(self, stub: Any, interval: float, done: threading.Event) -> None:
        while not done.wait(interval):
            try:
                answer = stub.Heartbeat(
                    pb.HeartbeatRequest(node_id=self.node_id),
                    metadata=self._metadata("Heartbeat"),
                    timeout=interval,
                )
                if not answer.known:
                    log.warning("the server no longer knows node %d; re-registering", self.node_id)
            except grpc.RpcError as exc:
                log.warning("heartbeat failed: %s", translate_rpc_error(exc, "heartbeat"))

    # -- work -------------------------------------------------------------------------
    def _instructions(self, deliveries: Iterator[Delivery]) -> Iterator[tuple[Message, Delivery]]:
        assembler: ChunkAssembler | None = None
        first: Delivery | None = None
        for delivery in deliveries:
            if delivery.offer is not None:
                fetched = self._fetch(delivery.offer)
                if fetched is not None:
                    yield fetched, delivery
                continue
            if delivery.chunk is None:
                continue
            if assembler is None:
                assembler = ChunkAssembler(max_bytes=self.settings.max_frame_bytes)
                first = delivery
            if assembler.add(delivery.chunk):
                assert first is not None
                yield message_from_bytes(assembler.frame()), first
                assembler, first = None, None

    def _fetch(self, offer: pb.BulkOffer) -> Message | None:
        """An offered instruction from the bulk port. If the port cannot be used, the
        node subscribes again without it, and the server streams the instruction over
        gRPC instead; if the server refuses (the instruction is no longer waiting, or
        its bytes failed their check), the instruction is skipped (``None``)."""
        assert self._bulk is not None  # offers come only to a node that asked for them
        try:
            frame = self._bulk.fetch(
                offer.ticket,
                size=offer.size,
                head_size=offer.head_size,
                digests=list(offer.digests),
                max_bytes=self.settings.max_frame_bytes,
            )
        except BulkUnavailableError as exc:
            log.warning(
                "the bulk port failed (%s); frames go over gRPC for the next %.0f s",
                exc,
                _BULK_RETRY_AFTER,
            )
            self._bulk_retry_at = time.monotonic() + _BULK_RETRY_AFTER
            raise _UseGrpc from None
        except BulkRefusedError as exc:
            log.error("skipping instruction %s: %s", offer.message_id, exc)
            return None
        return message_from_bytes(frame)

    def _handle(self, message: Message, run_info: Delivery) -> Message:
        wanted = (run_info.app_name, run_info.app_version)
        have = (self.settings.app_name, self.settings.app_version)
        if wanted != have:
            reason = (
                f"this node runs {have[0]} {have[1]}; run {message.metadata.run_id} "
                f"needs {wanted[0]} {wanted[1]}"
            )
            log.warning("refusing an instruction: %s", reason)
            return message.reply(error=Error(ErrorCode.NO_HANDLER, reason))
        run_id = message.metadata.run_id
        try:
            run_config = json.loads(run_info.run_config_json or "{}")
        except json.JSONDecodeError:
            run_config = {}
        context = Context(
            run_id=run_id,
            node_id=self.node_id,
            node_config=dict(self.settings.node_config),
            run_config=run_config,
            state=self._states.setdefault(run_id, RecordDict()),
        )
        started = time.monotonic()
        reply = self.settings.app(message, context)
        self._states[run_id] = context.state
        log.info(
            "%s for run %d in %.2f s%s",
            message.metadata.message_type,
            run_id,
            time.monotonic() - started,
            " (error)" if reply.has_error() else "",
        )
        return reply

    def _push(self, stub: Any, reply: Message, ticket: bytes = b"") -> None:
        """Send a reply until the server acknowledges it (bounded by the stop flag): on
        the bulk port with the offer's ``ticket`` if there is one, else (or if that
        fails) over gRPC."""
        segments = message_to_segments(reply)
        size = sum(memoryview(segment).nbytes for segment in segments)
        if ticket and self._bulk is not None and size >= BULK_MIN_BYTES:
            try:
                self._bulk.upload(ticket, segments)
                return
            except (BulkUnavailableError, BulkRefusedError) as exc:
                log.warning("the bulk port failed (%s); sending the reply over gRPC", exc)
        for attempt in range(8):
            try:
                stub.PushReply(
                    iter_chunks(reply.metadata.message_id, segments),
                    metadata=self._metadata("PushReply"),
                    timeout=300,
                )
                return
            except grpc.RpcError as exc:
                error = translate_rpc_error(exc, "reply")
                if isinstance(error, ProtocolError):
                    log.error("the server refused a reply: %s", error)
                    return
                if self.stop.is_set():
                    return
                log.warning("sending a reply failed (%s); retrying", error)
                time.sleep(min(5.0, 0.2 * 2**attempt))
        raise NodeUnavailableError("could not deliver a reply after 8 attempts")
