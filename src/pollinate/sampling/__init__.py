"""Node selection: the Sampler plug-in and its built-in implementations.

A sampler sees what the server knows about each node (:class:`NodeInfo`) and picks
the nodes of a round using only the random generator it is given, so a seeded run
picks the same nodes on every runtime. Filtering samplers (availability, attributes,
explicit lists) wrap another sampler; learning samplers (Oort-style utility) are told
how each node did.
"""

from pollinate.sampling.availability import AvailabilitySampler
from pollinate.sampling.base import (
    FilteringSampler,
    LearningSampler,
    NodeInfo,
    NodeOutcome,
    Sampler,
    eligible,
    qualifies,
)
from pollinate.sampling.select import AttributeSampler, ExplicitSampler, NodePredicate
from pollinate.sampling.uniform import UniformSampler
from pollinate.sampling.utility import UtilitySampler
from pollinate.sampling.weighted import WeightedSampler

__all__ = [
    "AttributeSampler",
    "AvailabilitySampler",
    "ExplicitSampler",
    "FilteringSampler",
    "LearningSampler",
    "NodeInfo",
    "NodeOutcome",
    "NodePredicate",
    "Sampler",
    "UniformSampler",
    "UtilitySampler",
    "WeightedSampler",
    "eligible",
    "qualifies",
]
