"""Bounding each node's contribution: L2 clipping of updates, and the clip-norm policies.

An *update* is the change a node made to the model in a round, ``local - global``;
clipping scales it down to L2 norm at most ``C`` (over all arrays together), which
bounds what one node can change in a sum of updates. The clip norm ``C`` is either
fixed or adapted every round toward a quantile of the updates' norms:

- :class:`FixedClipping`: ``C`` never changes (DP-FedAvg, McMahan et al., ICLR 2018).
- :class:`AdaptiveClipping`: Andrew, Thakkar, McMahan, Ramaswamy, "Differentially
  Private Learning with Adaptive Clipping", NeurIPS 2021,
  https://arxiv.org/abs/1905.03871. Each round, ``C <- C * exp(-lr * (b - q))``
  where ``b`` is the (noised) fraction of updates that were *not* clipped and ``q``
  the target quantile: a geometric step that grows ``C`` when too many updates are
  clipped and shrinks it when too few are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, final

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord

__all__ = [
    "CLIPPED_KEY",
    "CLIP_NORM_KEY",
    "AdaptiveClipping",
    "ClippingPolicy",
    "FixedClipping",
    "apply_update",
    "clip_by_l2_norm",
    "clip_by_l2_norm_inplace",
    "compute_update",
    "l2_norm",
]

#: Config key of a train instruction: the clip norm nodes clip their update to
#: (``clip_on="nodes"``). Belongs in :mod:`pollinate.records.keys` once that is shared.
CLIP_NORM_KEY: Final = "dp-clip-norm"
#: Metric key of a train reply: 1 if the node's update was clipped this round, else 0.
CLIPPED_KEY: Final = "dp-clipped"


def l2_norm(arrays: Mapping[str, NDArray[Any]]) -> float:
    """The L2 norm of all entries of all arrays together, computed in float64.

    Examples
    --------
    >>> l2_norm({"a": np.array([3.0]), "b": np.array([[4.0]])})
    5.0
    """
    total = 0.0
    for array in arrays.values():
        flat = np.asarray(array, np.float64).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_by_l2_norm_inplace(arrays: MutableMapping[str, NDArray[Any]], max_norm: float) -> float:
    """Scale float ``arrays`` in place so their joint L2 norm is at most ``max_norm``.

    Returns the norm *before* clipping (so ``norm > max_norm`` says it was clipped).
    Arrays must be writable floats: a received record is read-only, use
    :func:`clip_by_l2_norm` for it.
    """
    _check_norm("max_norm", max_norm)
    for name, array in arrays.items():
        _check_float(name, array)
        if not array.flags.writeable:
            raise ConfigError(
                f"array {name!r} is read-only (e.g. received off the wire); use "
                "clip_by_l2_norm, which returns new arrays"
            )
    norm = l2_norm(arrays)
    if norm > max_norm:
        scale = max_norm / norm
        for array in arrays.values():
            np.multiply(array, scale, out=array, casting="unsafe")
    return norm


def clip_by_l2_norm(
    arrays: Mapping[str, NDArray[Any]], max_norm: float
) -> tuple[ArrayRecord, float]:
    """New float arrays scaled to joint L2 norm at most ``max_norm``, and the norm before.

    Examples
    --------
    >>> clipped, norm = clip_by_l2_norm({"w": np.array([3.0, 4.0])}, max_norm=1.0)
    >>> clipped["w"], norm
    (array([0.6, 0.8]), 5.0)
    """
    out = ArrayRecord()
    for name, array in arrays.items():
        _check_float(name, array)
        out[name] = np.array(array, copy=True)
    return out, clip_by_l2_norm_inplace(out, max_norm)


def compute_update(local: Mapping[str, NDArray[Any]], reference: ArrayRecord) -> ArrayRecord:
    """The update ``local - reference`` in float64, checked to have the same structure."""
    _check_same_names(local, reference)
    return ArrayRecord(
        {name: np.subtract(local[name], reference[name], dtype=np.float64) for name in reference}
    )


def apply_update(reference: ArrayRecord, update: Mapping[str, NDArray[Any]]) -> ArrayRecord:
    """``reference + update``, in each array of ``reference``'s own dtype."""
    _check_same_names(update, reference)
    return ArrayRecord(
        {
            name: np.add(array, update[name], dtype=np.float64).astype(array.dtype, copy=False)
            for name, array in reference.items()
        }
    )


class ClippingPolicy(Protocol):
    """Chooses the clip norm of each round from the last one and how many were clipped."""

    @property
    def initial_norm(self) -> float:
        """The clip norm of the first round."""
        ...

    @property
    def clipped_count_stddev(self) -> float:
        """Std of the noise on the count of unclipped updates (0: the count is not used)."""
        ...

    def next_norm(
        self, norm: float, *, num_unclipped: int, num_updates: int, rng: np.random.Generator
    ) -> float:
        """The clip norm of the next round."""
        ...

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        """The noise multiplier left for the updates when the run's budget is
        ``noise_multiplier`` (the clipped count spends a share of it)."""
        ...


