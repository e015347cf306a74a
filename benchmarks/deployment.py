"""Deployment benchmark: 1 server and 10 nodes as real processes on 127.0.0.1, over gRPC.

What it measures
----------------
For each model size (8,192, 1M and 10M float32 parameters by default) it starts a fresh
``pollinate server --insecure`` (its own SQLite state in a temporary directory) and 10
``pollinate node --insecure`` processes, each in its own process group, waits until
every node is connected, then submits ``benchmarks/apps/deploy_bench`` with
``pollinate run`` for ``--rounds`` rounds (3 by default). The ServerApp runs FedAvg
over all 10 nodes per round, training only; the ClientApp replies the arrays it got
plus 0.001, so the time is the framework's (serialization, chunk hashing, the
server's state store, gRPC and the bulk port) and not a model's. The server opens its
bulk port (``--bulk-port auto``), so frames of 1 MiB or more cross it beside gRPC;
``--bulk-port off`` measures every frame in gRPC chunks instead.

Per size it records, from the ``BENCH_ROUND`` lines the ServerApp prints (wall-clock
timestamps, see ``deploy_bench/server_app.py``):

- round 1 and the mean of rounds 2+ (round 1 pays first-use costs: imports on the
  nodes, gRPC stream set-up, page faults of fresh buffers);
- the split of a steady round into *send* (the ServerApp uploads the 10 instructions
  to the server), *nodes* (from the last upload until the first reply reaches the
  ServerApp), *replies* (first to last reply) and *aggregate* (last reply to the end
  of the round);
- total: from just before ``pollinate run`` is spawned until it exits;
- peak RSS, sampled every 10 ms from ``/proc``: of the server's process tree (the
  server plus the run's ServerApp child), of one node, of the largest node, and of
  the sum over all processes (server tree + 10 nodes). The sample instants are the
  same for all, so the sum's peak is a real simultaneous total.

As physical references it measures, on this machine: the memory copy bandwidth,
the TCP loopback bandwidth (1 GiB ``sendall``/``recv_into`` between two processes
over 127.0.0.1), XXH3-128 throughput (what every 4 MiB chunk's digest costs) and
the time to write and ``fsync`` a 40 MB file in the state directory's file system.
For the 10M model a round must move 10 x 40 MB to the nodes and 10 x 40 MB back, and
with the current design each of those 800 MB crosses loopback twice (ServerApp ->
server -> node, node -> server -> ServerApp): 1.6 GB of loopback traffic per round.

``--profile`` re-runs the largest size with ``py-spy record`` attached to the server
(with ``--subprocesses``, so the ServerApp is included) and to one node, and prints
where their CPU time goes (inclusive share of samples per component).

Why
---
The issue's targets: <= 0.1 s per round with the 8k model, <= 1.5 s per round with
the 10M model, and the server's peak RSS under 3 x model size + 300 MB. Flower 1.42
(SuperLink + 10 SuperNodes) took 15.7 s and 35.5 s per round on this machine, says the
issue; ``flower_deployment.py`` measures it on the same workload (``make
bench-deployment`` runs it first), and its figures go in the last column.

Usage
-----
``python benchmarks/deployment.py`` (all sizes, writes ``results/deployment.md``),
``--sizes 8192 --rounds 2 --no-write`` for a quick look,
``--profile --py-spy /tmp/pyspy/bin/py-spy`` for the 10M profile. Linux only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

BENCH_DIR = Path(__file__).resolve().parent
APP_DIR = BENCH_DIR / "apps" / "deploy_bench"
RESULTS = BENCH_DIR / "results" / "deployment.md"
DEFAULT_SIZES = (8_192, 1_000_000, 10_000_000)
NUM_NODES = 10
ROUND_PREFIX = "BENCH_ROUND "
DONE_PREFIX = "BENCH_DONE "
#: Issue targets: seconds per round by model size (parameters); RSS: 3 x model + 300 MB.
ROUND_TARGETS = {8_192: 0.1, 10_000_000: 1.5}
#: Flower 1.42 deployment (SuperLink + 10 SuperNodes) on this machine, from the issue;
#: replaced by ``flower_deployment.py``'s measurement when it exists.
FLOWER_ROUND = {8_192: 15.7, 10_000_000: 35.5}
FLOWER_RESULTS = BENCH_DIR / "results" / "flower_deployment.json"
FLOWER_TOTAL_RSS_GB = 8.3
MB = 1e6


def flower_figures() -> tuple[dict[int, float], str]:
    """Flower's s/round per size and where they come from."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        measured = json.loads(FLOWER_RESULTS.read_text())
        rounds = {int(size): float(f["round"]) for size, f in measured["sizes"].items()}
        totals = [f["total_rss"] for f in measured["sizes"].values()]
        source = (
            f"measured by `flower_deployment.py` ({measured['date']}, flwr {measured['flwr']}, "
            f"same workload, see flower_deployment.md): "
            + ", ".join(f"{rounds[s]:.1f} s per round ({_size_name(s)})" for s in sorted(rounds))
            + f", up to {max(totals) / 1e9:.1f} GB resident across its processes"
        )
        return rounds, source
    return FLOWER_ROUND, (
        "quoted from the issue (no flower_deployment.json): 15.7 s per round (8k), 35.5 s "
        f"per round (10M), {FLOWER_TOTAL_RSS_GB} GB resident across its processes"
    )


