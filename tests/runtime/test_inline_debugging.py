"""A breakpoint in a ClientApp works under the inline runtime: the debugger stops in
the node's code, with the node's context in scope."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    from pollinate import ArrayRecord, ClientApp, FedAvg, MetricRecord, RecordDict, ServerApp
    from pollinate import run_simulation

    client = ClientApp()

    @client.train()
    def train(msg, context):
        if context.node_id == 2:
            breakpoint()
        arrays = msg.content["arrays"]
        metrics = MetricRecord({"num-examples": 1})
        return msg.reply(RecordDict({"arrays": arrays, "metrics": metrics}))

    server = ServerApp()

    @server.main()
    def main(grid, context):
        return FedAvg(fraction_evaluate=0.0, rng=np.random.default_rng(0)).start(
            grid, initial_arrays=ArrayRecord({"w": np.zeros(2)}), num_rounds=1)

    run_simulation(server, client, num_nodes=3, runtime="inline")
    print("run finished")
    """
)


def test_breakpoint_in_a_client_app_stops_in_the_node() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        input="p ('node', context.node_id)\nc\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONBREAKPOINT": "pdb.set_trace", "PATH": ""},
    )
    assert completed.returncode == 0, completed.stderr
    assert "(Pdb)" in completed.stdout
    assert "('node', 2)" in completed.stdout
    assert completed.stdout.rstrip().endswith("run finished")
