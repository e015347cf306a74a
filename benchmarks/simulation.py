"""Simulation benchmark: Pollinate (and Flower, if given) on scenarios A1 and A2, end to end.

What it measures
----------------
A1: 100 virtual nodes, 10 sampled per round, 10 rounds. A2: the same with all 100
nodes every round. Each node trains a softmax regression of 7,850 float32 parameters
for 5 mini-batch SGD steps on 64 synthetic samples generated from ``(seed, partition
id)`` (see ``_workload.py``); FedAvg with seeded sampling, no federated evaluation.

Every run is a fresh ``python`` child, so interpreter start, imports, worker start-up
and shutdown all count ("end to end"). For each run this orchestrator measures:

- total wall time: from just before it spawns the child to the child's exit;
- start-up: until round 1 starts, first round: until round 1 is done, and the mean
  time per round (all rounds) and of rounds 2..n (steady state), from the round
  timestamps the child reports on stdout (``BENCH_REPORT {json}``), relative to the
  same spawn instant; shutdown: from the end of the last round to the child's exit;
- peak RSS of the whole process tree: the child and all its descendants (workers,
  Ray's daemons and actors), sampled every 10 ms by summing their RSS. Sampled, so a
  peak shorter than 10 ms can be missed; summed, so pages shared between processes
  (forked workers, shared memory) count once per process.

Each row runs ``--repeats`` times (3 by default); wall time is reported as min / median,
the other columns as medians. A memory-copy bandwidth measurement gives the machine's
physical reference for per-round costs.

Why
---
The issue's targets are end to end: A1 <= 1 s and A2 <= 2 s, against Flower 1.42's
11-13 s and 19-23 s on the same machine.

Usage
-----
``python benchmarks/simulation.py [--flower benchmarks/.venv-flwr/bin/python]`` (the
orchestrator, what ``make bench`` runs), or one child by hand:
``python benchmarks/simulation.py --scenario A1 --runtime inline``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
APP_DIR = BENCH_DIR / "apps" / "softmax"
RESULTS = BENCH_DIR / "results" / "simulation.md"
RUNTIMES = ("inline", "process")
TARGETS = {"A1": 1.0, "A2": 2.0}  # seconds end to end, from the issue


# -- the child: one scenario on Pollinate's Python API ------------------------------------
def run_child(scenario_name: str, runtime: str, workers: int | None) -> None:
    """Run one scenario with ``pollinate.run_simulation``; the ServerApp prints the report.

    Imports only what a user's script would: Pollinate and the benchmark app (the same
    app ``pollinate simulate benchmarks/apps/softmax`` runs).
    """
    sys.path.insert(0, str(APP_DIR))
    from _workload import SCENARIOS, SEED
    from softmax_bench.client_app import app as client_app
    from softmax_bench.server_app import app as server_app

    from pollinate import run_simulation

    scenario = SCENARIOS[scenario_name]
    run_simulation(
        server_app,
        client_app,
        num_nodes=scenario.num_nodes,
        run_config={
            "num-server-rounds": scenario.num_rounds,
            "fraction-train": scenario.fraction_train,
            "seed": SEED,
        },
        runtime=runtime,  # type: ignore[arg-type]  # checked by argparse choices
        num_workers=workers,
    )


# -- the orchestrator -----------------------------------------------------------------------
class Row:
    """One line of the table: a framework/runtime/scenario and its repeated runs."""

    def __init__(self, framework: str, runtime: str, scenario: str, command: list[str]) -> None:
        self.framework = framework
        self.runtime = runtime
        self.scenario = scenario
        self.command = command
        self.runs: list[dict[str, Any]] = []
        self.failure = ""


class TreeRss:
    """Sampled peak of the summed RSS of a process and all its descendants.

    Reads ``/proc`` directly, because the benchmark machine may have only 2 cores and
    the sampler must not slow the child down: every ``interval`` s it reads the RSS of
    the processes known to be in the tree (one ``/proc/PID/statm`` read each, ~15 us),
    and every ``rescan`` s it rebuilds the tree from all processes' parent ids (a full
    ``/proc`` scan, ~1 ms; psutil's ``children(recursive=True)`` plus ``memory_info``
    cost ~2 ms per sample, 20% of a core at 10 ms). A process that lives less than
    ``rescan`` s may be missed. Linux only.
    """

    def __init__(self, pid: int, interval: float = 0.01, rescan: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.rescan = rescan
        self.peak = 0
        self._page = os.sysconf("SC_PAGE_SIZE")

    def run(self, done: threading.Event) -> None:
        """Sample until ``done`` is set; the maximum ends up in :attr:`peak`."""
        pids = [self.pid]
        next_scan = 0.0
        while not done.is_set():
            now = time.monotonic()
            if now >= next_scan:
                pids = self._tree()
                next_scan = now + self.rescan
            total = 0
            for pid in pids:
                with (
                    contextlib.suppress(OSError, ValueError, IndexError),
                    open(f"/proc/{pid}/statm", "rb") as file,
                ):
                    total += int(file.read().split()[1]) * self._page
            self.peak = max(self.peak, total)
            done.wait(self.interval)

    def _tree(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat", "rb") as file:
                    stat = file.read()
                ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
                children.setdefault(ppid, []).append(int(entry))
        tree, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, ()))
        return tree


def measure(command: list[str], num_rounds: int, timeout: float) -> dict[str, Any]:
    """Run ``command`` once as a child; wall time, round times and sampled tree peak RSS.

    The child gets its own session so that, whatever it leaves behind (a Ray daemon,
    a stuck worker), the whole group can be killed afterwards.
    """
    import json
    import signal
    import subprocess
    import tempfile

    from _workload import REPORT_PREFIX

    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=err,
            env=env,
            cwd=BENCH_DIR.parent,
            start_new_session=True,
        )
        tree = TreeRss(proc.pid)
        done = threading.Event()
        sampler = threading.Thread(target=tree.run, args=(done,), daemon=True)
        sampler.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
        leftovers = _kill_group(proc.pid, signal.SIGKILL)
        if timed_out:
            proc.wait()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")

    result: dict[str, Any] = {"wall": wall, "rss_mb": tree.peak / 2**20, "leftovers": leftovers}
    if timed_out:
        result["error"] = f"timeout after {timeout:.0f} s"
        return result
    reports = [line for line in stdout.splitlines() if line.startswith(REPORT_PREFIX)]
    if proc.returncode != 0 or not reports:
        tail = (stderr.strip().splitlines() or ["(no stderr)"])[-1][:200]
        result["error"] = f"exit code {proc.returncode}: {tail}"
        return result
    report = json.loads(reports[-1][len(REPORT_PREFIX) :])
    stamps = [s - t0 for s in report["stamps"]]
    if len(stamps) != num_rounds + 1:
        result["error"] = f"expected {num_rounds + 1} round stamps, got {len(stamps)}"
        return result
    result.update(
        startup=stamps[0],
        first_round=stamps[1],
        mean_round=(stamps[-1] - stamps[0]) / num_rounds,
        steady_round=(stamps[-1] - stamps[1]) / max(1, num_rounds - 1),
        shutdown=wall - stamps[-1],
        report=report,
    )
    return result


def _kill_group(pgid: int, sig: int) -> int:
    """Kill what is left of the child's session (our own child's group); count it."""
    left = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                left += os.getpgid(int(entry)) == pgid
    if left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
    return left


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Memory copy bandwidth in GB/s: best of ``repeats`` numpy copies of a 256 MB buffer.

    Counts the bytes copied once (each byte is read once and written once).
    """
    import time

    import numpy as np

    size = megabytes * 2**20
    src = np.ones(size, dtype=np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in before timing
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return size / best / 1e9


def workload_cost(calls: int = 200, repeats: int = 3) -> float:
    """Milliseconds per train call of the workload alone (data + SGD, no framework).

    The floor under any framework's per-node cost: A1 makes 100 such calls, A2 1,000.
    """
    import numpy as np
    from _workload import init_params, node_data, train

    params = init_params()
    for p in params:
        p.flags.writeable = False  # as the runtimes hand them out
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(calls):
            x, y = node_data(0, i % 100)
            train(params, x, y, rng=np.random.default_rng([0, i, 1]))
        best = min(best, time.perf_counter() - started)
    return best / calls * 1e3


def machine() -> dict[str, str]:
    """Cores, CPU model, Python and NumPy versions, date."""
    import platform
    import time

    import numpy as np

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    memory = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cores": f"{usable} usable ({os.cpu_count()} logical)",
        "cpu": model,
        "memory": memory,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "os": platform.platform(),
    }


