"""SecAgg+ cost per stage, against plain FedAvg on the same workload.

Runs the sans-I/O protocol in memory (``pollinate.privacy.secagg.inmemory``): one
process, nodes called in turn, every message encoded to records and back (the wire
format), so the figures are the protocol's own CPU cost, without transport. Per
stage it reports the server's time and the mean time of one node, and the bytes one
node sends over the whole round (its replies serialized with ``pollinate.serde``).

Plain FedAvg on the same workload: each node sends its float32 update and a
``num-examples`` metric; the server folds the n updates into a weighted mean
(``WeightedMeanAccumulator``).

Usage: ``.venv/bin/python benchmarks/secagg.py [--quick]`` (about 2 minutes; --quick
runs only the small scenarios). Writes ``benchmarks/results/secagg.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pollinate.privacy.secagg import SecAggConfig
from pollinate.privacy.secagg.inmemory import run_locally
from pollinate.privacy.secagg.messages import Stage
from pollinate.records import ArrayRecord, MetricRecord, RecordDict
from pollinate.serde import recorddict_to_bytes
from pollinate.strategy.aggregate import WeightedMeanAccumulator

RESULTS = Path(__file__).parent / "results" / "secagg.md"
REPEATS = 3


@dataclass(frozen=True)
class Scenario:
    num_nodes: int
    num_params: int
    dropout: float
    num_shares: int
    threshold: int

    @property
    def name(self) -> str:
        size = f"{self.num_params // 1000}k params"
        return f"{self.num_nodes} nodes x {size}, {self.dropout:.0%} dropout"


SCENARIOS = [
    Scenario(100, 100_000, 0.0, 14, 8),
    Scenario(100, 100_000, 0.1, 14, 8),
    Scenario(1000, 10_000, 0.0, 20, 11),
    Scenario(1000, 10_000, 0.1, 20, 11),
]
QUICK = [Scenario(20, 10_000, 0.0, 8, 5), Scenario(20, 10_000, 0.1, 8, 5)]


def _updates(s: Scenario, rng: np.random.Generator) -> dict[int, ArrayRecord]:
    return {
        node: ArrayRecord({"w": rng.uniform(-1, 1, s.num_params).astype(np.float32)})
        for node in range(1, s.num_nodes + 1)
    }


def run_secagg(s: Scenario, seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    updates = _updates(s, rng)
    weights = {node: float(rng.integers(10, 100)) for node in updates}
    config = SecAggConfig(
        num_shares=s.num_shares,
        reconstruction_threshold=s.threshold,
        clipping_range=1.0,
        quantization_range=2**20,
        modulus_bits=32,
        max_weight=100.0,
    )
    params = config.params(weighted=True)
    # Dropouts happen after the shares went out: the costliest case for the server,
    # which must rebuild each dropped node's key and strip its pairwise masks.
    dropped = set(rng.choice(list(updates), int(s.dropout * s.num_nodes), replace=False).tolist())
    started = time.perf_counter()
    run = run_locally(
        updates,
        params,
        num_shares=s.num_shares,
        rng=rng,
        weights=weights,
        drop={Stage.MASKED_INPUT: dropped},
        measure_bytes=True,
    )
    wall = time.perf_counter() - started
    survivors = run.server.survivors
    exact = sum(weights[n] * updates[n]["w"].astype(np.float64) for n in survivors) / sum(
        weights[n] for n in survivors
    )
    error = float(np.abs(run.result.mean(params)["w"] - exact).max())
    return {
        "wall": wall,
        "server": dict(run.server_seconds),
        "node": {k: v / s.num_nodes for k, v in run.node_seconds.items()},
        "bytes": statistics.mean(run.bytes_sent[n] for n in survivors),
        "error": error,
        "survivors": len(survivors),
    }


def run_plain(s: Scenario, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    updates = _updates(s, rng)
    sizes = []
    started = time.perf_counter()
    accumulator = WeightedMeanAccumulator()
    for arrays in updates.values():
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 50})})
        sizes.append(len(recorddict_to_bytes(content)))
        accumulator.add(arrays, 50.0)
    accumulator.result()
    return {"server": time.perf_counter() - started, "bytes": statistics.mean(sizes)}


def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _fmt_b(count: float) -> str:
    return f"{count / 1024:.0f} KiB" if count < 1024**2 else f"{count / 1024**2:.2f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small scenarios only")
    args = parser.parse_args()
    scenarios = QUICK if args.quick else SCENARIOS
    rows = []
    for s in scenarios:
        print(f"{s.name} ...", flush=True)
        # The machine is shared: keep each figure's best of REPEATS runs.
        runs = [run_secagg(s, seed) for seed in range(REPEATS)]
        secure = runs[0]
        for key in ("server", "node"):
            secure[key] = {
                st: min(r[key][st] for r in runs)  # type: ignore[index]
                for st in secure[key]  # type: ignore[attr-defined]
            }
        secure["wall"] = min(float(r["wall"]) for r in runs)  # type: ignore[arg-type]
        plain_runs = [run_plain(s, seed) for seed in range(REPEATS)]
        plain = {k: min(r[k] for r in plain_runs) for k in plain_runs[0]}
        rows.append((s, secure, plain))
        print(f"  wall {secure['wall']:.1f} s, bytes/node {_fmt_b(secure['bytes'])}", flush=True)
    stages = list(Stage.ALL)
    lines = [
        "# SecAgg+ benchmark",
        "",
        f"`benchmarks/secagg.py`; Python {platform.python_version()}, NumPy {np.__version__}, "
        f"{platform.machine()}, one process, one thread, best of "
        f"{REPEATS} runs per figure (the machine is shared with other work: treat the "
        "times as indicative). Weighted mean (FedAvg), 32-bit modulus, 2^20 quantization "
        "levels, clipping range 1. Dropouts happen at the masked-input stage (after the "
        "shares went out), the server's costliest case. k = neighbours per node, t = "
        "reconstruction threshold.",
        "",
        "## Time per stage",
        "",
        "Server: the server's protocol code for the stage (building requests, folding "
        "inputs, reconstructing secrets, stripping masks). Node: the mean time of one node "
        "(key generation, Shamir sharing and encryption, decryption and masking, answering "
        "unmask). Plain FedAvg: the server folding the n updates into a weighted mean.",
        "",
        "| scenario | k / t | "
        + " | ".join(f"{st} server / node" for st in stages)
        + " | SecAgg+ server total | plain FedAvg server |",
        "| --- | --- | " + " | ".join("---" for _ in stages) + " | --- | --- |",
    ]
    for s, secure, plain in rows:
        server, node = secure["server"], secure["node"]
        cells = [f"{_fmt_s(server.get(st, 0.0))} / {_fmt_s(node.get(st, 0.0))}" for st in stages]  # type: ignore[union-attr]
        lines.append(
            f"| {s.name} | {s.num_shares} / {s.threshold} | "
            + " | ".join(cells)
            + f" | {_fmt_s(sum(server.values()))} | {_fmt_s(plain['server'])} |"  # type: ignore[union-attr]
        )
    lines += [
        "",
        "## Bytes sent per node, and accuracy",
        "",
        "| scenario | SecAgg+ (all 4 replies) | plain FedAvg (float32 update) | expansion | "
        "max error of the mean |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s, secure, plain in rows:
        lines.append(
            f"| {s.name} | {_fmt_b(secure['bytes'])} | {_fmt_b(plain['bytes'])} | "  # type: ignore[arg-type]
            f"{secure['bytes'] / plain['bytes']:.3f}x | {secure['error']:.1e} |"  # type: ignore[operator]
        )
    lines += ["", PAPER, ""]
    RESULTS.write_text("\n".join(lines))
    print(f"wrote {RESULTS}")


PAPER = """## Beside the papers

