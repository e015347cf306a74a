"""The Grid driver and the mod: stage deadlines, failures, and composition with DP."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate import ClientApp, Context, FedAvg, Message
from pollinate.errors import ConfigError
from pollinate.privacy.secagg import (
    SecAggAbortedError,
    SecAggConfig,
    SecAggPlus,
    make_secaggplus_mod,
    secaggplus_mod,
)
from pollinate.privacy.secagg.messages import Stage, stage_of
from pollinate.records import ArrayRecord, ErrorCode, MetricRecord, RecordDict, keys
from pollinate.testing.fakes import FakeGrid

CONFIG = SecAggConfig(
    num_shares=5, reconstruction_threshold=3, clipping_range=16.0, quantization_range=2**22
)


def _train(message: Message, context: Context) -> Message:
    arrays = message.content.get_kind(keys.ARRAYS, ArrayRecord)
    new = ArrayRecord({k: a + np.float32(context.node_id) for k, a in arrays.items()})
    metrics = MetricRecord({keys.NUM_EXAMPLES: context.node_id})
    return message.reply(RecordDict({keys.ARRAYS: new, keys.METRICS: metrics}))


def _grid(app: ClientApp, num_nodes: int, silent: set[tuple[int, str]] = frozenset()) -> FakeGrid:  # type: ignore[assignment]
    """A FakeGrid whose nodes run ``app`` with persistent contexts; ``silent`` nodes
    never answer the given stage (the grid's deadline turns that into a timeout)."""
    contexts: dict[int, Context] = {}

    def handler(message: Message) -> Message | None:
        node = message.metadata.dst_node_id
        if (node, stage_of(message.content) or "") in silent:
            return None
        context = contexts.setdefault(node, Context(run_id=0, node_id=node))
        return app(message, context)

    return FakeGrid(handler, node_ids=range(1, num_nodes + 1))


def _app(mod: object = secaggplus_mod) -> ClientApp:
    app = ClientApp(mods=[mod])  # type: ignore[list-item]
    app.train()(_train)
    return app


def _start(strategy: SecAggPlus, grid: FakeGrid, rounds: int = 1) -> object:
    return strategy.start(
        grid,
        initial_arrays=ArrayRecord({"w": np.zeros(4, np.float32)}),
        num_rounds=rounds,
        timeout=5.0,
    )


def _fedavg() -> FedAvg:
    return FedAvg(fraction_evaluate=0.0, min_train_nodes=2, rng=np.random.default_rng(0))


@pytest.mark.parametrize("stage", Stage.ALL)
def test_a_node_that_misses_a_stage_deadline_is_dropped_and_the_round_goes_on(stage: str) -> None:
    grid = _grid(_app(), 8, silent={(4, stage)})

    result = _start(SecAggPlus(_fedavg(), config=CONFIG, rng=np.random.default_rng(0)), grid)

    included = [n for n in range(1, 9) if stage == Stage.UNMASK or n != 4]
    expected = sum(n * n for n in included) / sum(included)  # weight n, update n
    np.testing.assert_allclose(result.arrays["w"], expected, atol=1e-3)  # type: ignore[attr-defined]
    train = result.history.rounds[0].train  # type: ignore[attr-defined]
    if stage == Stage.UNMASK:
        assert (train.replied, train.late) == (8, 0)
    else:
        assert (train.replied, train.late) == (7, 1)
        assert "no reply from node 4 within 5 s" in train.errors[0]


def test_too_many_missed_deadlines_abort_the_run_with_a_clear_error() -> None:
    silent = {(n, Stage.MASKED_INPUT) for n in (1, 2, 3, 4, 5)}
    grid = _grid(_app(), 8, silent=silent)

    with pytest.raises(
        SecAggAbortedError,
        match=r"SecAgg\+ aborted: .*(masked inputs arrived|masks can only be removed)",
    ):
        _start(SecAggPlus(_fedavg(), config=CONFIG, rng=np.random.default_rng(0)), grid)


def test_a_failing_handler_drops_only_that_node() -> None:
    app = ClientApp(mods=[secaggplus_mod])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        if context.node_id == 2:
            raise RuntimeError("disk full")
        return _train(message, context)

    result = _start(
        SecAggPlus(_fedavg(), config=CONFIG, rng=np.random.default_rng(0)), _grid(app, 6)
    )

    included = [1, 3, 4, 5, 6]
    np.testing.assert_allclose(
        result.arrays["w"],
        sum(n * n for n in included) / sum(included),
        atol=1e-3,  # type: ignore[attr-defined]
    )
    train_summary = result.history.rounds[0].train  # type: ignore[attr-defined]
    assert train_summary.failed == 1 and "disk full" in train_summary.errors[0]


def test_secure_rounds_compose_with_a_server_optimizer_over_several_rounds() -> None:
    from pollinate.strategy import FedAvgM

    def strategy(secure: bool) -> object:
        inner = FedAvgM(
            server_learning_rate=0.5,
            server_momentum=0.9,
            fraction_evaluate=0.0,
            rng=np.random.default_rng(0),
        )
        # max_weight close to the real weights (1..6) keeps the weighted update's levels.
        config = SecAggConfig(
            num_shares=5, reconstruction_threshold=3, clipping_range=16.0, max_weight=10.0
        )
        return SecAggPlus(inner, config=config, send_delta=True) if secure else inner

    plain = strategy(False).start(  # type: ignore[attr-defined]
        FakeGrid(lambda m: _train(m, Context(0, m.metadata.dst_node_id)), node_ids=range(1, 7)),
        initial_arrays=ArrayRecord({"w": np.zeros(4, np.float32)}),
        num_rounds=3,
    )
    secure = _start(strategy(True), _grid(_app(), 6), rounds=3)  # type: ignore[arg-type]

    np.testing.assert_allclose(secure.arrays["w"], plain.arrays["w"], atol=2e-4)  # type: ignore[attr-defined]


def test_distributed_dp_noise_sums_to_the_calibrated_central_noise() -> None:
    # Nodes return the global model unchanged, so the aggregate is pure noise: the mean
    # of n node noises of std z*C/sqrt(n) each has std z*C/n.
    n, z, c, size = 8, 2.0, 1.0, 20_000
    app = ClientApp(mods=[make_secaggplus_mod(rng=np.random.default_rng(5))])

    @app.train()
    def same(message: Message, context: Context) -> Message:
        arrays = message.content.get_kind(keys.ARRAYS, ArrayRecord)
        return message.reply(
            RecordDict({keys.ARRAYS: arrays, keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 1})})
        )

    strategy = SecAggPlus(
        _fedavg(),
        config=SecAggConfig(num_shares=5, reconstruction_threshold=3, clipping_range=8.0),
        noise_multiplier=z,
        clipping_norm=c,
        rng=np.random.default_rng(0),
    )
    result = strategy.start(
        _grid(app, n), initial_arrays=ArrayRecord({"w": np.zeros(size)}), num_rounds=1
    )

    noise = result.arrays["w"]
    assert abs(noise.mean()) < 5 * z * c / n / np.sqrt(size)
    assert noise.std() == pytest.approx(z * c / n, rel=0.05)