def build_rows(flower: str | None, include_cli: bool) -> list[Row]:
    """Every row of the table, in the order they run."""
    me = [sys.executable, str(Path(__file__).resolve())]
    rows = []
    for scenario in ("A1", "A2"):
        for runtime in RUNTIMES:
            rows.append(
                Row(
                    "pollinate",
                    runtime,
                    scenario,
                    [*me, "--scenario", scenario, "--runtime", runtime],
                )
            )
    if include_cli:
        cli = str(Path(sys.executable).with_name("pollinate"))
        for runtime in RUNTIMES:
            runs_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "pollinate-bench-runs"
            rows.append(
                Row(
                    "pollinate CLI",
                    runtime,
                    "A1",
                    [
                        cli,
                        "simulate",
                        str(APP_DIR),
                        "--runtime",
                        runtime,
                        "--runs-dir",
                        str(runs_dir),
                    ],
                )
            )
    if flower:
        script = str(BENCH_DIR / "flower_simulation.py")
        for scenario in ("A1", "A2"):
            rows.append(Row("flower", "ray", scenario, [flower, script, "--scenario", scenario]))
    return rows


def _fmt(values: list[float], digits: int = 2) -> str:
    return f"{sorted(values)[len(values) // 2]:.{digits}f}" if values else "-"


