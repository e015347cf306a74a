"""Security building blocks of the gRPC runtime: certificates, node keys, signed requests."""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID

from pollinate.errors import ConfigError, ProtocolError
from pollinate.runtime.grpc.security import (
    KEY_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    AuthenticationError,
    AuthorizedKeys,
    RequestSigner,
    RequestVerifier,
    ServerCredentialsMaterial,
    control_method,
    fingerprint,
    is_loopback_peer,
    load_authorized_keys,
    load_private_key,
    load_root_certificate,
    load_server_credentials,
    public_key_bytes,
    tls_channel_credentials,
    tls_server_credentials,
    write_certificates,
    write_node_key,
)
from pollinate.runtime.grpc.security import _signed_bytes as signed_bytes

if TYPE_CHECKING:
    import grpc

METHOD = "/pollinate.Fleet/PullMessages"
NOW = 1_700_000_000.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------- certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    write_certificates(directory)
    return directory


def test_certificates_round_trip(tmp_path: Path) -> None:
    paths = write_certificates(tmp_path / "certs", hosts=["localhost", "127.0.0.1", "::1", "x.io"])

    assert [p.name for p in (paths.ca_certificate, paths.ca_key)] == ["ca.pem", "ca.key"]
    assert _mode(paths.ca_key) == 0o600
    assert _mode(paths.server_key) == 0o600
    material = load_server_credentials(tmp_path / "certs")
    assert material.certificate_chain_pem == paths.server_certificate.read_bytes()
    assert material.private_key_pem == paths.server_key.read_bytes()
    assert load_root_certificate(paths.ca_certificate) == paths.ca_certificate.read_bytes()

    ca = x509.load_pem_x509_certificate(paths.ca_certificate.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_certificate.read_bytes())
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usage
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "x.io"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_material_repr_hides_the_private_key(certs: Path) -> None:
    material = load_server_credentials(certs)

    assert b"PRIVATE KEY" in material.private_key_pem
    assert "PRIVATE" not in repr(material)


def test_certificates_refuse_to_overwrite_unless_forced(tmp_path: Path) -> None:
    paths = write_certificates(tmp_path)
    before = paths.ca_key.read_bytes()

    with pytest.raises(ConfigError, match=r"ca\.pem, .*ca\.key, .* already exist; use --force"):
        write_certificates(tmp_path)
    assert paths.ca_key.read_bytes() == before

    paths.server_key.chmod(0o644)
    write_certificates(tmp_path, force=True)
    assert paths.ca_key.read_bytes() != before
    assert _mode(paths.server_key) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.key",
        "ca.pem",
        "server.key",
        "server.pem",
    ]


