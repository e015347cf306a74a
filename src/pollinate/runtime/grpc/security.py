"""Security building blocks of the gRPC runtime: certificates, node keys, signed requests.

Design
------
Everything here is pure and testable without a network; the gRPC server and node agent
call it at their edges.

* **TLS.** :func:`write_certificates` writes a self-signed CA and a server certificate
  signed by it, for tests and small deployments (``pollinate certificates DIR``). Keys
  are ECDSA P-256: as strong as RSA 3072, a fraction of the size, generated in
  microseconds rather than the ~100 ms of RSA (tests make many), and supported by every
  TLS 1.2+ stack gRPC builds on. :func:`tls_server_credentials` and
  :func:`tls_channel_credentials` turn them into gRPC credentials; only these two import
  ``grpc``, so the rest (and ``pollinate keys``) works without it.
* **Node identity.** A node owns an Ed25519 key pair (:func:`write_node_key`, ``pollinate
  keys FILE``). Its public key is one OpenSSH-format line, so the server's authorized
  keys file is those lines concatenated (:func:`load_authorized_keys`).
* **Request authentication.** :class:`RequestSigner` adds four metadata entries to each
  call: the public key, a timestamp, a random nonce and an Ed25519 signature over a
  canonical, length-prefixed encoding of (method, node id, timestamp, nonce, public key).
  :class:`RequestVerifier` checks them in an order that never lets an unauthenticated
  peer touch shared state: well-formed, known key, valid signature, fresh timestamp,
  unseen nonce. It raises :class:`AuthenticationError` with a one-line reason fit for a
  gRPC status and a log line; it never includes secrets.

Whether a node id belongs to a key is the server's registry's business, not the
verifier's; the verifier only guarantees the node id was signed by that key.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import heapq
import ipaddress
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pollinate.errors import ConfigError, ProtocolError

if TYPE_CHECKING:
    import grpc

__all__ = [
    "KEY_HEADER",
    "NONCE_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "AuthenticationError",
    "AuthorizedKeys",
    "CertificatePaths",
    "NodeKeyPaths",
    "RequestSigner",
    "RequestVerifier",
    "ServerCredentialsMaterial",
    "control_method",
    "fingerprint",
    "is_loopback_peer",
    "load_authorized_keys",
    "load_private_key",
    "load_root_certificate",
    "load_server_credentials",
    "public_key_bytes",
    "tls_channel_credentials",
    "tls_server_credentials",
    "write_certificates",
    "write_node_key",
]

KEY_HEADER: Final = "x-pollinate-key"
TIMESTAMP_HEADER: Final = "x-pollinate-timestamp"
NONCE_HEADER: Final = "x-pollinate-nonce"
SIGNATURE_HEADER: Final = "x-pollinate-signature"
_HEADERS: Final = (KEY_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER)

# Changing the signed encoding must change this tag, so old and new never verify each other.
_SIGNATURE_DOMAIN: Final = b"pollinate-request-signature-v1"
_NONCE_BYTES: Final = 16
_NONCE = re.compile(r"^[0-9a-f]{32}$")
_ED25519_KEY_BYTES: Final = 32
_ED25519_SIGNATURE_BYTES: Final = 64
_SSH_KEY_TYPE: Final = "ssh-ed25519"
_DEFAULT_COMMENT: Final = "pollinate-node"

_CA_CERTIFICATE: Final = "ca.pem"
_CA_KEY: Final = "ca.key"
_SERVER_CERTIFICATE: Final = "server.pem"
_SERVER_KEY: Final = "server.key"
_CERTIFICATES_COMMAND: Final = "pollinate certificates DIR"
_KEYS_COMMAND: Final = "pollinate keys FILE"
_PRIVATE_MODE: Final = 0o600
_PUBLIC_MODE: Final = 0o644
# A certificate starts being valid a little in the past, for peers whose clock lags.
_BACKDATE: Final = datetime.timedelta(minutes=5)
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


class AuthenticationError(ProtocolError):
    """A node request failed authentication; the message is a one-line reason.

    Parameters
    ----------
    reason
        Why, in one line, without secrets: it becomes the gRPC status details and a
        log line on the server.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- files


