"""Operations behind the CLI, one function each: plan, build, explain, graph, gc, clean.

They return data (states, reasons, summaries); the CLI decides how to print it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from edgebuild.budget import ladder_outcome
from edgebuild.cache import Cache, CorruptBlob, RecipeMemo
from edgebuild.chain import compile_recipe
from edgebuild.console import Console
from edgebuild.errors import UsageError
from edgebuild.fsutil import folder_problem
from edgebuild.graph import Graph
from edgebuild.lockfile import lock_keys, previous_steps, read_lock, step_record, write_lock
from edgebuild.plan import Reason, Resolver, StepState, diff_docs, gate_of, rejected
from edgebuild.recipe import Recipe, load_recipe
from edgebuild.recipe.model import METRIC_LABELS, PRIMARY_METRIC


@dataclass
class Settings:
    cache_dir: Path = Path("cache")
    dist_dir: Path = Path("dist")
    jobs: int | None = None  # steps at once; default 1, or the cluster's threads
    require_engines: bool = False  # a deferred TensorRT engine fails its target
    remote_cache: str | None = None  # an fsspec URL shared by runners and workers
    remote_readonly: bool = False
    remote_options: dict = field(default_factory=dict)  # fsspec storage options
    scheduler: str | None = None  # a Dask scheduler address: steps run on its workers
    shard: tuple[int, int] | None = None  # (i, n): build the i-th of n target shards

    @classmethod
    def from_env(cls, cache_dir: str | None = None, dist_dir: str | None = None,
                 jobs: int | None = None, require_engines: bool = False,
                 remote_cache: str | None = None, remote_readonly: bool = False,
                 scheduler: str | None = None, shard: tuple[int, int] | None = None
                 ) -> Settings:
        """Flags, then the environment, then edgebuild.toml (see config.py)."""
        from edgebuild.config import resolve

        config = resolve(remote_cache, remote_readonly, scheduler)
        if not cache_dir and os.environ.get("EDGEBUILD_CACHE"):
            problem = folder_problem(Path(os.environ["EDGEBUILD_CACHE"]))
            if problem:
                raise UsageError(f"$EDGEBUILD_CACHE: {problem}")
        return cls(cache_dir=Path(cache_dir or os.environ.get("EDGEBUILD_CACHE") or "cache"),
                   dist_dir=Path(dist_dir or "dist"), jobs=jobs,
                   require_engines=require_engines, remote_cache=config.remote_cache,
                   remote_readonly=config.remote_readonly, scheduler=config.scheduler,
                   shard=shard)

    def open_cache(self) -> Cache:
        remote = None
        if self.remote_cache:
            from edgebuild.remote import RemoteStore

            remote = RemoteStore(self.remote_cache, self.remote_readonly, self.remote_options)
        return Cache(self.cache_dir, remote)


@dataclass
class Project:
    """A loaded recipe with its graph and everything needed to resolve it."""

    recipe: Recipe
    graph: Graph
    cache: Cache
    resolver: Resolver
    lock: dict
    selected: list[str] | None = None  # the targets asked for; None: all
    runner: object = None  # a DaskRunner when steps run on a cluster

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
    remote: dict | None = None  # the remote cache's URL (no credentials) and traffic

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
        data = {"recipe": self.recipe, "steps": self.counts(),
                "step_list": [s.to_dict() for s in self.steps], "targets": self.targets,
                "seconds": round(self.seconds, 3)}
        if self.remote is not None:
            data["remote_cache"] = self.remote
        return data


def open_project(recipe_path: str | Path, settings: Settings,
                 targets: list[str] | None = None, runner=None) -> Project:
    """`runner`: a DaskRunner (distributed.py) when steps run on a cluster; the
    cluster's GPU then decides what TensorRT compiles are keyed by, or deferred for."""
    cache = settings.open_cache()
    recipe = load_recipe(recipe_path, memo=RecipeMemo(cache))
    if targets:
        unknown = [t for t in targets if t not in recipe.targets]
        if unknown:
            raise UsageError(f"{recipe_path}: no target named {', '.join(map(repr, unknown))} "
                             f"(targets: {', '.join(recipe.targets)})")
    if settings.shard:
        targets = shard_targets(list(targets or recipe.targets), *settings.shard)
    cache.ensure()
    lock = read_lock(recipe.lock_path)
    project = Project(recipe, Graph(), cache, None, lock, targets, runner)
    _compile(project, {})
    # Fallback ladders resume where the cache says their rungs already failed.
    while moves := _next_rungs(project):
        _compile(project, moves)
    return project


def shard_targets(targets: list[str], index: int, count: int) -> list[str]:
    """The targets shard `index` (1-based) of `count` builds: every count-th target in
    recipe order, so each runner's share is the same on every run."""
    return targets[index - 1::count]


