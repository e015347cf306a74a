"""Synthetic patient records, generated per hospital from a seeded RNG.

Each hospital has its own population (size, age distribution, prevalence of
condition X, age at onset), so the federation is non-IID like real hospitals are.
The same (seed, hospital) always gives the same records, on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class HospitalProfile:
    """The population one hospital serves."""

    patients: int
    age_mean: float
    age_sd: float
    prevalence: float  # share of 50-year-olds with condition X; grows with age
    onset_mean: float
    onset_sd: float


PROFILES = (
    HospitalProfile(
        patients=800, age_mean=52, age_sd=15, prevalence=0.10, onset_mean=54, onset_sd=9
    ),
    HospitalProfile(
        patients=1300, age_mean=61, age_sd=13, prevalence=0.14, onset_mean=58, onset_sd=8
    ),
    HospitalProfile(
        patients=600, age_mean=45, age_sd=17, prevalence=0.07, onset_mean=49, onset_sd=11
    ),
    HospitalProfile(
        patients=1800, age_mean=67, age_sd=12, prevalence=0.18, onset_mean=62, onset_sd=7
    ),
    HospitalProfile(
        patients=1000, age_mean=55, age_sd=16, prevalence=0.12, onset_mean=56, onset_sd=10
    ),
)


def patient_records(hospital: int, seed: int) -> dict[str, NDArray[np.float64]]:
    """The records of ``hospital`` (0-based; profiles repeat past 5) as columns.

    Columns: ``age`` (years), ``sex`` (0/1), ``condition_x`` (0/1) and
    ``age_at_onset`` (years; NaN for patients without condition X).
    """
    profile = PROFILES[hospital % len(PROFILES)]
    rng = np.random.default_rng([seed, hospital])
    n = profile.patients
    age = np.round(np.clip(rng.normal(profile.age_mean, profile.age_sd, n), 18, 100), 1)
    sex = rng.integers(0, 2, n).astype(np.float64)
    risk = np.clip(profile.prevalence * (1 + (age - 50) / 50), 0.0, 1.0)
    condition_x = (rng.random(n) < risk).astype(np.float64)
    onset = np.round(np.minimum(rng.normal(profile.onset_mean, profile.onset_sd, n), age), 1)
    onset = np.maximum(onset, 18.0)
    age_at_onset = np.where(condition_x == 1, onset, np.nan)
    return {"age": age, "sex": sex, "condition_x": condition_x, "age_at_onset": age_at_onset}
