"""The Gaussian mechanism adds exactly the calibrated noise, from the rng it is given."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.errors import ConfigError
from pollinate.privacy import (
    GaussianMechanism,
    add_gaussian_noise,
    add_gaussian_noise_inplace,
    gaussian_noise_std,
)
from pollinate.records import ArrayRecord

DRAWS = 200_000  # the std of a sample std is sigma / sqrt(2 n): 0.16% here, 2% is 12 of them


@pytest.mark.parametrize(("clip_norm", "noise_multiplier"), [(1.0, 1.0), (0.1, 3.0), (2.5, 0.7)])
def test_noise_has_the_calibrated_std_within_2_percent(
    clip_norm: float, noise_multiplier: float
) -> None:
    zeros = ArrayRecord({"a": np.zeros(DRAWS // 2), "b": np.zeros((DRAWS // 4, 2), np.float32)})
    std = gaussian_noise_std(clip_norm=clip_norm, noise_multiplier=noise_multiplier)

    noisy = add_gaussian_noise(zeros, std=std, rng=np.random.default_rng(0))

    draws = np.concatenate([a.ravel().astype(np.float64) for a in noisy.values()])
    assert std == pytest.approx(clip_norm * noise_multiplier)
    assert np.std(draws) == pytest.approx(std, rel=0.02)
    assert abs(np.mean(draws)) < 5 * std / np.sqrt(DRAWS)
    assert noisy["b"].dtype == np.float32
    assert not zeros["a"].any(), "the input record was changed"


def test_shares_of_n_parties_sum_to_the_calibrated_noise() -> None:
    # Distributed DP: each of 10 nodes adds its share; the sum carries sigma * C.
    num_shares, clip_norm, noise_multiplier = 10, 0.5, 1.2
    share = gaussian_noise_std(
        clip_norm=clip_norm, noise_multiplier=noise_multiplier, num_shares=num_shares
    )
    rng = np.random.default_rng(1)
    total = np.zeros(DRAWS // 4)
    for _ in range(num_shares):
        total += add_gaussian_noise({"x": np.zeros(DRAWS // 4)}, std=share, rng=rng)["x"]
    assert np.std(total) == pytest.approx(noise_multiplier * clip_norm, rel=0.02)


def test_inplace_noise_changes_the_arrays_given_and_same_seed_same_noise() -> None:
    first = {"w": np.zeros(5)}
    second = {"w": np.zeros(5)}
    add_gaussian_noise_inplace(first, std=1.0, rng=np.random.default_rng(3))
    add_gaussian_noise_inplace(second, std=1.0, rng=np.random.default_rng(3))
    assert first["w"].any()
    np.testing.assert_array_equal(first["w"], second["w"])


def test_gaussian_mechanism_is_the_same_calibration() -> None:
    mechanism = GaussianMechanism(noise_multiplier=2.0, num_shares=4)
    assert mechanism.noise_std(sensitivity=3.0) == pytest.approx(3.0)
    noisy = mechanism.add_noise(
        {"w": np.zeros(DRAWS)}, sensitivity=3.0, rng=np.random.default_rng(4)
    )
    assert np.std(noisy["w"]) == pytest.approx(3.0, rel=0.02)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: gaussian_noise_std(clip_norm=-1.0, noise_multiplier=1.0), "clip_norm"),
        (lambda: gaussian_noise_std(clip_norm=1.0, noise_multiplier=float("nan")), "noise_mult"),
        (lambda: gaussian_noise_std(clip_norm=1.0, noise_multiplier=1.0, num_shares=0), "shares"),
        (lambda: GaussianMechanism(noise_multiplier=-2.0), "noise_multiplier"),
        (
            lambda: add_gaussian_noise(
                {"n": np.zeros(3, np.int64)}, std=1.0, rng=np.random.default_rng()
            ),
            "only be added to float arrays",
        ),
        (
            lambda: add_gaussian_noise_inplace(
                {"r": np.frombuffer(bytes(24), np.float64)}, std=1.0, rng=np.random.default_rng()
            ),
            "read-only",
        ),
        (
            lambda: add_gaussian_noise({"w": np.zeros(3)}, std=-1.0, rng=np.random.default_rng()),
            "noise std",
        ),
    ],
)
def test_bad_input_is_a_config_error_that_names_it(call, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call()
