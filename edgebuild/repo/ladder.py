"""Fallback ladders: a target whose rung misses its budget steps down to the next."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgebuild.budget import ladder_outcome
from edgebuild.plan import gate_of, rejected

if TYPE_CHECKING:
    from edgebuild.repo.project import Project


def next_rungs(project: Project) -> dict[str, int]:
    """Ladder targets whose current rung has a rejected verdict, and a rung below it."""
    moves = {}
    for target, rung in project.graph.rungs.items():
        gate = gate_of(project.graph, target)
        entry = project.planner.entry_of(gate) if gate else None
        if entry is not None and rejected(entry) and \
                rung + 1 < len(project.recipe.targets[target].fallback):
            moves[target] = rung + 1
    return moves


def ladder_of(project: Project, target: str) -> dict | None:
    """A fallback ladder's outcome so far: each rung tried, its misses, the choice."""
    if target not in project.graph.rungs:
        return None
    rungs = [name for name, _ in project.recipe.targets[target].fallback]
    verdicts = []
    for node_id in project.graph.target_chains[target]:
        if project.graph.nodes[node_id].kind == "validate":
            entry = project.planner.entry_of(node_id)
            verdicts.append(entry.meta["verdict"] if entry else None)
    return ladder_outcome(rungs, verdicts)


def rung_names(project: Project, target: str, rung: int) -> tuple[str, str]:
    """The names of the rung a ladder leaves and of the one it steps down to."""
    ladder = project.recipe.targets[target].fallback
    return ladder[rung - 1][0], ladder[rung][0]
