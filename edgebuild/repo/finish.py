"""The end of a build: publish each finished target's bundle to dist/, say how each
target did, and record what was built in the lock file beside the recipe."""

from __future__ import annotations

import json
import os
from pathlib import PurePath
from typing import TYPE_CHECKING

from edgebuild.cache import CorruptBlob
from edgebuild.lockfile import step_record, write_lock
from edgebuild.plan import gate_of, rejected
from edgebuild.recipe import Recipe
from edgebuild.repo.ladder import ladder_of
from edgebuild.repo.settings import Settings

if TYPE_CHECKING:
    from edgebuild.repo.build import StepReport
    from edgebuild.repo.project import Project


def finish_targets(project: Project, settings: Settings, steps: list[StepReport]) -> dict:
    """Publish finished bundles, record them in the lock file, say how each target did."""
    by_id = dict(zip((n.id for n in project.graph.order()), steps, strict=True))
    targets, records = {}, {}
    _fetch_unpublished(project, settings)
    for target, chain in project.graph.target_chains.items():
        chain_steps = [by_id[node_id] for node_id in chain]
        if any(s.status in ("failed", "skipped") for s in chain_steps) or \
                project.planner.entry_of(chain[-1]) is None:
            targets[target] = _failed(project, target, chain_steps)
            continue
        targets[target] = _published(project, settings, target, chain)
        if targets[target]["status"] != "failed":
            records[target] = _lock_record(project, target, chain, ladder_of(project, target))
    if records:
        recipe = project.recipe
        source = {"path": _as_written(recipe), "format": recipe.source.format,
                  "digest": project.planner.stat.digest(recipe.source.path)}
        write_lock(recipe.lock_path, recipe.name, source, list(recipe.targets), records,
                   project.lock)
        project.cache.add_root(recipe.lock_path)
    return targets


def _fetch_unpublished(project: Project, settings: Settings) -> None:
    """Bundles that dist/ lacks and only the remote cache holds: download them all at
    once rather than a file at a time while publishing."""
    from edgebuild.publish import is_published

    wanted = []
    for target, chain in project.graph.target_chains.items():
        entry = project.planner.entry_of(chain[-1])
        if entry is None or "bundle" not in entry.outputs:
            continue
        dest = project.bundle_dir(settings, target)
        try:
            published = dest.is_dir() and is_published(project.cache, entry.outputs["bundle"],
                                                        dest)
        except OSError:
            published = False
        if not published:
            wanted += [o for name, o in entry.outputs.items() if name in ("bundle", "archive")]
    project.cache.prefetch(wanted)


def _failed(project: Project, target: str, chain_steps: list[StepReport]) -> dict:
    failed = [s.label for s in chain_steps if s.status == "failed"]
    result = {"status": "failed", "failed_steps": failed, "bundle": None}
    gate = gate_of(project.graph, target)
    verdict = project.planner.entry_of(gate) if gate else None
    if verdict is not None and rejected(verdict):
        result["misses"] = verdict.meta["verdict"]["misses"]
    ladder = ladder_of(project, target)
    if ladder:
        result["fallback"] = ladder
    return result


def _published(project: Project, settings: Settings, target: str, chain: list[str]) -> dict:
    from edgebuild.publish import archive_path, publish

    deferred = deferred_steps(project, chain)
    if settings.require_engines and "compile.tensorrt" in deferred:
        return {"status": "failed", "failed_steps": ["compile.tensorrt"], "bundle": None,
                "message": f"no engine: {deferred['compile.tensorrt']} (--require-engines)"}
    bundle_entry = project.planner.entry_of(chain[-1])
    dest = project.bundle_dir(settings, target)
    try:
        publish(project.cache, bundle_entry.outputs["bundle"], dest,
                bundle_entry.outputs.get("archive"))
    except CorruptBlob as exc:
        return {"status": "failed", "failed_steps": ["bundle"], "bundle": None,
                "message": str(exc)}
    result = {"status": "deferred" if deferred else "ok", "bundle": str(dest)}
    if deferred:
        result["deferred"] = "; ".join(dict.fromkeys(deferred.values()))
    if "archive" in bundle_entry.outputs:
        result["archive"] = {"path": str(archive_path(dest)),
                             "bytes": bundle_entry.outputs["archive"].size}
    ladder = ladder_of(project, target)
    if ladder:
        result["fallback"] = ladder
    slower = measured(project, target).get("slower")
    if slower:
        result["slower"] = slower
    return result


