"""The node's I/O driver: a ClientApp mod that answers the SecAgg+ stages.

Add it to a ClientApp (``ClientApp(mods=[secaggplus_mod])``) and the app's handlers
run unchanged under secure aggregation. Messages without a SecAgg+ record pass
straight through. At the masked-input stage the mod strips the protocol record, calls
the app's handler for the message's type (``train``, or ``query.<action>`` for
analytics), takes its ArrayRecord (and its weight, for a weighted mean), and replies
only with the masked vector: the handler's metrics never leave the node.

Between stages the node's :class:`~.protocol.NodeProtocol` lives in
``Context.state`` (under :data:`STATE_KEY`), which every runtime keeps per node
across messages and processes. It is deleted once the node has answered the unmask
stage, so its secrets exist only for the length of one session, and a second unmask
request for the same session finds nothing to answer from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import numpy as np

from pollinate.errors import ProtocolError
from pollinate.privacy.secagg.encoding import encode_update, structure_of
from pollinate.privacy.secagg.messages import (
    SECAGG,
    MaskedInputRequest,
    SecAggParams,
    SetupRequest,
    ShareKeysRequest,
    Stage,
    UnmaskRequest,
    from_content,
    stage_of,
    to_content,
)
from pollinate.privacy.secagg.protocol import NodeProtocol
from pollinate.records import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

if TYPE_CHECKING:
    from pollinate.client.app import Mod

__all__ = ["STATE_KEY", "make_secaggplus_mod", "secaggplus_mod"]

#: Where a node keeps its SecAgg+ session in ``Context.state``.
STATE_KEY: Final = "pollinate.secagg+"

CallNext = Callable[[Message, Context], Message]


def make_secaggplus_mod(*, rng: np.random.Generator | None = None) -> Mod:
    """A SecAgg+ mod whose stochastic rounding and noise draw from ``rng``.

    Without ``rng`` each call draws from a generator seeded by the operating system.
    Keys, seeds and Shamir coefficients always come from the OS's CSPRNG.
    """

    def secaggplus_mod(message: Message, context: Context, call_next: CallNext) -> Message:
        stage = stage_of(message.content)
        if stage is None:
            return call_next(message, context)
        node_id = message.metadata.dst_node_id
        if stage == Stage.SETUP:
            request = from_content(message.content, SetupRequest)
            node, keys = NodeProtocol.setup(node_id, request)
            context.state[STATE_KEY] = node.to_record()
            return message.reply(to_content(keys))
        node = _load(context, node_id, stage)
        try:
            if stage == Stage.SHARE_KEYS:
                return message.reply(
                    to_content(node.share_keys(from_content(message.content, ShareKeysRequest)))
                )
            if stage == Stage.MASKED_INPUT:
                return _masked_input(message, context, call_next, node, rng)
            if stage == Stage.UNMASK:
                shares = node.unmask(from_content(message.content, UnmaskRequest))
                return message.reply(to_content(shares))
            raise ProtocolError(f"unknown SecAgg+ stage {stage!r}")
        finally:
            # Saved even when a step refuses: a refused session stays refused. A
            # finished one is forgotten, secrets included.
            if node.stage == "done":
                context.state.pop(STATE_KEY, None)
            else:
                context.state[STATE_KEY] = node.to_record()

    return secaggplus_mod


def _load(context: Context, node_id: int, stage: str) -> NodeProtocol:
    saved = context.state.get(STATE_KEY)
    if not isinstance(saved, ConfigRecord):
        raise ProtocolError(
            f"node {node_id} got a SecAgg+ {stage!r} request but has no session in progress "
            "(it missed the setup stage, or already answered the unmask stage)"
        )
    node = NodeProtocol.from_record(saved)
    if node.node_id != node_id:
        raise ProtocolError(f"the saved SecAgg+ session is node {node.node_id}'s, not {node_id}'s")
    return node


def _masked_input(
    message: Message,
    context: Context,
    call_next: CallNext,
    node: NodeProtocol,
    rng: np.random.Generator | None,
) -> Message:
    """Check the shares, run the app's handler, mask its result."""
    node.receive_shares(from_content(message.content, MaskedInputRequest))
    params = node.params
    inner_content = RecordDict(
        {name: record for name, record in message.content.items() if name != SECAGG}
    )
    inner = Message.from_parts(message.metadata, inner_content, None)
    reply = call_next(inner, context)
    if reply.has_error():
        return reply  # the node drops out of this session; its error says why
    arrays = reply.content.get_kind(params.arrays_key, ArrayRecord)
    weight = None
    if params.weighted:
        metrics = reply.content.get_kind(params.metrics_key, MetricRecord)
        value = metrics.get(params.weight_key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ProtocolError(
                f"the {message.metadata.message_type!r} handler's reply has no number "
                f"{params.weight_key!r} in its {params.metrics_key!r} MetricRecord, which a "
                "weighted SecAgg+ round needs"
            )
        weight = float(value)
    generator = rng if rng is not None else np.random.default_rng()
    update = _prepare(arrays, message.content, params, generator)
    vector, _ = encode_update(update, params, weight=weight, rng=generator)
    # The structure names the handler's own dtypes (the update may be float64).
    return message.reply(to_content(node.mask(vector, structure_of(arrays))))


def _prepare(
    arrays: ArrayRecord, instruction: RecordDict, params: SecAggParams, rng: np.random.Generator
) -> ArrayRecord:
    """The update to encode: the change from the instruction's arrays (``delta``), then
    clipped to an L2 norm and noised (distributed DP), as the session asks."""
    if not (params.delta or params.noise_clipping_norm > 0 or params.noise_stddev > 0):
        return arrays
    update = ArrayRecord({name: np.array(a, dtype=np.float64) for name, a in arrays.items()})
    if params.delta:
        reference = instruction.get_kind(params.arrays_key, ArrayRecord)
        if reference.structure() != arrays.structure():
            raise ProtocolError(
                "a SecAgg+ delta update needs the handler to return arrays shaped like the "
                "instruction's"
            )
        for name, array in update.items():
            array -= reference[name]
    if params.noise_clipping_norm > 0:
        from pollinate.privacy.clipping import clip_by_l2_norm_inplace

        clip_by_l2_norm_inplace(update, params.noise_clipping_norm)
    if params.noise_stddev > 0:
        from pollinate.privacy.mechanisms import add_gaussian_noise_inplace

        add_gaussian_noise_inplace(update, std=params.noise_stddev, rng=rng)
    return update


#: The SecAgg+ mod with OS-seeded randomness: ``ClientApp(mods=[secaggplus_mod])``.
secaggplus_mod: Final[Mod] = make_secaggplus_mod()