@final
@dataclass(frozen=True)
class FixedClipping:
    """Clip every update to the same L2 norm, every round.

    Examples
    --------
    >>> FixedClipping(1.0).next_norm(1.0, num_unclipped=3, num_updates=10,
    ...                              rng=np.random.default_rng(0))
    1.0
    """

    norm: float

    def __post_init__(self) -> None:
        _check_norm("the clip norm", self.norm)

    @property
    def initial_norm(self) -> float:
        """The fixed clip norm."""
        return float(self.norm)

    @property
    def clipped_count_stddev(self) -> float:
        """0: the count of clipped updates is not used."""
        return 0.0

    def next_norm(
        self, norm: float, *, num_unclipped: int, num_updates: int, rng: np.random.Generator
    ) -> float:
        """``norm``, unchanged."""
        return norm

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        """All of it: nothing else is released."""
        return noise_multiplier


@final
@dataclass(frozen=True)
class AdaptiveClipping:
    """Adapt the clip norm geometrically toward a quantile of the update norms.

    Andrew et al., NeurIPS 2021 (see the module docstring), Algorithm 1.

    Parameters
    ----------
    initial_norm:
        The clip norm of the first round.
    target_quantile:
        The share of updates that should *not* be clipped (the paper's ``gamma``;
        0.5 tracks the median norm).
    learning_rate:
        The step ``eta_C`` of the geometric update; the paper uses 0.2.
    clipped_count_stddev:
        Std ``sigma_b`` of the Gaussian noise on the count of unclipped updates; the
        paper suggests the expected number of nodes per round / 20. It costs privacy:
        with a run-wide ``noise_multiplier`` ``z``, the updates get
        ``z_delta = (z**-2 - (2 * sigma_b)**-2) ** -0.5`` so the two releases together
        spend what one release with ``z`` does (the paper's Theorem 1).

    Examples
    --------
    >>> policy = AdaptiveClipping(1.0, target_quantile=0.5, learning_rate=0.2,
    ...                           clipped_count_stddev=0.0001)
    >>> round(policy.next_norm(1.0, num_unclipped=10, num_updates=10,
    ...                        rng=np.random.default_rng(0)), 4)  # all unclipped: shrink
    0.9048
    """

    initial_norm: float
    target_quantile: float = 0.5
    learning_rate: float = 0.2
    clipped_count_stddev: float = 1.0

    def __post_init__(self) -> None:
        _check_norm("initial_norm", self.initial_norm)
        if not _is_number(self.target_quantile) or not 0 <= self.target_quantile <= 1:
            raise ConfigError(
                f"target_quantile must be within [0, 1], got {self.target_quantile!r}"
            )
        if not _is_number(self.learning_rate) or self.learning_rate <= 0:
            raise ConfigError(
                f"learning_rate must be a positive number, got {self.learning_rate!r} "
                "(the paper uses 0.2)"
            )
        if not _is_number(self.clipped_count_stddev) or self.clipped_count_stddev <= 0:
            raise ConfigError(
                "clipped_count_stddev must be a positive number (an un-noised count would "
                f"leak), got {self.clipped_count_stddev!r}; the paper suggests "
                "nodes per round / 20"
            )

    def next_norm(
        self, norm: float, *, num_unclipped: int, num_updates: int, rng: np.random.Generator
    ) -> float:
        """``norm * exp(-learning_rate * (noised unclipped fraction - target_quantile))``."""
        if num_updates <= 0:
            return norm
        noised = num_unclipped + rng.normal(0.0, self.clipped_count_stddev)
        fraction = noised / num_updates
        return float(norm * math.exp(-self.learning_rate * (fraction - self.target_quantile)))

    def update_noise_multiplier(self, noise_multiplier: float) -> float:
        """``(z**-2 - (2 * sigma_b)**-2) ** -0.5``; ConfigError if the count needs it all."""
        share = (2.0 * self.clipped_count_stddev) ** -2
        left = noise_multiplier**-2 - share
        if left <= 0:
            raise ConfigError(
                f"noise_multiplier {noise_multiplier:g} leaves nothing for the updates once "
                f"the clipped count (clipped_count_stddev={self.clipped_count_stddev:g}) "
                f"takes its share; use clipped_count_stddev > {noise_multiplier / 2:g}"
            )
        return float(left**-0.5)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_norm(name: str, value: float) -> None:
    if not _is_number(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive, finite number, got {value!r}")


def _check_float(name: str, array: NDArray[Any]) -> None:
    if array.dtype.kind != "f":
        raise ConfigError(
            f"array {name!r} has dtype {array.dtype}; only float arrays can be clipped "
            "(keep integer and bool state out of the privatized update)"
        )


def _check_same_names(arrays: Mapping[str, NDArray[Any]], reference: ArrayRecord) -> None:
    got = [(name, np.shape(array)) for name, array in arrays.items()]
    want = [(name, array.shape) for name, array in reference.items()]
    if got != want:
        shown = ", ".join(f"{n}{list(s)}" for n, s in got[:4])
        expected = ", ".join(f"{n}{list(s)}" for n, s in want[:4])
        raise ConfigError(
            f"the update has arrays [{shown}] but the model has [{expected}]; a node must "
            "return arrays with the model's names and shapes"
        )
