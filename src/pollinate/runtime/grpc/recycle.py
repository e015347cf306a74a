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
from pathlib import Path
from typing import BinaryIO, Final

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: nothing is recycled
    fcntl = None  # type: ignore[assignment]

__all__ = ["RECYCLE_BYTES", "RecyclePool", "unshared"]

log = logging.getLogger(__name__)

#: Default cap on the bytes of retired files kept for reuse: about two rounds of ten
#: 40 MB replies. The disk holds this much more than the live blobs at most.
RECYCLE_BYTES: Final = 1 << 30


def unshared(path: Path) -> bool:
    """Whether no other open file or memory map refers to ``path`` (Linux write lease).

    False when the file is in use, is gone, or leases are not available here.
    """
    set_lease = getattr(fcntl, "F_SETLEASE", None) if fcntl is not None else None
    if fcntl is None or set_lease is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, set_lease, fcntl.F_WRLCK)
    except OSError as error:
        if error.errno not in (errno.EAGAIN, errno.EBUSY):
            log.debug("no write lease on %s (%s): not recycled", path, error)
        return False
    else:
        fcntl.fcntl(fd, set_lease, fcntl.F_UNLCK)
        return True
    finally:
        os.close(fd)


class RecyclePool:
    """Retired files in ``directory``, at most ``max_bytes`` of them, newest reused first.

    Thread-safe. The directory is emptied when the pool is created: what a previous
    process left there is unreferenced scratch.
    """

    def __init__(self, directory: Path, *, max_bytes: int = RECYCLE_BYTES) -> None:
        self._directory = directory
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._files: list[tuple[Path, int]] = []
        self._bytes = 0
        self._counter = 0
        directory.mkdir(parents=True, exist_ok=True)
        for entry in directory.iterdir():
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                entry.unlink()

    @property
    def size(self) -> int:
        """Bytes of files in the pool."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._files)

    def offer(self, path: Path) -> bool:
        """Move ``path`` into the pool if it fits and nobody else has it open or mapped.

        Returns whether it was taken; if not, the caller deletes it as before.
        """
        if self._max_bytes <= 0:
            return False
        try:
            size = path.stat().st_size
        except OSError:
            return False
        with self._lock:
            if self._bytes + size > self._max_bytes:
                return False
            self._counter += 1
            target = self._directory / f"{self._counter}.free"
            # Checked and moved under the lock: nobody takes a half-offered file.
            if not unshared(path):
                return False
            try:
                os.replace(path, target)
            except OSError:
                return False
            self._files.append((target, size))
            self._bytes += size
            return True

    def take(self, path: Path) -> BinaryIO | None:
        """A pooled file renamed to ``path`` and open for overwriting from its start, or
        None when the pool is empty. Whoever writes it must truncate it to the bytes
        written (a reused file keeps its old length until then)."""
        while True:
            with self._lock:
                if not self._files:
                    return None
                source, size = self._files.pop()
                self._bytes -= size
            try:
                os.replace(source, path)
            except OSError as error:
                log.debug("recycled file %s unusable (%s); trying the next", source, error)
                with contextlib.suppress(OSError):
                    source.unlink()
                continue
            try:
                return open(path, "r+b")
            except OSError as error:
                log.debug("recycled file %s unusable (%s); trying the next", path, error)
                with contextlib.suppress(OSError):
                    path.unlink()

    def clear(self) -> None:
        """Delete every pooled file."""
        with self._lock:
            files, self._files, self._bytes = self._files, [], 0
        for path, _ in files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
