"""`pollinate certificates DIR` and `pollinate keys FILE`: files written, clear refusals."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from pollinate.cli import main as cli_main
from pollinate.cli.certificates import certificates
from pollinate.cli.keys import keys
from pollinate.errors import ConfigError
from pollinate.runtime.grpc.security import (
    fingerprint,
    load_authorized_keys,
    load_private_key,
    load_root_certificate,
    load_server_credentials,
    public_key_bytes,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certificates_writes_the_four_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "certs"

    code = cli_main.main(
        ["certificates", str(directory), "--host", "fl.example.org", "--days", "7"]
    )

    assert code == 0
    assert sorted(p.name for p in directory.iterdir()) == [
        "ca.key",
        "ca.pem",
        "server.key",
        "server.pem",
    ]
    assert _mode(directory / "ca.key") == _mode(directory / "server.key") == 0o600
    load_server_credentials(directory)
    load_root_certificate(directory / "ca.pem")
    out = capsys.readouterr().out
    assert "for fl.example.org, valid 7 days" in out
    assert f"Give nodes {directory / 'ca.pem'}" in out


def test_certificates_defaults_to_localhost(tmp_path: Path) -> None:
    result = CliRunner().invoke(certificates, [str(tmp_path)], standalone_mode=False)

    assert result.exception is None
    assert "for localhost, 127.0.0.1, valid 365 days" in result.output


def test_certificates_refuse_existing_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main.main(["certificates", str(tmp_path)]) == 0
    before = (tmp_path / "ca.key").read_bytes()
    capsys.readouterr()

    code = cli_main.main(["certificates", str(tmp_path)])

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "already exist; use --force to overwrite" in err
    assert (tmp_path / "ca.key").read_bytes() == before
    assert cli_main.main(["certificates", str(tmp_path), "--force"]) == 0
    assert (tmp_path / "ca.key").read_bytes() != before


def test_certificates_into_an_unwritable_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")

    code = cli_main.main(["certificates", str(tmp_path / "file" / "certs")])

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot create ") and err.count("\n") == 1


def test_certificates_bad_host_raises_config_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        certificates, [str(tmp_path), "--host", "no spaces"], standalone_mode=False
    )

    assert isinstance(result.exception, ConfigError)
    assert "'no spaces' is neither a valid DNS name nor an IP address" in str(result.exception)


def test_certificates_days_must_be_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main.main(["certificates", str(tmp_path), "--days", "0"]) == 2
    assert "--days" in capsys.readouterr().err


def test_keys_writes_a_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.key"

    code = cli_main.main(["keys", str(path), "--comment", "hospital-a"])

    assert code == 0
    assert _mode(path) == 0o600
    public = tmp_path / "node.key.pub"
    assert public.read_text().endswith(" hospital-a\n")
    raw = public_key_bytes(load_private_key(path))
    assert load_authorized_keys(public) == {raw: "hospital-a"}
    out = capsys.readouterr().out
    assert fingerprint(raw) in out
    assert f"cat {public} >> authorized_keys" in out


def test_keys_refuse_existing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.key"
    assert cli_main.main(["keys", str(path)]) == 0
    before = path.read_bytes()
    capsys.readouterr()

    code = cli_main.main(["keys", str(path)])

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "already exist; use --force to overwrite" in err
    assert path.read_bytes() == before
    assert cli_main.main(["keys", str(path), "--force"]) == 0
    assert path.read_bytes() != before


def test_keys_into_a_missing_directory(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        keys, [str(tmp_path / "missing" / "node.key")], standalone_mode=False
    )

    assert isinstance(result.exception, ConfigError)
    assert str(result.exception).startswith(f"cannot write {tmp_path / 'missing' / 'node.key'}")
