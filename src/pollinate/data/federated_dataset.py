"""Federated data sets: one labelled data set, partitioned over simulated nodes.

A :class:`FederatedDataset` keeps the training samples once, plus the index arrays of
each partition, plus a centralized held-out test split that no node owns (for the
server-side ``Strategy.evaluate``). A node asks for ``partition(i)`` and gets its own
samples split again into local train and test parts, the same split on every call.

:func:`load_sklearn` builds one from scikit-learn's bundled data sets. Every virtual
node of a simulation calls it with the same arguments, so results are cached per
process and the arrays are read-only (a node cannot corrupt the cached copy).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast, final

import numpy as np
from numpy.typing import NDArray

from pollinate.data.partitioners import Partitioner
from pollinate.errors import ConfigError

__all__ = ["SKLEARN_DATASETS", "FederatedDataset", "Partition", "load_sklearn"]

#: The names :func:`load_sklearn` accepts: data sets shipped inside scikit-learn.
SKLEARN_DATASETS: Final[tuple[str, ...]] = ("breast_cancer", "digits", "iris", "wine")

# Distinct streams derived from one seed, so no two random choices share numbers.
_STREAM_CENTRAL_SPLIT: Final = 0
_STREAM_PARTITION: Final = 1
_STREAM_NODE_SPLIT: Final = 2


def _read_only(array: NDArray[Any], dtype: type[np.generic]) -> NDArray[Any]:
    """Return a read-only view of ``array`` as ``dtype`` (copying only to convert)."""
    view = np.asarray(array, dtype=dtype).view()
    view.flags.writeable = False
    return view


def _check_fraction(owner: str, name: str, value: object, *, allow_zero: bool) -> float:
    """Return ``value`` as a float in (0, 1) or [0, 1), else raise ConfigError."""
    interval = "[0, 1)" if allow_zero else "(0, 1)"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{owner}: {name} must be a number in {interval}, got {value!r}")
    as_float = float(value)
    low_ok = as_float >= 0.0 if allow_zero else as_float > 0.0
    if not (math.isfinite(as_float) and low_ok and as_float < 1.0):
        raise ConfigError(f"{owner}: {name} must be in {interval}, got {as_float}")
    return as_float


def _check_seed(owner: str, seed: object) -> int:
    """Return ``seed`` as a non-negative int, else raise ConfigError."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"{owner}: seed must be a non-negative integer, got {seed!r}")
    return operator.index(seed)


@final
@dataclass(frozen=True, eq=False)
class Partition:
    """One node's data: its partition of the training set, split into train and test.

    Attributes
    ----------
    x_train, y_train:
        Local training features (float32, one row per sample) and labels (int64).
    x_test, y_test:
        Local test features and labels; may be empty for very small partitions.
    """

    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]

    @property
    def num_train(self) -> int:
        """Number of local training samples (the usual FedAvg aggregation weight)."""
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        """Number of local test samples."""
        return int(self.y_test.shape[0])


