"""examples/xgboost: the bagged ensemble is the mean of the nodes' models, bad trees are
refused with a clear error, and the example runs and reaches the metric its README says."""

from __future__ import annotations

import doctest
import importlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from pollinate.errors import AggregationError
from pollinate.records import ArrayRecord, Message
from pollinate.testing.fakes import FakeGrid, make_reply

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "xgboost"


@pytest.fixture(scope="module")
def example() -> Iterator[SimpleNamespace]:
    """The example's modules (it is a project directory, not an installed package)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(EXAMPLE))
        yield SimpleNamespace(
            **{
                name: importlib.import_module(f"xgboost_bagging.{name}")
                for name in ("bagging", "strategy", "task")
            }
        )


def _params(**extra: Any) -> dict[str, Any]:
    params = {"max_depth": 2, "eta": 0.3, "base_score": 0.5, "nthread": 1, "tree_method": "hist"}
    return {"objective": "binary:logistic", **params, **extra}


def _booster(raw: bytes) -> xgb.Booster:
    booster = xgb.Booster(params={"nthread": 1})
    booster.load_model(bytearray(raw))
    return booster


def _margin(model: xgb.Booster | bytes, x: np.ndarray) -> np.ndarray:
    booster = model if isinstance(model, xgb.Booster) else _booster(model)
    return np.asarray(booster.predict(xgb.DMatrix(x), output_margin=True), np.float64)


def _tree_list(raw: bytes) -> list[dict[str, Any]]:
    trees: list[dict[str, Any]] = json.loads(raw)["learner"]["gradient_booster"]["model"]["trees"]
    return trees


def _three_nodes(example: SimpleNamespace) -> list[Any]:
    data = example.task.load_data(3, 0)
    return [data.partition(i) for i in range(3)]


# -- the combination ---------------------------------------------------------------------


def test_combined_ensemble_is_exactly_the_weighted_mean_of_the_nodes_models(
    example: SimpleNamespace,
) -> None:
    # Arrange: a global model of 2 trees; each node boosts 2 more on its own data.
    parts = _three_nodes(example)
    x_all = np.concatenate([p.x_train for p in parts])
    global_booster = xgb.train(_params(), xgb.DMatrix(parts[0].x_train, label=parts[0].y_train), 2)
    global_raw = bytes(global_booster.save_raw(raw_format="json"))
    updates, full_models = [], []
    for weight, part in zip((3.0, 1.0, 2.0), parts, strict=True):
        new_trees, _ = example.task.train(
            global_raw, part.x_train, part.y_train, params=_params(), num_local_rounds=2
        )
        updates.append((new_trees, weight))
        # What the node holds: the global trees plus its new ones, boosted by XGBoost.
        full_models.append(
            xgb.train(
                _params(),
                xgb.DMatrix(part.x_train, label=part.y_train),
                2,
                xgb_model=_booster(global_raw),
            )
        )

    # Act
    combined = example.bagging.combine_ensembles(global_raw, updates)

    # Assert: one model, 2 + 3 * 2 trees, whose margin is the weighted mean of the nodes'.
    expected = sum(
        w / 6.0 * _margin(m, x_all) for (_, w), m in zip(updates, full_models, strict=True)
    )
    np.testing.assert_allclose(_margin(combined, x_all), expected, rtol=1e-5, atol=1e-5)
    booster = _booster(combined)
    assert len(_tree_list(combined)) == 8
    assert booster.num_boosted_rounds() == 8  # each node's iterations stay separate
    assert [t["id"] for t in _tree_list(combined)] == list(range(8))


def test_first_round_is_the_weighted_mean_of_independently_trained_ensembles(
    example: SimpleNamespace,
) -> None:
    parts = _three_nodes(example)[:2]
    updates = [
        (example.task.train(b"", p.x_train, p.y_train, params=_params(), num_local_rounds=3)[0], w)
        for p, w in zip(parts, (1.0, 4.0), strict=True)
    ]

    combined = example.bagging.combine_ensembles(b"", updates)

    x = parts[0].x_test
    expected = 0.2 * _margin(updates[0][0], x) + 0.8 * _margin(updates[1][0], x)
    np.testing.assert_allclose(_margin(combined, x), expected, rtol=1e-5, atol=1e-5)


def test_multiclass_ensembles_keep_each_trees_output_group(example: SimpleNamespace) -> None:
    # Three classes: three trees per boosting iteration, tree_info says which class each serves.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 4))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    params = _params(objective="multi:softprob", num_class=3)
    models = [
        bytes(xgb.train(params, xgb.DMatrix(x[i::2], label=y[i::2]), 2).save_raw("json"))
        for i in range(2)
    ]

    combined = example.bagging.combine_ensembles(b"", [(models[0], 1.0), (models[1], 1.0)])

    doc = json.loads(combined)["learner"]["gradient_booster"]["model"]
    assert doc["tree_info"] == [0, 1, 2] * 4
    assert doc["iteration_indptr"] == [0, 3, 6, 9, 12]
    expected = 0.5 * _margin(models[0], x) + 0.5 * _margin(models[1], x)
    np.testing.assert_allclose(_margin(combined, x), expected, rtol=1e-5, atol=1e-5)


def test_combining_does_not_change_its_inputs(example: SimpleNamespace) -> None:
    tiny = example.bagging._tiny_model
    global_raw, update = tiny(leaf=1.0), tiny(leaf=2.0)
    ensemble = example.bagging.BaggedEnsemble(global_raw)
    ensemble.add(update, 2.0)
    first = ensemble.result()

    assert ensemble.result() == first  # result() is repeatable: nothing was scaled in place
    assert [t["split_conditions"] for t in _tree_list(first)] == [[1.0], [2.0]]


def test_bagging_doctests_pass(example: SimpleNamespace) -> None:
    failures, tried = doctest.testmod(example.bagging)
    assert tried > 0 and failures == 0


# -- untrusted trees are refused with a clear error -------------------------------------


def _edit(example: SimpleNamespace, change: Callable[[dict[str, Any]], None]) -> bytes:
    document = json.loads(example.bagging._tiny_model(leaf=1.0))
    change(document)
    return json.dumps(document).encode()


def _model_part(document: dict[str, Any]) -> dict[str, Any]:
    model: dict[str, Any] = document["learner"]["gradient_booster"]["model"]
    return model


def _tree(document: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = _model_part(document)["trees"][0]
    return tree


def _three_node_tree(document: dict[str, Any], *, left: list[int], right: list[int]) -> None:
    _tree(document).update(
        left_children=left,
        right_children=right,
        split_conditions=[0.5, 1.0, 2.0],
        base_weights=[0.0, 1.0, 2.0],
    )


BAD_MODELS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "no booster": (lambda d: d["learner"].pop("gradient_booster"), "learner.gradient_booster"),
    "dart": (lambda d: d["learner"]["gradient_booster"].update(name="dart"), "'dart'"),
    "infinite leaf": (lambda d: _tree(d).update(split_conditions=[float("inf")]), "finite"),
    "nan weight": (lambda d: _tree(d).update(base_weights=[float("nan")]), "finite"),
    "child out of range": (lambda d: _tree(d).update(left_children=[5]), "node indices"),
    "ragged node arrays": (
        lambda d: _tree(d).update(split_conditions=[1.0, 2.0]),
        "one entry per node",
    ),
    "one child": (
        lambda d: _three_node_tree(d, left=[1, -1, -1], right=[-1, -1, -1]),
        "both -1",
    ),
    "cycle": (
        lambda d: _three_node_tree(d, left=[1, 0, -1], right=[2, 2, -1]),
        "reached twice",
    ),
    "vector leaves": (lambda d: _tree(d)["tree_param"].update(size_leaf_vector="3"), "vector"),
    "bad iteration_indptr": (
        lambda d: _model_part(d).update(iteration_indptr=[0, 2]),
        "iteration_indptr",
    ),
    "tree_info too short": (lambda d: _model_part(d).update(tree_info=[]), "tree_info"),
    "other base_score": (
        lambda d: d["learner"]["learner_model_param"].update(base_score="[2E-1]"),
        "base_score",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MODELS))
def test_malformed_or_incompatible_trees_are_refused(example: SimpleNamespace, case: str) -> None:
    change, expected = BAD_MODELS[case]
    ensemble = example.bagging.BaggedEnsemble(example.bagging._tiny_model(leaf=1.0))

    with pytest.raises(AggregationError, match=expected) as raised:
        ensemble.add(_edit(example, change), 1.0, source="node 7")

    assert "node 7" in str(raised.value)


@pytest.mark.parametrize("raw", [b"\x80\x81 not json", b"[1, 2]", b'{"learner": 3}'])
def test_bytes_that_are_not_a_json_model_are_refused(example: SimpleNamespace, raw: bytes) -> None:
    with pytest.raises(AggregationError, match="save_raw\\('json'\\)"):
        example.bagging.BaggedEnsemble().add(raw, 1.0)


@pytest.mark.parametrize("weights", [[0.0, 0.0], []])
def test_nothing_to_combine_is_an_error(example: SimpleNamespace, weights: list[float]) -> None:
    ensemble = example.bagging.BaggedEnsemble()
    for weight in weights:
        ensemble.add(example.bagging._tiny_model(leaf=1.0), weight)

    with pytest.raises(AggregationError, match="nothing to combine"):
        ensemble.result()


@pytest.mark.parametrize("weight", [-1.0, float("nan")])
def test_bad_weights_are_refused(example: SimpleNamespace, weight: float) -> None:
    with pytest.raises(AggregationError, match="weight"):
        example.bagging.BaggedEnsemble().add(example.bagging._tiny_model(leaf=1.0), weight)


# -- the strategy -------------------------------------------------------------------------


def test_strategy_grows_the_global_ensemble_by_each_nodes_new_trees(
    example: SimpleNamespace,
) -> None:
    # Arrange: three nodes (ids 1-3) that boost 2 trees each on real data.
    parts = _three_nodes(example)
    task = example.task

    def node(message: Message) -> Message:
        part = parts[message.metadata.dst_node_id - 1]
        model = task.from_arrays(message.content["arrays"])
        new, loss = task.train(
            model, part.x_train, part.y_train, params=_params(), num_local_rounds=2
        )
        return make_reply(
            message, task.to_arrays(new), num_examples=len(part.y_train), **{"train-loss": loss}
        )

    grid = FakeGrid(node, node_ids=[1, 2, 3])
    strategy = example.strategy.FedXgbBagging(fraction_evaluate=0.0, rng=np.random.default_rng(0))

    # Act
    result = strategy.start(grid, initial_arrays=task.to_arrays(b""), num_rounds=2)

    # Assert
    final = task.from_arrays(result.arrays)
    assert example.bagging.num_trees(final) == 2 * 3 * 2
    train = result.history.rounds[-1].train
    assert train is not None
    assert train.metrics["num-examples"] == sum(len(p.y_train) for p in parts)
    x_test, y_test = task.load_data(3, 0).centralized_test()
    assert task.evaluate(final, x_test, y_test)["auc"] > 0.95


def test_strategy_names_the_node_whose_reply_holds_no_model(example: SimpleNamespace) -> None:
    def node(message: Message) -> Message:
        return make_reply(message, ArrayRecord({"w": np.zeros(3, np.float32)}), num_examples=5)

    strategy = example.strategy.FedXgbBagging(fraction_evaluate=0.0, rng=np.random.default_rng(0))

    with pytest.raises(AggregationError, match="node 2 has no 1-D uint8 array 'model'"):
        strategy.start(
            FakeGrid(node, node_ids=[2, 3]),
            initial_arrays=example.task.to_arrays(b""),
            num_rounds=1,
        )


def test_models_travel_as_their_own_json_bytes(example: SimpleNamespace) -> None:
    raw = example.bagging._tiny_model(leaf=1.0)

    arrays = example.task.to_arrays(raw)

    assert arrays.structure() == [("model", np.dtype(np.uint8), (len(raw),))]
    assert example.task.from_arrays(arrays) == raw


# -- the example itself ---------------------------------------------------------------------


def test_readme_gives_the_command_and_the_expected_metric() -> None:
    readme = (EXAMPLE / "README.md").read_text(encoding="utf-8")
    assert "    pollinate simulate .\n" in readme
    assert "accuracy" in readme and "AUC" in readme


def test_example_runs_and_reaches_its_metric(tmp_path: Path) -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pollinate.cli.main",
            "simulate",
            str(EXAMPLE),
            "--rounds",
            "3",
            "--runs-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    (history_path,) = tmp_path.glob("*/history.json")
    history = json.loads(history_path.read_text())
    assert history["initial_centralized"]["auc"] == 0.5  # no trees yet: a constant score
    last = history["rounds"][-1]
    assert last["centralized"]["auc"] > 0.97
    assert last["centralized"]["accuracy"] > 0.9
    assert last["evaluate"]["metrics"]["auc"] > 0.95
    assert last["train"]["replied"] == 5
