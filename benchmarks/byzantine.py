"""Byzantine harness: accuracy of FedAvg and of each robust aggregator under attack.

What it runs
------------
A Pollinate simulation (``pollinate.run_simulation``, inline runtime) of 20 nodes on
scikit-learn's digits, split IID (``IidPartitioner``), all 20 nodes training every
round. The model is a NumPy softmax regression (64 features x 10 classes + 10 biases,
float32); each node runs ``LOCAL_STEPS`` steps of mini-batch SGD on random batches of its
partition per round: few local steps per round is the setting the rules' analyses
assume (updates are stochastic gradients).
Nodes 1-4 (partitions 0-3) are the attackers, made so by
:mod:`pollinate.testing.attacks` through their node_config:

- ``clean``: no attacker (every aggregator, to show what robustness costs);
- ``sign-flip``: ``global - k * (local - global)`` with ``k = SIGN_FLIP_SCALE``;
- ``gaussian-noise``: the update replaced by ``N(0, GAUSSIAN_STD^2)`` per coordinate;
- ``label-flip``: attackers train on labels ``9 - y``;
- ``scaled-update``: the honest update boosted ``SCALED_FACTOR`` times;
- ``alie``: "A Little Is Enough" with the paper's ``z_max`` (0.385 for n=20, f=4),
  mean and std estimated from the 4 attackers' own honest updates.

Aggregators: FedAvg (the example-weighted mean), Median, TrimmedMean(beta=0.2),
Krum(f=4), MultiKrum(f=4, m=n-f=16), Bulyan(f=4) (Bulyan needs n >= 4f + 3 = 19).

Each cell is the final centralized test accuracy (the 20% of digits no node holds)
after ``NUM_ROUNDS`` rounds, mean +- std over ``--seeds`` seeds (the seed drives the
data split, the initial model, local shuffling and the noise).

The issue's requirement: robust aggregators stay within 5 points of *clean FedAvg*
under sign flipping, Gaussian noise and label flipping (IID); those cells are marked.
The other attacks are reported, not required.

Usage
-----
``.venv/bin/python benchmarks/byzantine.py`` (writes ``benchmarks/results/byzantine.md``
and ``byzantine.png``; about 80 s on 2 cores); ``--seeds 1 --no-write`` for a quick
look; ``--check`` exits 1 if a required cell misses the margin.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

import pollinate
from pollinate import ArrayRecord, ClientApp, Context, Message, MetricRecord, RecordDict, keys
from pollinate.data import FederatedDataset, IidPartitioner, load_sklearn
from pollinate.records import ConfigRecord, ConfigValue
from pollinate.server import Grid, ServerApp
from pollinate.strategy.aggregate import Aggregator, WeightedMean
from pollinate.strategy.fedavg import FedAvg
from pollinate.strategy.robust import Bulyan, Krum, Median, MultiKrum, TrimmedMean
from pollinate.testing.attacks import (
    ATTACK,
    ATTACK_GROUP,
    ATTACK_SCALE,
    ATTACK_STD,
    alie_z,
    attack_mod,
    maybe_flip_labels,
)

RESULTS = Path(__file__).resolve().parent / "results"

NUM_NODES = 20
NUM_ATTACKERS = 4
ATTACKERS = list(range(NUM_ATTACKERS))  # partition ids 0..3, i.e. nodes 1..4
NUM_ROUNDS = 150
LOCAL_STEPS = 2
BATCH_SIZE = 16
LEARNING_RATE = 0.3
NUM_FEATURES, NUM_CLASSES = 64, 10
SIGN_FLIP_SCALE = 4.0
GAUSSIAN_STD = 1.0
SCALED_FACTOR = 10.0
MARGIN = 5.0  # accuracy points below clean FedAvg a robust aggregator may lose

#: attack name -> the node_config of an attacker
ATTACKS: dict[str, dict[str, ConfigValue]] = {
    "clean": {},
    "sign-flip": {ATTACK: "sign-flip", ATTACK_SCALE: SIGN_FLIP_SCALE},
    "gaussian-noise": {ATTACK: "gaussian-noise", ATTACK_STD: GAUSSIAN_STD},
    "label-flip": {ATTACK: "label-flip"},
    "scaled-update": {ATTACK: "scaled-update", ATTACK_SCALE: SCALED_FACTOR},
    "alie": {ATTACK: "alie", ATTACK_GROUP: ATTACKERS},
}
REQUIRED_ATTACKS = ("sign-flip", "gaussian-noise", "label-flip")

AGGREGATORS: dict[str, Callable[[], Aggregator]] = {
    "FedAvg": WeightedMean,
    "Median": Median,
    "TrimmedMean(beta=0.2)": lambda: TrimmedMean(0.2),
    "Krum(f=4)": lambda: Krum(NUM_ATTACKERS),
    "MultiKrum(f=4, m=16)": lambda: MultiKrum(NUM_ATTACKERS, NUM_NODES - NUM_ATTACKERS),
    "Bulyan(f=4)": lambda: Bulyan(NUM_ATTACKERS),
}


# -- the federated app -----------------------------------------------------------------
@lru_cache(maxsize=4)
def dataset(seed: int) -> FederatedDataset:
    """Digits, IID over the 20 nodes, 20% held out centrally (cached per process)."""
    return load_sklearn(
        "digits",
        num_partitions=NUM_NODES,
        partitioner=IidPartitioner(),
        seed=seed,
        node_test_fraction=0.0,
    )


def init_model(seed: int) -> ArrayRecord:
    rng = np.random.default_rng([seed, 1])
    w = (rng.standard_normal((NUM_FEATURES, NUM_CLASSES)) * 0.01).astype(np.float32)
    return ArrayRecord({"w": w, "b": np.zeros(NUM_CLASSES, np.float32)})


def probabilities(model: ArrayRecord, x: np.ndarray) -> np.ndarray:
    logits = x @ model["w"] + model["b"]
    logits -= logits.max(axis=1, keepdims=True)
    p: np.ndarray = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    return p


def accuracy(model: ArrayRecord, x: np.ndarray, y: np.ndarray) -> float:
    if not all(np.isfinite(a).all() for a in model.values()):
        return 0.0
    return float((probabilities(model, x).argmax(axis=1) == y).mean())


client = ClientApp(mods=[attack_mod])


@client.train()
def train(msg: Message, context: Context) -> Message:
    seed = int(context.run_config["seed"])  # type: ignore[arg-type]
    partition_id = int(context.node_config[keys.PARTITION_ID])  # type: ignore[arg-type]
    part = dataset(seed).partition(partition_id)
    x, y = part.x_train, maybe_flip_labels(part.y_train, context, num_classes=NUM_CLASSES)
    server_round = int(msg.content.get_kind(keys.CONFIG, ConfigRecord)[keys.SERVER_ROUND])
    rng = np.random.default_rng([seed, partition_id, server_round])
    model = msg.content.get_kind(keys.ARRAYS, ArrayRecord)
    w, b = model["w"].copy(), model["b"].copy()
    order = rng.permutation(len(y))
    for step in range(LOCAL_STEPS):
        batch = order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
        if len(batch):
            grad = probabilities(ArrayRecord({"w": w, "b": b}), x[batch])
            grad[np.arange(len(batch)), y[batch]] -= 1.0
            grad /= len(batch)
            w -= LEARNING_RATE * (x[batch].T @ grad)
            b -= LEARNING_RATE * grad.sum(axis=0)
    metrics = MetricRecord({keys.NUM_EXAMPLES: len(y)})
    return msg.reply(
        RecordDict({keys.ARRAYS: ArrayRecord({"w": w, "b": b}), keys.METRICS: metrics})
    )


def run_one(attack: str, aggregator: str, seed: int) -> tuple[str, str, int, float, float]:
    """One simulation; returns ``(attack, aggregator, seed, accuracy, seconds)``."""
    started = time.perf_counter()
    x_test, y_test = dataset(seed).centralized_test()
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> Any:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=NUM_NODES,
            min_available_nodes=NUM_NODES,
            aggregator=AGGREGATORS[aggregator](),
            rng=np.random.default_rng(seed),
        )
        return strategy.start(grid, initial_arrays=init_model(seed), num_rounds=NUM_ROUNDS)

    def node_config(partition_id: int) -> dict[str, ConfigValue]:
        return dict(ATTACKS[attack]) if partition_id in ATTACKERS else {}

    result = pollinate.run_simulation(
        server,
        client,
        num_nodes=NUM_NODES,
        run_config={"seed": seed},
        runtime="inline",
        node_config_fn=node_config,
        run_id=seed,
    )
    return (
        attack,
        aggregator,
        seed,
        accuracy(result.arrays, x_test, y_test),
        (time.perf_counter() - started),
    )


# -- the report ------------------------------------------------------------------------
def summarize(results: dict[tuple[str, str], list[float]]) -> tuple[str, str, list[str]]:
    """The accuracy table, the table of points lost to each attack, and the missed cells."""
    baseline = 100 * float(np.mean(results[("clean", "FedAvg")]))
    header = "| aggregator | " + " | ".join(ATTACKS) + " |"
    rule = "| --- |" + " --- |" * len(ATTACKS)
    lines, drops = [header, rule], [header.replace(" clean |", " clean (accuracy) |"), rule]
    missed: list[str] = []
    for aggregator in AGGREGATORS:
        cells, lost = [], []
        clean = 100 * float(np.mean(results[("clean", aggregator)]))
        for attack in ATTACKS:
            values = 100 * np.asarray(results[(attack, aggregator)])
            mean = float(values.mean())
            cell = f"{mean:.1f}" + (f" ± {values.std():.1f}" if len(values) > 1 else "")
            if attack in REQUIRED_ATTACKS and aggregator != "FedAvg":
                within = mean >= baseline - MARGIN
                cell += " ✓" if within else " ✗"
                if not within:
                    missed.append(f"{aggregator} under {attack}: {mean:.1f}")
            cells.append(cell)
            lost.append(f"{clean:.1f}" if attack == "clean" else f"{mean - clean:+.1f}")
        lines.append(f"| {aggregator} | " + " | ".join(cells) + " |")
        drops.append(f"| {aggregator} | " + " | ".join(lost) + " |")
    return "\n".join(lines), "\n".join(drops), missed


def plot(results: dict[tuple[str, str], list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    width = 0.8 / len(AGGREGATORS)
    positions = np.arange(len(ATTACKS))
    for i, aggregator in enumerate(AGGREGATORS):
        means = [100 * np.mean(results[(a, aggregator)]) for a in ATTACKS]
        stds = [100 * np.std(results[(a, aggregator)]) for a in ATTACKS]
        ax.bar(
            positions + (i - len(AGGREGATORS) / 2 + 0.5) * width,
            means,
            width,
            yerr=stds,
            label=aggregator,
            capsize=2,
        )
    baseline = 100 * float(np.mean(results[("clean", "FedAvg")]))
    ax.axhline(
        baseline - MARGIN,
        color="black",
        linestyle="--",
        linewidth=1,
        label=f"clean FedAvg - {MARGIN:g} points",
    )
    ax.set_xticks(positions, list(ATTACKS))
    ax.set_ylabel("centralized test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"digits, {NUM_NODES} IID nodes, {NUM_ATTACKERS} attackers, {NUM_ROUNDS} rounds")
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds per cell (default 5)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a required cell misses the margin"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    jobs = [
        (attack, aggregator, seed)
        for seed in range(args.seeds)
        for attack in ATTACKS
        for aggregator in AGGREGATORS
    ]
    results: dict[tuple[str, str], list[float]] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for attack, aggregator, seed, acc, seconds in pool.map(run_one, *zip(*jobs, strict=True)):
            results.setdefault((attack, aggregator), []).append(acc)
            print(
                f"{attack:>14} {aggregator:>22} seed {seed}: {100 * acc:5.1f}%  ({seconds:.1f} s)",
                flush=True,
            )
    elapsed = time.perf_counter() - started

    table, drops, missed = summarize(results)
    baseline = 100 * float(np.mean(results[("clean", "FedAvg")]))
    verdict = (
        "all required cells are within 5 points of clean FedAvg"
        if not missed
        else "required cells that missed: " + "; ".join(missed)
    )
    report = f"""# Byzantine robustness benchmark

