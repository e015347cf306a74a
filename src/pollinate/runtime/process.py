"""The process runtime: a pool of worker processes serving any number of virtual nodes.

Design
------
- One worker per core by default. A virtual node is not a process: it is an id and a
  state file, and exists in a worker only while that worker runs one of its messages.
- Arrays never go through a pipe. The content of an instruction is written once per
  broadcast as a frame (:mod:`pollinate.serde`) into a file of a private directory in
  shared memory (``/dev/shm``); every worker maps that same file read-only and reads
  its arrays in place. Replies come back the same way. Pipes carry only small JSON
  control records (paths, ids, metadata).
- Each worker runs one message at a time. A worker that dies (segfault, ``os._exit``,
  out of memory) turns its message into an error reply and is replaced; the run goes
  on. A message still running at its deadline is cancelled by replacing its worker.
- Workers are forked, so they inherit the loaded ClientApp and start in milliseconds.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import mmap
import multiprocessing
import multiprocessing.connection
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from pollinate.client import ClientApp
from pollinate.errors import ConfigError, SerializationError
from pollinate.records import Error, ErrorCode, Message, Metadata, RecordDict
from pollinate.runtime.loading import load_object
from pollinate.runtime.nodes import VirtualGrid, VirtualNodes, dated_as_if_alone
from pollinate.sampling import NodeInfo
from pollinate.serde import (
    frame_nbytes,
    message_from_bytes,
    message_to_segments,
    recorddict_from_bytes,
    recorddict_to_segments,
)
from pollinate.strategy.history import RunObserver
from pollinate.testing.clock import Clock

__all__ = ["ProcessGrid", "default_num_workers"]

log = logging.getLogger("pollinate")


def default_num_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _shared_memory_dir() -> Path:
    base = Path("/dev/shm")
    root = base if base.is_dir() and os.access(base, os.W_OK) else Path(tempfile.gettempdir())
    path = root / f"pollinate-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    return path


def _write_frame(path: Path, segments: Iterable[bytes | memoryview]) -> None:
    with open(path, "wb") as file:
        for segment in segments:
            file.write(segment)


def _map_frame(path: str | Path) -> memoryview:
    """Map a frame file read-only; the mapping outlives the file's name."""
    with open(path, "rb") as file:
        return memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))


@dataclass
class _Task:
    message_id: str
    metadata: Metadata
    content_path: str


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    conn: Connection
    # Sent and not yet answered, in order; the first one is running.
    tasks: deque[_Task] = field(default_factory=deque)


#: Tasks in flight per worker. More would hide the round trip to the parent, but a
#: slow node would then hold up the task queued behind it on the same worker.
_DEPTH = 1
#: Replies up to this size come back through the pipe; larger ones through a file.
_INLINE_REPLY_BYTES = 1 << 20