def _check_free(paths: Sequence[Path]) -> None:
    """Raise ConfigError naming every path that already exists."""
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise ConfigError(
            f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
            "use --force to overwrite"
        )


def _write_file(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    """Write ``data`` to a new file with ``mode``; with ``force``, replace atomically."""
    try:
        if not force:
            # O_EXCL: never follow a symlink or clobber a file that appeared meanwhile.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return
        # A fresh temporary file gets ``mode`` even when the old file was world-readable.
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except FileExistsError:
        raise ConfigError(f"{path} already exists; use --force to overwrite") from None
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror or exc}") from None


def _make_directory(directory: Path) -> None:
    """Create ``directory`` (and parents) or raise ConfigError saying why not."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"cannot write into {directory}: it is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {directory}: {exc.strerror or exc}") from None


def _read_file(path: Path, what: str, hint: str) -> bytes:
    """Read ``path`` or raise ConfigError naming it and how to create it."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; {hint}") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {path} is a directory, not a file; {hint}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- certificates


@final
@dataclass(frozen=True)
class CertificatePaths:
    """Where :func:`write_certificates` put its four files.

    Attributes
    ----------
    ca_certificate
        ``ca.pem``: the root certificate every node needs to trust the server.
    ca_key
        ``ca.key``: the CA's private key; keep it offline, the server does not need it.
    server_certificate
        ``server.pem``: the server's certificate, signed by the CA.
    server_key
        ``server.key``: the server's private key.
    """

    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path


@final
@dataclass(frozen=True)
class ServerCredentialsMaterial:
    """PEM bytes a TLS server needs; the private key is left out of ``repr``.

    Attributes
    ----------
    private_key_pem
        The server's private key, PEM.
    certificate_chain_pem
        The server's certificate (and any intermediates), PEM.
    """

    private_key_pem: bytes = field(repr=False)
    certificate_chain_pem: bytes


def _host_name(host: str) -> x509.GeneralName:
    """One subjectAltName entry: an IP address when ``host`` parses as one, else DNS."""
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return x509.IPAddress(ipaddress.ip_address(literal))
    except ValueError:
        pass
    if len(host) > 253 or not _DNS_NAME.match(host):
        raise ConfigError(f"host {host!r} is neither a valid DNS name nor an IP address")
    return x509.DNSName(host.lower())


