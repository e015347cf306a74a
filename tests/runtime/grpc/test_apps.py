"""App bundles: what `pollinate run` packs and what the server agrees to unpack."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from pollinate.errors import ConfigError, ProtocolError
from pollinate.runtime.grpc import apps
from pollinate.runtime.grpc.apps import bundle_digest, pack_app, unpack_app


def _project(root: Path) -> Path:
    (root / "my_app").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "my-app"\nversion = "1.0"\n')
    (root / "my_app" / "__init__.py").write_text("")
    (root / "my_app" / "server_app.py").write_text("app = 'server'\n")
    (root / "my_app" / "__pycache__").mkdir()
    (root / "my_app" / "__pycache__" / "server_app.cpython-311.pyc").write_bytes(b"\x00" * 64)
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "site.py").write_text("# a whole environment")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return root


def _zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


def test_an_app_packs_its_code_and_unpacks_to_the_same_files(tmp_path: Path) -> None:
    # Arrange
    root = _project(tmp_path / "project")

    # Act
    bundle = pack_app(root)
    unpacked = unpack_app(bundle, tmp_path / "apps")

    # Assert: code and configuration only, byte for byte, under the bundle's digest
    files = sorted(p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file())
    assert files == ["my_app/__init__.py", "my_app/server_app.py", "pyproject.toml"]
    assert (unpacked / "my_app" / "server_app.py").read_text() == "app = 'server'\n"
    assert unpacked.name == bundle_digest(bundle)
    # The same tree packs to the same bytes; unpacking it again reuses the directory.
    assert pack_app(root) == bundle
    assert unpack_app(bundle, tmp_path / "apps") == unpacked


def test_a_symbolic_link_or_an_oversized_app_is_not_packed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _project(tmp_path / "project")
    (root / "weights.bin").write_bytes(b"\x01" * 5000)
    monkeypatch.setattr(apps, "MAX_UNPACKED_BYTES", 4000)
    with pytest.raises(ConfigError, match=r"largest: weights\.bin .*keep data sets"):
        pack_app(root)

    monkeypatch.undo()
    (root / "data").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="symbolic link"):
        pack_app(root)
    with pytest.raises(ConfigError, match="does not exist"):
        pack_app(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "name",
    ["../escape.py", "/etc/cron.d/job", "a/../../escape.py", "C:/windows.py", "a\\b.py", ""],
)
def test_a_bundle_entry_outside_its_directory_is_refused(tmp_path: Path, name: str) -> None:
    bundle = _zip([("pyproject.toml", b""), (zipfile.ZipInfo(name or "/"), b"x")])

    with pytest.raises(ProtocolError, match="not a plain relative path"):
        unpack_app(bundle, tmp_path / "apps")

    assert not (tmp_path / "escape.py").exists()
    assert [p.name for p in (tmp_path / "apps").iterdir()] == []  # nothing half-unpacked


def test_links_bombs_and_junk_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(ProtocolError, match="not a regular file"):
        unpack_app(_zip([(link, b"/etc/passwd")]), tmp_path / "apps")

    with pytest.raises(ProtocolError, match="twice"):
        unpack_app(_zip([("a.py", b"1"), ("./a.py", b"2")]), tmp_path / "apps")

    with pytest.raises(ProtocolError, match="not a zip"):
        unpack_app(b"PK\x03\x04 but not really", tmp_path / "apps")

    monkeypatch.setattr(apps, "MAX_UNPACKED_BYTES", 1000)
    compressed = io.BytesIO()
    with zipfile.ZipFile(compressed, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\x00" * 100_000)  # packs to a few hundred bytes
    with pytest.raises(ProtocolError, match="more than 1000"):
        unpack_app(compressed.getvalue(), tmp_path / "apps")
