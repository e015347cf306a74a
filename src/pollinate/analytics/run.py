"""``run_query``: ask the nodes, merge their statistics, add noise, report value and cost.

Written once against the :class:`~pollinate.server.Grid`, so a query runs the same in
simulation and in deployment. Failures of single nodes are data: a node that fails,
declines (its ``min_count``), is late, or answers something malformed is left out and
named in the result; only too few answers (``min_nodes``) stop the query.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from pollinate.analytics.privacy import PrivacyCost, QueryPrivacy, gaussian_epsilon
from pollinate.analytics.queries import HistogramCounts, Query
from pollinate.analytics.request import REPLY, REQUEST, VECTOR, check_answer
from pollinate.errors import AggregationError, ConfigError, PollinateError
from pollinate.privacy.secagg import SecAggConfig, secure_sum
from pollinate.records import ArrayRecord, Message, RecordDict, keys

if TYPE_CHECKING:
    from pollinate.server.grid import Grid

__all__ = ["QueryResult", "run_query"]

T = TypeVar("T")


@dataclass(frozen=True)
class QueryResult(Generic[T]):
    """What a query released.

    Attributes
    ----------
    query:
        The query that was run.
    value:
        Its answer (noisy under DP).
    count:
        How many records went into it (noisy under DP).
    nodes:
        The nodes whose records are in it.
    failures:
        Nodes that were asked but are not in it, with the reason (failed, declined,
        late, malformed answer).
    privacy:
        What it cost under DP, else ``None``.
    secure:
        Whether the server saw only the sum of the nodes' statistics.
    """

    query: Query[T]
    value: T
    count: int
    nodes: tuple[int, ...]
    failures: dict[int, str] = field(default_factory=dict)
    privacy: PrivacyCost | None = None
    secure: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``json.dumps`` (quantile levels become string keys)."""
        value: Any = self.value
        if isinstance(value, HistogramCounts):
            value = {"edges": list(value.edges), "counts": list(value.counts)}
        elif isinstance(value, dict):
            value = {str(k): v for k, v in value.items()}
        privacy = None
        if self.privacy is not None:
            privacy = {
                "epsilon": self.privacy.epsilon,
                "delta": self.privacy.delta,
                "noise_multiplier": self.privacy.noise_multiplier,
                "sensitivity": self.privacy.sensitivity,
                "noise_std": list(self.privacy.noise_std),
                "total_epsilon": self.privacy.total_epsilon,
            }
        return {
            "query": type(self.query).__name__.lower(),
            "value": value,
            "count": self.count,
            "nodes": list(self.nodes),
            "failures": {str(k): v for k, v in self.failures.items()},
            "privacy": privacy,
            "secure": self.secure,
        }


