"""Build: run what is stale, step ladders down where a rung misses its budget, then
publish the bundles and record them in the lock file (finish.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from edgebuild.cache import Cache
from edgebuild.console import Console
from edgebuild.plan import Reason, StepState, gate_of
from edgebuild.repo.finish import finish_targets
from edgebuild.repo.ladder import next_rungs, rung_names
from edgebuild.repo.project import Project, replan
from edgebuild.repo.settings import Settings


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


def plan(project: Project) -> list[StepState]:
    if project.cache.remote is not None:
        _look_up_in_waves(project)
    return [project.planner.state(node) for node in project.graph.order()]


def _look_up_in_waves(project: Project) -> None:
    """Ask the remote cache for many entries at once (a fresh CI runner otherwise pays
    one round trip per step, in series): after the keys the lock file names (asked for
    by open_project), as a step's key needs its inputs' entries, a graph level at a
    time, each level's in parallel."""
    from edgebuild.remote import in_parallel

    graph, planner, cache = project.graph, project.planner, project.cache
    depth: dict[str, int] = {}
    for node in graph.order():  # upstream first
        depth[node.id] = 1 + max((depth[u] for u in (*node.edges(), *node.chain)), default=-1)
    waves: dict[int, list[str]] = {}
    for node_id, level in depth.items():
        waves.setdefault(level, []).append(node_id)
    for node in graph.order():  # hashing the inputs needs no answer: do it meanwhile
        for path in node.files.values():
            planner.stat.digest(path)
    cache.wait_for_read_through()
    for level in sorted(waves):
        in_parallel(planner.entry_of, waves[level])


def build(project: Project, settings: Settings, console: Console) -> BuildReport:
    """Run what is stale. A ladder whose rung misses its budget steps down a rung and
    the build goes on, until every ladder holds its budget or runs out of rungs."""
    from edgebuild.executor import Executor
    from edgebuild.pool import default_jobs

    started = time.monotonic()
    executor = Executor(project.cache, project.planner, console, project.runner)
    jobs = settings.jobs or (project.runner.threads if project.runner is not None
                             else default_jobs())
    failures: dict[str, str] = {}
    while True:
        states = plan(project)
        _run_stale(project, executor, states, jobs, failures, console)
        moves = next_rungs(project)
        if not moves:
            break
        for target, rung in moves.items():
            gate = gate_of(project.graph, target)
            executor.step_down_from(gate)
            failures.pop(gate, None)
            missed, below = rung_names(project, target, rung)
            console.say(f"  {target}: rung {missed} missed its budget; stepping down to {below}")
        replan(project, moves)
        executor.replanned(project.planner)
    steps = [_step_report(s, executor, failures, project) for s in states]
    targets = finish_targets(project, settings, steps)
    return BuildReport(project.recipe.name, steps, targets, time.monotonic() - started,
                       _remote_summary(project.cache))


def _run_stale(project: Project, executor, states: list[StepState], jobs: int,
               failures: dict[str, str], console: Console) -> None:
    from edgebuild.executor import stop

    # A rejected verdict is cached, but must still fail its target in this run.
    to_run = [s.node for s in states if not s.cached or executor.rejects(s.node, s.entry)]
    if not to_run:
        return
    from edgebuild import engine  # doit is imported only when there is work

    console.say(f"{project.recipe.name}: {len(to_run)} of {len(states)} steps to run")
    console.steps_begin(len(to_run))
    try:
        failures.update(engine.run(to_run, executor.is_built, executor.build, jobs))
    except KeyboardInterrupt:
        stop()  # no queued step starts; the steps in flight unwind first
        raise
    finally:
        console.steps_end()


def _remote_summary(cache: Cache) -> dict | None:
    remote = cache.remote
    if remote is None:
        return None
    summary = {"url": remote.display_url, "readonly": remote.readonly,
               **remote.traffic.to_dict()}
    if remote.failure:
        summary["failure"] = remote.failure
    return summary


def _step_report(state: StepState, executor, failures: dict[str, str],
                 project: Project) -> StepReport:
    node = state.node
    outcome = executor.outcomes.get(node.id)
    entry = project.planner.entry_of(node.id)
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
