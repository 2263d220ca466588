"""bundle: the release folder for one target, with a manifest that describes it, and
the same folder as a .tar.gz (the download size, where pruning and clustering show).

Only reproducible content goes in: the artifact, labels, deferred-build scripts and
the manifest. No timestamps, host names, timings or absolute paths, so the same
inputs give the same bytes in any checkout and any cache.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tarfile
from pathlib import Path

from edgebuild.fsutil import canonical_json, file_sizes, pretty_json
from edgebuild.worker import StepContext

MANIFEST_VERSION = 1
UNSEALED = "0" * 64  # self_digest's value while the manifest's own digest is taken


def seal(manifest: bytes) -> bytes:
    """Write the manifest's digest into it: sha256 of its bytes with self_digest zeroed,
    so `edgebuild verify` can tell any changed byte of the manifest, not only of the
    files it lists."""
    assert manifest.count(_self_digest(UNSEALED)) == 1
    return manifest.replace(_self_digest(UNSEALED),
                            _self_digest(hashlib.sha256(manifest).hexdigest()))


def is_sealed(manifest: bytes, digest: str) -> bool:
    """Whether `manifest` is, byte for byte, what `seal` wrote with this digest."""
    field = _self_digest(digest)
    return manifest.count(field) == 1 and hashlib.sha256(
        manifest.replace(field, _self_digest(UNSEALED))).hexdigest() == digest


def _self_digest(value: str) -> bytes:
    return f'"self_digest": "{value}"'.encode()


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
    for name, filename in (("engine", "model.engine"), ("timing_cache", "timing.cache")):
        if name in ctx.inputs:  # a TensorRT engine built here, for this host's GPU
            shutil.copyfile(ctx.inputs[name], folder / filename)
    manifest = _manifest(ctx, artifact_name, folder, deferred)
    (folder / "manifest.json").write_bytes(seal(pretty_json(manifest)))
    _archive(folder, ctx.output("archive", "bundle.tar.gz"), ctx.params["target"])
    return {"files": sorted(manifest["files"])}


def _archive(folder: Path, dest: Path, prefix: str) -> None:
    """The bundle as one reproducible .tar.gz: sorted regular files under `prefix/`,
    no owners, no timestamps (in the tar headers or the gzip header)."""
    with open(dest, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(folder.iterdir()):
            info = tarfile.TarInfo(f"{prefix}/{path.name}")
            info.size, info.mtime = path.stat().st_size, 0
            info.mode = 0o755 if os.access(path, os.X_OK) else 0o644
            with open(path, "rb") as handle:
                tar.addfile(info, handle)


def _manifest(ctx: StepContext, artifact_name: str, folder: Path, deferred: dict | None) -> dict:
    params = ctx.params
    chain = [{"kind": c["kind"], "key": c["key"], "params": c["params"],
              **({"facts": c["facts"]} if c.get("facts") else {}),
              **({"status": "deferred"} if c["status"] == "deferred" else {})}
             for c in ctx.chain]
    toolchain = {}
    for step in ctx.chain:
        toolchain.update({k: v for k, v in step["toolchain"].items() if v is not None})
    resolved = {"recipe": params["recipe"], "target": params["target"], "task": params["task"],
                "device": ctx.device, "chain": [[c["kind"], c["params"]] for c in chain],
                "source": ctx.digests.get("model")}
    artifact = {"file": artifact_name, "format": ctx.device["format"],
                "precision": params["precision"], **file_sizes(folder / artifact_name),
                **_io(ctx, folder / artifact_name)}
    if deferred:
        artifact["deferred"] = (f"{deferred['kind']} runs on the device: "
                                "see the script in this bundle")
    if "engine" in ctx.inputs:
        compiled = next(c for c in ctx.chain if c["kind"] == "compile")
        artifact["engine"] = {"file": "model.engine", **compiled.get("facts", {})}
    manifest = {
        "manifest_version": MANIFEST_VERSION, "self_digest": UNSEALED,
        "recipe": {"name": params["recipe"], "task": params["task"],
                   "digest": hashlib.sha256(canonical_json(resolved)).hexdigest()},
        "target": params["target"], "device": ctx.device, "artifact": artifact,
        "chain": chain, "toolchain": dict(sorted(toolchain.items())),
        "reproducible": _reproducible(ctx.chain),
        "files": {p.name: {"sha256": _sha256(p), "size": p.stat().st_size}
                  for p in sorted(folder.iterdir())},
    }
    if "verdict" in ctx.inputs:
        verdict = json.loads(ctx.inputs["verdict"].read_text())
        manifest["validation"] = {
            "passed": verdict["passed"], "samples": verdict["samples"],
            "data": _validation_digest(ctx), "metric": verdict["metric"],
            "metrics": verdict["metrics"], "baseline": verdict["baseline"],
            "drop": verdict["drop"], **({"unchecked": verdict["unchecked"]}
                                        if verdict["unchecked"] else {})}
    if "engine_verdict" in ctx.inputs:
        verdict = json.loads(ctx.inputs["engine_verdict"].read_text())
        manifest["engine_validation"] = {k: verdict[k] for k in (
            "passed", "samples", "metric", "metrics", "baseline", "drop")}
    if "fallback" in params:
        manifest["fallback"] = _ladder(ctx, params["fallback"])
    return manifest


def _io(ctx: StepContext, artifact: Path) -> dict:
    """The artifact's inputs and outputs, each output with the source output it is
    (as validation matched them: by name, or by shape where names were lost)."""
    from edgebuild.toolchains.artifact_io import describe

    io = describe(artifact, ctx.params["input_layout"])
    if io is None:
        return {}
    if "verdict" in ctx.inputs:
        matched = {m["artifact"]: m for m in
                   json.loads(ctx.inputs["verdict"].read_text()).get("outputs", [])}
        for output in io["outputs"]:
            match = matched.get(output["name"])
            if match is not None:
                output["source_output"] = match["source"]
                if match.get("transpose"):
                    output["to_source_layout"] = match["transpose"]
    return io


def _ladder(ctx: StepContext, rungs: list[str]) -> dict:
    """The rungs tried before this one, why each was rejected, and the one chosen."""
    from edgebuild.budget import ladder_outcome

    names = ["verdict", *(f"rejected_{i}" for i in range(len(rungs)))]
    verdicts = [json.loads(ctx.inputs[n].read_text()) for n in names if n in ctx.inputs]
    return ladder_outcome(rungs, [*verdicts[1:], verdicts[0]])


def _reproducible(chain: list[dict]) -> dict:
    """Whether rebuilding from the same inputs gives the same bytes, and if not, why."""
    caveats = [{"step": c["kind"], "why": c["nondeterministic"]} for c in chain
               if c.get("nondeterministic")]
    return {"bytes": not caveats, **({"caveats": caveats} if caveats else {})}


def _validation_digest(ctx: StepContext) -> str | None:
    validate = next((c for c in ctx.chain if c["kind"] == "validate"), None)
    return validate["inputs"].get("data") if validate else None


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
