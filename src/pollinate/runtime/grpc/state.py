"""The server's durable state: SQLite for the rows, plain files for the bytes.

``pollinate server --state PATH`` keeps everything it must not lose here: the node
registry, runs and their logs, instructions in flight, replies, and the checkpoints of
the global arrays. A ``kill -9`` of the server at any instant followed by the same
command resumes from what is on disk; nothing acknowledged is lost or counted twice.

Design notes:

- **Rows in SQLite, bytes in files.** Message frames and checkpoints can be larger than
  a GiB, so they do not go into SQLite (a BLOB is read whole into memory), except
  replies of at most :data:`INLINE_REPLY_BYTES`, kept in their blob row: committed with
  the reply's row, they cost one fsync instead of three (file, directory, row), which
  was a quarter of a small model's round. Every other frame is a
  *blob* file under ``PATH.blobs/`` whose size and SHA-256 are recorded in the
  ``blobs`` table; readers get it back memory-mapped (:meth:`StateStore.read_blob`) and
  the server streams it from there. Memory stays near one chunk when writing (segments
  may be any iterable, e.g. a generator of received chunks) and near zero when reading.
- **Durable before acknowledged.** A blob is written to ``tmp/``, fsync'd, renamed into
  place and its directory fsync'd; only then is its row committed, with
  ``synchronous=FULL`` in WAL mode, so a commit that returned survives a crash or power
  loss. A crash between the two leaves a file no row points to; the next open sweeps
  such orphans (and every ``tmp/`` file), so a half-written reply is never visible.
- **Shared content.** A broadcast (one content for many nodes) is stored once: each
  node's instruction row points at the same RecordDict frame (``content_only``) and its
  message frame is made when it is sent, from the row's metadata and that content
  (:func:`pollinate.serde.message_parts_from_content`).
- **Bytes straight to disk.** Receivers write into a :class:`StagedFile` (a file in
  ``tmp/``) as chunks arrive and hand it to the store, which renames it into place: no
  frame is ever held whole in memory.
- **Bounded disk.** Saving a run's checkpoint retires the bytes it no longer needs:
  the replies its ServerApp has consumed and the instructions that were answered. A
  resumed run starts from that checkpoint, so neither is read again; the rows stay
  (pointing at the ``retired`` blob row), so a late duplicate is still recognised. A
  run of a thousand rounds keeps about one round of messages on disk, not a thousand.
  Retired files are overwritten by later blobs rather than deleted when nobody maps
  them (:mod:`~pollinate.runtime.grpc.recycle`, up to ``recycle_bytes``): writing
  into cached pages costs a twentieth of writing into new ones in a virtual machine.
- **Exactly once.** Replies are unique by message id *and* by the instruction they
  answer (``UNIQUE`` constraints, so the check holds even between racing threads): the
  first reply to an instruction wins, whether a node's or an error made here for a dead
  node or an expired ttl; later ones are reported as duplicates and dropped.
- **Threads.** One connection behind one lock. SQLite admits a single writer anyway,
  every statement here is short (indexed lookups and small rows), and the slow part,
  blob I/O, runs *outside* the lock, so a 1 GiB upload never delays a heartbeat. A
  connection per thread would add nothing for writes and would leak connections of
  gRPC's pooled threads that :meth:`StateStore.close` cannot reach.
- **One owner.** An exclusive advisory lock on ``PATH.lock`` stops a second server (or a
  second :class:`StateStore` in this process) from using the same state; that is also
  what makes the orphan sweep at open safe. Waits on the database are bounded by
  SQLite's busy timeout.
- **Schema.** ``schema_version`` holds the layout version; a database written by a newer
  Pollinate is refused with a message saying so, rather than misread.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> with tempfile.TemporaryDirectory() as tmp, StateStore(Path(tmp) / "state.db") as store:
...     run_id = store.create_run(app_name="demo", app_version="1.0", app_dir=".", config={})
...     store.run(run_id).status
'pending'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import mmap
import os
import queue
import secrets
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final

from pollinate.errors import (
    ConfigError,
    NodeUnavailableError,
    PollinateError,
    ProtocolError,
    SerializationError,
    TimeoutError,
)
from pollinate.records import Error, ErrorCode, Message, Metadata, RecordDict
from pollinate.runtime.grpc.recycle import RECYCLE_BYTES, Offer, RecyclePool
from pollinate.serde import Segment, message_to_segments

if sys.platform != "win32":
    import fcntl

__all__ = [
    "RUN_STATUSES",
    "SCHEMA_VERSION",
    "INLINE_REPLY_BYTES",
    "CheckpointRow",
    "InstructionRow",
    "NodeRow",
    "ReplyRow",
    "RunRow",
    "StagedFile",
    "StateStore",
]

log = logging.getLogger(__name__)

#: The layout version this code writes; a database with a higher one is refused.
SCHEMA_VERSION: Final = 3
#: The statuses a run may have.
RUN_STATUSES: Final = ("pending", "running", "completed", "failed", "stopped")
#: How many checkpoints are kept per run (the newest ones).
CHECKPOINTS_KEPT: Final = 3
#: Longest wait for another writer to release the database (seconds).
BUSY_TIMEOUT: Final = 10.0
#: Replies of at most this many bytes are stored inside the database, in the row's own
#: transaction: one fsync per acknowledged reply instead of three (file, directory and
#: row). Larger ones go to files, which are streamed and mapped, never read whole.
INLINE_REPLY_BYTES: Final = 256 * 1024
#: Longest message id accepted from a peer (uuid4 hex ids are 32 characters).
MAX_MESSAGE_ID_LENGTH: Final = 128

_MAX_ID: Final = 2**63 - 1
_KINDS: Final = ("instructions", "replies", "checkpoints")
_INLINE: Final = "inline"  # the blob path prefix of frames kept in the blobs table
_IN_CHUNK: Final = 500  # ids per IN (...) query, well under SQLite's variable limit
#: Run on every open (idempotent): what databases of any schema version need. The
#: blob row ``retired`` (no file behind it) is where retired messages point.
_ON_OPEN: Final = (
    "INSERT OR IGNORE INTO blobs (path, sha256, size, created_at) VALUES ('retired', '', 0, 0)",
    "CREATE INDEX IF NOT EXISTS replies_live ON replies (run_id) WHERE blob != 'retired'",
    "CREATE INDEX IF NOT EXISTS instructions_live ON instructions (run_id, blob)"
    " WHERE blob != 'retired'",
)

#: ``blobs.data`` holds the frame of a small reply (path ``inline/...``), NULL when the
#: frame is in a file.
_SCHEMA: Final = """
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE nodes (
    -- not the rowid alias: the implicit rowid keeps registration order for listings
    node_id INTEGER NOT NULL UNIQUE CHECK (node_id > 0),
    public_key BLOB UNIQUE,
    attributes TEXT NOT NULL,
    app_name TEXT NOT NULL,
    app_version TEXT NOT NULL,
    online INTEGER NOT NULL,
    last_seen REAL NOT NULL,
    registered_at REAL NOT NULL
);
CREATE TABLE runs (
    run_id INTEGER NOT NULL UNIQUE CHECK (run_id > 0),
    app_name TEXT NOT NULL,
    app_version TEXT NOT NULL,
    app_dir TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'stopped')),
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE run_logs (
    run_id INTEGER NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    line TEXT NOT NULL,
    logged_at REAL NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE TABLE blobs (
    path TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    data BLOB
);
CREATE TABLE instructions (
    message_id TEXT PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (run_id),
    src_node_id INTEGER NOT NULL,
    dst_node_id INTEGER NOT NULL REFERENCES nodes (node_id),
    group_id TEXT NOT NULL,
    message_type TEXT NOT NULL,
    ttl REAL NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'replied')),
    queued_at REAL NOT NULL,
    delivered_at REAL,
    blob TEXT NOT NULL REFERENCES blobs (path),
    -- 1: the blob is the content (a RecordDict frame) shared by a broadcast's instructions
    content_only INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX instructions_by_node ON instructions (dst_node_id, state, created_at);
