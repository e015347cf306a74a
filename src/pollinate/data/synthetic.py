"""The FedProx Synthetic(alpha, beta) federated data sets.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020
(https://arxiv.org/abs/1812.06127), Section 5.1, define a family of synthetic
federations whose heterogeneity is set by two knobs: ``alpha`` controls how much the
*local models* (the labelling functions) differ between devices, ``beta`` how much the
*local feature distributions* differ. Synthetic(0, 0) is mildly heterogeneous,
Synthetic(1, 1) strongly; the IID variant shares one model and one feature
distribution. Sample counts per device follow a heavy-tailed (log-normal, "power
law") distribution.

This follows the reference generator (``data/synthetic_*/generate_synthetic.py`` in
the FedProx repository) step by step, with two deliberate differences: randomness
comes from a seeded ``numpy.random.Generator`` instead of NumPy's global state, and
features are drawn as ``mean + sqrt(diag) * N(0, 1)`` (the covariance is diagonal, so
this is the same distribution as ``multivariate_normal``, only faster). The numbers
therefore differ from the published files; the distribution does not.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Final

import numpy as np
from numpy.typing import NDArray

from pollinate.data.federated_dataset import Partition
from pollinate.errors import ConfigError

__all__ = ["split_devices", "synthetic_fedprox"]

#: Mean and sigma of the log-normal for per-device sample counts, and the floor added.
_LOGNORMAL_MEAN: Final = 4.0
_LOGNORMAL_SIGMA: Final = 2.0
_MIN_SAMPLES: Final = 50
#: Exponent of the feature covariance diagonal, Sigma_jj = j ** -1.2.
_COV_EXPONENT: Final = -1.2


def _check_int(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` as an int >= ``minimum``, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(
            f"synthetic_fedprox: {name} must be an integer >= {minimum}, got {value!r}"
        )
    return operator.index(value)


def _check_scale(name: str, value: object) -> float:
    """Return ``value`` as a finite float >= 0, else raise ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"synthetic_fedprox: {name} must be a number >= 0, got {value!r}")
    as_float = float(value)
    if not math.isfinite(as_float) or as_float < 0.0:
        raise ConfigError(
            f"synthetic_fedprox: {name} must be a finite number >= 0, got {as_float} "
            "(the paper uses 0, 0.5 and 1)"
        )
    return as_float


