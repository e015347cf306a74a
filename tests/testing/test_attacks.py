from __future__ import annotations

import statistics

import numpy as np
import pytest

from pollinate.client import ClientApp, Mod
from pollinate.errors import ConfigError
from pollinate.records import (
    ArrayRecord,
    ConfigRecord,
    ConfigValue,
    Context,
    Message,
    MetricRecord,
    RecordDict,
    keys,
)
from pollinate.runtime.simulation import run_simulation
from pollinate.server import ServerApp
from pollinate.strategy.fedavg import FedAvg
from pollinate.strategy.robust import Median
from pollinate.testing.attacks import (
    ATTACK,
    ATTACK_GROUP,
    ATTACK_SCALE,
    ATTACK_STD,
    ATTACK_Z,
    alie,
    alie_z,
    attack_mod,
    flip_labels,
    gaussian_noise,
    maybe_flip_labels,
    scaled_update,
    sign_flip,
)

GLOBAL = ArrayRecord({"w": np.array([1.0, 2.0, 3.0], np.float32), "n": np.array([10, 20])})


def make_app(*mods: Mod, calls: list[int] | None = None) -> ClientApp:
    """Honest node: local = global + 1 + partition-id, on every array."""
    app = ClientApp(mods=mods)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        part = int(context.node_config.get(keys.PARTITION_ID, 0))  # type: ignore[arg-type]
        if calls is not None:
            calls.append(part)
        arrays = msg.content.get_kind(keys.ARRAYS, ArrayRecord)
        local = ArrayRecord({k: v + np.asarray(1 + part, v.dtype) for k, v in arrays.items()})
        metrics = MetricRecord({keys.NUM_EXAMPLES: 7, keys.TRAIN_LOSS: 0.5})
        return msg.reply(RecordDict({keys.ARRAYS: local, keys.METRICS: metrics}))

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        arrays = msg.content.get_kind(keys.ARRAYS, ArrayRecord)
        return msg.reply(RecordDict({keys.ARRAYS: arrays.copy()}))

    return app


def instruction(message_type: str = keys.TRAIN, server_round: int = 3) -> Message:
    content = RecordDict(
        {keys.ARRAYS: GLOBAL, keys.CONFIG: ConfigRecord({keys.SERVER_ROUND: server_round})}
    )
    return Message(content, dst_node_id=4, message_type=message_type, group_id="3")


def context(**node_config: ConfigValue) -> Context:
    config: dict[str, ConfigValue] = {keys.PARTITION_ID: 0, keys.NUM_PARTITIONS: 20}
    config.update({k.replace("_", "-"): v for k, v in node_config.items()})
    return Context(run_id=1, node_id=4, node_config=config, run_config={"seed": 5})


def arrays_of(reply: Message) -> ArrayRecord:
    assert not reply.has_error(), reply.error
    return reply.content.get_kind(keys.ARRAYS, ArrayRecord)


# -- each attack -----------------------------------------------------------------------
def test_sign_flip_sends_global_minus_k_times_the_update() -> None:
    # update = +1 everywhere; k = 3 -> global - 3
    reply = make_app(sign_flip(3.0))(instruction(), context())
    out = arrays_of(reply)
    np.testing.assert_array_equal(out["w"], [-2.0, -1.0, 0.0])
    np.testing.assert_array_equal(out["n"], [7, 17])
    assert out["w"].dtype == np.float32 and out["n"].dtype == np.int64
    assert reply.content.get_kind(keys.METRICS, MetricRecord)[keys.NUM_EXAMPLES] == 7


def test_scaled_update_boosts_the_update() -> None:
    out = arrays_of(make_app(scaled_update(10.0))(instruction(), context()))
    np.testing.assert_array_equal(out["w"], [11.0, 12.0, 13.0])  # global + 10 * 1