CREATE INDEX instructions_by_run ON instructions (run_id);
CREATE TABLE replies (
    message_id TEXT PRIMARY KEY,
    reply_to_message_id TEXT NOT NULL UNIQUE REFERENCES instructions (message_id),
    run_id INTEGER NOT NULL,
    src_node_id INTEGER NOT NULL,
    dst_node_id INTEGER NOT NULL,
    group_id TEXT NOT NULL,
    message_type TEXT NOT NULL,
    ttl REAL NOT NULL,
    created_at REAL NOT NULL,
    received_at REAL NOT NULL,
    consumed INTEGER NOT NULL DEFAULT 0,
    blob TEXT NOT NULL REFERENCES blobs (path)
);
CREATE INDEX replies_by_run ON replies (run_id);
CREATE TABLE checkpoints (
    run_id INTEGER NOT NULL REFERENCES runs (run_id),
    server_round INTEGER NOT NULL,
    meta TEXT NOT NULL,
    created_at REAL NOT NULL,
    blob TEXT NOT NULL REFERENCES blobs (path),
    PRIMARY KEY (run_id, server_round)
);
"""

_METADATA_COLUMNS: Final = (
    "run_id, message_id, src_node_id, dst_node_id, group_id, message_type, ttl, created_at"
)


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class NodeRow:
    """A registered node.

    ``online`` is what the server last concluded (from registration, heartbeats and
    :meth:`StateStore.expire_nodes`); ``last_seen`` is the store clock's time of the
    node's last sign of life.
    """

    node_id: int
    public_key: bytes | None
    attributes: Mapping[str, str | int | float | bool]
    app_name: str
    app_version: str
    online: bool
    last_seen: float
    registered_at: float


@dataclass(frozen=True)
class RunRow:
    """A run submitted to the server; ``config`` is the JSON-decoded run config."""

    run_id: int
    app_name: str
    app_version: str
    app_dir: str
    config: Mapping[str, Any]
    status: str
    error: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class InstructionRow:
    """An instruction for a node and where its frame lives.

    ``state`` is ``"queued"`` (not yet handed to the node), ``"delivered"`` (handed
    over, no reply yet) or ``"replied"`` (a reply, possibly an error made here, exists).
    """

    metadata: Metadata
    state: str
    path: Path
    sha256: str
    size: int
    queued_at: float
    delivered_at: float | None
    #: The blob at ``path`` is the content only (a RecordDict frame shared with other
    #: instructions); the message frame is made from it and ``metadata`` when sent.
    content_only: bool = False


@dataclass(frozen=True)
class ReplyRow:
    """A stored reply and where its frame lives (read it with :meth:`StateStore.read_blob`)."""

    metadata: Metadata
    path: Path
    sha256: str
    size: int
    received_at: float
    consumed: bool
    #: The frame is kept in the database (a small reply), not in a file at ``path``.
    inline: bool = False


@dataclass(frozen=True)
class CheckpointRow:
    """A verified checkpoint of a run's global arrays.

    ``data`` is a read-only memory map of the frame passed to
    :meth:`StateStore.save_checkpoint`, whose SHA-256 was checked when it was loaded.
    """

    run_id: int
    server_round: int
    meta: Mapping[str, str | int | float]
    path: Path
    sha256: str
    size: int
    created_at: float
    data: memoryview = field(repr=False, compare=False)


@dataclass(frozen=True)
class _Blob:
    """A blob file written and fsync'd, not yet recorded."""

    rel: str
    sha256: str
    size: int
    #: The frame, for a blob kept in the database (``rel`` starts with ``inline/``).
    data: bytes | None = None


class _Reaper:
    """Deletes files on a thread of its own: unlinking a round's ten 40 MB replies took
    over 100 ms here, which a checkpoint (and so the next round) need not wait for. A
    file the reaper did not get to before a crash has no row, and the next open sweeps
    it. With ``recycle``, a file that function takes is kept instead of deleted; one it
    finds busy (still mapped: the server keeps the content it last sent mapped until
    the next one) is offered again with the next files, up to :attr:`RETRIES` times."""

    RETRIES: Final = 3

    def __init__(self, recycle: Callable[[Path], Offer] | None = None) -> None:
        self._recycle = recycle
        self._busy: dict[Path, int] = {}  # reaper thread only
        self._queue: queue.SimpleQueue[list[Path] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def delete(self, paths: list[Path]) -> None:
        if not paths:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="blob-reaper", daemon=True)
                self._thread.start()
        self._queue.put(paths)

    def _run(self) -> None:
        while (paths := self._queue.get()) is not None:
            retries, self._busy = self._busy, {}
            for path in [*retries, *paths]:
                offer = self._recycle(path) if self._recycle is not None else "refused"
                if offer == "taken":
                    continue
                tries = retries.get(path, 0) + 1
                if offer == "busy" and tries < self.RETRIES:
                    self._busy[path] = tries
                    continue
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        busy, self._busy = self._busy, {}
        for path in busy:  # closing: no later pass to retry them in
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def close(self, timeout: float = 30.0) -> None:
        """Finish the deletions asked for so far (waiting at most ``timeout`` seconds);
        files still busy are deleted rather than kept for a later offer."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)


class StagedFile:
    """A blob being received: bytes written to a file in the store's ``tmp/`` as they
    arrive, then handed to :meth:`StateStore.add_reply`, :meth:`StateStore.add_broadcast`
    or :meth:`StateStore.save_checkpoint`, which move it into place.

    With ``memory_limit``, bytes stay in memory until there are more than that, and the
    file is only created then: a small reply is stored inside the database instead.

    Get one from :meth:`StateStore.stage` (or :meth:`StateStore.adopt` for a file a
    local process wrote); :meth:`discard` it if the transfer fails.
    """

    def __init__(
        self,
        path: Path,
        *,
        hashed: bool,
        size: int = 0,
        writable: bool = True,
        memory_limit: int = 0,
        sha256: str = "",
        reuse: Callable[[Path], BinaryIO | None] | None = None,
    ) -> None:
        self.path = path
        self._reuse = reuse
        self._declared_sha256 = sha256
        self.size = size
        self._digest = hashlib.sha256() if hashed else None
        self._writable = writable
        self._memory_limit = memory_limit
        self._memory: bytearray | None = bytearray() if writable and memory_limit > 0 else None
        self._file: BinaryIO | None = None
        if writable and self._memory is None:
            self._file = self._create()

    @property
    def in_memory(self) -> bool:
        """Whether every byte is still in memory (no file was created)."""
        return self._memory is not None

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` (a checked chunk)."""
        if not self._writable:
            raise ConfigError(f"staged file {self.path} is closed for writing")
        if self._memory is not None:
            if len(self._memory) + len(data) <= self._memory_limit:
                self._memory += data
                self._written(data)
                return
            self._file = self._create()
            self._file.write(self._memory)
            self._memory = None
        assert self._file is not None
        self._file.write(data)
        self._written(data)

    def _create(self) -> BinaryIO:
        """The file to write: a recycled one (see :mod:`.recycle`) or a new one."""
        reused = self._reuse(self.path) if self._reuse is not None else None
        return reused or open(self.path, "xb")

    def _written(self, data: bytes | memoryview) -> None:
        if self._digest is not None:
            self._digest.update(data)
        self.size += len(data)

    def finish(self, *, sync: bool) -> str:
        """Close the file (fsync'd if ``sync``); returns its SHA-256, or "" if not hashed."""
        self._writable = False
        if self._file is not None:
            self._file.truncate()  # a recycled file is longer than what was written
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        elif sync and self._memory is None:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return self._declared_sha256 if self._digest is None else self._digest.hexdigest()

    def contents(self) -> bytes:
        """The bytes written, when they are all in memory (:attr:`in_memory`)."""
        if self._memory is None:
            raise ConfigError(f"staged file {self.path} is on disk; map() it instead")
        return bytes(self._memory)

    def map(self) -> memoryview:
        """The bytes written so far, read-only (e.g. to decode the frame): a memory map
        of the file, or a copy of the bytes still in memory."""
        if self._memory is not None:
            return memoryview(self.contents())
        if self._file is not None:
            self._file.flush()
        return _map_blob(self.path, expected_size=self.size, expected_sha256=None)

    def discard(self) -> None:
        """Close and delete the file (a failed or refused transfer); idempotent."""
        self._writable = False
        self._memory = None
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


# --------------------------------------------------------------------------- store


