"""Start-up and no-op benchmarks, each against `python -c "import doit"` in the same run.

    python bench/noop.py [--runs 15] [--skip-1gb]

Measures (median and p90 of wall time, peak RSS):
  - python -c "import doit"                   the yardstick
  - edgebuild --help
  - no-op edgebuild all recipes/detector.yaml (built first if needed)
  - no-op on a generated recipe with 100 targets
  - the first no-op after touching, without changing, a 1 GB input, and the one after

Builds go to a temporary folder (cache, dist, lock files): the repository's own
are not touched.
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
EDGEBUILD = [sys.executable, "-m", "edgebuild"]
DEVICES = ["rpi4", "android-gpu", "coral-edgetpu", "mcu", "x86-cpu"]


def timed(cmd: list[str], cwd: Path = REPO) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one run of `cmd` (wait4 gives that process's
    own rusage, where RUSAGE_CHILDREN would mix in every earlier child)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed:\n{err.read().decode()[-3000:]}")
    return elapsed, usage.ru_maxrss


def measure(name: str, cmd: list[str], runs: int, cwd: Path = REPO) -> dict:
    timed(cmd, cwd)  # warm the file-system cache
    samples = [timed(cmd, cwd) for _ in range(runs)]
    times = sorted(s for s, _ in samples)
    return {"name": name, "median_s": statistics.median(times),
            "p90_s": times[min(len(times) - 1, int(0.9 * len(times)))],
            "peak_rss_mb": max(r for _, r in samples) / 1024, "runs": runs}


def build_first(recipe: Path, where: list[str]) -> None:
    start = time.perf_counter()
    subprocess.run([*EDGEBUILD, "all", str(recipe), *where, "-j", "2"], check=True,
                   capture_output=True)
    print(f"({recipe.name} built in {time.perf_counter() - start:.1f}s)")


def detector_copy(folder: Path) -> Path:
    """recipes/detector.yaml beside links to the repo's models and data, so that its
    lock file is written here and the repository's stays untouched."""
    (folder / "recipes").mkdir()
    shutil.copy(REPO / "recipes" / "detector.yaml", folder / "recipes")
    for name in ("models", "data"):
        (folder / name).symlink_to(REPO / name)
    return folder / "recipes" / "detector.yaml"


def hundred_target_recipe(folder: Path) -> Path:
    """The detector, for 100 targets cycling over five devices. Validation is off so
    the first build stays short; the no-op still plans and checks all 100 chains."""
    lines = ["name: hundred", f"source: {{path: {REPO / 'models/detector.keras'}}}",
             "task: detection", "data:",
             "  preprocess: {resize: [128, 128], scale: 0.00392156862745098}",
             f"  calibration: {{path: {REPO / 'data/shapes/calib'}, count: 20}}", "targets:"]
    for i in range(100):
        device = DEVICES[i % len(DEVICES)]
        extra = ", format: onnx, quantize: false" if device == "x86-cpu" else ""
        lines.append(f"  t{i:03d}: {{device: {device}, validate: false{extra}}}")
    recipe = folder / "hundred.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    return recipe


def big_input_recipe(folder: Path, gigabytes: float) -> Path:
    """A recipe whose calibration set is a ~1 GB .npz (stored, not compressed)."""
    import zipfile

    import numpy as np

    # Streamed in chunks: a bench process that once held 1 GB would make every child's
    # peak RSS read 1 GB too (Linux carries the pre-exec peak into the child's rusage).
    count = int(gigabytes * 1e9 // (128 * 128 * 3))
    header = {"descr": "|u1", "fortran_order": False, "shape": (count, 128, 128, 3)}
    chunk = np.full(64 << 20, 127, np.uint8).tobytes()
    with zipfile.ZipFile(folder / "calib.npz", "w", zipfile.ZIP_STORED) as archive, \
            archive.open("x.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, header)
        left = count * 128 * 128 * 3
        while left:
            member.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
    recipe = folder / "big.yaml"
    recipe.write_text(f"""name: big
source: {{path: {REPO / 'models/detector.keras'}}}
task: detection
data:
  preprocess: {{resize: [128, 128], scale: 0.00392156862745098}}
  calibration: {{path: calib.npz, count: 10}}
targets:
  pi: {{device: rpi4, validate: false}}
""")
    return recipe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--skip-1gb", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="edgebuild-bench-"))
    where = ["--cache-dir", str(work / "cache"), "--dist", str(work / "dist"), "-q"]
    results = []
    try:
        results.append(measure('python -c "import doit"', [sys.executable, "-c", "import doit"],
                               args.runs))
        results.append(measure("edgebuild --help", [*EDGEBUILD, "--help"], args.runs))

        detector = detector_copy(work)
        build_first(detector, where)
        results.append(measure("no-op all recipes/detector.yaml",
                               [*EDGEBUILD, "all", str(detector), *where], args.runs))

        hundred = hundred_target_recipe(work)
        build_first(hundred, where)
        results.append(measure("no-op all, 100 targets",
                               [*EDGEBUILD, "all", str(hundred), *where], args.runs))

        if not args.skip_1gb:
            big = big_input_recipe(work, 1.0)
            subprocess.run([*EDGEBUILD, "all", str(big), *where], check=True, capture_output=True)
            data = work / "calib.npz"
            first, after = [], []
            for _ in range(3):
                stat = data.stat()
                os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
                first.append(timed([*EDGEBUILD, "all", str(big), *where]))
                after.append(timed([*EDGEBUILD, "all", str(big), *where]))
            size = data.stat().st_size / 1e9
            for name, samples in ((f"first no-op after touching a {size:.2f} GB input", first),
                                  ("the no-op after that", after)):
                times = [s for s, _ in samples]
                results.append({"name": name, "median_s": statistics.median(times),
                                "p90_s": max(times), "runs": len(times),
                                "peak_rss_mb": max(r for _, r in samples) / 1024})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = results[0]["median_s"]
    print(f"\n{'benchmark':<48} {'median':>9} {'p90':>9} {'x doit':>7} {'peak RSS':>9}")
    for r in results:
        rss = f"{r['peak_rss_mb']:.0f} MB" if "peak_rss_mb" in r else ""
        print(f"{r['name']:<48} {r['median_s'] * 1000:>7.0f}ms {r['p90_s'] * 1000:>7.0f}ms "
              f"{r['median_s'] / base:>6.2f}x {rss:>9}")
    detector_noop = next(r for r in results if r["name"].startswith("no-op all recipes"))
    hundred_noop = next(r for r in results if "100 targets" in r["name"])
    print(f"\n100-target no-op / detector no-op: "
          f"{hundred_noop['median_s'] / detector_noop['median_s']:.2f}x")
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
