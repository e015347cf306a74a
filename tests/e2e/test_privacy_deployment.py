"""Secure aggregation and central DP over the gRPC deployment: real server and nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pollinate.testing.processes import Processes, free_port

PRIVATEAPP = Path(__file__).resolve().parent / "apps" / "privateapp"
NODES = 4


def _final_w(stdout: str) -> np.ndarray:
    [line] = [line for line in stdout.splitlines() if line.startswith("final w ")]
    return np.array([float(v) for v in line.split()[2:]])


@pytest.mark.parametrize("mode", ["secagg", "dp"])
def test_private_training_runs_over_a_server_and_four_nodes(procs: Processes, mode: str) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    procs.start_server(port, "--insecure")
    procs.start_nodes(port, PRIVATEAPP, NODES, "--insecure")

    result = procs.run(
        "run", str(PRIVATEAPP), "--server", address, "--insecure", "--config", f"mode={mode}"
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "round 3 | train 4/4 replied" in result.stdout, result.stdout
    w = _final_w(result.stdout)
    if mode == "secagg":
        # Nodes add 1, 2, 3, 4 per round: 3 rounds of the plain mean give 7.5, and the
        # masked sum recovers it within the quantization error.
        np.testing.assert_allclose(w, 7.5, atol=1e-3)
    else:
        # Nodes clip their update (norm 2 * step) to norm 1 (0.5 per entry), the server
        # adds N(0, (0.5 * 1 / 4)^2) per entry and round: 1.5 +- 0.22 after 3 rounds.
        assert abs(w.mean() - 1.5) < 0.5 and np.all(np.abs(w - 1.5) < 1.2), w
        assert "ε=" in result.stdout, result.stdout