def table(rows: list[Row]) -> str:
    """The markdown table of all rows."""
    import statistics

    lines = [
        "| framework | runtime | scenario | total wall s (min / median) | start-up s "
        "| first round s | mean round s | rounds 2+ s | shutdown s | peak RSS MB | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ok = [r for r in row.runs if "error" not in r]
        errors = sorted({r["error"] for r in row.runs if "error" in r})
        if not ok:
            why = "; ".join(errors) or row.failure or "not run"
            lines.append(
                f"| {row.framework} | {row.runtime} | {row.scenario} | FAILED: {why} "
                "| - | - | - | - | - | - | - |"
            )
            continue
        walls = [r["wall"] for r in ok]
        wall = f"{min(walls):.2f} / {statistics.median(walls):.2f}"
        if errors:
            wall += f" ({len(errors)} failed: {'; '.join(errors)})"
        target = TARGETS[row.scenario]
        verdict = ""
        if row.framework.startswith("pollinate"):
            verdict = "met" if statistics.median(walls) <= target else f"missed (<= {target:g} s)"
        lines.append(
            f"| {row.framework} | {row.runtime} | {row.scenario} | {wall} "
            f"| {_fmt([r['startup'] for r in ok])} | {_fmt([r['first_round'] for r in ok])} "
            f"| {_fmt([r['mean_round'] for r in ok], 3)} "
            f"| {_fmt([r['steady_round'] for r in ok], 3)} "
            f"| {_fmt([r['shutdown'] for r in ok])} | {_fmt([r['rss_mb'] for r in ok], 0)} "
            f"| {verdict} |"
        )
    return "\n".join(lines)


def orchestrate(args: argparse.Namespace) -> None:
    """Run every row ``args.repeats`` times, print the table and write the results file."""
    from _workload import SCENARIOS

    info = machine()
    bandwidth = copy_bandwidth()
    per_call = workload_cost()
    load_before = os.getloadavg()[0]
    flower = args.flower
    flower_note = ""
    if flower and not Path(flower).exists():
        flower_note = f"Flower skipped: {flower} does not exist (run `make bench-flower-venv`)."
        flower = None
    rows = build_rows(flower, include_cli=not args.no_cli)
    if args.only:
        rows = [r for r in rows if r.framework.split()[0] in args.only]
    for row in rows:
        rounds = SCENARIOS[row.scenario].num_rounds
        for i in range(args.repeats):
            result = measure(row.command, rounds, args.timeout)
            row.runs.append(result)
            detail = result.get("error") or (
                f"first round {result['first_round']:.2f} s, "
                f"mean round {result['mean_round']:.3f} s"
            )
            print(
                f"{row.framework:13s} {row.runtime:7s} {row.scenario} run {i + 1}: "
                f"{result['wall']:6.2f} s wall, {result['rss_mb']:5.0f} MB peak RSS; {detail}",
                file=sys.stderr,
                flush=True,
            )
    load_after = os.getloadavg()[0]
    leftovers = [
        f"{row.framework} {row.runtime} {row.scenario}: {sum(r['leftovers'] for r in row.runs)}"
        for row in rows
        if any(r["leftovers"] for r in row.runs)
    ]
    versions = sorted(
        {
            f"{r['report']['framework']} {r['report'].get('version', '')} "
            f"(ray {r['report']['ray_version']})"
            for row in rows
            for r in row.runs
            if "report" in r and "ray_version" in r["report"]
        }
    )
    text = "\n".join(
        [
            "# Simulation benchmark",
            "",
            "Produced by `make bench` (`benchmarks/simulation.py`); see `benchmarks/README.md`.",
            "",
            f"- date: {info['date']}",
            f"- machine: {info['cpu']}, {info['cores']}, {info['memory']} RAM; {info['os']}",
            f"- Python {info['python']}, NumPy {info['numpy']}"
            + (f"; {', '.join(versions)}" if versions else ""),
            f"- memory copy bandwidth (numpy copy of a 256 MiB buffer, best of 5): "
            f"{bandwidth:.1f} GB/s",
            f"- workload alone (node data + 5 SGD steps, in-process, no framework): "
            f"{per_call:.2f} ms per train call, so {per_call * 100 / 1e3:.2f} s of compute "
            f"for A1 (100 calls) and {per_call * 1000 / 1e3:.2f} s for A2 (1,000 calls) on "
            "one core",
            f"- 1-minute load average before / after the runs: {load_before:.2f} / "
            f"{load_after:.2f} (other work on the machine adds noise)",
            f"- {args.repeats} runs per row, each a fresh process; wall time min / median, "
            "other columns medians, all measured from the instant the child was spawned",
            "- peak RSS: the child's whole process tree, summed, sampled every 10 ms",
            "- processes still alive in a child's session after it exited (then killed): "
            + ("; ".join(leftovers) if leftovers else "none"),
            "- targets (issue): A1 <= 1 s, A2 <= 2 s end to end (median wall)",
            *([f"- {flower_note}"] if flower_note else []),
            "",
            table(rows),
            "",
        ]
    )
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")
        print(f"written to {RESULTS.relative_to(BENCH_DIR.parent)}", file=sys.stderr)


def main() -> None:
    """Run as the orchestrator, or as one child with ``--scenario``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("A1", "A2"), help="run one scenario (child mode)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="inline")
    parser.add_argument("--workers", type=int, default=None, help="process runtime workers")
    parser.add_argument("--flower", metavar="PYTHON", help="python of a venv with flwr 1.42")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--only", nargs="+", choices=("pollinate", "flower"), default=None)
    parser.add_argument("--no-cli", action="store_true", help="skip the `pollinate simulate` rows")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args()
    if args.scenario:
        run_child(args.scenario, args.runtime, args.workers)
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
