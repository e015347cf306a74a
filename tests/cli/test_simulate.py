"""`pollinate simulate`: bad input is one clear line and exit code 2; a good run
leaves its record under runs/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pollinate.cli.main import main

QUICKSTART = Path(__file__).resolve().parents[2] / "examples" / "quickstart"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "does/not/exist"], "app directory 'does/not/exist' does not exist"),
        (
            ["simulate", str(QUICKSTART), "--config", "learning-rte=0.1"],
            "unknown config key 'learning-rte'; did you mean 'learning-rate'?",
        ),
        (
            ["simulate", str(QUICKSTART), "--config", "local-epochs=many"],
            "config local-epochs='many': expected int",
        ),
        (["simulate", str(QUICKSTART), "--config", "novalue"], "must look like key=value"),
        (["simulate", str(QUICKSTART), "--runtime", "gpu"], "'gpu' is not one of"),
        (["simulate", str(QUICKSTART), "--nodes", "0"], "0 is not in the range x>=1"),
        (["simulate"], "Missing argument 'APP'"),
        (
            ["simulate", str(QUICKSTART), "--node-config", "sim-crash-p=2"],
            "node_config sim-crash-p=2 must be a number within [0.0, 1.0]",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_project_without_pollinate_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert main(["simulate", str(tmp_path)]) == 2
    assert "no [tool.pollinate] section" in capsys.readouterr().err


def test_app_reference_that_does_not_import(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.pollinate]\nserver-app = "nowhere:app"\nclient-app = "nowhere:app"\n'
    )
    assert main(["simulate", str(tmp_path)]) == 2
    assert "cannot import 'nowhere'" in capsys.readouterr().err


def test_too_few_replies_stops_the_run_with_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = tmp_path / "broken"
    (app / "broken").mkdir(parents=True)
    (app / "broken" / "__init__.py").write_text("")
    (app / "broken" / "apps.py").write_text(
        "import numpy as np\n"
        "from pollinate import ArrayRecord, ClientApp, FedAvg, ServerApp\n"
        "client = ClientApp()\n"
        "@client.train()\n"
        "def train(msg, ctx):\n"
        "    raise RuntimeError('no data on this node')\n"
        "server = ServerApp()\n"
        "@server.main()\n"
        "def main(grid, ctx):\n"
        "    FedAvg().start(grid, initial_arrays=ArrayRecord({'w': np.zeros(2)}), num_rounds=2)\n"
    )
    (app / "pyproject.toml").write_text(
        '[tool.pollinate]\nserver-app = "broken.apps:server"\nclient-app = "broken.apps:client"\n'
    )
    code = main(["simulate", str(app), "--nodes", "3", "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: round 1: only 0 of 3 nodes replied to train (3 failed, 0 late)" in err
    assert "no data on this node" in err
    (history_file,) = (tmp_path / "runs").glob("*/history.json")
    assert json.loads(history_file.read_text())["status"] == "failed"


def test_quickstart_reaches_the_target_accuracy_and_records_the_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pollinate.cli.main",
            "simulate",
            str(QUICKSTART),
            "--runs-dir",
            str(runs),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    (run_dir,) = runs.iterdir()
    history = json.loads((run_dir / "history.json").read_text())
    assert history["status"] == "completed"
    assert history["num_nodes"] == 20 and history["seed"] == 0
    assert history["config"]["num-server-rounds"] == 20
    assert len(history["rounds"]) == 20
    assert all(r["train"]["sampled"] == 10 for r in history["rounds"])
    assert history["rounds"][-1]["centralized"]["accuracy"] >= 0.92
    timings = history["timings"]
    assert set(timings) == {"total_seconds", "first_round_seconds", "mean_round_seconds"}
    assert timings["first_round_seconds"] <= timings["total_seconds"]
    assert (run_dir / "metrics.png").stat().st_size > 10_000
    assert "Run summary" in completed.stderr


def test_node_config_profiles_reach_every_node_and_the_record(tmp_path: Path) -> None:
    code = main(
        [
            "simulate",
            str(QUICKSTART),
            "--rounds",
            "2",
            "--node-config",
            "sim-unavailable-p=0.5",
            "--runs-dir",
            str(tmp_path),
        ]
    )
    assert code == 0
    (history_file,) = tmp_path.glob("*/history.json")
    history = json.loads(history_file.read_text())
    assert history["node_config"] == {"sim-unavailable-p": 0.5}
    assert sum(r["train"]["failed"] for r in history["rounds"]) > 0