def synthetic_fedprox(
    alpha: float,
    beta: float,
    *,
    num_devices: int = 30,
    num_features: int = 60,
    num_classes: int = 10,
    seed: int = 0,
    iid: bool = False,
) -> list[tuple[NDArray[np.float32], NDArray[np.int64]]]:
    """Generate the FedProx Synthetic(alpha, beta) data set: one ``(x, y)`` per device.

    For device ``k`` (Li et al., MLSys 2020, Section 5.1 and its reference code):

    - ``n_k = int(LogNormal(4, 2)) + 50`` samples;
    - ``u_k ~ N(0, alpha)``, ``W_k ~ N(u_k, 1)`` of shape (num_features, num_classes)
      and ``b_k ~ N(u_k, 1)`` of shape (num_classes,): ``alpha`` spreads the local
      models' weights apart (but see the note below);
    - ``B_k ~ N(0, beta)``, ``v_k ~ N(B_k, 1)`` per feature, and
      ``x ~ N(v_k, Sigma)`` with diagonal ``Sigma_jj = j ** -1.2``: ``beta`` spreads
      the local feature distributions apart;
    - ``y = argmax(softmax(x @ W_k + b_k))``.

    As in the reference code, the second argument of ``N(0, alpha)`` and
    ``N(0, beta)`` is a standard deviation.

    Note a property of the reference design, kept here on purpose: every entry of
    ``W_k`` and ``b_k`` shares the one mean ``u_k``, which adds the same
    ``u_k * (sum(x) + 1)`` to every class's logit, so ``alpha`` does not change the
    labels (for a fixed seed, labels are identical across ``alpha``). Label and
    feature heterogeneity come from ``beta`` and from the per-device draws of ``W_k``
    and ``b_k`` around ``u_k``.

    With ``iid=True`` every device shares one ``W, b ~ N(0, 1)`` and one feature mean
    ``v = 0`` (the reference's IID setting); ``alpha`` and ``beta`` are then unused,
    and sample counts still vary per device.

    Parameters
    ----------
    alpha, beta:
        Model and feature heterogeneity, each >= 0.
    num_devices, num_features, num_classes:
        Federation size and problem shape (the paper: 30 devices, 60 features, 10
        classes).
    seed:
        Seeds a ``numpy.random.Generator``; the same seed gives the same data.
    iid:
        Generate the IID variant instead.

    Returns
    -------
    list of (x, y)
        Per device, float32 features of shape (n_k, num_features) and int64 labels.

    Examples
    --------
    >>> devices = synthetic_fedprox(1.0, 1.0, num_devices=3, seed=0)
    >>> [x.shape[1] for x, _ in devices], all(len(y) >= 50 for _, y in devices)
    ([60, 60, 60], True)
    """
    alpha = _check_scale("alpha", alpha)
    beta = _check_scale("beta", beta)
    num_devices = _check_int("num_devices", num_devices, minimum=1)
    num_features = _check_int("num_features", num_features, minimum=1)
    num_classes = _check_int("num_classes", num_classes, minimum=2)
    seed = _check_int("seed", seed, minimum=0)
    if not isinstance(iid, bool):
        raise ConfigError(f"synthetic_fedprox: iid must be True or False, got {iid!r}")

    rng = np.random.default_rng(seed)
    # Draw order follows the reference generator.
    samples = rng.lognormal(_LOGNORMAL_MEAN, _LOGNORMAL_SIGMA, num_devices).astype(np.int64)
    samples += _MIN_SAMPLES
    model_means = rng.normal(0.0, alpha, num_devices)  # u_k, shared by W_k and b_k
    feature_shifts = rng.normal(0.0, beta, num_devices)  # B_k
    feature_std = np.arange(1, num_features + 1, dtype=np.float64) ** (_COV_EXPONENT / 2)
    if iid:
        feature_means = np.zeros((num_devices, num_features))
        shared_w = rng.normal(0.0, 1.0, (num_features, num_classes))
        shared_b = rng.normal(0.0, 1.0, num_classes)
    else:
        feature_means = rng.normal(feature_shifts[:, None], 1.0, (num_devices, num_features))

    devices: list[tuple[NDArray[np.float32], NDArray[np.int64]]] = []
    for k in range(num_devices):
        if iid:
            w, b = shared_w, shared_b
        else:
            w = rng.normal(model_means[k], 1.0, (num_features, num_classes))
            b = rng.normal(model_means[k], 1.0, num_classes)
        x = feature_means[k] + feature_std * rng.standard_normal((int(samples[k]), num_features))
        # softmax is monotone, so its argmax is the argmax of the logits.
        y = np.argmax(x @ w + b, axis=1)
        devices.append((x.astype(np.float32), y.astype(np.int64)))
    return devices


def split_devices(
    devices: Sequence[tuple[NDArray[np.float32], NDArray[np.int64]]],
    *,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> list[Partition]:
    """Split each device's ``(x, y)`` into local train and test parts (FedProx: 90/10).

    Each device is shuffled with its own seeded stream and its first
    ``int((1 - test_fraction) * n)`` samples become training data, as in the reference
    generator; the rest are the device's test data.

    Parameters
    ----------
    devices:
        Per-device ``(x, y)``, e.g. from :func:`synthetic_fedprox`.
    test_fraction:
        Fraction in [0, 1) of each device's samples kept for testing.
    seed:
        Seeds the shuffles; the same seed gives the same splits.

    Examples
    --------
    >>> devices = synthetic_fedprox(0.0, 0.0, num_devices=2, seed=0)
    >>> parts = split_devices(devices, seed=0)
    >>> [p.num_train + p.num_test for p in parts] == [len(y) for _, y in devices]
    True
    """
    if isinstance(test_fraction, bool) or not isinstance(
        test_fraction, (int, float, np.integer, np.floating)
    ):
        raise ConfigError(
            f"split_devices: test_fraction must be a number in [0, 1), got {test_fraction!r}"
        )
    if not (math.isfinite(float(test_fraction)) and 0.0 <= float(test_fraction) < 1.0):
        raise ConfigError(f"split_devices: test_fraction must be in [0, 1), got {test_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"split_devices: seed must be a non-negative integer, got {seed!r}")
    result = []
    for k, (x, y) in enumerate(devices):
        if len(x) != len(y):
            raise ConfigError(
                f"split_devices: device {k} has {len(x)} feature rows but {len(y)} labels"
            )
        order = np.random.default_rng([int(seed), k]).permutation(len(y))
        num_train = int((1.0 - float(test_fraction)) * len(y))
        train, test = order[:num_train], order[num_train:]
        result.append(
            Partition(
                x_train=np.asarray(x[train], dtype=np.float32),
                y_train=np.asarray(y[train], dtype=np.int64),
                x_test=np.asarray(x[test], dtype=np.float32),
                y_test=np.asarray(y[test], dtype=np.int64),
            )
        )
    return result
