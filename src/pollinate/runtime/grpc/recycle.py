"""Retired blob files kept to be overwritten, so their page cache serves the next round.

A 10-node round of a 40 MB model writes 400 MB of replies into new files and deletes
the previous round's. In a virtual machine that reports freed memory to its host (as
this project's benchmark machine does), every page of a new file costs a host fault:
writing 400 MB into new files took 2.0 CPU s there against 0.09 s overwriting files
whose pages were still cached. PostgreSQL recycles its WAL segments for the same
reason. The store hands a retired file to :meth:`RecyclePool.offer` instead of deleting
it, and :meth:`RecyclePool.take` gives it back, renamed, for the next blob.

Reuse must never change bytes that somebody still reads: a run's ServerApp maps the
replies it aggregates, and an array it keeps aliases the file. A file is only taken
into the pool if this process can get a write lease on it (``F_SETLEASE``), which Linux
grants only when no other open file description refers to it, and a memory map holds
one until it is unmapped. A file still mapped anywhere is deleted as before (its
mapping keeps the old bytes alive); where leases are unavailable (other systems, or
``fs.leases-enable = 0``) nothing is recycled.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import BinaryIO, Final, Literal

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: nothing is recycled
    fcntl = None  # type: ignore[assignment]

__all__ = ["RECYCLE_BYTES", "Offer", "RecyclePool", "unshared"]

log = logging.getLogger(__name__)

#: Default cap on the bytes of retired files kept for reuse: about two rounds of ten
#: 40 MB replies. The disk holds this much more than the live blobs at most.
RECYCLE_BYTES: Final = 1 << 30

_SUFFIX: Final = ".free"

#: What became of a file offered to the pool (see :meth:`RecyclePool.offer`).
Offer = Literal["taken", "busy", "refused"]


def unshared(path: Path) -> bool:
    """Whether no other open file or memory map refers to ``path`` (Linux write lease).

    False when the file is in use, is gone, or leases are not available here.
    """
    return _lease(path) == "free"


def _lease(path: Path) -> Literal["free", "busy", "unavailable"]:
    """Try a write lease on ``path``: "busy" if somebody else has it open or mapped."""
    set_lease = getattr(fcntl, "F_SETLEASE", None) if fcntl is not None else None
    if fcntl is None or set_lease is None:
        return "unavailable"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return "unavailable"
    try:
        fcntl.fcntl(fd, set_lease, fcntl.F_WRLCK)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EBUSY):
            return "busy"
        log.debug("no write lease on %s (%s): not recycled", path, error)
        return "unavailable"
    else:
        fcntl.fcntl(fd, set_lease, fcntl.F_UNLCK)
        return "free"
    finally:
        os.close(fd)


class RecyclePool:
    """Retired files in ``directory``, at most ``max_bytes`` of them, newest reused first.

    The directory is the pool: several processes may take from it (the server, and a
    run's ServerApp writing its broadcasts and checkpoints next to it), since a file is
    taken by renaming it out, which only one of them can do. Thread-safe.
    """

    def __init__(self, directory: Path, *, max_bytes: int = RECYCLE_BYTES) -> None:
        self._directory = directory
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)

    def _entries(self) -> list[tuple[str, int]]:
        """(name, size) of the pooled files, newest first."""
        entries = []
        with os.scandir(self._directory) as scan:
            for entry in scan:
                if entry.name.endswith(_SUFFIX):
                    with contextlib.suppress(OSError):  # taken meanwhile
                        entries.append((entry.name, entry.stat().st_size))
        return sorted(entries, reverse=True)

    @property
    def directory(self) -> Path:
        """Where the pooled files are."""
        return self._directory

    @property
    def size(self) -> int:
        """Bytes of files in the pool."""
        return sum(size for _, size in self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def offer(self, path: Path) -> Offer:
        """Move ``path`` into the pool if it fits and nobody else has it open or mapped.

        Returns ``"taken"``; ``"busy"`` if somebody has it open or mapped (it may be
        offered again later); ``"refused"`` if it cannot be recycled (the pool is full
        or disabled, the file is gone): the caller then deletes it as before.
        """
        if self._max_bytes <= 0:
            return "refused"
        try:
            size = path.stat().st_size
        except OSError:
            return "refused"
        with self._lock:  # one offer at a time keeps the pool within its cap
            if self.size + size > self._max_bytes:
                return "refused"
            lease = _lease(path)
            if lease != "free":
                return "busy" if lease == "busy" else "refused"
            # Names sort by age, so take() reuses the file most likely still cached.
            target = self._directory / f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
            try:
                os.replace(path, target)
            except OSError:
                return "refused"
            return "taken"

    def take(self, path: Path) -> BinaryIO | None:
        """A pooled file renamed to ``path`` and open for overwriting from its start, or
        None when the pool is empty. Whoever writes it must truncate it to the bytes
        written (a reused file keeps its old length until then)."""
        for name, _ in self._entries():
            try:
                os.replace(self._directory / name, path)
            except FileNotFoundError:
                continue  # another thread or process took it first
            except OSError as error:
                log.debug("recycled file %s unusable (%s)", name, error)
                return None
            try:
                return open(path, "r+b")
            except OSError as error:
                log.debug("recycled file %s unusable (%s)", path, error)
                with contextlib.suppress(OSError):
                    path.unlink()
                return None
        return None

    def clear(self) -> None:
        """Delete every pooled file (the owner of the state does this at open and close:
        what a previous process left there is unreferenced scratch)."""
        for name, _ in self._entries():
            with contextlib.suppress(FileNotFoundError):
                (self._directory / name).unlink()