def _compile(project: Project, moves: dict[str, int]) -> None:
    """(Re)build the step graph, with ladders at their current rungs plus `moves`."""
    gpu_host = project.runner.gpu_host if project.runner is not None else None
    graph = compile_recipe(project.recipe, {**project.graph.rungs, **moves}, gpu_host)
    if project.selected is not None:
        graph = graph.subgraph(project.selected)
    stat = project.resolver.stat if project.resolver else project.cache.stat_cache()
    project.graph = graph
    project.resolver = Resolver(graph, project.cache, stat, previous_steps(project.lock))


def _next_rungs(project: Project) -> dict[str, int]:
    """Ladder targets whose current rung has a rejected verdict, and a rung below it."""
    moves = {}
    for target, rung in project.graph.rungs.items():
        gate = gate_of(project.graph, target)
        entry = project.resolver.entry_of(gate) if gate else None
        if entry is not None and rejected(entry) and \
                rung + 1 < len(project.recipe.targets[target].fallback):
            moves[target] = rung + 1
    return moves


def plan(project: Project) -> list[StepState]:
    return [project.resolver.state(node) for node in project.graph.order()]


def deferred_targets(project: Project) -> dict[str, str]:
    """Targets whose bundle will leave a build to the device, and why, as `build` will
    report them: the cache's word for steps that have run, the graph's for the rest."""
    found = {}
    for target, chain in project.graph.target_chains.items():
        reason = "; ".join(dict.fromkeys(_deferred(project, chain).values()))
        if reason or target in project.graph.deferred:
            found[target] = reason or project.graph.deferred[target]
    return found


def build(project: Project, settings: Settings, console: Console) -> BuildReport:
    """Run what is stale. A ladder whose rung misses its budget steps down a rung and
    the build goes on, until every ladder holds its budget or runs out of rungs."""
    from edgebuild.executor import Executor, Outcome, stop

    started = time.monotonic()
    executor = Executor(project.cache, project.resolver, console, project.runner)
    jobs = settings.jobs or (project.runner.threads if project.runner is not None else 1)
    failures: dict[str, str] = {}
    while True:
        states = plan(project)
        # A rejected verdict is cached, but must still fail its target in this run.
        to_run = [s.node for s in states
                  if not s.cached or executor.rejects(s.node, s.entry)]
        if to_run:
            from edgebuild import engine  # doit is imported only when there is work

            console.say(f"{project.recipe.name}: {len(to_run)} of {len(states)} steps to run")
            try:
                failures.update(engine.run(to_run, executor.is_built, executor.build, jobs))
            except KeyboardInterrupt:
                stop()  # no queued step starts; the steps in flight unwind first
                raise
        moves = _next_rungs(project)
        if not moves:
            break
        for target, rung in moves.items():
            gate = gate_of(project.graph, target)
            outcome = executor.outcomes[gate]
            # The rejection only moves the ladder; the step itself did its job.
            executor.outcomes[gate] = Outcome("cached" if outcome.cached else "executed")
            failures.pop(gate, None)
            ladder = project.recipe.targets[target].fallback
            console.say(f"  {target}: rung {ladder[rung - 1][0]} missed its budget; "
                        f"stepping down to {ladder[rung][0]}")
        _compile(project, moves)
        executor.resolver = project.resolver
    steps = [_step_report(s, executor, failures, project) for s in states]
    targets = _finish_targets(project, settings, steps)
    return BuildReport(project.recipe.name, steps, targets, time.monotonic() - started,
                       _remote_summary(project.cache))


