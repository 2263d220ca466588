"""Warm workers: long-lived processes that import a toolchain once and run many steps.

A heavy step used to start a fresh Python that imported TensorFlow (2.5 s idle, far
more on a loaded machine) before doing any work. A worker here runs one step after
another instead; `python -m edgebuild.worker --serve` is its loop. What a fresh
process gave each step, it still gets:

- **isolation from crashes**: a step that kills its worker (a segfault in native code,
  `os.abort()`) fails alone, with its log; the pool starts another worker;
- **bounded memory**: a worker is retired after `max_steps` steps, or when its
  resident memory passes `max_rss`;
- **the same bytes**: the worker resets Keras, TensorFlow and random state between
  steps (toolchains/session.py), and a worker started under another environment
  than the build's now is never reused, since some settings are read only at start.

Like Bazel's persistent workers, this is an optimization the results do not depend
on: `EDGEBUILD_WORKER_STEPS=1` runs every step in a fresh process, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WORKER_MEMORY = 1 << 30  # what one TensorFlow worker holds, about (0.7-1 GB measured)
DEFAULT_MAX_STEPS = 50
DEFAULT_MAX_RSS_MB = 3072

# Per step, set for each request rather than when a worker starts.
PER_STEP_ENV = ("TMPDIR", "KERAS_HOME")


@dataclass
class Limits:
    workers: int    # at most this many at once (memory)
    max_steps: int  # steps before a worker is retired; 1 = a fresh process per step
    max_rss: int    # bytes of resident memory after a step before it is retired

    @classmethod
    def from_env(cls) -> Limits:
        return cls(workers=_int_env("EDGEBUILD_WORKERS") or memory_workers(),
                   max_steps=_int_env("EDGEBUILD_WORKER_STEPS") or DEFAULT_MAX_STEPS,
                   max_rss=(_int_env("EDGEBUILD_WORKER_RSS_MB") or DEFAULT_MAX_RSS_MB) << 20)


def _int_env(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_workers() -> int:
    """How many TensorFlow workers this machine's free memory holds (at least one)."""
    free = available_memory()
    return max(1, free // WORKER_MEMORY) if free else os.cpu_count() or 1


def default_jobs() -> int:
    """Steps at once when -j is not given: one per core, as memory allows."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, memory_workers()))


@dataclass
class StepRun:
    """One step's request to a worker, and what came of it."""

    job: Path                  # the step's job.json; the worker writes result.json beside it
    cwd: Path                  # the step's work folder
    log: Path                  # where the step's output goes
    env: dict[str, str]        # the environment the step runs under
    returncode: int | None = None  # set when the worker died during the step


@dataclass(eq=False)
class Worker:
    proc: subprocess.Popen
    start_env: dict[str, str]
    steps: int = 0
    rss: int = 0

    def run(self, step: StepRun, progress: Callable[[str], None] | None) -> bool:
        """Hand the worker a step and relay its progress; False if it died meanwhile."""
        request = {"job": str(step.job), "cwd": str(step.cwd), "log": str(step.log),
                   "env": step.env}
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:  # it died between steps
            return False
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("@progress "):
                if progress is not None:
                    progress(line[len("@progress "):])
            elif line.startswith("@done "):
                self.steps += 1
                self.rss = json.loads(line[len("@done "):]).get("rss", 0)
                return True
        return False


def start_environment(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in PER_STEP_ENV}


class WorkerPool:
    """Workers for heavy steps, shared by the build's threads (and by a Dask worker's)."""

    def __init__(self, limits: Limits, on_start: Callable[[subprocess.Popen], None],
                 on_stop: Callable[[subprocess.Popen], None]):
        self.limits = limits
        self._on_start, self._on_stop = on_start, on_stop
        self._idle: list[Worker] = []
        self._busy = 0
        self._free = threading.Condition()

    def run(self, step: StepRun, progress: Callable[[str], None] | None = None) -> None:
        """Run `step` on a warm worker; on return its result.json is written, or
        `step.returncode` says how its worker died."""
        worker, finished = self._acquire(start_environment(step.env), progress), False
        try:
            worker = worker or self._start(step.env)
            finished = worker.run(step, progress)
        finally:
            if finished:
                self._release(worker)
            elif worker is not None:  # it died, or this thread was interrupted
                self._retire(worker, kill=True)
                step.returncode = worker.proc.returncode
            with self._free:
                self._busy -= 1
                self._free.notify()

    def close(self) -> None:
        with self._free:
            idle, self._idle = self._idle, []
        for worker in idle:
            self._retire(worker)

    def _acquire(self, start_env: dict, progress) -> Worker | None:
        """An idle worker started under `start_env`, or None: start one (the slot is
        taken). Waits, and says so, while every slot is busy."""
        with self._free:
            said = False
            while self._busy >= self.limits.workers:
                if not said and progress is not None:
                    progress(f"waiting for a free worker ({self.limits.workers} running)")
                    said = True
                self._free.wait()
            self._busy += 1
            stale = [w for w in self._idle if w.start_env != start_env]
            self._idle = [w for w in self._idle if w.start_env == start_env]
            worker = self._idle.pop() if self._idle else None
        for old in stale:  # the build's environment changed since they started
            self._retire(old)
        return worker

    def _release(self, worker: Worker) -> None:
        if worker.steps >= self.limits.max_steps or worker.rss > self.limits.max_rss:
            self._retire(worker)
        else:
            with self._free:
                self._idle.append(worker)

    def _start(self, env: dict[str, str]) -> Worker:
        proc = subprocess.Popen([sys.executable, "-m", "edgebuild.worker", "--serve"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env)
        self._on_start(proc)
        return Worker(proc, start_environment(env))

    def _retire(self, worker: Worker, kill: bool = False) -> None:
        proc = worker.proc
        if kill and proc.poll() is None:
            proc.kill()
        with contextlib.suppress(OSError):
            proc.stdin.close()  # the worker's loop ends at the end of its input
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        self._on_stop(proc)


def death(returncode: int | None) -> str:
    """How a worker ended, in words."""
    if returncode is not None and returncode < 0:
        try:
            return f"worker killed by {signal.Signals(-returncode).name}"
        except ValueError:
            pass
    return f"worker exited with status {returncode}"

