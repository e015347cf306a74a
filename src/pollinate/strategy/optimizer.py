"""The ServerOptimizer plug-in: what the server does with the aggregated model.

Reddi et al. ("Adaptive Federated Optimization", ICLR 2021) treat ``current -
aggregate`` as a pseudo-gradient and hand it to a server-side optimizer; plain FedAvg
is that optimizer with a step size of 1 and no state. Optimizers keep their state in
attributes a wrapper can read (no hidden state).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pollinate.records import ArrayRecord

__all__ = ["ServerOptimizer"]


@runtime_checkable
class ServerOptimizer(Protocol):
    """Turns the current global model and this round's aggregate into the next model."""

    def step(self, current: ArrayRecord, aggregate: ArrayRecord) -> ArrayRecord:
        """The next global model; must not modify ``current`` or ``aggregate``."""
        ...
