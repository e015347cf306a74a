"""Node selection: the Sampler plug-in and its built-in implementations."""

from pollinate.sampling.base import Sampler
from pollinate.sampling.uniform import UniformSampler

__all__ = ["Sampler", "UniformSampler"]
