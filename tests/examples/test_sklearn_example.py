"""examples/sklearn: federated logistic regression on breast cancer, run as its README says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pollinate.testing.projects import simulate_project

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sklearn"


def _run(**overrides: Any) -> dict[str, Any]:
    """The history of the example run as ``pollinate simulate`` runs it, minus the record."""
    history: dict[str, Any] = simulate_project(EXAMPLE, run_config=overrides).history.to_dict()
    return history


def test_readme_gives_the_command() -> None:
    assert "pollinate simulate examples/sklearn" in (EXAMPLE / "README.md").read_text()


def test_two_rounds_reach_the_documented_accuracy() -> None:
    history = _run(**{"num-server-rounds": 2})
    assert [r["train"]["replied"] for r in history["rounds"]] == [10, 10]
    # The all-zero initial model predicts one class (0.37 accuracy on this split).
    assert history["initial_centralized"]["accuracy"] < 0.5
    final = history["rounds"][-1]
    assert final["centralized"]["accuracy"] >= 0.96
    assert final["evaluate"]["metrics"]["accuracy"] >= 0.9
