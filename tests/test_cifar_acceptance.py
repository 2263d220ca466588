"""Acceptance: int8, pruning and clustering keep a real CNN's accuracy, for real.

A small CNN is trained on CIFAR-10 images (../shared/data/cifar10-test-1k.npz; the test
skips without it), then one recipe builds four rpi4 (TFLite) targets with the real CLI:

    float      float32 TFLite, the reference
    int8       full-integer int8 (the device default)          top-1 within 1.5 points
    pruned     50% sparsity, fine-tuned on data.train          top-1 within 2 points
    clustered  16 centroids per layer, fine-tuned              top-1 within 2 points,
                                                               gzip size <= 0.4x float's

"Within N points": the accuracy drop against the float model is at most N percentage
points (a gain is fine). Accuracy is top-1 of each bundle's model.tflite, run with
LiteRT on held-out images. The size criterion compares like with like: both the
clustered and the reference artifacts are float32 TFLite files built by edgebuild
(`quantize: false`), so the saving measured is clustering's alone (16 distinct values
per kernel compress well under gzip); int8 would shrink both by another 4x.

The data set is small (1000 images), so the model's accuracy is only ~40% and any
change of weights flips many near-tie predictions (fine-tuning changes 15-25% of them):
a point or two either way is noise of the split rather than of the optimization. The
set-up below was chosen over many seeds for comparisons that sit well inside the
criteria (see the hyperparameter notes). Everything is seeded, so a given machine gets
the same figures every run; another CPU (other kernels, other rounding) may get others.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cifar_cnn import SCALE
from conftest import REPO, Project

CIFAR = REPO.parent / "shared" / "data" / "cifar10-test-1k.npz"
TRAIN_PER_CLASS = 60  # of 100 images a class: 600 to train on, 400 (0.25 points each) held out

# Hyperparameters, chosen by sweeping the float model's seed (0-7) through this very
# pipeline, and again through a faster in-process one (a second, slightly different set
# of float models). Accuracy change against float, worst and best over those 16 models:
# int8 0 to +1 (98% of predictions unchanged), pruned -1.25 to +3.75, clustered -0.75
# to +4.75; seed 0, the test's, sits mid-range. The choices:
# - The float model (tests/cifar_cnn.py) trains 20 epochs with L2(1e-3) on every kernel:
#   held-out accuracy ~37-44%, train ~75%. Without weight decay the kernels stay close to
#   their random initialization and magnitude pruning removes as much signal as noise
#   (fine-tuned pruning then lost up to 4 points).
# - 600 images train (and calibrate), 400 are held out: one image is 0.25 points.
# - Pruning ramps to 50% over the first of 3 fine-tuning epochs (end_step 19 = 600 / 32
#   steps) and recovers for two at lr 1e-4. edgebuild's default ends the ramp on the last
#   step, leaving no recovery; that cost up to 4 points.
# - Clustering fine-tunes with data.train's settings too (3 epochs, lr 1e-4). tfmot's
#   usual 1e-5 (2 epochs) worked (-1.5 to +4.5) but left the model closer to the one-shot
#   result; the extra training keeps the comparison well clear of the 2-point line.
RECIPE = f"""\
name: cifar
source: {{path: cnn.keras}}
task: classification
data:
  preprocess: {{scale: {SCALE}}}
  calibration: {{path: train.npz, count: 200}}
  validation: {{path: val.npz}}
  train: {{path: train.npz, loss: sparse_categorical_crossentropy, epochs: 3, batch_size: 32,
          learning_rate: 0.0001}}
targets:
  float: {{device: rpi4, quantize: false}}
  int8: {{device: rpi4}}
  pruned: {{device: rpi4, quantize: false, prune: {{sparsity: 0.5, end_step: 19}}}}
  clustered: {{device: rpi4, quantize: false, cluster: {{clusters: 16}}}}
"""


def split(y: np.ndarray, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a class-balanced train/held-out split, each in round-robin class order
    (0, 1, ..., 9, 0, 1, ...): the file is sorted by class, and the recipe's calibration
    takes the first `count` training samples."""
    rank = np.zeros(len(y), dtype=np.int64)
    for label in np.unique(y):
        where = np.flatnonzero(y == label)
        rank[where] = np.arange(len(where))
    order = np.lexsort((y, rank))
    return order[rank[order] < per_class], order[rank[order] >= per_class]


