"""Flower's deployment engine on the workload of ``benchmarks/deployment.py``.

What: Flower 1.42's SuperLink and 10 SuperNodes as real processes on 127.0.0.1
(plaintext, ``--insecure``), running ``benchmarks/apps/flower_deploy_bench`` with
``flwr run``: FedAvg over all 10 nodes, training only, 3 rounds, one float32 array of
8,192 or 10,000,000 parameters; the ClientApp replies the arrays it got plus 0.001,
like Pollinate's ``deploy_bench``. Per size it records the wall time of each round
(timestamps the ServerApp appends to a file named by ``BENCH_OUT``), the peak RSS of the
SuperLink's process tree (SuperLink, its SuperExec and the ServerApp process) and of all
processes together, sampled as ``deployment.py`` samples Pollinate's.

Why: the issue quotes Flower's figures; this measures them on the same machine and, with
``make bench-deployment``, in the same session as Pollinate's.

In Flower 1.42 the SuperLink serves its Fleet, Control and runtime APIs over HTTP on one
port; each SuperNode runs its ClientApp in a ``flwr-clientapp`` subprocess and listens
on a port of its own. The app's dependencies are already in Flower's venv
(``--disable-runtime-dependency-installation``), so no per-run environment is built.

Usage: ``.venv/bin/python benchmarks/flower_deployment.py`` after
``make bench-flower-venv``; writes ``benchmarks/results/flower_deployment.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from deployment import NUM_NODES, RssSampler, free_port, machine_line  # noqa: E402

FLOWER_BIN = BENCH_DIR / ".venv-flwr" / "bin"
APP_DIR = BENCH_DIR / "apps" / "flower_deploy_bench"
RESULTS = BENCH_DIR / "results" / "flower_deployment.md"
#: The figures ``deployment.py`` puts beside Pollinate's (run this first).
RESULTS_JSON = BENCH_DIR / "results" / "flower_deployment.json"
SIZES = (8_192, 10_000_000)
MB = 1e6


@dataclass
class FlowerRun:
    """One run of the app at one model size."""

    parameters: int
    round_ends: list[float] = field(default_factory=list)  # round 0 = before round 1
    superlink_rss: int = 0
    total_rss: int = 0
    error: str = ""

    @property
    def rounds(self) -> list[float]:
        """Wall time of each round."""
        return [b - a for a, b in zip(self.round_ends, self.round_ends[1:], strict=False)]

    @property
    def steady_round(self) -> float:
        """Mean of rounds 2+ (round 1 alone if only one ran)."""
        rounds = self.rounds
        return statistics.fmean(rounds[1:] or rounds[:1]) if rounds else float("nan")


def _descendants(pid: int) -> list[int]:
    """``pid``'s descendants, read from ``/proc`` (Flower detaches its SuperExec into a
    session of its own, so a process group does not hold everything)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = [int(c) for c in (task / "children").read_text().split()]
                found += children
                pending += children
    return found


def _kill_all(processes: list[subprocess.Popen[bytes]]) -> None:
    doomed = [p.pid for p in processes]
    for process in processes:
        doomed += _descendants(process.pid)
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)


def _wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {text!r} in {path}")


