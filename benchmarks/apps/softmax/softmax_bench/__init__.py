"""Pollinate's side of the simulation benchmark: the softmax workload as a Pollinate app.

The workload itself lives in ``benchmarks/_workload.py`` (shared with the Flower twin,
which cannot import Pollinate); this package puts ``benchmarks/`` on ``sys.path`` so
both ``pollinate simulate benchmarks/apps/softmax`` and ``benchmarks/simulation.py``
load the very same code.
"""

import sys
from pathlib import Path

_BENCHMARKS = str(Path(__file__).resolve().parents[3])
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)
