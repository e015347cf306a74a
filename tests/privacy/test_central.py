"""CentralDP: clipped, noised, accounted rounds; a clean stop at the budget; resumable."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.client import ClientApp
from pollinate.errors import AggregationError, ConfigError
from pollinate.privacy import (
    CLIP_NORM_KEY,
    CLIPPED_KEY,
    DELTA_KEY,
    EPSILON_KEY,
    AdaptiveClipping,
    CentralDP,
    FixedClipping,
    RdpAccountant,
    clipping_mod,
    l2_norm,
)
from pollinate.records import ArrayRecord, ConfigRecord, Context, Message, RecordDict, keys
from pollinate.runtime.simulation import run_simulation
from pollinate.server import ServerApp
from pollinate.strategy import FedAvg, FedNova, Krum, Strategy
from pollinate.testing.conformance import check_strategy
from pollinate.testing.fakes import FakeGrid, linear_node, make_reply


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def shifted_node(shift: float):
    """Every node returns the global arrays plus ``shift`` in every entry."""

    def node(message: Message) -> Message:
        arrays = message.content.get_kind(keys.ARRAYS, ArrayRecord)
        out = ArrayRecord({k: v + np.asarray(shift, v.dtype) for k, v in arrays.items()})
        return make_reply(message, out, num_examples=message.metadata.dst_node_id)

    return node


def test_central_dp_passes_the_strategy_conformance_check() -> None:
    check_strategy(
        lambda seed: CentralDP(
            FedAvg(fraction_train=0.5, rng=rng(seed)),
            noise_multiplier=1.0,
            clipping=FixedClipping(1.0),
            rng=rng(seed + 1),
        )
    )


def test_the_noise_on_the_mean_has_the_calibrated_std() -> None:
    # 10 nodes send the same small update (norm < C): what is left after subtracting it
    # is the noise alone, N(0, (sigma * C / m)^2) in each of 100k entries.
    size, shift, clip, sigma, nodes = 100_000, 1e-6, 2.0, 1.5, 10
    initial = ArrayRecord({"w": np.zeros(size, np.float64)})
    strategy = CentralDP(
        FedAvg(fraction_evaluate=0.0, rng=rng(0)),
        noise_multiplier=sigma,
        clipping=FixedClipping(clip),
        rng=rng(1),
    )
    result = strategy.start(
        FakeGrid(shifted_node(shift), node_ids=range(1, nodes + 1)),
        initial_arrays=initial,
        num_rounds=1,
    )
    noise = result.arrays["w"] - shift
    assert np.std(noise) == pytest.approx(sigma * clip / nodes, rel=0.02)
    assert abs(np.mean(noise)) < 5 * sigma * clip / nodes / np.sqrt(size)


def test_server_clipping_bounds_each_nodes_contribution() -> None:
    # Node 1 sends a huge update, the others none: the mean moves by at most C / m.
    clip, nodes = 0.5, 5

    def one_outlier(message: Message) -> Message:
        arrays = message.content.get_kind(keys.ARRAYS, ArrayRecord)
        factor = 1e6 if message.metadata.dst_node_id == 1 else 0.0
        out = ArrayRecord({k: v + np.asarray(factor, v.dtype) for k, v in arrays.items()})
        return make_reply(message, out, num_examples=1000 if factor else 1)

    initial = ArrayRecord({"w": np.zeros(8, np.float32), "b": np.zeros(2, np.float32)})
    strategy = CentralDP(
        FedAvg(fraction_evaluate=0.0, rng=rng(0)),
        noise_multiplier=1e-9,  # negligible noise: see the clipping alone
        clipping=FixedClipping(clip),
        rng=rng(1),
    )
    result = strategy.start(
        FakeGrid(one_outlier, node_ids=range(1, nodes + 1)), initial_arrays=initial, num_rounds=1
    )
    # Equal weights: the outlier's 1000 examples do not buy it more influence.
    assert l2_norm(result.arrays) == pytest.approx(clip / nodes, rel=1e-4)


def test_each_round_reports_epsilon_at_delta_as_the_accountant_computes_it() -> None:
    strategy = CentralDP(
        FedAvg(fraction_train=0.25, fraction_evaluate=0.0, rng=rng(0)),
        noise_multiplier=1.2,
        clipping=FixedClipping(1.0),
        delta=1e-4,
        rng=rng(1),
    )
    result = strategy.start(
        FakeGrid(linear_node, node_ids=range(1, 21)),
        initial_arrays=ArrayRecord({"w": np.zeros(3, np.float32)}),
        num_rounds=4,
    )
    reference = RdpAccountant(sampling="fixed-size")
    for record in result.history.rounds:
        reference.step(noise_multiplier=1.2, sample_rate=5 / 20)
        assert record.train is not None
        assert record.train.metrics[EPSILON_KEY] == pytest.approx(reference.epsilon(1e-4))
        assert record.train.metrics[DELTA_KEY] == 1e-4
        assert record.train.metrics[CLIP_NORM_KEY] == 1.0
    assert strategy.epsilon() == pytest.approx(reference.epsilon(1e-4))
    assert result.history.stopped_reason is None


def _numpy_client() -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(message: Message, context: Context) -> Message:
        arrays = message.content.get_kind(keys.ARRAYS, ArrayRecord)
        target = np.full(4, float(context.node_config[keys.PARTITION_ID]), np.float32)
        new = ArrayRecord({"w": arrays["w"] + 0.5 * (target - arrays["w"])})
        return make_reply(message, new, num_examples=10)

    return app


def test_a_simulated_run_reports_epsilon_every_round_and_stops_at_max_epsilon() -> None:
    server = ServerApp()

    @server.main()
    def main(grid, context):
        strategy = CentralDP(
            FedAvg(fraction_train=0.5, fraction_evaluate=0.0, rng=rng(0)),
            noise_multiplier=2.0,
            clipping=FixedClipping(1.0),
            max_epsilon=10.0,
            rng=rng(1),
        )
        return strategy.start(
            grid, initial_arrays=ArrayRecord({"w": np.zeros(4, np.float32)}), num_rounds=50
        )

    result = run_simulation(server, _numpy_client(), num_nodes=6)

    epsilons = [r.train.metrics[EPSILON_KEY] for r in result.history.rounds]
    assert 1 <= len(epsilons) < 50, "the budget should end the run early"
    assert epsilons == sorted(epsilons) and epsilons[-1] <= 10.0
    reference = RdpAccountant(sampling="fixed-size")
    reference.step(noise_multiplier=2.0, sample_rate=0.5, num_steps=len(epsilons) + 1)
    assert reference.epsilon(1e-5) > 10.0, "one more round would have overspent"
    reason = result.history.stopped_reason
    assert reason is not None and f"round {len(epsilons) + 1} would take epsilon" in reason
    assert "max_epsilon 10" in reason


def test_clipping_on_nodes_sends_the_norm_and_adapts_it_from_their_reports() -> None:
    app = ClientApp(mods=[clipping_mod])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        arrays = message.content.get_kind(keys.ARRAYS, ArrayRecord)
        return make_reply(message, ArrayRecord({"w": arrays["w"] + 100.0}), num_examples=1)

    server = ServerApp()
    sent_norms: list[float] = []

    @server.main()
    def main(grid, context):
        strategy = CentralDP(
            FedAvg(fraction_evaluate=0.0, rng=rng(0)),
            noise_multiplier=0.5,
            clipping=AdaptiveClipping(1.0, learning_rate=0.2, clipped_count_stddev=0.5),
            clip_on="nodes",
            rng=rng(1),
        )
        return strategy.start(
            grid, initial_arrays=ArrayRecord({"w": np.zeros(4, np.float32)}), num_rounds=3
        )

    result = run_simulation(server, app, num_nodes=4)
    sent_norms = [r.train.metrics[CLIP_NORM_KEY] for r in result.history.rounds]
    # Every update is clipped (norm 200 > C): the norm grows each round, by about
    # exp(0.2 * 0.5) when the noised unclipped share is near 0.
    assert sent_norms[0] == 1.0
    assert sent_norms[0] < sent_norms[1] < sent_norms[2]


def test_adaptive_clipping_on_nodes_needs_their_clipped_reports() -> None:
    strategy = CentralDP(
        FedAvg(fraction_evaluate=0.0, rng=rng(0)),
        noise_multiplier=0.5,
        clipping=AdaptiveClipping(1.0, clipped_count_stddev=0.5),
        clip_on="nodes",
        rng=rng(1),
    )
    grid = FakeGrid(linear_node, node_ids=[1, 2, 3])
    with pytest.raises(AggregationError, match=rf"no '{CLIPPED_KEY}' metric.*clipping_mod"):
        strategy.start(
            grid, initial_arrays=ArrayRecord({"w": np.zeros(2, np.float32)}), num_rounds=1
        )
    configs = [m.content.get_kind(keys.CONFIG, type(m.content[keys.CONFIG])) for m in grid.sent]
    assert all(c[CLIP_NORM_KEY] == 1.0 for c in configs)


class DurableGrid(FakeGrid):
    """Keeps checkpoints like a server's state store; can crash at a chosen round."""

    def __init__(self, crash_at_round: int | None = None) -> None:
        super().__init__(self._node, node_ids=range(1, 21))
        self.crash_at_round = crash_at_round
        self.saved: tuple[int, RecordDict] | None = None

    def _node(self, message: Message) -> Message:
        if message.metadata.group_id == str(self.crash_at_round):
            self.crash_at_round = None
            raise RuntimeError("server crash")
        return linear_node(message, scale=0.1)

    def save_checkpoint(self, server_round: int, state: RecordDict) -> None:
        self.saved = (server_round, state)

    def load_checkpoint(self) -> tuple[int, RecordDict] | None:
        return self.saved