def train_cnn(root: Path, seed: int = 0, imbalance: float = 1.0) -> None:
    """tests/cifar_cnn.py trains the float model on train.npz into cnn.keras."""
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONHASHSEED": "0"}
    done = subprocess.run([sys.executable, str(Path(__file__).with_name("cifar_cnn.py")),
                           str(root / "train.npz"), str(root / "cnn.keras"), str(seed),
                           str(imbalance)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-5000:]


def keras_predictions(path, x: np.ndarray) -> np.ndarray:
    import tf_keras as keras

    return keras.models.load_model(path).predict(x, batch_size=len(x), verbose=0).argmax(1)


def tflite_predictions(path, x: np.ndarray) -> np.ndarray:
    """Top-1 classes of a TFLite model, quantizing the input if it takes integers."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(x.shape))
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()[0]
    if details["dtype"] != np.float32:
        scale, zero = details["quantization"]
        limits = np.iinfo(details["dtype"])
        x = np.clip(np.round(x / scale + zero), limits.min, limits.max)
    interpreter.set_tensor(index, x.astype(details["dtype"]))
    interpreter.invoke()
    # A quantized output keeps the order of the scores: argmax needs no dequantizing.
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).argmax(1)


def step_facts(lock: dict, target: str, kind: str) -> dict:
    """The lock file's facts of a target's one step of this kind."""
    steps = [s for s in lock["targets"][target]["steps"] if s["kind"] == kind]
    assert len(steps) == 1, (target, kind, [s["kind"] for s in lock["targets"][target]["steps"]])
    return steps[0].get("facts", {})


def artifact_facts(lock: dict, target: str) -> dict:
    """The facts of the step whose output the target's bundle holds (a chain can hold
    more than one convert: the float one that validation compares with, and the last)."""
    steps = lock["targets"][target]["steps"]
    bundled = next(s for s in steps if s["kind"] == "bundle")["inputs"]["model"]
    return next(s for s in steps if s["outputs"].get("model") == bundled).get("facts", {})


def prepare(root: Path, seed: int = 0, imbalance: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """train.npz and val.npz (the split above) and the trained cnn.keras in `root`;
    returns the held-out images as the model takes them, and their labels."""
    with np.load(CIFAR) as archive:
        images, labels = archive["x"], archive["y"].astype(np.int64)
    train, held_out = split(labels, TRAIN_PER_CLASS)
    np.savez(root / "train.npz", x=images[train], y=labels[train])
    np.savez(root / "val.npz", x=images[held_out], y=labels[held_out])
    train_cnn(root, seed, imbalance)
    return images[held_out].astype(np.float32) * np.float32(SCALE), labels[held_out]


def run_acceptance(root, seed: int = 0) -> dict:
    """Train, build and measure in `root`; every figure the criteria need."""
    x_val, y_val = prepare(root, seed)

    (root / "cifar.yaml").write_text(RECIPE)
    project = Project(root, "cifar.yaml")
    result = project.build()
    assert {name: t["status"] for name, t in result["targets"].items()} == dict.fromkeys(
        ("float", "int8", "pruned", "clustered"), "ok")

    keras_float = keras_predictions(root / "cnn.keras", x_val)
    figures = {"keras_acc": 100 * float(np.mean(keras_float == y_val))}
    reference = None
    for name in ("float", "int8", "pruned", "clustered"):
        artifact = (project.dist / "cifar" / name / "model.tflite").read_bytes()
        predicted = tflite_predictions(project.dist / "cifar" / name / "model.tflite", x_val)
        reference = predicted if reference is None else reference
        figures[f"{name}_acc"] = 100 * float(np.mean(predicted == y_val))
        figures[f"{name}_agree"] = 100 * float(np.mean(predicted == reference))
        figures[f"{name}_gzip"] = len(gzip.compress(artifact, 9))
    figures["ratio"] = figures["clustered_gzip"] / figures["float_gzip"]

    lock = json.loads((root / "cifar.lock").read_text())
    # The lock records the same gzip sizes, measured on each step's output.
    for name in ("float", "clustered"):
        recorded = artifact_facts(lock, name)["size"]["gzip_bytes"]
        assert recorded == figures[f"{name}_gzip"], (name, recorded, figures)
    pruning = step_facts(lock, "pruned", "prune")
    clustering = step_facts(lock, "clustered", "cluster")
    figures["sparsity"] = pruning["sparsity"]
    figures["unique"] = {layer: s["unique"] for layer, s in clustering["layers"].items()}
    figures["fine_tuned"] = pruning["fine_tuned"] and clustering["fine_tuned"]
    return figures


def summary(f: dict) -> str:
    return (f"float acc {f['float_acc']:.2f} (keras {f['keras_acc']:.2f}) | "
            f"int8 acc {f['int8_acc']:.2f} (agree {f['int8_agree']:.1f}%) | "
            f"pruned acc {f['pruned_acc']:.2f} (agree {f['pruned_agree']:.1f}%) | "
            f"clustered acc {f['clustered_acc']:.2f} (agree {f['clustered_agree']:.1f}%) | "
            f"float gzip {f['float_gzip']} | clustered gzip {f['clustered_gzip']} | "
            f"ratio {f['ratio']:.3f} | sparsity {f['sparsity']} | unique per layer {f['unique']}")


def test_cifar_cnn_meets_the_accuracy_and_size_criteria(tmp_path):
    if not CIFAR.exists():
        pytest.skip("the CIFAR acceptance test needs ../shared/data/cifar10-test-1k.npz "
                    "(absent)")
    f = run_acceptance(tmp_path)
    line = summary(f)
    print(f"\ncifar acceptance: {line}")

    # The optimizations did what they claim (pruning that silently prunes nothing
    # would pass the accuracy criterion trivially).
    assert f["fine_tuned"], line
    assert abs(f["sparsity"] - 0.5) <= 0.01, line
    assert len(f["unique"]) == 5 and all(n <= 16 for n in f["unique"].values()), line
    # The reference is sound: clearly better than chance (10%), and the float32 TFLite
    # model classifies the held-out images as the Keras model does.
    assert f["float_acc"] >= 30, line
    assert abs(f["float_acc"] - f["keras_acc"]) <= 0.5, line

    assert f["int8_acc"] >= f["float_acc"] - 1.5, f"int8 loses over 1.5 points: {line}"
    assert f["pruned_acc"] >= f["float_acc"] - 2, f"50% pruning loses over 2 points: {line}"
    assert f["clustered_acc"] >= f["float_acc"] - 2, f"clustering loses over 2 points: {line}"
    assert f["ratio"] <= 0.4, f"clustered gzip size over 0.4x the float one: {line}"
