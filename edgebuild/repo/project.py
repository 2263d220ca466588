"""A project: a loaded recipe, its step graph and the plan that resolves it against
the cache, re-planned as fallback ladders step down."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgebuild.cache import Cache
from edgebuild.chain import build_graph
from edgebuild.errors import UsageError
from edgebuild.graph import Graph
from edgebuild.lockfile import previous_steps, read_lock
from edgebuild.plan import Planner
from edgebuild.recipe import Recipe, load_recipe
from edgebuild.repo.settings import Settings


@dataclass
class Project:
    """A loaded recipe with its graph and everything needed to plan it."""

    recipe: Recipe
    graph: Graph
    cache: Cache
    planner: Planner
    lock: dict
    selected: list[str] | None = None  # the targets asked for; None: all
    runner: object = None  # a DaskRunner when steps run on a cluster

    def bundle_dir(self, settings: Settings, target: str) -> Path:
        return settings.dist_dir / self.recipe.name / target


def open_project(recipe_path: str | Path, settings: Settings,
                 targets: list[str] | None = None, runner=None) -> Project:
    """`runner`: a DaskRunner (distributed.py) when steps run on a cluster; the
    cluster's GPU then decides what TensorRT compiles are keyed by, or deferred for."""
    from edgebuild.repo.ladder import next_rungs

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
    if cache.remote is not None:
        _ask_remote_early(cache, lock)
    project = Project(recipe, Graph(), cache, None, lock, targets, runner)
    replan(project, {})
    # Fallback ladders resume where the cache says their rungs already failed.
    while moves := next_rungs(project):
        replan(project, moves)
    return project


def _ask_remote_early(cache: Cache, lock: dict) -> None:
    """The lock file names the keys of the last build: those not here are asked for
    while the graph is planned. When the lock is up to date, as in CI, every lookup
    after that is a local hit."""
    locked = {step["key"] for step in previous_steps(lock).values() if step.get("key")}
    cache.read_through_in_background(sorted(key for key in locked if not cache.is_local(key)))


def shard_targets(targets: list[str], index: int, count: int) -> list[str]:
    """The targets shard `index` (1-based) of `count` builds: every count-th target in
    recipe order, so each runner's share is the same on every run."""
    return targets[index - 1::count]


def replan(project: Project, moves: dict[str, int]) -> None:
    """(Re)build the step graph, with ladders at their current rungs plus `moves`."""
    gpu_host = project.runner.gpu_host if project.runner is not None else None
    graph = build_graph(project.recipe, {**project.graph.rungs, **moves}, gpu_host)
    if project.selected is not None:
        graph = graph.subgraph(project.selected)
    stat = project.planner.stat if project.planner else project.cache.stat_cache()
    project.graph = graph
    project.planner = Planner(graph, project.cache, stat, previous_steps(project.lock))


@contextmanager
def cluster(settings: Settings) -> Iterator[object]:
    """The Dask cluster steps run on, if one is configured (None otherwise). Plans
    connect to it too: its GPU decides the keys of TensorRT steps."""
    if not settings.scheduler:
        yield None
        return
    from edgebuild.distributed import connect

    runner = connect(settings.scheduler, settings.remote_cache, settings.remote_readonly,
                     settings.remote_options)
    try:
        yield runner
    finally:
        runner.close()


class RecipeMemo:
    """Digests of recipes that already passed schema validation (see recipe.load)."""

    def __init__(self, cache: Cache):
        self.folder = cache.state / "valid"

    def seen(self, digest: str) -> bool:
        return (self.folder / digest).exists()

    def add(self, digest: str) -> None:
        if not self.seen(digest):
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / digest).touch()
