"""edgebuild against a hand-written script: MobileNetV2 to fp32, fp16 and int8 TFLite.

    python bench/mobilenet_script.py [--rounds 2] [--calibration 16] [-j N]

tf_keras MobileNetV2 (weights=None, 224x224, saved as bench/quantize_modes.py saves it),
three targets (fp32, fp16 and full-int8 TFLite, 16 calibration images, validation
off). Each round times, side by side, a cold `edgebuild all` (fresh cache) and a
script that does the same three `TFLiteConverter` conversions in one process, both
as fresh commands from the shell, so both pay Python's start and TensorFlow's
import. The order alternates between rounds. Reports the wall times and their ratio
(the goal: <= 1.15x; the bar: <= 1.3x).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from quantize_modes import SIZE, save_images, save_model, write_mobilenet_recipe  # noqa: E402

TARGETS = {"fp32": "false", "fp16": "{mode: fp16}", "int8": "{mode: int8}"}

# What a user would write by hand: load once, convert three times.
SCRIPT = """
import sys
from pathlib import Path
import numpy as np
import tensorflow as tf
import tf_keras

folder = Path(sys.argv[1])
model = tf_keras.models.load_model(folder / "mobilenet_v2.keras", compile=False)
with np.load(folder / "calib.npz") as archive:
    images = archive["x"]
x = (tf.image.resize(images.astype(np.float32), (SIZE, SIZE)) - 127.5) / 127.5

def representative():
    for i in range(len(x)):
        yield [x[i:i + 1]]

for name in ("fp32", "fp16", "int8"):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if name == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif name == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    (folder / f"script-{name}.tflite").write_bytes(converter.convert())
""".replace("SIZE", str(SIZE))


def write_recipe(folder: Path, calibration: int) -> Path:
    targets = "\n".join(f"  {name}: {{device: rpi4, quantize: {quantize}, validate: false}}"
                        for name, quantize in TARGETS.items())
    return write_mobilenet_recipe(folder, targets, "calib.npz", calibration, "calib.npz",
                                  calibration)


def timed(command: list[str], env: dict | None = None) -> float:
    started = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(f"{command[:4]} failed:\n{run.stderr[-3000:]}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=16)
    parser.add_argument("-j", "--jobs", type=int, default=None,
                        help="edgebuild's -j (default: its own default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgebuild-mobilenet-") as tmp:
        folder = Path(tmp)
        images, origin = save_images(folder, args.calibration, 0)
        save_model(folder / "mobilenet_v2.keras", images)
        recipe = write_recipe(folder, args.calibration)
        (folder / "script.py").write_text(SCRIPT)
        print(f"data: {origin}; calibration {args.calibration}")
        ours, theirs = [], []
        edgebuild = [sys.executable, "-m", "edgebuild", "all", str(recipe), "-q",
                     "--dist", str(folder / "dist"),
                     *(["-j", str(args.jobs)] if args.jobs else []), "--cache-dir"]
        script = [sys.executable, str(folder / "script.py"), str(folder)]
        for round_ in range(args.rounds):
            cache = str(folder / f"cache-{round_}")  # cold: a fresh cache each round
            if round_ % 2:
                theirs.append(timed(script))
                ours.append(timed([*edgebuild, cache]))
            else:
                ours.append(timed([*edgebuild, cache]))
                theirs.append(timed(script))
            print(f"round {round_ + 1}: edgebuild {ours[-1]:.1f} s, script {theirs[-1]:.1f} s, "
                  f"ratio {ours[-1] / theirs[-1]:.2f}x", flush=True)
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"median: edgebuild {a:.1f} s, script {b:.1f} s, ratio {a / b:.2f}x "
              f"(goal <= 1.15x, bar <= 1.3x)")


if __name__ == "__main__":
    main()
