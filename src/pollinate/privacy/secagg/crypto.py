"""The cryptographic primitives of SecAgg+, as thin wrappers over ``cryptography``.

Nothing here is home-made: key agreement is X25519 (RFC 7748), key derivation is
HKDF-SHA256 (RFC 5869), share encryption is AES-256-GCM, and the pseudorandom
generator that expands a 32-byte seed into a mask vector is the AES-256-CTR keystream
(NIST SP 800-38A). The wrappers fix the parameters once, so the protocol code never
chooses a nonce, a hash or a key length, and turn malformed input (a short key, a
tampered ciphertext) into :class:`~pollinate.errors.ProtocolError`.

``cryptography`` is imported at module level: it is a core dependency of Pollinate, and
the SecAgg+ modules are imported only when secure aggregation is used.
"""

from __future__ import annotations

import os
from typing import Final

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from numpy.typing import NDArray

from pollinate.errors import ProtocolError

__all__ = [
    "KEY_BYTES",
    "KeyPair",
    "agree",
    "decrypt",
    "encrypt",
    "generate_key_pair",
    "prg_uint",
    "random_seed",
]

#: Length of X25519 keys, derived symmetric keys and PRG seeds.
KEY_BYTES: Final = 32
_NONCE_BYTES: Final = 12  # AES-GCM's standard nonce length
# The PRG uses a fixed all-zero counter block: every seed is used for one expansion.
_CTR_NONCE: Final = bytes(16)


class KeyPair:
    """An X25519 key pair whose halves travel as raw 32-byte strings.

    Examples
    --------
    >>> alice, bob = generate_key_pair(), generate_key_pair()
    >>> agree(alice.private, bob.public, b"demo") == agree(bob.private, alice.public, b"demo")
    True
    """

    __slots__ = ("private", "public")

    def __init__(self, private: bytes) -> None:
        key = _private_key(private)
        self.private: bytes = private
        self.public: bytes = key.public_key().public_bytes_raw()


def generate_key_pair() -> KeyPair:
    """A fresh X25519 key pair from the operating system's CSPRNG."""
    return KeyPair(X25519PrivateKey.generate().private_bytes_raw())


def random_seed() -> bytes:
    """32 bytes from the operating system's CSPRNG (a self-mask seed)."""
    return os.urandom(KEY_BYTES)


def _private_key(raw: bytes) -> X25519PrivateKey:
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise ProtocolError(f"an X25519 private key is {KEY_BYTES} bytes, got {_describe(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def _public_key(raw: bytes) -> X25519PublicKey:
    if not isinstance(raw, bytes) or len(raw) != KEY_BYTES:
        raise ProtocolError(f"an X25519 public key is {KEY_BYTES} bytes, got {_describe(raw)}")
    return X25519PublicKey.from_public_bytes(raw)


def _describe(value: object) -> str:
    return f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__


def agree(private: bytes, peer_public: bytes, purpose: bytes) -> bytes:
    """A 32-byte key shared with the owner of ``peer_public``, bound to ``purpose``.

    X25519 Diffie-Hellman followed by HKDF-SHA256 with ``purpose`` as the info string,
    so the same pair of keys yields independent keys for independent uses (mask seeds,
    share encryption) and rounds. Raises ProtocolError for a malformed key or a
    low-order public key (an all-zero shared secret).
    """
    try:
        secret = _private_key(private).exchange(_public_key(peer_public))
    except ValueError as exc:  # cryptography rejects low-order points this way
        raise ProtocolError(f"key agreement failed: {exc}") from None
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=purpose).derive(secret)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM: a random 12-byte nonce followed by the ciphertext and its tag.

    ``associated`` is authenticated, not encrypted (who sends to whom, which round), so
    a ciphertext replayed in another context fails to decrypt.
    """
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    """Inverse of :func:`encrypt`; ProtocolError if the ciphertext was altered or misrouted."""
    if len(ciphertext) < _NONCE_BYTES + 16:
        raise ProtocolError(f"a share ciphertext is too short ({len(ciphertext)} bytes)")
    try:
        return AESGCM(key).decrypt(ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:], associated)
    except InvalidTag:
        raise ProtocolError(
            "a share ciphertext failed authentication: it was altered, or is not meant "
            "for this node and round"
        ) from None


def prg_uint(seed: bytes, length: int, bits: int) -> NDArray[np.uint64]:
    """``length`` integers uniform on ``[0, 2**bits)``, expanded from a 32-byte seed.

    The AES-256-CTR keystream under ``seed`` is read as little-endian words (4 bytes
    per entry when ``bits <= 32``, else 8) and masked to ``bits``; since the modulus is
    a power of two, masking keeps the entries exactly uniform.

    Examples
    --------
    >>> seed = bytes(range(32))
    >>> a = prg_uint(seed, 5, 16)
    >>> bool((a == prg_uint(seed, 5, 16)).all()), bool((a < 2**16).all())
    (True, True)
    """
    if len(seed) != KEY_BYTES:
        raise ProtocolError(f"a PRG seed is {KEY_BYTES} bytes, got {len(seed)}")
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be within [1, 64], got {bits}")
    word = 4 if bits <= 32 else 8
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_CTR_NONCE)).encryptor()
    stream = encryptor.update(bytes(length * word)) + encryptor.finalize()
    values = np.frombuffer(stream, dtype="<u4" if word == 4 else "<u8").astype(np.uint64)
    if bits < 64:
        values &= np.uint64((1 << bits) - 1)
    return values