def test_distributed_dp_clips_each_update_to_the_clipping_norm() -> None:
    app = ClientApp(mods=[secaggplus_mod])

    @app.train()
    def huge(message: Message, context: Context) -> Message:
        arrays = message.content.get_kind(keys.ARRAYS, ArrayRecord)
        big = ArrayRecord({"w": arrays["w"] + 3.0})  # norm 6 per node
        return message.reply(
            RecordDict({keys.ARRAYS: big, keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 1})})
        )

    strategy = SecAggPlus(
        _fedavg(),
        config=CONFIG,
        noise_multiplier=1e-9,
        clipping_norm=1.0,
        rng=np.random.default_rng(0),
    )
    result = strategy.start(
        _grid(app, 5), initial_arrays=ArrayRecord({"w": np.zeros(4)}), num_rounds=1
    )

    np.testing.assert_allclose(result.arrays["w"], 0.5, atol=1e-3)  # each update scaled to norm 1


def test_settings_are_validated_when_made() -> None:
    with pytest.raises(ConfigError, match="reconstruction_threshold must be an int within"):
        SecAggConfig(num_shares=3, reconstruction_threshold=4)
    with pytest.raises(ConfigError, match="quantization_range"):
        SecAggConfig(modulus_bits=16, quantization_range=2**20)
    with pytest.raises(ConfigError, match="positive clipping_norm"):
        SecAggPlus(FedAvg(), noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="wraps a Strategy"):
        SecAggPlus("FedAvg")  # type: ignore[arg-type]


def test_over_selection_is_off_for_secure_training() -> None:
    strategy = SecAggPlus(FedAvg(over_selection=2.0))
    assert strategy.keep_first(keys.TRAIN, 10) is None
    assert ErrorCode.TIMEOUT  # the grid reports missed deadlines with this code


def test_distributed_dp_reports_epsilon_per_round_and_stops_at_the_budget() -> None:
    from pollinate.privacy import RdpAccountant

    app = ClientApp(mods=[secaggplus_mod])

    @app.train()
    def same(message: Message, context: Context) -> Message:
        arrays = message.content.get_kind(keys.ARRAYS, ArrayRecord)
        return message.reply(
            RecordDict({keys.ARRAYS: arrays, keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 1})})
        )

    z = 1.0
    budget = RdpAccountant(sampling="fixed-size")
    for _ in range(2):
        budget.step(noise_multiplier=z, sample_rate=1.0)
    strategy = SecAggPlus(
        _fedavg(),
        config=CONFIG,
        noise_multiplier=z,
        clipping_norm=1.0,
        rng=np.random.default_rng(0),
        max_epsilon=budget.epsilon(1e-5) * 1.01,  # room for 2 rounds, not 3
    )
    # Act
    result = strategy.start(
        _grid(app, 5), initial_arrays=ArrayRecord({"w": np.zeros(4)}), num_rounds=5
    )
    # Assert: every node took part, so each round is accounted at the full multiplier
    epsilons = [r.train.metrics["dp-epsilon"] for r in result.history.rounds if r.train]
    assert len(epsilons) == 2 and epsilons[0] < epsilons[1]
    assert epsilons[1] == pytest.approx(budget.epsilon(1e-5))
    assert "privacy budget spent" in (result.history.stopped_reason or "")
    restored = SecAggPlus(_fedavg(), config=CONFIG, noise_multiplier=z, clipping_norm=1.0)
    restored.load_state(strategy.state())
    assert restored.epsilon() == pytest.approx(strategy.epsilon())