def _as_written(recipe: Recipe) -> str:
    """The source's path for the lock file: as the recipe writes it, relative to the
    recipe, so it is the same in any checkout (resolving it would follow links, and
    ../shared may be one); an absolute path becomes relative to the recipe."""
    written = PurePath(recipe.source.written)
    if written.is_absolute() or not recipe.source.written:
        return PurePath(os.path.relpath(recipe.source.path, recipe.folder)).as_posix()
    return written.as_posix()


def measured(project: Project, target: str) -> dict:
    """What validation measured of a target's artifact (its report.json); {} if none."""
    gate = gate_of(project.graph, target)
    entry = project.planner.entry_of(gate) if gate else None
    if entry is None:
        return {}
    return json.loads(project.cache.read_blob(entry.outputs["report"].digest))


def deferred_steps(project: Project, chain: list[str]) -> dict[str, str]:
    """Steps of a chain that left their work to the device: impl name -> why."""
    found = {}
    for node_id in chain:
        entry = project.planner.entry_of(node_id)
        if entry is not None and entry.status == "deferred":
            found[project.graph.nodes[node_id].impl_name] = entry.meta.get("deferred", "")
    return found


def _lock_record(project: Project, target: str, chain: list[str],
                 ladder: dict | None = None) -> dict:
    steps = []
    for node_id in chain:
        entry = project.planner.entry_of(node_id)
        volatile = project.graph.nodes[node_id].impl.volatile
        outputs = {name: out.digest for name, out in sorted(entry.outputs.items())
                   if name not in volatile}
        steps.append(step_record(entry.key, entry.doc, outputs, entry.status,
                                 entry.meta.get("facts")))
    device = project.recipe.targets[target].device.name
    record = {"device": device, "steps": steps}
    if ladder:
        record["fallback"] = {"chosen": ladder["chosen"], "reason": ladder["reason"]}
    shipped = shipped_with(project, target)
    if shipped:
        record["shipped"] = shipped
    return record


def shipped_with(project: Project, target: str) -> dict:
    """What the target shipped with, for `edgebuild diff`: the model's size and what
    validation measured against float, rounded to what reads as a difference (0.01
    points, 4 decimals) so that the lock stays byte-identical across machines. Host
    latency is left out: it differs from run to run, and the lock must not."""
    found = measured(project, target)
    shipped = {}
    size = artifact_size(project, target)
    if size:
        shipped["size"] = {k: size[k] for k in ("bytes", "gzip_bytes") if k in size}
    if found:
        fidelity = fidelity_summary(found)
        shipped.update(
            metrics={k: _rounded(v) for k, v in (found.get("metrics") or {}).items()
                     if v is not None},
            drop={k: _rounded(v) for k, v in (found.get("drop") or {}).items()
                  if v is not None},
            fidelity={k: _rounded(fidelity[k]) for k in ("cosine", "agreement")
                      if fidelity[k] is not None},
            verdict="pass" if found["passed"] else "fail")
    return shipped


def _rounded(value: float) -> float:
    return round(value, 4) + 0.0  # + 0.0: no -0.0 in the lock


def artifact_size(project: Project, target: str) -> dict:
    """The size facts (bytes, gzip_bytes) of the model a target's bundle holds."""
    bundle = project.graph.nodes[project.graph.target_chains[target][-1]]
    model = project.planner.entry_of(bundle.deps["model"][0])
    return (model.meta.get("facts", {}).get("size") if model else None) or {}


def fidelity_summary(found: dict) -> dict:
    """A validation report's fidelity in one line: the worst output's cosine and SNR,
    and the agreement with the float model's answers."""
    snrs = [f["snr_db"] for f in found["fidelity"] if f["snr_db"] is not None]
    agreement = found.get("agreement") or {}
    return {"cosine": min(f["cosine"] for f in found["fidelity"]),
            "snr_db": min(snrs) if snrs else None, "agreement": agreement.get("value"),
            "agreement_label": agreement.get("label")}
