"""Node-side privacy: mods that clip (and noise) a node's update before it leaves.

A mod wraps every handler call of a ClientApp (``ClientApp(mods=[...])``); the two
here act on ``train`` replies only, and only on the update ``local - global`` (the
arrays the node returns minus the arrays it received), never on the weights.

- :func:`clipping_mod`: the node half of ``CentralDP(..., clip_on="nodes")``. It clips
  the update to the norm the server sent in the train config (``dp-clip-norm``) and
  reports ``dp-clipped`` (1 or 0) for adaptive clipping. The server adds the noise.
- :class:`LocalDP`: local differential privacy. The node clips its update to
  ``clip_norm`` and adds ``N(0, (noise_multiplier * clip_norm)**2)`` itself, so the
  server (or anyone on the wire) only ever sees a privatized update. Each release is
  a Gaussian mechanism on the node's data; :meth:`LocalDP.epsilon` composes them.

Both use the default wire keys (``arrays``, ``config``, ``metrics``). This module
imports nothing above the records layer: a mod is any callable
``(message, context, call_next) -> reply``, which is what
:data:`pollinate.client.Mod` names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import final

import numpy as np

from pollinate.errors import ConfigError
from pollinate.privacy.accounting import RdpAccountant
from pollinate.privacy.clipping import (
    CLIP_NORM_KEY,
    CLIPPED_KEY,
    apply_update,
    clip_by_l2_norm_inplace,
    compute_update,
)
from pollinate.privacy.mechanisms import add_gaussian_noise_inplace, gaussian_noise_std
from pollinate.records import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
    keys,
)

__all__ = ["LocalDP", "clipping_mod"]

_CallNext = Callable[[Message, Context], Message]


def clipping_mod(message: Message, context: Context, call_next: _CallNext) -> Message:
    """Clip this node's train update to the server's ``dp-clip-norm``; report ``dp-clipped``.

    Raises ConfigError (an error reply) when a train instruction has no clip norm:
    the server's strategy must be ``CentralDP(..., clip_on="nodes")``.

    Examples
    --------
    >>> from pollinate.client import ClientApp
    >>> app = ClientApp(mods=[clipping_mod])
    """
    if not _is_train(message):
        return call_next(message, context)
    config = message.content.get(keys.CONFIG)
    norm = config.get(CLIP_NORM_KEY) if isinstance(config, ConfigRecord) else None
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not norm > 0:
        raise ConfigError(
            f"this node clips its updates (clipping_mod) but the train instruction has no "
            f"positive {CLIP_NORM_KEY!r} in its config (got {norm!r}); wrap the server's "
            "strategy in CentralDP(..., clip_on='nodes')"
        )
    reply = call_next(message, context)
    return _privatized(message, reply, clip_norm=float(norm), noise_std=0.0, rng=None)


@final
class LocalDP:
    """A mod for local DP: clip the train update to ``clip_norm`` and add Gaussian noise.

    Parameters
    ----------
    clip_norm:
        The L2 bound of the update ``local - global``.
    noise_multiplier:
        Noise std / ``clip_norm``.
    rng:
        Source of the noise; by default a generator seeded from the OS.

    Examples
    --------
    >>> from pollinate.client import ClientApp
    >>> app = ClientApp(mods=[LocalDP(clip_norm=1.0, noise_multiplier=2.0)])
    """

    def __init__(
        self,
        *,
        clip_norm: float,
        noise_multiplier: float,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.noise_std = gaussian_noise_std(clip_norm=clip_norm, noise_multiplier=noise_multiplier)
        if not clip_norm > 0 or not noise_multiplier > 0:
            raise ConfigError(
                "LocalDP needs a positive clip_norm and noise_multiplier, got "
                f"{clip_norm!r} and {noise_multiplier!r}"
            )
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.rng = rng if rng is not None else np.random.default_rng()

    def __repr__(self) -> str:
        return f"LocalDP(clip_norm={self.clip_norm}, noise_multiplier={self.noise_multiplier})"

    def __call__(self, message: Message, context: Context, call_next: _CallNext) -> Message:
        """Answer through ``call_next``; a train reply leaves with a privatized update."""
        if not _is_train(message):
            return call_next(message, context)
        reply = call_next(message, context)
        return _privatized(
            message, reply, clip_norm=self.clip_norm, noise_std=self.noise_std, rng=self.rng
        )

    def epsilon(self, delta: float, *, num_releases: int) -> float:
        """The epsilon at ``delta`` of this node after ``num_releases`` train replies.

        Each release is a Gaussian mechanism whose input (the node's update) may change
        anywhere within the clip ball: sensitivity ``2 * clip_norm``. Accounted by RDP.

        Examples
        --------
        >>> round(LocalDP(clip_norm=1.0, noise_multiplier=10.0).epsilon(1e-5, num_releases=1), 2)
        0.79
        """
        accountant = RdpAccountant(sampling="fixed-size")
        accountant.step(
            noise_multiplier=self.noise_multiplier, sample_rate=1.0, num_steps=num_releases
        )
        return accountant.epsilon(delta)


def _is_train(message: Message) -> bool:
    return message.metadata.message_type.split(".", 1)[0] == keys.TRAIN


def _privatized(
    message: Message,
    reply: Message,
    *,
    clip_norm: float,
    noise_std: float,
    rng: np.random.Generator | None,
) -> Message:
    """``reply`` with its update clipped (and noised), and ``dp-clipped`` in its metrics."""
    if reply.has_error():
        return reply
    sent = message.content.get(keys.ARRAYS)
    returned = reply.content.get(keys.ARRAYS)
    if not isinstance(sent, ArrayRecord) or not isinstance(returned, ArrayRecord):
        raise ConfigError(
            f"a privatized train exchange needs an ArrayRecord {keys.ARRAYS!r} in both the "
            "instruction and the reply (the model sent and the model trained)"
        )
    update = compute_update(returned, sent)
    norm = clip_by_l2_norm_inplace(update, clip_norm)
    if noise_std > 0 and rng is not None:
        add_gaussian_noise_inplace(update, std=noise_std, rng=rng)
    content = RecordDict(dict(reply.content.items()))
    content[keys.ARRAYS] = apply_update(sent, update)
    found = reply.content.get(keys.METRICS)
    metrics = found.copy() if isinstance(found, MetricRecord) else MetricRecord()
    metrics[CLIPPED_KEY] = int(norm > clip_norm)
    content[keys.METRICS] = metrics
    return Message.from_parts(reply.metadata, content, None)