def run_query(
    grid: Grid,
    query: Query[T],
    *,
    node_ids: Iterable[int] | None = None,
    min_nodes: int = 2,
    min_count: int = 0,
    timeout: float = 60.0,
    privacy: QueryPrivacy | None = None,
    secure: bool | SecAggConfig = False,
    rng: np.random.Generator | None = None,
) -> QueryResult[T]:
    """Run ``query`` over the nodes' records and return the merged answer.

    Parameters
    ----------
    grid:
        The runtime's connection to the nodes.
    query:
        A :class:`Count`, :class:`Sum`, :class:`Mean`, :class:`Variance`,
        :class:`Histogram` or :class:`Quantiles`.
    node_ids:
        The nodes to ask; default: every connected node, once ``min_nodes`` are.
    min_nodes:
        Fewest nodes that must answer. The default 2 keeps a result from being one
        node's own statistic.
    min_count:
        Fewest records (noisy under DP) the result must cover to be released; fewer
        raise :class:`~pollinate.errors.AggregationError` (small-cell suppression).
    timeout:
        Seconds to wait for nodes to connect, and then for their answers.
    privacy:
        Gaussian noise on the merged sums and the cost reported (see
        :class:`QueryPrivacy`); the query then needs bounds.
    secure:
        Secure aggregation (SecAgg+): the server learns only the sum of the nodes'
        vectors, never one node's. ``True`` uses :func:`secure_config` for the nodes
        asked; a :class:`~pollinate.privacy.secagg.SecAggConfig` sets it yourself. The
        nodes' ClientApp needs ``secaggplus_mod`` among its mods.
    rng:
        Source of the DP noise; default: fresh OS entropy (seed it only in tests).

    Raises
    ------
    AggregationError
        Fewer than ``min_nodes`` answered, the result covers fewer than ``min_count``
        records, or no records matched where a value needs some.
    NodeUnavailableError
        Fewer than ``min_nodes`` nodes connected within ``timeout``.

    Examples
    --------
    >>> from pollinate.analytics import Mean, handle_queries
    >>> from pollinate.client import ClientApp
    >>> from pollinate.runtime.inline import InlineGrid
    >>> from pollinate.runtime.nodes import VirtualNodes
    >>> app = ClientApp()
    >>> handle_queries(app, lambda ctx: {"age": [ctx.node_id * 10.0, 50.0]})
    >>> with InlineGrid(app, VirtualNodes(num_nodes=3, run_id=1)) as grid:
    ...     result = run_query(grid, Mean(column="age", bounds=(0, 120)))
    >>> result.value, result.count, result.nodes
    (35.0, 6, (1, 2, 3))
    """
    _check_options(query, min_nodes=min_nodes, min_count=min_count, timeout=timeout)
    if privacy is not None:
        query.unit_sensitivities()  # a ConfigError now if DP lacks the bounds it needs
    targets = _targets(grid, node_ids, min_nodes=min_nodes, timeout=timeout)
    summable = secure is not False or privacy is not None
    request = query.request(summable=summable)
    config = request.to_config()
    message_type = f"{keys.QUERY}.{query.action}"
    if secure is not False:
        return _run_secure(
            grid,
            query,
            targets,
            RecordDict({REQUEST: config}),
            message_type,
            secure if isinstance(secure, SecAggConfig) else secure_config(len(targets)),
            min_nodes=min_nodes,
            min_count=min_count,
            timeout=timeout,
            privacy=privacy,
            rng=rng,
        )
    messages = [
        Message(
            RecordDict({REQUEST: config}),
            dst_node_id=node_id,
            message_type=message_type,
            group_id=message_type,
            run_id=grid.run_id,
        )
        for node_id in targets
    ]
    observer = grid.observer
    observer.on_phase_start(0, message_type, len(messages))
    vectors: list[NDArray[np.float64]] = []
    answered: list[int] = []
    failures: dict[int, str] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node_id = reply.metadata.src_node_id
        try:
            vectors.append(_vector_of(reply, request))
            answered.append(node_id)
        except PollinateError as exc:
            failures[node_id] = str(exc)
        observer.on_reply(0, message_type, ok=node_id not in failures)
    return _release(
        query,
        vectors=vectors,
        answered=answered,
        targets=targets,
        failures=failures,
        min_nodes=min_nodes,
        min_count=min_count,
        privacy=privacy,
        rng=rng,
        secure=False,
    )


