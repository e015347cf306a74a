"""examples/analytics in simulation: its answers are those of the pooled patient records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollinate.cli.project import load_project
from pollinate.client import ClientApp
from pollinate.runtime.loading import load_object
from pollinate.runtime.simulation import run_simulation
from pollinate.server import ServerApp

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "analytics"


def _simulate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **config: Any
) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    monkeypatch.chdir(tmp_path)  # the app looks for runs/ here; there is none
    project = load_project(EXAMPLE)
    project.add_to_path()
    from hospitals.data import patient_records

    run_config = {**project.config, **config}
    results = run_simulation(
        load_object(project.server_app, ServerApp),
        load_object(project.client_app, ClientApp),
        num_nodes=5,
        run_config=run_config,
    )
    tables = [patient_records(i, int(run_config["seed"])) for i in range(5)]
    return results, tables


def test_the_example_answers_like_the_pooled_records(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results, tables = _simulate(monkeypatch, tmp_path)

    onset = np.concatenate([t["age_at_onset"][t["condition_x"] == 1] for t in tables])
    assert not np.isnan(onset).any()
    assert results["patients with X"]["value"] == len(onset)
    assert results["mean age at onset"]["value"] == pytest.approx(onset.mean(), rel=1e-12)
    assert results["variance of age at onset"]["value"] == pytest.approx(
        np.var(onset, ddof=1), rel=1e-9
    )
    histogram = results["age at onset, by decade"]["value"]
    assert histogram["counts"] == np.histogram(onset, bins=np.linspace(0, 100, 11))[0].tolist()
    for level, estimate in results["quantiles of age at onset"]["value"].items():
        exact = np.quantile(onset, float(level), method="inverted_cdf")
        assert abs(estimate - exact) <= 0.5  # bins of half a year
    assert all(r["nodes"] == [1, 2, 3, 4, 5] and r["privacy"] is None for r in results.values())
    printed = capsys.readouterr().out
    assert f"patients with X: {len(onset)} (n={len(onset)}, 5 hospitals)" in printed
    assert f"mean age at onset: {onset.mean():.3f}" in printed


def test_with_dp_the_example_reports_noisy_answers_and_their_cost(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    results, tables = _simulate(monkeypatch, tmp_path, dp=True, **{"noise-seed": 3})

    onset = np.concatenate([t["age_at_onset"][t["condition_x"] == 1] for t in tables])
    mean = results["mean age at onset"]
    assert mean["privacy"]["epsilon"] == pytest.approx(1.0, rel=1e-6)
    # sum noise std = z * sqrt(2) * 60 with z ~ 4.2; divided by ~960 records: ~0.4 years
    assert mean["value"] != pytest.approx(onset.mean(), abs=1e-9)
    assert mean["value"] == pytest.approx(onset.mean(), abs=2.0)
    spent = results["privacy spent"]
    assert 1.0 < spent["epsilon"] < 5.0  # five queries, composed tighter than 5 x 1
