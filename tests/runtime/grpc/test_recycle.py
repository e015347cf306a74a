"""The pool of retired files kept for overwriting: what it takes, what it refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pollinate.runtime.grpc.recycle import Offer, RecyclePool, unshared
from pollinate.runtime.grpc.state import _Reaper


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_an_offered_file_comes_back_under_the_new_name_open_at_its_start(tmp_path: Path) -> None:
    pool = RecyclePool(tmp_path / "pool")
    old = _file(tmp_path / "old.bin", b"x" * 10_000)

    assert pool.offer(old) == "taken"
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
        assert pool.offer(path) == "busy"
        assert path.read_bytes() == b"\1" * 4096 and len(pool) == 0
    finally:
        holder.communicate("", timeout=30)
    assert unshared(path)  # unmapped with the process's exit
    assert pool.offer(path) == "taken"


def test_a_file_open_in_this_process_is_not_recycled(tmp_path: Path) -> None:
    pool = RecyclePool(tmp_path / "pool")
    path = _file(tmp_path / "reply.bin", b"data")
    with path.open("rb"):
        assert pool.offer(path) == "busy"
    assert path.exists()


@pytest.mark.parametrize("cap", [0, 100])
def test_the_pool_refuses_files_past_its_cap(tmp_path: Path, cap: int) -> None:
    pool = RecyclePool(tmp_path / "pool", max_bytes=cap)
    assert pool.offer(_file(tmp_path / "a", b"a" * 60)) == ("taken" if cap else "refused")
    assert pool.offer(_file(tmp_path / "b", b"b" * 60)) == "refused"
    assert (tmp_path / "b").exists()


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    assert RecyclePool(tmp_path / "pool").offer(tmp_path / "gone") == "refused"


def test_the_directory_is_the_pool_shared_by_whoever_opens_it(tmp_path: Path) -> None:
    # The server offers; a run's ServerApp, with a pool of its own on the same
    # directory, takes; a file taken by one is gone for the other.
    server, serverapp = RecyclePool(tmp_path / "pool"), RecyclePool(tmp_path / "pool")
    assert server.offer(_file(tmp_path / "older", b"o" * 10)) == "taken"
    assert server.offer(_file(tmp_path / "newer", b"n" * 20)) == "taken"

    taken = serverapp.take(tmp_path / "checkpoint.upload")
    assert taken is not None
    taken.close()
    assert (tmp_path / "checkpoint.upload").read_bytes() == b"n" * 20  # newest first
    assert (len(server), server.size) == (1, 10)

    server.clear()
    assert list((tmp_path / "pool").iterdir()) == [] and serverapp.take(tmp_path / "x") is None


def test_the_reaper_offers_a_busy_file_again_with_the_next_files(tmp_path: Path) -> None:
    # The server keeps the content it last sent mapped until the next one is sent, so a
    # retired content is busy at its checkpoint and free by the next.
    answers = {"content": ["busy", "taken"], "reply": ["taken"]}
    offered: list[str] = []

    def recycle(path: Path) -> Offer:
        offered.append(path.name)
        return answers[path.name].pop(0)  # type: ignore[return-value]

    reaper = _Reaper(recycle=recycle)
    content, reply = _file(tmp_path / "content", b"c"), _file(tmp_path / "reply", b"r")
    reaper.delete([content])
    reaper.delete([reply])
    reaper.close()
    assert offered == ["content", "content", "reply"]
    assert content.exists() and reply.exists()  # both "taken": left to the pool


def test_a_file_busy_at_every_offer_is_deleted_in_the_end(tmp_path: Path) -> None:
    offered: list[str] = []

    def recycle(path: Path) -> Offer:
        offered.append(path.name)
        return "busy"

    reaper = _Reaper(recycle=recycle)
    paths = [_file(tmp_path / f"f{n}", b"x") for n in range(_Reaper.RETRIES + 1)]
    for path in paths:
        reaper.delete([path])
    reaper.close()
    assert offered.count("f0") == _Reaper.RETRIES
    assert not any(path.exists() for path in paths)  # the rest go when the reaper closes
