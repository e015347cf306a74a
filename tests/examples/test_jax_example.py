"""examples/jax: the quickstart MLP in JAX learns digits; run as its README says."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollinate.adapters import load_arrays, to_arrays
from pollinate.testing.projects import simulate_project

pytestmark = pytest.mark.imports_jax  # see tests/conftest.py

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "jax"


def _run(**overrides: Any) -> dict[str, Any]:
    """The history of the example run as ``pollinate simulate`` runs it, minus the record."""
    history: dict[str, Any] = simulate_project(EXAMPLE, run_config=overrides).history.to_dict()
    return history


def test_readme_gives_the_command() -> None:
    assert "pollinate simulate examples/jax" in (EXAMPLE / "README.md").read_text()


def test_a_few_rounds_learn_the_digits() -> None:
    history = _run(**{"num-server-rounds": 3})
    assert [r["train"]["replied"] for r in history["rounds"]] == [10, 10, 10]
    accuracy = [r["centralized"]["accuracy"] for r in history["rounds"]]
    # Seed 0 reaches 0.86 after 3 rounds (0.955 after the default 20); chance is 0.1.
    assert accuracy[-1] >= 0.8
    assert history["initial_centralized"]["accuracy"] < 0.3


def test_training_moves_the_pytree_and_keeps_its_structure() -> None:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from jaxexample.task import init_model, load_data, train  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(EXAMPLE))
    part = load_data(20, 0.5, 0).partition(3)
    start = init_model(16, seed=1)
    record = to_arrays(start)
    assert sorted(record) == ["b1", "b2", "w1", "w2"]
    assert {a.dtype for a in record.values()} == {np.dtype(np.float32)}
    params, loss = train(
        load_arrays(init_model(16, seed=0), record),
        part.x_train,
        part.y_train,
        epochs=2,
        batch_size=16,
        lr=0.1,
        rng=np.random.default_rng(0),
    )
    assert np.isfinite(loss)
    trained = to_arrays(params)
    assert trained.structure() == record.structure()
    assert not np.allclose(trained["w1"], record["w1"])
