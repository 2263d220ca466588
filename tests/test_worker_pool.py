"""Warm workers (edgebuild/pool.py) keep what a fresh process per step gave: the same
bytes, a crash that fails one step only, and memory given back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgebuild.pool import Limits, StepRun, WorkerPool

pytestmark = pytest.mark.slow

# Every kind of heavy step, one after another in the same worker: TFLite conversion
# and quantization, seeded fine-tuning (prune, cluster), tf2onnx (twice: it numbers
# the nodes it makes) and ONNX Runtime.
MIXED = """\
  train: {path: data/calib, loss: distill, epochs: 2, batch_size: 4}
targets:
  rpi4: {device: rpi4}
  sparse: {device: rpi4, prune: {sparsity: 0.5}, cluster: {clusters: 8}}
  x86: {device: x86-cpu}
  x86-clustered: {device: x86-cpu, cluster: {clusters: 4}}
"""


@pytest.fixture
def mixed(tiny):
    text = tiny.recipe.read_text()
    tiny.recipe.write_text(text[:text.index("targets:")] + MIXED)
    return tiny


def build(project, cache: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgebuild", "all", str(project.recipe), "--json", "-q",
         "--cache-dir", str(cache), "--dist", str(cache.parent / f"dist-{cache.name}"),
         *extra], cwd=project.root, env={**os.environ, **env}, capture_output=True, text=True)


def test_one_warm_worker_builds_the_bytes_of_a_process_per_step(mixed):
    """Every heavy step in one long-lived worker gives the lock file (every output's
    digest) that a fresh process per step gives."""
    lock = mixed.recipe.with_suffix(".lock")
    fresh = build(mixed, mixed.root / "fresh", {"EDGEBUILD_WORKER_STEPS": "1"}, "-j", "1")
    assert fresh.returncode == 0, fresh.stderr
    per_step = lock.read_text()
    lock.unlink()
    warm = build(mixed, mixed.root / "warm", {"EDGEBUILD_WORKERS": "1"}, "-j", "1")
    assert warm.returncode == 0, warm.stderr
    executed = [s for s in json.loads(warm.stdout)["step_list"] if s["status"] == "executed"]
    assert len(executed) >= 15, "the recipe should run every kind of step"
    assert lock.read_text() == per_step


CRASH_ONCE = """\
import os
from pathlib import Path

# The first step that imports this module kills its worker, as a crash in native
# code would; every later one goes on.
_marker = Path(MARKER)
if not _marker.exists():
    _marker.write_text("")
    os.abort()
