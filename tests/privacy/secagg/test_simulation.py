"""End to end: FedAvg wrapped in SecAggPlus equals plain FedAvg within quantization
error, on the inline and the process runtime, and analytics sum securely."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate import ClientApp, Context, FedAvg, Grid, Message, ServerApp, run_simulation
from pollinate.privacy.secagg import (
    STATE_KEY,
    SecAggConfig,
    SecAggPlus,
    secaggplus_mod,
    secure_sum,
)
from pollinate.records import ArrayRecord, MetricRecord, RecordDict, keys
from pollinate.strategy import Result

NUM_NODES = 6
CONFIG = SecAggConfig(
    num_shares=4, reconstruction_threshold=3, clipping_range=4.0, quantization_range=2**20
)


def _train(message: Message, context: Context) -> Message:
    """A deterministic 'training': the global model plus a node- and round-specific step."""
    arrays = message.content.get_kind(keys.ARRAYS, ArrayRecord)
    server_round = int(message.content[keys.CONFIG][keys.SERVER_ROUND])  # type: ignore[arg-type]
    rng = np.random.default_rng([context.node_id, server_round])
    new = ArrayRecord(
        {name: (a + rng.uniform(-0.5, 0.5, a.shape)).astype(a.dtype) for name, a in arrays.items()}
    )
    metrics = MetricRecord({keys.NUM_EXAMPLES: 10 * context.node_id, "train-loss": 0.5})
    return message.reply(RecordDict({keys.ARRAYS: new, keys.METRICS: metrics}))


secure_app = ClientApp(mods=[secaggplus_mod])
secure_app.train()(_train)
plain_app = ClientApp()
plain_app.train()(_train)


@secure_app.query("histogram")
def _histogram(message: Message, context: Context) -> Message:
    counts = np.bincount([context.node_id % 3, (context.node_id * 7) % 5], minlength=5)
    return message.reply(RecordDict({keys.ARRAYS: ArrayRecord({"counts": counts})}))


def _initial() -> ArrayRecord:
    return ArrayRecord({"w": np.zeros((4, 3), np.float32), "b": np.linspace(-1, 1, 5)})


def _server(secure: bool) -> ServerApp:
    def main(grid: Grid, context: Context) -> Result:
        strategy = FedAvg(fraction_evaluate=0.0, rng=np.random.default_rng(0))
        if secure:
            strategy = SecAggPlus(strategy, config=CONFIG, rng=np.random.default_rng(1))  # type: ignore[assignment]
        return strategy.start(grid, initial_arrays=_initial(), num_rounds=2, timeout=60.0)

    return ServerApp(main)


@pytest.mark.parametrize("runtime", ["inline", "process"])
def test_secure_fedavg_equals_plain_fedavg_within_quantization_error(runtime: str) -> None:
    plain = run_simulation(_server(False), plain_app, num_nodes=NUM_NODES, runtime="inline")
    secure = run_simulation(
        _server(True), secure_app, num_nodes=NUM_NODES, runtime=runtime, num_workers=2
    )

    # Each entry of the mean is off by < one step per node, and weights r_i <= 1 scale
    # the update down (max_weight 1000): the error of the mean is below
    # n * step / sum(r_i) per round, two rounds here.
    weights = 10 * np.arange(1, NUM_NODES + 1) / CONFIG.max_weight
    bound = 2 * NUM_NODES * CONFIG.step / weights.sum()
    for name in ("w", "b"):
        assert secure.arrays[name].dtype == plain.arrays[name].dtype
        np.testing.assert_allclose(secure.arrays[name], plain.arrays[name], atol=bound, rtol=0)
        assert not np.array_equal(secure.arrays[name], _initial()[name])
    train = secure.history.rounds[-1].train
    assert train is not None
    assert (train.sampled, train.replied, train.failed) == (NUM_NODES, NUM_NODES, 0)
    # Only the total weight is learned: the nodes' own metrics never left them.
    assert train.metrics == {keys.NUM_EXAMPLES: pytest.approx(10 * 21, rel=1e-4)}


def test_a_node_without_the_mod_gets_a_clear_error() -> None:
    from pollinate.privacy.secagg import SecAggAbortedError

    with pytest.raises(SecAggAbortedError, match="secaggplus_mod"):
        run_simulation(_server(True), plain_app, num_nodes=NUM_NODES)


def test_node_state_is_forgotten_after_the_round() -> None:
    seen: list[bool] = []

    def spy(message: Message, context: Context, call_next):  # type: ignore[no-untyped-def]
        reply = call_next(message, context)
        seen.append(STATE_KEY in context.state)
        return reply

    app = ClientApp(mods=[spy, secaggplus_mod])
    app.train()(_train)
    run_simulation(_server(True), app, num_nodes=NUM_NODES)
    # Every node holds a session from setup to its unmask answer, then forgets it.
    per_round = 4 * NUM_NODES
    assert len(seen) == 2 * per_round
    assert seen[: 3 * NUM_NODES] == [True] * (3 * NUM_NODES)
    assert seen[3 * NUM_NODES : per_round] == [False] * NUM_NODES


@pytest.mark.parametrize("runtime", ["inline", "process"])
def test_secure_sum_of_a_histogram_query(runtime: str) -> None:
    def main(grid: Grid, context: Context) -> object:
        return secure_sum(
            grid,
            grid.nodes(),
            RecordDict(),
            message_type="query.histogram",
            config=SecAggConfig(
                num_shares=4,
                reconstruction_threshold=3,
                clipping_range=100.0,
                quantization_range=2**24,
            ),
            timeout=60.0,
        )

    result = run_simulation(
        ServerApp(main), secure_app, num_nodes=NUM_NODES, runtime=runtime, num_workers=2
    )

    expected = sum(np.bincount([n % 3, (n * 7) % 5], minlength=5) for n in range(1, NUM_NODES + 1))
    assert result.arrays["counts"].dtype == np.int64
    np.testing.assert_array_equal(result.arrays["counts"], expected)
    assert result.survivors == list(range(1, NUM_NODES + 1))
