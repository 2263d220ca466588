"""Faults, injected for real: kill -9 at random moments, Ctrl-C, a full disk, damaged
lock files, four builds racing on one cache. Each test prints its figures (run with
-s to see them)."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_durability import assert_cache_intact, entry_keys, same_tree

from edgebuild.cache import Cache


def entry_inodes(cache_dir: Path) -> dict[str, int]:
    """key -> inode of its entry file; a step that ran again would commit a new file."""
    return {p.stem: p.stat().st_ino for p in (cache_dir / "entries").glob("*/*.json")}


TRIALS = 12  # a kill at a seeded random moment in each, after one more step finished


def test_kill_9_at_random_moments_never_redoes_or_corrupts_a_step(tiny, built_tiny):
    rng = random.Random(20)
    finished: dict[str, int] = {}
    kills = completed = kept = 0
    for _trial in range(TRIALS):
        proc = tiny.spawn("all", "-j", "2", start_new_session=True)
        # Kill at a random moment after one more step has finished, so that every
        # trial has finished steps at stake and the kill lands inside later ones.
        done, deadline = len(entry_inodes(tiny.cache)), time.monotonic() + 300
        while proc.poll() is None and len(entry_inodes(tiny.cache)) <= done and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the build and its workers, mid-step
            kills += 1
        proc.wait()
        assert_cache_intact(tiny.cache)
        now = entry_inodes(tiny.cache)
        redone = [key for key, inode in finished.items() if now.get(key) != inode]
        assert not redone, f"finished steps were redone or lost: {redone}"
        kept += len(set(finished) & set(now))
        finished.update(now)
        if proc.returncode == 0:  # it got to the end: start again from nothing
            completed += 1
            Cache(tiny.cache).clear()
            finished.clear()
    result = tiny.build()
    rerun = {s["key"] for s in result["step_list"] if not s["from_cache"]}
    assert not rerun & set(finished), "a step that had finished before a kill ran again"
    assert_cache_intact(tiny.cache)
    assert same_tree(built_tiny.dist, tiny.dist)
    assert kills >= TRIALS // 2 and kept > 0
    print(f"\nkill -9: {kills} kills in {TRIALS} trials ({completed} builds finished first); "
          f"{kept} checks that a finished step survived a kill untouched; 0 redone, "
          "0 corrupt entries")


def test_ctrl_c_leaves_no_temporary_files(tiny):
    """Ctrl-C with steps in flight: as the first starts, and a moment later. With warm
    workers the tiny build takes seconds, so a trial whose build finished before the
    interrupt landed starts again from an empty cache."""
    tmp = tiny.cache / "tmp"
    for delay in (0.0, 0.7):
        for _attempt in range(5):
            Cache(tiny.cache).clear()
            # As from a terminal: a shell's background job (`pytest &`) ignores SIGINT,
            # and so would the build it spawns.
            proc = tiny.spawn("all", "-j", "2", start_new_session=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            deadline = time.monotonic() + 120
            while not (tmp.is_dir() and any(tmp.iterdir())) and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(delay)
            in_flight = [p.name for p in tmp.iterdir()] if tmp.is_dir() else []
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
            _, err = proc.communicate(timeout=120)
            if proc.returncode == 0:  # finished first: nothing was interrupted
                continue
            assert proc.returncode == 130, err.decode()[-2000:]
            assert err.decode().strip().endswith("edgebuild: interrupted")
            assert in_flight and not list(tmp.iterdir()), "temporary files left behind"
            assert_cache_intact(tiny.cache)
            break
        else:
            raise AssertionError(f"5 builds finished within {delay} s of their first step")


def test_full_disk_is_a_clear_error_and_leaves_no_half_entry(tiny, built_tiny):
    """Writes fail past 3 kB (RLIMIT_FSIZE), as they would on a full disk: the bundle
    steps cannot write their archives."""
    def limit_writes():
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, not the process

    proc = subprocess.run([sys.executable, "-m", "edgebuild", "all", str(tiny.recipe),
                           *tiny.args("--json")], cwd=tiny.root, capture_output=True,
                          text=True, preexec_fn=limit_writes, timeout=600)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    result = json.loads(proc.stdout)
    failed = [s for s in result["step_list"] if s["status"] == "failed"]
    # The OS's own words, or, where TensorFlow swallows them, ours.
    assert failed and all("File too large" in s["message"] or "is the disk full?" in
                          s["message"] for s in failed), [s["message"] for s in failed]
    assert "could not write the report" in proc.stderr
    assert_cache_intact(tiny.cache)
    assert not list((tiny.cache / "tmp").iterdir())
    # With room again, only what failed runs, and the bundles are right.
    done = {s["key"] for s in result["step_list"] if s["status"] == "executed"}
    rebuilt = tiny.build()
    assert done <= {s["key"] for s in rebuilt["step_list"] if s["from_cache"]}
    assert same_tree(built_tiny.dist, tiny.dist)


def test_damaged_lock_files_never_cause_wrong_reuse(rebuilt):
    lock = rebuilt.recipe.with_suffix(".lock")
    good = lock.read_bytes()
    record = json.loads(good)
    step = record["targets"]["rpi4"]["steps"][1]
    wrong = {**record, "targets": {**record["targets"], "rpi4": {
        **record["targets"]["rpi4"], "steps": [record["targets"]["rpi4"]["steps"][0],
                                               {**step, "key": "0" * 64}]}}}
    for damaged in (good[: len(good) // 2], b"\x00\xff" * 50, b"", b"[]",
                    json.dumps(wrong).encode()):
        lock.write_bytes(damaged)
        result = rebuilt.build()
        # The cache decides what is built, never the lock: nothing runs again, and
        # the lock is written back whole.
        assert result["steps"]["executed"] == 0
        assert lock.read_bytes() == good
    # A damaged lock is reported, not hidden.
    lock.write_bytes(good[:100])
    code, _ = rebuilt.run("plan")
    assert code == 0 and "ignoring unreadable lock file" in rebuilt.last_stderr


def test_four_parallel_builds_on_one_cache_agree(tiny, built_tiny):
    procs = [subprocess.Popen(
        [sys.executable, "-m", "edgebuild", "all", str(tiny.recipe), "--json", "-j", "2",
         "--cache-dir", str(tiny.cache), "--dist", str(tiny.root / f"dist-{i}")],
        cwd=tiny.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in range(4)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err.decode()[-2000:]
        results.append(json.loads(out))
    assert_cache_intact(tiny.cache)
    assert len({frozenset(s["key"] for s in r["step_list"]) for r in results}) == 1
    for i in range(4):
        assert same_tree(built_tiny.dist / "tiny", tiny.root / f"dist-{i}" / "tiny")
    executed = sum(r["steps"]["executed"] for r in results)
    print(f"\n4 parallel builds: {executed} step executions for {results[0]['steps']['total']} "
          f"steps, {len(entry_keys(tiny.cache))} entries, all bundles identical")


def test_writes_stay_in_the_cache_and_dist(tiny, tmp_path):
    """Beyond the cache and dist, only the lock file beside the recipe is written:
    nothing in $HOME, nothing left in $TMPDIR."""
    home, tmpdir = tmp_path / "home", tmp_path / "tmpdir"
    home.mkdir()
    tmpdir.mkdir()
    before = {p for p in tiny.root.rglob("*")}
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmpdir)}
    env.pop("MPLCONFIGDIR", None)
    env.pop("KERAS_HOME", None)
    proc = subprocess.run([sys.executable, "-m", "edgebuild", "all", str(tiny.recipe),
                           *tiny.args("-q")], cwd=tiny.root, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    new = {p for p in tiny.root.rglob("*")} - before
    outside = {p for p in new if not p.is_relative_to(tiny.cache)
               and not p.is_relative_to(tiny.dist)}
    assert outside == {tiny.recipe.with_suffix(".lock")}
    assert not list(home.rglob("*")), f"written to $HOME: {list(home.rglob('*'))}"
    assert not list(tmpdir.rglob("*")), f"left in $TMPDIR: {list(tmpdir.rglob('*'))}"