class StateStore:
    """The durable state of one Pollinate server (see the module notes for the design).

    Parameters
    ----------
    path:
        The SQLite database file; created with its parent directory if missing. Blob
        files live in ``path.parent / (path.name + ".blobs")``.
    clock:
        Wall-clock seconds (``time.time`` by default); used for heartbeats, ttl expiry
        and timestamps. Inject a fake one to test timeouts without sleeping. It must be
        on the same scale as ``Metadata.created_at``.
    inline_reply_bytes:
        Replies up to this size are kept in the database rather than in files (see
        :data:`INLINE_REPLY_BYTES`); ``0`` puts every reply in a file.

    Raises
    ------
    ConfigError
        If the file is not a Pollinate state database, was written by a newer Pollinate
        (an unknown schema version), or is in use by another process.

    Notes
    -----
    All methods are thread-safe. Peer-supplied input that breaks the protocol (a reply
    from the wrong node, a heartbeat from an unknown node) raises
    :class:`~pollinate.errors.ProtocolError`; a caller's wrong argument raises
    :class:`~pollinate.errors.ConfigError`.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        inline_reply_bytes: int = INLINE_REPLY_BYTES,
        recycle_bytes: int = RECYCLE_BYTES,
    ) -> None:
        self._path = Path(path)
        self._clock = clock
        self._inline_reply_bytes = inline_reply_bytes
        self._blob_dir = self._path.parent / (self._path.name + ".blobs")
        self._lock = threading.RLock()
        self._synchronous = "FULL"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._acquire_file_lock()
        try:
            for sub in (*_KINDS, "tmp"):
                (self._blob_dir / sub).mkdir(parents=True, exist_ok=True)
            self._pool = RecyclePool(self._blob_dir / "recycled", max_bytes=recycle_bytes)
            self._pool.clear()  # under the state's lock: nobody else uses it
            self._reaper = _Reaper(recycle=self._pool.offer)
            self._conn: sqlite3.Connection | None = self._connect()
            try:
                self._migrate()
                self._sweep_orphans()
            except BaseException:
                self._conn.close()
                raise
        except BaseException:
            self._release_file_lock()
            raise

    # ----------------------------------------------------------------- lifecycle

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @property
    def blob_dir(self) -> Path:
        """The directory holding the blob files."""
        return self._blob_dir

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the files retired so far are deleted or recycled (they go on a
        thread of their own, off the checkpoint's path)."""
        self._reaper.close(timeout)

    def close(self) -> None:
        """Close the database and release the state's lock; idempotent."""
        self.settle()
        with self._lock:
            if self._conn is None:
                return
            self._pool.clear()
            self._conn.close()
            self._conn = None
            self._release_file_lock()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _acquire_file_lock(self) -> int | None:
        """Take the exclusive owner lock on ``PATH.lock`` (POSIX only)."""
        if sys.platform == "win32":  # pragma: no cover - no flock; one owner is on the user
            return None
        lock_path = self._path.parent / (self._path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(
                f"state database {self._path} is in use by another process or StateStore "
                f"(lock {lock_path} is held); run one server per --state path"
            ) from None
        return fd

    def _release_file_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _connect(self) -> sqlite3.Connection:
        """Open the connection with the durability settings the design relies on."""
        # isolation_level=None: no implicit transactions; we BEGIN/COMMIT explicitly.
        # check_same_thread=False: the connection is shared by threads behind self._lock.
        try:
            conn = sqlite3.connect(
                self._path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open state database {self._path}: {exc}") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ConfigError(
                    f"state database {self._path}: cannot switch to WAL mode (got {mode!r}); "
                    "put --state on a local file system"
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ConfigError(
                f"{self._path} is not a Pollinate state database ({exc}); "
                "point --state at a new file or at one written by `pollinate server`"
            ) from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _migrate(self) -> None:
        """Create the schema in a new database; refuse one from a newer Pollinate."""
        with self._write() as conn:
            has_table = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                ("schema_version",),
            ).fetchone()
            if has_table is None:
                others = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
                if others:
                    raise ConfigError(
                        f"{self._path} is an SQLite database but not a Pollinate state "
                        "database (no schema_version table); use another --state path"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            else:
                self._upgrade(conn)
            for statement in _ON_OPEN:
                conn.execute(statement)

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """Bring an existing database to :data:`SCHEMA_VERSION`; refuse a newer one."""
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0]
        if not isinstance(version, int):
            raise ConfigError(f"state database {self._path} has no schema version recorded")
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"state database {self._path} was written by a newer Pollinate (schema "
                f"version {version}; this version reads up to {SCHEMA_VERSION}): upgrade "
                "pollinate, or use another --state path"
            )
        if version < 2:  # version 2 shares a broadcast's content between instructions
            conn.execute(
                "ALTER TABLE instructions ADD COLUMN content_only INTEGER NOT NULL DEFAULT 0"
            )
        if version < 3:  # version 3 keeps small replies in the blobs table
            conn.execute("ALTER TABLE blobs ADD COLUMN data BLOB")
        if version < SCHEMA_VERSION:
            conn.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def _sweep_orphans(self) -> None:
        """Delete ``tmp/`` files and blob files no row records (a crash before commit)."""
        tmp = self._blob_dir / "tmp"
        for entry in tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        with self._read() as conn:
            known = {row[0] for row in conn.execute("SELECT path FROM blobs")}
        removed = 0
        for kind in _KINDS:
            for entry in (self._blob_dir / kind).iterdir():
                if f"{kind}/{entry.name}" not in known:
                    with contextlib.suppress(FileNotFoundError):
                        entry.unlink()
                    removed += 1
        if removed:
            log.info(
                "state %s: removed %d blob(s) left by an interrupted write", self._path, removed
            )

    # ----------------------------------------------------------------- plumbing

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, for reads."""
        with self._lock:
            if self._conn is None:
                raise ConfigError(f"state store {self._path} is closed")
            with self._translate():
                yield self._conn

    @contextlib.contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), committed on success.

        ``durable=False`` commits without an fsync (WAL with ``synchronous=NORMAL``): a
        process crash still loses nothing and an operating-system crash cannot corrupt
        the database, but may lose the last such commits. For bookkeeping that is redone
        or harmless to lose (heartbeats, deliveries, log lines, instructions of a round a
        resumed run sends again); an acknowledged reply, a run, a node's registration and
        a checkpoint are committed durably, and each durable commit also makes every
        earlier one durable.
        """
        with self._read() as conn:
            wanted = "FULL" if durable else "NORMAL"
            if self._synchronous != wanted:
                conn.execute(f"PRAGMA synchronous = {wanted}")
                self._synchronous = wanted
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # also after a failed COMMIT, which leaves it open
                    conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        """Turn SQLite's busy error (after the busy timeout) into our TimeoutError."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if "locked" in text or "busy" in text:
                raise TimeoutError(
                    f"state database {self._path} stayed locked by another writer for "
                    f"{BUSY_TIMEOUT:g} s: {exc}"
                ) from exc
            raise

    def _now(self) -> float:
        return float(self._clock())

    def _abs(self, rel: str) -> Path:
        return self._blob_dir / rel

    def stage(self, *, hashed: bool = False, reply: bool = False) -> StagedFile:
        """A new file in ``tmp/`` to receive a blob into (``hashed``: keep its SHA-256,
        which checkpoints need; replies and instructions are checked chunk by chunk on
        arrival instead). For a ``reply``, the file is only created if the reply is
        larger than ``inline_reply_bytes``; a smaller one is kept in the database."""
        return StagedFile(
            self._blob_dir / "tmp" / f"{uuid.uuid4().hex}.part",
            hashed=hashed,
            memory_limit=self._inline_reply_bytes if reply else 0,
            reuse=self._pool.take,
        )

    @property
    def recycle_dir(self) -> Path:
        """Retired files that a process on this machine may take to write a file for
        :meth:`adopt` (:class:`~pollinate.runtime.grpc.recycle.RecyclePool`)."""
        return self._pool.directory

    @property
    def staging_dir(self) -> Path:
        """Where a process on this machine may write a file for :meth:`adopt`."""
        return self._blob_dir / "tmp"

    def adopt(self, path: Path | str, *, sha256: str = "") -> StagedFile:
        """A file that a process on this machine wrote into :attr:`staging_dir` (the
        ServerApp writes a broadcast's content and its checkpoints there instead of
        uploading them). ``sha256``: the file's hash as its writer computed it, recorded
        for a checkpoint instead of reading the file back to hash it.

        Raises
        ------
        ConfigError
            If ``path`` is not a regular file directly inside :attr:`staging_dir`.
        """
        candidate = Path(path)
        staging = self.staging_dir.resolve()
        if (
            candidate.parent.resolve() != staging
            or candidate.is_symlink()
            or not candidate.is_file()
            or not candidate.name.endswith(".upload")
        ):
            raise ConfigError(f"{path} is not an upload file (*.upload) inside {self.staging_dir}")
        if sha256 and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
            raise ConfigError(f"{sha256!r} is not a SHA-256 in lowercase hex")
        size = candidate.stat().st_size
        return StagedFile(
            staging / candidate.name, hashed=False, size=size, writable=False, sha256=sha256
        )

    def _write_blob(
        self,
        kind: str,
        segments: Iterable[Segment] | StagedFile,
        *,
        sync: bool = True,
        inline_limit: int = 0,
    ) -> _Blob:
        """Write segments to a new blob file: tmp file, fsync, rename, fsync dir.

        ``sync=False`` skips the fsyncs, for data that is re-created after a crash anyway
        (instructions: a resumed run sends its round again); a process crash still
        loses nothing, only an operating-system crash could. A :class:`StagedFile` is
        moved into place instead of copied; one still in memory (a small reply) becomes
        a blob kept in the database, made durable by the commit of its row. Segments
        of at most ``inline_limit`` bytes in all are kept in the database too.
        """
        if not isinstance(segments, StagedFile):
            staged = StagedFile(
                self._blob_dir / "tmp" / f"{uuid.uuid4().hex}.part",
                hashed=True,
                memory_limit=inline_limit,
                reuse=self._pool.take,
            )
            try:
                for segment in segments:
                    view = memoryview(segment)
                    if view.format != "B" or view.ndim != 1:
                        view = view.cast("B")
                    staged.write(view)
            except BaseException:
                staged.discard()
                raise
            segments = staged
        name = f"{uuid.uuid4().hex}.bin"
        if segments.in_memory:
            data = segments.contents()
            digest_hex = segments.finish(sync=False) or hashlib.sha256(data).hexdigest()
            return _Blob(f"{_INLINE}/{name}", digest_hex, len(data), data)
        try:
            digest_hex = segments.finish(sync=sync)
            if kind == "checkpoints" and not digest_hex:  # checkpoints are verified
                digest_hex = hashlib.sha256(segments.map()).hexdigest()
            os.replace(segments.path, self._blob_dir / kind / name)
        except BaseException:
            segments.discard()
            raise
        if sync:
            _fsync_dir(self._blob_dir / kind)
        return _Blob(f"{kind}/{name}", digest_hex, segments.size)

    def _discard_blob_files(self, rels: Iterable[str]) -> None:
        """Unlink blob files whose rows are gone (or were never committed)."""
        for rel in rels:
            if _is_inline(rel):
                continue
            with contextlib.suppress(FileNotFoundError):
                self._abs(rel).unlink()

    def _insert_blob(self, conn: sqlite3.Connection, blob: _Blob) -> None:
        conn.execute(
            "INSERT INTO blobs (path, sha256, size, created_at, data) VALUES (?, ?, ?, ?, ?)",
            (blob.rel, blob.sha256, blob.size, self._now(), blob.data),
        )

    # ----------------------------------------------------------------- nodes

    def register_node(
        self,
        *,
        public_key: bytes | None,
        attributes: Mapping[str, str | int | float | bool],
        app_name: str,
        app_version: str,
        requested_node_id: int | None = None,
    ) -> int:
        """Register a node (or a node coming back) and return its node id.

        A node that authenticates with a public key always gets the same id back, with
        its attributes and app updated. Without a key (``--insecure`` setups) every
        registration is a new node, unless ``requested_node_id`` names a keyless node
        already known (a node reconnecting) or a free id (the state was reset). A
        requested id that belongs to a node with a key is never handed out: a new id is.

        Parameters
        ----------
        public_key:
            The node's public key bytes, or ``None`` without node authentication.
        attributes:
            The node's self-description (``--node-config``), for samplers.
        app_name, app_version:
            The ClientApp the node runs.
        requested_node_id:
            The id the node had before, if any.

        Returns
        -------
        int
            A positive 63-bit node id, random so ids do not reveal registration order
            and never collide across state resets.

        Raises
        ------
        ProtocolError
            If an attribute or the requested id is not of an allowed type or range.
        """
        attributes_json = _attributes_json(attributes)
        if requested_node_id is not None and not _valid_id(requested_node_id):
            raise ProtocolError(
                f"requested node id {requested_node_id!r} is not an int in 1..2**63-1"
            )
        if public_key is not None and not isinstance(public_key, bytes):
            raise ProtocolError(f"public key must be bytes, got {type(public_key).__name__}")
        now = self._now()
        with self._write() as conn:
            existing: int | None = None
            if public_key is not None:
                row = conn.execute(
                    "SELECT node_id FROM nodes WHERE public_key = ?", (public_key,)
                ).fetchone()
                existing = None if row is None else int(row[0])
            elif requested_node_id is not None:
                row = conn.execute(
                    "SELECT public_key FROM nodes WHERE node_id = ?", (requested_node_id,)
                ).fetchone()
                if row is not None and row[0] is None:
                    existing = requested_node_id
            if existing is not None:
                conn.execute(
                    "UPDATE nodes SET attributes = ?, app_name = ?, app_version = ?, online = 1,"
                    " last_seen = ? WHERE node_id = ?",
                    (attributes_json, app_name, app_version, now, existing),
                )
                return existing
            node_id = requested_node_id
            if (
                node_id is not None
                and conn.execute("SELECT 1 FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
            ):
                node_id = None  # taken by another node: the hint is only a hint
            while node_id is None:
                candidate = _random_id()
                if not conn.execute(
                    "SELECT 1 FROM nodes WHERE node_id = ?", (candidate,)
                ).fetchone():
                    node_id = candidate
            conn.execute(
                "INSERT INTO nodes (node_id, public_key, attributes, app_name, app_version,"
                " online, last_seen, registered_at) VALUES (?, ?, ?, ?, ?, 1, ?, ?)",
                (node_id, public_key, attributes_json, app_name, app_version, now, now),
            )
            return node_id

    def node(self, node_id: int) -> NodeRow | None:
        """The node with this id, or ``None`` if it never registered."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM nodes WHERE node_id = ?", (node_id,)).fetchone()
        return None if row is None else _node_row(row)

    def nodes(self, *, online_only: bool = False) -> list[NodeRow]:
        """All registered nodes (or only those considered online), in registration order."""
        sql = "SELECT * FROM nodes"
        if online_only:
            sql += " WHERE online = 1"
        with self._read() as conn:
            rows = conn.execute(sql + " ORDER BY rowid").fetchall()
        return [_node_row(row) for row in rows]

    def heartbeat(self, node_id: int) -> None:
        """Record a sign of life: ``last_seen`` becomes now and the node is online.

        Raises
        ------
        ProtocolError
            If no node with this id is registered (it should register again).
        """
        with self._write(durable=False) as conn:
            cursor = conn.execute(
                "UPDATE nodes SET last_seen = ?, online = 1 WHERE node_id = ?",
                (self._now(), node_id),
            )
            if cursor.rowcount == 0:
                raise _unknown_node(node_id)

    def expire_nodes(self, timeout: float) -> list[int]:
        """Mark online nodes silent for more than ``timeout`` seconds offline.

        Call it periodically with ``timeout = 2 * heartbeat_interval``; then turn the
        returned nodes' pending work into error replies with
        :meth:`fail_pending_for_node`.

        Returns
        -------
        list[int]
            The nodes that just went offline, sorted.
        """
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        cutoff = self._now() - timeout
        with self._write(durable=False) as conn:
            ids = [
                int(row[0])
                for row in conn.execute(
                    "SELECT node_id FROM nodes WHERE online = 1 AND last_seen < ? ORDER BY node_id",
                    (cutoff,),
                )
            ]
            conn.executemany("UPDATE nodes SET online = 0 WHERE node_id = ?", [(i,) for i in ids])
        return ids

    def mark_all_offline(self) -> int:
        """Mark every node offline; a server does this as it starts.

        No connection survives a server restart, and the time the server was down must
        not count against a node's heartbeats: a node is online again when it next
        registers, subscribes or heartbeats, and samplers do not pick it before.

        Returns
        -------
        int
            How many nodes were online.
        """
        with self._write(durable=False) as conn:
            return conn.execute("UPDATE nodes SET online = 0 WHERE online = 1").rowcount

    def set_online(self, node_id: int, online: bool) -> None:
        """Set a node's online flag (e.g. offline when it disconnects cleanly).

        Raises
        ------
        ProtocolError
            If no node with this id is registered.
        """
        with self._write(durable=False) as conn:
            cursor = conn.execute(
                "UPDATE nodes SET online = ? WHERE node_id = ?", (int(bool(online)), node_id)
            )
            if cursor.rowcount == 0:
                raise _unknown_node(node_id)

    # ----------------------------------------------------------------- runs

    def create_run(
        self, *, app_name: str, app_version: str, app_dir: str, config: Mapping[str, Any]
    ) -> int:
        """Record a new run in status ``"pending"`` and return its random 63-bit id.

        Raises
        ------
        ConfigError
            If ``config`` cannot be stored as JSON.
        """
        config_json = _to_json(config, "run config")
        now = self._now()
        with self._write() as conn:
            while True:
                run_id = _random_id()
                if not conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                    break
            conn.execute(
                "INSERT INTO runs (run_id, app_name, app_version, app_dir, config, status,"
                " error, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', NULL, ?, ?)",
                (run_id, app_name, app_version, app_dir, config_json, now, now),
            )
        return run_id

    def run(self, run_id: int) -> RunRow | None:
        """The run with this id, or ``None``."""
        with self._read() as conn:
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else _run_row(row)

    def runs(self) -> list[RunRow]:
        """All runs, in creation order."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM runs ORDER BY rowid").fetchall()
        return [_run_row(row) for row in rows]

    def set_run_status(self, run_id: int, status: str, error: str | None = None) -> None:
        """Set a run's status (one of :data:`RUN_STATUSES`) and its error text.

        Raises
        ------
        ConfigError
            If the status is not a known one or the run does not exist.
        """
        if status not in RUN_STATUSES:
            raise ConfigError(f"run status {status!r} is not one of {', '.join(RUN_STATUSES)}")
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE runs SET status = ?, error = ?, updated_at = ? WHERE run_id = ?",
                (status, error, self._now(), run_id),
            )
            if cursor.rowcount == 0:
                raise _unknown_run(run_id)

    def append_log(self, run_id: int, line: str) -> int:
        """Append a line to a run's log; return its sequence number (1, 2, ... per run).

        Raises
        ------
        ConfigError
            If the run does not exist.
        """
        with self._write(durable=False) as conn:
            if not conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise _unknown_run(run_id)
            seq = int(
                conn.execute(
                    "SELECT coalesce(max(seq), 0) + 1 FROM run_logs WHERE run_id = ?", (run_id,)
                ).fetchone()[0]
            )
            conn.execute(
                "INSERT INTO run_logs (run_id, seq, line, logged_at) VALUES (?, ?, ?, ?)",
                (run_id, seq, str(line), self._now()),
            )
        return seq

    def logs(self, run_id: int, *, after: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
        """Log lines of a run with a sequence number above ``after``, at most ``limit``.

        Pass the last sequence number seen as ``after`` to follow a log.
        """
        if limit < 0:
            raise ConfigError(f"limit must be >= 0, got {limit}")
        with self._read() as conn:
            rows = conn.execute(
                "SELECT seq, line FROM run_logs WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (run_id, after, limit),
            ).fetchall()
        return [(int(row[0]), str(row[1])) for row in rows]

    # ----------------------------------------------------------------- instructions

    def add_instruction(self, metadata: Metadata, segments: Iterable[Segment] | StagedFile) -> None:
        """Store an instruction for ``metadata.dst_node_id`` in state ``"queued"``.

        The frame is written durably before the row is committed. Idempotent: adding a
        message id that is already stored does nothing (the first frame is kept).

        Parameters
        ----------
        metadata:
            The instruction's metadata, the same as inside the frame.
        segments:
            The frame, e.g. from :func:`pollinate.serde.message_to_segments`; any
            iterable of buffers, consumed once.

        Raises
        ------
        ConfigError
            If the metadata is a reply's, or the run does not exist.
        NodeUnavailableError
            If the destination node never registered.
        """
        if metadata.reply_to_message_id:
            raise ConfigError(
                f"message {metadata.message_id} is a reply (to {metadata.reply_to_message_id}),"
                " not an instruction; store it with add_reply"
            )
        _check_message_id(metadata.message_id, ConfigError)
        with self._read() as conn:
            if conn.execute(
                "SELECT 1 FROM instructions WHERE message_id = ?", (metadata.message_id,)
            ).fetchone():
                return
            self._check_instruction_refs(conn, metadata)
        blob = self._write_blob("instructions", segments, sync=False)
        inserted = False
        try:
            with self._write(durable=False) as conn:
                if conn.execute(
                    "SELECT 1 FROM instructions WHERE message_id = ?", (metadata.message_id,)
                ).fetchone():
                    return  # a racing thread stored it first; the finally drops our file
                self._check_instruction_refs(conn, metadata)
                self._insert_blob(conn, blob)
                conn.execute(
                    f"INSERT INTO instructions ({_METADATA_COLUMNS}, state, queued_at,"
                    " delivered_at, blob) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, NULL, ?)",
                    (*_metadata_values(metadata), self._now(), blob.rel),
                )
                inserted = True
        finally:
            if not inserted:
                self._discard_blob_files([blob.rel])

    def add_broadcast(
        self, metadatas: Sequence[Metadata], content: Iterable[Segment] | StagedFile
    ) -> list[str]:
        """Store instructions that share one content, the content once.

        Each instruction's frame is made from its metadata and the stored content when it
        is sent (see the module notes). Ids already stored are skipped, like
        :meth:`add_instruction`; the ids stored now are returned.

        Parameters
        ----------
        metadatas:
            One instruction's metadata per destination node.
        content:
            The shared content as a RecordDict frame
            (:func:`pollinate.serde.recorddict_to_segments`), or a :class:`StagedFile`
            holding one.

        Raises
        ------
        ConfigError
            If a metadata is a reply's, or the run does not exist.
        NodeUnavailableError
            If a destination node never registered.
        """
        for metadata in metadatas:
            if metadata.reply_to_message_id:
                raise ConfigError(f"message {metadata.message_id} is a reply, not an instruction")
            _check_message_id(metadata.message_id, ConfigError)
        blob = self._write_blob("instructions", content, sync=False)
        stored: list[str] = []
        try:
            with self._write(durable=False) as conn:
                for metadata in metadatas:
                    self._check_instruction_refs(conn, metadata)
                    if conn.execute(
                        "SELECT 1 FROM instructions WHERE message_id = ?", (metadata.message_id,)
                    ).fetchone():
                        continue
                    if not stored:
                        self._insert_blob(conn, blob)
                    conn.execute(
                        f"INSERT INTO instructions ({_METADATA_COLUMNS}, state, queued_at,"
                        " delivered_at, blob, content_only)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, NULL, ?, 1)",
                        (*_metadata_values(metadata), self._now(), blob.rel),
                    )
                    stored.append(metadata.message_id)
        except BaseException:
            stored = []
            raise
        finally:
            if not stored:
                self._discard_blob_files([blob.rel])
        return stored

    def _check_instruction_refs(self, conn: sqlite3.Connection, metadata: Metadata) -> None:
        if not conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (metadata.run_id,)).fetchone():
            raise _unknown_run(metadata.run_id)
        if not conn.execute(
            "SELECT 1 FROM nodes WHERE node_id = ?", (metadata.dst_node_id,)
        ).fetchone():
            raise NodeUnavailableError(
                f"cannot queue instruction {metadata.message_id}: node {metadata.dst_node_id}"
                " is not registered with this server"
            )

    def instruction(self, message_id: str) -> InstructionRow | None:
        """The instruction with this message id, or ``None``."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT i.*, b.sha256, b.size FROM instructions i JOIN blobs b ON b.path = i.blob"
                " WHERE i.message_id = ?",
                (message_id,),
            ).fetchone()
        return None if row is None else self._instruction_row(row)

    def pending_for_node(self, node_id: int, *, now: float | None = None) -> list[InstructionRow]:
        """Unreplied, unexpired instructions for a node, oldest first.

        Delivered-but-unreplied ones are included, so a node that crashed after pulling
        work gets it again when it reconnects (its reply is de-duplicated anyway).

        Parameters
        ----------
        node_id:
            The node asking for work.
        now:
            The time to judge ttl against; the store clock by default.
        """
        current = self._now() if now is None else float(now)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT i.*, b.sha256, b.size FROM instructions i JOIN blobs b ON b.path = i.blob"
                " WHERE i.dst_node_id = ? AND i.state IN ('queued', 'delivered')"
                " AND i.created_at + i.ttl > ? ORDER BY i.created_at, i.queued_at, i.message_id",
                (node_id, current),
            ).fetchall()
        return [self._instruction_row(row) for row in rows]

    def mark_delivered(self, message_id: str) -> None:
        """Record that an instruction was handed to its node (no-op once replied).

        Raises
        ------
        ProtocolError
            If no instruction has this message id.
        """
        with self._write(durable=False) as conn:
            row = conn.execute(
                "SELECT state FROM instructions WHERE message_id = ?", (message_id,)
            ).fetchone()
            if row is None:
                raise ProtocolError(f"no instruction with message id {message_id!r}")
            if row[0] == "queued":
                conn.execute(
                    "UPDATE instructions SET state = 'delivered', delivered_at = ?"
                    " WHERE message_id = ?",
                    (self._now(), message_id),
                )

    # ----------------------------------------------------------------- replies

    def add_reply(self, metadata: Metadata, segments: Iterable[Segment] | StagedFile) -> bool:
        """Store a node's reply durably; return ``False`` if it is a duplicate.

        When this returns ``True`` the frame is fsync'd and the row committed, so the
        reply may be acknowledged: it survives a crash. A reply is a duplicate (and is
        dropped, returning ``False``) if a reply with the same message id, or any reply
        to the same instruction, is already stored; the first one wins, including an
        error reply made by :meth:`fail_pending_for_node` or :meth:`expire_instructions`.

        Parameters
        ----------
        metadata:
            The reply's metadata, as decoded from the frame by the caller.
        segments:
            The frame; any iterable of buffers (a generator of received chunks keeps
            memory at one chunk), consumed once.

        Raises
        ------
        ProtocolError
            If the message is not a reply, answers an unknown instruction, comes from
            another node than the instruction's destination, names another run or
            destination, or reuses the message id of a reply to another instruction.
        """
        if not self._check_reply(metadata):
            if isinstance(segments, StagedFile):
                segments.discard()
            return False  # a known duplicate: do not even write its bytes
        blob = self._write_blob("replies", segments, inline_limit=self._inline_reply_bytes)
        stored = False
        try:
            stored = self._commit_reply(metadata, blob)
        finally:
            if not stored:
                self._discard_blob_files([blob.rel])
        return stored

    def _check_reply(self, metadata: Metadata) -> bool:
        """Validate a reply against its instruction; ``False`` if it is a known duplicate."""
        _check_message_id(metadata.message_id, ProtocolError)
        if not metadata.reply_to_message_id:
            raise ProtocolError(
                f"message {metadata.message_id} is not a reply (reply_to_message_id is empty)"
            )
        with self._read() as conn:
            return self._validate_reply(conn, metadata)

    def _validate_reply(self, conn: sqlite3.Connection, metadata: Metadata) -> bool:
        instruction = conn.execute(
            "SELECT run_id, src_node_id, dst_node_id FROM instructions WHERE message_id = ?",
            (metadata.reply_to_message_id,),
        ).fetchone()
        if instruction is None:
            raise ProtocolError(
                f"reply {metadata.message_id} answers unknown instruction "
                f"{metadata.reply_to_message_id!r}"
            )
        if metadata.src_node_id != instruction["dst_node_id"]:
            raise ProtocolError(
                f"reply {metadata.message_id} to instruction {metadata.reply_to_message_id} "
                f"comes from node {metadata.src_node_id}, but the instruction was sent to node "
                f"{instruction['dst_node_id']}"
            )
        if metadata.run_id != instruction["run_id"]:
            raise ProtocolError(
                f"reply {metadata.message_id} names run {metadata.run_id}, but instruction "
                f"{metadata.reply_to_message_id} belongs to run {instruction['run_id']}"
            )
        if metadata.dst_node_id != instruction["src_node_id"]:
            raise ProtocolError(
                f"reply {metadata.message_id} is addressed to node {metadata.dst_node_id}, "
                f"but instruction {metadata.reply_to_message_id} came from node "
                f"{instruction['src_node_id']}"
            )
        same_id = conn.execute(
            "SELECT reply_to_message_id FROM replies WHERE message_id = ?",
            (metadata.message_id,),
        ).fetchone()
        if same_id is not None and same_id[0] != metadata.reply_to_message_id:
            raise ProtocolError(
                f"message id {metadata.message_id} is already used by a reply to instruction "
                f"{same_id[0]}, not {metadata.reply_to_message_id}"
            )
        return (
            same_id is None
            and not conn.execute(
                "SELECT 1 FROM replies WHERE reply_to_message_id = ?",
                (metadata.reply_to_message_id,),
            ).fetchone()
        )

    def _commit_reply(self, metadata: Metadata, blob: _Blob) -> bool:
        """Insert the reply row (and its blob row) in one transaction; the ack point."""
        with self._write() as conn:
            if not self._validate_reply(conn, metadata):
                return False
            return self._insert_reply(conn, metadata, blob)

    def _insert_reply(self, conn: sqlite3.Connection, metadata: Metadata, blob: _Blob) -> bool:
        """Insert a reply unless one answers its instruction; mark the instruction replied."""
        self._insert_blob(conn, blob)
        cursor = conn.execute(
            f"INSERT INTO replies ({_METADATA_COLUMNS}, reply_to_message_id, received_at,"
            " consumed, blob) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)"
            " ON CONFLICT DO NOTHING",
            (
                *_metadata_values(metadata),
                metadata.reply_to_message_id,
                self._now(),
                blob.rel,
            ),
        )
        if cursor.rowcount == 0:
            conn.execute("DELETE FROM blobs WHERE path = ?", (blob.rel,))
            return False
        conn.execute(
            "UPDATE instructions SET state = 'replied' WHERE message_id = ?",
            (metadata.reply_to_message_id,),
        )
        return True

    def replies_for(
        self, run_id: int, message_ids: Sequence[str], *, unconsumed_only: bool = False
    ) -> list[ReplyRow]:
        """The stored replies to the given *instruction* ids, in the order asked.

        Instructions without a reply yet are left out. Consumed replies are included
        unless ``unconsumed_only``, so a ServerApp can read them again, until the run's
        next checkpoint retires them (the run resumes from there, it never needs them).
        """
        if isinstance(message_ids, str):
            raise ConfigError("message_ids must be a sequence of ids, not one str")
        wanted = list(dict.fromkeys(message_ids))
        found: dict[str, ReplyRow] = {}
        sql = (
            "SELECT r.*, b.sha256, b.size FROM replies r JOIN blobs b ON b.path = r.blob"
            " WHERE r.run_id = ? AND r.reply_to_message_id IN ({}) AND r.blob != 'retired'"
        )
        if unconsumed_only:
            sql += " AND r.consumed = 0"
        with self._read() as conn:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                placeholders = ", ".join("?" * len(chunk))
                for row in conn.execute(sql.format(placeholders), (run_id, *chunk)):
                    found[row["reply_to_message_id"]] = self._reply_row(row)
        return [found[i] for i in wanted if i in found]

    def mark_reply_consumed(self, message_id: str) -> None:
        """Flag a reply (by its own message id) as processed by the ServerApp.

        Consumed replies stay readable until the run's next checkpoint.

        Raises
        ------
        ConfigError
            If no reply has this message id.
        """
        with self._write(durable=False) as conn:
            cursor = conn.execute(
                "UPDATE replies SET consumed = 1 WHERE message_id = ?", (message_id,)
            )
            if cursor.rowcount == 0:
                raise ConfigError(f"no reply with message id {message_id!r}")

    def fail_pending_for_node(self, node_id: int, *, code: ErrorCode, reason: str) -> list[str]:
        """Answer every unreplied instruction of a node with a stored error reply.

        Used when a node is found dead (``code=ErrorCode.NODE_UNAVAILABLE``), so the
        ServerApp gets a reply for each of its messages instead of waiting for its
        timeout. A real reply arriving later is then a duplicate and is dropped.

        Returns
        -------
        list[str]
            The instruction ids that received an error reply, oldest first.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM instructions WHERE dst_node_id = ?"
                " AND state IN ('queued', 'delivered') ORDER BY created_at, message_id",
                (node_id,),
            ).fetchall()
        return self._store_error_replies(rows, Error(code=code, reason=reason))

    def expire_instructions(self, now: float | None = None) -> list[str]:
        """Answer unreplied instructions whose ttl has passed with ``TIMEOUT`` error replies.

        Parameters
        ----------
        now:
            The time to judge ttl against; the store clock by default.

        Returns
        -------
        list[str]
            The expired instruction ids, oldest first.
        """
        current = self._now() if now is None else float(now)
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM instructions WHERE state IN ('queued', 'delivered')"
                " AND created_at + ttl <= ? ORDER BY created_at, message_id",
                (current,),
            ).fetchall()
        error = Error(code=ErrorCode.TIMEOUT, reason="the instruction's ttl expired before a reply")
        return self._store_error_replies(rows, error)

    def _store_error_replies(self, rows: Sequence[sqlite3.Row], error: Error) -> list[str]:
        """Write an error reply frame per instruction row, then commit them in one go."""
        prepared: list[tuple[Metadata, _Blob]] = []
        try:
            for row in rows:
                instruction = Message.from_parts(
                    _row_metadata(row, reply_to=""), RecordDict(), None
                )
                reply = instruction.reply(error=error).with_metadata(created_at=self._now())
                blob = self._write_blob(
                    "replies", message_to_segments(reply), inline_limit=self._inline_reply_bytes
                )
                prepared.append((reply.metadata, blob))
            affected: list[str] = []
            with self._write() as conn:
                for metadata, blob in prepared:
                    still_there = conn.execute(
                        "SELECT 1 FROM instructions WHERE message_id = ?",
                        (metadata.reply_to_message_id,),
                    ).fetchone()  # delete_run_messages may have run since the select
                    if still_there and self._insert_reply(conn, metadata, blob):
                        affected.append(metadata.reply_to_message_id)
        except BaseException:
            self._discard_blob_files(b.rel for _, b in prepared)
            raise
        kept = set(affected)
        self._discard_blob_files(b.rel for m, b in prepared if m.reply_to_message_id not in kept)
        return affected

    # ----------------------------------------------------------------- blobs

    def read_blob(self, path: Path | str, *, verify: bool = False) -> memoryview:
        """Memory-map a blob read-only and check its size (and SHA-256 if ``verify``).

        Parameters
        ----------
        path:
            A row's ``path`` (absolute, or relative to :attr:`blob_dir`).
        verify:
            Also hash the whole file and compare with the recorded SHA-256 (reads it
            all once; the page cache, not the heap, holds it).

        Raises
        ------
        ConfigError
            If the path is not a blob of this store.
        SerializationError
            If the file is missing, has another size than recorded, or (with
            ``verify``) another hash.
        """
        rel = self._relative(path)
        inline = _is_inline(rel)
        with self._read() as conn:
            row = conn.execute(
                f"SELECT sha256, size{', data' if inline else ''} FROM blobs WHERE path = ?",
                (rel,),
            ).fetchone()
        if row is None:
            raise ConfigError(f"{path} is not a blob of state store {self._path}")
        if inline:
            data = row["data"]
            if not isinstance(data, bytes) or len(data) != int(row["size"]):
                raise SerializationError(f"blob {rel} in {self._path} is missing its bytes")
            if verify and hashlib.sha256(data).hexdigest() != str(row["sha256"]):
                raise SerializationError(f"blob {rel} in {self._path} is corrupt")
            return memoryview(data)
        return _map_blob(
            self._abs(rel),
            expected_size=int(row["size"]),
            expected_sha256=str(row["sha256"]) if verify else None,
        )

    def _relative(self, path: Path | str) -> str:
        """The blob's path relative to the blob dir, refusing anything outside it."""
        candidate = Path(path)
        if candidate.is_absolute():
            try:
                candidate = candidate.relative_to(self._blob_dir)
            except ValueError:
                raise ConfigError(f"{path} is not inside {self._blob_dir}") from None
        parts = candidate.parts
        if len(parts) != 2 or parts[0] not in (*_KINDS, _INLINE) or parts[1] in ("", ".", ".."):
            raise ConfigError(f"{path} is not a blob of state store {self._path}")
        return f"{parts[0]}/{parts[1]}"

    def delete_run_messages(self, run_id: int) -> None:
        """Delete a run's instructions and replies with their blob files (after the run)."""
        with self._write(durable=False) as conn:
            rels = [
                str(row[0])
                for row in conn.execute(
                    "SELECT blob FROM replies WHERE run_id = ? AND blob != 'retired'"
                    " UNION SELECT blob FROM instructions WHERE run_id = ? AND blob != 'retired'",
                    (run_id, run_id),
                )
            ]
            conn.execute("DELETE FROM replies WHERE run_id = ?", (run_id,))
            # Replies of another run cannot point here: add_reply checks the run id.
            conn.execute("DELETE FROM instructions WHERE run_id = ?", (run_id,))
            conn.executemany("DELETE FROM blobs WHERE path = ?", [(rel,) for rel in rels])
        self._discard_blob_files(rels)

    # ----------------------------------------------------------------- checkpoints

    def save_checkpoint(
        self,
        run_id: int,
        server_round: int,
        segments: Iterable[Segment] | StagedFile,
        *,
        meta: Mapping[str, str | int | float] | None = None,
    ) -> None:
        """Store the global arrays after ``server_round`` durably; keep the newest three.

        Saving a round again replaces its checkpoint (a resumed run redoing a round).
        The run's consumed replies and answered instructions are retired with it: their
        files are deleted, their rows kept for de-duplication.

        Parameters
        ----------
        run_id:
            The run the checkpoint belongs to.
        server_round:
            The last completed round (``0`` for the initial arrays).
        segments:
            The frame, e.g. from :func:`pollinate.serde.recorddict_to_segments`.
        meta:
            Small values to restore with the arrays (e.g. sampler or optimizer state).

        Raises
        ------
        ConfigError
            If the run does not exist, the round is negative, or ``meta`` has values
            other than str, int and float.
        """
        if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
            raise ConfigError(f"server_round must be an int >= 0, got {server_round!r}")
        meta_json = _meta_json({} if meta is None else meta)
        with self._read() as conn:
            if not conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise _unknown_run(run_id)
        blob = self._write_blob("checkpoints", segments)
        dropped: list[str] = []
        retired: list[str] = []
        committed = False
        try:
            with self._write() as conn:
                if not conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                    raise _unknown_run(run_id)
                old = conn.execute(
                    "SELECT blob FROM checkpoints WHERE run_id = ? AND server_round = ?",
                    (run_id, server_round),
                ).fetchone()
                if old is not None:
                    dropped.append(str(old[0]))
                    conn.execute(
                        "DELETE FROM checkpoints WHERE run_id = ? AND server_round = ?",
                        (run_id, server_round),
                    )
                self._insert_blob(conn, blob)
                conn.execute(
                    "INSERT INTO checkpoints (run_id, server_round, meta, created_at, blob)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (run_id, server_round, meta_json, self._now(), blob.rel),
                )
                for row in conn.execute(
                    "SELECT server_round, blob FROM checkpoints WHERE run_id = ?"
                    " ORDER BY server_round DESC LIMIT -1 OFFSET ?",
                    (run_id, CHECKPOINTS_KEPT),
                ).fetchall():
                    conn.execute(
                        "DELETE FROM checkpoints WHERE run_id = ? AND server_round = ?",
                        (run_id, row[0]),
                    )
                    dropped.append(str(row[1]))
                conn.executemany("DELETE FROM blobs WHERE path = ?", [(r,) for r in dropped])
                retired = self._retire_messages(conn, run_id)
                committed = True
        finally:
            if not committed:
                self._discard_blob_files([blob.rel])
        files = [self._abs(rel) for rel in (*dropped, *retired) if not _is_inline(rel)]
        self._reaper.delete(files)

    def retire_consumed(self, run_id: int) -> int:
        """Retire a run's consumed replies and answered instructions now, as saving its
        next checkpoint would; returns how many. For a ServerApp about to save a round's
        checkpoint: it reads none of them again, and their files can then be recycled
        for the checkpoint and the next round's content (see :mod:`.recycle`).

        Raises
        ------
        ConfigError
            If the run does not exist.
        """
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone():
                raise _unknown_run(run_id)
            retired = self._retire_messages(conn, run_id)
        self._reaper.delete([self._abs(rel) for rel in retired if not _is_inline(rel)])
        return len(retired)

    def _retire_messages(self, conn: sqlite3.Connection, run_id: int) -> list[str]:
        """Point a run's consumed replies and answered instructions at the ``retired``
        row and drop their blob rows; returns the files to delete after the commit.

        A blob shared by a broadcast is retired only once none of its instructions
        waits for delivery or a reply.
        """
        replies = [
            str(row[0])
            for row in conn.execute(
                "SELECT blob FROM replies WHERE run_id = ? AND blob != 'retired' AND consumed = 1",
                (run_id,),
            )
        ]
        conn.execute(
            "UPDATE replies SET blob = 'retired'"
            " WHERE run_id = ? AND blob != 'retired' AND consumed = 1",
            (run_id,),
        )
        instructions = [
            str(row[0])
            for row in conn.execute(
                "SELECT DISTINCT blob FROM instructions i"
                " WHERE run_id = ? AND blob != 'retired' AND state = 'replied'"
                " AND NOT EXISTS (SELECT 1 FROM instructions j WHERE j.run_id = i.run_id"
                " AND j.blob = i.blob AND j.state != 'replied')",
                (run_id,),
            )
        ]
        conn.executemany(
            "UPDATE instructions SET blob = 'retired' WHERE run_id = ? AND blob = ?",
            [(run_id, rel) for rel in instructions],
        )
        retired = replies + instructions
        conn.executemany("DELETE FROM blobs WHERE path = ?", [(rel,) for rel in retired])
        return retired

    def latest_checkpoint(self, run_id: int) -> CheckpointRow | None:
        """The newest checkpoint of a run whose file is intact, or ``None`` if it has none.

        Each candidate, newest first, is hashed and compared with its recorded SHA-256;
        a corrupt or missing file is skipped with a warning naming it, so a crash or a
        bad disk sector costs a round, not the run.

        Raises
        ------
        SerializationError
            If the run has checkpoints but every one of them is corrupt or missing
            (resuming from scratch silently would hide the loss).
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT c.*, b.sha256, b.size FROM checkpoints c JOIN blobs b ON b.path = c.blob"
                " WHERE c.run_id = ? ORDER BY c.server_round DESC",
                (run_id,),
            ).fetchall()
        problems: list[str] = []
        for row in rows:
            path = self._abs(str(row["blob"]))
            try:
                data = _map_blob(
                    path, expected_size=int(row["size"]), expected_sha256=str(row["sha256"])
                )
            except SerializationError as exc:
                log.warning(
                    "run %d: checkpoint of round %d is unusable, trying an older one: %s",
                    run_id,
                    row["server_round"],
                    exc,
                )
                problems.append(str(exc))
                continue
            return CheckpointRow(
                run_id=int(row["run_id"]),
                server_round=int(row["server_round"]),
                meta=json.loads(row["meta"]),
                path=path,
                sha256=str(row["sha256"]),
                size=int(row["size"]),
                created_at=float(row["created_at"]),
                data=data,
            )
        if problems:
            raise SerializationError(
                f"every checkpoint of run {run_id} is corrupt or missing: " + "; ".join(problems)
            )
        return None

    # ----------------------------------------------------------------- row builders

    def _instruction_row(self, row: sqlite3.Row) -> InstructionRow:
        delivered = row["delivered_at"]
        return InstructionRow(
            metadata=_row_metadata(row, reply_to=""),
            state=str(row["state"]),
            path=self._abs(str(row["blob"])),
            sha256=str(row["sha256"]),
            size=int(row["size"]),
            queued_at=float(row["queued_at"]),
            delivered_at=None if delivered is None else float(delivered),
            content_only=bool(row["content_only"]),
        )

    def _reply_row(self, row: sqlite3.Row) -> ReplyRow:
        return ReplyRow(
            metadata=_row_metadata(row, reply_to=str(row["reply_to_message_id"])),
            inline=_is_inline(str(row["blob"])),
            path=self._abs(str(row["blob"])),
            sha256=str(row["sha256"]),
            size=int(row["size"]),
            received_at=float(row["received_at"]),
            consumed=bool(row["consumed"]),
        )


# --------------------------------------------------------------------------- helpers


def _is_inline(rel: str) -> bool:
    """Whether a blob path names a frame kept in the database rather than a file."""
    return rel.startswith(_INLINE + "/")


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; Windows has no directory fsync)."""
    if sys.platform == "win32":  # pragma: no cover
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _map_blob(path: Path, *, expected_size: int, expected_sha256: str | None) -> memoryview:
    """Map a file read-only after checking its size (and hash, if given)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != expected_size:
                raise SerializationError(
                    f"blob {path} has {size} bytes, but {expected_size} were written "
                    "(truncated or overwritten)"
                )
            if size == 0:
                view = memoryview(b"")
            else:
                # The map outlives the descriptor; it is unmapped when the view is freed.
                view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
    except FileNotFoundError:
        raise SerializationError(f"blob {path} is missing") from None
    if expected_sha256 is not None:
        actual = hashlib.sha256(view).hexdigest()
        if actual != expected_sha256:
            view.release()
            raise SerializationError(
                f"blob {path} is corrupt: SHA-256 {actual} differs from the recorded "
                f"{expected_sha256}"
            )
    return view


def _random_id() -> int:
    """A random positive 63-bit id (0 is the server's node id)."""
    while True:
        value = secrets.randbits(63)
        if value:
            return value


def _valid_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= _MAX_ID


def _check_message_id(message_id: object, error: type[PollinateError]) -> None:
    if not isinstance(message_id, str) or not 0 < len(message_id) <= MAX_MESSAGE_ID_LENGTH:
        raise error(
            f"message id must be a non-empty str of at most {MAX_MESSAGE_ID_LENGTH} "
            f"characters, got {message_id!r:.80}"
        )


def _unknown_node(node_id: int) -> ProtocolError:
    return ProtocolError(f"node {node_id} is not registered with this server; register again")


def _unknown_run(run_id: int) -> ConfigError:
    return ConfigError(f"run {run_id} does not exist in this server's state")


def _to_json(value: Mapping[str, Any], what: str) -> str:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}")
    try:
        return json.dumps(dict(value), sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} cannot be stored as JSON: {exc}") from exc


