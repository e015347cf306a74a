"""scikit-learn models: linear models and MLPs <-> ArrayRecord, with warm starts.

Design note. A scikit-learn estimator's learned state is a handful of attributes:

============================================  =========================================
estimator                                     arrays
============================================  =========================================
LogisticRegression, SGDClassifier,            ``coef`` (``coef_``), ``intercept``
SGDRegressor, LinearRegression, Ridge         (``intercept_``)
MLPClassifier, MLPRegressor                   ``layers.<i>.coef`` (``coefs_[i]``),
                                              ``layers.<i>.intercept`` (``intercepts_[i]``)
============================================  =========================================

``load_arrays`` sets them on the estimator, in place, as writable copies (scikit-learn
updates some of them in place during training). It works on a *fitted* estimator
(shapes must match) and on an *unfitted* one, which it initialises so that it can
``predict`` at once and continue training from the loaded model:

- ``warm_start=True`` then ``fit`` (LogisticRegression, SGD*, MLP*) starts from the
  loaded coefficients; ``partial_fit`` (SGD*, MLP*) continues from them too.
  LinearRegression and Ridge have a closed form: ``fit`` ignores the loaded values.
- A classifier must know its classes, because the arrays do not say which labels
  they score: call :func:`set_classes` once with every label of the federation
  (e.g. ``np.arange(10)``), or fit it once. Nodes whose local data lacks some class
  should train with ``partial_fit(X, y, classes=...)`` (SGDClassifier, MLPClassifier):
  ``fit`` with ``warm_start`` re-derives the classes from ``y`` and fails when a
  class is missing locally. (MLPClassifier applies that same check to ``partial_fit``
  when ``warm_start=True``: leave ``warm_start`` off when training with ``partial_fit``.)

:func:`initial_arrays` builds the first global model on the server without data:
zeros for linear models, Glorot-uniform weights for MLPs (as scikit-learn's own
initialisation, Glorot & Bengio, AISTATS 2010), seeded by ``rng``.

scikit-learn is a core dependency, but it is imported only when an estimator is used.
"""

from __future__ import annotations

import itertools
import sys
from typing import Any, Final, TypeVar, final

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pollinate.adapters._base import ArraySpec, check_arrays_match, import_framework
from pollinate.errors import ConfigError
from pollinate.records import ArrayRecord

__all__ = ["SUPPORTED_ESTIMATORS", "SklearnAdapter", "initial_arrays", "set_classes"]

_M = TypeVar("_M")
_E = TypeVar("_E")

_INSTALL_HINT = "pip install scikit-learn (a dependency of pollinate: reinstall pollinate)"

#: The estimators the adapter handles (and their subclasses), by scikit-learn name.
SUPPORTED_ESTIMATORS: Final[tuple[str, ...]] = (
    "LogisticRegression",
    "SGDClassifier",
    "SGDRegressor",
    "LinearRegression",
    "Ridge",
    "MLPClassifier",
    "MLPRegressor",
)


def _classes() -> dict[str, type]:
    """The supported estimator classes by name (imports scikit-learn)."""
    linear = import_framework("sklearn.linear_model", install_hint=_INSTALL_HINT)
    neural = import_framework("sklearn.neural_network", install_hint=_INSTALL_HINT)
    return {
        name: getattr(linear, name, None) or getattr(neural, name) for name in SUPPORTED_ESTIMATORS
    }


def _kind(model: object) -> str:
    """The supported base class of ``model`` by name, or raise ConfigError."""
    for name, cls in _classes().items():
        if isinstance(model, cls):
            return name
    raise ConfigError(
        f"the scikit-learn adapter handles {', '.join(SUPPORTED_ESTIMATORS)} (and their "
        f"subclasses), got {type(model).__name__}"
    )


def _is_mlp(kind: str) -> bool:
    return kind.startswith("MLP")


def _is_classifier(kind: str) -> bool:
    return kind in ("LogisticRegression", "SGDClassifier", "MLPClassifier")


