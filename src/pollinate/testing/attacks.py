"""Byzantine attackers for simulations: ClientApp mods that make an honest node lie.

Put :func:`attack_mod` on a ClientApp (``ClientApp(mods=[attack_mod])``) and choose
which virtual nodes attack, and how, through their node_config (in simulation,
``run_simulation(..., node_config_fn=...)``). A node without an ``attack`` key is
honest and the mod passes its messages through untouched. Only ``train`` replies are
changed; metrics (including ``num-examples``) are the honest ones.

node_config keys
----------------
``attack`` (str, :data:`ATTACK`)
    ``"none"`` (or absent), ``"sign-flip"``, ``"gaussian-noise"``, ``"scaled-update"``,
    ``"label-flip"`` or ``"alie"``.
``attack-scale`` (float, :data:`ATTACK_SCALE`)
    ``sign-flip``: ``k`` in ``global - k * (local - global)`` (default 1);
    ``scaled-update``: the boost factor (default 10).
``attack-std`` (float, :data:`ATTACK_STD`)
    ``gaussian-noise``: standard deviation of the noise (default 1).
``attack-group`` (list of int, :data:`ATTACK_GROUP`)
    ``alie``: the ``partition-id`` of every colluding attacker, this one included.
``attack-z`` (float, :data:`ATTACK_Z`)
    ``alie``: how many standard deviations to shift; default :func:`alie_z` of
    ``n = num-partitions`` and ``f = len(attack-group)``.

The update of a node is ``local - global``: what it trained minus the global model
it received (the ``arrays`` of the instruction).

Label flipping acts on the data, not on the reply, so the mod leaves those nodes
alone; the app's training calls :func:`maybe_flip_labels` on its labels.

Randomness (``gaussian-noise``) is seeded by the run_config's ``seed`` (0 if absent),
the node id and the server round, so a run is reproducible on every runtime.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from pollinate.client import Mod
from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord, ConfigValue, Context, Message, RecordDict, keys
from pollinate.strategy.aggregate import cast_like

__all__ = [
    "ATTACK",
    "ATTACKS",
    "ATTACK_GROUP",
    "ATTACK_SCALE",
    "ATTACK_STD",
    "ATTACK_Z",
    "alie",
    "alie_z",
    "attack_mod",
    "flip_labels",
    "gaussian_noise",
    "maybe_flip_labels",
    "scaled_update",
    "sign_flip",
]

ATTACK: Final = "attack"
ATTACK_SCALE: Final = "attack-scale"
ATTACK_STD: Final = "attack-std"
ATTACK_GROUP: Final = "attack-group"
ATTACK_Z: Final = "attack-z"

#: The values ``node_config["attack"]`` may take.
ATTACKS: Final = ("none", "sign-flip", "gaussian-noise", "scaled-update", "label-flip", "alie")

_CallNext = Callable[[Message, Context], Message]


# -- helpers ----------------------------------------------------------------------------
def _number(owner: str, name: str, value: object, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{owner}: {name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{owner}: {name} must be > 0, got {value!r}")
    return float(value)


def _is_train(message: Message) -> bool:
    message_type = message.metadata.message_type
    return message_type == keys.TRAIN or message_type.startswith(keys.TRAIN + ".")


def _global_and_local(message: Message, reply: Message) -> tuple[ArrayRecord, ArrayRecord] | None:
    """The instruction's global arrays and the reply's local ones, if both are there."""
    if reply.has_error():
        return None
    sent = message.content.array_records.get(keys.ARRAYS)
    got = reply.content.array_records.get(keys.ARRAYS)
    if sent is None or got is None or sent.structure() != got.structure():
        return None
    return sent, got


def _with_arrays(message: Message, reply: Message, arrays: ArrayRecord) -> Message:
    """A new reply to ``message``: ``reply``'s content with ``arrays`` in place (no mutation)."""
    content = RecordDict(dict(reply.content.items()))
    content[keys.ARRAYS] = arrays
    return message.reply(content)


def _map_update(
    global_arrays: ArrayRecord,
    local: ArrayRecord,
    fn: Callable[[str, NDArray[np.float64], NDArray[np.float64]], NDArray[np.float64]],
) -> ArrayRecord:
    """``fn(name, global, local)`` per array, in float64, cast back to each dtype."""
    out = ArrayRecord()
    for name, array in local.items():
        g = np.asarray(global_arrays[name], np.float64)
        out[name] = cast_like(fn(name, g, np.asarray(array, np.float64)), array.dtype)
    return out


def _server_round(message: Message) -> int:
    config = message.content.config_records.get(keys.CONFIG)
    value = config.get(keys.SERVER_ROUND, 0) if config is not None else 0
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _run_seed(context: Context) -> int:
    seed = context.run_config.get("seed", 0)
    return seed if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 else 0


