"""The cost of one Gaussian release agrees with an independent accountant, and the
calibration from epsilon inverts it."""

from __future__ import annotations

import pytest

from pollinate.analytics import QueryPrivacy, gaussian_epsilon
from pollinate.errors import ConfigError


@pytest.mark.parametrize("noise_multiplier", [0.3, 0.8, 1.0, 2.5, 8.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-8])
def test_epsilon_agrees_with_dp_accountings_privacy_loss_distribution(
    noise_multiplier: float, delta: float
) -> None:
    from dp_accounting.pld import privacy_loss_distribution as pld

    reference = pld.from_gaussian_mechanism(
        noise_multiplier, value_discretization_interval=1e-4
    ).get_epsilon_for_delta(delta)

    assert gaussian_epsilon(noise_multiplier, delta) == pytest.approx(reference, rel=1e-3)


def test_more_noise_costs_less() -> None:
    epsilons = [gaussian_epsilon(z, 1e-6) for z in (0.5, 1.0, 2.0, 4.0)]

    assert epsilons == sorted(epsilons, reverse=True) and epsilons[-1] > 0


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 3.0])
def test_calibration_gives_the_asked_epsilon(epsilon: float) -> None:
    privacy = QueryPrivacy.for_epsilon(epsilon, delta=1e-6)

    assert gaussian_epsilon(privacy.noise_multiplier, 1e-6) == pytest.approx(epsilon, rel=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: QueryPrivacy(noise_multiplier=0.0), "noise_multiplier must be a positive"),
        (lambda: QueryPrivacy(noise_multiplier=1.0, delta=1.0), "delta must be in \\(0, 1\\)"),
        (lambda: QueryPrivacy(1.0, accountant=object()), "accountant must have step"),  # type: ignore[arg-type]
        (lambda: QueryPrivacy.for_epsilon(0.0), "epsilon must be positive"),
        (lambda: gaussian_epsilon(-1.0, 1e-6), "noise_multiplier must be positive"),
    ],
)
def test_bad_privacy_settings_are_config_errors(make: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


def test_the_privacy_packages_accountant_plugs_in() -> None:
    from pollinate.privacy.accounting import PldAccountant

    privacy = QueryPrivacy.for_epsilon(1.0, delta=1e-6, accountant=PldAccountant())
    assert privacy.accountant is not None

    privacy.accountant.step(noise_multiplier=privacy.noise_multiplier, sample_rate=1.0, num_steps=5)

    # Five (1, 1e-6)-DP releases compose to well under the basic bound of 5.
    assert 1.0 < privacy.accountant.epsilon(1e-6) < 3.0
