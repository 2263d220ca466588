"""Which stale step to start first: the one with the longest road still behind it.

doit starts ready tasks in the order it is given them. In recipe order, a chain of
fine-tuning steps (prune, then cluster, then quantize) can start last and leave one
core idle at the end of the build while it finishes alone. Ordering by the longest
estimated path to the end of the graph (list scheduling's "upward rank") starts
that chain first, and fills the other workers with the short steps around it.

The estimates are coarse on purpose: only their order matters, and a cold build has
no history to measure from. Fine-tuning dominates, and it grows with its epochs.
"""

from __future__ import annotations

from edgebuild.graph import Node

# Rough seconds a step of each kind takes on a small model, its toolchain loaded.
_BASE_SECONDS = {"convert": 5.0, "prepare": 2.0, "quantize": 3.0, "baseline": 2.0,
                 "validate": 1.0, "compile": 1.0, "bundle": 0.1}
_SECONDS_PER_EPOCH = 1.0  # 100 images of 128x128 take ~0.9 s an epoch in float64


def estimated_seconds(node: Node) -> float:
    seconds = _BASE_SECONDS.get(node.kind, 3.0)
    if node.kind in ("prune", "cluster"):
        seconds += _SECONDS_PER_EPOCH * (node.params.get("epochs") or 0)
    elif node.kind == "quantize":  # quantization-aware training fine-tunes first
        seconds += _SECONDS_PER_EPOCH * ((node.params.get("qat") or {}).get("epochs") or 0)
    return seconds


def longest_path_first(nodes: list[Node]) -> list[Node]:
    """`nodes` sorted by the estimated time from each one's start to the end of the
    graph (its own time plus its slowest path downstream); ties keep their order."""
    ids = {node.id for node in nodes}
    downstream: dict[str, list[str]] = {node.id: [] for node in nodes}
    for node in nodes:
        for up in node.upstream():
            if up in ids:
                downstream[up].append(node.id)
    by_id = {node.id: node for node in nodes}
    rank: dict[str, float] = {}

    def rank_of(node_id: str) -> float:
        # Memoized, so linear in the graph; paths are a handful of steps long.
        if node_id not in rank:
            rank[node_id] = estimated_seconds(by_id[node_id]) + max(
                (rank_of(down) for down in downstream[node_id]), default=0.0)
        return rank[node_id]

    order = {node.id: index for index, node in enumerate(nodes)}
    return sorted(nodes, key=lambda node: (-rank_of(node.id), order[node.id]))
