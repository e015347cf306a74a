"""examples/analytics over the gRPC deployment: a real server, five real hospital nodes
and `pollinate run`, on 127.0.0.1; the answers are those of the pooled records."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pollinate.testing.processes import Processes, free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "analytics"
HOSPITALS = 5


def _pooled_onset() -> np.ndarray:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from hospitals.data import patient_records
    finally:
        sys.path.remove(str(EXAMPLE))
    tables = [patient_records(i, seed=0) for i in range(HOSPITALS)]
    return np.concatenate([t["age_at_onset"][t["condition_x"] == 1] for t in tables])


def test_the_analytics_example_runs_over_a_server_and_five_hospital_nodes(
    procs: Processes,
) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    procs.start_server(port, "--insecure")
    procs.start_nodes(port, EXAMPLE, HOSPITALS, "--insecure", prefix="hospital")

    result = procs.run(
        "run", str(EXAMPLE), "--server", address, "--insecure", "--config", "min-nodes=5"
    )

    assert result.returncode == 0, result.stdout + result.stderr
    onset = _pooled_onset()
    assert f"patients with X: {len(onset)} (n={len(onset)}, 5 hospitals)" in result.stdout
    assert f"mean age at onset: {onset.mean():.3f} (n={len(onset)}" in result.stdout
    assert f"variance of age at onset: {np.var(onset, ddof=1):.3f}" in result.stdout
    assert "quantiles of age at onset: q0.1 " in result.stdout
    assert "completed" in result.stdout.splitlines()[-1]