class ProcessGrid(VirtualGrid):
    """A Grid whose virtual nodes run in a pool of worker processes.

    Parameters
    ----------
    client_app:
        The nodes' app, or its ``"module:attribute"`` reference.
    nodes:
        The virtual federation.
    num_workers:
        Worker processes (default: one per core).
    """

    def __init__(
        self,
        client_app: ClientApp | str,
        nodes: VirtualNodes,
        *,
        num_workers: int | None = None,
        observer: RunObserver | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(nodes, observer=observer, clock=clock)
        if "fork" not in multiprocessing.get_all_start_methods():
            raise ConfigError(
                "the process runtime needs the 'fork' start method, which this platform "
                "lacks; use --runtime inline"
            )
        workers = num_workers if num_workers is not None else default_num_workers()
        if not isinstance(workers, int) or workers < 1:
            raise ConfigError(f"num_workers must be an int >= 1, got {num_workers!r}")
        self._app = client_app
        self._dir = _shared_memory_dir()
        self._context = multiprocessing.get_context("fork")
        self._counter = itertools.count()
        self._queue: deque[_Task] = deque()
        self._done: dict[str, Message] = {}
        self._content_refs: dict[str, int] = {}
        self._states: dict[int, str] = {}
        self._closed = False
        self._workers: list[_Worker] = []
        try:
            self._workers = [self._start_worker(i) for i in range(workers)]
        except BaseException:
            self.close()
            raise

    # -- Grid primitives --------------------------------------------------------------
    def node_info(self) -> list[NodeInfo]:
        busy = {t.metadata.dst_node_id for w in self._workers for t in w.tasks}
        busy.update(t.metadata.dst_node_id for t in self._queue)
        return [replace(info, busy=info.node_id in busy) for info in super().node_info()]

    def send(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message, path in self._prepare(messages, self._write_content):
            self._content_refs[path] = self._content_refs.get(path, 0) + 1
            self._queue.append(_Task(message.metadata.message_id, message.metadata, path))
            ids.append(message.metadata.message_id)
        self._dispatch()
        return ids

    def _write_content(self, content: RecordDict) -> str:
        """Write a broadcast's content once, as a frame every worker maps."""
        path = self._new_path("content")
        _write_frame(path, recorddict_to_segments(content))
        return str(path)

    def receive(self, message_ids: Sequence[str], *, timeout: float) -> Iterator[Message]:
        wanted = set(message_ids)
        deadline = self.clock.now() + timeout
        try:
            while wanted:
                for message_id in [m for m in wanted if m in self._done]:
                    wanted.discard(message_id)
                    yield self._done.pop(message_id)
                if not wanted:
                    return
                self._dispatch()
                busy = [w for w in self._workers if w.tasks]
                remaining = deadline - self.clock.now()
                if not busy or remaining <= 0:
                    break
                waitables: list[Any] = [w.conn for w in busy] + [w.process.sentinel for w in busy]
                ready = multiprocessing.connection.wait(waitables, timeout=remaining)
                answers = [
                    (task, data)
                    for worker in busy
                    if worker.conn in ready or worker.process.sentinel in ready
                    for task, data in [self._take(worker)]
                    if data is not None
                ]
                self._dispatch()  # keep workers busy while the answers are decoded
                for task, data in answers:
                    self._absorb(task, data)
        finally:
            # Past the deadline, or the caller stopped listening: stop what is left.
            self._cancel(wanted)
            for message_id in wanted:
                self._done.pop(message_id, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            with contextlib.suppress(OSError):
                worker.conn.send_bytes(b"")
        for worker in self._workers:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=2)
            worker.conn.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- scheduling -------------------------------------------------------------------
    def _new_path(self, kind: str) -> Path:
        return self._dir / f"p{next(self._counter)}-{kind}"

    def _start_worker(self, index: int) -> _Worker:
        parent_conn, child_conn = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main,
            args=(child_conn, self._app, self._nodes, str(self._dir), index),
            name=f"pollinate-worker-{index}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        return _Worker(index, process, parent_conn)

    def _dispatch(self) -> None:
        """Give queued tasks to workers with room, never two for one node at once
        (each call must see the state the previous call left)."""
        busy_nodes = {t.metadata.dst_node_id for w in self._workers for t in w.tasks}
        for worker in self._workers:
            while len(worker.tasks) < _DEPTH and self._queue:
                task = next(
                    (t for t in self._queue if t.metadata.dst_node_id not in busy_nodes), None
                )
                if task is None:
                    return
                self._queue.remove(task)
                node_id = task.metadata.dst_node_id
                busy_nodes.add(node_id)
                record = {
                    "metadata": _metadata_dict(task.metadata),
                    "content": task.content_path,
                    "state": self._states.get(node_id),
                }
                worker.tasks.append(task)
                try:
                    worker.conn.send_bytes(json.dumps(record).encode())
                except OSError:
                    self._collect(worker)
                    break

    def _take(self, worker: _Worker) -> tuple[_Task, bytes | None]:
        """A worker's next raw answer; ``None`` if it died (then it is replaced)."""
        task = worker.tasks[0]
        try:
            data = worker.conn.recv_bytes()
        except (EOFError, OSError):
            worker.process.join(timeout=5)
            code = worker.process.exitcode
            log.warning(
                "worker %d died (exit code %s) while running node %d; replacing it",
                worker.index,
                code,
                task.metadata.dst_node_id,
            )
            worker.tasks.popleft()
            reason = f"the worker running this node died (exit code {code})"
            self._finish(task, _reply_error(task, ErrorCode.WORKER_CRASHED, reason))
            self._replace(worker)
            return task, None
        worker.tasks.popleft()
        return task, data

    def _collect(self, worker: _Worker) -> None:
        """Take and decode a worker's next answer."""
        task, data = self._take(worker)
        if data is not None:
            self._absorb(task, data)

    def _absorb(self, task: _Task, data: bytes) -> None:
        """Decode an answer: the reply, and where the node's new state is."""
        answer_length = int.from_bytes(data[:4], "little")
        answer = json.loads(data[4 : 4 + answer_length])
        reply_path = answer.get("reply")
        try:
            frame = _map_frame(reply_path) if reply_path else memoryview(data)[4 + answer_length :]
            reply = message_from_bytes(frame)
        except (SerializationError, OSError) as exc:
            log.error("unreadable reply from node %d: %s", task.metadata.dst_node_id, exc)
            reply = _reply_error(task, ErrorCode.BAD_REPLY, f"unreadable reply: {exc}")
        finally:
            if reply_path:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(reply_path)
        seconds = answer.get("seconds")
        if isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0:
            reply = dated_as_if_alone(reply, task.metadata.created_at, seconds)
        if answer.get("state_changed"):
            node_id = task.metadata.dst_node_id
            old = self._states.pop(node_id, None)
            if answer["state"]:
                self._states[node_id] = answer["state"]
            if old and old != answer["state"]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old)
        self._finish(task, reply)

    def _finish(self, task: _Task, reply: Message) -> None:
        self._release(task.content_path)
        self._done[task.message_id] = reply

    def _release(self, content_path: str) -> None:
        left = self._content_refs[content_path] - 1
        if left:
            self._content_refs[content_path] = left
        else:
            del self._content_refs[content_path]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(content_path)

    def _replace(self, worker: _Worker) -> None:
        """Kill and restart a worker; tasks it had not started go back to the queue."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()
        self._queue.extendleft(reversed(worker.tasks))
        worker.tasks.clear()
        self._workers[worker.index] = self._start_worker(worker.index)

    def _cancel(self, message_ids: set[str]) -> None:
        """Drop unstarted tasks and stop running ones (by replacing their workers)."""
        if not message_ids:
            return
        for worker in list(self._workers):
            if any(t.message_id in message_ids for t in worker.tasks):
                log.warning(
                    "node %d missed its deadline; stopping its worker",
                    worker.tasks[0].metadata.dst_node_id,
                )
                self._replace(worker)
        kept: deque[_Task] = deque()
        for task in self._queue:
            if task.message_id in message_ids:
                self._release(task.content_path)
            else:
                kept.append(task)
        self._queue = kept


def _metadata_dict(metadata: Metadata) -> dict[str, Any]:
    """The metadata as JSON-ready data (``asdict`` deep-copies, which is slower)."""
    return {name: getattr(metadata, name) for name in _METADATA_FIELDS}


_METADATA_FIELDS = tuple(Metadata.__dataclass_fields__)


def _crash() -> None:
    """A simulated crash: the worker dies as a segfaulting node would."""
    os._exit(70)


def _reply_error(task: _Task, code: ErrorCode, reason: str) -> Message:
    request = Message.from_parts(task.metadata, RecordDict(), None)
    return request.reply(error=Error(code, reason))


# -- the worker side ---------------------------------------------------------------------
def _worker_main(
    conn: Connection, app: ClientApp | str, nodes: VirtualNodes, directory: str, index: int
) -> None:
    """Serve tasks until the parent closes the pipe or sends an empty record."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    client_app = app if isinstance(app, ClientApp) else load_object(app, ClientApp)
    prefix = Path(directory) / f"w{index}-{os.getpid()}-"
    counter = itertools.count()
    cached_path, cached_content = "", RecordDict()
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not data:
            return
        started = time.perf_counter()
        record = json.loads(data)
        metadata = Metadata(**record["metadata"])
        if record["content"] != cached_path:
            cached_content = recorddict_from_bytes(_map_frame(record["content"]))
            cached_path = record["content"]
        message = Message.from_parts(metadata, cached_content, None)
        state_path = record["state"]
        state = recorddict_from_bytes(_map_frame(state_path)) if state_path else RecordDict()
        context = nodes.context(metadata.dst_node_id, state)
        if time.time() > metadata.created_at + metadata.ttl:
            reply = message.reply(error=Error(ErrorCode.TIMEOUT, "instruction expired (ttl)"))
        else:
            reply = nodes.call(client_app, message, context, crash=_crash)
        segments = message_to_segments(reply)
        answer: dict[str, Any] = {"state_changed": False, "seconds": time.perf_counter() - started}
        inline = frame_nbytes(segments) <= _INLINE_REPLY_BYTES
        if not inline:
            answer["reply"] = f"{prefix}{next(counter)}-reply"
            _write_frame(Path(answer["reply"]), segments)
        if len(context.state) or state_path:
            new_state = f"{prefix}{next(counter)}-state" if len(context.state) else None
            if new_state:
                _write_frame(Path(new_state), recorddict_to_segments(context.state))
            answer.update(state_changed=True, state=new_state)
        encoded = json.dumps(answer).encode()
        parts = [len(encoded).to_bytes(4, "little"), encoded, *(segments if inline else ())]
        conn.send_bytes(b"".join(parts))
