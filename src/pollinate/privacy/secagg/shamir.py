"""Shamir's t-of-n secret sharing over the prime field GF(2**521 - 1).

Shamir, "How to Share a Secret", Communications of the ACM 22(11), 1979.

A secret ``s`` (here 32 bytes: an X25519 private key or a self-mask seed) is the
constant term of a random polynomial ``f`` of degree ``t - 1``; the share of the party
with id ``x`` is ``f(x)``. Any ``t`` shares give ``s`` back by Lagrange interpolation at
0; any ``t - 1`` shares are uniformly distributed whatever ``s`` is, so they reveal
nothing. The field is the Mersenne prime ``2**521 - 1``, large enough for any 32-byte
secret and for 63-bit node ids as evaluation points; coefficients come from the
operating system's CSPRNG. This is arithmetic only, no cryptographic primitive.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Final

from pollinate.errors import ProtocolError

__all__ = ["PRIME", "SHARE_BYTES", "combine", "split"]

#: The field's modulus: the Mersenne prime 2**521 - 1.
PRIME: Final = (1 << 521) - 1
#: Bytes of one encoded share value (enough for any field element).
SHARE_BYTES: Final = 66
_SECRET_BYTES: Final = 32


def split(secret: bytes, xs: Sequence[int], threshold: int) -> dict[int, bytes]:
    """Shares of a 32-byte ``secret`` for the parties ``xs``; any ``threshold`` recover it.

    ``xs`` are the parties' evaluation points (SecAgg+ uses node ids): distinct and
    non-zero. Each share is ``SHARE_BYTES`` big-endian bytes.

    Examples
    --------
    >>> secret = bytes(range(32))
    >>> shares = split(secret, [3, 5, 8, 13], threshold=3)
    >>> combine({x: shares[x] for x in (3, 8, 13)}, threshold=3) == secret
    True
    """
    if len(secret) != _SECRET_BYTES:
        raise ValueError(f"a secret is {_SECRET_BYTES} bytes, got {len(secret)}")
    _check_points(xs)
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be within [1, {len(xs)}] for {len(xs)} shares")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = {}
    for x in xs:
        value = 0
        for coefficient in reversed(coefficients):  # Horner
            value = (value * x + coefficient) % PRIME
        shares[x] = value.to_bytes(SHARE_BYTES, "big")
    return shares


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (the first ``threshold`` are used).

    Raises ProtocolError when there are fewer than ``threshold`` shares or a share is
    not a field element. Fewer shares than the sharing's real threshold give a wrong
    value, not an error: Shamir shares carry no redundancy to detect that.
    """
    if len(shares) < threshold:
        raise ProtocolError(
            f"{len(shares)} shares cannot recover a secret shared with threshold {threshold}"
        )
    points = list(shares.items())[:threshold]
    xs = [x for x, _ in points]
    _check_points(xs)
    secret = 0
    for j, (xj, encoded) in enumerate(points):
        yj = int.from_bytes(encoded, "big")
        if len(encoded) != SHARE_BYTES or yj >= PRIME:
            raise ProtocolError(f"the share of party {xj} is not a field element")
        numerator, denominator = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                numerator = numerator * xm % PRIME
                denominator = denominator * (xm - xj) % PRIME
        secret = (secret + yj * numerator * pow(denominator, -1, PRIME)) % PRIME
    if secret >> (8 * _SECRET_BYTES):
        raise ProtocolError("the shares do not interpolate to a 32-byte secret (inconsistent)")
    return secret.to_bytes(_SECRET_BYTES, "big")


def _check_points(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ProtocolError(f"share points must be distinct and within (0, 2**521 - 1): {xs}")