def test_gaussian_noise_replaces_the_update_reproducibly() -> None:
    app = make_app(gaussian_noise(0.5))
    first = arrays_of(app(instruction(server_round=3), context()))
    again = arrays_of(app(instruction(server_round=3), context()))
    other_round = arrays_of(app(instruction(server_round=4), context()))
    assert first == again
    assert first != other_round
    assert not np.array_equal(first["w"], GLOBAL["w"] + 1)  # the honest update is gone
    big = ArrayRecord({"w": np.zeros(20_000)})
    message = Message(RecordDict({keys.ARRAYS: big}), dst_node_id=4, message_type=keys.TRAIN)
    noise = arrays_of(app(message, context()))["w"]
    assert abs(noise.std() - 0.5) < 0.02 and abs(noise.mean()) < 0.02


def test_label_flip_helpers() -> None:
    np.testing.assert_array_equal(flip_labels(np.array([0, 1, 9, 4]), 10), [9, 8, 0, 5])
    y = np.array([0, 2])
    assert maybe_flip_labels(y, context(), num_classes=3) is y
    flipped = maybe_flip_labels(y, context(attack="label-flip"), num_classes=3)
    np.testing.assert_array_equal(flipped, [2, 0])
    np.testing.assert_array_equal(y, [0, 2])  # not mutated
    with pytest.raises(ConfigError):
        flip_labels(np.array([10]), 10)


def test_alie_z_matches_the_paper_formula() -> None:
    # n = 20, f = 4: s = floor(11) - 4 = 7, z = Phi^-1((20 - 7) / 20) = Phi^-1(0.65)
    assert alie_z(20, 4) == pytest.approx(statistics.NormalDist().inv_cdf(0.65))
    assert alie_z(20, 4) == pytest.approx(0.38532, abs=1e-5)
    with pytest.raises(ConfigError, match="majority"):
        alie_z(10, 7)


def test_alie_sends_mean_minus_z_std_of_the_groups_honest_updates() -> None:
    # group partitions 0, 1, 2: honest updates global + 1, + 2, + 3;
    # mean global + 2, sample std 1 -> global + 2 - 0.5
    calls: list[int] = []
    app = make_app(alie([0, 1, 2], z=0.5), calls=calls)
    out = arrays_of(app(instruction(), context()))
    np.testing.assert_allclose(out["w"], GLOBAL["w"] + 1.5)
    np.testing.assert_array_equal(out["n"], [12, 22])  # 11.5 and 21.5 round to even
    assert sorted(calls) == [0, 1, 2]


def test_alie_default_z_comes_from_num_partitions() -> None:
    # n = 20 (num-partitions), f = 3: z = Phi^-1(12 / 20); the lie is global + 2 - z
    z = statistics.NormalDist().inv_cdf(0.6)
    app = make_app(attack_mod)
    config = context(attack="alie", attack_group=[0, 1, 2])
    out = arrays_of(app(instruction(), config))
    np.testing.assert_allclose(out["w"], GLOBAL["w"] + 2 - z, rtol=1e-6)


# -- the node_config dispatcher ----------------------------------------------------------
@pytest.mark.parametrize(
    ("node_config", "expected"),
    [
        ({}, [2.0, 3.0, 4.0]),
        ({ATTACK: "none"}, [2.0, 3.0, 4.0]),
        ({ATTACK: "label-flip"}, [2.0, 3.0, 4.0]),  # acts on data, not on the reply
        ({ATTACK: "sign-flip"}, [0.0, 1.0, 2.0]),
        ({ATTACK: "sign-flip", ATTACK_SCALE: 2}, [-1.0, 0.0, 1.0]),
        ({ATTACK: "scaled-update"}, [11.0, 12.0, 13.0]),
        ({ATTACK: "scaled-update", ATTACK_SCALE: 4.0}, [5.0, 6.0, 7.0]),
        ({ATTACK: "alie", ATTACK_GROUP: [0, 3], ATTACK_Z: 0.0}, [3.5, 4.5, 5.5]),
    ],
)
def test_attack_mod_follows_node_config(
    node_config: dict[str, ConfigValue], expected: list[float]
) -> None:
    ctx = Context(run_id=1, node_id=4, node_config={keys.PARTITION_ID: 0, **node_config})
    out = arrays_of(make_app(attack_mod)(instruction(), ctx))
    np.testing.assert_allclose(out["w"], expected)


