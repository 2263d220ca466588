"""Whole builds that share a remote cache: CI runners with fresh local caches (one
after another, or one shard each), and step executions on a Dask cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Project
from seaweedfs import ACCESS_KEY, SECRET_KEY
from test_durability import same_tree


def cli(project: Project, *args: str, env: dict) -> tuple[int, dict, str]:
    """The real command in its own process: S3 settings come from the environment."""
    proc = subprocess.run(
        [sys.executable, "-m", "edgebuild", "all", str(project.recipe), "--json",
         *project.args(*args)], cwd=project.root, env=env, capture_output=True, text=True,
        timeout=900)
    result = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, result, proc.stderr


def runner(tiny_assets: Path, tmp_path: Path, name: str) -> Project:
    """A CI runner: a fresh checkout with an empty local cache."""
    shutil.copytree(tiny_assets, tmp_path / name)
    return Project(tmp_path / name)


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def test_a_fresh_cache_against_the_same_remote_builds_nothing(seaweed, tiny_assets, tmp_path,
                                                             built_tiny):
    url, env = seaweed.prefix("shared"), seaweed.env()
    a = runner(tiny_assets, tmp_path, "runner-a")
    code, first, err = cli(a, "--remote-cache", url, "-j", "2", env=env)
    assert code == 0, err
    assert first["steps"]["executed"] == first["steps"]["total"]
    assert first["remote_cache"]["entries_uploaded"] == first["steps"]["total"]

    b = runner(tiny_assets, tmp_path, "runner-b")
    code, second, err = cli(b, "--remote-cache", url, env=env)
    assert code == 0, err
    assert second["steps"]["executed"] == 0
    assert second["steps"]["cached"] == second["steps"]["total"]
    assert same_tree(a.dist, b.dist) and same_tree(built_tiny.dist, b.dist)

    # Download minimal: B fetched every entry, but only the blobs it read (bundles,
    # validation reports), not the intermediate models.
    lock = json.loads(b.recipe.with_suffix(".lock").read_text())
    convert = lock["targets"]["rpi4"]["steps"][0]
    assert convert["kind"] == "convert"
    assert not (b.cache / "blobs" / convert["outputs"]["model"][:2]
                / convert["outputs"]["model"]).exists()
    assert second["remote_cache"]["blobs_fetched"] < first["remote_cache"]["blobs_uploaded"]

    # B's next run is a local no-op: no remote traffic at all.
    code, third, err = cli(b, "--remote-cache", url, env=env)
    assert code == 0 and third["steps"]["executed"] == 0
    assert third["remote_cache"]["entries_fetched"] == third["remote_cache"]["blobs_fetched"] == 0

    # Credentials come from the environment and go nowhere: not into outputs, lock
    # files, the local caches, the remote entries, or what the command printed.
    printed = json.dumps([first, second, third]) + err
    assert SECRET_KEY not in printed and ACCESS_KEY not in printed
    for path in files_under(a.root, b.root):
        data = path.read_bytes()
        assert SECRET_KEY.encode() not in data and ACCESS_KEY.encode() not in data, path
    remote = seaweed.filesystem()
    for path in remote.find(url.removeprefix("s3://") + "/entries"):
        assert SECRET_KEY.encode() not in remote.cat_file(path)


def test_two_shards_then_a_final_run_that_executes_nothing(seaweed, tiny_assets, tmp_path,
                                                          built_tiny):
    url, env = seaweed.prefix("shards"), seaweed.env()
    shards = {}
    for index in (1, 2):
        shard = runner(tiny_assets, tmp_path, f"shard-{index}")
        code, shards[index], err = cli(shard, "--remote-cache", url, "--shard", f"{index}/2",
                                       env=env)
        assert code == 0, err
    assert list(shards[1]["targets"]) == ["rpi4"] and list(shards[2]["targets"]) == ["pixel"]

    final = runner(tiny_assets, tmp_path, "final")
    code, result, err = cli(final, "--remote-cache", url, env=env)
    assert code == 0, err
    assert result["steps"]["executed"] == 0 and result["steps"]["failed"] == 0
    assert {t["status"] for t in result["targets"].values()} == {"ok"}
    assert same_tree(built_tiny.dist, final.dist)


def test_read_only_runner_uploads_nothing(seaweed, tiny_assets, tmp_path):
    url, env = seaweed.prefix("readonly"), seaweed.env()
    untrusted = runner(tiny_assets, tmp_path, "pull-request")
    code, result, err = cli(untrusted, "--remote-cache", url, "--remote-cache-readonly",
                            "--shard", "2/2", env=env)
    assert code == 0, err
    assert result["steps"]["executed"] > 0
    assert result["remote_cache"]["readonly"] is True
    assert result["remote_cache"]["entries_uploaded"] == result["remote_cache"][
        "blobs_uploaded"] == 0
    assert not seaweed.filesystem().find(url.removeprefix("s3://"))


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    # Both workers offer GPU=1 but this machine has no GPU: probing them must find
    # that out, and TensorRT compiles must be deferred exactly as on one machine.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, resources={"GPU": 1}) as cluster:
        yield cluster


DASK_TARGETS = """\
targets:
  rpi4: {device: rpi4}
  pixel: {device: android-gpu}
  jetson: {device: jetson-orin}
