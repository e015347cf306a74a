"""SecAgg+ driven in memory: every node in this process, messages as records.

The smallest driver of the sans-I/O protocol: it runs a :class:`ServerProtocol` and
one :class:`NodeProtocol` per node in turn, passing each message through the same
record encoding the grid drivers use (so the wire format is exercised too). Nodes can
be made to drop at any stage. It returns the server's whole transcript (every record
it received) beside the result, which is what the privacy tests inspect, and it is
what the benchmark times stage by stage.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from pollinate.privacy.secagg.encoding import DecodedSum, decode_sum, encode_update
from pollinate.privacy.secagg.messages import (
    MaskedInputReply,
    MaskedInputRequest,
    SecAggParams,
    SetupReply,
    SetupRequest,
    ShareKeysReply,
    ShareKeysRequest,
    Stage,
    StageMessage,
    UnmaskReply,
    UnmaskRequest,
    from_content,
    to_content,
)
from pollinate.privacy.secagg.protocol import NodeProtocol, ServerProtocol
from pollinate.records import ArrayRecord, RecordDict
from pollinate.serde import recorddict_to_bytes

__all__ = ["LocalRun", "run_locally"]


@dataclass
class LocalRun:
    """What :func:`run_locally` saw.

    Attributes
    ----------
    result:
        The decoded sum of the survivors' updates.
    server:
        The server's state machine at the end (its graph, who dropped and why).
    transcript:
        Every reply the server received: ``(stage, node, content)``.
    server_seconds, node_seconds:
        Time spent in the server's and in all nodes' protocol code, per stage.
    bytes_sent:
        Bytes of the encoded replies each node sent, over all stages.
    """

    result: DecodedSum
    server: ServerProtocol
    transcript: list[tuple[str, int, RecordDict]] = field(default_factory=list)
    server_seconds: dict[str, float] = field(default_factory=dict)
    node_seconds: dict[str, float] = field(default_factory=dict)
    bytes_sent: dict[int, int] = field(default_factory=dict)


_M = TypeVar("_M", bound=StageMessage)


def _through_wire(message: StageMessage, kind: type[_M]) -> _M:
    return from_content(to_content(message), kind)


def run_locally(
    updates: Mapping[int, ArrayRecord],
    params: SecAggParams,
    *,
    num_shares: int,
    rng: np.random.Generator,
    weights: Mapping[int, float] | None = None,
    drop: Mapping[str, Set[int]] | None = None,
    measure_bytes: bool = False,
    transcript: list[tuple[str, int, RecordDict]] | None = None,
) -> LocalRun:
    """Securely sum ``updates`` (node id -> arrays) with nodes dropping as told.

    ``drop`` maps a stage name to the nodes that do not answer that stage (they
    answered the earlier ones). ``rng`` draws the graph and the nodes' stochastic
    rounding. Raises :class:`~.protocol.SecAggAbortedError` like the real drivers;
    pass a ``transcript`` list to see what the server had received by then.
    """
    drop = drop or {}
    server = ServerProtocol(params, list(updates), num_shares=num_shares, rng=rng)
    nodes: dict[int, NodeProtocol] = {}
    run = LocalRun(result=DecodedSum(ArrayRecord(), 0.0, 0), server=server)
    if transcript is not None:
        run.transcript = transcript
    gone: set[int] = set()

    def answering(stage: str, requests: Mapping[int, object]) -> list[int]:
        gone.update(drop.get(stage, ()))
        return [node for node in requests if node not in gone]

    def receive(stage: str, node: int, reply: StageMessage, kind: type[_M]) -> _M:
        content = to_content(reply)
        run.transcript.append((stage, node, content))
        if measure_bytes:
            run.bytes_sent[node] = run.bytes_sent.get(node, 0) + len(recorddict_to_bytes(content))
        return from_content(content, kind)

    def timed(table: dict[str, float], stage: str, started: float) -> None:
        table[stage] = table.get(stage, 0.0) + time.perf_counter() - started

    # setup
    started = time.perf_counter()
    setup = server.setup()
    timed(run.server_seconds, Stage.SETUP, started)
    setup_replies: dict[int, SetupReply] = {}
    for node in answering(Stage.SETUP, setup):
        started = time.perf_counter()
        request = _through_wire(setup[node], SetupRequest)
        nodes[node], reply = NodeProtocol.setup(node, request)
        timed(run.node_seconds, Stage.SETUP, started)
        setup_replies[node] = receive(Stage.SETUP, node, reply, SetupReply)
    started = time.perf_counter()
    share_requests = server.receive_setup(setup_replies)
    timed(run.server_seconds, Stage.SETUP, started)

    # share keys
    share_replies: dict[int, ShareKeysReply] = {}
    for node in answering(Stage.SHARE_KEYS, share_requests):
        started = time.perf_counter()
        request2 = _through_wire(share_requests[node], ShareKeysRequest)
        reply2 = nodes[node].share_keys(request2)
        timed(run.node_seconds, Stage.SHARE_KEYS, started)
        share_replies[node] = receive(Stage.SHARE_KEYS, node, reply2, ShareKeysReply)
    started = time.perf_counter()
    masked_requests = server.receive_shares(share_replies)
    timed(run.server_seconds, Stage.SHARE_KEYS, started)

    # masked input: each reply is folded into the sum as it arrives
    for node in answering(Stage.MASKED_INPUT, masked_requests):
        started = time.perf_counter()
        request3 = _through_wire(masked_requests[node], MaskedInputRequest)
        nodes[node].receive_shares(request3)
        weight = None if weights is None else weights[node]
        vector, structure = encode_update(updates[node], params, weight=weight, rng=rng)
        reply3 = nodes[node].mask(vector, structure)
        timed(run.node_seconds, Stage.MASKED_INPUT, started)
        parsed = receive(Stage.MASKED_INPUT, node, reply3, MaskedInputReply)
        started = time.perf_counter()
        server.add_masked_input(node, parsed)
        timed(run.server_seconds, Stage.MASKED_INPUT, started)
    started = time.perf_counter()
    unmask_requests = server.receive_masked_inputs()
    timed(run.server_seconds, Stage.MASKED_INPUT, started)

    # unmask
    unmask_replies: dict[int, UnmaskReply] = {}
    for node in answering(Stage.UNMASK, unmask_requests):
        started = time.perf_counter()
        request4 = _through_wire(unmask_requests[node], UnmaskRequest)
        reply4 = nodes[node].unmask(request4)
        timed(run.node_seconds, Stage.UNMASK, started)
        unmask_replies[node] = receive(Stage.UNMASK, node, reply4, UnmaskReply)
    started = time.perf_counter()
    total = server.receive_unmask(unmask_replies)
    run.result = decode_sum(total.total, total.structure, len(total.survivors), params)
    timed(run.server_seconds, Stage.UNMASK, started)
    return run
