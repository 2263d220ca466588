"""Operations behind the CLI, one function each: plan, build, explain, graph, gc, clean.

They return data (states, reasons, summaries); the CLI decides how to print it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgebuild.cache import Cache, CorruptBlob, RecipeMemo
from edgebuild.chain import compile_recipe
from edgebuild.console import Console
from edgebuild.errors import UsageError
from edgebuild.graph import Graph
from edgebuild.lockfile import lock_keys, previous_steps, read_lock, step_record, write_lock
from edgebuild.plan import Reason, Resolver, StepState, diff_docs
from edgebuild.recipe import Recipe, load_recipe


@dataclass
class Settings:
    cache_dir: Path = Path("cache")
    dist_dir: Path = Path("dist")
    jobs: int = 1

    @classmethod
    def from_env(cls, cache_dir: str | None = None, dist_dir: str | None = None,
                 jobs: int = 1) -> Settings:
        return cls(cache_dir=Path(cache_dir or os.environ.get("EDGEBUILD_CACHE") or "cache"),
                   dist_dir=Path(dist_dir or "dist"), jobs=jobs)


@dataclass
class Project:
    """A loaded recipe with its graph and everything needed to resolve it."""

    recipe: Recipe
    graph: Graph
    cache: Cache
    resolver: Resolver
    lock: dict

    def bundle_dir(self, settings: Settings, target: str) -> Path:
        return settings.dist_dir / self.recipe.name / target


@dataclass
class StepReport:
    key: str | None
    kind: str
    label: str
    targets: list[str]
    status: str  # cached | executed | failed | deferred | skipped | pending
    from_cache: bool = False  # a deferred step may come from the cache too
    reasons: list[Reason] = field(default_factory=list)
    message: str = ""

    def to_dict(self) -> dict:
        data = {"key": self.key, "kind": self.kind, "label": self.label,
                "targets": self.targets, "status": self.status, "from_cache": self.from_cache}
        if self.reasons:
            data["reasons"] = [r.to_dict() for r in self.reasons]
        if self.message:
            data["message"] = self.message
        return data


@dataclass
class BuildReport:
    recipe: str
    steps: list[StepReport]
    targets: dict[str, dict]
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return any(t["status"] == "failed" for t in self.targets.values())

    def counts(self) -> dict[str, int]:
        counts = {"total": len(self.steps), "cached": 0, "executed": 0, "failed": 0,
                  "deferred": 0, "skipped": 0}
        for step in self.steps:
            if step.status in counts:
                counts[step.status] += 1
        return counts

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "steps": self.counts(),
                "step_list": [s.to_dict() for s in self.steps], "targets": self.targets,
                "seconds": round(self.seconds, 3)}


def open_project(recipe_path: str | Path, settings: Settings,
                 targets: list[str] | None = None) -> Project:
    cache = Cache(settings.cache_dir)
    recipe = load_recipe(recipe_path, memo=RecipeMemo(cache))
    graph = compile_recipe(recipe)
    if targets:
        unknown = [t for t in targets if t not in recipe.targets]
        if unknown:
            raise UsageError(f"{recipe_path}: no target named {', '.join(map(repr, unknown))} "
                             f"(targets: {', '.join(recipe.targets)})")
        graph = graph.subgraph(targets)
    cache.ensure()
    lock = read_lock(recipe.lock_path)
    resolver = Resolver(graph, cache, cache.stat_cache(), previous_steps(lock))
    return Project(recipe, graph, cache, resolver, lock)


def plan(project: Project) -> list[StepState]:
    return [project.resolver.state(node) for node in project.graph.order()]


def build(project: Project, settings: Settings, console: Console) -> BuildReport:
    from edgebuild.executor import Executor

    started = time.monotonic()
    states = plan(project)
    executor = Executor(project.cache, project.resolver, console)
    to_run = [s.node for s in states if not s.cached]
    failures: dict[str, str] = {}
    if to_run:
        from edgebuild import engine  # doit is imported only when there is work

        console.say(f"{project.recipe.name}: {len(to_run)} of {len(states)} steps to run")
        failures = engine.run(to_run, executor.is_built, executor.build, settings.jobs)
    steps = [_step_report(s, executor, failures, project) for s in states]
    targets = _finish_targets(project, settings, steps)
    return BuildReport(project.recipe.name, steps, targets, time.monotonic() - started)


def _step_report(state: StepState, executor, failures: dict[str, str], project) -> StepReport:
    node = state.node
    outcome = executor.outcomes.get(node.id)
    entry = project.resolver.entry_of(node.id)
    if outcome is None and node.id in failures:
        status, message = "skipped", "not run: a step it depends on failed"
    elif outcome is not None:
        status, message = outcome.status, outcome.message
    else:
        status, message = ("cached", "") if entry is not None else ("pending", "")
    from_cache = status == "cached"
    if from_cache and entry.status == "deferred":
        status = "deferred"
    return StepReport(key=entry.key if entry else state.key, kind=node.kind, label=node.label,
                      targets=list(node.targets), status=status, from_cache=from_cache,
                      reasons=[] if from_cache else state.reasons, message=message)


def _finish_targets(project: Project, settings: Settings, steps: list[StepReport]) -> dict:
    """Publish finished bundles, record them in the lock file, say how each target did."""
    from edgebuild.dist import archive_path, publish

    by_id = dict(zip((n.id for n in project.graph.order()), steps, strict=True))
    targets, records = {}, {}
    for target, chain in project.graph.target_chains.items():
        chain_steps = [by_id[node_id] for node_id in chain]
        bundle_entry = project.resolver.entry_of(chain[-1])
        if any(s.status in ("failed", "skipped") for s in chain_steps) or bundle_entry is None:
            failed = [s.label for s in chain_steps if s.status == "failed"]
            targets[target] = {"status": "failed", "failed_steps": failed, "bundle": None}
            continue
        dest = project.bundle_dir(settings, target)
        try:
            publish(project.cache, bundle_entry.outputs["bundle"], dest,
                    bundle_entry.outputs.get("archive"))
        except CorruptBlob as exc:
            targets[target] = {"status": "failed", "failed_steps": ["bundle"], "bundle": None,
                               "message": str(exc)}
            continue
        deferred = any(s.status == "deferred" for s in chain_steps)
        targets[target] = {"status": "deferred" if deferred else "ok", "bundle": str(dest)}
        if "archive" in bundle_entry.outputs:
            targets[target]["archive"] = {"path": str(archive_path(dest)),
                                          "bytes": bundle_entry.outputs["archive"].size}
        records[target] = _lock_record(project, target, chain)
    if records:
        recipe = project.recipe
        source = {"path": os.path.relpath(recipe.source.path, recipe.folder),
                  "format": recipe.source.format,
                  "digest": project.resolver.stat.digest(recipe.source.path)}
        write_lock(recipe.lock_path, recipe.name, source, list(recipe.targets), records,
                   project.lock)
        project.cache.add_root(recipe.lock_path)
    return targets


def _lock_record(project: Project, target: str, chain: list[str]) -> dict:
    steps = []
    for node_id in chain:
        entry = project.resolver.entry_of(node_id)
        volatile = project.graph.nodes[node_id].impl.volatile
        outputs = {name: out.digest for name, out in sorted(entry.outputs.items())
                   if name not in volatile}
        steps.append(step_record(entry.key, entry.doc, outputs, entry.status,
                                 entry.meta.get("facts")))
    device = project.recipe.targets[target].device.name
    return {"device": device, "steps": steps}


def explain(project: Project, step_ref: str) -> tuple[StepState, dict | None, list[Reason]]:
    """Compare a step's key document now with the last build recorded in the lock."""
    target, _, kind = step_ref.partition(":")
    chain = project.graph.target_chains.get(target)
    if chain is None or not kind:
        raise UsageError(f"name a step as TARGET:KIND, e.g. {next(iter(project.recipe.targets))}"
                         ":convert (targets: {', '.join(project.recipe.targets)})")
    matches = [project.graph.nodes[i] for i in chain
               if kind in (project.graph.nodes[i].kind, project.graph.nodes[i].impl_name)]
    if not matches:
        kinds = ", ".join(project.graph.nodes[i].kind for i in chain)
        raise UsageError(f"target '{target}' has no step '{kind}' (its steps: {kinds})")
    state = project.resolver.state(matches[0])
    previous = project.resolver.previous.get((target, matches[0].impl_name))
    if previous is None or state.doc is None:
        return state, previous, state.reasons
    return state, previous, diff_docs(previous["doc"], state.doc)


