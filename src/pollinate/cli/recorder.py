"""Writes a run's record under ``runs/<run-id>/``: history.json and metrics.png."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Mapping
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from pollinate.records import MetricValue
from pollinate.strategy.history import History, RoundRecord

__all__ = ["RunRecorder", "plot_history"]


class RunRecorder:
    """An observer that keeps ``history.json`` current after every round.

    The file is rewritten atomically each round, so a run that crashes or is stopped
    still leaves the rounds it finished. A run that ends early on purpose (its privacy
    budget is spent) says why in ``stopped_reason``.
    """

    def __init__(self, run_dir: Path, header: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.header = header
        self.history = History()
        self._started = time.perf_counter()
        self._first_round: float | None = None
        self._results: dict[str, str] = {}
        run_dir.mkdir(parents=True, exist_ok=True)
        self._plotter = _Plotter()

    @property
    def history_path(self) -> Path:
        return self.run_dir / "history.json"

    def on_start(self, num_rounds: int, initial_centralized: dict[str, MetricValue]) -> None:
        self.history.initial_centralized = dict(initial_centralized)
        self._write(status="running")

    def on_phase_start(self, server_round: int, phase: str, num_sampled: int) -> None:
        pass

    def on_reply(self, server_round: int, phase: str, *, ok: bool) -> None:
        pass

    def on_round_end(self, record: RoundRecord) -> None:
        if self._first_round is None:
            self._first_round = time.perf_counter() - self._started
        self.history.rounds.append(record)
        self._write(status="running")

    def on_stop(self, server_round: int, reason: str) -> None:
        """The run ends early: ``stopped_reason`` goes into history.json now."""
        self.history.stopped_reason = reason
        self._write(status="running")

    def on_result(self, name: str, data: Mapping[str, Any]) -> None:
        """A result the ServerApp published: ``<name>.json`` beside history.json."""
        path = self.run_dir / f"{name}.json"
        path.write_text(json.dumps(dict(data), indent=2), encoding="utf-8")
        self._results[name] = path.name
        self._write(status="running")

    def finish(self, status: str, error: str | None = None) -> None:
        """Write the final record and start drawing the plot (:meth:`close` waits for it)."""
        self._write(status=status, error=error)
        if self.history.rounds:
            self._plotter.request(self.history_path, self.run_dir / "metrics.png")

    def close(self) -> None:
        """Wait for the plot and release the helper process."""
        self._plotter.close()

    def _write(self, *, status: str, error: str | None = None) -> None:
        elapsed = time.perf_counter() - self._started
        rounds = self.history.rounds
        document = {
            **self.header,
            "status": status,
            "error": error,
            "timings": {
                "total_seconds": elapsed,
                "first_round_seconds": self._first_round,
                "mean_round_seconds": (sum(r.seconds for r in rounds) / len(rounds))
                if rounds
                else None,
            },
            **self.history.to_dict(),
            "results": dict(self._results),
        }
        tmp = self.history_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self.history_path)


class _Plotter:
    """Draws metrics.png from a helper process forked when the run starts.

    Importing matplotlib takes about 0.6 s, longer than a whole small simulation; in a
    helper it overlaps the run instead of adding to it. Where fork is unavailable, or
    the helper fails, the plot is drawn in this process.
    """

    def __init__(self) -> None:
        self._conn: Connection | None = None
        self._process: BaseProcess | None = None
        self._pending: tuple[Path, Path] | None = None
        if "fork" not in multiprocessing.get_all_start_methods():
            return
        context = multiprocessing.get_context("fork")
        parent_conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=_plot_server, args=(child_conn,), name="pollinate-plotter", daemon=True
        )
        self._process.start()
        child_conn.close()
        self._conn = parent_conn

    def request(self, history_path: Path, png_path: Path) -> None:
        """Start drawing; :meth:`wait` finishes it (drawing in this process if needed)."""
        self._pending = (history_path, png_path)
        if self._conn is not None:
            try:
                self._conn.send_bytes(json.dumps([str(history_path), str(png_path)]).encode())
            except OSError:
                self._conn = None

    def wait(self) -> None:
        """Block until the requested plot exists."""
        if self._pending is None:
            return
        history_path, png_path = self._pending
        self._pending = None
        if self._conn is not None:
            try:
                if self._conn.poll(_PLOT_TIMEOUT) and self._conn.recv_bytes() == b"ok":
                    return
            except (OSError, EOFError):
                pass
        history = History.from_dict(json.loads(history_path.read_text(encoding="utf-8")))
        plot_history(history, png_path)

    def close(self) -> None:
        self.wait()
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send_bytes(b"")
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.kill()
            self._process = None


_PLOT_TIMEOUT = 60.0


def _plot_server(conn: Connection) -> None:
    """Import matplotlib now, then draw each requested plot."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot

    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if not request:
            return
        history_path, png_path = json.loads(request)
        try:
            history = History.from_dict(json.loads(Path(history_path).read_text("utf-8")))
            plot_history(history, Path(png_path))
        except Exception:  # the parent falls back to drawing it itself
            conn.send_bytes(b"failed")
        else:
            conn.send_bytes(b"ok")


def plot_history(history: History, path: Path) -> None:
    """Loss and accuracy against round: train, federated evaluation, centralized test."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    colors = {"train": "tab:blue", "evaluate": "tab:orange", "centralized": "tab:green"}
    labels = {
        "train": "train (nodes)",
        "evaluate": "evaluate (nodes)",
        "centralized": "test (server)",
    }
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.92, wspace=0.18)
    for ax, series in (
        (loss_ax, (("train", "train-loss"), ("evaluate", "loss"), ("centralized", "loss"))),
        (acc_ax, (("evaluate", "accuracy"), ("centralized", "accuracy"))),
    ):
        for phase, metric in series:
            points = history.series(phase, metric)
            initial = history.initial_centralized.get(metric)
            if phase == "centralized" and isinstance(initial, (int, float)):
                points = [(0, float(initial)), *points]
            if points:
                ax.plot(
                    *zip(*points, strict=True),
                    marker="o",
                    ms=3,
                    color=colors[phase],
                    label=labels[phase],
                )
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    loss_ax.set_title("loss")
    acc_ax.set(title="accuracy", ylim=(0, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
