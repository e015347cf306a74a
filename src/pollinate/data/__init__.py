"""Federated data for simulation: partitioners, bundled data sets, synthetic federations.

Design note. Real federations are heterogeneous in *which labels* a node has, *how
many* samples it has and *how its features look*; a simulation is only as useful as
its model of that heterogeneity. This package keeps the three concerns apart:

- a :class:`Partitioner` decides, from the labels alone, which samples each node
  gets. It is a pure function of ``(labels, num_partitions, rng)``, so every virtual
  node can rebuild the same split independently, with nothing shared between
  processes but a seed;
- a :class:`FederatedDataset` holds the samples once, the partitions as index
  arrays, and a centralized test split no node owns; ``partition(i)`` is all a node
  needs to call;
- generators such as :func:`synthetic_fedprox` build federations whose heterogeneity
  is set directly by parameters, as in the papers that introduced them.

Nothing here imports scikit-learn until a loader runs, so ``import pollinate.data`` is
cheap in every worker process.
"""

from __future__ import annotations

from pollinate.data.federated_dataset import (
    SKLEARN_DATASETS,
    FederatedDataset,
    Partition,
    load_sklearn,
)
from pollinate.data.partitioners import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    PowerLawPartitioner,
    ShardPartitioner,
)
from pollinate.data.synthetic import split_devices, synthetic_fedprox

__all__ = [
    "SKLEARN_DATASETS",
    "DirichletPartitioner",
    "FederatedDataset",
    "IidPartitioner",
    "Partition",
    "Partitioner",
    "PowerLawPartitioner",
    "ShardPartitioner",
    "load_sklearn",
    "split_devices",
    "synthetic_fedprox",
]