def _remote_summary(cache: Cache) -> dict | None:
    remote = cache.remote
    if remote is None:
        return None
    summary = {"url": remote.display_url, "readonly": remote.readonly,
               **remote.traffic.to_dict()}
    if remote.failure:
        summary["failure"] = remote.failure
    return summary


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
        ladder = _ladder(project, target)
        if any(s.status in ("failed", "skipped") for s in chain_steps) or bundle_entry is None:
            failed = [s.label for s in chain_steps if s.status == "failed"]
            targets[target] = {"status": "failed", "failed_steps": failed, "bundle": None}
            gate = gate_of(project.graph, target)
            verdict = project.resolver.entry_of(gate) if gate else None
            if verdict is not None and rejected(verdict):
                targets[target]["misses"] = verdict.meta["verdict"]["misses"]
            if ladder:
                targets[target]["fallback"] = ladder
            continue
        deferred = _deferred(project, chain)
        if settings.require_engines and "compile.tensorrt" in deferred:
            targets[target] = {"status": "failed", "failed_steps": ["compile.tensorrt"],
                               "bundle": None, "message": f"no engine: "
                               f"{deferred['compile.tensorrt']} (--require-engines)"}
            continue
        dest = project.bundle_dir(settings, target)
        try:
            publish(project.cache, bundle_entry.outputs["bundle"], dest,
                    bundle_entry.outputs.get("archive"))
        except CorruptBlob as exc:
            targets[target] = {"status": "failed", "failed_steps": ["bundle"], "bundle": None,
                               "message": str(exc)}
            continue
        targets[target] = {"status": "deferred" if deferred else "ok", "bundle": str(dest)}
        if deferred:
            targets[target]["deferred"] = "; ".join(dict.fromkeys(deferred.values()))
        if "archive" in bundle_entry.outputs:
            targets[target]["archive"] = {"path": str(archive_path(dest)),
                                          "bytes": bundle_entry.outputs["archive"].size}
        if ladder:
            targets[target]["fallback"] = ladder
        slower = _measured(project, target).get("slower")
        if slower:
            targets[target]["slower"] = slower
        records[target] = _lock_record(project, target, chain, ladder)
    if records:
        recipe = project.recipe
        source = {"path": _as_written(recipe),
                  "format": recipe.source.format,
                  "digest": project.resolver.stat.digest(recipe.source.path)}
        write_lock(recipe.lock_path, recipe.name, source, list(recipe.targets), records,
                   project.lock)
        project.cache.add_root(recipe.lock_path)
    return targets


def _as_written(recipe: Recipe) -> str:
    """The source's path for the lock file: as the recipe writes it, relative to the
    recipe, so it is the same in any checkout (resolving it would follow links, and
    ../shared may be one); an absolute path becomes relative to the recipe."""
    written = PurePath(recipe.source.written)
    if written.is_absolute() or not recipe.source.written:
        return PurePath(os.path.relpath(recipe.source.path, recipe.folder)).as_posix()
    return written.as_posix()


def _measured(project: Project, target: str) -> dict:
    """What validation measured of a target's artifact (its report.json); {} if none."""
    import json

    gate = gate_of(project.graph, target)
    entry = project.resolver.entry_of(gate) if gate else None
    if entry is None:
        return {}
    return json.loads(project.cache.read_blob(entry.outputs["report"].digest))


def _deferred(project: Project, chain: list[str]) -> dict[str, str]:
    """Steps of a chain that left their work to the device: impl name -> why."""
    found = {}
    for node_id in chain:
        entry = project.resolver.entry_of(node_id)
        if entry is not None and entry.status == "deferred":
            found[project.graph.nodes[node_id].impl_name] = entry.meta.get("deferred", "")
    return found


def _ladder(project: Project, target: str) -> dict | None:
    """A fallback ladder's outcome so far: each rung tried, its misses, the choice."""
    if target not in project.graph.rungs:
        return None
    rungs = [name for name, _ in project.recipe.targets[target].fallback]
    verdicts = []
    for node_id in project.graph.target_chains[target]:
        if project.graph.nodes[node_id].kind == "validate":
            entry = project.resolver.entry_of(node_id)
            verdicts.append(entry.meta["verdict"] if entry else None)
    return ladder_outcome(rungs, verdicts)


def _lock_record(project: Project, target: str, chain: list[str],
                 ladder: dict | None = None) -> dict:
    steps = []
    for node_id in chain:
        entry = project.resolver.entry_of(node_id)
        volatile = project.graph.nodes[node_id].impl.volatile
        outputs = {name: out.digest for name, out in sorted(entry.outputs.items())
                   if name not in volatile}
        steps.append(step_record(entry.key, entry.doc, outputs, entry.status,
                                 entry.meta.get("facts")))
    device = project.recipe.targets[target].device.name
    record = {"device": device, "steps": steps}
    if ladder:
        record["fallback"] = {"chosen": ladder["chosen"], "reason": ladder["reason"]}
    return record


def explain(project: Project, step_ref: str) -> tuple[StepState, dict | None, list[Reason]]:
    """Compare a step's key document now with the last build recorded in the lock."""
    target, _, kind = step_ref.partition(":")
    chain = project.graph.target_chains.get(target)
    if chain is None:
        how = ("" if kind else "; name a step as TARGET:KIND, e.g. "
               f"{next(iter(project.recipe.targets))}:convert")
        raise UsageError(f"{project.recipe.name}: no target named '{target}' (targets: "
                         f"{', '.join(project.recipe.targets)}){how}")
    if not kind:
        kinds = ", ".join(dict.fromkeys(project.graph.nodes[i].kind for i in chain))
        raise UsageError(f"name a step as TARGET:KIND, e.g. {target}:convert (the steps of "
                         f"'{target}': {kinds})")
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
    if not recipe_paths and not wipe_cache:  # doing nothing, silently, would surprise
        raise UsageError("clean: name the recipes whose bundles to remove (edgebuild clean "
                         "RECIPE...), or pass --cache to delete the whole cache")
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