def _outputs_for(num_classes: int) -> int:
    """Output units of a classifier over ``num_classes`` classes (one for binary)."""
    return 1 if num_classes == 2 else num_classes


def set_classes(estimator: _E, classes: ArrayLike) -> _E:
    """Tell an unfitted classifier its labels, so that arrays can be loaded into it.

    Give every label of the federation, in any order (they are sorted, as
    scikit-learn does): the coefficient rows follow that order.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> set_classes(LogisticRegression(), [1, 0]).classes_
    array([0, 1])
    """
    kind = _kind(estimator)
    if not _is_classifier(kind):
        raise ConfigError(f"{kind} is a regressor: it has no classes to set")
    labels = np.unique(np.asarray(classes))
    if labels.ndim != 1 or labels.size < 2:
        raise ConfigError(f"classes must list at least two distinct labels, got {classes!r}")
    estimator.classes_ = labels  # type: ignore[attr-defined]
    return estimator


def _mlp_layer_units(model: Any, num_features: int, num_outputs: int) -> list[int]:
    hidden = model.hidden_layer_sizes
    hidden = list(hidden) if hasattr(hidden, "__iter__") else [hidden]
    return [num_features, *(int(h) for h in hidden), num_outputs]


def initial_arrays(
    estimator: object,
    *,
    num_features: int,
    classes: ArrayLike | None = None,
    num_targets: int = 1,
    rng: np.random.Generator | None = None,
) -> ArrayRecord:
    """The first global model for ``estimator``'s kind, built without any data.

    Parameters
    ----------
    estimator:
        A (usually unfitted) supported estimator; only its kind and, for MLPs, its
        ``hidden_layer_sizes`` and ``activation`` are read.
    num_features:
        Number of input features.
    classes:
        The federation's labels (classifiers only; required for them).
    num_targets:
        Number of regression targets (regressors only).
    rng:
        Seeds the MLP initialisation (linear models start at zero).

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> record = initial_arrays(LogisticRegression(), num_features=30, classes=[0, 1])
    >>> record.structure()[0][2], record.structure()[1][2]
    ((1, 30), (1,))
    """
    kind = _kind(estimator)
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ConfigError(f"num_features must be an int >= 1, got {num_features!r}")
    if _is_classifier(kind):
        if classes is None:
            raise ConfigError(f"{kind} needs classes=[...] (every label of the federation)")
        num_classes = int(np.unique(np.asarray(classes)).size)
        if num_classes < 2:
            raise ConfigError(f"classes must list at least two distinct labels, got {classes!r}")
        outputs = _outputs_for(num_classes)
    else:
        if isinstance(num_targets, bool) or not isinstance(num_targets, int) or num_targets < 1:
            raise ConfigError(f"num_targets must be an int >= 1, got {num_targets!r}")
        outputs = num_targets
    if not _is_mlp(kind):
        if _is_classifier(kind) or outputs > 1:
            return ArrayRecord(
                {"coef": np.zeros((outputs, num_features)), "intercept": np.zeros(outputs)}
            )
        intercept_shape: tuple[int, ...] = (1,) if kind == "SGDRegressor" else ()
        return ArrayRecord({"coef": np.zeros(num_features), "intercept": np.zeros(intercept_shape)})
    rng = rng if rng is not None else np.random.default_rng()
    units = _mlp_layer_units(estimator, num_features, outputs)
    factor = 2.0 if getattr(estimator, "activation", "relu") == "logistic" else 6.0
    arrays: dict[str, NDArray[Any]] = {}
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(units)):
        bound = np.sqrt(factor / (fan_in + fan_out))
        arrays[f"layers.{i}.coef"] = rng.uniform(-bound, bound, (fan_in, fan_out))
        arrays[f"layers.{i}.intercept"] = rng.uniform(-bound, bound, fan_out)
    return ArrayRecord(arrays)