# -- the attacks ------------------------------------------------------------------------
def sign_flip(scale: float = 1.0) -> Mod:
    """A mod that sends ``global - scale * (local - global)``: the update, reversed.

    Parameters
    ----------
    scale:
        ``k > 0``; 1 reverses the update, larger values also boost it.

    Examples
    --------
    >>> from pollinate import ClientApp
    >>> app = ClientApp(mods=[sign_flip(4.0)])
    """
    k = _number("sign_flip", "scale", scale, positive=True)

    def mod(message: Message, context: Context, call_next: _CallNext) -> Message:
        reply = call_next(message, context)
        pair = _global_and_local(message, reply) if _is_train(message) else None
        if pair is None:
            return reply
        flipped = _map_update(*pair, lambda _, g, x: g - k * (x - g))
        return _with_arrays(message, reply, flipped)

    return mod


def scaled_update(factor: float = 10.0) -> Mod:
    """A mod that sends ``global + factor * (local - global)``: the update, boosted.

    Parameters
    ----------
    factor:
        The boost; 10 by default.
    """
    boost = _number("scaled_update", "factor", factor, positive=True)

    def mod(message: Message, context: Context, call_next: _CallNext) -> Message:
        reply = call_next(message, context)
        pair = _global_and_local(message, reply) if _is_train(message) else None
        if pair is None:
            return reply
        return _with_arrays(message, reply, _map_update(*pair, lambda _, g, x: g + boost * (x - g)))

    return mod


def gaussian_noise(std: float = 1.0) -> Mod:
    """A mod that replaces the update by Gaussian noise: it sends ``global + N(0, std^2)``.

    The node still trains (so its reply's metrics and timing look honest). The noise is
    seeded by ``(run_config["seed"], node id, server round)``.

    Parameters
    ----------
    std:
        Standard deviation of the noise, per coordinate.
    """
    sigma = _number("gaussian_noise", "std", std, positive=True)

    def mod(message: Message, context: Context, call_next: _CallNext) -> Message:
        reply = call_next(message, context)
        pair = _global_and_local(message, reply) if _is_train(message) else None
        if pair is None:
            return reply
        rng = np.random.default_rng(
            [_run_seed(context), context.node_id, _server_round(message), 0x6E6F]
        )
        noisy = _map_update(*pair, lambda _, g, x: g + rng.normal(0.0, sigma, size=g.shape))
        return _with_arrays(message, reply, noisy)

    return mod


