"""The building blocks: crypto wrappers, Shamir sharing, quantization, the graph."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pollinate.errors import ConfigError, ProtocolError
from pollinate.privacy.secagg import crypto, shamir
from pollinate.privacy.secagg.graph import harary_graph
from pollinate.privacy.secagg.quantize import (
    add_mod,
    dequantize_sum,
    quantize,
    step_of,
    sub_mod,
)

# -- crypto ------------------------------------------------------------------------------


def test_key_agreement_is_symmetric_and_bound_to_its_purpose() -> None:
    a, b, c = (crypto.generate_key_pair() for _ in range(3))

    key = crypto.agree(a.private, b.public, b"mask")

    assert key == crypto.agree(b.private, a.public, b"mask")
    assert key != crypto.agree(a.private, b.public, b"share")
    assert key != crypto.agree(a.private, c.public, b"mask")
    assert len(key) == crypto.KEY_BYTES


def test_malformed_keys_are_protocol_errors() -> None:
    pair = crypto.generate_key_pair()
    with pytest.raises(ProtocolError, match="public key is 32 bytes, got 31"):
        crypto.agree(pair.private, b"x" * 31, b"p")
    with pytest.raises(ProtocolError, match=r"low-order|key agreement failed"):
        crypto.agree(pair.private, bytes(32), b"p")  # the all-zero point


def test_encryption_round_trips_and_detects_tampering_and_misrouting() -> None:
    key = crypto.random_seed()
    sealed = crypto.encrypt(key, b"shares", b"from 1 to 2")

    assert crypto.decrypt(key, sealed, b"from 1 to 2") == b"shares"
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(ProtocolError, match="failed authentication"):
        crypto.decrypt(key, tampered, b"from 1 to 2")
    with pytest.raises(ProtocolError, match="failed authentication"):
        crypto.decrypt(key, sealed, b"from 1 to 3")
    with pytest.raises(ProtocolError, match="too short"):
        crypto.decrypt(key, b"short", b"")


@pytest.mark.parametrize("bits", [8, 32, 40, 64])
def test_prg_is_deterministic_in_range_and_seed_dependent(bits: int) -> None:
    seed = crypto.random_seed()

    values = crypto.prg_uint(seed, 1000, bits)

    assert values.dtype == np.uint64 and values.shape == (1000,)
    np.testing.assert_array_equal(values, crypto.prg_uint(seed, 1000, bits))
    if bits < 64:
        assert int(values.max()) < 2**bits
    assert not np.array_equal(values, crypto.prg_uint(crypto.random_seed(), 1000, bits))
    # A prefix of a longer expansion is the shorter expansion (a keystream).
    np.testing.assert_array_equal(values[:10], crypto.prg_uint(seed, 10, bits))


# -- Shamir ------------------------------------------------------------------------------


def test_any_t_of_n_shares_recover_the_secret() -> None:
    secret = crypto.random_seed()
    xs = [3, 17, 4, 2**62, 99, 8]
    shares = shamir.split(secret, xs, threshold=4)

    for subset in itertools.combinations(xs, 4):
        assert shamir.combine({x: shares[x] for x in subset}, threshold=4) == secret
    # More shares than needed are fine too.
    assert shamir.combine(shares, threshold=4) == secret


def test_t_minus_1_shares_do_not_recover_the_secret() -> None:
    secret = crypto.random_seed()
    xs = [1, 2, 3, 4, 5]
    shares = shamir.split(secret, xs, threshold=3)

    for subset in itertools.combinations(xs, 2):
        partial = {x: shares[x] for x in subset}
        with pytest.raises(ProtocolError, match="2 shares cannot recover"):
            shamir.combine(partial, threshold=3)
        # Interpolating them as if the threshold were 2 gives a random field element,
        # not the secret (and with overwhelming probability not even 32 bytes).
        with pytest.raises(ProtocolError, match="inconsistent"):
            shamir.combine(partial, threshold=2)


def test_t_minus_1_shares_are_consistent_with_every_secret() -> None:
    # Perfect secrecy: for t - 1 shares and ANY candidate secret, some t-th share
    # completes them into a valid sharing of that candidate.
    xs, t = [5, 6, 7], 3
    shares = shamir.split(crypto.random_seed(), xs, threshold=t)
    known = {x: int.from_bytes(shares[x], "big") for x in xs[:2]}
    for candidate in (bytes(32), b"\xff" * 32, crypto.random_seed()):
        points = {0: int.from_bytes(candidate, "big"), **known}
        y = _interpolate(points, xs[2])
        forged = {**{x: shares[x] for x in xs[:2]}, xs[2]: y.to_bytes(shamir.SHARE_BYTES, "big")}
        assert shamir.combine(forged, threshold=t) == candidate


def _interpolate(points: dict[int, int], at: int) -> int:
    p, total = shamir.PRIME, 0
    for xj, yj in points.items():
        num = den = 1
        for xm in points:
            if xm != xj:
                num = num * (at - xm) % p
                den = den * (xj - xm) % p
        total = (total + yj * num * pow(den, -1, p)) % p
    return total


def test_shamir_rejects_bad_points_and_shares() -> None:
    with pytest.raises(ProtocolError, match="distinct"):
        shamir.split(bytes(32), [1, 1, 2], threshold=2)
    with pytest.raises(ProtocolError, match="distinct"):
        shamir.split(bytes(32), [0, 1, 2], threshold=2)
    with pytest.raises(ProtocolError, match="not a field element"):
        shamir.combine({1: b"\xff" * shamir.SHARE_BYTES, 2: bytes(shamir.SHARE_BYTES)}, 2)


# -- quantization ------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(st.floats(-3, 3), min_size=1, max_size=50),
    levels=st.integers(2, 2**20),
)
def test_rounding_to_nearest_is_within_half_a_step(values: list[float], levels: int) -> None:
    x = np.array(values)
    step = step_of(-2.0, 2.0, levels)

    back = dequantize_sum(
        quantize(x, low=-2.0, high=2.0, levels=levels), count=1, low=-2.0, high=2.0, levels=levels
    )

    assert np.all(np.abs(back - np.clip(x, -2, 2)) <= step / 2 + 1e-12)


def test_stochastic_rounding_is_within_a_step_and_unbiased() -> None:
    rng = np.random.default_rng(0)
    x = np.full(20_000, 0.3)
    levels = 11  # step 0.2: 0.3 lies between 0.2 and 0.4

    q = quantize(x, low=-1.0, high=1.0, levels=levels, rng=rng)
    back = dequantize_sum(q, count=1, low=-1.0, high=1.0, levels=levels)

    assert set(np.round(back, 9)) == {0.2, 0.4}
    assert abs(back.mean() - 0.3) < 0.005  # 5 standard errors


def test_the_sum_of_n_quantized_vectors_is_within_n_steps() -> None:
    rng = np.random.default_rng(1)
    updates = rng.uniform(-1, 1, (20, 1000))
    levels = 2**16

    total = sum(quantize(u, low=-1.0, high=1.0, levels=levels, rng=rng) for u in updates)
    back = dequantize_sum(total, count=20, low=-1.0, high=1.0, levels=levels)  # type: ignore[arg-type]

    assert np.abs(back - updates.sum(axis=0)).max() < 20 * step_of(-1.0, 1.0, levels)


def test_modular_arithmetic_wraps_at_the_modulus() -> None:
    a = np.array([2**32 - 1, 5], np.uint64)
    assert add_mod(a.copy(), np.array([1, 1], np.uint64), 32).tolist() == [0, 6]
    assert sub_mod(np.array([0], np.uint64), np.array([1], np.uint64), 32).tolist() == [2**32 - 1]
    assert add_mod(np.array([2**64 - 1], np.uint64), np.array([2], np.uint64), 64).tolist() == [1]


def test_quantization_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="at least 2 levels"):
        quantize(np.zeros(2), low=0.0, high=1.0, levels=1)
    with pytest.raises(ConfigError, match="low < high"):
        quantize(np.zeros(2), low=1.0, high=1.0, levels=4)


# -- graph -------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k"), [(10, 4), (10, 3), (9, 3), (9, 4), (50, 7), (6, 5)])
def test_harary_graph_is_symmetric_and_k_regular(n: int, k: int) -> None:
    graph = harary_graph(range(100, 100 + n), k, np.random.default_rng(n * k))

    degrees = sorted(len(peers) for peers in graph.values())
    assert all(node not in peers for node, peers in graph.items())
    assert all(node in graph[peer] for node, peers in graph.items() for peer in peers)
    expected = [k] * n if (k * n) % 2 == 0 else [k] * (n - 1) + [k + 1]
    assert degrees == expected


def test_harary_graph_is_complete_for_large_degrees_and_random_otherwise() -> None:
    complete = harary_graph([1, 2, 3, 4], 10, np.random.default_rng(0))
    assert complete == {n: frozenset({1, 2, 3, 4} - {n}) for n in (1, 2, 3, 4)}

    graphs = [harary_graph(range(30), 4, np.random.default_rng(seed)) for seed in (0, 0, 1)]
    assert graphs[0] == graphs[1]
    assert graphs[0] != graphs[2]


def test_harary_graph_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        harary_graph([1, 1, 2], 1, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="degree"):
        harary_graph([1, 2, 3], 0, np.random.default_rng(0))
