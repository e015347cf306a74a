"""The pool of retired files kept for overwriting: what it takes, what it refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pollinate.runtime.grpc.recycle import RecyclePool, unshared


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_an_offered_file_comes_back_under_the_new_name_open_at_its_start(tmp_path: Path) -> None:
    pool = RecyclePool(tmp_path / "pool")
    old = _file(tmp_path / "old.bin", b"x" * 10_000)

    assert pool.offer(old)
    assert not old.exists()
    assert (len(pool), pool.size) == (1, 10_000)

    new = tmp_path / "new.part"
    file = pool.take(new)
    assert file is not None
    with file:
        file.write(b"short")
        file.truncate()
    assert new.read_bytes() == b"short"
    assert (len(pool), pool.size) == (0, 0)
    assert pool.take(tmp_path / "another.part") is None


def test_a_file_mapped_by_another_process_is_not_recycled(tmp_path: Path) -> None:
    pool = RecyclePool(tmp_path / "pool")
    path = _file(tmp_path / "reply.bin", b"\1" * 4096)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import mmap, os, sys\n"
            f"fd = os.open({str(path)!r}, os.O_RDONLY)\n"
            "view = mmap.mmap(fd, 0, prot=mmap.PROT_READ)\n"
            "os.close(fd)\n"  # only the mapping is left
            "print('mapped', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "mapped"
        assert not unshared(path)
        assert not pool.offer(path)
        assert path.read_bytes() == b"\1" * 4096 and len(pool) == 0
    finally:
        holder.communicate("", timeout=30)
    assert unshared(path)  # unmapped with the process's exit
    assert pool.offer(path)


def test_a_file_open_in_this_process_is_not_recycled(tmp_path: Path) -> None:
    pool = RecyclePool(tmp_path / "pool")
    path = _file(tmp_path / "reply.bin", b"data")
    with path.open("rb"):
        assert not pool.offer(path)
    assert path.exists()


@pytest.mark.parametrize("cap", [0, 100])
def test_the_pool_refuses_files_past_its_cap(tmp_path: Path, cap: int) -> None:
    pool = RecyclePool(tmp_path / "pool", max_bytes=cap)
    assert pool.offer(_file(tmp_path / "a", b"a" * 60)) is (cap == 100)
    assert not pool.offer(_file(tmp_path / "b", b"b" * 60))
    assert (tmp_path / "b").exists()


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert not RecyclePool(tmp_path / "pool").offer(tmp_path / "gone")


def test_the_directory_is_the_pool_shared_by_whoever_opens_it(tmp_path: Path) -> None:
    # The server offers; a run's ServerApp, with a pool of its own on the same
    # directory, takes; a file taken by one is gone for the other.
    server, serverapp = RecyclePool(tmp_path / "pool"), RecyclePool(tmp_path / "pool")
    assert server.offer(_file(tmp_path / "older", b"o" * 10))
    assert server.offer(_file(tmp_path / "newer", b"n" * 20))

    taken = serverapp.take(tmp_path / "checkpoint.upload")
    assert taken is not None
    taken.close()
    assert (tmp_path / "checkpoint.upload").read_bytes() == b"n" * 20  # newest first
    assert (len(server), server.size) == (1, 10)

    server.clear()
    assert list((tmp_path / "pool").iterdir()) == [] and serverapp.take(tmp_path / "x") is None