# -- process handling -------------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Fleet:
    """The server and node processes of one measurement; :meth:`kill` ends them all.

    Each process is started in its own session (so its own process group, which also
    holds the server's ServerApp child) and logs to a file in ``workdir``. ``kill`` sends
    SIGKILL to every group, so nothing survives a failed or interrupted run.
    """

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``pollinate ARGS`` as process ``name`` (log in ``workdir/name.log``)."""
        with open(self.workdir / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "pollinate.cli.main", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.env,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        """What process ``name`` printed so far."""
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def wait_for(self, names: Sequence[str], text: str, timeout: float) -> None:
        """Wait until every log in ``names`` contains ``text``; fail early if one died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in names:
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"{name} exited early:\n{self.log(name)[-2000:]}")
            if all(text in self.log(name) for name in names):
                return
            time.sleep(0.05)
        raise RuntimeError(f"timed out after {timeout} s waiting for {text!r} in {names}")

    def kill(self) -> None:
        """SIGKILL every process group started here and reap the leaders."""
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)


def rss_now(pid: int) -> int:
    """Resident bytes of one process now (0 if it has ended)."""
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open(f"/proc/{pid}/statm", "rb") as file,
    ):
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    return 0


class RssSampler:
    """Sampled peak RSS of named process trees, and of their sum, read from ``/proc``.

    Every ``interval`` s it reads ``/proc/PID/statm`` of each known process through a
    file kept open (a few us each); every ``rescan`` s it refreshes the trees' members
    from ``/proc/PID/task/TID/children`` (this catches the ServerApp child a server
    starts). With 22 processes it costs about 3% of a core (7% when it opened every
    file each time and scanned all of ``/proc``), CPU the measured processes share.
    The sum's peak is taken over simultaneous samples.
    """

    def __init__(self, roots: dict[str, int], interval: float = 0.01, rescan: float = 0.5) -> None:
        self.roots = roots
        self.interval = interval
        self.rescan = rescan
        self.peaks: dict[str, int] = dict.fromkeys(roots, 0)
        #: Peaks of the root process alone, and of its descendants alone (summed).
        self.root_peaks: dict[str, int] = dict.fromkeys(roots, 0)
        self.children_peaks: dict[str, int] = dict.fromkeys(roots, 0)
        self.peak_total = 0
        self.samples = 0
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._statm: dict[int, int] = {}  # pid -> open fd of /proc/PID/statm
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()
        for fd in self._statm.values():
            os.close(fd)
        self._statm.clear()

    def _run(self) -> None:
        trees: dict[str, list[int]] = {}
        next_scan = 0.0
        while not self._done.is_set():
            now = time.monotonic()
            if now >= next_scan:
                trees = self._trees()
                next_scan = now + self.rescan
            total = 0
            for name, pids in trees.items():
                root = self._rss(pids[0])
                children = sum(self._rss(pid) for pid in pids[1:])
                self.peaks[name] = max(self.peaks[name], root + children)
                self.root_peaks[name] = max(self.root_peaks[name], root)
                self.children_peaks[name] = max(self.children_peaks[name], children)
                total += root + children
            self.peak_total = max(self.peak_total, total)
            self.samples += 1
            self._done.wait(self.interval)

    def _rss(self, pid: int) -> int:
        fd = self._statm.get(pid)
        try:
            if fd is None:
                fd = self._statm[pid] = os.open(f"/proc/{pid}/statm", os.O_RDONLY)
            return int(os.pread(fd, 128, 0).split()[1]) * self._page
        except (OSError, ValueError, IndexError):  # the process has ended
            if fd is not None:
                os.close(self._statm.pop(pid))
            return 0

    @staticmethod
    def _children(pid: int) -> list[int]:
        found: list[int] = []
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with (
                    contextlib.suppress(OSError, ValueError),
                    open(f"/proc/{pid}/task/{tid}/children", "rb") as file,
                ):
                    found.extend(int(child) for child in file.read().split())
        return found

    def _trees(self) -> dict[str, list[int]]:
        trees = {}
        for name, root in self.roots.items():
            tree, todo = [root], self._children(root)  # the root stays first
            while todo:
                pid = todo.pop()
                tree.append(pid)
                todo.extend(self._children(pid))
            trees[name] = tree
        alive = {pid for tree in trees.values() for pid in tree}
        for pid in [pid for pid in self._statm if pid not in alive]:
            os.close(self._statm.pop(pid))
        return trees


