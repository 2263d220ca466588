"""ONNX Runtime latency of the ultraface artifacts, float32 against each quantized one.

    python bench/ultraface_ort.py [--runs 300] [--threads 1]

Builds recipes/ultraface.yaml (needs ../shared/models/ultraface) into a temporary
folder, then times the x86-fp32, x86 (static QDQ int8), x86-dynamic and server (fp16)
bundles on the CPU execution provider. Calls rotate through the models one at a
time, so every model sees the same machine state; 20 warm-up rounds first. Prints
median and p90 per model, the speed-up against float32 from the medians, and each
artifact's box agreement with the float model (from its validation report).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TARGETS = ("x86-fp32", "x86", "x86-dynamic", "server")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not (SHARED / "models" / "ultraface").is_dir():
        print("needs ../shared/models/ultraface", file=sys.stderr)
        return 2

    import onnxruntime as ort

    from edgebuild.data import load_samples
    from edgebuild.recipe.load import load_recipe

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        text = (REPO / "recipes" / "ultraface.yaml").read_text()
        (folder / "uf.yaml").write_text(text.replace("../../shared", str(SHARED)))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "edgebuild", "all", str(folder / "uf.yaml"), "-q",
                        "--cache-dir", str(folder / "cache"), "--dist", str(folder / "dist")],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"cold build of recipes/ultraface.yaml: {time.perf_counter() - started:.1f} s")

        recipe = load_recipe(folder / "uf.yaml")
        sample = load_samples(recipe.validation.path, {
            "preprocess": vars(recipe.preprocess), "count": 1})[:1]
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        sessions = {t: ort.InferenceSession(str(folder / "dist" / "ultraface" / t / "model.onnx"),
                                            options, providers=["CPUExecutionProvider"])
                    for t in TARGETS}
        times: dict[str, list[float]] = {t: [] for t in TARGETS}
        for round_ in range(20 + args.runs):
            for target, session in sessions.items():
                begin = time.perf_counter()
                session.run(None, {"input": sample})
                if round_ >= 20:
                    times[target].append((time.perf_counter() - begin) * 1000)
        report = json.loads((folder / "dist" / "ultraface" / "report.json").read_text())
        agreement = {row["target"]: row["fidelity"].get("agreement") for row in report["targets"]}

    base = statistics.median(times["x86-fp32"])
    print(f"{args.runs} interleaved runs, {args.threads} thread(s), batch 1, 240x320")
    print(f"{'target':<12} {'median ms':>10} {'p90 ms':>8} {'speed-up':>9} {'box agreement':>14}")
    for target in TARGETS:
        median = statistics.median(times[target])
        p90 = float(np.percentile(times[target], 90))
        shown = f"{agreement[target]:.1%}" if agreement.get(target) is not None else "-"
        print(f"{target:<12} {median:>10.3f} {p90:>8.3f} {base / median:>8.2f}x {shown:>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