def _fitted_arrays(model: Any, kind: str) -> dict[str, NDArray[Any]] | None:
    """The estimator's learned arrays by record name, or None if it is not fitted."""
    if _is_mlp(kind):
        if getattr(model, "coefs_", None) is None:
            return None
        arrays: dict[str, NDArray[Any]] = {}
        for i, (coef, intercept) in enumerate(zip(model.coefs_, model.intercepts_, strict=True)):
            arrays[f"layers.{i}.coef"] = np.asarray(coef)
            arrays[f"layers.{i}.intercept"] = np.asarray(intercept)
        return arrays
    if getattr(model, "coef_", None) is None:
        return None
    return {"coef": np.asarray(model.coef_), "intercept": np.asarray(model.intercept_)}


@final
class SklearnAdapter:
    """The adapter for scikit-learn linear models and MLPs (see the module docstring).

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> adapter = SklearnAdapter()
    >>> model = set_classes(LogisticRegression(warm_start=True), [0, 1])
    >>> model = adapter.load_arrays(
    ...     model, initial_arrays(model, num_features=2, classes=[0, 1]))
    >>> model.predict(np.array([[1.0, 2.0]]))  # usable at once; fit() continues from here
    array([0])
    >>> list(adapter.to_arrays(model))
    ['coef', 'intercept']
    """

    @property
    def name(self) -> str:
        """What this adapter handles."""
        return f"scikit-learn {', '.join(SUPPORTED_ESTIMATORS)}"

    def supports(self, model: object) -> bool:
        """Whether ``model`` is a supported estimator (never imports scikit-learn itself)."""
        base = sys.modules.get("sklearn.base")
        if base is None or not isinstance(model, base.BaseEstimator):
            return False
        return any(isinstance(model, cls) for cls in _classes().values())

    def to_arrays(self, model: Any) -> ArrayRecord:
        """The estimator's coefficients and intercepts, by reference."""
        kind = _kind(model)
        arrays = _fitted_arrays(model, kind)
        if arrays is None:
            raise ConfigError(
                f"{type(model).__name__} is not fitted, so it has no coefficients to send; "
                "fit it, load_arrays into it, or build the first model with "
                "pollinate.adapters.sklearn.initial_arrays"
            )
        return ArrayRecord(arrays)

    def load_arrays(self, model: _M, arrays: ArrayRecord) -> _M:
        """Set the arrays on the estimator in place, initialising an unfitted one; return it."""
        kind = _kind(model)
        owner = f"{type(model).__name__} (scikit-learn)"
        current = _fitted_arrays(model, kind)
        if current is not None:
            expected: dict[str, ArraySpec] = {
                name: (array.dtype.name, tuple(array.shape)) for name, array in current.items()
            }
            check_arrays_match(owner, expected, arrays, check_dtype=False)
        else:
            _check_unfitted_layout(owner, kind, arrays)
        for name, array in arrays.items():
            if array.dtype.kind != "f":
                raise ConfigError(
                    f"cannot load arrays into {owner}: {name!r} has dtype {array.dtype}, "
                    "expected a floating dtype"
                )
        # Writable copies: scikit-learn updates some of these in place while training.
        owned = {name: np.array(array, copy=True) for name, array in arrays.items()}
        if _is_mlp(kind):
            _load_mlp(model, kind, owned, initialise=current is None, owner=owner)
        else:
            _load_linear(model, kind, owned, owner=owner)
        return model