def report(project: Project, settings: Settings, built: BuildReport | None = None) -> dict:
    """Write report.json, report.md and the Pareto plot beside the bundles, from what
    the cache holds (so `edgebuild report` needs no build). Skips rendering when the
    report has not changed, so no-op builds stay fast."""
    import json

    doc = report_doc(project, built)
    folder = settings.dist_dir / project.recipe.name
    paths = {"json": folder / "report.json", "md": folder / "report.md",
             "png": folder / "pareto.png"}
    try:
        unchanged = json.loads(paths["json"].read_text()) == doc and \
            all(p.exists() for p in paths.values())
    except (OSError, ValueError):
        unchanged = False
    if not unchanged:
        # matplotlib keeps its font cache and config under $HOME unless told otherwise;
        # edgebuild writes only under the cache and dist.
        os.environ.setdefault("MPLCONFIGDIR", str(project.cache.state / "matplotlib"))
        from edgebuild.report import render

        folder.mkdir(parents=True, exist_ok=True)
        paths = render(doc, folder)
    return {"doc": doc, "paths": {k: str(v) for k, v in paths.items()}}


def report_doc(project: Project, built: BuildReport | None = None) -> dict:
    """One row per target: what it is, what validation measured, and whether it ships."""
    recipe, graph, resolver = project.recipe, project.graph, project.resolver
    metric_key = PRIMARY_METRIC[recipe.task]
    rows, host, baseline, float_latency = [], None, None, None
    for target, chain in graph.target_chains.items():
        bundle = graph.nodes[chain[-1]]
        model_entry = resolver.entry_of(bundle.deps["model"][0])
        size = (model_entry.meta.get("facts", {}).get("size") or {}) if model_entry else {}
        row = {"target": target, "device": recipe.targets[target].device.name,
               "format": recipe.targets[target].format,
               "precision": bundle.params["precision"], "status": _target_status(
                   project, target, built), "bytes": size.get("bytes"),
               "gzip_bytes": size.get("gzip_bytes"), "metrics": None, "drop": None,
               "fidelity": None, "latency": None, "speedup": None, "slower": None,
               "budget": {"status": "none", "misses": []}, "rung": None}
        measured = _measured(project, target)
        if measured:
            metric_key = measured["metric"]
            baseline = baseline or measured["baseline"]
            float_latency = float_latency or measured["float_latency"]
            host = host or measured["latency"]["host_cpu"]
            fidelity = measured["fidelity"]
            snrs = [f["snr_db"] for f in fidelity if f["snr_db"] is not None]
            agreement = measured["agreement"] or {}
            row.update(
                metrics=measured["metrics"], drop=measured["drop"],
                fidelity={"cosine": min(f["cosine"] for f in fidelity),
                          "snr_db": min(snrs) if snrs else None,
                          "agreement": agreement.get("value"),
                          "agreement_label": agreement.get("label")},
                latency={k: measured["latency"][k] for k in ("median_ms", "p90_ms", "runs",
                                                             "threads")},
                speedup=measured["speedup"], slower=measured.get("slower"),
                budget={"status": "pass" if measured["passed"] else "fail",
                        "misses": measured["misses"]})
        ladder = _ladder(project, target)
        if ladder:
            row["rung"] = {"chosen": ladder["chosen"], "tried": ladder["tried"]}
        rows.append(row)
    return {"recipe": recipe.name, "task": recipe.task, "metric": metric_key,
            "metric_label": METRIC_LABELS[metric_key], "metric_labels": METRIC_LABELS,
            "host": {"cpu": host, "threads": 1, "note": "host latency, not device latency"},
            "baseline": {"metrics": baseline, "latency": float_latency and {
                k: float_latency[k] for k in ("median_ms", "p90_ms")}},
            "targets": rows}


def _target_status(project: Project, target: str, built: BuildReport | None) -> str:
    if built is not None and target in built.targets:
        return built.targets[target]["status"]
    chain = project.graph.target_chains[target]
    gate = gate_of(project.graph, target)
    verdict = project.resolver.entry_of(gate) if gate else None
    if verdict is not None and rejected(verdict):
        return "failed"
    bundle = project.resolver.entry_of(chain[-1])
    if bundle is None:
        return "pending"
    deferred = any((e := project.resolver.entry_of(i)) and e.status == "deferred" for i in chain)
    return "deferred" if deferred else "ok"
