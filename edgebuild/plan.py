"""Decide, per step, whether it is cached or must run, and say why, as data.

A step's key is the sha256 of its key document: what it is (implementation and
version), how it is configured (resolved parameters, device fields), what it reads
(digests of input files and of upstream outputs) and with what (toolchain versions).
An upstream step that has not run yet leaves the key unknown until it has.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from edgebuild.cache import Cache, Entry
from edgebuild.fsutil import canonical_json
from edgebuild.graph import Graph, Node
from edgebuild.hashing import StatCache, sha256_bytes
from edgebuild.toolchains.versions import versions


@dataclass(frozen=True)
class Reason:
    """Why a step will run. `field` names the key-document field that changed."""

    code: str  # new | changed | upstream | evicted
    message: str
    field: str = ""
    old: object = None
    new: object = None

    def to_dict(self) -> dict:
        data = {"code": self.code, "message": self.message}
        if self.field:
            data.update(field=self.field, old=self.old, new=self.new)
        return data


@dataclass
class StepState:
    node: Node
    key: str | None
    doc: dict | None
    entry: Entry | None
    reasons: list[Reason] = field(default_factory=list)

    @property
    def cached(self) -> bool:
        return self.entry is not None


class RunRecord:
    """The run's record: the cache entry of each step, once known (found in the cache
    or just built). Thread-safe: the engine's threads record as steps finish."""

    def __init__(self):
        self._entries: dict[str, Entry] = {}  # node id -> entry
        self._lock = threading.Lock()

    def get(self, node_id: str) -> Entry | None:
        with self._lock:
            return self._entries.get(node_id)

    def record(self, node_id: str, entry: Entry) -> None:
        with self._lock:
            self._entries[node_id] = entry


class Planner:
    """Computes key documents and keys, and finds them in the cache; what it finds
    goes into the run's record. Thread-safe: the engine asks again from worker threads
    once upstream steps have finished."""

    def __init__(self, graph: Graph, cache: Cache, stat: StatCache, previous: dict | None = None):
        self.graph, self.cache, self.stat = graph, cache, stat
        self.previous = previous or {}  # (target, impl) -> lock-file record of the last build
        self.run = RunRecord()
        # node id -> (key document, key). Final once computed: it exists only when every
        # upstream entry is known, and those do not change within a run.
        self._resolved: dict[str, tuple[dict, str]] = {}
        self._lock = threading.Lock()

    def resolve(self, node: Node) -> tuple[dict, str] | None:
        """(key document, key), or None while an upstream output is unknown."""
        with self._lock:
            if node.id in self._resolved:
                return self._resolved[node.id]
        doc = self._compute_doc(node)
        if doc is None:
            return None
        resolved = (doc, key_of(doc))
        with self._lock:
            self._resolved[node.id] = resolved
        return resolved

    def _compute_doc(self, node: Node) -> dict | None:
        inputs = {}
        for name, (up_id, output) in sorted(node.deps.items()):
            entry = self.entry_of(up_id)
            if entry is None:
                return None
            inputs[name] = entry.outputs[output].digest
        for name, path in sorted(node.files.items()):
            inputs[name] = self.stat.digest(path)
        doc = {"kind": node.kind, "impl": f"{node.impl_name}@{node.impl.version}",
               "params": node.params, "inputs": inputs, "device": node.device,
               "toolchain": versions(node.impl.toolchain)}
        if node.chain:
            chain = [self.entry_of(up) for up in node.chain]
            if any(e is None for e in chain):
                return None
            doc["chain"] = [e.key for e in chain]
        # Round-trip so the document compares equal to one read back from JSON.
        return _json_roundtrip(doc)

    def entry_of(self, node_id: str) -> Entry | None:
        """The step's entry: recorded in this run, or found in the cache by its key."""
        entry = self.run.get(node_id)
        if entry is not None:
            return entry
        resolved = self.resolve(self.graph.nodes[node_id])
        if resolved is None:
            return None
        entry = self.cache.entry(resolved[1])
        if entry is not None:
            self.run.record(node_id, entry)
        return entry

    def state(self, node: Node) -> StepState:
        resolved = self.resolve(node)
        if resolved is None:
            waiting = [u for u in dict.fromkeys(node.edges()) if self.entry_of(u) is None] or \
                [u for u in dict.fromkeys(node.chain) if self.entry_of(u) is None]
            ups = [self.graph.nodes[u] for u in waiting]
            reasons = [Reason("upstream", f"input from {u.label} is not built yet") for u in ups]
            return StepState(node, None, None, None, reasons)
        doc, key = resolved
        entry = self.entry_of(node.id)
        if entry is not None:
            return StepState(node, key, doc, entry)
        return StepState(node, key, doc, None, self._why(node, key, doc))

    def _why(self, node: Node, key: str, doc: dict) -> list[Reason]:
        previous = [self.previous.get((t, node.impl_name)) for t in node.targets]
        previous = [p for p in previous if p]
        if not previous:
            return [Reason("new", "never built")]
        if any(p["key"] == key for p in previous):
            return [Reason("evicted", "built before, but its cache entry is gone")]
        return diff_docs(previous[0]["doc"], doc) or [Reason("changed", "key changed")]


def rejected(entry: Entry) -> bool:
    """A validation entry whose verdict missed its budget."""
    return entry.meta.get("verdict", {}).get("passed") is False


def gate_of(graph: Graph, target: str) -> str | None:
    """The validation step whose verdict decides whether `target` ships."""
    return next((i for i in graph.target_chains[target] if i in graph.gates), None)


def key_of(doc: dict) -> str:
    return sha256_bytes(canonical_json(doc))


def diff_docs(old: dict, new: dict, prefix: str = "") -> list[Reason]:
    """Field-by-field differences between two key documents."""
    reasons = []
    for name in sorted(set(old) | set(new)):
        path = f"{prefix}.{name}" if prefix else name
        a, b = old.get(name, _MISSING), new.get(name, _MISSING)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            reasons.extend(diff_docs(a, b, path))
        else:
            reasons.append(Reason("changed", f"{path}: {_show(a)} -> {_show(b)}", path,
                                  None if a is _MISSING else a, None if b is _MISSING else b))
    return reasons


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


_MISSING = _Missing()


def _show(value: object) -> str:
    if isinstance(value, str) and len(value) == 64:
        return value[:12]  # a digest
    return repr(value)


def _json_roundtrip(doc: dict) -> dict:
    return json.loads(canonical_json(doc))