def secure_config(num_nodes: int) -> SecAggConfig:
    """SecAgg+ settings for a query over ``num_nodes`` nodes.

    The summable vectors hold counts and sums over a node's records: entries up to
    ``2**30`` in magnitude are exact to within ``num_nodes * 2**-9`` (a count is then
    rounded to the exact whole number), in a 64-bit modulus. Each node shares its
    secrets over up to 10 neighbours, half of them (at least 2) needed to recover a
    dropped node, so a neighbourhood survives as many dropouts as it has spares.
    """
    if num_nodes < 3:
        raise ConfigError(
            f"secure aggregation needs at least 3 nodes (got {num_nodes}): with 2, each "
            "learns the other's answer from the sum"
        )
    shares = min(10, num_nodes - 1)
    return SecAggConfig(
        num_shares=shares,
        reconstruction_threshold=max(2, shares // 2 + 1),
        clipping_range=float(2**30),
        quantization_range=2**40,
        modulus_bits=64,
    )


def _run_secure(
    grid: Grid,
    query: Query[T],
    targets: list[int],
    content: RecordDict,
    message_type: str,
    config: SecAggConfig,
    *,
    min_nodes: int,
    min_count: int,
    timeout: float,
    privacy: QueryPrivacy | None,
    rng: np.random.Generator | None,
) -> QueryResult[T]:
    """The query under SecAgg+: the server sees the sum of the vectors, nothing else."""
    result = secure_sum(
        grid,
        targets,
        content,
        message_type=message_type,
        config=config,
        timeout=timeout,
        arrays_key=REPLY,
        group_id=message_type,
    )
    return _release(
        query,
        total=np.asarray(result.arrays[VECTOR], np.float64),
        answered=sorted(int(node) for node in result.survivors),
        targets=targets,
        failures={int(node): str(reason) for node, reason in result.dropped.items()},
        min_nodes=min_nodes,
        min_count=min_count,
        privacy=privacy,
        rng=rng,
        secure=True,
    )


def _release(
    query: Query[T],
    *,
    vectors: list[NDArray[np.float64]] | None = None,
    total: NDArray[np.float64] | None = None,
    answered: list[int],
    targets: list[int],
    failures: dict[int, str],
    min_nodes: int,
    min_count: int,
    privacy: QueryPrivacy | None,
    rng: np.random.Generator | None,
    secure: bool,
) -> QueryResult[T]:
    """The result from the nodes' ``vectors`` (plain) or their ``total`` (secure), once
    enough nodes answered, with DP noise if asked, unless it covers too few records."""
    if len(answered) < min_nodes:
        listed = "; ".join(f"node {n}: {reason}" for n, reason in failures.items()) or "none"
        raise AggregationError(
            f"{query!r}: only {len(answered)} of {len(targets)} nodes answered and "
            f"{min_nodes} are needed (min_nodes). Failures: {listed}"
        )
    cost = None
    if privacy is not None:
        summed = total if total is not None else np.sum(vectors or [], axis=0)
        generator = rng if rng is not None else np.random.default_rng()
        noisy = _noisy(summed, query, privacy.noise_multiplier, generator)
        cost = _spend(privacy, query)  # spent: the noisy sums exist from here on
        value, count = query.from_sums(noisy)
    elif total is not None:
        value, count = query.from_sums(total)
    else:
        value, count = query.from_plain(vectors or [])
    if count < min_count:
        raise AggregationError(
            f"{query!r} covers {count} records, fewer than min_count={min_count}; "
            "the result is withheld so that a small group is not revealed"
        )
    return QueryResult(
        query=query,
        value=value,
        count=count,
        nodes=tuple(answered),
        failures=failures,
        privacy=cost,
        secure=secure,
    )


def _check_options(query: object, *, min_nodes: int, min_count: int, timeout: float) -> None:
    if not isinstance(query, Query):
        raise ConfigError(
            f"run_query needs a Query (Count, Sum, Mean, ...), got {type(query).__name__}"
        )
    if not isinstance(min_nodes, int) or min_nodes < 1:
        raise ConfigError(f"min_nodes must be an int >= 1, got {min_nodes!r}")
    if not isinstance(min_count, int) or min_count < 0:
        raise ConfigError(f"min_count must be an int >= 0, got {min_count!r}")
    if not timeout > 0:
        raise ConfigError(f"timeout must be positive seconds, got {timeout!r}")


def _targets(
    grid: Grid, node_ids: Iterable[int] | None, *, min_nodes: int, timeout: float
) -> list[int]:
    if node_ids is None:
        return grid.wait_for_nodes(min_nodes, timeout=timeout)
    targets = sorted(set(node_ids))
    if len(targets) < min_nodes:
        raise ConfigError(
            f"node_ids names {len(targets)} nodes but min_nodes is {min_nodes}; "
            "ask more nodes or lower min_nodes"
        )
    return targets


def _vector_of(reply: Message, request: Any) -> NDArray[np.float64]:
    """The statistic vector in ``reply``; a PollinateError says why there is none."""
    error = reply.error
    if error is not None:
        raise AggregationError(error.reason)
    arrays = reply.content.get_kind(REPLY, ArrayRecord)
    if VECTOR not in arrays:
        raise ConfigError(f"the reply's {REPLY!r} record has no {VECTOR!r} array")
    return check_answer(request, arrays[VECTOR])


def _noisy(
    total: NDArray[np.float64], query: Query[Any], noise_multiplier: float, rng: np.random.Generator
) -> NDArray[np.float64]:
    """``total`` plus Gaussian noise: added to the normalized vector, whose L2
    sensitivity is ``query.sensitivity()``, then scaled back."""
    from pollinate.privacy.mechanisms import GaussianMechanism

    units = query.unit_sensitivities()
    mechanism = GaussianMechanism(noise_multiplier=noise_multiplier)
    noisy = mechanism.add_noise({"sums": total / units}, sensitivity=query.sensitivity(), rng=rng)
    result: NDArray[np.float64] = noisy["sums"] * units
    return result


def _spend(privacy: QueryPrivacy, query: Query[Any]) -> PrivacyCost:
    """The cost of one release; steps the accountant if there is one."""
    total_epsilon = None
    if privacy.accountant is not None:
        privacy.accountant.step(noise_multiplier=privacy.noise_multiplier, sample_rate=1.0)
        total_epsilon = privacy.accountant.epsilon(privacy.delta)
    return PrivacyCost(
        epsilon=gaussian_epsilon(privacy.noise_multiplier, privacy.delta),
        delta=privacy.delta,
        noise_multiplier=privacy.noise_multiplier,
        sensitivity=query.sensitivity(),
        noise_std=tuple(float(s) for s in query.noise_std(privacy.noise_multiplier)),
        total_epsilon=total_epsilon,
    )