# -- one measurement --------------------------------------------------------------------
@dataclass
class Measurement:
    """Everything measured for one model size."""

    parameters: int
    rounds: list[dict[str, Any]] = field(default_factory=list)
    total: float = 0.0
    startup: float = 0.0
    server_rss: int = 0
    server_process_rss: int = 0
    serverapp_rss: int = 0
    node_rss: int = 0
    max_node_rss: int = 0
    total_rss: int = 0
    idle_server_rss: int = 0
    idle_node_rss: int = 0
    error: str = ""
    profile: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    #: CPU seconds (user + system) used during the run: the server with its ServerApp
    #: child, and the 10 nodes together. Unlike wall time, this does not depend on what
    #: else the machine is doing.
    server_cpu: float = 0.0
    nodes_cpu: float = 0.0
    #: The steady round of every repetition of this size (this measurement is the
    #: median one): wall times on 2 shared cores move by +-30% from run to run.
    repeats: list[float] = field(default_factory=list)

    @property
    def model_bytes(self) -> int:
        """The model's size on the wire: 4 bytes per float32 parameter."""
        return 4 * self.parameters

    def durations(self, key_from: str, key_to: str, rounds: Sequence[dict[str, Any]]) -> float:
        """Mean of ``round[key_to] - round[key_from]`` over ``rounds``."""
        return statistics.fmean(r[key_to] - r[key_from] for r in rounds) if rounds else 0.0

    @property
    def first_round(self) -> float:
        """Wall time of round 1."""
        return self.durations("start", "end", self.rounds[:1])

    @property
    def steady(self) -> list[dict[str, Any]]:
        """Rounds 2+, or round 1 alone when only one round ran."""
        return self.rounds[1:] or self.rounds[:1]

    @property
    def steady_round(self) -> float:
        """Mean wall time of rounds 2+ (the steady state)."""
        return self.durations("start", "end", self.steady)


