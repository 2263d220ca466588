"""The step graph: nodes, de-duplication, order and rendering. Pure data, no I/O.

A node's `id` hashes its *definition* (kind, parameters, which nodes and files feed
it), so targets that share a chain prefix share nodes. Its cache *key*, computed
later from input *contents*, is what decides whether it must run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgebuild.console import step_name
from edgebuild.fsutil import canonical_json
from edgebuild.hashing import sha256_bytes
from edgebuild.steps import IMPLS, Impl


@dataclass
class Node:
    impl_name: str
    params: dict
    deps: dict[str, tuple[str, str]] = field(default_factory=dict)  # input -> (node id, output)
    files: dict[str, Path] = field(default_factory=dict)            # input -> user file/folder
    device: dict = field(default_factory=dict)   # profile fields the step depends on
    chain: tuple[str, ...] = ()  # nodes whose keys this step records (bundle manifests)
    after: tuple[str, ...] = ()  # must succeed first, but add nothing to the key
    targets: list[str] = field(default_factory=list)
    id: str = ""

    def __post_init__(self) -> None:
        self.id = sha256_bytes(canonical_json({
            "impl": self.impl_name, "params": self.params, "device": self.device,
            "deps": self.deps, "files": {k: str(v) for k, v in self.files.items()},
            "chain": self.chain, "after": self.after}))[:16]

    @property
    def impl(self) -> Impl:
        return IMPLS[self.impl_name]

    @property
    def kind(self) -> str:
        return self.impl.kind

    @property
    def label(self) -> str:
        detail = self.params.get("mode") or ""
        if self.kind == "prune":
            detail = self.params.get("structure") or f"{self.params['sparsity']:g}"
        elif self.kind == "cluster":
            detail = f"{self.params['clusters']}"
        elif self.kind == "quantize":
            detail += "" if self.params.get("per_channel", True) else "-per-tensor"
            detail += "-sensitive-float" if self.params["keep_float"].get("sensitive") else ""
        elif self.kind in ("bundle", "validate"):
            detail = ",".join(self.targets)
            if self.params.get("rung"):  # which rung of a fallback ladder
                detail += f":{self.params['rung']}"
        return f"{self.impl_name}[{detail}]" if detail else self.impl_name

    def upstream(self) -> list[str]:
        """Every node that must finish first (what ordering and staleness follow)."""
        return [*self.edges(), *self.chain]

    def edges(self) -> list[str]:
        """Nodes whose outputs feed this one, or that gate it (what graphs draw)."""
        return [dep for dep, _ in self.deps.values()] + list(self.after)


class Graph:
    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.target_chains: dict[str, list[str]] = {}  # target -> node ids in chain order
        # Validation steps whose rejected verdict fails their targets (the last rung of
        # a fallback ladder; earlier rungs' rejections only move the ladder down).
        self.gates: set[str] = set()
        self.rungs: dict[str, int] = {}  # target -> chosen rung of its fallback ladder
        self.deferred: dict[str, str] = {}  # target -> why its compile cannot run here

    def add(self, node: Node, target: str) -> str:
        """Add `node`, or merge it into the identical node already present."""
        existing = self.nodes.setdefault(node.id, node)
        if target not in existing.targets:
            existing.targets.append(target)
        chain = self.target_chains.setdefault(target, [])
        if node.id not in chain:
            chain.append(node.id)
        return node.id

    def order(self) -> list[Node]:
        """Nodes in dependency order; ties keep insertion order, so output is stable."""
        done: set[str] = set()
        ordered: list[Node] = []

        def visit(node_id: str) -> None:
            if node_id in done:
                return
            done.add(node_id)
            for up in self.nodes[node_id].upstream():
                visit(up)
            ordered.append(self.nodes[node_id])

        for node_id in self.nodes:
            visit(node_id)
        return ordered

    def subgraph(self, targets: list[str]) -> Graph:
        sub = Graph()
        for target in targets:
            for node_id in self.target_chains[target]:
                sub.nodes[node_id] = self.nodes[node_id]
            sub.target_chains[target] = self.target_chains[target]
            if target in self.rungs:
                sub.rungs[target] = self.rungs[target]
            if target in self.deferred:
                sub.deferred[target] = self.deferred[target]
        sub.gates = self.gates & set(sub.nodes)
        return sub


def edges(graph: Graph) -> list[tuple[str, str]]:
    """(from, to) node ids, each once (a step may read two outputs of one node)."""
    return [(up, node.id) for node in graph.order() for up in dict.fromkeys(node.edges())]


def to_mermaid(graph: Graph) -> str:
    lines = ["flowchart LR"]
    for node in graph.order():
        lines.append(f'  {node.kind}_{node.id}["{step_name(node)}"]')
    for up, down in edges(graph):
        lines.append(f"  {graph.nodes[up].kind}_{up} --> {graph.nodes[down].kind}_{down}")
    return "\n".join(lines) + "\n"


def to_dot(graph: Graph) -> str:
    lines = ["digraph edgebuild {", "  rankdir=LR;", "  node [shape=box];"]
    for node in graph.order():
        lines.append(f'  "{node.id}" [label="{step_name(node)}"];')
    for up, down in edges(graph):
        lines.append(f'  "{up}" -> "{down}";')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_json(graph: Graph) -> dict:
    return {"nodes": [{"id": node.id, "kind": node.kind, "step": node.impl_name,
                       "label": step_name(node), "targets": list(node.targets)}
                      for node in graph.order()],
            "edges": [{"from": up, "to": down} for up, down in edges(graph)]}
