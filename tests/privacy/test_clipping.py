"""Clipping bounds every contribution; the clip-norm policies move as the paper says."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pollinate.errors import ConfigError
from pollinate.privacy import (
    AdaptiveClipping,
    FixedClipping,
    apply_update,
    clip_by_l2_norm,
    clip_by_l2_norm_inplace,
    compute_update,
    l2_norm,
)
from pollinate.records import ArrayRecord

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)
updates = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    arrays(np.float32, st.integers(1, 20), elements=finite),
    min_size=1,
)
norms = st.floats(1e-3, 1e3)


@settings(max_examples=200, deadline=None)
@given(update=updates, max_norm=norms)
def test_clipping_bounds_every_contribution(update: dict[str, np.ndarray], max_norm: float) -> None:
    clipped, before = clip_by_l2_norm(update, max_norm)

    assert l2_norm(clipped) <= max_norm * (1 + 1e-5)
    assert before == pytest.approx(l2_norm(update), rel=1e-9)
    if before <= max_norm:  # small updates pass unchanged
        for name, array in update.items():
            np.testing.assert_array_equal(clipped[name], array)
    else:  # large ones keep their direction
        for name, array in update.items():
            np.testing.assert_allclose(
                clipped[name], array * (max_norm / before), rtol=1e-5, atol=1e-30
            )


@settings(max_examples=50, deadline=None)
@given(update=updates, max_norm=norms)
def test_inplace_clipping_agrees_with_the_copying_one(
    update: dict[str, np.ndarray], max_norm: float
) -> None:
    expected, expected_norm = clip_by_l2_norm(update, max_norm)
    mine = {k: v.copy() for k, v in update.items()}
    assert clip_by_l2_norm_inplace(mine, max_norm) == expected_norm
    for name in update:
        np.testing.assert_array_equal(mine[name], expected[name])


def test_update_is_the_delta_and_applies_back() -> None:
    reference = ArrayRecord({"w": np.array([1.0, 2.0], np.float32)})
    local = ArrayRecord({"w": np.array([4.0, 6.0], np.float32)})
    update = compute_update(local, reference)
    np.testing.assert_array_equal(update["w"], [3.0, 4.0])
    clipped, _ = clip_by_l2_norm(update, 1.0)
    model = apply_update(reference, clipped)
    np.testing.assert_allclose(model["w"], [1.6, 2.8], rtol=1e-6)
    assert model["w"].dtype == np.float32


def test_a_mismatched_update_names_both_structures() -> None:
    with pytest.raises(
        ConfigError, match=r"update has arrays \[w\[3\]\] but the model has \[w\[2\]\]"
    ):
        compute_update({"w": np.zeros(3)}, ArrayRecord({"w": np.zeros(2)}))


def test_clipping_refuses_integers_and_read_only_arrays() -> None:
    with pytest.raises(ConfigError, match="only float arrays can be clipped"):
        clip_by_l2_norm({"n": np.ones(3, np.int32)}, 1.0)
    with pytest.raises(ConfigError, match="read-only"):
        clip_by_l2_norm_inplace({"r": np.frombuffer(bytes(16), np.float64)}, 1.0)
    with pytest.raises(ConfigError, match="max_norm"):
        clip_by_l2_norm({"w": np.ones(3)}, 0.0)


def test_fixed_clipping_never_moves() -> None:
    policy = FixedClipping(0.7)
    rng = np.random.default_rng(0)
    assert policy.next_norm(0.7, num_unclipped=0, num_updates=10, rng=rng) == 0.7
    assert policy.update_noise_multiplier(1.3) == 1.3


def test_adaptive_clipping_moves_geometrically_toward_the_quantile_hand_computed() -> None:
    # Andrew et al. 2021: C <- C * exp(-eta * (b - gamma)), b the noised unclipped share.
    policy = AdaptiveClipping(2.0, target_quantile=0.5, learning_rate=0.2, clipped_count_stddev=1.0)
    rng_draw = np.random.default_rng(5).normal(0.0, 1.0)  # the noise the policy will draw
    norm = policy.next_norm(2.0, num_unclipped=8, num_updates=10, rng=np.random.default_rng(5))
    expected = 2.0 * math.exp(-0.2 * ((8 + rng_draw) / 10 - 0.5))
    assert norm == pytest.approx(expected, rel=1e-12)


def test_adaptive_clipping_converges_to_the_target_quantile_of_the_norms() -> None:
    # Norms spread over [1, 3]: the 0.25 quantile is 1.5; with little count noise and many
    # rounds the norm settles there (each round one multiplicative step).
    policy = AdaptiveClipping(
        10.0, target_quantile=0.25, learning_rate=0.2, clipped_count_stddev=0.01
    )
    norms_of_updates = np.linspace(1.0, 3.0, 101)
    rng = np.random.default_rng(0)
    norm = policy.initial_norm
    history = [norm]
    for _ in range(300):
        unclipped = int(np.sum(norms_of_updates <= norm))
        norm = policy.next_norm(norm, num_unclipped=unclipped, num_updates=101, rng=rng)
        history.append(norm)
    first = history[:11]
    assert all(b < a for a, b in itertools.pairwise(first)), "too big: it shrinks every round"
    assert norm == pytest.approx(1.5, rel=0.05)


def test_adaptive_clipping_takes_its_share_of_the_noise() -> None:
    # z_delta = (z^-2 - (2 sigma_b)^-2)^-1/2; with z=1, sigma_b=1: (1 - 1/4)^-1/2.
    policy = AdaptiveClipping(1.0, clipped_count_stddev=1.0)
    assert policy.update_noise_multiplier(1.0) == pytest.approx(1 / math.sqrt(0.75))
    with pytest.raises(ConfigError, match=r"clipped_count_stddev > 1\.5"):
        policy.update_noise_multiplier(3.0)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FixedClipping(0.0), "clip norm must be a positive"),
        (lambda: AdaptiveClipping(-1.0), "initial_norm"),
        (lambda: AdaptiveClipping(1.0, target_quantile=1.5), "target_quantile"),
        (lambda: AdaptiveClipping(1.0, learning_rate=0.0), "learning_rate"),
        (lambda: AdaptiveClipping(1.0, clipped_count_stddev=0.0), "an un-noised count would"),
    ],
)
def test_bad_policies_are_config_errors(build, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()
