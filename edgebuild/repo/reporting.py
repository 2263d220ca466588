"""The build report: one row per target (what it is, what validation measured,
whether it ships), written as report.json, report.md and a Pareto plot beside the
bundles, from what the cache holds, so `edgebuild report` needs no build."""

from __future__ import annotations

import json
import os

from edgebuild.metrics import METRIC_LABELS, PRIMARY_METRIC
from edgebuild.plan import gate_of, key_of, rejected
from edgebuild.repo.build import BuildReport
from edgebuild.repo.finish import artifact_size, fidelity_summary, measured
from edgebuild.repo.ladder import ladder_of
from edgebuild.repo.project import Project
from edgebuild.repo.settings import Settings


def report(project: Project, settings: Settings, built: BuildReport | None = None) -> dict:
    """Write the report files; skip rendering when the report has not changed, so
    no-op builds stay fast."""
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
        from edgebuild.report import render

        folder.mkdir(parents=True, exist_ok=True)
        paths = render(doc, folder, _plot(project, doc))
    return {"doc": doc, "paths": {k: str(v) for k, v in paths.items()}}


PLOT_VERSION = 2  # bump when report_plot draws differently


def _plot(project: Project, doc: dict) -> bytes:
    """The Pareto plot's PNG, drawn once per report content and kept in the cache (and
    the remote cache): a runner that fetched every step need not start matplotlib,
    which takes longer than the rest of such a build."""
    cache = project.cache
    from edgebuild.toolchains.versions import versions

    # The doc names PLOT_VERSION; its provenance is not drawn.
    drawn = {k: v for k, v in doc.items() if k != "provenance"}
    key = key_of({"toolchain": versions(("matplotlib",)), "doc": drawn})
    entry = cache.entry(key)
    if entry is not None and "png" in entry.outputs:
        try:
            return cache.read_blob(entry.outputs["png"].digest)
        except OSError:  # gone or corrupt (CorruptBlob): draw it again
            pass
    # matplotlib keeps its font cache and config under $HOME unless told otherwise;
    # edgebuild writes only under the cache and dist.
    os.environ.setdefault("MPLCONFIGDIR", str(cache.state / "matplotlib"))
    from edgebuild.report_plot import png

    data = png(doc)
    cache.commit(key, "report", {"plot": PLOT_VERSION}, {"png": cache.put_bytes(
        data, "pareto.png")}, {"status": "executed"})
    return data


def report_doc(project: Project, built: BuildReport | None = None) -> dict:
    """One row per target: what it is, what validation measured, and whether it ships."""
    recipe = project.recipe
    metric_key = PRIMARY_METRIC[recipe.task]
    rows, host, baseline, float_latency = [], None, None, None
    for target in project.graph.target_chains:
        row, found = _row(project, target, built)
        if found:
            metric_key = found["metric"]
            baseline = baseline or found["baseline"]
            float_latency = float_latency or found["float_latency"]
            host = host or found["latency"]["host_cpu"]
        rows.append(row)
    return {"recipe": recipe.name, "task": recipe.task, "plot_version": PLOT_VERSION,
            "provenance": _provenance(project), "metric": metric_key,
            "metric_label": METRIC_LABELS[metric_key], "metric_labels": METRIC_LABELS,
            "host": {"cpu": host, "threads": 1, "note": "host latency, not device latency"},
            "baseline": {"metrics": baseline, "latency": float_latency and {
                k: float_latency[k] for k in ("median_ms", "p90_ms")}},
            "targets": rows}


def _provenance(project: Project) -> dict:
    """What made these figures: edgebuild's and the toolchains' versions (as the steps
    recorded them in their keys) and the commit the recipe was at, if in git."""
    from edgebuild import __version__

    toolchain: dict[str, str] = {}
    for chain in project.graph.target_chains.values():
        for node_id in chain:
            entry = project.planner.entry_of(node_id)
            if entry is not None:
                toolchain.update(entry.doc.get("toolchain") or {})
    return {"edgebuild": __version__, "toolchain": dict(sorted(toolchain.items())),
            "recipe_commit": git_commit(project.recipe.path)}


