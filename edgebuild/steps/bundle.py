"""bundle: the release folder for one target, with a manifest that describes it.

Only reproducible content goes in: the artifact, labels, deferred-build scripts and
the manifest. No timestamps, host names, timings or absolute paths, so the same
inputs give the same bytes in any checkout and any cache.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from edgebuild.fsutil import canonical_json, pretty_json
from edgebuild.worker import StepContext

MANIFEST_VERSION = 1


def run(ctx: StepContext) -> dict:
    folder = ctx.output("bundle", "bundle")
    folder.mkdir()
    model = ctx.inputs["model"]
    artifact_name = f"model{model.suffix}"
    shutil.copyfile(model, folder / artifact_name)
    if "labels" in ctx.inputs:
        shutil.copyfile(ctx.inputs["labels"], folder / "labels.txt")
    deferred = None
    if "build" in ctx.inputs:
        for script in sorted(ctx.inputs["build"].iterdir()):
            shutil.copyfile(script, folder / script.name)
            (folder / script.name).chmod(0o755)
        deferred = next((c for c in ctx.chain if c["status"] == "deferred"), None)
    manifest = _manifest(ctx, artifact_name, folder, deferred)
    (folder / "manifest.json").write_bytes(pretty_json(manifest))
    return {"files": sorted(manifest["files"])}


def _manifest(ctx: StepContext, artifact_name: str, folder: Path, deferred: dict | None) -> dict:
    params = ctx.params
    chain = [{"kind": c["kind"], "key": c["key"], "params": c["params"],
              **({"status": "deferred"} if c["status"] == "deferred" else {})}
             for c in ctx.chain]
    toolchain = {}
    for step in ctx.chain:
        toolchain.update({k: v for k, v in step["toolchain"].items() if v is not None})
    resolved = {"recipe": params["recipe"], "target": params["target"], "task": params["task"],
                "device": ctx.device, "chain": [[c["kind"], c["params"]] for c in chain],
                "source": ctx.digests.get("model")}
    artifact = {"file": artifact_name, "format": ctx.device["format"],
                "precision": params["precision"]}
    if deferred:
        artifact["deferred"] = (f"{deferred['kind']} runs on the device: "
                                "see the script in this bundle")
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "recipe": {"name": params["recipe"], "task": params["task"],
                   "digest": hashlib.sha256(canonical_json(resolved)).hexdigest()},
        "target": params["target"], "device": ctx.device, "artifact": artifact,
        "chain": chain, "toolchain": dict(sorted(toolchain.items())),
        "files": {p.name: {"sha256": _sha256(p), "size": p.stat().st_size}
                  for p in sorted(folder.iterdir())},
    }
    if "verdict" in ctx.inputs:
        verdict = json.loads(ctx.inputs["verdict"].read_text())
        manifest["validation"] = {"passed": verdict["passed"], "samples": verdict["samples"],
                                  "data": _validation_digest(ctx)}
    return manifest


def _validation_digest(ctx: StepContext) -> str | None:
    validate = next((c for c in ctx.chain if c["kind"] == "validate"), None)
    return validate["inputs"].get("data") if validate else None


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
