"""Privacy accountants: how much (epsilon, delta) a run has spent.

A round of central DP is one release of a *sampled Gaussian mechanism*: each sampled
node's contribution is bounded by the clip norm ``C``, and Gaussian noise of standard
deviation ``noise_multiplier * C`` is added to their sum. An :class:`Accountant`
records one :class:`PrivacyStep` per round (``step(noise_multiplier=,
sample_rate=)``) and converts the composition into epsilon at a given delta.

Both accountants delegate the mathematics to Google's ``dp-accounting`` library,
imported on first use (it takes seconds to import):

- :class:`RdpAccountant`: Rényi DP, Poisson or fixed-size sampling, cheap per round;
- :class:`PldAccountant`: privacy loss distributions, tighter, Poisson sampling only.

The sampling decides the neighbouring relation: Poisson sampling protects the
presence of a node (add or remove one), fixed-size sampling (what FedAvg's samplers
do) protects the data of a node (replace one), whose sensitivity is twice as large.
"""

from pollinate.privacy.accounting._base import SAMPLINGS, Accountant, PrivacyStep, Sampling
from pollinate.privacy.accounting.pld import PldAccountant
from pollinate.privacy.accounting.rdp import RdpAccountant

__all__ = ["SAMPLINGS", "Accountant", "PldAccountant", "PrivacyStep", "RdpAccountant", "Sampling"]