def _attributes_json(attributes: Mapping[str, str | int | float | bool]) -> str:
    if not isinstance(attributes, Mapping):
        raise ProtocolError(f"node attributes must be a mapping, got {type(attributes).__name__}")
    for key, value in attributes.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise ProtocolError(
                f"node attribute {key!r} = {value!r}: keys must be str and values "
                "str, int, float or bool"
            )
    return json.dumps(dict(attributes), sort_keys=True)


def _meta_json(meta: Mapping[str, str | int | float]) -> str:
    if not isinstance(meta, Mapping):
        raise ConfigError(f"checkpoint meta must be a mapping, got {type(meta).__name__}")
    for key, value in meta.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float)):
            raise ConfigError(
                f"checkpoint meta {key!r} = {value!r}: keys must be str and values "
                "str, int or float"
            )
    return _to_json(meta, "checkpoint meta")


def _metadata_values(metadata: Metadata) -> tuple[int, str, int, int, str, str, float, float]:
    """The metadata in the order of ``_METADATA_COLUMNS``."""
    return (
        int(metadata.run_id),
        str(metadata.message_id),
        int(metadata.src_node_id),
        int(metadata.dst_node_id),
        str(metadata.group_id),
        str(metadata.message_type),
        float(metadata.ttl),
        float(metadata.created_at),
    )