def test_certificates_refuse_if_any_one_file_exists(tmp_path: Path) -> None:
    (tmp_path / "server.key").write_text("mine")

    with pytest.raises(ConfigError, match=r"server\.key already exists"):
        write_certificates(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.key"]


@pytest.mark.parametrize(
    ("hosts", "days", "message"),
    [
        (["bad host"], 365, "'bad host' is neither a valid DNS name nor an IP address"),
        (["-x.org"], 365, "neither a valid DNS name"),
        ([], 365, "at least one host"),
        (["localhost"], 0, "days must be a positive whole number"),
    ],
)
def test_certificates_reject_bad_arguments(
    tmp_path: Path, hosts: list[str], days: int, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        write_certificates(tmp_path, hosts=hosts, days=days)
    assert list(tmp_path.iterdir()) == []


def test_certificates_into_an_unwritable_place(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")

    with pytest.raises(ConfigError, match=r"cannot create .*file/certs"):
        write_certificates(tmp_path / "file" / "certs")
    with pytest.raises(ConfigError, match="not a directory"):
        write_certificates(tmp_path / "file")


def test_missing_server_files_name_the_command(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=rf"server key .*server\.key does not exist; .*`pollinate certificates {tmp_path}`",
    ):
        load_server_credentials(tmp_path)
    with pytest.raises(ConfigError, match=r"ca\.pem does not exist; .*pollinate certificates DIR"):
        load_root_certificate(tmp_path / "ca.pem")


def test_invalid_server_files_are_named(tmp_path: Path, certs: Path) -> None:
    write_certificates(tmp_path)
    (tmp_path / "server.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"server\.pem is not a PEM certificate"):
        load_server_credentials(tmp_path)

    (tmp_path / "server.pem").write_bytes((certs / "server.pem").read_bytes())
    with pytest.raises(ConfigError, match=r"server\.key does not belong to .*server\.pem"):
        load_server_credentials(tmp_path)

    (tmp_path / "server.key").write_text("garbage")
    with pytest.raises(ConfigError, match=r"server\.key is not an unencrypted PEM private key"):
        load_server_credentials(tmp_path)

    (tmp_path / "ca.pem").write_text("garbage")
    with pytest.raises(ConfigError, match=r"ca\.pem is not a PEM certificate"):
        load_root_certificate(tmp_path / "ca.pem")


def test_expired_certificates_are_refused(tmp_path: Path) -> None:
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    write_certificates(tmp_path, days=10, now=start)

    load_server_credentials(tmp_path, now=start + datetime.timedelta(days=9))
    with pytest.raises(ConfigError, match="expired on 2020-01-11; create new ones"):
        load_server_credentials(tmp_path, now=start + datetime.timedelta(days=11))
    with pytest.raises(ConfigError, match="not valid before"):
        load_server_credentials(tmp_path, now=start - datetime.timedelta(days=1))


# ----------------------------------------------------------------------------- TLS handshake


def _serve(material: ServerCredentialsMaterial) -> tuple[grpc.Server, int]:
    import grpc

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", tls_server_credentials(material))
    server.start()
    return server, port


def _call(target: str, root: bytes) -> bytes:
    import grpc

    options = [("grpc.enable_http_proxy", 0)]
    with grpc.secure_channel(target, tls_channel_credentials(root), options=options) as channel:
        echo: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Echo/Echo")
        result: bytes = echo(b"hello", timeout=5)
        return result


@pytest.fixture(scope="module")
def tls_server(certs: Path) -> Iterator[int]:
    import grpc  # noqa: F401 - a core dependency

    server, port = _serve(load_server_credentials(certs))
    try:
        yield port
    finally:
        server.stop(None)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_tls_handshake_with_the_generated_ca(tls_server: int, certs: Path, host: str) -> None:
    root = load_root_certificate(certs / "ca.pem")

    assert _call(f"{host}:{tls_server}", root) == b"hello"


def test_tls_handshake_fails_with_another_ca(tls_server: int, tmp_path: Path) -> None:
    import grpc

    other = write_certificates(tmp_path)

    with pytest.raises(grpc.RpcError) as caught:
        _call(f"localhost:{tls_server}", load_root_certificate(other.ca_certificate))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_handshake_fails_for_a_name_not_in_the_certificate(tmp_path: Path) -> None:
    import grpc

    paths = write_certificates(tmp_path, hosts=["localhost"])
    server, port = _serve(load_server_credentials(tmp_path))
    try:
        root = load_root_certificate(paths.ca_certificate)
        assert _call(f"localhost:{port}", root) == b"hello"
        with pytest.raises(grpc.RpcError):
            _call(f"127.0.0.1:{port}", root)
    finally:
        server.stop(None)


# ----------------------------------------------------------------------------- node keys


def test_node_key_round_trip(tmp_path: Path) -> None:
    paths = write_node_key(tmp_path / "node.key")

    assert paths.public == tmp_path / "node.key.pub"
    assert _mode(paths.private) == 0o600
    assert paths.private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    line = paths.public.read_text()
    assert line.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5") and line.endswith(
        " pollinate-node\n"
    )
    assert line.count("\n") == 1
    key = load_private_key(paths.private)
    assert load_authorized_keys(paths.public) == {public_key_bytes(key): "pollinate-node"}


def test_node_key_without_suffix_and_with_comment(tmp_path: Path) -> None:
    paths = write_node_key(tmp_path / "alice", comment="alice@lab")

    assert paths.public == tmp_path / "alice.pub"
    assert paths.public.read_text().endswith(" alice@lab\n")


def test_node_key_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    paths = write_node_key(tmp_path / "node.key")
    before = paths.private.read_bytes()

    with pytest.raises(ConfigError, match=r"node\.key, .*node\.key\.pub already exist"):
        write_node_key(tmp_path / "node.key")
    assert paths.private.read_bytes() == before

    write_node_key(tmp_path / "node.key", force=True)
    assert paths.private.read_bytes() != before
    assert _mode(paths.private) == 0o600


def test_node_key_into_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot write .*missing/node\.key"):
        write_node_key(tmp_path / "missing" / "node.key")


def test_fingerprint_matches_openssh(tmp_path: Path) -> None:
    paths = write_node_key(tmp_path / "node.key")
    printed = fingerprint(public_key_bytes(load_private_key(paths.private)))

    assert printed.startswith("SHA256:") and not printed.endswith("=")
    # Independently of fingerprint(): OpenSSH's SHA256 fingerprint is the unpadded base64
    # of the SHA-256 of the key blob written in the .pub line (what `ssh-keygen -lf` prints).
    blob = base64.b64decode(paths.public.read_text().split()[1])
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert printed == expected


def test_load_private_key_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist; create one with `pollinate keys"):
        load_private_key(tmp_path / "node.key")

    (tmp_path / "garbage").write_text("garbage")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_private_key(tmp_path / "garbage")

    write_certificates(tmp_path)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_private_key(tmp_path / "server.key")


def _pub_line(comment: str = "") -> tuple[bytes, str]:
    key = Ed25519PrivateKey.generate()
    raw = public_key_bytes(key)
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + raw
    return raw, f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}".rstrip()


def test_authorized_keys_with_comments_and_blank_lines(tmp_path: Path) -> None:
    first, first_line = _pub_line("alice")
    second, second_line = _pub_line("bob at the lab")
    third, third_line = _pub_line()
    path = tmp_path / "authorized_keys"
    path.write_text(f"# nodes\n\n{first_line}\n   \n  # off: x\n{second_line}\r\n{third_line}")

    authorized = load_authorized_keys(path)

    assert dict(authorized) == {first: "alice", second: "bob at the lab", third: ""}
    assert repr(authorized) == "AuthorizedKeys(3 keys)"


def test_authorized_keys_are_written_pub_files_concatenated(tmp_path: Path) -> None:
    files = [write_node_key(tmp_path / f"node{i}.key", comment=f"n{i}") for i in range(3)]
    path = tmp_path / "authorized_keys"
    path.write_text("".join(p.public.read_text() for p in files))

    authorized = load_authorized_keys(path)

    assert sorted(authorized.values()) == ["n0", "n1", "n2"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("ssh-ed25519", r"line 3: expected 'ssh-ed25519 <base64 key> \[comment\]'"),
        ("ssh-rsa AAAAB3NzaC1yc2E= x", "line 3: key type 'ssh-rsa' is not supported"),
        ("ssh-ed25519 not*base64 x", "line 3: the key is not valid base64"),
        ("ssh-ed25519 AAAA x", "line 3: the key is not an encoded ssh-ed25519 public key"),
    ],
)
def test_authorized_keys_bad_line(tmp_path: Path, bad: str, message: str) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text(f"# comment\n{_pub_line('ok')[1]}\n{bad}\n")

    with pytest.raises(ConfigError, match=message):
        load_authorized_keys(path)


def test_authorized_keys_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    with pytest.raises(ConfigError, match=r"does not exist; .*pollinate keys FILE"):
        load_authorized_keys(path)

    path.write_text("# nobody yet\n")
    with pytest.raises(ConfigError, match="holds no key"):
        load_authorized_keys(path)

    line = _pub_line("a")[1]
    path.write_text(f"{line}\n{line}\n")
    with pytest.raises(ConfigError, match="line 2: the same key as line 1"):
        load_authorized_keys(path)


def test_authorized_keys_validate_their_length() -> None:
    with pytest.raises(ConfigError, match="32 bytes, not 3"):
        AuthorizedKeys({b"abc": "x"})


# ----------------------------------------------------------------------------- signing


@pytest.fixture
def node() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def verifier(node: Ed25519PrivateKey, clock: ManualClock) -> RequestVerifier:
    return RequestVerifier(AuthorizedKeys({public_key_bytes(node): "node"}), clock=clock)


def _sign(
    key: Ed25519PrivateKey, node_id: int | None = 7, *, at: float = NOW, method: str = METHOD
) -> list[tuple[str, str]]:
    return RequestSigner(key, clock=lambda: at).sign(method, node_id)


def _replace(metadata: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(k, value if k == name else v) for k, v in metadata]


def test_signed_request_is_accepted(node: Ed25519PrivateKey, verifier: RequestVerifier) -> None:
    metadata = _sign(node)

    assert verifier.verify(METHOD, 7, metadata) == public_key_bytes(node)
    assert all(key == key.lower() for key, _ in metadata)
    assert {k for k, _ in metadata} == {
        KEY_HEADER,
        TIMESTAMP_HEADER,
        NONCE_HEADER,
        SIGNATURE_HEADER,
    }


def test_registration_signs_no_node_id(node: Ed25519PrivateKey, verifier: RequestVerifier) -> None:
    metadata = _sign(node, None)

    assert verifier.verify(METHOD, None, metadata) == public_key_bytes(node)
    with pytest.raises(AuthenticationError, match="bad signature"):
        verifier.verify(METHOD, 0, _sign(node, None))


def test_metadata_as_bytes_and_extra_entries_are_fine(
    node: Ed25519PrivateKey, verifier: RequestVerifier
) -> None:
    metadata: list[tuple[str, str | bytes]] = [("user-agent", "grpc-python")]
    metadata += [(k.upper(), v.encode()) for k, v in _sign(node)]

    assert verifier.verify(METHOD, 7, metadata) == public_key_bytes(node)


def test_authentication_error_is_a_protocol_error() -> None:
    error = AuthenticationError("unknown key")

    assert isinstance(error, ProtocolError)
    assert error.reason == str(error) == "unknown key"


def test_unknown_key(verifier: RequestVerifier) -> None:
    stranger = Ed25519PrivateKey.generate()

    with pytest.raises(AuthenticationError, match=r"unknown key SHA256:\S+; not authorized") as e:
        verifier.verify(METHOD, 7, _sign(stranger))
    assert fingerprint(public_key_bytes(stranger)) in str(e.value)


def test_key_swapped_for_another_authorized_key(
    node: Ed25519PrivateKey, clock: ManualClock
) -> None:
    other = Ed25519PrivateKey.generate()
    both = AuthorizedKeys({public_key_bytes(node): "a", public_key_bytes(other): "b"})
    verifier = RequestVerifier(both, clock=clock)
    other_b64 = base64.b64encode(public_key_bytes(other)).decode()

    with pytest.raises(AuthenticationError, match="bad signature"):
        verifier.verify(METHOD, 7, _replace(_sign(node), KEY_HEADER, other_b64))


def test_tampered_signature(node: Ed25519PrivateKey, verifier: RequestVerifier) -> None:
    metadata = _sign(node)
    signature = bytearray(base64.b64decode(dict(metadata)[SIGNATURE_HEADER]))
    signature[0] ^= 1
    tampered = _replace(metadata, SIGNATURE_HEADER, base64.b64encode(signature).decode())

    with pytest.raises(AuthenticationError, match="bad signature"):
        verifier.verify(METHOD, 7, tampered)


def test_tampered_node_id(node: Ed25519PrivateKey, verifier: RequestVerifier) -> None:
    with pytest.raises(AuthenticationError, match=r"bad signature for .* as node 8"):
        verifier.verify(METHOD, 8, _sign(node, 7))
    with pytest.raises(AuthenticationError, match="bad signature"):
        verifier.verify(METHOD, None, _sign(node, 7))


def test_signed_for_another_method(node: Ed25519PrivateKey, verifier: RequestVerifier) -> None:
    metadata = _sign(node, method="/pollinate.Fleet/Register")

    with pytest.raises(AuthenticationError, match=f"bad signature for {METHOD}"):
        verifier.verify(METHOD, 7, metadata)


@pytest.mark.parametrize("header", [TIMESTAMP_HEADER, NONCE_HEADER])
def test_tampered_timestamp_or_nonce(
    node: Ed25519PrivateKey, verifier: RequestVerifier, header: str
) -> None:
    value = f"{NOW + 1:.6f}" if header == TIMESTAMP_HEADER else "0" * 32

    with pytest.raises(AuthenticationError, match="bad signature"):
        verifier.verify(METHOD, 7, _replace(_sign(node), header, value))


@pytest.mark.parametrize(
    ("offset", "message"),
    [
        (-61.0, "stale request: timestamp is 61 s old .at most 60 s.; check the node's clock"),
        (61.0, "timestamp is 61 s in the future"),
    ],
)
def test_timestamp_outside_the_skew(
    node: Ed25519PrivateKey, verifier: RequestVerifier, offset: float, message: str
) -> None:
    with pytest.raises(AuthenticationError, match=message):
        verifier.verify(METHOD, 7, _sign(node, at=NOW + offset))


@pytest.mark.parametrize("offset", [-59.0, 59.0])
def test_timestamp_inside_the_skew(
    node: Ed25519PrivateKey, verifier: RequestVerifier, offset: float
) -> None:
    assert verifier.verify(METHOD, 7, _sign(node, at=NOW + offset)) == public_key_bytes(node)


def test_replay_is_rejected_then_stale(
    node: Ed25519PrivateKey, verifier: RequestVerifier, clock: ManualClock
) -> None:
    metadata = _sign(node)
    verifier.verify(METHOD, 7, metadata)

    with pytest.raises(AuthenticationError, match="replayed request"):
        verifier.verify(METHOD, 7, metadata)
    clock.now += 59
    with pytest.raises(AuthenticationError, match="replayed request"):
        verifier.verify(METHOD, 7, metadata)
    clock.now += 2
    with pytest.raises(AuthenticationError, match="stale request"):
        verifier.verify(METHOD, 7, metadata)


def test_same_nonce_from_another_key_is_not_a_replay(clock: ManualClock) -> None:
    keys = [Ed25519PrivateKey.generate() for _ in range(2)]
    verifier = RequestVerifier(AuthorizedKeys({public_key_bytes(k): "" for k in keys}), clock=clock)

    for key in keys:
        metadata = _sign(key)
        nonce = "ab" * 16
        metadata = _replace(metadata, NONCE_HEADER, nonce)
        public = public_key_bytes(key)
        timestamp = dict(metadata)[TIMESTAMP_HEADER]
        # Re-sign with the chosen nonce, as a node whose nonce collided would.
        signature = key.sign(signed_bytes(METHOD, 7, timestamp, nonce, public))
        metadata = _replace(metadata, SIGNATURE_HEADER, base64.b64encode(signature).decode())
        assert verifier.verify(METHOD, 7, metadata) == public


def test_nonces_are_forgotten_once_stale(
    node: Ed25519PrivateKey, verifier: RequestVerifier, clock: ManualClock
) -> None:
    for _ in range(5):
        verifier.verify(METHOD, 7, _sign(node))
    assert len(verifier) == 5

    clock.now += 121
    verifier.verify(METHOD, 7, _sign(node, at=clock.now))

    assert len(verifier) == 1


def test_nonce_cache_is_bounded_and_never_allows_a_replay(
    node: Ed25519PrivateKey, clock: ManualClock
) -> None:
    verifier = RequestVerifier(
        AuthorizedKeys({public_key_bytes(node): "node"}), clock=clock, nonce_cache_size=3
    )
    oldest = _sign(node, at=NOW - 10)
    verifier.verify(METHOD, 7, oldest)
    for i in range(3):
        verifier.verify(METHOD, 7, _sign(node, at=NOW - 5 + i))

    assert len(verifier) == 3
    with pytest.raises(AuthenticationError, match="too old for the replay cache"):
        verifier.verify(METHOD, 7, oldest)
    with pytest.raises(AuthenticationError, match="too old for the replay cache"):
        verifier.verify(METHOD, 7, _sign(node, at=NOW - 20))
    assert verifier.verify(METHOD, 7, _sign(node, at=NOW)) == public_key_bytes(node)
    assert len(verifier) == 3


@pytest.mark.parametrize(
    ("header", "value", "message"),
    [
        (KEY_HEADER, "***", "x-pollinate-key is not valid base64"),
        (KEY_HEADER, base64.b64encode(b"short").decode(), "x-pollinate-key has 5 bytes, not 32"),
        (SIGNATURE_HEADER, "%%%", "x-pollinate-signature is not valid base64"),
        (SIGNATURE_HEADER, "AAAA", "x-pollinate-signature has 3 bytes, not 64"),
        (TIMESTAMP_HEADER, "yesterday", "x-pollinate-timestamp is not a number"),
        (TIMESTAMP_HEADER, "nan", "x-pollinate-timestamp is not a finite number"),
        (TIMESTAMP_HEADER, "inf", "x-pollinate-timestamp is not a finite number"),
        (NONCE_HEADER, "xyz", "x-pollinate-nonce must be 32 lower-case hex digits"),
        (NONCE_HEADER, "AB" * 16, "x-pollinate-nonce must be 32 lower-case hex digits"),
    ],
)
def test_garbled_metadata(
    node: Ed25519PrivateKey, verifier: RequestVerifier, header: str, value: str, message: str
) -> None:
    with pytest.raises(AuthenticationError, match=message):
        verifier.verify(METHOD, 7, _replace(_sign(node), header, value))


@pytest.mark.parametrize("header", [KEY_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER])
def test_missing_metadata(node: Ed25519PrivateKey, verifier: RequestVerifier, header: str) -> None:
    metadata = [(k, v) for k, v in _sign(node) if k != header]

    with pytest.raises(AuthenticationError, match=f"missing metadata {header}"):
        verifier.verify(METHOD, 7, metadata)


def test_no_metadata_at_all(verifier: RequestVerifier) -> None:
    with pytest.raises(AuthenticationError, match=r"missing metadata x-pollinate-key, .*signature"):
        verifier.verify(METHOD, 7, [])


def test_repeated_and_non_ascii_metadata(
    node: Ed25519PrivateKey, verifier: RequestVerifier
) -> None:
    metadata = _sign(node)

    with pytest.raises(AuthenticationError, match="x-pollinate-nonce is given more than once"):
        verifier.verify(METHOD, 7, [*metadata, (NONCE_HEADER, "0" * 32)])
    with pytest.raises(AuthenticationError, match="x-pollinate-nonce is not ASCII"):
        verifier.verify(
            METHOD, 7, [*(e for e in metadata if e[0] != NONCE_HEADER), (NONCE_HEADER, b"\xff")]
        )


def test_reasons_hold_no_secrets(node: Ed25519PrivateKey, verifier: RequestVerifier) -> None:
    metadata = _sign(node)
    verifier.verify(METHOD, 7, metadata)

    with pytest.raises(AuthenticationError) as caught:
        verifier.verify(METHOD, 7, metadata)
    for _, value in metadata:
        assert value not in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_skew": 0}, "max_skew must be a positive number"),
        ({"max_skew": float("inf")}, "max_skew must be a positive number"),
        ({"nonce_cache_size": 0}, "nonce_cache_size must be at least 1"),
    ],
)
def test_verifier_validates_its_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RequestVerifier(AuthorizedKeys(), **kwargs)  # type: ignore[arg-type]


def test_signer_wants_an_ed25519_key() -> None:
    with pytest.raises(ConfigError, match="Ed25519"):
        RequestSigner(ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]


def test_each_signature_has_a_fresh_nonce(node: Ed25519PrivateKey) -> None:
    signer = RequestSigner(node)

    nonces = {dict(signer.sign(METHOD, 7))[NONCE_HEADER] for _ in range(100)}

    assert len(nonces) == 100


def test_concurrent_verification(node: Ed25519PrivateKey) -> None:
    others = [Ed25519PrivateKey.generate() for _ in range(3)]
    keys = [node, *others]
    verifier = RequestVerifier(AuthorizedKeys({public_key_bytes(k): "" for k in keys}))
    requests = [(i, keys[i % 4], RequestSigner(keys[i % 4]).sign(METHOD, i)) for i in range(400)]
    replays = requests[:50]
    errors: list[BaseException] = []
    accepted: list[bytes] = []
    barrier = threading.Barrier(8)

    def work(chunk: list[tuple[int, Ed25519PrivateKey, list[tuple[str, str]]]]) -> None:
        barrier.wait()
        for node_id, _, metadata in chunk:
            try:
                accepted.append(verifier.verify(METHOD, node_id, metadata))
            except AuthenticationError as exc:
                errors.append(exc)

    work_items = requests + replays
    threads = [threading.Thread(target=work, args=(work_items[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(accepted) == 400
    assert len(errors) == 50
    assert all("replayed request" in str(e) for e in errors)
    assert len(verifier) == 400


def test_key_parts_import_without_grpc() -> None:
    code = (
        "import sys, pollinate.runtime.grpc.security, pollinate.cli.keys, "
        "pollinate.cli.certificates; print('grpc' in sys.modules)"
    )
    output = subprocess.check_output([sys.executable, "-c", code], text=True)

    assert output.strip() == "False"


@pytest.mark.parametrize(
    ("peer", "local"),
    [
        ("ipv4:127.0.0.1:50000", True),
        ("ipv4:127.8.9.10:1", True),
        ("ipv6:[::1]:50000", True),
        ("ipv6:[::ffff:127.0.0.1]:50000", True),
        ("unix:/tmp/pollinate.sock", True),
        ("ipv4:10.0.0.7:50000", False),
        ("ipv4:192.168.1.20:443", False),
        ("ipv6:[2001:db8::1]:50000", False),
        ("ipv6:[::ffff:10.0.0.7]:50000", False),
        ("ipv4:not-an-address:1", False),
        ("", False),
    ],
)
def test_only_peers_on_this_machine_count_as_local(peer: str, local: bool) -> None:
    assert is_loopback_peer(peer) is local


def test_a_node_signature_is_not_valid_for_a_control_call() -> None:
    key = Ed25519PrivateKey.generate()
    verifier = RequestVerifier(AuthorizedKeys({public_key_bytes(key): "both"}))
    as_node = RequestSigner(key).sign("Register", None)

    with pytest.raises(AuthenticationError, match="bad signature"):
        verifier.verify(control_method("SubmitRun"), None, as_node)