@final
@dataclass(frozen=True, eq=False)
class FederatedDataset:
    """A labelled data set partitioned over ``num_partitions`` nodes, plus a central test set.

    Parameters
    ----------
    x, y:
        The training part of the data set: features (converted to float32, one row per
        sample) and labels (converted to int64). Partitions index into these.
    partitions:
        One index array into ``x``/``y`` per node, as returned by a
        :class:`~pollinate.data.Partitioner`.
    x_test, y_test:
        The centralized held-out test split, owned by no node.
    node_test_fraction:
        Fraction in [0, 1) of each partition kept as that node's local test set.
    seed:
        Seeds each node's local train/test split (node ``i`` uses its own stream, so the
        split does not depend on which other nodes were asked for first).

    All arrays are stored as read-only views: a dataset may be shared by every virtual
    node in a process and must not be changed by one of them.

    Examples
    --------
    >>> import numpy as np
    >>> ds = FederatedDataset(
    ...     x=np.zeros((10, 2)), y=np.arange(10) % 2,
    ...     partitions=[np.arange(0, 5), np.arange(5, 10)],
    ...     x_test=np.zeros((4, 2)), y_test=np.arange(4) % 2)
    >>> ds.num_partitions, ds.partition(1).num_train, ds.partition(1).num_test
    (2, 4, 1)
    """

    x: NDArray[np.float32]
    y: NDArray[np.int64]
    partitions: Sequence[NDArray[np.int64]]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]
    node_test_fraction: float = 0.2
    seed: int = 0
    _num_classes: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        owner = "FederatedDataset"
        x = _read_only(self.x, np.float32)
        y = _read_only(self.y, np.int64)
        x_test = _read_only(self.x_test, np.float32)
        y_test = _read_only(self.y_test, np.int64)
        for name, xs, ys in (("x/y", x, y), ("x_test/y_test", x_test, y_test)):
            if ys.ndim != 1 or xs.ndim < 1 or xs.shape[0] != ys.shape[0]:
                raise ConfigError(
                    f"{owner}: {name} must have one label per feature row, got feature "
                    f"shape {xs.shape} and label shape {ys.shape}"
                )
        if x.shape[1:] != x_test.shape[1:]:
            raise ConfigError(
                f"{owner}: training features have shape {x.shape[1:]} per sample but test "
                f"features have {x_test.shape[1:]}; both splits must share one feature space"
            )
        if len(self.partitions) == 0:
            raise ConfigError(f"{owner}: partitions is empty; give at least one partition")
        parts = []
        for i, part in enumerate(self.partitions):
            indices = np.asarray(part)
            if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
                raise ConfigError(
                    f"{owner}: partition {i} must be a 1-D integer index array, got dtype "
                    f"{indices.dtype} and shape {indices.shape}"
                )
            if indices.size and (indices.min() < 0 or indices.max() >= y.shape[0]):
                raise ConfigError(
                    f"{owner}: partition {i} has indices outside [0, {y.shape[0]}); "
                    "partitions index into the training arrays x and y"
                )
            parts.append(_read_only(indices, np.int64))
        fraction = _check_fraction(
            owner, "node_test_fraction", self.node_test_fraction, allow_zero=True
        )
        seed = _check_seed(owner, self.seed)
        all_labels = np.concatenate([y, y_test])
        num_classes = int(all_labels.max()) + 1 if all_labels.size else 0
        # A frozen dataclass sets its normalized fields through object.__setattr__.
        for name, value in (
            ("x", x),
            ("y", y),
            ("x_test", x_test),
            ("y_test", y_test),
            ("partitions", tuple(parts)),
            ("node_test_fraction", fraction),
            ("seed", seed),
            ("_num_classes", num_classes),
        ):
            object.__setattr__(self, name, value)

    @property
    def num_partitions(self) -> int:
        """Number of partitions (simulated nodes)."""
        return len(self.partitions)

    @property
    def num_classes(self) -> int:
        """Number of classes, ``max(label) + 1`` over both splits."""
        return self._num_classes

    @property
    def num_features(self) -> int:
        """Number of features per sample (the product of the per-sample shape)."""
        return int(np.prod(self.x.shape[1:], dtype=np.int64))

    def partition(self, partition_id: int) -> Partition:
        """Return node ``partition_id``'s data, split into local train and test parts.

        The split is a seeded shuffle: ``floor(node_test_fraction * size)`` samples go
        to the local test set, the rest to training. It is the same on every call.

        Raises
        ------
        ConfigError
            If ``partition_id`` is not an integer in ``[0, num_partitions)``.
        """
        if isinstance(partition_id, bool) or not isinstance(partition_id, (int, np.integer)):
            raise ConfigError(
                f"FederatedDataset.partition: partition_id must be an integer, got {partition_id!r}"
            )
        if not 0 <= partition_id < self.num_partitions:
            raise ConfigError(
                f"FederatedDataset.partition: partition_id={partition_id} is out of range; "
                f"this dataset has {self.num_partitions} partitions, ids 0 to "
                f"{self.num_partitions - 1}"
            )
        indices = self.partitions[int(partition_id)]
        rng = np.random.default_rng([self.seed, _STREAM_NODE_SPLIT, int(partition_id)])
        shuffled = rng.permutation(indices)
        num_test = int(self.node_test_fraction * indices.size)
        train, test = np.sort(shuffled[num_test:]), np.sort(shuffled[:num_test])
        return Partition(
            x_train=self.x[train], y_train=self.y[train], x_test=self.x[test], y_test=self.y[test]
        )

    def centralized_test(self) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Return the held-out ``(x_test, y_test)`` no node owns, for server-side evaluation."""
        return self.x_test, self.y_test


def _stratified_split(
    y: NDArray[np.int64], test_fraction: float, rng: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Return sorted (train, test) indices with about ``test_fraction`` of each class in test."""
    train_parts, test_parts = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        # Round per class, but keep at least one sample of every class for training.
        num_test = min(round(test_fraction * members.size), members.size - 1)
        test_parts.append(members[:num_test])
        train_parts.append(members[num_test:])
    return np.sort(np.concatenate(train_parts)), np.sort(np.concatenate(test_parts))


def _sklearn_loaders() -> dict[str, Callable[..., Any]]:
    """Return the scikit-learn loaders by name (imported here: sklearn is slow to import)."""
    from sklearn import datasets

    return {
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
    }