def alie_z(num_nodes: int, num_byzantine: int) -> float:
    """The ``z_max`` of ALIE for ``n`` nodes of which ``f`` collude.

    Baruch, Baruch and Goldberg, "A Little Is Enough: Circumventing Defenses For
    Distributed Learning", NeurIPS 2019, https://arxiv.org/abs/1902.06156: with
    ``s = floor(n / 2 + 1) - f`` honest nodes the attackers need on their side,
    ``z_max = Phi^-1((n - s) / n)``, ``Phi`` the standard normal CDF.

    Examples
    --------
    >>> round(alie_z(20, 4), 4)  # s = 7, Phi^-1(13 / 20)
    0.3853
    """
    n = int(_number("alie_z", "num_nodes", num_nodes, positive=True))
    f = int(_number("alie_z", "num_byzantine", num_byzantine))
    if not 0 < f < n:
        raise ConfigError(f"alie_z: needs 0 < num_byzantine < num_nodes, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    if s <= 0:
        raise ConfigError(
            f"alie_z: with f={f} of n={n} nodes the attackers are a majority (s={s}); "
            "ALIE's z_max is defined only for f <= n / 2"
        )
    return statistics.NormalDist().inv_cdf((n - s) / n)


def alie(group: Sequence[int], *, z: float | None = None, num_nodes: int | None = None) -> Mod:
    """A mod for ALIE: colluding attackers all send ``mean - z * std`` of honest updates.

    Baruch, Baruch and Goldberg, "A Little Is Enough: Circumventing Defenses For
    Distributed Learning", NeurIPS 2019, https://arxiv.org/abs/1902.06156.

    What the attackers know, in this simulation: the *data* of every attacker in
    ``group`` (they collude), not the honest nodes' updates. Each attacker runs the
    app's honest training once per member of the group, on that member's partition
    (``call_next`` with a context whose ``partition-id`` is the member's and whose
    state is empty, except for itself), and takes the per-coordinate mean and sample
    standard deviation of those ``f`` updates as its estimate of the benign ones'.
    That is what the paper's algorithm takes as input (the corrupted workers' own
    honest updates); on IID data it is close to the benign statistics, on skewed data
    it is not. Every attacker computes the same statistics, so they all send the same
    model. With a group of one the standard deviation is 0 and the attacker sends its
    honest update. The cost: each attacker trains ``f`` times per round.

    The direction of the shift is the attackers' free choice (the defences treat both
    alike); this mod subtracts.

    Parameters
    ----------
    group:
        ``partition-id`` of every colluding attacker, this one included.
    z:
        Standard deviations to shift by; default :func:`alie_z` of ``num_nodes`` and
        ``len(group)``.
    num_nodes:
        ``n``, for the default ``z``; default the node's ``num-partitions``.
    """
    members = tuple(int(_number("alie", "group member", m)) for m in group)
    if not members or len(set(members)) != len(members):
        raise ConfigError(f"alie: group must list distinct partition ids, got {list(group)!r}")
    fixed_z = None if z is None else _number("alie", "z", z)
    if num_nodes is not None and fixed_z is None:
        fixed_z = alie_z(num_nodes, len(members))

    def mod(message: Message, context: Context, call_next: _CallNext) -> Message:
        reply = call_next(message, context)
        pair = _global_and_local(message, reply) if _is_train(message) else None
        if pair is None:
            return reply
        global_arrays, own = pair
        own_partition = context.node_config.get(keys.PARTITION_ID)
        honest: list[ArrayRecord] = []
        for member in members:
            if member == own_partition:
                honest.append(own)
                continue
            peer = Context(
                run_id=context.run_id,
                node_id=context.node_id,
                node_config={**context.node_config, keys.PARTITION_ID: member},
                run_config=context.run_config,
                state=RecordDict(),
            )
            peer_pair = _global_and_local(message, call_next(message, peer))
            if peer_pair is not None:
                honest.append(peer_pair[1])
        shift = fixed_z
        if shift is None:
            n = context.node_config.get(keys.NUM_PARTITIONS)
            if not isinstance(n, int) or isinstance(n, bool):
                raise ConfigError(
                    "alie: give z or num_nodes, or run where node_config has num-partitions"
                )
            shift = alie_z(n, len(members))

        def lie(name: str, g: NDArray[np.float64], x: NDArray[np.float64]) -> NDArray[np.float64]:
            stacked = np.stack([np.asarray(h[name], np.float64) for h in honest])
            std = stacked.std(axis=0, ddof=1) if len(honest) > 1 else np.zeros_like(g)
            result: NDArray[np.float64] = stacked.mean(axis=0) - shift * std
            return result

        return _with_arrays(message, reply, _map_update(global_arrays, own, lie))

    return mod


def flip_labels(y: NDArray[Any], num_classes: int) -> NDArray[Any]:
    """Label flipping: class ``c`` becomes ``num_classes - 1 - c`` (a new array).

    Examples
    --------
    >>> flip_labels(np.array([0, 3, 9]), 10)
    array([9, 6, 0])
    """
    classes = int(_number("flip_labels", "num_classes", num_classes, positive=True))
    labels = np.asarray(y)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ConfigError(f"flip_labels: labels must be in [0, {classes}), got {labels!r}")
    flipped: NDArray[Any] = (classes - 1 - labels).astype(labels.dtype)
    return flipped


def maybe_flip_labels(y: NDArray[Any], context: Context, *, num_classes: int) -> NDArray[Any]:
    """``y`` flipped if this node's ``node_config["attack"]`` is ``"label-flip"``, else ``y``.

    Call it in the app's training on the local labels.

    Examples
    --------
    >>> from pollinate import Context
    >>> attacker = Context(run_id=0, node_id=1, node_config={"attack": "label-flip"})
    >>> maybe_flip_labels(np.array([0, 1]), attacker, num_classes=2)
    array([1, 0])
    """
    if context.node_config.get(ATTACK) == "label-flip":
        return flip_labels(y, num_classes)
    return y


def _mod_for(node_config: dict[str, ConfigValue]) -> Mod | None:
    """The attack mod this node_config asks for; ``None`` for an honest node."""
    attack = node_config.get(ATTACK, "none")
    if attack not in ATTACKS:
        raise ConfigError(
            f"node_config {ATTACK}={attack!r} is not an attack; choose one of {', '.join(ATTACKS)}"
        )
    if attack in ("none", "label-flip"):
        return None
    if attack == "sign-flip":
        return sign_flip(_number(ATTACK_SCALE, "value", node_config.get(ATTACK_SCALE, 1.0)))
    if attack == "scaled-update":
        return scaled_update(_number(ATTACK_SCALE, "value", node_config.get(ATTACK_SCALE, 10.0)))
    if attack == "gaussian-noise":
        return gaussian_noise(_number(ATTACK_STD, "value", node_config.get(ATTACK_STD, 1.0)))
    group = node_config.get(ATTACK_GROUP)
    if not isinstance(group, list):
        raise ConfigError(f"attack=alie needs node_config {ATTACK_GROUP} = [partition ids]")
    z = node_config.get(ATTACK_Z)
    return alie([int(_number(ATTACK_GROUP, "member", m)) for m in group], z=_opt_float(z))


def _opt_float(value: ConfigValue | None) -> float | None:
    return None if value is None else _number(ATTACK_Z, "value", value)


def attack_mod(message: Message, context: Context, call_next: _CallNext) -> Message:
    """A mod that makes this node attack as its node_config says (see the module doc).

    Honest nodes (no ``attack`` key, ``"none"``) and label flippers pass through.
    A bad node_config raises ConfigError, which the ClientApp turns into an error reply.

    Examples
    --------
    >>> from pollinate import ClientApp
    >>> app = ClientApp(mods=[attack_mod])
    """
    mod = _mod_for(context.node_config)
    if mod is None:
        return call_next(message, context)
    return mod(message, context, call_next)
