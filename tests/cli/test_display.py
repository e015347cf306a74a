"""The progress display and history.json show each round's epsilon and an early stop."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from pollinate.cli.display import ProgressDisplay, summary_table
from pollinate.cli.main import main
from pollinate.cli.recorder import RunRecorder
from pollinate.strategy.history import History, PhaseSummary, RoundRecord


def private_round(server_round: int, epsilon: float) -> RoundRecord:
    metrics = {"train-loss": 0.5, "dp-epsilon": epsilon, "dp-delta": 1e-5, "dp-clip-norm": 1.0}
    return RoundRecord(
        server_round=server_round,
        train=PhaseSummary(sampled=4, replied=4, metrics=metrics),  # type: ignore[arg-type]
        seconds=0.1,
    )


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def test_each_round_line_shows_epsilon_at_delta_and_a_stop_says_why() -> None:
    console, out = plain_console()
    display = ProgressDisplay(console)
    display.on_start(3, {})
    display.on_round_end(private_round(1, 1.234))
    display.on_stop(2, "privacy budget spent: round 2 would take epsilon to 9.1")
    display.stop()
    lines = out.getvalue().splitlines()
    assert "ε=1.23 (δ=1e-5)" in lines[0]
    assert lines[1] == (
        "stopped before round 2: privacy budget spent: round 2 would take epsilon to 9.1"
    )


def test_rounds_without_privacy_show_no_epsilon() -> None:
    console, out = plain_console()
    display = ProgressDisplay(console)
    display.on_start(1, {})
    display.on_round_end(RoundRecord(server_round=1, train=PhaseSummary(sampled=2, replied=2)))
    assert "ε" not in out.getvalue()
    plain = History(rounds=[RoundRecord(server_round=1)])
    assert "ε" not in [c.header for c in summary_table(plain).columns]


def test_summary_table_has_an_epsilon_column_and_the_stop_reason() -> None:
    history = History(rounds=[private_round(1, 0.5), private_round(2, 0.75)], stopped_reason="x")
    table = summary_table(history)
    column = next(c for c in table.columns if c.header == "ε")
    assert list(column.cells) == ["0.5000", "0.7500"]
    assert table.caption == "stopped early: x"


def test_the_recorder_writes_the_stop_reason_into_history_json(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path, header={"app": "t"})
    try:
        recorder.on_start(3, {})
        recorder.on_round_end(private_round(1, 0.5))
        recorder.on_stop(2, "privacy budget spent")
        document = json.loads(recorder.history_path.read_text())
    finally:
        recorder.close()
    assert document["stopped_reason"] == "privacy budget spent"
    assert document["rounds"][0]["train"]["metrics"]["dp-epsilon"] == 0.5


SERVER_APP = """
import numpy as np
from pollinate import ArrayRecord, FedAvg, ServerApp
from pollinate.privacy import CentralDP, FixedClipping

app = ServerApp()

@app.main()
def main(grid, context):
    strategy = CentralDP(
        FedAvg(fraction_train=0.5, fraction_evaluate=0.0, rng=np.random.default_rng(0)),
        noise_multiplier=2.0,
        clipping=FixedClipping(1.0),
        max_epsilon=10.0,
        rng=np.random.default_rng(1),
    )
    return strategy.start(grid, initial_arrays=ArrayRecord({"w": np.zeros(4, np.float32)}),
                          num_rounds=int(context.run_config["num-server-rounds"]))
"""

CLIENT_APP = """
import numpy as np
from pollinate import ArrayRecord, ClientApp, MetricRecord, RecordDict, keys

app = ClientApp()

@app.train()
def train(msg, ctx):
    arrays = msg.content[keys.ARRAYS]
    new = ArrayRecord({"w": arrays["w"] + np.float32(0.1)})
    metrics = MetricRecord({"num-examples": 5, "train-loss": 1.0})
    return msg.reply(RecordDict({keys.ARRAYS: new, keys.METRICS: metrics}))
"""


def test_simulate_shows_epsilon_every_round_and_records_the_budget_stop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "dpapp"
    (app / "dpapp").mkdir(parents=True)
    (app / "dpapp" / "__init__.py").write_text("")
    (app / "dpapp" / "server_app.py").write_text(SERVER_APP)
    (app / "dpapp" / "client_app.py").write_text(CLIENT_APP)
    (app / "pyproject.toml").write_text(
        "[tool.pollinate]\n"
        'server-app = "dpapp.server_app:app"\n'
        'client-app = "dpapp.client_app:app"\n'
        "[tool.pollinate.config]\n"
        "num-server-rounds = 20\n"
    )

    code = main(["simulate", str(app), "--nodes", "6", "--runs-dir", str(tmp_path / "runs")])

    err = capsys.readouterr().err
    assert code == 0, err
    (history_file,) = (tmp_path / "runs").glob("*/history.json")
    history = json.loads(history_file.read_text())
    epsilons = [r["train"]["metrics"]["dp-epsilon"] for r in history["rounds"]]
    assert len(epsilons) == 4 and epsilons == sorted(epsilons) and epsilons[-1] <= 10
    assert history["status"] == "completed"
    assert "round 5 would take epsilon" in history["stopped_reason"]
    assert err.count("ε=") >= 4 and "(δ=1e-5)" in err
    assert "stopped before round 5: privacy budget spent" in err