def measure(parameters: int, rounds: int, timeout: float) -> FlowerRun:
    """Start a SuperLink and the SuperNodes, run the app once, kill everything."""
    result = FlowerRun(parameters)
    with tempfile.TemporaryDirectory(prefix="flower-deploy-bench-") as tmp:
        work = Path(tmp)
        port = free_port()
        home = work / "home"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
            f'address = "127.0.0.1:{port}"\ninsecure = true\n'
        )
        out = work / "rounds.jsonl"
        env = dict(
            os.environ,
            FLWR_HOME=str(home),
            FLWR_TELEMETRY_ENABLED="0",
            BENCH_OUT=str(out),
            PATH=f"{FLOWER_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        env.pop("VIRTUAL_ENV", None)
        processes: list[subprocess.Popen[bytes]] = []

        def start(name: str, *command: str) -> subprocess.Popen[bytes]:
            with open(work / f"{name}.log", "wb") as log:
                process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=work,
                    env=env,
                    start_new_session=True,
                )
            processes.append(process)
            return process

        try:
            superlink = start(
                "superlink",
                "flower-superlink",
                "--insecure",
                "--port",
                str(port),
                "--disable-runtime-dependency-installation",
            )
            _wait_for_text(work / "superlink.log", "Uvicorn running", 60)
            nodes = [
                start(
                    f"node{i}",
                    "flower-supernode",
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f"partition-id={i}",
                )
                for i in range(NUM_NODES)
            ]
            for i in range(NUM_NODES):
                _wait_for_text(work / f"node{i}.log", "SuperNode ID", 60)
            roots = {"superlink": superlink.pid} | {f"node{i}": p.pid for i, p in enumerate(nodes)}
            command = [
                str(FLOWER_BIN / "flwr"),
                "run",
                str(APP_DIR),
                "--stream",
                "--run-config",
                f"num-parameters={parameters} num-nodes={NUM_NODES} num-server-rounds={rounds}",
            ]
            with RssSampler(roots, interval=0.05) as sampler:
                completed = subprocess.run(
                    command, capture_output=True, text=True, timeout=timeout, cwd=work, env=env
                )
                # `flwr run --stream` may return before the ServerApp's last write.
                with contextlib.suppress(RuntimeError):
                    _wait_for_text(out, '"done"', 30)
            result.superlink_rss = sampler.peaks["superlink"]
            result.total_rss = sampler.peak_total
            lines = (
                [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
            )
            result.round_ends = [line["time"] for line in lines if "round" in line]
            done = [line for line in lines if "done" in line]
            if completed.returncode != 0 or len(result.round_ends) != rounds + 1 or not done:
                tail = (completed.stdout + completed.stderr)[-1500:]
                result.error = f"flwr run exited with {completed.returncode}: {tail}"
            elif abs(done[0]["mean"] - 0.001 * rounds) > 1e-4:
                result.error = f"wrong final model: mean {done[0]['mean']}"
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result.error = str(exc)
        finally:
            _kill_all(processes)
    return result


def main() -> None:
    """Measure each size, print the table and write ``results/flower_deployment.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=2, help="runs per size (median shown)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if not (FLOWER_BIN / "flower-superlink").exists():
        sys.exit("Flower's venv is missing: run `make bench-flower-venv` first")
    version = subprocess.run(
        [str(FLOWER_BIN / "python"), "-c", "import flwr; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    rows = []
    figures: dict[str, dict[str, float]] = {}
    for size in args.sizes:
        runs = [measure(size, args.rounds, args.timeout) for _ in range(args.repeat)]
        for run in runs:
            print(
                f"{size}: rounds {[round(r, 2) for r in run.rounds]} superlink "
                f"{run.superlink_rss / MB:.0f} MB all {run.total_rss / MB:.0f} MB"
                + (f" ERROR {run.error}" if run.error else ""),
                file=sys.stderr,
                flush=True,
            )
        good = sorted((r for r in runs if not r.error), key=lambda r: r.steady_round)
        if not good:
            rows.append(f"| {size:,} | failed: {runs[0].error[:200]} | | | | |")
            continue
        median = good[(len(good) - 1) // 2]
        figures[str(size)] = {
            "round": median.steady_round,
            "superlink_rss": median.superlink_rss,
            "total_rss": median.total_rss,
        }
        steadies = ", ".join(f"{r.steady_round:.2f}" for r in good)
        rows.append(
            f"| {size:,} | {median.rounds[0]:.2f} | {median.steady_round:.2f} ({steadies}) | "
            f"{median.superlink_rss / MB:,.0f} | {median.total_rss / MB:,.0f} | {len(good)} |"
        )
    text = "\n".join(
        [
            "# Flower deployment benchmark",
            "",
            "Produced by `benchmarks/flower_deployment.py` (`make bench-deployment`).",
            "",
            f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"- machine: {machine_line()}",
            f"- Flower {version}: `flower-superlink --insecure` and {NUM_NODES} "
            "`flower-supernode --insecure` on 127.0.0.1, `flwr run` of "
            "`benchmarks/apps/flower_deploy_bench` (FedAvg over all nodes, training only, "
            f"{args.rounds} rounds; the ClientApp returns the arrays + 0.001), the workload "
            "of `deployment.md`",
            "- SuperLink peak RSS: the SuperLink with its SuperExec and ServerApp processes; "
            "all processes: SuperLink tree + SuperNodes with their ClientApp processes, "
            "sampled every 50 ms",
            "",
            "| parameters | round 1 s | rounds 2+ s (each run) | SuperLink peak RSS MB | "
            "all processes MB | runs |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        stamp = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "flwr": version}
        RESULTS_JSON.write_text(json.dumps({**stamp, "sizes": figures}, indent=1) + "\n")
        print(f"written to {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
