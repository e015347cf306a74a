"""Federated analytics: statistics over the nodes' records, without the records.

Design
------
Every operator is a *summable statistic* (the idea of pfl-research's ``stats.py``):
a node answers with a short vector of sufficient statistics of its own records, and
the server merges the vectors into what the pooled computation would give.

=========  ================================  =====================================
operator   a node sends                      the server merges with
=========  ================================  =====================================
Count      n                                 a sum
Sum        n, sum of x                       a sum
Mean       n, mean                           Chan et al.'s parallel update
Variance   n, mean, M2                       Chan et al.'s parallel update
Histogram  counts over fixed bin edges       a sum
Quantiles  counts over fixed bin edges       a sum, then read off the histogram
=========  ================================  =====================================

Under DP (and, once it lands, secure aggregation) mean and variance switch to
*shifted sums* about the middle of the query's bounds, which merge by plain
addition; every vector then has a known sensitivity because values are clamped to
declared bounds on the node, and the server adds Gaussian noise to the merged sums
(:mod:`pollinate.analytics.privacy`).

Layers: :mod:`~pollinate.analytics.statistics` (pure arithmetic),
:mod:`~pollinate.analytics.request` (the wire form and its checks),
:mod:`~pollinate.analytics.node` (a node's table -> its vector; the one-line
handlers), :mod:`~pollinate.analytics.queries` (the operators),
:mod:`~pollinate.analytics.privacy` (noise and cost), :mod:`~pollinate.analytics.run`
(:func:`run_query` over any Grid).

Examples
--------
On a node::

    app = ClientApp()
    handle_queries(app, load_patients, min_count=10)  # answers every operator

On the server::

    result = run_query(grid, Mean(column="age_at_onset", where={"condition_x": 1},
                                  bounds=(0, 120)), privacy=QueryPrivacy.for_epsilon(1.0))
    print(result.value, result.count, result.privacy.epsilon)
"""

from pollinate.analytics.node import (
    ACTIONS,
    DECLINED,
    Table,
    TableFn,
    answer,
    compute_statistic,
    handle_queries,
)
from pollinate.analytics.privacy import (
    PrivacyAccountant,
    PrivacyCost,
    QueryPrivacy,
    gaussian_epsilon,
    gaussian_noise_multiplier,
)
from pollinate.analytics.queries import (
    Count,
    Histogram,
    HistogramCounts,
    Mean,
    Quantiles,
    Query,
    Sum,
    Variance,
)
from pollinate.analytics.request import MAX_BINS, Condition, StatisticRequest, WhereSpec
from pollinate.analytics.run import QueryResult, run_query
from pollinate.analytics.statistics import Moments

__all__ = [
    "ACTIONS",
    "DECLINED",
    "MAX_BINS",
    "Condition",
    "Count",
    "Histogram",
    "HistogramCounts",
    "Mean",
    "Moments",
    "PrivacyAccountant",
    "PrivacyCost",
    "Quantiles",
    "Query",
    "QueryPrivacy",
    "QueryResult",
    "StatisticRequest",
    "Sum",
    "Table",
    "TableFn",
    "Variance",
    "WhereSpec",
    "answer",
    "compute_statistic",
    "gaussian_epsilon",
    "gaussian_noise_multiplier",
    "handle_queries",
    "run_query",
]