@functools.lru_cache(maxsize=len(SKLEARN_DATASETS))
def _load_raw(name: str) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Return a bundled scikit-learn data set as read-only ``(x, y)``, once per process."""
    x, y = _sklearn_loaders()[name](return_X_y=True)
    return _read_only(x, np.float64), _read_only(y, np.int64)


def _build_sklearn(
    name: str,
    num_partitions: int,
    partitioner: Partitioner,
    seed: int,
    test_fraction: float,
    node_test_fraction: float,
    standardize: bool,
) -> FederatedDataset:
    """Load, split, standardize and partition (the uncached body of load_sklearn)."""
    x, y = _load_raw(name)
    split_rng = np.random.default_rng([seed, _STREAM_CENTRAL_SPLIT])
    train, test = _stratified_split(y, test_fraction, split_rng)
    x_train, x_test = x[train], x[test]
    if standardize:
        mean = x_train.mean(axis=0)
        std = x_train.std(axis=0)
        std[std == 0.0] = 1.0  # constant features (digits' blank corner pixels) stay at 0
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    partitions = partitioner.partition(
        y[train],
        num_partitions,
        rng=np.random.default_rng([seed, _STREAM_PARTITION]),
    )
    return FederatedDataset(
        x=x_train.astype(np.float32),
        y=y[train],
        partitions=partitions,
        x_test=x_test.astype(np.float32),
        y_test=y[test],
        node_test_fraction=node_test_fraction,
        seed=seed,
    )


_build_sklearn_cached = functools.lru_cache(maxsize=32)(_build_sklearn)


def load_sklearn(
    name: str,
    *,
    num_partitions: int,
    partitioner: Partitioner,
    seed: int = 0,
    test_fraction: float = 0.2,
    node_test_fraction: float = 0.2,
    standardize: bool = True,
) -> FederatedDataset:
    """Load a data set bundled with scikit-learn as a :class:`FederatedDataset`.

    Steps, all seeded by ``seed``: (1) a stratified ``test_fraction`` of the samples is
    set aside as the centralized test split, *before* partitioning, so no node ever
    holds a centralized test sample; (2) if ``standardize``, features are scaled to
    zero mean and unit variance with statistics of the training part only; (3) the
    training part is split over ``num_partitions`` nodes by ``partitioner``.

    Computing one global mean and variance is a simulation convenience: in a real
    federation no party sees all the training data, and nodes would standardize
    locally or with federated statistics. It is still leak-free with respect to the
    centralized test split.

    Results are cached per process, keyed by all arguments, because every virtual node
    of a simulation calls this with the same arguments; the returned arrays are
    read-only. (A partitioner that is not hashable bypasses the cache.)

    Parameters
    ----------
    name:
        One of ``"breast_cancer"``, ``"digits"``, ``"iris"``, ``"wine"``; none needs a
        download.
    num_partitions:
        Number of nodes to partition the training part over.
    partitioner:
        How to partition, e.g. ``DirichletPartitioner(alpha=0.5)``.
    seed:
        Seeds the centralized split, the partitioner and each node's local split.
    test_fraction:
        Fraction in (0, 1) of samples held out as the centralized test split.
    node_test_fraction:
        Fraction in [0, 1) of each partition kept as that node's local test set.
    standardize:
        Whether to standardize features with training-part statistics.

    Raises
    ------
    ConfigError
        For an unknown ``name`` (the message lists the valid ones) or a bad argument.

    Examples
    --------
    >>> from pollinate.data import IidPartitioner, load_sklearn
    >>> ds = load_sklearn("iris", num_partitions=3, partitioner=IidPartitioner())
    >>> ds.num_partitions, ds.centralized_test()[0].shape
    (3, (30, 4))
    """
    owner = "load_sklearn"
    if name not in SKLEARN_DATASETS:
        raise ConfigError(
            f"{owner}: unknown data set {name!r}; choose one of {', '.join(SKLEARN_DATASETS)}"
        )
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, (int, np.integer)):
        raise ConfigError(f"{owner}: num_partitions must be an integer, got {num_partitions!r}")
    if num_partitions < 1:
        raise ConfigError(f"{owner}: num_partitions must be >= 1, got {num_partitions}")
    if isinstance(partitioner, (str, bytes)):
        raise ConfigError(
            f"{owner}: partitioner must be a Partitioner instance, got the string "
            f"{partitioner!r}; pass e.g. IidPartitioner() or DirichletPartitioner(alpha=0.5)"
        )
    if not callable(getattr(partitioner, "partition", None)):
        raise ConfigError(
            f"{owner}: partitioner must implement pollinate.data.Partitioner (a "
            f"partition(labels, num_partitions, *, rng) method), got "
            f"{type(partitioner).__name__}"
        )
    if not isinstance(standardize, bool):
        raise ConfigError(f"{owner}: standardize must be True or False, got {standardize!r}")
    args = (
        name,
        operator.index(num_partitions),
        partitioner,
        _check_seed(owner, seed),
        _check_fraction(owner, "test_fraction", test_fraction, allow_zero=False),
        _check_fraction(owner, "node_test_fraction", node_test_fraction, allow_zero=True),
        standardize,
    )
    try:
        hash(partitioner)
    except TypeError:
        return _build_sklearn(*args)
    # The cache needs hashable arguments; the check above established that they are.
    return _build_sklearn_cached(*cast("tuple[Hashable, ...]", args))
