"""Execute one step: gather its inputs from the cache, run it, commit its outputs.

A step is durable the moment its entry is committed, so killing a build loses only
the steps in flight. Work happens in a private folder under the cache's tmp/, which
is removed whatever happens. `run_step` is all a Dask worker needs (distributed.py).
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgebuild.cache import Cache, Entry, Output
from edgebuild.console import Console, parse_progress
from edgebuild.errors import BuildError
from edgebuild.fsutil import file_sizes
from edgebuild.graph import Node
from edgebuild.plan import Planner, rejected
from edgebuild.pool import Limits, StepRun, WorkerPool, death


@dataclass
class Outcome:
    status: str  # executed | cached | deferred | failed
    message: str = ""
    cached: bool = False  # a failure read from the cache (a rejected verdict)


class Executor:
    """Runs the steps the engine hands it: here, or through `runner` (a Dask cluster)."""

    def __init__(self, cache: Cache, planner: Planner, console: Console, runner=None):
        self.cache, self.planner, self.console = cache, planner, console
        self.runner = runner
        self.outcomes: dict[str, Outcome] = {}  # node id -> what happened in this run

    def is_built(self, node: Node) -> bool:
        """Asked by the engine just before running `node`: upstream steps have run by
        now, so the key is known; another build may even have made the entry."""
        entry = self.planner.entry_of(node.id)
        if entry is not None and self.rejects(node, entry):
            return False  # cached, but `build` must still fail it to stop its target
        if entry is not None and node.id not in self.outcomes:
            self.outcomes[node.id] = Outcome("cached")
        return entry is not None

    def replanned(self, planner: Planner) -> None:
        """Go on with a new plan: a fallback ladder stepped down a rung."""
        self.planner = planner

    def step_down_from(self, gate: str) -> None:
        """A ladder moves past this gate's rejected verdict: the rejection only moves
        the ladder, the step itself did its job."""
        outcome = self.outcomes[gate]
        self.outcomes[gate] = Outcome("cached" if outcome.cached else "executed")

    def rejects(self, node: Node, entry: Entry) -> bool:
        """A gating validation whose verdict missed the budget: its target fails."""
        return node.id in self.planner.graph.gates and rejected(entry)

    def build(self, node: Node) -> bool:
        if node.id in self.outcomes and self.outcomes[node.id].status == "failed":
            return False  # a ladder's next pass: already failed, and already said so
        if _exiting.is_set():  # Ctrl-C: doit's threads may still hold queued steps
            self.outcomes[node.id] = Outcome("failed", "interrupted")
            return False
        _building.add(threading.current_thread())
        try:
            return self._build_and_record(node)
        finally:
            _building.discard(threading.current_thread())

    def _build_and_record(self, node: Node) -> bool:
        cached = self.planner.entry_of(node.id)
        if cached is None:
            self.console.step_started(node)
        try:
            entry = cached or self._build(node)
        except (BuildError, OSError) as exc:  # OSError: e.g. a full disk while committing
            message = str(exc) if isinstance(exc, BuildError) else f"{type(exc).__name__}: {exc}"
            self.outcomes[node.id] = Outcome("failed", message)
            if not _exiting.is_set():
                self.console.step_failed(node, message)
            return False
        if self.rejects(node, entry):
            misses = entry.meta["verdict"]["misses"]
            message = "budget missed: " + "; ".join(m["text"] for m in misses)
            self.outcomes[node.id] = Outcome("failed", message, cached=cached is not None)
            self.console.step_failed(node, message)
            return False
        self.outcomes[node.id] = Outcome(entry.status)
        self.console.step_finished(node, entry.status)
        return True

    def _build(self, node: Node) -> Entry:
        resolved = self.planner.resolve(node)
        if resolved is None:
            raise BuildError("an input is missing from the cache")
        doc, key = resolved
        job = StepJob(
            key=key, kind=node.kind, doc=doc, runner=node.impl.runner, heavy=node.impl.heavy,
            params=node.params, device=node.device,
            inputs={name: self.planner.entry_of(up_id).outputs[output]
                    for name, (up_id, output) in node.deps.items()},
            files={name: str(path) for name, path in node.files.items()},
            chain=self._chain(node))
        if self.runner is not None:
            entry = self.runner.run(self.cache, job, node)
        else:
            entry = run_step(self.cache, job, lambda line: self.console.step_progress(
                node, *parse_progress(line)))
        self.planner.run.record(node.id, entry)
        return entry

    def _chain(self, node: Node) -> list[dict]:
        """What a bundle manifest records of the steps before it."""
        chain = []
        for up_id in node.chain:
            entry = self.planner.entry_of(up_id)
            impl = self.planner.graph.nodes[up_id].impl
            chain.append({"kind": entry.kind, "impl": entry.doc["impl"], "key": entry.key,
                          "params": entry.doc["params"], "toolchain": entry.doc["toolchain"],
                          "inputs": entry.doc["inputs"], "facts": entry.meta.get("facts", {}),
                          "status": entry.status, "nondeterministic": impl.nondeterministic})
        return chain


@dataclass(frozen=True)
class StepJob:
    """One step execution, complete: it runs here or on a Dask worker (it pickles)."""

    key: str
    kind: str
    doc: dict            # the key document, stored in the entry
    runner: str          # "module:function"
    heavy: bool          # run in a fresh process
    params: dict
    device: dict
    inputs: dict[str, Output]  # by digest: upstream outputs (and, on a cluster, user files)
    files: dict[str, str]      # user files and folders, read in place
    chain: list[dict]          # earlier steps, for bundle manifests


def run_step(cache: Cache, job: StepJob, progress: Callable[[str], None] | None = None) -> Entry:
    """Materialize the inputs, run the step, commit its outputs (and, with a remote
    cache, upload them). The work folder goes whatever happens."""
    with cache.workdir(f"{job.kind}-{job.key[:12]}") as work:
        inputs = dict(job.files)
        for name, output in job.inputs.items():
            inputs[name] = str(cache.materialize(output, work / "in" / name / output.name))
        spec = {"runner": job.runner, "params": job.params, "device": job.device,
                "inputs": inputs, "outdir": str(work / "out"), "digests": job.doc["inputs"],
                "chain": job.chain, "state": str(cache.state / "steps")}
        started = time.monotonic()
        result = _spawn(spec, work, progress, cache.state) if job.heavy else _in_process(spec)
        if "error" in result:
            raise BuildError(_failure_message(cache, result, work, job.key))
        outputs, facts = {}, dict(result["meta"].pop("facts", {}))
        for name, filename in result["outputs"].items():
            path = work / "out" / filename
            if path.is_dir():
                outputs[name] = cache.put_tree(path)
                continue
            outputs[name] = cache.put_file(path)
            if name == "model":  # the artifact each optimization step produces
                facts["size"] = file_sizes(path)
        meta = {**result["meta"], "status": result["status"], "facts": facts,
                "seconds": round(time.monotonic() - started, 3)}
        return cache.commit(job.key, job.kind, job.doc, outputs, meta)


# Worker processes running now: stopped if this process exits first (Ctrl-C), so none
# goes on writing into a work folder that is being removed.
_workers: set[subprocess.Popen] = set()
_workers_lock = threading.Lock()
_exiting = threading.Event()  # set on Ctrl-C or at exit: start nothing, report no failure
_building: set[threading.Thread] = set()  # threads inside Executor.build


def stop(wait: float = 30.0) -> None:
    """Stop the build: start no step or worker, kill the workers, and give the steps
    in flight up to `wait` seconds to unwind (remove their work folders), so that the
    process exits with nothing left in the cache's tmp/."""
    with _workers_lock:
        _exiting.set()
        workers = list(_workers)
    for proc in workers:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + wait
    for thread in list(_building - {threading.current_thread()}):
        thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(stop, wait=5.0)


