"""What runs on the server: five questions about condition X, asked of every hospital.

"At what age do patients develop condition X?" The server asks for the number of
patients with X and the count, mean, variance, histogram and quantiles of their age
at onset; it sees only the merged answers (with DP noise when ``dp = true``).
The results are printed and written to ``analytics.json`` in the run's directory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pollinate import Context, Grid, ServerApp
from pollinate.analytics import (
    Count,
    Histogram,
    HistogramCounts,
    Mean,
    Quantiles,
    QueryPrivacy,
    QueryResult,
    Variance,
    run_query,
)

app = ServerApp()

HAS_X = {"condition_x": 1}
ONSET = "age_at_onset"
BOUNDS = (0.0, 120.0)  # years: clamps every age, and fixes the DP sensitivity
LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)

QUERIES = {
    "patients with X": Count(where=HAS_X),
    "mean age at onset": Mean(column=ONSET, where=HAS_X, bounds=BOUNDS),
    "variance of age at onset": Variance(column=ONSET, where=HAS_X, bounds=BOUNDS),
    "age at onset, by decade": Histogram(column=ONSET, where=HAS_X, bounds=(0.0, 100.0)),
    # 0.5-year bins: each quantile is within half a year of the exact one.
    "quantiles of age at onset": Quantiles(
        column=ONSET, where=HAS_X, qs=LEVELS, bounds=BOUNDS, num_bins=240
    ),
}


def _privacy(config: dict[str, Any]) -> QueryPrivacy | None:
    """Each query (epsilon, delta)-DP; a PLD accountant adds up the whole session."""
    if not config["dp"]:
        return None
    from pollinate.privacy.accounting import PldAccountant

    return QueryPrivacy.for_epsilon(
        float(config["epsilon"]), delta=float(config["delta"]), accountant=PldAccountant()
    )


def _describe(name: str, result: QueryResult[Any]) -> str:
    value = result.value
    if isinstance(value, HistogramCounts):
        bins = ", ".join(
            f"{lo:g}-{hi:g}: {c}"
            for lo, hi, c in zip(value.edges, value.edges[1:], value.counts, strict=False)
            if c
        )
        text = f"{name}: {bins}"
    elif isinstance(value, dict):
        text = f"{name}: " + ", ".join(f"q{q:g} {v:.2f}" for q, v in value.items())
    elif isinstance(value, float):
        text = f"{name}: {value:.3f}"
    else:
        text = f"{name}: {value}"
    text += f" (n={result.count}, {len(result.nodes)} hospitals"
    if result.privacy is not None:
        text += f", epsilon {result.privacy.epsilon:.3g} at delta {result.privacy.delta:g}"
    return text + ")"


@app.main()
def main(grid: Grid, context: Context) -> dict[str, Any]:
    config = context.run_config
    privacy = _privacy(config)
    noise_seed = int(config["noise-seed"])
    rng = np.random.default_rng(noise_seed) if noise_seed >= 0 else np.random.default_rng()
    results: dict[str, Any] = {}
    for name, query in QUERIES.items():
        result = run_query(
            grid,
            query,
            min_nodes=int(config["min-nodes"]),
            min_count=int(config["min-count"]),
            timeout=120.0,
            privacy=privacy,
            rng=rng,
        )
        print(_describe(name, result), flush=True)
        for node, reason in result.failures.items():
            print(f"  node {node} left out: {reason}", flush=True)
        results[name] = result.to_dict()
        if result.privacy is not None:
            total = result.privacy.total_epsilon
            results["privacy spent"] = {"epsilon": total, "delta": result.privacy.delta}
    if privacy is not None:
        spent = results["privacy spent"]
        print(
            f"privacy spent by all {len(QUERIES)} queries: epsilon {spent['epsilon']:.3g} "
            f"at delta {spent['delta']:g}",
            flush=True,
        )
    # `pollinate simulate` writes runs/<run-id>/analytics.json; `pollinate run` logs it.
    grid.publish("analytics", results)
    return results