"""


def test_dask_build_matches_a_local_build_byte_for_byte(dask_cluster, tiny, built_tiny,
                                                       tmp_path):
    from distributed import Client

    tiny.recipe.write_text(tiny.recipe.read_text().split("targets:")[0] + DASK_TARGETS)
    shared = f"file://{tmp_path / 'shared-cache'}"
    code, result = tiny.run("all", "--remote-cache", shared,
                            "--scheduler", dask_cluster.scheduler_address)
    assert code == 0, tiny.last_stderr
    assert result["steps"]["executed"] == result["steps"]["total"] - result["steps"]["deferred"]
    assert result["targets"]["jetson"]["status"] == "deferred"
    assert result["targets"]["jetson"]["deferred"] == "no NVIDIA GPU here"
    for target in ("rpi4", "pixel"):
        assert same_tree(built_tiny.dist / "tiny" / target, tiny.dist / "tiny" / target)

    # The steps ran on the workers, both of them; this machine only read results.
    with Client(dask_cluster) as client:
        per_worker = client.run(lambda: sum(
            len(c.entry_keys()) for c in
            __import__("edgebuild.distributed").distributed._worker_caches.values()))
    assert all(count > 0 for count in per_worker.values()), per_worker
    assert sum(per_worker.values()) >= result["steps"]["total"]
    lock = json.loads(tiny.recipe.with_suffix(".lock").read_text())
    convert = lock["targets"]["rpi4"]["steps"][0]["outputs"]["model"]
    assert not (tiny.cache / "blobs" / convert[:2] / convert).exists()

    # Keys do not depend on where steps ran: a local plan finds everything cached.
    code, plan = tiny.run("plan", "--remote-cache", shared)
    assert code == 0 and {s["status"] for s in plan["step_list"]} == {"cached"}


def test_dask_workers_must_match_this_machines_toolchain(dask_cluster, tiny, monkeypatch,
                                                        tmp_path):
    from edgebuild.toolchains import versions as versions_module

    real = versions_module.versions  # patched here only: the workers are other processes
    monkeypatch.setattr(versions_module, "versions",
                        lambda names: {**real(names), "onnxruntime": "0.0.1"})
    code, _ = tiny.run("all", "--remote-cache", f"file://{tmp_path / 'shared'}",
                       "--scheduler", dask_cluster.scheduler_address)
    assert code == 2
    assert "other toolchain versions: onnxruntime 0.0.1 here" in tiny.last_stderr


def test_scheduler_without_a_shared_cache_is_a_usage_error(tiny):
    code, _ = tiny.run("all", "--scheduler", "tcp://127.0.0.1:9")
    assert code == 2 and "--scheduler needs a cache every worker can reach" in tiny.last_stderr
