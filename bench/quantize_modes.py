"""Size and host latency of MobileNetV2 as fp32, fp16, dynamic-range and full-int8 TFLite
(plus full-int8 with per-tensor weight scales, for comparison).

    python bench/quantize_modes.py [--runs 300] [--warmup 20] [--calibration 48] [--keep]

Builds tf_keras MobileNetV2 (224x224x3, weights=None: random, seeded, with BatchNorm
statistics taken from the calibration images; see save_model) with edgebuild itself: one
recipe, four x86-cpu targets that differ only in `quantize`, validation on. Reports, per
mode, the bundled model.tflite's raw and gzip -9 size and the median latency measured by
edgebuild's validate step (LiteRT interpreter, one thread, on the host CPU). Every
quantized target's validation also times the fp32 artifact in the same process right
after its own model; latency ratios use that side-by-side figure, so each is measured
under the same conditions. Then checks the targets:

  - full-int8 size              <= 0.28x fp32
  - full-int8 median latency    <= 0.55x fp32
  - fp16 size                   <= 0.51x fp32

and exits 1 if any fails. Calibration and validation images are the first CIFAR-10 test
images from ../shared/data/cifar10-test-1k.npz when present (upscaled to 224 by the
recipe), otherwise seeded random pixels. Everything (model, data, recipe, cache, dist,
lock file) goes to a temporary folder; the repository's own are not touched.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before anything imports tensorflow
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from edgebuild import api  # noqa: E402
from edgebuild.console import Console  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10-test-1k.npz"
SIZE = 224
# target name -> its `quantize` override; "fp32" switches quantization off.
MODES = {"fp32": "false", "fp16": "{mode: fp16}", "dynamic": "{mode: dynamic}",
         "int8": "{mode: int8}",
         # Not an acceptance row: shows what per-channel quantization parameters cost.
         "int8-per-tensor": "{mode: int8, per_channel: false}"}
TARGETS = {"int8 size": ("int8", "size", 0.28),
           "int8 median latency": ("int8", "latency", 0.55),
           "fp16 size": ("fp16", "size", 0.51)}


def save_model(path: Path, images: np.ndarray, seed: int = 0) -> int:
    """MobileNetV2 with random weights (nothing downloads), saved as a Keras 2 model.

    Random initialisation alone shrinks activations about 100x every few blocks (to
    ~1e-12 before the classifier), so every input gives the same uniform softmax and
    calibration and fidelity would mean nothing. Each BatchNormalization layer's moving
    statistics are therefore set from one batch of `images`: the weights stay random,
    the activations get realistic ranges. Size and op graph are unchanged."""
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(SIZE, SIZE, 3))
    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    momentum = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0  # moving statistics := this batch's statistics
    x = (tf.image.resize(images.astype(np.float32), (SIZE, SIZE)) - 127.5) / 127.5
    model(x, training=True)
    for layer, value in zip(norms, momentum, strict=True):
        layer.momentum = value
    model.save(path)
    return model.count_params()


def save_images(folder: Path, calibration: int, validation: int) -> tuple[np.ndarray, str]:
    """calib.npz and val.npz (key x, uint8 NHWC), disjoint: the calibration images, and
    where they came from."""
    total = calibration + validation
    if CIFAR.is_file():
        with np.load(CIFAR) as archive:
            pixels = archive["x"][:total]
        origin = f"first {total} CIFAR-10 test images (32x32, resized to {SIZE})"
    else:
        pixels = np.random.default_rng(0).integers(0, 256, (total, SIZE, SIZE, 3), np.uint8)
        origin = f"{total} seeded random {SIZE}x{SIZE} images ({CIFAR} not found)"
    np.savez(folder / "calib.npz", x=pixels[:calibration])
    np.savez(folder / "val.npz", x=pixels[calibration:])
    return pixels[:calibration], origin


def write_recipe(folder: Path, calibration: int, validation: int, warmup: int,
                 runs: int) -> Path:
    validate = f"{{warmup: {warmup}, runs: {runs}}}"
    targets = "\n".join(f"  {name}: {{device: x86-cpu, format: tflite, quantize: {quantize}, "
                        f"validate: {validate}}}" for name, quantize in MODES.items())
    return write_mobilenet_recipe(folder, targets, "calib.npz", calibration, "val.npz",
                                  validation)


def write_mobilenet_recipe(folder: Path, targets: str, calibration_file: str,
                           calibration: int, validation_file: str, validation: int) -> Path:
    """mobilenet_v2.yaml for the model save_model wrote, with these target lines."""
    # MobileNetV2 expects inputs in [-1, 1]: x = (pixel - 127.5) * (1 / 127.5).
    recipe = folder / "mobilenet_v2.yaml"
    recipe.write_text(f"""name: mobilenet_v2