def _spawn(job: dict, work: Path, progress: Callable[[str], None] | None, state: Path) -> dict:
    job_path = work / "job.json"
    job_path.write_text(json.dumps(job))
    # tf.keras must mean tf_keras (Keras 2), which tfmot and the converter expect.
    # A fixed hash seed: converters iterate over sets (tf2onnx shares constants in
    # set order), so output bytes would otherwise change from process to process.
    # Toolchains' temporary files and Keras's config go into the work folder, which
    # is removed whatever happens, and matplotlib's font cache (pycocotools imports
    # it) into the cache's state: nothing is written to /tmp or $HOME.
    # TensorFlow turns oneDNN's ops on by itself only on CPUs with AVX-512 VNNI, BF16 or
    # AMX; off, every machine runs the same ops. (Their float32 results still differ
    # from CPU to CPU: toolchains/tf_numerics keeps those out of every output.)
    # One thread per op: TensorFlow splits a sum between as many threads as the
    # machine has cores, and 30 epochs of fine-tuning turn the other rounding into
    # other weights, even in float64. Steps run side by side instead (-j).
    (work / "tmp").mkdir()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1",
           "TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "1",
           "TF_USE_LEGACY_KERAS": "1", "PYTHONHASHSEED": "0", "TMPDIR": str(work / "tmp"),
           "KERAS_HOME": str(work / "keras"),
           "MPLCONFIGDIR": os.environ.get("MPLCONFIGDIR") or str(state / "matplotlib")}
    if _exiting.is_set():
        raise BuildError("interrupted")
    step = StepRun(job=job_path, cwd=work, log=work / "step.log", env=env)
    worker_pool().run(step, progress)
    try:
        return json.loads((work / "result.json").read_text())
    except (OSError, ValueError):
        return {"error": "step crashed: " + death(step.returncode)}


_pool: WorkerPool | None = None
_pool_lock = threading.Lock()


def worker_pool() -> WorkerPool:
    """This process's warm workers (a build's, or a Dask worker's), made on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = WorkerPool(Limits.from_env(), on_start=_started, on_stop=_stopped)
        return _pool


def _started(proc: subprocess.Popen) -> None:
    with _workers_lock:  # none starts once `stop` has begun
        _workers.add(proc)
        if _exiting.is_set():
            proc.kill()
            raise BuildError("interrupted")


def _stopped(proc: subprocess.Popen) -> None:
    with _workers_lock:
        _workers.discard(proc)


def _failure_message(cache: Cache, result: dict, work: Path, key: str) -> str:
    """The error, and the log kept of a worker's run: what the step printed, then the
    error and its traceback (steps print little, so the output alone is often empty)."""
    message = result["error"]
    log = work / "step.log"
    if not log.exists():  # it ran in this process: no output of its own to keep
        return message
    logs = cache.root / "logs"
    logs.mkdir(exist_ok=True)
    saved = logs / f"{key[:16]}.log"
    output = log.read_text(errors="replace").rstrip()
    trace = result.get("traceback") or result.get("raised_at", "")
    printed = f"{output}\n\n" if output else ""
    saved.write_text(f"{printed}error: {message}\n\n{trace}")
    last = result.get("traceback", "").strip().splitlines()[-1:] or [""]
    return f"{message}: {last[0]} (full log: {saved})" if last[0] else \
        f"{message} (full log: {saved})"


def _in_process(job: dict) -> dict:
    from edgebuild.worker import run_job

    return run_job(job)
