"""App bundles: a project directory packed by ``pollinate run`` and unpacked by the server.

The server runs a submitted run's ServerApp in a process of its own, so it needs the
app's code on its own machine. ``pollinate run APP`` packs APP's directory into a zip
(code and configuration: caches, virtual environments and version-control folders are
left out) and sends it with the run; the server keeps each distinct bundle once, under
its SHA-256, and runs the ServerApp from there. A run therefore uses the code as it was
when submitted, from any machine, and survives the submitter's directory changing.

Nodes never receive a bundle: a node runs only the ClientApp installed beside it.

A bundle comes from another party, so unpacking trusts nothing in it: names must be
plain relative paths (no ``..``, no absolute paths, no drive letters, no backslashes),
entries must be regular files or directories (no links), and the sizes are capped
both as declared and as actually decompressed (a zip bomb stops at the cap).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Final

from pollinate.errors import ConfigError, ProtocolError

__all__ = ["MAX_BUNDLE_BYTES", "MAX_UNPACKED_BYTES", "bundle_digest", "pack_app", "unpack_app"]

#: The largest bundle, compressed: one gRPC message (apps are code; data stays on nodes).
MAX_BUNDLE_BYTES: Final = 3 * 1024 * 1024
#: The most bytes a bundle may unpack to, and the most files it may hold.
MAX_UNPACKED_BYTES: Final = 64 * 1024 * 1024
MAX_FILES: Final = 10_000

#: Directories never packed: caches, environments, version control.
_SKIPPED_DIRS: Final = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".ipynb_checkpoints",
        "node_modules",
    }
)
_SKIPPED_SUFFIXES: Final = (".pyc", ".pyo")
_FIXED_TIME: Final = (1980, 1, 1, 0, 0, 0)  # the same tree packs to the same bytes


def pack_app(root: Path) -> bytes:
    """Pack the app directory ``root`` into a bundle (deterministic zip bytes).

    Raises
    ------
    ConfigError
        If ``root`` holds a symbolic link, more than :data:`MAX_FILES` files, more than
        :data:`MAX_UNPACKED_BYTES`, or packs to more than :data:`MAX_BUNDLE_BYTES`; the
        message names the largest files.
    """
    files = sorted(_app_files(root))
    if len(files) > MAX_FILES:
        raise ConfigError(f"app {root} has {len(files)} files, more than {MAX_FILES}")
    sizes = {path: path.stat().st_size for path in files}
    total = sum(sizes.values())
    if total > MAX_UNPACKED_BYTES:
        raise ConfigError(_too_big(root, f"{_mb(total)} of files", MAX_UNPACKED_BYTES, sizes))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            archive.writestr(info, path.read_bytes())
    bundle = buffer.getvalue()
    if len(bundle) > MAX_BUNDLE_BYTES:
        raise ConfigError(_too_big(root, f"a {_mb(len(bundle))} bundle", MAX_BUNDLE_BYTES, sizes))
    return bundle


def bundle_digest(bundle: bytes) -> str:
    """The SHA-256 a server keeps a bundle under."""
    return hashlib.sha256(bundle).hexdigest()


def unpack_app(bundle: bytes, apps_dir: Path) -> Path:
    """Unpack a bundle into ``apps_dir / <its SHA-256>`` (once) and return that directory.

    Raises
    ------
    ProtocolError
        If the bundle is too large, not a zip, or holds a name or entry that is not a
        plain relative file (the message says which).
    """
    if len(bundle) > MAX_BUNDLE_BYTES:
        raise ProtocolError(f"app bundle has {len(bundle)} bytes, more than {MAX_BUNDLE_BYTES}")
    target = apps_dir / bundle_digest(bundle)
    if target.is_dir():
        return target
    apps_dir.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(io.BytesIO(bundle))
    except zipfile.BadZipFile as exc:
        raise ProtocolError(f"app bundle is not a zip archive: {exc}") from None
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=apps_dir))
    try:
        with archive:
            _extract(archive, staging)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():  # not a concurrent unpacking of the same bundle
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _extract(archive: zipfile.ZipFile, into: Path) -> None:
    members = archive.infolist()
    if len(members) > MAX_FILES:
        raise ProtocolError(f"app bundle has {len(members)} entries, more than {MAX_FILES}")
    declared = sum(member.file_size for member in members)
    if declared > MAX_UNPACKED_BYTES:
        raise ProtocolError(
            f"app bundle unpacks to {declared} bytes, more than {MAX_UNPACKED_BYTES}"
        )
    seen: set[str] = set()
    budget = MAX_UNPACKED_BYTES
    for member in members:
        relative = _safe_name(member.filename)
        if relative.as_posix() in seen:
            raise ProtocolError(f"app bundle names {member.filename!r} twice")
        seen.add(relative.as_posix())
        kind = stat.S_IFMT(member.external_attr >> 16)  # 0 when the packer set none
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ProtocolError(
                f"app bundle entry {member.filename!r} is not a regular file (a link?)"
            )
        destination = into.joinpath(*relative.parts)
        if member.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(member) as source, open(destination, "xb") as sink:
            while block := source.read(1024 * 1024):
                budget -= len(block)
                if budget < 0:  # more than declared: a forged header
                    raise ProtocolError(
                        f"app bundle unpacks to more than {MAX_UNPACKED_BYTES} bytes"
                    )
                sink.write(block)
        os.chmod(destination, 0o644)


def _safe_name(name: str) -> PurePosixPath:
    """A member name as a relative path inside the bundle, or ProtocolError."""
    path = PurePosixPath(name)
    parts = [part for part in path.parts if part not in ("", ".")]
    if (
        not parts
        or "\\" in name
        or "\x00" in name
        or path.is_absolute()
        or ".." in parts
        or ":" in parts[0]
    ):
        raise ProtocolError(f"app bundle entry {name!r} is not a plain relative path")
    return PurePosixPath(*parts)


def _app_files(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ConfigError(f"app directory {root} does not exist")
    found: list[Path] = []
    for directory, subdirectories, names in os.walk(root):
        here = Path(directory)
        for name in list(subdirectories):
            if name in _SKIPPED_DIRS or name.endswith(".egg-info"):
                subdirectories.remove(name)
            elif (here / name).is_symlink():
                raise ConfigError(f"app {root} holds a symbolic link, {here / name}: not packed")
        for name in names:
            path = here / name
            if path.is_symlink():
                raise ConfigError(f"app {root} holds a symbolic link, {path}: not packed")
            if not name.endswith(_SKIPPED_SUFFIXES):
                found.append(path)
    return found


def _too_big(root: Path, what: str, limit: int, sizes: dict[Path, int]) -> str:
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:3]
    names = ", ".join(f"{path.relative_to(root)} ({_mb(size)})" for path, size in largest)
    return (
        f"app {root} makes {what}, more than {_mb(limit)} allowed (largest: {names}); "
        "keep data sets and weights out of the app directory (nodes load their own data)"
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"
