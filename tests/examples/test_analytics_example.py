"""`pollinate simulate examples/analytics`: prints the answers and records them in the run's
directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "analytics"


def _pooled_onset() -> np.ndarray:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from hospitals.data import patient_records
    finally:
        sys.path.remove(str(EXAMPLE))
    tables = [patient_records(i, seed=0) for i in range(5)]
    return np.concatenate([t["age_at_onset"][t["condition_x"] == 1] for t in tables])


def test_simulate_prints_and_records_the_answers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pollinate.cli.main", "simulate", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    onset = _pooled_onset()
    assert f"patients with X: {len(onset)} (n={len(onset)}, 5 hospitals)" in result.stdout
    assert f"mean age at onset: {onset.mean():.3f}" in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "result 'analytics' published" in result.stdout + result.stderr
    assert json.loads((run_dir / "history.json").read_text())["results"] == {
        "analytics": "analytics.json"
    }
    recorded = json.loads((run_dir / "analytics.json").read_text())
    assert recorded["patients with X"]["value"] == len(onset)
    variance = recorded["variance of age at onset"]["value"]
    assert abs(variance - np.var(onset, ddof=1)) < 1e-9 * variance
    assert json.loads((run_dir / "history.json").read_text())["status"] == "completed"
    # no training rounds: no empty summary table, no plot announced
    assert "Run summary" not in result.stderr + result.stdout
    assert "metrics.png" not in result.stderr + result.stdout


def test_simulate_with_dp_prints_the_privacy_spent(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pollinate.cli.main",
            "simulate",
            str(EXAMPLE),
            "--config",
            "dp=true",
            "--config",
            "epsilon=0.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert "epsilon 0.5 at delta 1e-06)" in result.stdout
    assert "privacy spent by all 5 queries: epsilon" in result.stdout
