"""Byzantine-robust aggregation rules: plug into any strategy's ``aggregator=``.

Each rule is an :class:`~pollinate.strategy.aggregate.Aggregator` named after its
paper, usable with any FedAvg-family strategy, e.g.
``FedAvg(aggregator=Krum(num_byzantine=2))``; :class:`FedMedian` is FedAvg with the
coordinate-wise median already plugged in.

Design note. Order- and distance-based rules cannot stream: they buffer the round's
updates (O(n * model) memory, which the replies occupy anyway) and work on them in
column chunks of at most ``_CHUNK_ELEMENTS`` float64 values, so the scratch memory
does not grow with ``n * model``:

- coordinate-wise rules (:class:`Median`, :class:`TrimmedMean`, the second stage of
  :class:`Bulyan`) run per array and per chunk of coordinates;
- distance-based rules (:class:`Krum`, :class:`MultiKrum`, the first stage of
  :class:`Bulyan`) see each update as one vector, all its arrays flattened and
  concatenated, and compute the ``n x n`` squared distances through a Gram matrix
  accumulated chunk by chunk. The vectors are first centred on their coordinate-wise
  median, so the Gram trick keeps its precision when models are close to each other
  (the usual case: every update is the global model plus a small step) and one huge
  outlier cannot overflow the honest updates' distances.

An attacker may send non-finite values. A non-finite update is infinitely far from
every other update (it gets the worst Krum score); in coordinate-wise rules ``NaN``
sorts above ``+inf``, so it is trimmed like any other extreme value. Results are in
each array's own dtype (see :func:`~pollinate.strategy.aggregate.cast_like`).

Each rule checks its precondition on the number of updates ``n`` against the number
of Byzantine updates ``f`` it was built for, and raises an
:class:`~pollinate.errors.AggregationError` naming the rule, ``n``, ``f`` and the
condition, e.g. ``Bulyan needs n >= 4f + 3 updates, got n=10 with f=2``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeAlias, final

import numpy as np
from numpy.typing import NDArray

from pollinate.errors import AggregationError, ConfigError
from pollinate.records import ArrayRecord
from pollinate.strategy.aggregate import WeightedMeanAccumulator, cast_like, describe_structure
from pollinate.strategy.fedavg import FedAvg

if TYPE_CHECKING:
    from typing import Unpack  # Python 3.11; annotations only, never evaluated

    from pollinate.strategy.fedavg import FedAvgKwargs

__all__ = ["Bulyan", "FedMedian", "Krum", "Median", "MultiKrum", "TrimmedMean"]

#: Reduces a ``rows x columns`` float64 block to one value per column.
_Combine: TypeAlias = Callable[[NDArray[np.float64]], NDArray[np.float64]]

#: Largest float64 scratch block (rows x columns) a rule allocates at once: 32 MiB.
_CHUNK_ELEMENTS = 1 << 22


# -- shared helpers ---------------------------------------------------------------------
def _check_count(owner: str, name: str, value: object, *, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, or a ConfigError naming ``owner.name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{owner}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _buffer(updates: Iterable[tuple[ArrayRecord, float]]) -> tuple[list[ArrayRecord], list[float]]:
    """All updates and their weights; checks structure and weights."""
    records: list[ArrayRecord] = []
    weights: list[float] = []
    structure = None
    for index, (arrays, weight) in enumerate(updates):
        if structure is None:
            structure = arrays.structure()
        elif arrays.structure() != structure:
            raise AggregationError(
                f"update {index} has arrays {describe_structure(arrays.structure())}, but "
                f"earlier updates had {describe_structure(structure)}; every node must "
                "return the same model structure"
            )
        if not np.isfinite(weight) or weight < 0:
            raise AggregationError(
                f"update {index} has weight {weight}; weights must be finite and >= 0"
            )
        records.append(arrays)
        weights.append(float(weight))
    return records, weights


def _column_chunks(
    records: list[ArrayRecord], name: str
) -> Iterator[tuple[slice, NDArray[np.float64]]]:
    """``(columns, block)``: array ``name`` of every record, flattened, as float64 blocks.

    ``block`` has one row per record and at most ``_CHUNK_ELEMENTS`` values.
    """
    flat = [np.ravel(record[name]) for record in records]
    size = flat[0].size
    step = max(1, _CHUNK_ELEMENTS // len(records))
    for start in range(0, size, step):
        columns = slice(start, min(size, start + step))
        yield columns, np.stack([f[columns] for f in flat]).astype(np.float64, copy=False)


def _coordinatewise(
    records: list[ArrayRecord], combine: _Combine, *, rows: list[int] | None = None
) -> ArrayRecord:
    """Apply ``combine(block) -> row`` column by column to every array of ``records``."""
    chosen = records if rows is None else [records[i] for i in rows]
    out = ArrayRecord()
    for name, template in chosen[0].items():
        result = np.empty(template.size, np.float64)
        for columns, block in _column_chunks(chosen, name):
            result[columns] = combine(block)
        out[name] = cast_like(result.reshape(template.shape), template.dtype)
    return out


def _sorted_with_nan_last(block: NDArray[np.float64]) -> NDArray[np.float64]:
    """Sort each column; numpy puts NaN after ``+inf``, so NaN counts as the largest."""
    values: NDArray[np.float64] = np.sort(block, axis=0)
    return values


def _median_of_sorted(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Median of each column of column-sorted ``values`` (mean of the middle two if even)."""
    n = values.shape[0]
    middle: NDArray[np.float64] = values[n // 2]
    if n % 2:
        return middle
    result: NDArray[np.float64] = (values[n // 2 - 1] + middle) / 2
    return result


def _squared_distances(records: list[ArrayRecord]) -> NDArray[np.float64]:
    """``n x n`` squared L2 distances between the records as flattened vectors.

    Non-finite records are infinitely far from everything; the diagonal is ``inf`` so
    a record is never its own neighbour.
    """
    n = len(records)
    finite = np.array(
        [all(bool(np.isfinite(a).all()) for a in record.values()) for record in records]
    )
    distances = np.full((n, n), np.inf)
    kept = [records[i] for i in np.flatnonzero(finite)]
    if kept:
        gram = np.zeros((len(kept), len(kept)))
        with np.errstate(over="ignore", invalid="ignore"):
            for name in kept[0]:
                for _, block in _column_chunks(kept, name):
                    # Centring is a translation, so distances are unchanged; it keeps the
                    # Gram trick precise for close vectors far from the origin.
                    centred = block - np.median(block, axis=0)
                    gram += centred @ centred.T
            norms = np.diag(gram)
            inner = norms[:, None] + norms[None, :] - 2.0 * gram
        inner = np.where(np.isfinite(inner), np.maximum(inner, 0.0), np.inf)
        index = np.flatnonzero(finite)
        distances[np.ix_(index, index)] = inner
    np.fill_diagonal(distances, np.inf)
    return distances


def _krum_scores(distances: NDArray[np.float64], num_byzantine: int) -> NDArray[np.float64]:
    """Krum score of each row: the sum of its ``n - f - 2`` smallest squared distances.

    With fewer candidates than that (only inside Bulyan's recursion), at least one
    neighbour is used whenever there is one.
    """
    n = distances.shape[0]
    if n == 1:
        return np.zeros(1)
    neighbours = min(n - 1, max(1, n - num_byzantine - 2))
    with np.errstate(invalid="ignore"):
        scores: NDArray[np.float64] = np.sort(distances, axis=1)[:, :neighbours].sum(axis=1)
    return scores


def _precondition(rule: str, condition: str, n: int, f: int, holds: bool) -> None:
    if not holds:
        raise AggregationError(
            f"{rule} needs {condition} updates, got n={n} with f={f}; sample more nodes "
            "per round (min_train_nodes) or lower num_byzantine"
        )


# -- coordinate-wise rules --------------------------------------------------------------
@final
class Median:
    """Coordinate-wise median of the updates (weights are ignored).

    Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018, https://arxiv.org/abs/1803.01498.

    Each coordinate of the result is the median of that coordinate over the ``n``
    updates (the mean of the two middle values when ``n`` is even), as ``np.median``
    computes it. The rule tolerates any ``f < n / 2`` Byzantine updates.

    Parameters
    ----------
    num_byzantine:
        If given, the number ``f`` of Byzantine updates to tolerate: aggregating fewer
        than ``n >= 2f + 1`` updates raises an AggregationError. ``None`` checks nothing.

    Examples
    --------
    >>> import numpy as np
    >>> updates = [(ArrayRecord({"w": np.array([v, -v])}), 1.0) for v in (1.0, 2.0, 90.0)]
    >>> Median().aggregate(updates)["w"]
    array([ 2., -2.])
    """

    def __init__(self, *, num_byzantine: int | None = None) -> None:
        self.num_byzantine = (
            None
            if num_byzantine is None
            else _check_count("Median", "num_byzantine", num_byzantine, minimum=0)
        )

    def aggregate(self, updates: Iterable[tuple[ArrayRecord, float]]) -> ArrayRecord | None:
        """The coordinate-wise median; ``None`` if there were no updates."""
        records, _ = _buffer(updates)
        if not records:
            return None
        if self.num_byzantine is not None:
            f = self.num_byzantine
            _precondition("Median", "n >= 2f + 1", len(records), f, len(records) >= 2 * f + 1)
        return _coordinatewise(
            records, lambda block: _median_of_sorted(_sorted_with_nan_last(block))
        )

    def __repr__(self) -> str:
        return f"Median(num_byzantine={self.num_byzantine})"


@final
class TrimmedMean:
    """Coordinate-wise trimmed mean: per coordinate, drop the extremes and average the rest.

    Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018, https://arxiv.org/abs/1803.01498.

    Per coordinate, the ``k = floor(beta * n)`` largest and ``k`` smallest values are
    removed and the remaining ``n - 2k`` averaged, unweighted (the paper's rule; the
    example counts nodes report are not trusted). ``beta = 0`` is the plain mean.

    Parameters
    ----------
    beta:
        The fraction trimmed on *each* side, in ``[0, 0.5)``. The paper requires it to
        be at least the fraction of Byzantine updates.
    num_byzantine:
        If given, the number ``f`` of Byzantine updates to tolerate: a round where
        ``floor(beta * n) < f`` (too few values trimmed to remove them all) raises an
        AggregationError. ``None`` checks nothing.

    Examples
    --------
    >>> import numpy as np
    >>> updates = [(ArrayRecord({"w": np.array([v])}), 1.0) for v in (-50.0, 1.0, 2.0, 6.0, 70.0)]
    >>> TrimmedMean(beta=0.2).aggregate(updates)["w"]  # drops -50 and 70
    array([3.])
    """

    def __init__(self, beta: float = 0.1, *, num_byzantine: int | None = None) -> None:
        if (
            isinstance(beta, bool)
            or not isinstance(beta, (int, float))
            or not 0.0 <= float(beta) < 0.5
        ):
            raise ConfigError(f"TrimmedMean: beta must be a number in [0, 0.5), got {beta!r}")
        self.beta = float(beta)
        self.num_byzantine = (
            None
            if num_byzantine is None
            else _check_count("TrimmedMean", "num_byzantine", num_byzantine, minimum=0)
        )

    def aggregate(self, updates: Iterable[tuple[ArrayRecord, float]]) -> ArrayRecord | None:
        """The coordinate-wise trimmed mean; ``None`` if there were no updates."""
        records, _ = _buffer(updates)
        if not records:
            return None
        n = len(records)
        # The epsilon keeps a product that should be whole, such as 0.29 * 100 =
        # 28.999999999999996, from trimming one value too few.
        trim = int(np.floor(self.beta * n + 1e-9))
        if self.num_byzantine is not None and trim < self.num_byzantine:
            raise AggregationError(
                f"TrimmedMean(beta={self.beta:g}) needs floor(beta * n) >= f, got n={n} "
                f"with f={self.num_byzantine} (it trims {trim} per side); raise beta or "
                "sample more nodes per round"
            )

        def trimmed_mean(block: NDArray[np.float64]) -> NDArray[np.float64]:
            kept: NDArray[np.float64] = _sorted_with_nan_last(block)[trim : n - trim]
            result: NDArray[np.float64] = kept.mean(axis=0)
            return result

        return _coordinatewise(records, trimmed_mean)

    def __repr__(self) -> str:
        return f"TrimmedMean(beta={self.beta:g}, num_byzantine={self.num_byzantine})"


# -- distance-based rules ---------------------------------------------------------------
@final
class Krum:
    """Krum: the update closest to its ``n - f - 2`` nearest neighbours.

    Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017,
    https://papers.nips.cc/paper/6617-machine-learning-with-adversaries-byzantine-tolerant-gradient-descent.

    Every update is one vector (all arrays flattened). Its score is the sum of squared
    L2 distances to its ``n - f - 2`` closest other updates; the result is the update
    with the lowest score, unchanged (weights are ignored; ties go to the earliest).
    Needs ``n >= 2f + 3`` (the paper's ``2f + 2 < n``).

    Parameters
    ----------
    num_byzantine:
        ``f``, the number of Byzantine updates to tolerate.

    Examples
    --------
    >>> import numpy as np
    >>> values = (0.0, 1.0, 2.0, 3.0, 100.0)
    >>> updates = [(ArrayRecord({"w": np.array([v])}), 1.0) for v in values]
    >>> Krum(num_byzantine=1).aggregate(updates)["w"]
    array([1.])
    """

    def __init__(self, num_byzantine: int) -> None:
        self.num_byzantine = _check_count("Krum", "num_byzantine", num_byzantine, minimum=0)

    def aggregate(self, updates: Iterable[tuple[ArrayRecord, float]]) -> ArrayRecord | None:
        """The best-scored update (a copy); ``None`` if there were no updates."""
        records, _ = _buffer(updates)
        if not records:
            return None
        n, f = len(records), self.num_byzantine
        _precondition("Krum", "n >= 2f + 3", n, f, n >= 2 * f + 3)
        scores = _krum_scores(_squared_distances(records), f)
        return records[int(np.argmin(scores))].copy()

    def __repr__(self) -> str:
        return f"Krum(num_byzantine={self.num_byzantine})"


@final
class MultiKrum:
    """Multi-Krum: the average of the ``m`` updates with the best Krum scores.

    Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with Adversaries:
    Byzantine Tolerant Gradient Descent", NeurIPS 2017,
    https://papers.nips.cc/paper/6617-machine-learning-with-adversaries-byzantine-tolerant-gradient-descent.

    Scores are computed once, as in :class:`Krum`, over all ``n`` updates; the ``m``
    lowest-scored updates are averaged. Needs ``n >= 2f + 3`` and ``m <= n - f``.

    Parameters
    ----------
    num_byzantine:
        ``f``, the number of Byzantine updates to tolerate.
    num_selected:
        ``m``, how many updates to average; ``None`` (default) means ``n - f``, the
        paper's choice. ``m = 1`` is Krum.
    weighted:
        Average the selected updates weighted by their example counts (as FedAvg
        does) instead of the paper's plain average. Off by default: an attacker that
        survives selection could otherwise claim a huge example count.

    Examples
    --------
    >>> import numpy as np
    >>> values = (0.0, 1.0, 2.0, 3.0, 100.0)
    >>> updates = [(ArrayRecord({"w": np.array([v])}), 1.0) for v in values]
    >>> MultiKrum(num_byzantine=1, num_selected=3).aggregate(updates)["w"]
    array([1.])
    """

    def __init__(
        self, num_byzantine: int, num_selected: int | None = None, *, weighted: bool = False
    ) -> None:
        self.num_byzantine = _check_count("MultiKrum", "num_byzantine", num_byzantine, minimum=0)
        self.num_selected = (
            None
            if num_selected is None
            else _check_count("MultiKrum", "num_selected", num_selected, minimum=1)
        )
        if not isinstance(weighted, bool):
            raise ConfigError(f"MultiKrum: weighted must be a bool, got {weighted!r}")
        self.weighted = weighted

    def aggregate(self, updates: Iterable[tuple[ArrayRecord, float]]) -> ArrayRecord | None:
        """The mean of the ``m`` best-scored updates; ``None`` if there were no updates."""
        records, weights = _buffer(updates)
        if not records:
            return None
        n, f = len(records), self.num_byzantine
        _precondition("MultiKrum", "n >= 2f + 3", n, f, n >= 2 * f + 3)
        m = n - f if self.num_selected is None else self.num_selected
        if m > n - f:
            raise AggregationError(
                f"MultiKrum needs num_selected <= n - f, got m={m}, n={n} with f={f}; "
                "lower num_selected or sample more nodes per round"
            )
        scores = _krum_scores(_squared_distances(records), f)
        selected = np.argsort(scores, kind="stable")[:m]
        mean = WeightedMeanAccumulator()
        for i in sorted(int(i) for i in selected):
            mean.add(records[i], weights[i] if self.weighted else 1.0, source=f"update {i}")
        return mean.result()

    def __repr__(self) -> str:
        return (
            f"MultiKrum(num_byzantine={self.num_byzantine}, num_selected={self.num_selected}, "
            f"weighted={self.weighted})"
        )


@final
class Bulyan:
    """Bulyan over Krum: recursive Krum selection, then a trimmed mean around the median.

    El Mhamdi, Guerraoui and Rouault, "The Hidden Vulnerability of Distributed
    Learning in Byzantium", ICML 2018, https://arxiv.org/abs/1802.07927.

    Follows the paper's Algorithm exactly, with Krum as the selection rule ``A``:

    1. select ``theta = n - 2f`` updates, one at a time: apply Krum to the updates not
       yet selected (``n'`` of them; Krum's score uses their ``n' - f - 2`` nearest
       neighbours, at least 1, as in common implementations, because the last steps
       have ``n' < 2f + 3``), move the winner into the selection, repeat;
    2. for each coordinate, take the ``beta = theta - 2f = n - 4f`` selected values
       closest to their median and average them (ties between equally close values go
       to the smaller value).

    Weights are ignored. Needs ``n >= 4f + 3``. Equal Krum scores go to the earliest
    update; they are common in the last steps, where Krum uses a single neighbour
    and the two closest updates tie, but the pair usually ends up selected together.

    Parameters
    ----------
    num_byzantine:
        ``f``, the number of Byzantine updates to tolerate.

    Examples
    --------
    >>> import numpy as np
    >>> values = (0.0, 1.0, 3.0, 4.0, 9.0, 13.0, 100.0)
    >>> updates = [(ArrayRecord({"w": np.array([v])}), 1.0) for v in values]
    >>> Bulyan(num_byzantine=1).aggregate(updates)["w"]  # mean of 1, 3 and 4
    array([2.66666667])
    """

    def __init__(self, num_byzantine: int) -> None:
        self.num_byzantine = _check_count("Bulyan", "num_byzantine", num_byzantine, minimum=0)

    def aggregate(self, updates: Iterable[tuple[ArrayRecord, float]]) -> ArrayRecord | None:
        """Bulyan's aggregate; ``None`` if there were no updates."""
        records, _ = _buffer(updates)
        if not records:
            return None
        n, f = len(records), self.num_byzantine
        _precondition("Bulyan", "n >= 4f + 3", n, f, n >= 4 * f + 3)
        selected = self.select(records)
        beta = len(selected) - 2 * f

        def closest_to_median(block: NDArray[np.float64]) -> NDArray[np.float64]:
            values = _sorted_with_nan_last(block)
            with np.errstate(invalid="ignore"):
                deviation = np.abs(values - _median_of_sorted(values))
            # Stable on sorted values: of two equally close values, the smaller wins.
            nearest = np.argsort(deviation, axis=0, kind="stable")[:beta]
            result: NDArray[np.float64] = np.take_along_axis(values, nearest, axis=0).mean(axis=0)
            return result

        return _coordinatewise(records, closest_to_median, rows=selected)

    def select(self, records: list[ArrayRecord]) -> list[int]:
        """Indices of the ``n - 2f`` updates chosen by recursive Krum, in choice order."""
        f = self.num_byzantine
        distances = _squared_distances(records)
        remaining = list(range(len(records)))
        chosen: list[int] = []
        for _ in range(len(records) - 2 * f):
            scores = _krum_scores(distances[np.ix_(remaining, remaining)], f)
            chosen.append(remaining.pop(int(np.argmin(scores))))
        return chosen

    def __repr__(self) -> str:
        return f"Bulyan(num_byzantine={self.num_byzantine})"


# -- strategies -------------------------------------------------------------------------
class FedMedian(FedAvg):
    """FedAvg with the coordinate-wise :class:`Median` in place of the weighted mean.

    Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust Distributed Learning:
    Towards Optimal Statistical Rates", ICML 2018, https://arxiv.org/abs/1803.01498.

    Parameters
    ----------
    num_byzantine:
        Passed to :class:`Median`: if given, rounds with fewer than ``2f + 1`` updates
        raise an AggregationError.
    **kwargs:
        Any other :class:`~pollinate.strategy.FedAvg` argument except ``aggregator``.

    Examples
    --------
    >>> import numpy as np
    >>> strategy = FedMedian(fraction_train=0.5, rng=np.random.default_rng(0))
    >>> strategy.aggregator
    Median(num_byzantine=None)
    """

    def __init__(self, *, num_byzantine: int | None = None, **kwargs: Unpack[FedAvgKwargs]) -> None:
        if "aggregator" in kwargs:
            raise ConfigError(
                "FedMedian fixes aggregator=Median(); use FedAvg(aggregator=...) for another rule"
            )
        kwargs["aggregator"] = Median(num_byzantine=num_byzantine)
        super().__init__(**kwargs)
