"""The communication graph of SecAgg+: who shares secrets and masks with whom.

Bell et al., "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead",
CCS 2020, https://eprint.iacr.org/2020/704: instead of every pair of nodes (the
complete graph of Bonawitz et al., 2017), each node masks with and secret-shares over
only its ``k`` neighbours in a sparse random graph, with ``k = O(log n)``, which cuts
each node's cost from O(n) to O(log n) while keeping the sum private and recoverable
as long as dropouts stay below the reconstruction threshold in each neighbourhood.

The graph here is the Harary graph ``H(k, n)`` (the ring where each node is joined to
the ``k / 2`` nearest on each side, plus diameters when ``k`` is odd) laid over a
uniformly random ordering of the nodes drawn from the server's ``rng``. It is
``k``-regular (one node has degree ``k + 1`` when both ``k`` and ``n`` are odd) and
``k``-connected. Its randomness is the server's: nodes never derive it, they are told
their neighbours and check only that there are enough of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pollinate.errors import ConfigError

__all__ = ["harary_graph"]


def harary_graph(
    node_ids: Sequence[int], degree: int, rng: np.random.Generator
) -> dict[int, frozenset[int]]:
    """Each node's neighbours in a randomly labelled Harary graph of ``degree``.

    A ``degree`` of ``len(node_ids) - 1`` or more gives the complete graph. The
    relation is symmetric and no node is its own neighbour.

    Examples
    --------
    >>> graph = harary_graph(range(1, 11), 4, np.random.default_rng(0))
    >>> sorted(len(neighbours) for neighbours in graph.values()) == [4] * 10
    True
    >>> all(node in graph[peer] for node, peers in graph.items() for peer in peers)
    True
    """
    ids = [int(n) for n in node_ids]
    n = len(ids)
    if len(set(ids)) != n:
        raise ConfigError("node ids of the SecAgg+ graph must be distinct")
    if not isinstance(degree, int) or degree < 1:
        raise ConfigError(f"the SecAgg+ graph degree must be an int >= 1, got {degree!r}")
    if degree >= n - 1:
        return {node: frozenset(ids) - {node} for node in ids}
    order = [ids[i] for i in rng.permutation(n)]
    links: dict[int, set[int]] = {node: set() for node in ids}

    def join(a: int, b: int) -> None:
        links[order[a % n]].add(order[b % n])
        links[order[b % n]].add(order[a % n])

    for position in range(n):
        for distance in range(1, degree // 2 + 1):
            join(position, position + distance)
    if degree % 2:
        half = n // 2
        # Even n: each node to its diametric opposite. Odd n: the standard Harary
        # construction joins positions p and p + (n + 1) / 2 for p <= (n - 1) / 2.
        for position in range(half if n % 2 == 0 else half + 1):
            join(position, position + (half if n % 2 == 0 else half + 1))
    return {node: frozenset(peers) for node, peers in links.items()}
