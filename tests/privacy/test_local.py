"""Node-side mods: the update leaves the node clipped (and, for local DP, noised)."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants.analysis import rdp as opacus_rdp

from pollinate.client import ClientApp
from pollinate.errors import ConfigError
from pollinate.privacy import CLIP_NORM_KEY, CLIPPED_KEY, LocalDP, clipping_mod, l2_norm
from pollinate.records import (
    ArrayRecord,
    ConfigRecord,
    Context,
    ErrorCode,
    Message,
    MetricRecord,
    RecordDict,
    keys,
)

SIZE = 100_000


def app_adding(shift: float, *, mods) -> ClientApp:  # type: ignore[no-untyped-def]
    app = ClientApp(mods=mods)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        arrays = message.content.get_kind(keys.ARRAYS, ArrayRecord)
        new = ArrayRecord({k: v + np.asarray(shift, v.dtype) for k, v in arrays.items()})
        content = RecordDict({keys.ARRAYS: new, keys.METRICS: MetricRecord({"num-examples": 3})})
        return message.reply(content)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return message.reply(RecordDict({keys.METRICS: MetricRecord({"loss": 1.0})}))

    return app


def instruction(
    message_type: str = keys.TRAIN, *, clip_norm: float | None = 1.0, size: int = 4
) -> Message:
    config = ConfigRecord({keys.SERVER_ROUND: 1})
    if clip_norm is not None:
        config[CLIP_NORM_KEY] = clip_norm
    content = RecordDict(
        {keys.ARRAYS: ArrayRecord({"w": np.ones(size, np.float32)}), keys.CONFIG: config}
    )
    return Message(content, dst_node_id=3, message_type=message_type)


def update_of(reply: Message, sent: Message) -> np.ndarray:
    got = reply.content.get_kind(keys.ARRAYS, ArrayRecord)["w"].astype(np.float64)
    return got - sent.content.get_kind(keys.ARRAYS, ArrayRecord)["w"]


@pytest.mark.parametrize(("shift", "clipped"), [(10.0, 1), (0.1, 0)])
def test_clipping_mod_clips_the_update_to_the_servers_norm_and_says_so(
    shift: float, clipped: int
) -> None:
    message = instruction(clip_norm=0.5)
    reply = app_adding(shift, mods=[clipping_mod])(message, Context(run_id=0, node_id=3))

    update = update_of(reply, message)
    assert l2_norm({"w": update}) <= 0.5 * (1 + 1e-6)
    if not clipped:
        np.testing.assert_allclose(update, 0.1, rtol=1e-6)
    metrics = reply.content.get_kind(keys.METRICS, MetricRecord)
    assert metrics[CLIPPED_KEY] == clipped and metrics["num-examples"] == 3
    assert reply.metadata.reply_to_message_id == message.metadata.message_id


def test_clipping_mod_without_a_norm_in_the_config_is_an_error_reply_that_says_why() -> None:
    reply = app_adding(1.0, mods=[clipping_mod])(
        instruction(clip_norm=None), Context(run_id=0, node_id=3)
    )
    assert reply.error is not None and reply.error.code == ErrorCode.CLIENT_APP_RAISED
    assert "CentralDP(..., clip_on='nodes')" in reply.error.reason


@pytest.mark.parametrize("mod", [clipping_mod, LocalDP(clip_norm=1.0, noise_multiplier=1.0)])
def test_mods_leave_other_messages_alone(mod) -> None:  # type: ignore[no-untyped-def]
    reply = app_adding(1.0, mods=[mod])(
        instruction(keys.EVALUATE, clip_norm=None), Context(run_id=0, node_id=3)
    )
    assert reply.content.get_kind(keys.METRICS, MetricRecord) == MetricRecord({"loss": 1.0})


def test_local_dp_noise_has_the_calibrated_std() -> None:
    # The node changes nothing: what leaves is N(0, (sigma * C)^2) in every entry.
    message = instruction(size=SIZE)
    mod = LocalDP(clip_norm=0.01, noise_multiplier=2.0, rng=np.random.default_rng(0))
    reply = app_adding(0.0, mods=[mod])(message, Context(run_id=0, node_id=3))
    update = update_of(reply, message)
    assert np.std(update) == pytest.approx(0.02, rel=0.02)


def test_local_dp_clips_before_it_noises() -> None:
    # A huge update in every entry: after clipping, each entry is C / sqrt(n); the noise
    # averages out over the entries.
    message = instruction(size=SIZE)
    mod = LocalDP(clip_norm=1.0, noise_multiplier=1e-3, rng=np.random.default_rng(0))
    reply = app_adding(1000.0, mods=[mod])(message, Context(run_id=0, node_id=3))
    update = update_of(reply, message)
    assert np.mean(update) == pytest.approx(1 / np.sqrt(SIZE), rel=0.01)
    assert reply.content.get_kind(keys.METRICS, MetricRecord)[CLIPPED_KEY] == 1


def test_local_dp_epsilon_is_the_gaussian_of_twice_the_clip_norm() -> None:
    mod = LocalDP(clip_norm=1.0, noise_multiplier=8.0)
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = opacus_rdp.compute_rdp(q=1.0, noise_multiplier=4.0, steps=5, orders=orders)
    expected, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert mod.epsilon(1e-5, num_releases=5) == pytest.approx(float(expected), rel=0.01)


def test_local_dp_refuses_no_noise() -> None:
    with pytest.raises(ConfigError, match="positive clip_norm and noise_multiplier"):
        LocalDP(clip_norm=1.0, noise_multiplier=0.0)
