"""Cold builds: wall time and peak memory of `edgebuild all RECIPE` on an empty cache.

    python bench/cold_build.py                                   # this checkout
    python bench/cold_build.py --code /path/to/old/checkout      # another revision
    python bench/cold_build.py --env EDGEBUILD_WORKER_STEPS=1    # a process per step

Peak RSS is the whole process tree's (the build and its workers together), sampled
every 50 ms. Each run gets a fresh cache and dist folder; the lock file beside the
recipe is checked to be unchanged afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(root_pid: int) -> int:
    """Resident bytes of `root_pid` and every process below it."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            statm = Path(f"/proc/{entry}/statm").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = int(statm.split()[1]) * page
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def cold_build(code: Path, recipe: Path, env: dict[str, str], jobs: int | None) -> dict:
    lock = recipe.with_suffix(".lock")
    lock_before = hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else None
    with tempfile.TemporaryDirectory(prefix="edgebuild-cold-") as tmp:
        command = [sys.executable, "-m", "edgebuild", "all", str(recipe), "-q", "--json",
                   "--cache-dir", f"{tmp}/cache", "--dist", f"{tmp}/dist"]
        if jobs:
            command += ["-j", str(jobs)]
        full_env = {**os.environ, "PYTHONPATH": str(code), **env}
        started = time.monotonic()
        proc = subprocess.Popen(command, cwd=code, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        peak, done = 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.05):
                peak = max(peak, tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, err = proc.communicate()
        wall = time.monotonic() - started
        done.set()
        sampler.join()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"build failed ({proc.returncode}): {err.decode()[-2000:]}")
    result = json.loads(out)
    steps = result.get("step_list", [])
    lock_after = hashlib.sha256(lock.read_bytes()).hexdigest() if lock.exists() else None
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(peak / 2**20),
            "executed": sum(1 for s in steps if s.get("status") == "executed"),
            "lock_unchanged": lock_before == lock_after}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/detector.yaml")
    parser.add_argument("--code", default=str(ROOT), help="the checkout whose edgebuild runs")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("-j", "--jobs", type=int, default=None)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    recipe = (ROOT / args.recipe).resolve()
    for run in range(args.runs):
        figures = cold_build(Path(args.code).resolve(), recipe, env, args.jobs)
        print(json.dumps({"recipe": args.recipe, "code": args.code, "env": env,
                          "jobs": args.jobs, "run": run + 1, **figures}), flush=True)


if __name__ == "__main__":
    main()