def test_attack_mod_gaussian_uses_attack_std() -> None:
    ctx = Context(run_id=1, node_id=4, node_config={ATTACK: "gaussian-noise", ATTACK_STD: 1e-9})
    out = arrays_of(make_app(attack_mod)(instruction(), ctx))
    np.testing.assert_allclose(out["w"], GLOBAL["w"], atol=1e-6)


def test_evaluate_messages_pass_through() -> None:
    message = instruction(keys.EVALUATE)
    reply = make_app(attack_mod)(message, context(attack="sign-flip"))
    assert arrays_of(reply) == GLOBAL


@pytest.mark.parametrize(
    "node_config",
    [
        {ATTACK: "bit-flip"},
        {ATTACK: "sign-flip", ATTACK_SCALE: "big"},
        {ATTACK: "sign-flip", ATTACK_SCALE: -1.0},
        {ATTACK: "alie"},
        {ATTACK: "alie", ATTACK_GROUP: [1, 1]},
    ],
)
def test_bad_node_config_becomes_an_error_reply(node_config: dict[str, ConfigValue]) -> None:
    ctx = Context(run_id=1, node_id=4, node_config=node_config)
    assert make_app(attack_mod)(instruction(), ctx).has_error()


def test_factories_validate_their_arguments() -> None:
    for make in (
        lambda: sign_flip(0.0),
        lambda: scaled_update(float("inf")),
        lambda: gaussian_noise(-1.0),
        lambda: alie([]),
        lambda: alie([0, 1], z=float("nan")),
    ):
        with pytest.raises(ConfigError):
            make()


def test_attack_does_not_mutate_the_honest_reply_or_instruction() -> None:
    message = instruction()
    before = message.content.get_kind(keys.ARRAYS, ArrayRecord).copy()
    make_app(sign_flip(2.0))(message, context())
    assert message.content.get_kind(keys.ARRAYS, ArrayRecord) == before


# -- in a simulation ---------------------------------------------------------------------
def test_attackers_chosen_by_node_config_in_a_simulation() -> None:
    # 9 nodes pull a 1-d model towards 1.0; nodes 1 and 2 flip and boost (k = 20).
    client = ClientApp(mods=[attack_mod])

    @client.train()
    def train(msg: Message, ctx: Context) -> Message:
        arrays = msg.content.get_kind(keys.ARRAYS, ArrayRecord)
        local = ArrayRecord({"w": arrays["w"] + 0.5 * (1.0 - arrays["w"])})
        return msg.reply(
            RecordDict({keys.ARRAYS: local, keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 1})})
        )

    def final_model(aggregator: Median | None) -> float:
        server = ServerApp()

        @server.main()
        def main(grid, context):  # type: ignore[no-untyped-def]
            strategy = FedAvg(
                fraction_evaluate=0.0, aggregator=aggregator, rng=np.random.default_rng(0)
            )
            initial = ArrayRecord({"w": np.zeros(1)})
            return strategy.start(grid, initial_arrays=initial, num_rounds=5)

        def node_config(partition_id: int) -> dict[str, ConfigValue]:
            return {ATTACK: "sign-flip", ATTACK_SCALE: 20.0} if partition_id < 2 else {}

        result = run_simulation(server, client, num_nodes=9, node_config_fn=node_config)
        return float(result.arrays["w"][0])

    assert abs(final_model(Median()) - 1.0) < 0.05  # 1 - 0.5**5 = 0.97
    assert final_model(None) < 0  # FedAvg is dragged the other way
