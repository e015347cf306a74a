"""Serialization throughput against the physical limit (one memcpy of the same bytes).

Encodes and decodes a Message holding one large float32 ArrayRecord (100 MB by default),
via one ``bytes`` object and via zero-copy segments, and prints GB/s beside a plain NumPy
copy of the same size on this machine. Not part of the tests.

    .venv/bin/python benchmarks/serde.py [--size-mb 100] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from pollinate.records import ArrayRecord, Message, RecordDict
from pollinate.serde import (
    frame_nbytes,
    message_from_bytes,
    message_to_bytes,
    message_to_segments,
)


def best_and_median(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best and median wall time of ``fn`` in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    count = int(args.size_mb * 1e6) // 4
    weights = np.random.default_rng(0).standard_normal(count, dtype=np.float32)
    nbytes = weights.nbytes
    msg = Message(
        RecordDict({"arrays": ArrayRecord({"weights": weights})}),
        dst_node_id=1,
        message_type="train",
    )
    frame = message_to_bytes(msg)
    segments = message_to_segments(msg)
    target = bytearray(frame_nbytes(segments))
    preallocated = np.empty_like(weights)

    def write_segments() -> None:
        """What a writer does with segments: one pass into a preallocated buffer (or a socket)."""
        view = memoryview(target)
        position = 0
        for segment in segments:
            size = memoryview(segment).nbytes
            view[position : position + size] = segment
            position += size

    def decode_and_touch() -> None:
        """Decode and read every element, so lazy mapping cannot flatter the number."""
        message_from_bytes(frame).content["arrays"]["weights"].sum()

    cases: list[tuple[str, Callable[[], object]]] = [
        ("memcpy: np.copyto into a preallocated array", lambda: np.copyto(preallocated, weights)),
        ("memcpy: ndarray.copy() (allocate + copy)", weights.copy),
        ("memcpy: ndarray.tobytes() (allocate bytes + copy)", weights.tobytes),
        ("encode: message_to_bytes", lambda: message_to_bytes(msg)),
        ("encode: message_to_segments (no copy)", lambda: message_to_segments(msg)),
        ("encode: segments -> preallocated buffer", write_segments),
        ("decode: message_from_bytes (zero-copy)", lambda: message_from_bytes(frame)),
        ("decode: from a bytearray (zero-copy)", lambda: message_from_bytes(target)),
        ("reference: sum() over the array (one read pass)", weights.sum),
        ("decode + sum() over the decoded array", decode_and_touch),
    ]
    print(f"payload: {nbytes / 1e6:.0f} MB float32 in one ArrayRecord; frame {len(frame)} bytes")
    print(f"{'case':<52} {'best GB/s':>10} {'median GB/s':>12} {'best ms':>9}")
    for name, fn in cases:
        best, median = best_and_median(fn, args.repeat)
        print(
            f"{name:<52} {nbytes / best / 1e9:>10.2f} {nbytes / median / 1e9:>12.2f} "
            f"{best * 1e3:>9.3f}"
        )


if __name__ == "__main__":
    main()
