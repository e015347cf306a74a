"""The virtual nodes of a simulation: ids, per-node config and persistent state."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from pollinate.client import ClientApp
from pollinate.errors import ConfigError, NodeUnavailableError
from pollinate.records import ConfigValue, Context, Message, RecordDict, keys
from pollinate.runtime.profiles import NodeProfile
from pollinate.sampling import NodeInfo
from pollinate.server.grid import Grid
from pollinate.strategy.history import RunObserver
from pollinate.testing.clock import Clock

__all__ = ["NodeConfigFn", "VirtualGrid", "VirtualNodes", "dated_as_if_alone"]

#: Extra node_config for the virtual node with a given partition id.
NodeConfigFn = Callable[[int], Mapping[str, ConfigValue]]


@dataclass
class VirtualNodes:
    """The federation of a simulation: node ``i + 1`` holds partition ``i``.

    Only an id, a small config and the node's ``Context.state`` are kept per node;
    nothing else exists while a node is idle.
    """

    num_nodes: int
    run_id: int = 0
    run_config: dict[str, ConfigValue] = field(default_factory=dict)
    node_config_fn: NodeConfigFn | None = None
    #: Seeds the simulated behaviour of node profiles (see pollinate.runtime.profiles).
    seed: int = 0
    #: The round the server is in (set by the grid's begin_round).
    current_round: int = 0
    _states: dict[int, RecordDict] = field(default_factory=dict, init=False, repr=False)
    _profiles: dict[int, NodeProfile] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.num_nodes, int) or self.num_nodes < 1:
            raise ConfigError(f"a simulation needs at least 1 node, got {self.num_nodes!r}")

    @property
    def node_ids(self) -> list[int]:
        """All node ids, ascending."""
        return list(range(1, self.num_nodes + 1))

    def check(self, node_id: int) -> None:
        """Raise NodeUnavailableError for an id that is not in this federation."""
        if not 1 <= node_id <= self.num_nodes:
            raise NodeUnavailableError(
                f"no node {node_id} in this simulation (node ids are 1..{self.num_nodes})"
            )

    def node_config(self, node_id: int) -> dict[str, ConfigValue]:
        """``partition-id``, ``num-partitions`` and whatever ``node_config_fn`` adds."""
        partition_id = node_id - 1
        config: dict[str, ConfigValue] = {
            keys.PARTITION_ID: partition_id,
            keys.NUM_PARTITIONS: self.num_nodes,
        }
        if self.node_config_fn is not None:
            config.update(self.node_config_fn(partition_id))
        return config

    def profile(self, node_id: int) -> NodeProfile:
        """The node's simulated behaviour, read once from its node_config."""
        profile = self._profiles.get(node_id)
        if profile is None:
            profile = self._profiles[node_id] = NodeProfile.from_config(self.node_config(node_id))
        return profile

    def node_info(self) -> list[NodeInfo]:
        """Every node with its node_config as attributes and its simulated availability."""
        return [
            NodeInfo(
                node_id,
                attributes=self.node_config(node_id),
                online=self.profile(node_id).online(self.seed, node_id, self.current_round),
            )
            for node_id in self.node_ids
        ]

    def call(
        self,
        app: ClientApp,
        message: Message,
        context: Context,
        *,
        crash: Callable[[], None] | None = None,
    ) -> Message:
        """Run ``app`` on ``message`` as this virtual node, with its profile applied."""
        profile = self.profile(message.metadata.dst_node_id)
        if not profile.active:
            return app(message, context)
        group = message.metadata.group_id
        server_round = int(group) if group.isdigit() else self.current_round
        return profile.call(
            lambda: app(message, context),
            message,
            seed=self.seed,
            server_round=server_round,
            crash=crash,
        )

    def context(self, node_id: int, state: RecordDict | None = None) -> Context:
        """A fresh Context for one call on ``node_id`` carrying its persisted state."""
        return Context(
            run_id=self.run_id,
            node_id=node_id,
            node_config=self.node_config(node_id),
            run_config=dict(self.run_config),
            state=state if state is not None else self._states.get(node_id, RecordDict()),
        )

    def keep_state(self, node_id: int, state: RecordDict) -> None:
        """Persist a node's state after a call (empty states cost nothing)."""
        if len(state):
            self._states[node_id] = state
        else:
            self._states.pop(node_id, None)


_C = TypeVar("_C")


class VirtualGrid(Grid):
    """What the simulation runtimes share: the virtual federation and its bookkeeping."""

    def __init__(
        self,
        nodes: VirtualNodes,
        *,
        observer: RunObserver | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(run_id=nodes.run_id, observer=observer, clock=clock)
        self._nodes = nodes

    def nodes(self) -> list[int]:
        return self._nodes.node_ids

    def node_info(self) -> list[NodeInfo]:
        return self._nodes.node_info()

    def begin_round(self, server_round: int) -> None:
        self._nodes.current_round = server_round

    def _prepare(
        self, messages: Iterable[Message], convert: Callable[[RecordDict], _C]
    ) -> list[tuple[Message, _C]]:
        """Check every destination first, then convert each distinct content once.

        Strategies send one content object to all nodes of a round; converting it once
        (a read-only view, a shared-memory frame) keeps a broadcast O(model).
        """
        batch = list(messages)
        for message in batch:
            self._nodes.check(message.metadata.dst_node_id)
        converted: dict[int, _C] = {}
        prepared = []
        for message in batch:
            content = message.content
            key = id(content)
            if key not in converted:
                converted[key] = convert(content)
            prepared.append((message, converted[key]))
        return prepared


def dated_as_if_alone(reply: Message, instruction_created_at: float, seconds: float) -> Message:
    """``reply``, dated as if its node had started work when the instruction was made.

    Simulated nodes take turns (inline) or wait for a free worker (process); in a
    federation they work side by side. Dated this way, the time from sending to the
    reply, a sampler's speed signal, is the node's own and not the queue's.
    """
    return reply.with_metadata(created_at=instruction_created_at + seconds)