What the papers report. The concrete figures below are quoted from the papers'
abstracts (checked against their published abstracts); the asymptotics are from
their main theorems. Neither paper reports per-stage times on hardware like ours.

- **SecAgg+ (Bell, Bonawitz, Gascon, Lepoint, Raykova, CCS 2020, eprint 2020/704)**,
  asymptotic only (no constants): each client talks to O(log n) neighbours, so its
  computation is O(log^2 n + l log n) and its communication O(log n + l) for
  vectors of length l; the server's computation is O(n (log^2 n + l log n)).
  Concretely (abstract): the semi-honest protocol "can handle a billion clients at
  the per-client cost of the protocol of Bonawitz et al. for a thousand clients";
  with 10^4 clients (semi-malicious), each client communicates with only 3% of the
  clients, its input summed with at least 5000 others, withstanding 5% corrupt
  clients and 5% dropouts.
  *Ours*: per-node time and bytes depend on k (14 and 20 here) and l, not on n:
  compare the 100-node and 1000-node rows (per-node bytes track l, per-node
  share-keys time tracks k).
- **SecAgg (Bonawitz et al., CCS 2017; arXiv 1611.04482)**: "for 16-bit input
  values, our protocol offers 1.73x communication expansion for 2^10 users and
  2^20-dimensional vectors, and 1.98x expansion for 2^14 users and 2^24 dimensional
  vectors" (abstract), over sending the values in the clear. *Ours* is measured
  against float32 plaintext with 32-bit masked entries, so the expansion is ~1x plus
  the key and share traffic: not the same baseline.
- **Server cost of SecAgg**: quadratic in n (the complete graph: every pair shares
  a mask), which is what SecAgg+ removes. *Ours*: with k fixed, each dropped node
  costs the server O(k l) (compare the 0% and 10% rows), not O(n l).

Bell et al. also derive concrete k and t from n, the dropout rate and the fraction
of corrupt clients; we do not reproduce that table. Our k / t above were chosen by
hand to survive 10% random dropout with a wide margin, not from their bounds.
"""


if __name__ == "__main__":
    sys.exit(main())
