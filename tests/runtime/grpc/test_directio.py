"""DirectFile: bytes around the page cache, the same bytes as a plain file."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import pytest

from pollinate.runtime.grpc import directio
from pollinate.runtime.grpc.directio import DirectFile

SIZES = [0, 1, 4095, 4096, 4097, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 * 1024 + 123]


def _payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.mark.parametrize("size", SIZES)
def test_what_is_written_whole_or_in_pieces_is_what_the_file_holds(
    tmp_path: Path, size: int
) -> None:
    data = _payload(size)
    whole = DirectFile(tmp_path / "whole")
    whole.write(data)
    whole.close()
    pieces = DirectFile(tmp_path / "pieces")
    rng, position = random.Random(size), 0
    while position < size:
        step = rng.randint(1, 300_000)
        pieces.write(memoryview(data)[position : position + step])
        position += step
    pieces.close()

    assert (tmp_path / "whole").read_bytes() == data
    assert (tmp_path / "pieces").read_bytes() == data


def test_o_direct_is_asked_for_where_the_platform_has_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags_seen: list[int] = []
    real_open = os.open

    def spy(path: Any, flags: int, *args: Any) -> int:
        flags_seen.append(flags)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", spy)
    DirectFile(tmp_path / "f").close()
    if hasattr(os, "O_DIRECT"):
        assert all(flags & os.O_DIRECT for flags in flags_seen)
    assert DirectFile(tmp_path / "buffered", direct=False).direct is False


def test_a_file_system_without_o_direct_gets_the_same_bytes_through_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_direct(path: Any, flags: int, *args: Any) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_direct)
    monkeypatch.setattr(directio, "_O_DIRECT", getattr(os, "O_DIRECT", 0) or 0o40000)
    data = _payload(5000)
    file = DirectFile(tmp_path / "f")
    assert not file.direct
    file.write(data)
    file.close()

    assert (tmp_path / "f").read_bytes() == data


def test_flush_makes_the_bytes_so_far_visible_and_writing_can_go_on(tmp_path: Path) -> None:
    first, second = _payload(10_000, 1), _payload(7_000, 2)
    file = DirectFile(tmp_path / "f")
    file.write(first)
    file.flush()
    assert (tmp_path / "f").read_bytes() == first  # the padded block was cut back
    file.write(second)
    file.close()
    file.close()  # idempotent

    assert (tmp_path / "f").read_bytes() == first + second
    with pytest.raises(ValueError, match="closed"):
        file.write(b"x")


def test_the_file_is_created_exclusively_and_an_abandoned_one_keeps_no_tail(
    tmp_path: Path,
) -> None:
    (tmp_path / "exists").write_bytes(b"old")
    with pytest.raises(FileExistsError):
        DirectFile(tmp_path / "exists")
    assert (tmp_path / "exists").read_bytes() == b"old"

    file = DirectFile(tmp_path / "f")
    file.write(b"never flushed")
    file.abandon()
    assert (tmp_path / "f").read_bytes() == b""