def measure(
    parameters: int,
    rounds: int,
    *,
    timeout: float,
    state_dir: Path | None = None,
    py_spy: str | None = None,
    profile_seconds: float = 0.0,
    bulk_port: str = "auto",
) -> Measurement:
    """Start a server and 10 nodes, run the app for ``rounds`` rounds, kill everything.

    With ``py_spy``, also record the server (and its ServerApp child) and node 0 with
    py-spy for the duration of the run and summarize where their CPU time went. The
    server's state (SQLite file and blobs) goes in a temporary directory under
    ``state_dir`` (default: the system's temporary directory); on a tmpfs such as
    ``/dev/shm`` every fsync is free, which shows what durability costs.
    """
    result = Measurement(parameters)
    with tempfile.TemporaryDirectory(prefix="pollinate-deploy-bench-", dir=state_dir) as tmp:
        workdir = Path(tmp)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        fleet = Fleet(workdir, env)
        spies: list[subprocess.Popen[bytes]] = []
        port = free_port()
        address = f"127.0.0.1:{port}"
        try:
            fleet.start(
                "server",
                "server",
                "--address",
                address,
                "--state",
                str(workdir / "state.db"),
                "--insecure",
                "--bulk-port",
                bulk_port,
            )
            fleet.wait_for(["server"], "listening", 30)
            nodes = [f"node{i}" for i in range(NUM_NODES)]
            for i, name in enumerate(nodes):
                fleet.start(
                    name,
                    "node",
                    "--server",
                    address,
                    "--app",
                    str(APP_DIR),
                    "--insecure",
                    "--node-config",
                    f"partition-id={i}",
                )
            fleet.wait_for(nodes, "connected", 60)
            time.sleep(0.5)  # let the nodes' Subscribe streams settle
            roots = {name: fleet.processes[name].pid for name in ["server", *nodes]}
            result.idle_server_rss = rss_now(roots["server"])
            result.idle_node_rss = rss_now(roots["node0"])
            if py_spy:
                for name in ("server", "node0"):
                    command = [
                        py_spy,
                        "record",
                        "--pid",
                        str(roots[name]),
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "--nonblocking",
                        "--gil",  # only the thread holding the GIL: Python's CPU time
                        "-o",
                        str(workdir / f"{name}.spy"),
                    ]
                    if name == "server":
                        command.append("--subprocesses")
                    spies.append(
                        subprocess.Popen(
                            command,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            start_new_session=True,
                        )
                    )
                time.sleep(1.0)  # py-spy attaches
            command = [
                sys.executable,
                "-m",
                "pollinate.cli.main",
                "run",
                str(APP_DIR),
                "--server",
                address,
                "--insecure",
                "--rounds",
                str(rounds),
                "--config",
                f"num-parameters={parameters}",
                "--config",
                f"num-nodes={NUM_NODES}",
            ]
            cpu_before = {name: cpu_seconds(pid) for name, pid in roots.items()}
            with RssSampler(roots) as sampler:
                t0 = time.time()
                started = time.perf_counter()
                completed = subprocess.run(
                    command, capture_output=True, text=True, timeout=timeout, cwd=workdir, env=env
                )
                result.total = time.perf_counter() - started
            # The ServerApp child has exited and been waited for: the server's "children"
            # CPU counts it.
            time.sleep(0.3)
            cpu_used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in roots.items()}
            result.server_cpu = cpu_used["server"]
            result.nodes_cpu = sum(cpu_used[name] for name in nodes)
            result.server_rss = sampler.peaks["server"]
            result.server_process_rss = sampler.root_peaks["server"]
            result.serverapp_rss = sampler.children_peaks["server"]
            result.node_rss = sampler.peaks["node0"]
            result.max_node_rss = max(sampler.peaks[name] for name in nodes)
            result.total_rss = sampler.peak_total
            lines = completed.stdout.splitlines()
            result.rounds = [
                json.loads(line[len(ROUND_PREFIX) :])
                for line in lines
                if line.startswith(ROUND_PREFIX)
            ]
            if result.rounds:
                result.startup = result.rounds[0]["start"] - t0
            done = [
                json.loads(line[len(DONE_PREFIX) :])
                for line in lines
                if line.startswith(DONE_PREFIX)
            ]
            if completed.returncode != 0 or len(result.rounds) != rounds or not done:
                tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-15:])
                result.error = f"pollinate run exited with {completed.returncode}:\n{tail}"
            elif abs(done[0]["mean"] - 0.001 * rounds) > 1e-4:
                expected = 0.001 * rounds
                result.error = f"wrong final model: mean {done[0]['mean']}, expected {expected}"
            if py_spy:
                for spy in spies:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(spy.pid, signal.SIGINT)
                for spy in spies:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        spy.wait(timeout=profile_seconds or 30)
                for name in ("server", "node0"):
                    path = workdir / f"{name}.spy"
                    if path.exists():
                        result.profile[name] = summarize_profile(path.read_text())
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            result.error = str(exc)
        finally:
            for spy in spies:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(spy.pid, signal.SIGKILL)
            fleet.kill()
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and of its waited-for children."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat", "rb") as file:
            stat = file.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return 0.0


