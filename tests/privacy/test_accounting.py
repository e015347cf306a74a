"""Epsilon agrees with an independent computation (Opacus' RDP analysis) within 1%."""

from __future__ import annotations

import copy

import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from pollinate.errors import ConfigError
from pollinate.privacy import Accountant, PldAccountant, PrivacyStep, RdpAccountant

OPACUS_ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))


def opacus_epsilon(q: float, sigma: float, steps: int, delta: float) -> float:
    rdp = opacus_rdp.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=OPACUS_ORDERS)
    epsilon, _ = opacus_rdp.get_privacy_spent(orders=OPACUS_ORDERS, rdp=rdp, delta=delta)
    return float(epsilon)


CASES = [
    (0.1, 1.0, 50),
    (0.01, 1.1, 1000),
    (0.5, 2.0, 10),
    (1.0, 5.0, 100),
    (0.05, 0.6, 200),
    (0.2, 0.8, 30),
]


@pytest.mark.parametrize(("q", "sigma", "steps"), CASES)
def test_rdp_epsilon_agrees_with_opacus_within_1_percent(
    q: float, sigma: float, steps: int
) -> None:
    accountant = RdpAccountant(sampling="poisson")
    accountant.step(noise_multiplier=sigma, sample_rate=q, num_steps=steps)
    assert accountant.epsilon(1e-5) == pytest.approx(
        opacus_epsilon(q, sigma, steps, 1e-5), rel=0.01
    )


def test_steps_one_by_one_compose_like_steps_at_once() -> None:
    at_once, one_by_one = RdpAccountant(), RdpAccountant()
    at_once.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=20)
    for _ in range(20):
        one_by_one.step(noise_multiplier=1.0, sample_rate=0.1)
    assert one_by_one.epsilon(1e-5) == pytest.approx(at_once.epsilon(1e-5), rel=1e-12)
    assert len(one_by_one.spent()) == 20 and at_once.spent() == (PrivacyStep(1.0, 0.1, 20),)


def test_mixed_steps_match_opacus_summed_rdp() -> None:
    accountant = RdpAccountant()
    accountant.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=30)
    accountant.step(noise_multiplier=2.0, sample_rate=0.3, num_steps=10)
    rdp = opacus_rdp.compute_rdp(
        q=0.1, noise_multiplier=1.0, steps=30, orders=OPACUS_ORDERS
    ) + opacus_rdp.compute_rdp(q=0.3, noise_multiplier=2.0, steps=10, orders=OPACUS_ORDERS)
    expected, _ = opacus_rdp.get_privacy_spent(orders=OPACUS_ORDERS, rdp=rdp, delta=1e-5)
    assert accountant.epsilon(1e-5) == pytest.approx(float(expected), rel=0.01)


def test_fixed_size_sampling_of_everyone_is_a_gaussian_of_twice_the_sensitivity() -> None:
    # Replace-one moves a sum of norm-C contributions by 2C: multiplier sigma / 2.
    accountant = RdpAccountant(sampling="fixed-size")
    accountant.step(noise_multiplier=4.0, sample_rate=1.0, num_steps=10)
    assert accountant.epsilon(1e-5) == pytest.approx(opacus_epsilon(1.0, 2.0, 10, 1e-5), rel=0.01)


def test_fixed_size_sampling_amplifies_and_is_monotone_in_the_rate() -> None:
    epsilons = []
    for q in (0.05, 0.2, 0.5, 1.0):
        accountant = RdpAccountant(sampling="fixed-size")
        accountant.step(noise_multiplier=2.0, sample_rate=q, num_steps=20)
        epsilons.append(accountant.epsilon(1e-5))
    assert epsilons == sorted(epsilons) and epsilons[0] < epsilons[-1] / 3


@pytest.mark.parametrize(("q", "sigma", "steps"), CASES[:3])
def test_pld_is_at_most_rdp_and_close_to_it(q: float, sigma: float, steps: int) -> None:
    pld, rdp = PldAccountant(), RdpAccountant()
    for accountant in (pld, rdp):
        accountant.step(noise_multiplier=sigma, sample_rate=q, num_steps=steps)
    # RDP's conversion is an upper bound; PLD is (numerically) tight.
    assert 0.7 * rdp.epsilon(1e-5) < pld.epsilon(1e-5) <= rdp.epsilon(1e-5)


def test_epsilon_grows_with_steps_and_shrinks_with_delta() -> None:
    accountant = RdpAccountant()
    assert accountant.epsilon(1e-5) == 0.0
    accountant.step(noise_multiplier=1.0, sample_rate=0.1)
    first = accountant.epsilon(1e-5)
    accountant.step(noise_multiplier=1.0, sample_rate=0.1)
    assert accountant.epsilon(1e-5) > first > 0
    assert accountant.epsilon(1e-3) < accountant.epsilon(1e-5)


def test_a_copy_is_independent_so_a_trial_step_spends_nothing() -> None:
    accountant = RdpAccountant()
    accountant.step(noise_multiplier=1.0, sample_rate=0.1)
    trial = copy.deepcopy(accountant)
    trial.step(noise_multiplier=1.0, sample_rate=0.1)
    assert len(accountant.spent()) == 1 and len(trial.spent()) == 2


def test_accountants_satisfy_the_protocol() -> None:
    assert isinstance(RdpAccountant(), Accountant)
    assert isinstance(PldAccountant(), Accountant)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda a: a.step(noise_multiplier=0.0, sample_rate=0.1), "not private at all"),
        (lambda a: a.step(noise_multiplier=1.0, sample_rate=1.5), r"sample_rate must be within"),
        (lambda a: a.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=0), "num_steps"),
        (lambda a: a.epsilon(0.0), r"delta must be within \(0, 1\)"),
    ],
)
def test_bad_steps_are_config_errors(call, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        call(RdpAccountant())


def test_pld_refuses_fixed_size_sampling_and_says_what_to_use() -> None:
    with pytest.raises(ConfigError, match=r"RdpAccountant\(sampling='fixed-size'\)"):
        PldAccountant(sampling="fixed-size")
    with pytest.raises(ConfigError, match="sampling must be one of"):
        RdpAccountant(sampling="shuffled")  # type: ignore[arg-type]


def test_a_ledger_replays_into_a_fresh_accountant_and_refuses_a_different_history() -> None:
    from pollinate.errors import ConfigError
    from pollinate.privacy.accounting._base import ledger_json, replay_ledger

    original = RdpAccountant(sampling="fixed-size")
    original.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=3)
    original.step(noise_multiplier=2.0, sample_rate=0.2)
    ledger = ledger_json(original)
    # Act: a fresh accountant, and one that already holds the first step (a resume)
    fresh, partial = RdpAccountant(sampling="fixed-size"), RdpAccountant(sampling="fixed-size")
    partial.step(noise_multiplier=1.0, sample_rate=0.1, num_steps=3)
    replay_ledger(fresh, ledger)
    replay_ledger(partial, ledger)
    # Assert
    assert fresh.spent() == partial.spent() == original.spent()
    other = RdpAccountant(sampling="fixed-size")
    other.step(noise_multiplier=5.0, sample_rate=0.5)
    with pytest.raises(ConfigError, match="cannot restore the privacy ledger"):
        replay_ledger(other, ledger)
