"""Pollinate's deployment benchmark app (``benchmarks/deployment.py``).

The ClientApp does almost no compute (it adds a constant to the arrays it received), so
a round's time is the framework's: serialization, chunking, hashing, the server's state
store, gRPC, and the aggregation. The ServerApp prints one ``BENCH_ROUND {json}`` line
per round and one ``BENCH_DONE {json}`` line at the end; the orchestrator parses them
from the output of ``pollinate run``.

Set ``POLLINATE_BENCH_PROFILE=DIR`` in the server's environment to write a cProfile of
the ServerApp's round loop to ``DIR/serverapp.prof`` (the ServerApp process inherits
the server's environment), and in a node's environment to write the ClientApp
handler's profile to ``DIR/clientapp-<pid>.prof``.
"""
