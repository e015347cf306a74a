"""Writes a run's record under ``runs/<run-id>/``: history.json and metrics.png."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pollinate.records import MetricValue
from pollinate.strategy.history import History, RoundRecord

__all__ = ["RunRecorder", "plot_history"]


class RunRecorder:
    """An observer that keeps ``history.json`` current after every round.

    The file is rewritten atomically each round, so a run that crashes or is stopped
    still leaves the rounds it finished.
    """

    def __init__(self, run_dir: Path, header: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.header = header
        self.history = History()
        self._started = time.perf_counter()
        self._first_round: float | None = None
        run_dir.mkdir(parents=True, exist_ok=True)

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

    def finish(self, status: str, error: str | None = None) -> None:
        """Write the final record and the plot."""
        self._write(status=status, error=error)
        if self.history.rounds:
            plot_history(self.history, self.run_dir / "metrics.png")

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
        }
        tmp = self.history_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
        os.replace(tmp, self.history_path)


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
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
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
