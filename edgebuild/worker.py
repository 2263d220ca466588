"""Run steps in a worker process: `python -m edgebuild.worker --serve` runs one step
after another (pool.py), `python -m edgebuild.worker JOB.json` runs one.

Heavy steps run here, in a process of their own, so a crash in native code cannot
take the build with it, and the memory a toolchain takes is given back when the
worker is retired.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import tempfile
import traceback
from contextlib import contextmanager
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

        print(f"@progress {format_progress(message, done, total)}",
              file=_control or sys.__stdout__, flush=True)


# Where progress goes: the pool's channel in a warm worker (whose stdout is the
# step's log), else stdout.
_control = None


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


def run_job_file(job_path: Path) -> dict:
    """Run the job in `job_path`, writing result.json beside it."""
    job = json.loads(job_path.read_text())
    try:
        result = run_job(job)
    except Exception:  # noqa: BLE001 - a toolchain crash is reported, with its log
        result = {"error": "step crashed", "traceback": traceback.format_exc()}
    (job_path.parent / "result.json").write_text(json.dumps(result))
    return result


def serve() -> int:
    """Run the steps the pool sends, one JSON request per line on stdin, until it
    closes stdin. Each step's output (Python's and native code's) goes to its log;
    "@progress" and "@done" lines go to the pool on the original stdout."""
    global _control
    from edgebuild.toolchains import session

    _control = os.fdopen(os.dup(1), "w", buffering=1)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    home = os.getcwd()
    for line in sys.stdin:
        request = json.loads(line)
        before, modules = session.snapshot(), set(sys.modules)
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # read TMPDIR again: each step has its own
        os.chdir(request["cwd"])
        with _output_to(request["log"], quiet):
            run_job_file(Path(request["job"]))
            # Leave nothing the next step could see: user code imported from this
            # step's folder (a decoder plug-in, custom objects), toolchain state.
            _forget_modules(set(sys.modules) - modules, request["cwd"])
            _forget_paths(request["cwd"])
            os.chdir(home)
            session.reset(before)
            gc.collect()
        print(f"@done {json.dumps({'rss': _resident_bytes()})}", file=_control, flush=True)
    return 0


@contextmanager
def _output_to(log: str, quiet: int):
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)


def _forget_modules(names: set[str], folder: str) -> None:
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None) or ""
        if file.startswith(folder.rstrip("/") + "/"):
            del sys.modules[name]


def _forget_paths(folder: str) -> None:
    """Drop the step's folder from sys.path; what toolchains add for themselves stays
    (onnxruntime.transformers puts its own folder there and imports from it later)."""
    inside = folder.rstrip("/") + "/"
    sys.path[:] = [p for p in sys.path if p != folder and not p.startswith(inside)]


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def main(argv: list[str]) -> int:
    if argv[1:] == ["--serve"]:
        return serve()
    return 0 if "error" not in run_job_file(Path(argv[1])) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