source: {{path: mobilenet_v2.keras}}
task: classification
data:
  preprocess: {{resize: [{SIZE}, {SIZE}], mean: 127.5, scale: {1 / 127.5!r}}}
  calibration: {{path: {calibration_file}, count: {calibration}}}
  validation: {{path: {validation_file}, count: {validation}}}
targets:
{targets}
""")
    return recipe


def build(recipe: Path, work: Path) -> dict[str, dict]:
    """Build every target through edgebuild's API; per target, the bundled artifact and
    its validate step's report.json (volatile: it stays in the cache, not the bundle)."""
    settings = api.Settings(cache_dir=work / "cache", dist_dir=work / "dist", jobs=1)
    project = api.open_project(recipe, settings)
    report = api.build(project, settings, Console())
    if report.failed:
        failures = [f"{s.label}: {s.message}" for s in report.steps if s.status == "failed"]
        raise SystemExit("build failed:\n  " + "\n  ".join(failures))
    results = {}
    for target, chain in project.graph.target_chains.items():
        validate = next(i for i in chain if project.graph.nodes[i].kind == "validate")
        entry = project.planner.entry_of(validate)
        artifact = Path(report.targets[target]["bundle"]) / "model.tflite"
        data = artifact.read_bytes()
        results[target] = {
            "bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9)),
            "report": json.loads(project.cache.read_blob(entry.outputs["report"].digest)),
        }
    print(f"(built {len(report.steps)} steps in {report.seconds:.1f}s)")
    return results


def summarize(results: dict[str, dict]) -> dict[str, dict]:
    fp32 = results["fp32"]
    rows = {}
    for mode, r in results.items():
        latency = r["report"]["latency"]
        # fp32 timed in the same worker, right after this model; the fp32 target's own
        # validation has no float model beside it, so it is its own reference.
        beside = r["report"].get("float_latency", latency)
        rows[mode] = {
            "size_mb": r["bytes"] / 1e6, "gzip_mb": r["gzip_bytes"] / 1e6,
            "size_ratio": r["bytes"] / fp32["bytes"],
            "median_ms": latency["median_ms"], "p90_ms": latency["p90_ms"],
            "fp32_beside_ms": beside["median_ms"],
            "latency_ratio": latency["median_ms"] / beside["median_ms"],
            "latency_ratio_vs_fp32_target": (latency["median_ms"]
                                             / fp32["report"]["latency"]["median_ms"]),
        }
    return rows


def print_table(rows: dict[str, dict]) -> None:
    print("\n| mode | size (MB) | gzip (MB) | size ratio | median latency ms | p90 ms "
          "| fp32 same process ms | latency ratio | vs fp32 target |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['size_mb']:.3f} | {r['gzip_mb']:.3f} | {r['size_ratio']:.3f}x "
              f"| {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {r['fp32_beside_ms']:.2f} "
              f"| {r['latency_ratio']:.3f}x | {r['latency_ratio_vs_fp32_target']:.3f}x |")
    print("\nsize ratio: against the fp32 artifact. latency ratio: against the fp32 artifact "
          "timed in the same\nvalidate process (the acceptance figure); vs fp32 target: "
          "against the fp32 target's own run.")


def check(rows: dict[str, dict]) -> bool:
    ok = True
    print()
    for name, (mode, what, limit) in TARGETS.items():
        ratio = rows[mode]["size_ratio" if what == "size" else "latency_ratio"]
        passed = ratio <= limit
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {ratio:.3f}x fp32 (target <= {limit}x)")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=48, help="calibration images")
    parser.add_argument("--validation", type=int, default=16, help="validation images")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="edgebuild-quantize-"))
    try:
        images, origin = save_images(work, args.calibration, args.validation)
        params = save_model(work / "mobilenet_v2.keras", images)
        print(f"MobileNetV2 {SIZE}x{SIZE}x3, {params:,} parameters, random weights (seed 0), "
              "BatchNorm statistics from the calibration images")
        print(f"data: {origin}; calibration {args.calibration}, validation "
              f"{args.validation}")
        recipe = write_recipe(work, args.calibration, args.validation, args.warmup, args.runs)
        results = build(recipe, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = summarize(results)
    timing = results["fp32"]["report"]["latency"]
    print(f"\nhost: {timing['host_cpu']}, {os.cpu_count()} CPUs; LiteRT interpreter, "
          f"{timing['threads']} thread(s), median of {timing['runs']} runs after "
          f"{args.warmup} warm-up")
    print_table(rows)
    ok = check(rows)
    print(f"\ntotal {time.perf_counter() - started:.0f}s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
