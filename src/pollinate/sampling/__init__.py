"""Node selection: the Sampler plug-in and its built-in implementations."""

from pollinate.sampling.base import LearningSampler, NodeInfo, NodeOutcome, Sampler
from pollinate.sampling.uniform import UniformSampler

__all__ = ["LearningSampler", "NodeInfo", "NodeOutcome", "Sampler", "UniformSampler"]
