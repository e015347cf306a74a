"""Simulated node behaviour: slow, sometimes unreachable, or crashing nodes.

A virtual node's ``node_config`` may carry a profile, so that straggler and failure
handling is exercised in simulation rather than assumed:

``sim-delay``
    Seconds the node takes on top of its real work (a slow device).
``sim-unavailable-p``
    Probability that the node is offline in a given round. The grid reports it as
    offline (availability-aware samplers skip it); if contacted anyway, the reply is
    a ``NODE_UNAVAILABLE`` error, as a refused connection would be.
``sim-crash-p``
    Probability that a call crashes the node: its worker process dies under the
    process runtime; under the inline runtime the call fails with an error reply.

Every draw comes from a generator seeded by (seed, node, round), so a profile
behaves identically on every runtime and in every repetition of a seeded run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from pollinate.errors import ConfigError
from pollinate.records import ConfigValue, Error, ErrorCode, Message

__all__ = ["CRASH_P", "DELAY", "UNAVAILABLE_P", "NodeProfile"]

DELAY = "sim-delay"
UNAVAILABLE_P = "sim-unavailable-p"
CRASH_P = "sim-crash-p"


def _number(config: Mapping[str, ConfigValue], key: str, low: float, high: float) -> float:
    value = config.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ConfigError(f"node_config {key}={value!r} must be a number within [{low}, {high}]")
    return float(value)


@dataclass(frozen=True)
class NodeProfile:
    """How a simulated node misbehaves; all zero means it behaves."""

    delay: float = 0.0
    unavailable_p: float = 0.0
    crash_p: float = 0.0

    @classmethod
    def from_config(cls, config: Mapping[str, ConfigValue]) -> NodeProfile:
        """Read the ``sim-*`` keys of a node_config (absent keys mean 0)."""
        return cls(
            delay=_number(config, DELAY, 0.0, 86_400.0),
            unavailable_p=_number(config, UNAVAILABLE_P, 0.0, 1.0),
            crash_p=_number(config, CRASH_P, 0.0, 1.0),
        )

    @property
    def active(self) -> bool:
        return bool(self.delay or self.unavailable_p or self.crash_p)

    def _draws(self, seed: int, node_id: int, server_round: int) -> tuple[float, float]:
        rng = np.random.default_rng([seed, node_id, max(server_round, 0)])
        return float(rng.random()), float(rng.random())

    def online(self, seed: int, node_id: int, server_round: int) -> bool:
        """Whether the node is reachable in ``server_round``."""
        if not self.unavailable_p:
            return True
        return self._draws(seed, node_id, server_round)[0] >= self.unavailable_p

    def call(
        self,
        handler: Callable[[], Message],
        message: Message,
        *,
        seed: int,
        server_round: int,
        crash: Callable[[], None] | None,
    ) -> Message:
        """Run ``handler`` as this node would."""
        node_id = message.metadata.dst_node_id
        unavailable_draw, crash_draw = self._draws(seed, node_id, server_round)
        if self.unavailable_p and unavailable_draw < self.unavailable_p:
            return message.reply(
                error=Error(ErrorCode.NODE_UNAVAILABLE, f"node {node_id} is offline (simulated)")
            )
        if self.delay:
            time.sleep(self.delay)
        if self.crash_p and crash_draw < self.crash_p:
            if crash is not None:
                crash()
            return message.reply(error=Error(ErrorCode.CLIENT_APP_RAISED, "simulated crash"))
        return handler()
