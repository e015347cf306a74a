"""The server side: FedAvg over all nodes, training only, on N float32 parameters.

Prints, per round, one ``BENCH_ROUND {json}`` line with wall-clock timestamps
(``time.time()``, comparable across the processes of one machine) of the round's
phases, taken by wrapping the grid's ``send`` and ``receive``:

- ``start``: the round begins (the centralized-evaluate hook of the previous round);
- ``sent``: every instruction was serialized and accepted by the server
  (``grid.send`` returned; it uploads them one after the other);
- ``first_reply`` / ``last_reply``: the first and the last reply reached the ServerApp;
- ``end``: the aggregate is computed (the centralized-evaluate hook of this round).

Also ``frame_bytes_sent``: the sum over instructions of the serialized frame sizes;
``checkpoint_start`` / ``checkpoint_end``: the previous round's checkpoint call (it falls
in this round's time); ``arrival_order`` / ``arrival_times``: the sending position of
each reply as the grid yielded it, and when (replies are added in sending order, so
the order they arrive in decides how much adding is left after the last one).
"""

from __future__ import annotations

import cProfile
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pollinate import ArrayRecord, Context, FedAvg, Grid, Message, Result, ServerApp
from pollinate.serde import frame_nbytes, message_to_segments

app = ServerApp()

ROUND_PREFIX = "BENCH_ROUND "
DONE_PREFIX = "BENCH_DONE "


class PhaseClock:
    """Wraps a grid's ``send`` and ``receive`` to timestamp each round's phases."""

    def __init__(self, grid: Grid) -> None:
        self.grid = grid
        self.current: dict[str, Any] = {}
        self._send = grid.send
        self._receive = grid.receive
        self._save_checkpoint = grid.save_checkpoint
        grid.send = self.send  # type: ignore[method-assign]
        grid.receive = self.receive  # type: ignore[method-assign]
        grid.save_checkpoint = self.save_checkpoint  # type: ignore[method-assign]

    def send(self, messages: Iterable[Message]) -> list[str]:
        """Time the upload of all instructions (and count their frame bytes)."""
        batch = list(messages)
        self.current["send_start"] = time.time()
        self.current["frame_bytes_sent"] = sum(
            frame_nbytes(message_to_segments(m)) for m in batch[:1]
        ) * len(batch)
        ids = self._send(batch)
        self.current["sent"] = time.time()
        return ids

    def save_checkpoint(self, server_round: int, state: Any) -> None:
        """Time the previous round's checkpoint (it falls in the next round's time)."""
        self.current["checkpoint_start"] = time.time()
        self._save_checkpoint(server_round, state)
        self.current["checkpoint_end"] = time.time()

    def receive(self, message_ids: Sequence[str], *, timeout: float) -> Iterator[Message]:
        """Timestamp the first and the last reply as the grid yields them."""
        position = {message_id: index for index, message_id in enumerate(message_ids)}
        arrivals = self.current.setdefault("arrival_order", [])
        for reply in self._receive(message_ids, timeout=timeout):
            now = time.time()
            arrivals.append(position.get(reply.metadata.reply_to_message_id, -1))
            self.current.setdefault("arrival_times", []).append(now)
            self.current.setdefault("first_reply", now)
            self.current["last_reply"] = now
            yield reply

    def __call__(self, server_round: int, arrays: ArrayRecord) -> None:
        """The centralized-evaluate hook: closes round ``server_round`` and opens the next."""
        now = time.time()
        if server_round > 0:
            self.current.update(round=server_round, end=now)
            print(ROUND_PREFIX + json.dumps(self.current), flush=True)
        self.current = {"start": now}


def _int(value: object) -> int:
    """A run-config value that must be an integer (the CLI parses it as the default's type)."""
    if not isinstance(value, int):
        raise TypeError(f"expected an integer run-config value, got {value!r}")
    return value


@app.main()
def main(grid: Grid, context: Context) -> Result:
    """Run ``num-server-rounds`` FedAvg rounds on ``num-parameters`` float32 zeros."""
    config = context.run_config
    num_parameters = _int(config["num-parameters"])
    num_nodes = _int(config["num-nodes"])
    grid.wait_for_nodes(num_nodes, timeout=60)
    strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=num_nodes,
        min_available_nodes=num_nodes,
    )
    clock = PhaseClock(grid)
    initial = ArrayRecord({"w": np.zeros(num_parameters, dtype=np.float32)})
    profile_dir = os.environ.get("POLLINATE_BENCH_PROFILE")
    profiler = cProfile.Profile() if profile_dir else None
    if profiler is not None:
        profiler.enable()
    result = strategy.start(
        grid,
        initial_arrays=initial,
        num_rounds=_int(config["num-server-rounds"]),
        evaluate_fn=clock,
    )
    if profiler is not None and profile_dir:
        profiler.disable()
        profiler.dump_stats(str(Path(profile_dir) / "serverapp.prof"))
    final = result.arrays["w"]
    summary = {"parameters": int(final.size), "mean": float(np.mean(final, dtype=np.float64))}
    print(DONE_PREFIX + json.dumps(summary), flush=True)
    return result
