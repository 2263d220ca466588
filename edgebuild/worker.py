"""Run one step: `python -m edgebuild.worker JOB.json`.

Heavy steps run here, in a fresh process, so the memory a toolchain takes is given
back when the step ends, and a crash in native code cannot take the build with it.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from edgebuild.errors import EdgebuildError


@dataclass
class StepContext:
    """What a step function gets: its parameters, its inputs as paths, a folder for
    its outputs, and a way to report progress."""

    params: dict
    inputs: dict[str, Path]
    outdir: Path
    device: dict
    digests: dict[str, str] = field(default_factory=dict)  # input name -> content digest
    chain: list[dict] = field(default_factory=list)         # earlier steps (for bundles)
    status: str = "executed"  # a step that cannot finish here sets "deferred"
    outputs: dict[str, str] = field(default_factory=dict)
    # Where a step may keep what speeds later builds up without changing their
    # results (TensorRT timing caches); never part of a key.
    state: Path | None = None

    def output(self, name: str, filename: str) -> Path:
        """Declare output `name` and return the path to write it to."""
        self.outputs[name] = filename
        return self.outdir / filename

    def progress(self, message: str, done: int | None = None, total: int | None = None) -> None:
        """Report how far the step is; with `done` of `total` the console draws a bar.
        Call it as often as is natural (per batch, say): the console throttles what it
        shows, so the worker need not."""
        from edgebuild.console import format_progress

        print(f"@progress {format_progress(message, done, total)}", file=sys.__stdout__,
              flush=True)


def run_job(job: dict) -> dict:
    """Call the step function and describe its result as JSON-able data."""
    outdir = Path(job["outdir"])
    outdir.mkdir(parents=True, exist_ok=True)
    ctx = StepContext(params=job["params"], inputs={k: Path(v) for k, v in job["inputs"].items()},
                      outdir=outdir, device=job["device"], digests=job.get("digests", {}),
                      chain=job.get("chain", []),
                      state=Path(job["state"]) if job.get("state") else None)
    module_name, function = job["runner"].split(":")
    try:
        meta = getattr(importlib.import_module(module_name), function)(ctx) or {}
    except EdgebuildError as exc:
        # The message is what the user reads; where it was raised goes to the step's log.
        return {"error": str(exc), "raised_at": traceback.format_exc()}
    return {"outputs": ctx.outputs, "meta": meta, "status": ctx.status}


def main(argv: list[str]) -> int:
    job_path = Path(argv[1])
    job = json.loads(job_path.read_text())
    try:
        result = run_job(job)
    except Exception:  # noqa: BLE001 - a toolchain crash is reported, with its log
        result = {"error": "step crashed", "traceback": traceback.format_exc()}
    (job_path.parent / "result.json").write_text(json.dumps(result))
    return 0 if "error" not in result else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
