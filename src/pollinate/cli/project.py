"""An app project on disk: a directory whose pyproject.toml has ``[tool.pollinate]``."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollinate.errors import ConfigError
from pollinate.records import ConfigValue

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["Project", "apply_overrides", "load_project", "parse_free_items", "parse_value"]


@dataclass(frozen=True)
class Project:
    """What ``[tool.pollinate]`` in an app's pyproject.toml declares."""

    root: Path
    name: str
    server_app: str
    client_app: str
    config: dict[str, ConfigValue]
    simulation: dict[str, Any] = field(default_factory=dict)

    def add_to_path(self) -> None:
        """Make the app's modules importable (as ``pip install -e`` would)."""
        root = str(self.root)
        if root not in sys.path:
            sys.path.insert(0, root)


def load_project(path: str | Path) -> Project:
    """Read and check an app project; every problem is a ConfigError naming the fix."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise ConfigError(f"app directory {str(path)!r} does not exist")
    manifest = root / "pyproject.toml"
    if not manifest.is_file():
        raise ConfigError(f"{str(path)!r} has no pyproject.toml; create one with `pollinate new`")
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{manifest} is not valid TOML: {exc}") from None
    section = data.get("tool", {}).get("pollinate")
    if not isinstance(section, dict):
        raise ConfigError(f"{manifest} has no [tool.pollinate] section naming the apps")
    refs = {}
    for key in ("server-app", "client-app"):
        value = section.get(key)
        if not isinstance(value, str) or ":" not in value:
            raise ConfigError(
                f'{manifest}: [tool.pollinate] needs {key} = "module:attribute", got {value!r}'
            )
        refs[key] = value
    config = section.get("config", {})
    simulation = section.get("simulation", {})
    if not isinstance(config, dict) or not isinstance(simulation, dict):
        raise ConfigError(f"{manifest}: [tool.pollinate.config] and .simulation must be tables")
    for key, value in config.items():
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{manifest}: config {key!r} must be a bool, int, float or string")
    name = data.get("project", {}).get("name", root.name)
    return Project(
        root=root,
        name=str(name),
        server_app=refs["server-app"],
        client_app=refs["client-app"],
        config=dict(config),
        simulation=dict(simulation),
    )


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_value(key: str, text: str, default: ConfigValue) -> ConfigValue:
    """Parse ``text`` as the type of ``default``; ConfigError if it does not fit."""
    kind = type(default)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in _TRUE | _FALSE:
                return lowered in _TRUE
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise ConfigError(
            f"config {key}={text!r}: expected {kind.__name__} (default is {default!r})"
        ) from None
    return text


def apply_overrides(
    defaults: Mapping[str, ConfigValue], items: Iterable[str]
) -> dict[str, ConfigValue]:
    """Defaults updated by ``key=value`` items, each parsed as its default's type."""
    config = dict(defaults)
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--config {item!r} must look like key=value")
        if key not in config:
            close = difflib.get_close_matches(key, list(config), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(sorted(config)) or "none"
            raise ConfigError(f"unknown config key {key!r}{hint} (known keys: {known})")
        config[key] = parse_value(key, text, config[key])
    return config


def parse_free_items(items: Iterable[str], *, option: str) -> dict[str, ConfigValue]:
    """``key=value`` items without defaults to follow: ints, floats and bools are read
    as such (``true``/``false``), anything else stays a string."""
    parsed: dict[str, ConfigValue] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{option} {item!r} must look like key=value")
        value: ConfigValue = text
        for kind in (int, float):
            try:
                value = kind(text)
                break
            except ValueError:
                continue
        if text.lower() in ("true", "false"):
            value = text.lower() == "true"
        parsed[key] = value
    return parsed