def _check_unfitted_layout(owner: str, kind: str, arrays: ArrayRecord) -> None:
    """Check names and the chaining of shapes when there is no fitted model to compare to."""
    if not isinstance(arrays, ArrayRecord):
        raise ConfigError(f"load_arrays needs an ArrayRecord, got {type(arrays).__name__}")
    if _is_mlp(kind):
        num_layers = len(arrays) // 2
        names = [f"layers.{i}.{part}" for i in range(num_layers) for part in ("coef", "intercept")]
        if num_layers == 0 or sorted(names) != sorted(arrays):
            raise ConfigError(
                f"cannot load arrays into {owner}: expected layers.<i>.coef and "
                f"layers.<i>.intercept for i = 0, 1, ..., got {list(arrays)}"
            )
        previous = None
        for i in range(num_layers):
            coef, intercept = arrays[f"layers.{i}.coef"], arrays[f"layers.{i}.intercept"]
            if (
                coef.ndim != 2
                or intercept.shape != (coef.shape[1],)
                or (previous is not None and coef.shape[0] != previous)
            ):
                raise ConfigError(
                    f"cannot load arrays into {owner}: layer {i} has coef {coef.shape} and "
                    f"intercept {intercept.shape}, which do not chain with the layer before"
                )
            previous = coef.shape[1]
        return
    if sorted(arrays) != ["coef", "intercept"]:
        raise ConfigError(
            f"cannot load arrays into {owner}: expected keys coef and intercept, got {list(arrays)}"
        )
    coef, intercept = arrays["coef"], arrays["intercept"]
    if coef.ndim not in (1, 2) or intercept.size not in (1, coef.shape[0] if coef.ndim == 2 else 1):
        raise ConfigError(
            f"cannot load arrays into {owner}: coef {coef.shape} and intercept "
            f"{intercept.shape} do not fit together"
        )


def _require_classes(model: Any, owner: str, num_outputs: int) -> NDArray[Any]:
    """The classifier's classes, checked against its number of output units."""
    classes = getattr(model, "classes_", None)
    if classes is None:
        raise ConfigError(
            f"{owner} does not know its classes yet: call "
            "pollinate.adapters.sklearn.set_classes(model, labels) with every label of the "
            "federation (e.g. np.arange(10)) before load_arrays, or fit it once"
        )
    classes = np.asarray(classes)
    if _outputs_for(classes.size) != num_outputs:
        raise ConfigError(
            f"{owner} has {classes.size} classes ({classes.tolist()}), which need "
            f"{_outputs_for(classes.size)} output units, but the arrays have {num_outputs}"
        )
    return classes


def _load_linear(model: Any, kind: str, arrays: dict[str, NDArray[Any]], *, owner: str) -> None:
    coef, intercept = arrays["coef"], arrays["intercept"]
    if _is_classifier(kind):
        _require_classes(model, owner, coef.shape[0] if coef.ndim == 2 else 1)
    model.coef_ = coef
    model.intercept_ = intercept[()] if intercept.ndim == 0 else intercept
    model.n_features_in_ = int(coef.shape[-1])
    if kind.startswith("SGD") and not hasattr(model, "t_"):
        model.t_ = 1.0


def _load_mlp(
    model: Any, kind: str, arrays: dict[str, NDArray[Any]], *, initialise: bool, owner: str
) -> None:
    num_layers = len(arrays) // 2
    coefs = [arrays[f"layers.{i}.coef"] for i in range(num_layers)]
    intercepts = [arrays[f"layers.{i}.intercept"] for i in range(num_layers)]
    model.coefs_ = coefs
    model.intercepts_ = intercepts
    if not initialise:
        return
    # What MLP._initialize sets on a first fit, minus the random weights we just loaded.
    num_outputs = int(coefs[-1].shape[1])
    model.n_features_in_ = int(coefs[0].shape[0])
    model.n_layers_ = num_layers + 1
    model.n_outputs_ = num_outputs
    model.n_iter_ = 0
    model.t_ = 0
    if kind == "MLPClassifier":
        classes = _require_classes(model, owner, num_outputs)
        binarizer = import_framework("sklearn.preprocessing", install_hint=_INSTALL_HINT)
        model._label_binarizer = binarizer.LabelBinarizer().fit(classes)
        model.out_activation_ = "softmax" if classes.size > 2 else "logistic"
    else:
        model.out_activation_ = "exp" if getattr(model, "loss", "") == "poisson" else "identity"
    model._best_coefs = [c.copy() for c in coefs]
    model._best_intercepts = [i.copy() for i in intercepts]
    model.loss_curve_ = []
    model._no_improvement_count = 0
    if getattr(model, "early_stopping", False):
        model.validation_scores_ = []
        model.best_validation_score_ = -np.inf
        model.best_loss_ = None
    else:
        model.best_loss_ = np.inf
        model.validation_scores_ = None
        model.best_validation_score_ = None
