"""The errors Pollinate raises, as one tree.

Every error Pollinate raises on purpose derives from :class:`PollinateError`, so a
caller can catch the whole family at once (the CLI does, once, and exits non-zero)::

    PollinateError
    ├── ConfigError (ValueError)        a user-supplied setting or argument is wrong
    ├── SerializationError (ValueError) bytes that are not a valid Pollinate payload
    ├── AggregationError                replies that cannot be combined (too few, mismatched)
    ├── ProtocolError                   a peer broke the message protocol
    ├── TransportError                  moving messages failed
    │   ├── NodeUnavailableError        a node is gone or never came
    │   └── TimeoutError (TimeoutError) a wait ran out of time
    ├── ClientAppError                  a ClientApp handler is missing or misbehaved
    └── PrivacyBudgetExceededError      the next step would overspend the privacy budget

Failures of a node's own code are *data*, not exceptions: they travel back as a
``Message`` whose ``error`` is set, so one failing node never stops a round.
"""

from __future__ import annotations

import builtins

__all__ = [
    "AggregationError",
    "ClientAppError",
    "ConfigError",
    "NodeUnavailableError",
    "PollinateError",
    "PrivacyBudgetExceededError",
    "ProtocolError",
    "SerializationError",
    "TimeoutError",
    "TransportError",
]


class PollinateError(Exception):
    """Base of every error Pollinate raises on purpose."""


class ConfigError(PollinateError, ValueError):
    """A setting, argument or config value is wrong; the message says which and how to fix it."""


class SerializationError(PollinateError, ValueError):
    """Bytes could not be read as a Pollinate payload (truncated, corrupted or wrong type)."""


class AggregationError(PollinateError):
    """Replies could not be aggregated: too few of them, or arrays that do not match."""


class ProtocolError(PollinateError):
    """A peer sent something the protocol does not allow at this point."""


class TransportError(PollinateError):
    """Moving messages between the server and nodes failed."""


class NodeUnavailableError(TransportError):
    """A node is not connected, died, or never became available."""


class TimeoutError(TransportError, builtins.TimeoutError):
    """A bounded wait ran out of time."""


class ClientAppError(PollinateError):
    """A ClientApp has no handler for a message, or a handler returned the wrong type."""


class PrivacyBudgetExceededError(PollinateError):
    """Continuing would spend more privacy budget than configured."""