def test_a_resumed_run_keeps_its_budget_clip_norm_and_noise() -> None:
    def factory() -> CentralDP:
        return CentralDP(
            FedAvg(fraction_train=0.5, fraction_evaluate=0.0, rng=rng(1)),
            noise_multiplier=1.0,
            clipping=AdaptiveClipping(0.5, clipped_count_stddev=1.0),
            rng=rng(2),
        )

    initial = ArrayRecord({"w": np.zeros(4, np.float32)})
    expected = factory().start(DurableGrid(), initial_arrays=initial, num_rounds=5)
    grid = DurableGrid(crash_at_round=3)
    with pytest.raises(RuntimeError):
        factory().start(grid, initial_arrays=initial, num_rounds=5)
    fresh = factory()  # a new process: only the checkpoint survives
    resumed = fresh.start(grid, initial_arrays=initial, num_rounds=5)

    assert resumed.arrays["w"].tobytes() == expected.arrays["w"].tobytes()
    metrics = [r.train.metrics for r in resumed.history.rounds]
    assert metrics == [r.train.metrics for r in expected.history.rounds]
    assert len(fresh.accountant.spent()) == 5


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: CentralDP(FedNova(), noise_multiplier=1.0, clipping=FixedClipping(1.0)),
            "overrides",
        ),
        (
            lambda: CentralDP(
                FedAvg(aggregator=Krum(num_byzantine=1)),
                noise_multiplier=1.0,
                clipping=FixedClipping(1.0),
            ),
            "order- or distance-based",
        ),
        (
            lambda: CentralDP(_NotFedAvg(), noise_multiplier=1.0, clipping=FixedClipping(1.0)),
            "FedAvg-family",
        ),
        (
            lambda: CentralDP(FedAvg(), noise_multiplier=0.0, clipping=FixedClipping(1.0)),
            "positive",
        ),
        (
            lambda: CentralDP(
                FedAvg(),
                noise_multiplier=1.0,
                clipping=FixedClipping(1.0),
                clip_on="client",  # type: ignore[arg-type]
            ),
            "clip_on",
        ),
        (
            lambda: CentralDP(
                FedAvg(), noise_multiplier=1.0, clipping=FixedClipping(1.0), delta=1.0
            ),
            "delta",
        ),
        (
            lambda: CentralDP(
                FedAvg(),
                noise_multiplier=4.0,
                clipping=AdaptiveClipping(1.0, clipped_count_stddev=1.0),
            ),
            "leaves nothing for the updates",
        ),
    ],
)
def test_what_central_dp_cannot_protect_is_refused_with_the_reason(build, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_integer_arrays_in_the_model_are_refused_before_any_round() -> None:
    strategy = CentralDP(FedAvg(), noise_multiplier=1.0, clipping=FixedClipping(1.0))
    grid = FakeGrid(linear_node, node_ids=[1, 2])
    with pytest.raises(ConfigError, match="'steps' is int64"):
        strategy.start(
            grid,
            initial_arrays=ArrayRecord(
                {"w": np.zeros(2, np.float32), "steps": np.zeros(1, np.int64)}
            ),
            num_rounds=1,
        )
    assert grid.sent == []


def test_the_wrapped_strategy_is_not_changed() -> None:
    inner = FedAvg()
    CentralDP(inner, noise_multiplier=1.0, clipping=FixedClipping(1.0))
    assert repr(inner.aggregator) == "WeightedMean()"


class _NotFedAvg(Strategy):
    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        return []

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        return None, None

    def configure_evaluate(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        return []

    def aggregate_evaluate(self, server_round, replies):  # type: ignore[no-untyped-def]
        return None


def test_poisson_accounting_of_a_fixed_size_sample_is_refused() -> None:
    # FedAvg draws a fixed number of nodes: Poisson accounting would understate epsilon.
    from pollinate.privacy import PldAccountant

    strategy = CentralDP(
        FedAvg(fraction_train=0.5, min_available_nodes=4),
        noise_multiplier=1.0,
        clipping=FixedClipping(1.0),
        accountant=PldAccountant(),
        rng=np.random.default_rng(0),
    )
    grid = FakeGrid(linear_node, node_ids=range(1, 5))
    arrays = ArrayRecord({"w": np.zeros(3)})
    with pytest.raises(ConfigError, match=r"Poisson sampling.*fixed-size"):
        strategy.configure_train(1, arrays, ConfigRecord(), grid)