# -- profile summary ----------------------------------------------------------------------
#: Components of a round, each recognized by a substring of a stack frame (function
#: name and file) in py-spy's collapsed stacks. A sample counts for the first
#: component (in this order) found anywhere on its stack: inclusive, not overlapping.
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("blob write + fsync (state store)", ("_write_blob (",)),
    ("SQLite (state store rows)", ("state.py",)),
    ("chunk digest + join (iter_chunks)", ("make (pollinate/runtime/grpc/chunks.py",)),
    ("chunk reassembly + digest (ChunkAssembler.add)", ("add (pollinate/runtime/grpc/chunks.py",)),
    ("chunk encoding (wire.py)", ("pollinate/runtime/grpc/wire.py",)),
    ("frame decode (message_from_bytes)", ("message_from_bytes",)),
    ("frame encode (message_to_segments)", ("message_to_segments",)),
    ("aggregation (numpy)", ("aggregat",)),
    ("ClientApp handler", ("client_app.py",)),
    (
        "gRPC Python (call/stream machinery)",
        ("grpc/_channel.py", "grpc/_server.py", "grpc/_common.py", "_cygrpc"),
    ),
)


def summarize_profile(collapsed: str) -> list[tuple[str, float]]:
    """Share of active samples per component (see :data:`COMPONENTS`) and the rest.

    ``collapsed`` is py-spy's raw output: one ``frame;frame;... count`` line per stack.
    Idle threads are not sampled (py-spy's default), so shares are of CPU-active time.
    Also lists the 8 leaf frames with the most samples.
    """
    shares: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        for name, needles in COMPONENTS:
            if any(needle in stack for needle in needles):
                shares[name] += count
                break
        else:
            shares["other"] += count
        leaves["leaf: " + stack.rsplit(";", 1)[-1]] += count
    if not total:
        return []
    out = [(name, shares[name] / total) for name, _ in COMPONENTS if shares[name]]
    out.append(("other", shares["other"] / total))
    out.append(("(samples)", float(total)))
    out += [(leaf, count / total) for leaf, count in leaves.most_common(8)]
    return out


