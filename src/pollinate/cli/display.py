"""The live progress display of a run, and its closing summary table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from pollinate.privacy.central import DELTA_KEY, EPSILON_KEY
from pollinate.records import MetricValue
from pollinate.strategy.history import History, RoundRecord

__all__ = ["ProgressDisplay", "summary_table"]


def _fmt(value: MetricValue | None) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


class ProgressDisplay:
    """Shows round, replies/failures and the latest metrics while a run goes.

    On a terminal this is a live panel; elsewhere (CI, pipes) one line per round.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._progress = Progress(
            TextColumn("[bold]round"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._task = self._progress.add_task("run", total=0, status="starting")
        self._last = Text("")
        self._live: Live | None = None
        self._round = 0
        self._phase = ""
        self._sampled = self._replied = self._failed = 0

    def on_start(self, num_rounds: int, initial_centralized: dict[str, MetricValue]) -> None:
        self._progress.update(self._task, total=num_rounds)
        if initial_centralized:
            self._print_line(f"initial model: {_metrics_text(initial_centralized)}")
        if self.console.is_terminal:
            self._live = Live(
                Group(self._progress, self._last),
                console=self.console,
                refresh_per_second=8,
                transient=False,
            )
            self._live.start()

    def on_phase_start(self, server_round: int, phase: str, num_sampled: int) -> None:
        self._round, self._phase = server_round, phase
        self._sampled, self._replied, self._failed = num_sampled, 0, 0
        self._update_status()

    def on_reply(self, server_round: int, phase: str, *, ok: bool) -> None:
        if ok:
            self._replied += 1
        else:
            self._failed += 1
        self._update_status()

    def on_round_end(self, record: RoundRecord) -> None:
        self._progress.update(self._task, advance=1)
        line = _round_text(record)
        if self._live is not None:
            self._last.plain = line
        else:
            self._print_line(line)

    def on_stop(self, server_round: int, reason: str) -> None:
        """The run ends early: say so, with the reason (e.g. the privacy budget)."""
        self._progress.update(self._task, status="stopped")
        self._print_line(f"stopped before round {server_round}: {reason}")

    def on_result(self, name: str, data: Mapping[str, Any]) -> None:
        """The ServerApp published a result: one line saying so."""
        self._print_line(f"result {name!r} published ({len(data)} entries)")

    def stop(self) -> None:
        """End the live panel (safe to call twice)."""
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _update_status(self) -> None:
        status = f"{self._phase}: {self._replied}/{self._sampled} replied" + (
            f", [red]{self._failed} failed[/red]" if self._failed else ""
        )
        self._progress.update(self._task, status=status)

    def _print_line(self, line: str) -> None:
        self.console.print(line, highlight=False, markup=False)


def _failures(failed: int, late: int) -> str:
    details = [f"{failed} failed"] * bool(failed) + [f"{late} late"] * bool(late)
    return f" ({', '.join(details)})" if details else ""


def _metrics_text(metrics: dict[str, MetricValue]) -> str:
    return ", ".join(f"{key} {_fmt(value)}" for key, value in metrics.items())


def _round_text(record: RoundRecord) -> str:
    parts = [f"round {record.server_round}"]
    if record.train is not None:
        t = record.train
        parts.append(f"train {t.replied}/{t.sampled} replied" + _failures(t.failed, t.late))
        loss = t.metrics.get("train-loss", t.metrics.get("loss"))
        if loss is not None:
            parts.append(f"train loss {_fmt(loss)}")
    if record.evaluate is not None and "accuracy" in record.evaluate.metrics:
        parts.append(f"eval accuracy {_fmt(record.evaluate.metrics['accuracy'])}")
    if "accuracy" in record.centralized:
        parts.append(f"test accuracy {_fmt(record.centralized['accuracy'])}")
    privacy = _privacy_text(record)
    if privacy:
        parts.append(privacy)
    parts.append(f"{record.seconds:.2f} s")
    return " | ".join(parts)


def _privacy_text(record: RoundRecord) -> str:
    """``ε=1.23 (δ=1e-5)`` when the round reported its privacy budget, else ``""``."""
    metrics = record.train.metrics if record.train is not None else {}
    epsilon, delta = metrics.get(EPSILON_KEY), metrics.get(DELTA_KEY)
    if not isinstance(epsilon, (int, float)):
        return ""
    text = f"ε={epsilon:.2f}"
    if isinstance(delta, (int, float)):
        # 1e-05 -> 1e-5: the way deltas are written in papers.
        text += f" (δ={delta:g})".replace("e-0", "e-").replace("e+0", "e+")
    return text


def summary_table(history: History) -> Table:
    """One row per round: replies, failures, train loss, federated and centralized metrics."""
    table = Table(title="Run summary", title_justify="left")
    private = any(
        record.train is not None and EPSILON_KEY in record.train.metrics
        for record in history.rounds
    )
    for header in (
        "round",
        "sampled",
        "replied",
        "failed",
        "late",
        "train loss",
        "eval loss",
        "eval acc",
        "test loss",
        "test acc",
        *(["ε"] if private else []),
        "seconds",
    ):
        table.add_column(header, justify="right")
    for record in history.rounds:
        train = record.train
        evaluation = record.evaluate.metrics if record.evaluate is not None else {}
        epsilon = [_fmt(train.metrics.get(EPSILON_KEY)) if train else "-"] if private else []
        table.add_row(
            str(record.server_round),
            str(train.sampled) if train else "-",
            str(train.replied) if train else "-",
            str(train.failed) if train else "-",
            str(train.late) if train else "-",
            _fmt(train.metrics.get("train-loss")) if train else "-",
            _fmt(evaluation.get("loss")),
            _fmt(evaluation.get("accuracy")),
            _fmt(record.centralized.get("loss")),
            _fmt(record.centralized.get("accuracy")),
            *epsilon,
            f"{record.seconds:.2f}",
        )
    if history.stopped_reason:
        table.caption = f"stopped early: {history.stopped_reason}"
    return table
