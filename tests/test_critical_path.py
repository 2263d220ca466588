"""Which stale step starts first: the longest road to the end of the graph, through the
real doit engine (no toolchain: the steps here only record when they ran)."""

from __future__ import annotations

import threading
import time

import pytest

from edgebuild import engine
from edgebuild.critical_path import estimated_seconds, longest_path_first
from edgebuild.graph import Node

pytestmark = pytest.mark.fast


def graph() -> dict[str, Node]:
    """Two targets: a quick int8 one listed first, then a fine-tuned chain
    (prune, then cluster, then quantize) that takes most of the build."""
    convert = Node("convert.tflite", {"n": 1})
    int8 = Node("quantize.tflite", {"mode": "int8"}, deps={"model": (convert.id, "model")})
    quick_bundle = Node("bundle", {"t": "quick"}, deps={"model": (int8.id, "model")})
    prune = Node("prune.tfmot", {"epochs": 30})
    cluster = Node("cluster.tfmot", {"epochs": 30}, deps={"model": (prune.id, "model")})
    sparse = Node("quantize.tflite", {"mode": "int8", "of": "sparse"},
                  deps={"model": (cluster.id, "model")})
    slow_bundle = Node("bundle", {"t": "slow"}, deps={"model": (sparse.id, "model")})
    return {"convert": convert, "int8": int8, "quick_bundle": quick_bundle, "prune": prune,
            "cluster": cluster, "sparse": sparse, "slow_bundle": slow_bundle}


def test_fine_tuning_is_estimated_by_its_epochs():
    assert estimated_seconds(Node("prune.tfmot", {"epochs": 30})) > \
        estimated_seconds(Node("prune.tfmot", {"epochs": 2})) > \
        estimated_seconds(Node("bundle", {}))


def test_the_fine_tuned_chain_comes_first_and_dependencies_keep_their_order():
    nodes = graph()
    order = [node.id for node in longest_path_first(list(nodes.values()))]
    name = {node.id: key for key, node in nodes.items()}
    assert [name[i] for i in order][:4] == ["prune", "cluster", "convert", "int8"]
    for node in nodes.values():  # every node after what it depends on
        assert all(order.index(up) < order.index(node.id) for up in node.upstream())


def test_the_engine_starts_the_longest_road_first():
    """In recipe order the quick target's steps would start first; doit is given the
    ranked order, so the first step it starts is the head of the fine-tuned chain,
    and under -j 2 the second worker takes the quick target meanwhile."""
    nodes = graph()
    name = {node.id: key for key, node in nodes.items()}
    started: list[str] = []
    lock = threading.Lock()

    def build(node: Node) -> bool:
        with lock:
            started.append(name[node.id])
        time.sleep(0.05)
        return True

    failures = engine.run(list(nodes.values()), lambda node: False, build, jobs=1)
    assert failures == {} and started[0] == "prune" and len(started) == 7
    started.clear()
    failures = engine.run(list(nodes.values()), lambda node: False, build, jobs=2)
    assert failures == {} and set(started[:2]) == {"prune", "convert"}
