"""Context: what a handler knows about where it runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pollinate.records.recorddict import RecordDict
from pollinate.records.scalars import ConfigValue

__all__ = ["Context", "UserConfig"]

UserConfig = Mapping[str, ConfigValue]


@dataclass
class Context:
    """The run and node a handler runs for, and state that outlives one call.

    Attributes
    ----------
    run_id:
        The run this call belongs to.
    node_id:
        This node's id (``0`` on the server).
    node_config:
        Settings of this node, fixed by whoever runs it (in simulation: ``partition-id``
        and ``num-partitions``; in deployment: ``--node-config``).
    run_config:
        Settings of this run: the app's defaults overridden by ``--config``.
    state:
        A RecordDict kept per node across rounds (also between the processes of a
        simulation), for things like control variates or a local optimizer's state.
    """

    run_id: int
    node_id: int
    node_config: dict[str, ConfigValue] = field(default_factory=dict)
    run_config: dict[str, ConfigValue] = field(default_factory=dict)
    state: RecordDict = field(default_factory=RecordDict)