def git_commit(path) -> str | None:
    """HEAD's commit of the git repository holding `path`, read from .git itself
    (running git would cost every no-op build a process); None outside git."""
    from pathlib import Path

    for folder in Path(path).resolve().parents:
        dot_git = folder / ".git"
        if dot_git.is_file():  # a worktree or submodule: "gitdir: <path>"
            dot_git = (folder / dot_git.read_text().split(":", 1)[1].strip()).resolve()
        if not dot_git.is_dir():
            continue
        try:
            head = (dot_git / "HEAD").read_text().strip()
            if not head.startswith("ref: "):
                return head
            ref = head[5:]
            common = dot_git / "commondir"
            base = (dot_git / common.read_text().strip()).resolve() if common.exists() \
                else dot_git
            for root in (dot_git, base):
                if (root / ref).is_file():
                    return (root / ref).read_text().strip()
            for line in (base / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0]
        except OSError:
            return None
        return None
    return None


def _row(project: Project, target: str, built: BuildReport | None) -> tuple[dict, dict]:
    """A target's row, and what its validation measured ({} if nothing yet)."""
    graph, planner = project.graph, project.planner
    bundle = graph.nodes[graph.target_chains[target][-1]]
    size = artifact_size(project, target)
    bundle_entry = planner.entry_of(bundle.id)
    archive = bundle_entry.outputs.get("archive") if bundle_entry else None
    spec = project.recipe.targets[target]
    row = {"target": target, "device": spec.device.name, "format": spec.format,
           "precision": bundle.params["precision"],
           "chain": chain_text(spec, bundle.params["precision"]),
           "status": target_status(project, target, built), "bytes": size.get("bytes"),
           "gzip_bytes": size.get("gzip_bytes"),
           "download_bytes": archive.size if archive else None, "metrics": None, "drop": None,
           "fidelity": None, "latency": None, "speedup": None, "slower": None,
           "budget": {"status": "none", "misses": []}, "rung": None}
    found = measured(project, target)
    if found:
        row.update(
            metrics=found["metrics"], drop=found["drop"], fidelity=fidelity_summary(found),
            latency={k: found["latency"][k] for k in ("median_ms", "p90_ms", "runs",
                                                      "threads")},
            speedup=found["speedup"], slower=found.get("slower"),
            budget={"status": "pass" if found["passed"] else "fail",
                    "misses": found["misses"]})
    ladder = ladder_of(project, target)
    if ladder:
        row["rung"] = {"chosen": ladder["chosen"], "tried": ladder["tried"]}
    return row, found


COMPILERS = {"tensorrt": "TensorRT engine", "edgetpu": "Edge TPU"}


def chain_text(target, precision: str) -> str:
    """What a target's artifact went through, e.g. `prune 50% → 16 clusters → TFLite
    int8` (the precision of the rung a ladder chose)."""
    steps, parts = target.steps, []
    prune = steps.get("prune")
    if prune is not None:
        parts.append(f"prune {prune.structure}" if prune.structure
                     else f"prune {prune.sparsity:.0%}")
    if steps.get("cluster") is not None:
        parts.append(f"{steps['cluster'].clusters} clusters")
    parts.append(f"{'TFLite' if target.format == 'tflite' else 'ONNX'} {precision}")
    compile_ = steps.get("compile")
    if compile_ is not None:
        parts.append(COMPILERS.get(compile_.compiler, compile_.compiler))
    return " → ".join(parts)


def target_status(project: Project, target: str, built: BuildReport | None) -> str:
    if built is not None and target in built.targets:
        return built.targets[target]["status"]
    chain = project.graph.target_chains[target]
    gate = gate_of(project.graph, target)
    verdict = project.planner.entry_of(gate) if gate else None
    if verdict is not None and rejected(verdict):
        return "failed"
    bundle = project.planner.entry_of(chain[-1])
    if bundle is None:
        return "pending"
    deferred = any((e := project.planner.entry_of(i)) and e.status == "deferred"
                   for i in chain)
    return "deferred" if deferred else "ok"