Produced by `.venv/bin/python benchmarks/byzantine.py` (see its docstring).

- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; wall time {elapsed:.0f} s with \
{args.workers} worker processes on {os.cpu_count()} cores; Python {platform.python_version()}, \
NumPy {np.__version__}, Pollinate {pollinate.__version__}
- federation: scikit-learn digits, {NUM_NODES} nodes, IID partitions, 20% of the samples \
held out as the centralized test set; all {NUM_NODES} nodes train every round, \
{NUM_ROUNDS} rounds
- model: softmax regression (650 float32 parameters), {LOCAL_STEPS} local SGD steps \
(batch {BATCH_SIZE}, lr {LEARNING_RATE}) per round
- attackers: nodes 1-{NUM_ATTACKERS} ({NUM_ATTACKERS} of {NUM_NODES}); sign-flip \
k = {SIGN_FLIP_SCALE:g} (sends global - k * update); gaussian-noise std {GAUSSIAN_STD:g} \
(update replaced by noise); label-flip y -> 9 - y; scaled-update x{SCALED_FACTOR:g}; \
ALIE z = {alie_z(NUM_NODES, NUM_ATTACKERS):.3f} (the paper's z_max), mean and std from \
the attackers' own honest updates
- cells: final centralized test accuracy (%), mean ± std over {args.seeds} seeds; \
a diverged model (non-finite weights) counts as 0
- ✓ / ✗: required cells (robust aggregators under sign-flip, gaussian-noise and \
label-flip): within {MARGIN:g} points of clean FedAvg ({baseline:.1f}%) or not; \
other cells are reported, not required

{table}

**Verdict**: {verdict}.

Points each attack costs an aggregator, against the same aggregator without attackers
(the `clean` column repeats its accuracy):

{drops}

Reading the tables:

- Krum returns *one* node's update each round, the one closest to its neighbours. It
  misses the margin without any attacker getting through (the second table: attacks
  cost it under 1 point): it is 6-7 points below FedAvg with no attacker at all. The
  loss is in *which* update it keeps, not in keeping one: taking one node's update
  picked uniformly at random each round reaches 96.1% (seeds 0-2, no attacker; Krum
  91.1% on the same seeds). Krum's score favours the updates closest to all others,
  which are the shortest steps (in a check of seed 0 the kept update was the shortest
  of the 20 in over 90% of rounds): the nodes whose batch the model already fits, so
  hard samples are seldom trained on. Other local schedules do not close the gap: 1 to 4 steps with
  batches of 4 to 64 give 87-92%; whole local epochs (2 epochs, lr 0.1) make it settle
  on one node (87-88%); a decaying learning rate (84-85%) and the nodes' momentum of
  Karimireddy et al. 2021 (82-88%) make it worse. Multi-Krum, the same paper's remedy,
  averages the m best-scored updates and does not pay that price.
- When the attackers are never selected (Krum, Multi-Krum, Bulyan against far-away
  updates), the result does not depend on the attack, hence identical cells.
- ALIE works as its paper says against Krum: the attackers all send the same vector,
  so their distances to each other are 0 and Krum selects it (every round, in a check
  of seed 0). Here that *helps* Krum: the lie is the mean of 4 honest updates shifted
  by the paper's z_max = 0.385 std, a better model than one node's, and too small a
  shift to hurt a convex model like this one. ALIE barely moves the other rules either.
- A scaled honest update points the right way on IID data, so it does not hurt FedAvg
  here. ALIE and scaled updates are reported, not required.

![accuracy per attack and aggregator](byzantine.png)
"""
    print()
    print(table)
    print()
    print(drops)
    print(f"\n{verdict} ({elapsed:.0f} s)")
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "byzantine.md").write_text(report, encoding="utf-8")
        plot(results, RESULTS / "byzantine.png")
        print(f"wrote {RESULTS / 'byzantine.md'} and byzantine.png")
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