def _row_metadata(row: sqlite3.Row, *, reply_to: str) -> Metadata:
    return Metadata(
        run_id=int(row["run_id"]),
        message_id=str(row["message_id"]),
        src_node_id=int(row["src_node_id"]),
        dst_node_id=int(row["dst_node_id"]),
        reply_to_message_id=reply_to,
        group_id=str(row["group_id"]),
        message_type=str(row["message_type"]),
        ttl=float(row["ttl"]),
        created_at=float(row["created_at"]),
    )


def _node_row(row: sqlite3.Row) -> NodeRow:
    key = row["public_key"]
    return NodeRow(
        node_id=int(row["node_id"]),
        public_key=None if key is None else bytes(key),
        attributes=json.loads(row["attributes"]),
        app_name=str(row["app_name"]),
        app_version=str(row["app_version"]),
        online=bool(row["online"]),
        last_seen=float(row["last_seen"]),
        registered_at=float(row["registered_at"]),
    )


def _run_row(row: sqlite3.Row) -> RunRow:
    error = row["error"]
    return RunRow(
        run_id=int(row["run_id"]),
        app_name=str(row["app_name"]),
        app_version=str(row["app_version"]),
        app_dir=str(row["app_dir"]),
        config=json.loads(row["config"]),
        status=str(row["status"]),
        error=None if error is None else str(error),
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
    )