"""


def test_a_worker_crash_fails_only_its_step_and_the_build_goes_on(tiny):
    """os.abort() in one step: that step fails with its log, the pool starts a new
    worker, and the other steps still run; the next build finishes the rest."""
    text = tiny.recipe.read_text().replace(
        "source: {path: model/tiny.keras}",
        "source: {path: model/tiny.keras, trust_source: true, custom_objects: crash_once}")
    tiny.recipe.write_text(text + "  x86: {device: x86-cpu}\n")
    # Steps import their own copy of the module: the marker's path is absolute.
    marker = repr(str(tiny.root / "crashed-once"))
    (tiny.root / "crash_once.py").write_text(CRASH_ONCE.replace("MARKER", marker))
    code, result = tiny.run("all", "-j", "1")
    assert code == 1, tiny.last_stderr
    failed = [s for s in result["step_list"] if s["status"] == "failed"]
    crashed = [s for s in failed if "worker killed by SIGABRT" in (s.get("message") or "")]
    assert len(crashed) == 1, failed
    assert "full log:" in crashed[0]["message"]
    executed = [s for s in result["step_list"] if s["status"] == "executed"]
    heavy_after_crash = [s for s in executed if s["kind"] in ("convert", "baseline", "quantize")]
    assert heavy_after_crash, "no toolchain step ran after the crash: the pool did not recover"
    code, again = tiny.run("all", "-j", "1")
    assert code == 0, tiny.last_stderr
    rerun = [s for s in again["step_list"] if not s["from_cache"] and s["status"] == "executed"]
    assert crashed[0]["key"] in {s["key"] for s in rerun}


def worker_script(tmp_path: Path, body: str, module: str = "poolsteps") -> StepRun:
    """A job whose step runs `body` (a runner defined in `module` under tmp_path)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / f"{module}.py").write_text(body)
    work = tmp_path / f"work-{module}"
    (work / "out").mkdir(parents=True, exist_ok=True)
    job = {"runner": f"{module}:run", "params": {}, "device": {}, "inputs": {},
           "outdir": str(work / "out")}
    (work / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return StepRun(job=work / "job.json", cwd=work, log=work / "step.log", env=env)


def test_workers_are_retired_after_their_steps_or_memory(tmp_path):
    """A worker serves `max_steps` steps; one whose memory passes the limit is retired."""
    step = worker_script(tmp_path, "import os\n\ndef run(ctx):\n    print('pid', os.getpid())\n"
                                   "    return {'pid': os.getpid()}\n")
    pids = []
    started: list = []
    pool = WorkerPool(Limits(workers=1, max_steps=2, max_rss=1 << 40),
                      on_start=started.append, on_stop=lambda proc: None)
    for _ in range(4):
        pool.run(step)
        pids.append(json.loads((step.cwd / "result.json").read_text())["meta"]["pid"])
    assert pids[0] == pids[1] != pids[2] == pids[3]
    assert len(started) == 2
    assert "pid" in step.log.read_text()  # the step's own output is in its log
    pool.close()

    hungry = worker_script(tmp_path, "def run(ctx):\n    global ballast\n"
                                     "    ballast = bytearray(64 << 20)\n    return {}\n")
    pool = WorkerPool(Limits(workers=1, max_steps=100, max_rss=32 << 20),
                      on_start=started.append, on_stop=lambda proc: None)
    for _ in range(2):
        pool.run(hungry)
    assert len(started) == 4, "a worker over its memory limit was reused"
    pool.close()


def test_a_step_waiting_for_a_free_worker_says_so(tmp_path):
    step = worker_script(tmp_path, "import time\n\ndef run(ctx):\n    time.sleep(1)\n"
                                   "    return {}\n")
    other = worker_script(tmp_path / "b", "def run(ctx):\n    return {}\n")
    pool = WorkerPool(Limits(workers=1, max_steps=10, max_rss=1 << 40),
                      on_start=lambda proc: None, on_stop=lambda proc: None)
    said: list[str] = []
    first = threading.Thread(target=pool.run, args=(step,))
    first.start()
    time.sleep(0.3)
    pool.run(other, said.append)
    first.join()
    assert any("waiting for a free worker" in line for line in said), said
    pool.close()


def test_what_a_toolchain_puts_on_sys_path_stays_for_later_steps(tmp_path):
    """onnxruntime.transformers puts its folder on sys.path when imported, and its
    modules import from there later: a worker must not take that away between steps
    (it did: "No module named 'fusion_utils'" in a later quantize.onnx step)."""
    first = worker_script(tmp_path, "def run(ctx):\n    import onnxruntime.transformers\n"
                                    "    return {}\n", module="first")
    later = worker_script(tmp_path, "def run(ctx):\n"
                                    "    import onnxruntime.transformers.fusion_attention\n"
                                    "    return {}\n", module="later")
    pool = WorkerPool(Limits(workers=1, max_steps=10, max_rss=1 << 40),
                      on_start=lambda proc: None, on_stop=lambda proc: None)
    pool.run(first)
    assert "error" not in json.loads((first.cwd / "result.json").read_text())
    pool.run(later)
    result = json.loads((later.cwd / "result.json").read_text())
    assert "error" not in result, result.get("traceback")
    pool.close()