def _ec_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_certificates(
    directory: Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 365,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> CertificatePaths:
    """Write a self-signed CA and a server certificate it signs, for testing.

    Writes ``ca.pem``, ``ca.key``, ``server.pem`` and ``server.key`` into
    ``directory`` (created if missing); the keys are readable by their owner only
    (0600). Keys are ECDSA P-256. The server certificate names every host in
    ``hosts`` as a subjectAltName (an IP address entry for IP literals, a DNS entry
    otherwise) and carries the serverAuth extended key usage, so TLS clients accept it
    for exactly those names.

    Parameters
    ----------
    directory
        Where to write the files.
    hosts
        Names and addresses nodes will use to reach the server.
    days
        How long both certificates stay valid.
    force
        Overwrite existing files; otherwise refuse if any of the four exists.
    now
        The start of validity (timezone-aware); the current time when ``None``.

    Returns
    -------
    CertificatePaths
        The four files written.

    Raises
    ------
    ConfigError
        A host is invalid, ``days`` is not positive, a file exists without ``force``,
        or the directory cannot be written.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     paths = write_certificates(Path(tmp), hosts=["localhost"])
    ...     material = load_server_credentials(Path(tmp))
    >>> paths.ca_certificate.name
    'ca.pem'
    """
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError(f"days must be a positive whole number, got {days!r}")
    unique_hosts = list(dict.fromkeys(hosts))
    if not unique_hosts:
        raise ConfigError("give at least one host name or IP address for the server")
    alt_names = [_host_name(host) for host in unique_hosts]
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    elif now.tzinfo is None:
        raise ConfigError("now must be a timezone-aware datetime")
    not_before = now - _BACKDATE
    not_after = now + datetime.timedelta(days=days)

    paths = CertificatePaths(
        ca_certificate=directory / _CA_CERTIFICATE,
        ca_key=directory / _CA_KEY,
        server_certificate=directory / _SERVER_CERTIFICATE,
        server_key=directory / _SERVER_KEY,
    )
    _make_directory(directory)
    if not force:
        _check_free(
            [paths.ca_certificate, paths.ca_key, paths.server_certificate, paths.server_key]
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pollinate"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Pollinate test CA"),
        ]
    )
    ca_public = ca_key.public_key()
    ca_certificate = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_public), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_public = server_key.public_key()
    server_certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Pollinate"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "Pollinate test server"),
                ]
            )
        )
        .issuer_name(ca_name)
        .public_key(server_public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    # Private keys first: if writing stops halfway, no certificate lacks its key.
    _write_file(paths.ca_key, _ec_key_pem(ca_key), mode=_PRIVATE_MODE, force=force)
    _write_file(paths.server_key, _ec_key_pem(server_key), mode=_PRIVATE_MODE, force=force)
    _write_file(
        paths.ca_certificate, ca_certificate.public_bytes(pem), mode=_PUBLIC_MODE, force=force
    )
    _write_file(
        paths.server_certificate,
        server_certificate.public_bytes(pem),
        mode=_PUBLIC_MODE,
        force=force,
    )
    return paths


def _parse_certificate(data: bytes, path: Path, hint: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ConfigError(f"{path} is not a PEM certificate; {hint}") from None


def _check_validity(certificate: x509.Certificate, path: Path, now: datetime.datetime) -> None:
    if now > certificate.not_valid_after_utc:
        raise ConfigError(
            f"certificate {path} expired on {certificate.not_valid_after_utc:%Y-%m-%d}; "
            f"create new ones with `{_CERTIFICATES_COMMAND}`"
        )
    if now < certificate.not_valid_before_utc:
        raise ConfigError(
            f"certificate {path} is not valid before "
            f"{certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC; check this machine's clock"
        )


def load_server_credentials(
    directory: Path, *, now: datetime.datetime | None = None
) -> ServerCredentialsMaterial:
    """Read and check ``server.key`` and ``server.pem`` from ``directory``.

    Parameters
    ----------
    directory
        A directory written by ``pollinate certificates DIR`` (or holding files of the
        same names from another CA).
    now
        The time to check validity against (timezone-aware); the current time when ``None``.

    Returns
    -------
    ServerCredentialsMaterial
        The PEM bytes, ready for :func:`tls_server_credentials`.

    Raises
    ------
    ConfigError
        A file is missing, is not PEM, the key does not match the certificate, or the
        certificate is expired or not yet valid.
    """
    hint = f"create test certificates with `pollinate certificates {directory}`"
    key_path = directory / _SERVER_KEY
    certificate_path = directory / _SERVER_CERTIFICATE
    key_pem = _read_file(key_path, "server key", hint)
    certificate_pem = _read_file(certificate_path, "server certificate", hint)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{key_path} is not an unencrypted PEM private key; {hint}") from None
    certificate = _parse_certificate(certificate_pem, certificate_path, hint)
    public_format = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(
        serialization.Encoding.DER, public_format
    ) != certificate.public_key().public_bytes(serialization.Encoding.DER, public_format):
        raise ConfigError(
            f"{key_path} does not belong to {certificate_path}; "
            f"write both again with `{_CERTIFICATES_COMMAND}`"
        )
    _check_validity(
        certificate, certificate_path, now or datetime.datetime.now(datetime.timezone.utc)
    )
    return ServerCredentialsMaterial(private_key_pem=key_pem, certificate_chain_pem=certificate_pem)


def load_root_certificate(path: Path) -> bytes:
    """Read the root certificate (``ca.pem``) a node trusts the server with.

    Parameters
    ----------
    path
        A PEM file with one or more CA certificates.

    Returns
    -------
    bytes
        The PEM bytes, ready for :func:`tls_channel_credentials`.

    Raises
    ------
    ConfigError
        The file is missing or is not a PEM certificate.
    """
    hint = f"it is the ca.pem written by `{_CERTIFICATES_COMMAND}` on the server side"
    data = _read_file(path, "root certificate", hint)
    _parse_certificate(data, path, hint)
    return data


def tls_server_credentials(material: ServerCredentialsMaterial) -> grpc.ServerCredentials:
    """gRPC server credentials for TLS with ``material``.

    gRPC's TLS stack negotiates TLS 1.2 or 1.3 only (its default minimum is 1.2 and
    Python's grpc exposes no way to lower it), so nothing older is ever accepted. Nodes
    authenticate with signed requests, not client certificates.

    Parameters
    ----------
    material
        From :func:`load_server_credentials`.

    Returns
    -------
    grpc.ServerCredentials
        For ``server.add_secure_port(address, credentials)``.
    """
    import grpc

    return grpc.ssl_server_credentials([(material.private_key_pem, material.certificate_chain_pem)])


def tls_channel_credentials(root_certificate: bytes) -> grpc.ChannelCredentials:
    """gRPC channel credentials that trust only ``root_certificate`` (TLS 1.2+).

    Parameters
    ----------
    root_certificate
        From :func:`load_root_certificate`.

    Returns
    -------
    grpc.ChannelCredentials
        For ``grpc.secure_channel(target, credentials)``; the target's host must be one
        of the server certificate's names.
    """
    import grpc

    return grpc.ssl_channel_credentials(root_certificates=root_certificate)


# --------------------------------------------------------------------------- node keys


@final
@dataclass(frozen=True)
class NodeKeyPaths:
    """Where :func:`write_node_key` put a node's key pair.

    Attributes
    ----------
    private
        The private key (PEM PKCS8, 0600); it never leaves the node.
    public
        The public key: one OpenSSH-format line to append to the server's authorized keys.
    """

    private: Path
    public: Path


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte Ed25519 public key of ``key``.

    Examples
    --------
    >>> len(public_key_bytes(Ed25519PrivateKey.generate()))
    32
    """
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _ssh_blob(raw: bytes) -> bytes:
    """The OpenSSH wire encoding of an Ed25519 public key (what its fingerprint hashes)."""
    kind = _SSH_KEY_TYPE.encode("ascii")
    return len(kind).to_bytes(4, "big") + kind + len(raw).to_bytes(4, "big") + raw


def fingerprint(public_key_bytes: bytes) -> str:
    """The OpenSSH-style fingerprint of a raw Ed25519 public key, ``SHA256:<base64>``.

    It equals what ``ssh-keygen -lf node.key.pub`` prints, so operators can compare.

    Examples
    --------
    >>> fingerprint(bytes(32))
    'SHA256:kmYcvdi2GkPeWxB6XLjrZB8JHsy2Hm8luHMFp9GMvqk'
    """
    if len(public_key_bytes) != _ED25519_KEY_BYTES:
        raise ConfigError(
            f"an Ed25519 public key has {_ED25519_KEY_BYTES} bytes, not {len(public_key_bytes)}"
        )
    digest = hashlib.sha256(_ssh_blob(public_key_bytes)).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _openssh_line(raw: bytes, comment: str) -> str:
    encoded = base64.b64encode(_ssh_blob(raw)).decode("ascii")
    return f"{_SSH_KEY_TYPE} {encoded} {comment}".rstrip()


def write_node_key(
    path: Path, *, force: bool = False, comment: str = _DEFAULT_COMMENT
) -> NodeKeyPaths:
    """Write a new Ed25519 key pair for a node.

    The private key goes to ``path`` (PEM PKCS8, unencrypted, mode 0600); the public key
    to ``path`` with ``.pub`` appended, as one OpenSSH-format line
    (``ssh-ed25519 AAAA... pollinate-node``), so the server's authorized keys file is
    just such lines concatenated.

    Parameters
    ----------
    path
        The private key file.
    force
        Overwrite existing files; otherwise refuse if either exists.
    comment
        The text after the key on its line, which the server logs (e.g. the node's name).

    Returns
    -------
    NodeKeyPaths
        The two files written.

    Raises
    ------
    ConfigError
        A file exists without ``force``, the comment spans lines, or writing failed.
    """
    if "\n" in comment or "\r" in comment:
        raise ConfigError("the key comment must fit on one line")
    paths = NodeKeyPaths(private=path, public=path.with_name(path.name + ".pub"))
    if not force:
        _check_free([paths.private, paths.public])
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_line = _openssh_line(public_key_bytes(key), comment.strip()) + "\n"
    _write_file(paths.private, private_pem, mode=_PRIVATE_MODE, force=force)
    _write_file(paths.public, public_line.encode("utf-8"), mode=_PUBLIC_MODE, force=force)
    return paths


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a node's Ed25519 private key written by :func:`write_node_key`.

    Raises
    ------
    ConfigError
        The file is missing, not an unencrypted PEM private key, or not Ed25519.
    """
    hint = f"create one with `pollinate keys {path}`"
    data = _read_file(path, "node key", hint)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(f"{path} is not an unencrypted PEM private key; {hint}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key; {hint}")
    return key


@final
class AuthorizedKeys(Mapping[bytes, str]):
    """The node public keys a server accepts: raw 32-byte key -> its comment.

    Parameters
    ----------
    keys
        Raw Ed25519 public keys and their comments (the text the server logs).

    Examples
    --------
    >>> key = public_key_bytes(Ed25519PrivateKey.generate())
    >>> authorized = AuthorizedKeys({key: "node-1"})
    >>> authorized[key], len(authorized)
    ('node-1', 1)
    """

    def __init__(self, keys: Mapping[bytes, str] | None = None) -> None:
        entries = dict(keys or {})
        for raw in entries:
            if len(raw) != _ED25519_KEY_BYTES:
                raise ConfigError(
                    f"an Ed25519 public key has {_ED25519_KEY_BYTES} bytes, not {len(raw)}"
                )
        self._keys: dict[bytes, str] = entries

    def __getitem__(self, key: bytes) -> str:
        return self._keys[key]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        count = len(self._keys)
        return f"AuthorizedKeys({count} key{'' if count == 1 else 's'})"


def _parse_public_line(line: str) -> tuple[bytes, str]:
    """Parse ``ssh-ed25519 BASE64 [comment]``; ValueError says what is wrong."""
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise ValueError(f"expected '{_SSH_KEY_TYPE} <base64 key> [comment]'")
    kind, encoded = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if kind != _SSH_KEY_TYPE:
        raise ValueError(f"key type {kind!r} is not supported; only {_SSH_KEY_TYPE} is")
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key is not valid base64") from None
    raw = blob[-_ED25519_KEY_BYTES:]
    if len(raw) != _ED25519_KEY_BYTES or blob != _ssh_blob(raw):
        raise ValueError(f"the key is not an encoded {_SSH_KEY_TYPE} public key")
    return raw, comment


def load_authorized_keys(path: Path) -> AuthorizedKeys:
    """Read an authorized keys file: the ``.pub`` lines of the nodes a server accepts.

    Each line is ``ssh-ed25519 <base64> [comment]``; blank lines and lines starting with
    ``#`` are ignored.

    Raises
    ------
    ConfigError
        The file is missing, holds no key, a line is not a valid key (the message gives
        its number), or a key appears twice.
    """
    hint = f"it holds the lines of the .pub files written by `{_KEYS_COMMAND}`"
    data = _read_file(path, "authorized keys file", hint)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"authorized keys file {path} is not UTF-8 text; {hint}") from None
    keys: dict[bytes, str] = {}
    first_line: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            raw, comment = _parse_public_line(stripped)
        except ValueError as exc:
            raise ConfigError(f"{path}, line {number}: {exc}") from None
        if raw in keys:
            raise ConfigError(
                f"{path}, line {number}: the same key as line {first_line[raw]}; remove one"
            )
        keys[raw] = comment
        first_line[raw] = number
    if not keys:
        raise ConfigError(f"authorized keys file {path} holds no key; {hint}")
    return AuthorizedKeys(keys)


# --------------------------------------------------------------------------- signed requests


def _signed_bytes(
    method: str, node_id: int | None, timestamp: str, nonce: str, public_key: bytes
) -> bytes:
    """The canonical bytes a request signature covers: length-prefixed fields."""
    fields = (
        _SIGNATURE_DOMAIN,
        method.encode("utf-8"),
        b"" if node_id is None else str(int(node_id)).encode("ascii"),
        timestamp.encode("ascii"),
        nonce.encode("ascii"),
        public_key,
    )
    return b"".join(len(f).to_bytes(4, "big") + f for f in fields)


@final
class RequestSigner:
    """Signs a node's gRPC calls with its Ed25519 key.

    Parameters
    ----------
    private_key
        The node's key, from :func:`load_private_key`.
    clock
        Seconds since the epoch; injected for tests.

    Examples
    --------
    >>> signer = RequestSigner(Ed25519PrivateKey.generate())
    >>> sorted(key for key, _ in signer.sign("/pollinate.Fleet/Pull", 7))
    ['x-pollinate-key', 'x-pollinate-nonce', 'x-pollinate-signature', 'x-pollinate-timestamp']
    """

    def __init__(
        self, private_key: Ed25519PrivateKey, *, clock: Callable[[], float] = time.time
    ) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise ConfigError("a node signs its requests with an Ed25519 private key")
        self._key = private_key
        self._clock = clock
        self._public = public_key_bytes(private_key)
        self._public_b64 = base64.b64encode(self._public).decode("ascii")

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte public key the server sees."""
        return self._public

    def sign(self, method: str, node_id: int | None) -> list[tuple[str, str]]:
        """Metadata entries that authenticate one call of ``method`` as ``node_id``.

        Parameters
        ----------
        method
            The full gRPC method name, e.g. ``/pollinate.Fleet/PullMessages``.
        node_id
            The node's id, or ``None`` before it has one (registration).

        Returns
        -------
        list[tuple[str, str]]
            To pass as ``metadata=`` of the call; use once (the nonce is single-use).
        """
        timestamp = f"{self._clock():.6f}"
        nonce = secrets.token_hex(_NONCE_BYTES)
        signature = self._key.sign(_signed_bytes(method, node_id, timestamp, nonce, self._public))
        return [
            (KEY_HEADER, self._public_b64),
            (TIMESTAMP_HEADER, timestamp),
            (NONCE_HEADER, nonce),
            (SIGNATURE_HEADER, base64.b64encode(signature).decode("ascii")),
        ]


def _extract(metadata: Sequence[tuple[str, str | bytes]]) -> dict[str, str]:
    """The four authentication entries as text; AuthenticationError if absent or garbled."""
    found: dict[str, str] = {}
    for entry in metadata:
        key, value = entry[0], entry[1]
        name = key.lower()
        if name not in _HEADERS:
            continue
        if name in found:
            raise AuthenticationError(f"metadata {name} is given more than once")
        if isinstance(value, bytes):
            try:
                value = value.decode("ascii")
            except UnicodeDecodeError:
                raise AuthenticationError(f"metadata {name} is not ASCII") from None
        found[name] = value
    missing = [name for name in _HEADERS if name not in found]
    if missing:
        raise AuthenticationError(
            f"missing metadata {', '.join(missing)}; was the node given its key to sign with?"
        )
    return found


def _b64decode(value: str, name: str, size: int) -> bytes:
    try:
        decoded = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise AuthenticationError(f"metadata {name} is not valid base64") from None
    if len(decoded) != size:
        raise AuthenticationError(f"metadata {name} has {len(decoded)} bytes, not {size}")
    return decoded


@final
class RequestVerifier:
    """Checks the signed metadata of node requests; safe to call from many threads.

    A request passes when its metadata is well formed, its key is authorized, the
    signature covers this method and node id, its timestamp is within ``max_skew``
    seconds of the server's clock, and its nonce was not seen before.

    Replays: each accepted nonce is remembered until its timestamp is ``2 * max_skew``
    old (a replay is stale after ``max_skew``; the rest is a margin for clock steps).
    Memory is bounded by ``nonce_cache_size``: past it the oldest nonce is forgotten,
    and from then on requests no newer than that nonce's timestamp are rejected, so a
    forgotten nonce can never be replayed. That only bites when more than
    ``nonce_cache_size`` requests arrive within ``max_skew`` seconds.

    Parameters
    ----------
    authorized
        The keys to accept, from :func:`load_authorized_keys`.
    max_skew
        How far, in seconds, a request's timestamp may be from the server's clock.
    clock
        Seconds since the epoch; injected for tests.
    nonce_cache_size
        The most nonces remembered at once.

    Examples
    --------
    >>> key = Ed25519PrivateKey.generate()
    >>> verifier = RequestVerifier(AuthorizedKeys({public_key_bytes(key): "node-1"}))
    >>> metadata = RequestSigner(key).sign("/pollinate.Fleet/Pull", 7)
    >>> verifier.verify("/pollinate.Fleet/Pull", 7, metadata) == public_key_bytes(key)
    True
    >>> try:
    ...     verifier.verify("/pollinate.Fleet/Pull", 7, metadata)
    ... except AuthenticationError as exc:
    ...     print(exc)
    replayed request (nonce already used)
    """

    def __init__(
        self,
        authorized: Mapping[bytes, str],
        *,
        max_skew: float = 60.0,
        clock: Callable[[], float] = time.time,
        nonce_cache_size: int = 100_000,
    ) -> None:
        if not (isinstance(max_skew, (int, float)) and math.isfinite(max_skew) and max_skew > 0):
            raise ConfigError(f"max_skew must be a positive number of seconds, got {max_skew!r}")
        if isinstance(nonce_cache_size, bool) or not isinstance(nonce_cache_size, int):
            raise ConfigError(f"nonce_cache_size must be a whole number, got {nonce_cache_size!r}")
        if nonce_cache_size < 1:
            raise ConfigError(f"nonce_cache_size must be at least 1, got {nonce_cache_size}")
        self._public_keys: dict[bytes, Ed25519PublicKey] = {}
        for raw in authorized:
            try:
                self._public_keys[raw] = Ed25519PublicKey.from_public_bytes(raw)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"authorized key {fingerprint(raw)} is not a raw Ed25519 public key"
                ) from None
        self._max_skew = float(max_skew)
        self._clock = clock
        self._capacity = nonce_cache_size
        self._lock = threading.Lock()
        # Nonces seen, and a heap of (timestamp, nonce key) to forget the oldest first.
        self._seen: set[tuple[bytes, str]] = set()
        self._by_age: list[tuple[float, tuple[bytes, str]]] = []
        # Requests with a timestamp at or below this were possibly forgotten: reject them.
        self._floor = -math.inf

    @property
    def max_skew(self) -> float:
        """How far, in seconds, a request's timestamp may be from the server's clock."""
        return self._max_skew

    def __len__(self) -> int:
        """How many nonces are remembered now."""
        with self._lock:
            return len(self._seen)

    def verify(
        self,
        method: str,
        node_id: int | None,
        metadata: Sequence[tuple[str, str | bytes]],
    ) -> bytes:
        """Authenticate one request; return the raw public key that signed it.

        Parameters
        ----------
        method
            The full gRPC method name being called.
        node_id
            The node id the request claims, or ``None`` for registration. The caller
            then checks that this id belongs to the returned key.
        metadata
            The call's invocation metadata (extra entries are ignored).

        Returns
        -------
        bytes
            The authorized raw 32-byte public key.

        Raises
        ------
        AuthenticationError
            With a one-line reason: missing or garbled metadata, unknown key, bad
            signature (which includes a different method or node id), a timestamp too
            old or in the future, or a replayed nonce.
        """
        values = _extract(metadata)
        public = _b64decode(values[KEY_HEADER], KEY_HEADER, _ED25519_KEY_BYTES)
        signature = _b64decode(values[SIGNATURE_HEADER], SIGNATURE_HEADER, _ED25519_SIGNATURE_BYTES)
        timestamp_text = values[TIMESTAMP_HEADER]
        try:
            timestamp = float(timestamp_text)
        except ValueError:
            raise AuthenticationError(f"metadata {TIMESTAMP_HEADER} is not a number") from None
        if not math.isfinite(timestamp):
            raise AuthenticationError(f"metadata {TIMESTAMP_HEADER} is not a finite number")
        nonce = values[NONCE_HEADER]
        if not _NONCE.match(nonce):
            raise AuthenticationError(
                f"metadata {NONCE_HEADER} must be {2 * _NONCE_BYTES} lower-case hex digits"
            )
        verifying_key = self._public_keys.get(public)
        if verifying_key is None:
            raise AuthenticationError(f"unknown key {fingerprint(public)}; not authorized")
        try:
            verifying_key.verify(
                signature, _signed_bytes(method, node_id, timestamp_text, nonce, public)
            )
        except InvalidSignature:
            who = "registration" if node_id is None else f"node {node_id}"
            raise AuthenticationError(
                f"bad signature for {method} as {who}: signed for another method "
                "or node id, or altered"
            ) from None
        # Only authentic requests reach the clock and the nonce cache.
        now = self._clock()
        age = now - timestamp
        if age > self._max_skew:
            raise AuthenticationError(
                f"stale request: timestamp is {age:.0f} s old (at most {self._max_skew:g} s); "
                "check the node's clock"
            )
        if -age > self._max_skew:
            raise AuthenticationError(
                f"request timestamp is {-age:.0f} s in the future (at most "
                f"{self._max_skew:g} s); check the node's clock"
            )
        self._remember(public, nonce, timestamp, now)
        return public

    def _remember(self, public: bytes, nonce: str, timestamp: float, now: float) -> None:
        """Record the nonce, or raise if it was seen or may have been forgotten."""
        entry = (public, nonce)
        with self._lock:
            horizon = now - 2 * self._max_skew
            while self._by_age and self._by_age[0][0] < horizon:
                _, old = heapq.heappop(self._by_age)
                self._seen.discard(old)
            if entry in self._seen:
                raise AuthenticationError("replayed request (nonce already used)")
            if timestamp <= self._floor:
                raise AuthenticationError(
                    "request too old for the replay cache under current load; retry"
                )
            self._seen.add(entry)
            heapq.heappush(self._by_age, (timestamp, entry))
            while len(self._seen) > self._capacity:
                forgotten_at, old = heapq.heappop(self._by_age)
                self._seen.discard(old)
                self._floor = max(self._floor, forgotten_at)


def control_method(name: str) -> str:
    """The method name an operator signs for a control call (``SubmitRun``, ...): never
    one a node signs, so no node signature is valid for a control call."""
    return f"Control.{name}"


def is_loopback_peer(peer: str) -> bool:
    """Whether a gRPC peer string (``ipv4:127.0.0.1:5000``, ``ipv6:[::1]:5000``,
    ``unix:/path``) is a process on this machine."""
    transport, _, rest = peer.partition(":")
    if transport in ("unix", "unix-abstract"):
        return True
    if transport == "ipv4":
        host = rest.rsplit(":", 1)[0]
    elif transport == "ipv6":
        host = rest.rsplit(":", 1)[0].strip("[]")
    else:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
