"""Differential privacy: clipping, the Gaussian mechanism, accountants, and wrappers.

Design note. DP is split the way pfl-research splits it: *bound the sensitivity*
(:mod:`~pollinate.privacy.clipping`: clip each node's update ``local - global`` to an
L2 norm, fixed or adaptive) and *add noise* (:mod:`~pollinate.privacy.mechanisms`:
Gaussian noise calibrated to that bound, from an injected ``np.random.Generator``).
Accountants (:mod:`~pollinate.privacy.accounting`) are separate and only count: one
sampled Gaussian release per round, composed by Google's ``dp-accounting``.

Two places to privatize, both through public seams only (Strategy hooks, the
aggregator plug-in, mods), so simulation and deployment run the same code:

- central DP: :class:`CentralDP` wraps a FedAvg-family strategy on the server; it
  reports epsilon every round and can stop the run at ``max_epsilon``;
- local DP: :class:`LocalDP` is a node-side mod; :func:`clipping_mod` is the node half
  of ``CentralDP(clip_on="nodes")``.

Secure aggregation lives in :mod:`pollinate.privacy.secagg` and is not imported here.
Neither is ``dp-accounting``: it loads on first use, so importing this package is cheap.
"""

from pollinate.privacy.accounting import (
    Accountant,
    PldAccountant,
    PrivacyStep,
    RdpAccountant,
    Sampling,
)
from pollinate.privacy.central import DELTA_KEY, EPSILON_KEY, CentralDP, ClipOn
from pollinate.privacy.clipping import (
    CLIP_NORM_KEY,
    CLIPPED_KEY,
    AdaptiveClipping,
    ClippingPolicy,
    FixedClipping,
    apply_update,
    clip_by_l2_norm,
    clip_by_l2_norm_inplace,
    compute_update,
    l2_norm,
)
from pollinate.privacy.local import LocalDP, clipping_mod
from pollinate.privacy.mechanisms import (
    GaussianMechanism,
    Mechanism,
    add_gaussian_noise,
    add_gaussian_noise_inplace,
    gaussian_noise_std,
)

__all__ = [
    "CLIPPED_KEY",
    "CLIP_NORM_KEY",
    "DELTA_KEY",
    "EPSILON_KEY",
    "Accountant",
    "AdaptiveClipping",
    "CentralDP",
    "ClipOn",
    "ClippingPolicy",
    "FixedClipping",
    "GaussianMechanism",
    "LocalDP",
    "Mechanism",
    "PldAccountant",
    "PrivacyStep",
    "RdpAccountant",
    "Sampling",
    "add_gaussian_noise",
    "add_gaussian_noise_inplace",
    "apply_update",
    "clip_by_l2_norm",
    "clip_by_l2_norm_inplace",
    "clipping_mod",
    "compute_update",
    "gaussian_noise_std",
    "l2_norm",
]
