"""Secure aggregation: SecAgg+ (Bell et al., CCS 2020), the server learns only the sum.

Design note. The protocol is written once, as two sans-I/O state machines
(:mod:`.protocol`: :class:`ServerProtocol` and :class:`NodeProtocol`) that take parsed
stage messages (:mod:`.messages`) and return the messages to send; they never touch a
Grid, a thread or a clock. Two thin drivers carry those messages: on the server,
:func:`run_secagg` over any Grid (one ``send_and_receive`` per stage, each with its
deadline); on a node, :data:`secaggplus_mod`, a ClientApp mod that keeps the node's
state machine in ``Context.state``. So the inline and process simulations and the gRPC
deployment run the same protocol code, and the tests drive it in memory
(:func:`~.inmemory.run_locally`).

Underneath: :mod:`.crypto` (X25519, HKDF-SHA256, AES-GCM, an AES-CTR PRG, all from
``cryptography``), :mod:`.shamir` (t-of-n sharing over GF(2**521 - 1)),
:mod:`.quantize` (fixed point into ``2**bits``), :mod:`.graph` (the random Harary
graph of neighbours) and :mod:`.encoding` (arrays and weights <-> one integer vector).

On top: :class:`SecAggPlus` wraps a FedAvg-family strategy so its train rounds are
secure (optionally with distributed DP noise), and :func:`secure_sum` sums the nodes'
answers to an analytics query.
"""

from pollinate.privacy.secagg.config import SecAggConfig
from pollinate.privacy.secagg.mod import STATE_KEY, make_secaggplus_mod, secaggplus_mod
from pollinate.privacy.secagg.protocol import (
    NodeProtocol,
    SecAggAbortedError,
    ServerProtocol,
)
from pollinate.privacy.secagg.server import (
    SecAggOutcome,
    SecureSumResult,
    run_secagg,
    secure_sum,
)
from pollinate.privacy.secagg.strategy import SecAggPlus

__all__ = [
    "STATE_KEY",
    "NodeProtocol",
    "SecAggAbortedError",
    "SecAggConfig",
    "SecAggOutcome",
    "SecAggPlus",
    "SecureSumResult",
    "ServerProtocol",
    "make_secaggplus_mod",
    "run_secagg",
    "secaggplus_mod",
    "secure_sum",
]
