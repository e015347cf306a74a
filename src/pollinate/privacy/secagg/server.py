"""The server's I/O driver: runs a :class:`ServerProtocol` over a Grid, and secure_sum.

Each stage is one ``grid.send_and_receive`` with its own deadline; a node whose reply
is an error (it failed, timed out, or is not running the SecAgg+ mod) or cannot be
parsed is dropped at that stage, with the reason kept. Masked inputs are folded into
the running sum as they arrive, so the server holds one model's worth of integers
whatever the number of nodes. The same stage requests and replies travel in the
inline and process simulations and over gRPC: only the Grid differs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from pollinate.errors import ConfigError, ProtocolError
from pollinate.privacy.secagg.config import SecAggConfig
from pollinate.privacy.secagg.encoding import DecodedSum, decode_sum
from pollinate.privacy.secagg.messages import (
    MaskedInputReply,
    SecAggParams,
    SetupReply,
    ShareKeysReply,
    Stage,
    StageMessage,
    UnmaskReply,
    from_content,
    to_content,
)
from pollinate.privacy.secagg.protocol import ServerProtocol
from pollinate.records import ArrayRecord, Error, ErrorCode, Message, RecordDict, keys

if TYPE_CHECKING:
    from pollinate.server.grid import Grid

__all__ = ["SecAggOutcome", "SecureSumResult", "run_secagg", "secure_sum"]

log = logging.getLogger("pollinate")

_R = TypeVar("_R", SetupReply, ShareKeysReply, MaskedInputReply, UnmaskReply)


@dataclass
class SecAggOutcome:
    """One SecAgg+ session's result, as the server sees it.

    Attributes
    ----------
    sum:
        The decoded (weighted) sum of the survivors' updates.
    survivors:
        The nodes whose inputs are in the sum.
    dropped:
        The other sampled nodes, each with the error that dropped it.
    seconds:
        Wall time of each stage (including the nodes' work and the transport).
    """

    sum: DecodedSum
    survivors: list[int]
    dropped: dict[int, Error] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def run_secagg(
    grid: Grid,
    instructions: Sequence[Message],
    params: SecAggParams,
    *,
    num_shares: int,
    timeout: float,
    rng: np.random.Generator | None = None,
) -> SecAggOutcome:
    """Carry out ``instructions`` (one per node) under SecAgg+ and return the sum.

    The instructions' content (model, config) travels with the masked-input stage,
    where each node's mod runs its handler for the instruction's message type and
    masks the result. Raises :class:`~.protocol.SecAggAbortedError` when too many
    nodes drop for the sum to be unmasked.
    """
    if timeout <= 0:
        raise ConfigError(f"timeout must be positive seconds, got {timeout}")
    by_node = {m.metadata.dst_node_id: m for m in instructions}
    if len(by_node) != len(instructions):
        raise ConfigError("SecAgg+ instructions must go to distinct nodes")
    server = ServerProtocol(
        params,
        list(by_node),
        num_shares=num_shares,
        rng=rng if rng is not None else np.random.default_rng(),
    )
    errors: dict[int, Error] = {}
    seconds: dict[str, float] = {}

    def exchange(
        stage: str,
        requests: Mapping[int, StageMessage],
        kind: type[_R],
        with_instruction: bool = False,
    ) -> dict[int, _R]:
        started = time.perf_counter()
        shared: dict[int, RecordDict] = {}  # one content per distinct request object
        messages = []
        for node, request in requests.items():
            instruction = by_node[node]
            if with_instruction:
                content = RecordDict(instruction.content)
                content.update(to_content(request))
            else:
                key = id(request)
                if key not in shared:
                    shared[key] = to_content(request)
                content = shared[key]
            messages.append(
                Message(
                    content,
                    dst_node_id=node,
                    message_type=instruction.metadata.message_type,
                    group_id=instruction.metadata.group_id,
                    ttl=instruction.metadata.ttl,
                    run_id=grid.run_id,
                )
            )
        replies: dict[int, _R] = {}
        for reply in grid.send_and_receive(messages, timeout=timeout):
            node = reply.metadata.src_node_id
            if reply.error is not None:
                errors.setdefault(node, reply.error)
                server.drop(node, reply.error.reason)
                continue
            try:
                parsed = from_content(reply.content, kind)
            except ProtocolError as exc:
                errors.setdefault(node, Error(ErrorCode.BAD_REPLY, str(exc)))
                server.drop(node, str(exc))
                continue
            if kind is MaskedInputReply:
                server.add_masked_input(node, parsed)  # type: ignore[arg-type]
            else:
                replies[node] = parsed
        seconds[stage] = time.perf_counter() - started
        return replies

    share_requests = server.receive_setup(exchange(Stage.SETUP, server.setup(), SetupReply))
    masked_requests = server.receive_shares(
        exchange(Stage.SHARE_KEYS, share_requests, ShareKeysReply)
    )
    exchange(Stage.MASKED_INPUT, masked_requests, MaskedInputReply, with_instruction=True)
    unmask_requests = server.receive_masked_inputs()
    total = server.receive_unmask(exchange(Stage.UNMASK, unmask_requests, UnmaskReply))
    decoded = decode_sum(total.total, total.structure, len(total.survivors), params)
    for node, reason in server.dropped.items():
        errors.setdefault(node, Error(ErrorCode.UNKNOWN, f"SecAgg+ {reason}"))
    # A survivor that missed only the unmask stage is in the sum all the same.
    errors = {node: error for node, error in errors.items() if node not in total.survivors}
    if errors:
        log.info(
            "SecAgg+: %d of %d nodes in the sum; %d dropped",
            len(total.survivors),
            len(by_node),
            len(errors),
        )
    return SecAggOutcome(decoded, total.survivors, errors, seconds)


@dataclass
class SecureSumResult:
    """The secure sum of the nodes' answers.

    Attributes
    ----------
    arrays:
        The element-wise sum over the survivors, in each array's own dtype
        (integers rounded: exact when ``survivors * quantization step < 0.5``).
    survivors:
        The nodes whose answers are in the sum.
    dropped:
        The other nodes, with the error that dropped each.
    """

    arrays: ArrayRecord
    survivors: list[int]
    dropped: dict[int, Error] = field(default_factory=dict)


def secure_sum(
    grid: Grid,
    node_ids: Sequence[int],
    content: RecordDict,
    *,
    message_type: str = keys.QUERY,
    config: SecAggConfig | None = None,
    timeout: float = 600.0,
    arrays_key: str = keys.ARRAYS,
    group_id: str = "",
    rng: np.random.Generator | None = None,
) -> SecureSumResult:
    """Ask ``node_ids`` the instruction ``content`` and learn only the sum of the answers.

    For federated analytics: each node's handler for ``message_type`` (e.g.
    ``"query.histogram"``) returns an ArrayRecord under ``arrays_key``; the server
    learns the element-wise sum over the nodes that stayed, nothing per node. Values
    are clipped to ``config.clipping_range``. Nodes need ``secaggplus_mod`` among
    their ClientApp's mods.

    Examples
    --------
    >>> from pollinate.privacy.secagg import SecAggConfig
    >>> config = SecAggConfig(num_shares=4, reconstruction_threshold=3,
    ...                       clipping_range=1000.0, quantization_range=2**24)
    >>> # result = secure_sum(grid, grid.nodes(), RecordDict(), message_type="query.histogram",
    >>> #                     config=config, timeout=30.0)
    """
    config = config if config is not None else SecAggConfig()
    instructions = [
        Message(
            content,
            dst_node_id=node,
            message_type=message_type,
            group_id=group_id,
            run_id=grid.run_id,
        )
        for node in node_ids
    ]
    params = config.params(weighted=False, arrays_key=arrays_key)
    outcome = run_secagg(
        grid,
        instructions,
        params,
        num_shares=config.num_shares,
        timeout=config.timeout or timeout,
        rng=rng,
    )
    arrays = outcome.sum.in_dtypes(outcome.sum.arrays)
    return SecureSumResult(arrays, outcome.survivors, outcome.dropped)