# -- physical references ------------------------------------------------------------------
def _loopback_receiver(port: int, nbytes: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        buffer = bytearray(4 * 2**20)
        view = memoryview(buffer)
        received = 0
        while received < nbytes:
            got = sock.recv_into(view)
            if not got:
                break
            received += got
        sock.sendall(b"k")


def loopback_bandwidth(nbytes: int = 2**30) -> float:
    """GB/s of one TCP stream over 127.0.0.1 between two processes (1 GiB, 4 MiB writes)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        receiver = multiprocessing.get_context("fork").Process(
            target=_loopback_receiver, args=(port, nbytes)
        )
        receiver.start()
        conn, _ = server.accept()
        with conn:
            block = b"\x01" * (4 * 2**20)
            started = time.perf_counter()
            sent = 0
            while sent < nbytes:
                conn.sendall(block)
                sent += len(block)
            conn.recv(1)
            elapsed = time.perf_counter() - started
        receiver.join()
    return nbytes / elapsed / 1e9


def digest_throughput(nbytes: int = 256 * 2**20, chunk: int = 4 * 2**20) -> float:
    """GB/s of XXH3-128 over 4 MiB chunks, as the chunk layer hashes them."""
    data = os.urandom(chunk)
    started = time.perf_counter()
    for _ in range(nbytes // chunk):
        xxhash.xxh3_128_digest(data)
    return nbytes / (time.perf_counter() - started) / 1e9


def fsync_write(directory: Path, nbytes: int = 40_000_000, repeats: int = 3) -> tuple[float, float]:
    """Seconds to write ``nbytes`` to a new file, then to ``fsync`` it (best of repeats)."""
    data = os.urandom(nbytes)
    best_write = best_sync = float("inf")
    for i in range(repeats):
        path = directory / f"fsync-{i}.bin"
        started = time.perf_counter()
        with open(path, "wb") as file:
            file.write(data)
            file.flush()
            written = time.perf_counter()
            os.fsync(file.fileno())
        synced = time.perf_counter()
        path.unlink()
        best_write = min(best_write, written - started)
        best_sync = min(best_sync, synced - written)
    return best_write, best_sync


# -- report ---------------------------------------------------------------------------------
def _size_name(parameters: int) -> str:
    if parameters >= 1_000_000 and parameters % 1_000_000 == 0:
        return f"{parameters // 1_000_000}M"
    if parameters >= 1_000 and parameters % 1_024 == 0:
        return f"{parameters // 1_024}k"
    return f"{parameters:,}"


def _mb(nbytes: int) -> str:
    return f"{nbytes / MB:,.0f}"


def results_table(measurements: Sequence[Measurement], flower_rounds: dict[int, float]) -> str:
    """The main markdown table: one row per model size."""
    lines = [
        "| model | model MB | round 1 s | rounds 2+ s (median run; min-max over runs) "
        "| target s/round | total s | server process peak RSS MB (target) "
        "| server + ServerApp MB (target) | node 0 peak RSS MB | largest node MB "
        "| all processes MB | Flower 1.42 s/round |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in measurements:
        name = _size_name(m.parameters)
        if m.error and not m.rounds:
            lines.append(
                f"| {name} | {_mb(m.model_bytes)} | FAILED: "
                f"{m.error.splitlines()[0][:150]} | | | | | | | | | |"
            )
            continue
        target = ROUND_TARGETS.get(m.parameters)
        verdict = "-"
        if target is not None:
            verdict = f"<= {target:g}: " + ("met" if m.steady_round <= target else "**missed**")
        rss_target = 3 * m.model_bytes + 300 * MB

        def rss(value: int, target: float = rss_target) -> str:
            verdict = "met" if value <= target else "**missed**"
            return f"{_mb(value)} (<= {_mb(int(target))}: {verdict})"

        spread = (
            f" ({min(m.repeats):.3f}-{max(m.repeats):.3f}, {len(m.repeats)} runs)"
            if len(m.repeats) > 1
            else ""
        )
        flower = flower_rounds.get(m.parameters)
        lines.append(
            f"| {name} | {m.model_bytes / MB:,.2f} | {m.first_round:.3f} "
            f"| {m.steady_round:.3f}{spread} | {verdict} | {m.total:.2f} "
            f"| {rss(m.server_process_rss)} | {rss(m.server_rss)} "
            f"| {_mb(m.node_rss)} | {_mb(m.max_node_rss)} | {_mb(m.total_rss)} "
            f"| {f'{flower:.1f}' if flower else '-'} |"
        )
    return "\n".join(lines)


def phase_table(measurements: Sequence[Measurement]) -> str:
    """Where a steady round's wall time goes, from the ServerApp's timestamps."""
    lines = [
        "| model | send: ServerApp uploads 10 instructions s | nodes: last upload -> first "
        "reply s | replies: first -> last reply s | aggregate: last reply -> end s "
        "| instruction frame MB x 10 | effective GB/s (2 x frames / round) "
        "| CPU s per round: server + ServerApp / 10 nodes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in measurements:
        if not m.rounds:
            continue
        steady = m.steady
        send = m.durations("send_start", "sent", steady)
        nodes = m.durations("sent", "first_reply", steady)
        replies = m.durations("first_reply", "last_reply", steady)
        aggregate = m.durations("last_reply", "end", steady)
        frames = steady[0]["frame_bytes_sent"]
        rate = 2 * frames / m.steady_round / 1e9 if m.steady_round else 0.0
        lines.append(
            f"| {_size_name(m.parameters)} | {send:.3f} | {nodes:.3f} | {replies:.3f} "
            f"| {aggregate:.3f} | {frames / NUM_NODES / MB:,.2f} | {rate:.3f} "
            f"| {m.server_cpu / len(m.rounds):.2f} / {m.nodes_cpu / len(m.rounds):.2f} |"
        )
    return "\n".join(lines)


def profile_text(measurement: Measurement) -> str:
    """The py-spy summary of a profiled run as markdown lists."""
    out = []
    for name, rows in measurement.profile.items():
        who = "server + ServerApp child" if name == "server" else "node 0"
        samples = next((int(v) for k, v in rows if k == "(samples)"), 0)
        out.append(f"**{who}** ({samples} active samples at 200 Hz):")
        out.append("")
        out += [f"- {key}: {value:.1%}" for key, value in rows if key != "(samples)"]
        out.append("")
    return "\n".join(out)


def machine_line() -> str:
    """CPU, cores, memory, OS, Python: the machine the numbers are from."""
    sys.path.insert(0, str(BENCH_DIR))
    from simulation import machine

    info = machine()
    return (
        f"{info['cpu']}, {info['cores']}, {info['memory']} RAM; {info['os']}; "
        f"Python {info['python']}, NumPy {info['numpy']}"
    )


def main() -> None:
    """Measure every size, print the tables and write ``results/deployment.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="model sizes in float32 parameters (default: 8192 1000000 10000000)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per size (default 3)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per size")
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs per size; the tables show the run with the median steady round (default 5)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the largest size with py-spy (server, ServerApp, node 0)",
    )
    parser.add_argument(
        "--py-spy",
        default="py-spy",
        metavar="PATH",
        help="py-spy executable (`pip install --target /tmp/pyspy py-spy`)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the server's state goes (default: the temp dir; "
        "/dev/shm shows the cost of fsync)",
    )
    parser.add_argument(
        "--bulk-port",
        choices=["auto", "off"],
        default="auto",
        help="the server's --bulk-port: auto (frames of 1 MiB or more beside gRPC, the "
        "default) or off (every frame in gRPC chunks)",
    )
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args()
    if args.rounds < 1 or args.repeat < 1:
        parser.error("--rounds and --repeat must be >= 1")

    sys.path.insert(0, str(BENCH_DIR))
    from simulation import copy_bandwidth

    date = time.strftime("%Y-%m-%d %H:%M %Z")
    load_before = os.getloadavg()[0]
    memcpy = copy_bandwidth()
    loopback = loopback_bandwidth()
    sha = digest_throughput()
    with tempfile.TemporaryDirectory(prefix="pollinate-fsync-", dir=args.state_dir) as tmp:
        write_s, fsync_s = fsync_write(Path(tmp))
    print(
        f"memcpy {memcpy:.1f} GB/s, loopback TCP {loopback:.2f} GB/s, xxh3 {sha:.2f} GB/s, "
        f"40 MB write {write_s * 1e3:.0f} ms + fsync {fsync_s * 1e3:.0f} ms",
        file=sys.stderr,
    )

    measurements = []
    for size in args.sizes:
        runs = [
            measure(
                size,
                args.rounds,
                timeout=args.timeout,
                state_dir=args.state_dir,
                bulk_port=args.bulk_port,
            )
            for _ in range(args.repeat)
        ]
        good = sorted((r for r in runs if not r.error), key=lambda r: r.steady_round)
        m = good[(len(good) - 1) // 2] if good else runs[0]
        m.repeats = [r.steady_round for r in good]
        measurements.append(m)
        print(
            f"{_size_name(size):>5}: round 1 {m.first_round:.3f} s, rounds 2+ "
            f"{m.steady_round:.3f} s, total {m.total:.2f} s, server {_mb(m.server_rss)} MB, "
            f"node {_mb(m.node_rss)} MB, all {_mb(m.total_rss)} MB"
            + (f"; ERROR {m.error}" if m.error else ""),
            file=sys.stderr,
            flush=True,
        )
    profiled = None
    if args.profile:
        size = max(args.sizes)
        profiled = measure(
            size, args.rounds, timeout=args.timeout, state_dir=args.state_dir, py_spy=args.py_spy
        )
        print(
            f"profiled {_size_name(size)}: rounds 2+ {profiled.steady_round:.3f} s"
            + (f"; ERROR {profiled.error}" if profiled.error else ""),
            file=sys.stderr,
        )
    load_after = os.getloadavg()[0]

    flower_rounds, flower_source = flower_figures()
    largest = max(DEFAULT_SIZES)  # the physical limits are given for the 10M model
    model = 4 * largest
    traffic = [
        f"- bytes a round moves for the {_size_name(largest)} model: {NUM_NODES} x "
        f"{model / MB:,.0f} MB to the nodes and {NUM_NODES} x {model / MB:,.0f} MB back = "
        f"{2 * NUM_NODES * model / 1e9:.2f} GB; through the server (ServerApp -> server -> "
        f"node and back) each crosses loopback twice: {4 * NUM_NODES * model / 1e9:.2f} GB, "
        f"so {4 * NUM_NODES * model / 1e9 / loopback:.2f} s at the loopback ceiling "
        f"({2 * NUM_NODES * model / 1e9 / loopback:.2f} s if the server sent the "
        "broadcast content straight to the nodes)",
        f"- XXH3-128 of every chunk: {4 * NUM_NODES * model / 1e9:.2f} GB hashed on the "
        f"sending side and again on the receiving side per round: "
        f"{2 * 4 * NUM_NODES * model / 1e9 / sha:.2f} s of CPU at {sha:.2f} GB/s",
        f"- fsync of the {2 * NUM_NODES} blobs of {model / MB:,.0f} MB the server stores per "
        f"round: about {2 * NUM_NODES * (write_s + fsync_s):.2f} s of write + fsync "
        "(measured on one 40 MB file below)",
    ]
    text_lines = [
        "# Deployment benchmark",
        "",
        "Produced by `benchmarks/deployment.py`; see `benchmarks/README.md`.",
        "",
        f"- date: {date}",
        f"- machine: {machine_line()}",
        f"- 1 server, {NUM_NODES} nodes, all on 127.0.0.1, plaintext (`--insecure`); frames "
        + (
            "of 1 MiB or more on the bulk port, the rest in gRPC chunks (`--bulk-port auto`); "
            if args.bulk_port == "auto"
            else "all in gRPC chunks (`--bulk-port off`); "
        )
        + f"{args.rounds} rounds of FedAvg over all {NUM_NODES} nodes, no federated evaluation; "
        "the ClientApp returns the received arrays + 0.001",
        f"- server state (SQLite + blobs, fsync'd) in {args.state_dir or tempfile.gettempdir()}",
        f"- memory copy bandwidth: {memcpy:.1f} GB/s; TCP loopback (one stream, 1 GiB "
        f"between two processes): {loopback:.2f} GB/s; XXH3-128 (4 MiB chunks): "
        f"{sha:.2f} GB/s; a 40 MB file: write {write_s * 1e3:.0f} ms + fsync "
        f"{fsync_s * 1e3:.0f} ms",
        *traffic,
        f"- 1-minute load average before / after: {load_before:.2f} / {load_after:.2f}",
        f"- each size runs {args.repeat} times (a fresh server and nodes each time); the "
        "tables show the run whose steady round is the median, and the range over runs",
        "- peak RSS sampled every 10 ms from /proc; server process = `pollinate server` "
        "alone (what Flower calls the SuperLink); server + ServerApp = with the run's "
        "ServerApp child process; all processes = server tree + 10 nodes at the same instant",
        "- targets (issue): <= 0.1 s per round (8k), <= 1.5 s per round (10M), server "
        "peak RSS <= 3 x model + 300 MB",
        f"- Flower 1.42 (SuperLink + 10 SuperNodes) on this machine, {flower_source}",
        "",
        results_table(measurements, flower_rounds),
        "",
        "Where a steady round (rounds 2+) goes, from the ServerApp's timestamps:",
        "",
        phase_table(measurements),
        "",
    ]
    errors = [m for m in measurements if m.error]
    for m in errors:
        text_lines += [f"Error ({_size_name(m.parameters)}):", "", "```", m.error, "```", ""]
    if profiled is not None:
        text_lines += [
            f"## Profile of the {_size_name(profiled.parameters)} model (py-spy, 200 Hz)",
            "",
            f"Profiled run: rounds 2+ {profiled.steady_round:.3f} s (py-spy slows the "
            "processes it samples a little). Shares of CPU-active samples per component; "
            "each sample counts for the first component on its stack, in the order listed.",
            "",
            profile_text(profiled),
        ]
    text = "\n".join(text_lines)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text, encoding="utf-8")
        print(f"written to {RESULTS.relative_to(BENCH_DIR.parent)}", file=sys.stderr)


if __name__ == "__main__":
    main()
