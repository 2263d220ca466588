"""Looking without building: the plan, why a step is stale, the graph, the devices."""

from __future__ import annotations

from edgebuild.errors import UsageError
from edgebuild.plan import Reason, StepState, diff_docs, rejected
from edgebuild.repo.build import plan
from edgebuild.repo.finish import deferred_steps
from edgebuild.repo.project import Project


def plan_doc(project: Project) -> dict:
    """Every step, cached or to run and why; targets whose build the device finishes;
    fallback ladders' rungs; cached budget misses."""
    states = plan(project)
    steps = []
    for s in states:
        step = {"key": s.key, "kind": s.node.kind, "label": s.node.label,
                "targets": s.node.targets, "status": "cached" if s.cached else "run",
                "reasons": [r.to_dict() for r in s.reasons]}
        if s.cached and s.node.id in project.graph.gates and rejected(s.entry):
            step["misses"] = s.entry.meta["verdict"]["misses"]
        steps.append(step)
    ladders = {}
    for target, rung in project.graph.rungs.items():
        ladder = project.recipe.targets[target].fallback
        ladders[target] = {"rung": ladder[rung][0], "index": rung, "of": len(ladder)}
    return {"recipe": project.recipe.name, "warnings": list(project.recipe.warnings),
            "deferred": deferred_targets(project), "step_list": steps, "ladders": ladders}


def deferred_targets(project: Project) -> dict[str, str]:
    """Targets whose bundle will leave a build to the device, and why, as `build` will
    report them: the cache's word for steps that have run, the graph's for the rest."""
    found = {}
    for target, chain in project.graph.target_chains.items():
        reason = "; ".join(dict.fromkeys(deferred_steps(project, chain).values()))
        if reason or target in project.graph.deferred:
            found[target] = reason or project.graph.deferred[target]
    return found


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
    state = project.planner.state(matches[0])
    previous = project.planner.previous.get((target, matches[0].impl_name))
    if previous is None or state.doc is None:
        return state, previous, state.reasons
    return state, previous, diff_docs(previous["doc"], state.doc)


def graph_text(project: Project, fmt: str) -> str:
    """The step graph as Graphviz dot, Mermaid or JSON."""
    import json

    from edgebuild.graph import to_dot, to_json, to_mermaid

    if fmt == "json":
        return json.dumps(to_json(project.graph), indent=2) + "\n"
    return (to_dot if fmt == "dot" else to_mermaid)(project.graph)


def devices() -> dict[str, dict]:
    """The device catalog's profiles, by name."""
    from edgebuild.catalog import load_catalog

    return load_catalog()