def gc(cache: Cache, extra_locks: list[Path], dry_run: bool) -> dict:
    """Drop entries no known lock file references, then blobs no entry references."""
    keep: set[str] = set()
    for lock_path in {*cache.roots(), *extra_locks}:
        keep |= lock_keys(read_lock(lock_path))
    dropped_entries = [k for k in cache.entry_keys() if k not in keep]
    live_blobs: set[str] = set()
    for key in keep:
        entry = cache.entry(key)
        for out in entry.outputs.values() if entry else ():
            live_blobs.add(out.digest)
            if out.tree:
                live_blobs |= {entry[0] for entry in cache.tree_listing(out).values()}
    blobs = [p for p in cache.blobs.glob("*/*") if p.name not in live_blobs]
    freed = sum(p.stat().st_size for p in blobs)
    stale_tmp = [p for p in cache.tmp.iterdir() if time.time() - p.stat().st_mtime > 3600] \
        if cache.tmp.is_dir() else []
    if not dry_run:
        for key in dropped_entries:
            cache.evict(key)
        for path in blobs:
            path.unlink(missing_ok=True)
        for path in stale_tmp:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
    return {"entries": len(dropped_entries), "blobs": len(blobs), "bytes": freed,
            "kept_entries": len(keep), "dry_run": dry_run}


def clean(recipe_paths: list[str], settings: Settings, wipe_cache: bool) -> list[Path]:
    removed = []
    for recipe_path in recipe_paths:
        recipe = load_recipe(recipe_path)
        folder = settings.dist_dir / recipe.name
        if folder.exists():
            shutil.rmtree(folder)
            removed.append(folder)
    if wipe_cache and settings.cache_dir.exists():
        Cache(settings.cache_dir).clear()
        removed.append(settings.cache_dir)
    return removed
