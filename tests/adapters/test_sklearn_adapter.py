"""scikit-learn estimators: coefficients out, and loading that continues training."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import (
    LinearRegression,
    LogisticRegression,
    Ridge,
    SGDClassifier,
    SGDRegressor,
)
from sklearn.neural_network import MLPClassifier, MLPRegressor

from pollinate.adapters import load_arrays, to_arrays
from pollinate.adapters.sklearn import initial_arrays, set_classes
from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord


def _digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x[:600] / 16.0, y[:600]


def _cancer() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    return (x - x.mean(0)) / x.std(0), y


def _quiet_fit(model: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(*args, **kwargs)


@pytest.mark.parametrize(
    ("model", "names"),
    [
        (LogisticRegression(max_iter=200), ["coef", "intercept"]),
        (SGDClassifier(random_state=0), ["coef", "intercept"]),
        (
            MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0),
            ["layers.0.coef", "layers.0.intercept", "layers.1.coef", "layers.1.intercept"],
        ),
    ],
)
def test_fitted_classifier_round_trips_into_an_unfitted_one(model: Any, names: list[str]) -> None:
    x, y = _digits()
    _quiet_fit(model, x, y)
    record = to_arrays(model)
    assert list(record) == names
    fresh = set_classes(type(model)(**model.get_params()), np.arange(10))
    loaded = load_arrays(fresh, record)
    assert loaded is fresh
    assert np.array_equal(fresh.predict(x), model.predict(x))


@pytest.mark.parametrize(
    "model",
    [
        LinearRegression(),
        Ridge(alpha=0.5),
        SGDRegressor(random_state=0),
        MLPRegressor(hidden_layer_sizes=(4,), max_iter=5, random_state=0),
    ],
)
def test_fitted_regressor_round_trips_into_an_unfitted_one(model: Any) -> None:
    x, y = _cancer()
    _quiet_fit(model, x, y.astype(float))
    fresh = load_arrays(type(model)(**model.get_params()), to_arrays(model))
    assert np.allclose(fresh.predict(x), model.predict(x))


def test_initial_arrays_match_what_fit_produces() -> None:
    x, y = _digits()
    xc, yc = _cancer()
    cases: list[tuple[Any, Any, dict[str, Any]]] = [
        (LogisticRegression(max_iter=300), (x, y), {"classes": np.arange(10)}),
        (LogisticRegression(), (xc, yc), {"classes": [0, 1]}),
        (SGDClassifier(), (xc, yc), {"classes": [0, 1]}),
        (LinearRegression(), (xc, yc.astype(float)), {}),
        (SGDRegressor(), (xc, yc.astype(float)), {}),
        (MLPClassifier(hidden_layer_sizes=(5, 3), max_iter=2), (x, y), {"classes": range(10)}),
        (MLPRegressor(hidden_layer_sizes=(5,), max_iter=2), (xc, yc.astype(float)), {}),
    ]
    for model, (features, labels), options in cases:
        initial = initial_arrays(
            model, num_features=features.shape[1], rng=np.random.default_rng(0), **options
        )
        fitted = to_arrays(_quiet_fit(model, features, labels))
        assert initial.structure() == fitted.structure(), type(model).__name__


def test_warm_start_fit_continues_from_the_loaded_model() -> None:
    x, y = _cancer()
    optimum = LogisticRegression(max_iter=1000).fit(x, y)
    cold = LogisticRegression(max_iter=1000).fit(x, y)
    warm = set_classes(LogisticRegression(warm_start=True, max_iter=1000), [0, 1])
    load_arrays(warm, to_arrays(optimum))
    warm.fit(x, y)
    # Starting at the optimum, lbfgs stops almost at once; from zeros it needs many steps.
    assert int(warm.n_iter_[0]) < int(cold.n_iter_[0]) // 2
    assert np.allclose(warm.coef_, optimum.coef_, atol=1e-3)


def test_mlp_partial_fit_continues_exactly_like_the_original() -> None:
    x, y = _digits()
    options = {
        "hidden_layer_sizes": (8,),
        "solver": "sgd",
        "momentum": 0.0,
        "learning_rate_init": 0.05,
        "shuffle": False,
        "random_state": 0,
    }
    original = MLPClassifier(**options).partial_fit(x, y, classes=np.arange(10))
    copy = set_classes(MLPClassifier(**options), np.arange(10))
    load_arrays(copy, to_arrays(original).copy())
    original.partial_fit(x[:300], y[:300])
    copy.partial_fit(x[:300], y[:300])
    for a, b in zip(original.coefs_, copy.coefs_, strict=True):
        assert np.allclose(a, b)


def test_sgd_partial_fit_with_classes_missing_locally() -> None:
    x, y = _digits()
    model = set_classes(SGDClassifier(random_state=0), np.arange(10))
    load_arrays(model, initial_arrays(model, num_features=64, classes=np.arange(10)))
    model.partial_fit(x[y < 5], y[y < 5], classes=np.arange(10))
    assert model.coef_.shape == (10, 64)
    assert model.score(x[y < 5], y[y < 5]) > 0.9


def test_loaded_arrays_are_writable_copies() -> None:
    record = initial_arrays(LogisticRegression(), num_features=3, classes=[0, 1])
    for array in record.values():
        array.flags.writeable = False
    model = load_arrays(set_classes(LogisticRegression(), [0, 1]), record)
    assert model.coef_.flags.writeable and not np.shares_memory(model.coef_, record["coef"])


def test_unfitted_classifier_without_classes_says_how_to_fix_it() -> None:
    record = initial_arrays(LogisticRegression(), num_features=3, classes=[0, 1])
    with pytest.raises(ConfigError, match=r"set_classes\(model, labels\)"):
        load_arrays(LogisticRegression(), record)


def test_classes_must_agree_with_the_output_units() -> None:
    record = initial_arrays(LogisticRegression(), num_features=3, classes=range(4))
    with pytest.raises(
        ConfigError, match=r"3 classes .* need 3 output units, but the arrays have 4"
    ):
        load_arrays(set_classes(LogisticRegression(), [0, 1, 2]), record)


def test_unfitted_estimator_cannot_be_sent() -> None:
    with pytest.raises(ConfigError, match=r"is not fitted.*initial_arrays"):
        to_arrays(SGDClassifier())


def test_fitted_estimator_checks_shapes() -> None:
    x, y = _cancer()
    model = LogisticRegression().fit(x, y)
    record = ArrayRecord({"coef": np.zeros((1, 5)), "intercept": np.zeros(1)})
    with pytest.raises(ConfigError, match=r"coef: model \(1, 30\), arrays \(1, 5\)"):
        load_arrays(model, record)


def test_unfitted_layouts_are_checked() -> None:
    with pytest.raises(ConfigError, match="expected keys coef and intercept"):
        load_arrays(LinearRegression(), ArrayRecord({"w": np.zeros(3)}))
    bad_chain = ArrayRecord(
        {
            "layers.0.coef": np.zeros((4, 3)),
            "layers.0.intercept": np.zeros(3),
            "layers.1.coef": np.zeros((5, 1)),
            "layers.1.intercept": np.zeros(1),
        }
    )
    with pytest.raises(ConfigError, match="layer 1 has coef"):
        load_arrays(MLPRegressor(), bad_chain)
    with pytest.raises(ConfigError, match="floating dtype"):
        load_arrays(
            LinearRegression(),
            ArrayRecord({"coef": np.zeros(3, np.int64), "intercept": np.zeros(())}),
        )


def test_initial_arrays_validates_its_arguments() -> None:
    with pytest.raises(ConfigError, match="needs classes"):
        initial_arrays(LogisticRegression(), num_features=3)
    with pytest.raises(ConfigError, match="num_features must be an int >= 1"):
        initial_arrays(Ridge(), num_features=0)
    with pytest.raises(ConfigError, match="is a regressor"):
        set_classes(Ridge(), [0, 1])
    with pytest.raises(ConfigError, match="at least two distinct labels"):
        set_classes(LogisticRegression(), [1, 1])
