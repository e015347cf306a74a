"""pollinate.privacy stays in its layer, and dp-accounting loads only when used."""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = {"grpc", "ray", "torch", "jax", "opacus", "dp_accounting", "rich", "matplotlib"}
ABOVE = ("pollinate.client", "pollinate.server", "pollinate.runtime", "pollinate.cli")


def test_importing_privacy_loads_no_framework_no_upper_layer_and_no_dp_accounting() -> None:
    code = "import sys, json, pollinate.privacy; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    leaks = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN or m.startswith(ABOVE))
    assert leaks == []
