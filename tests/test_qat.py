"""Acceptance: quantization-aware training rescues int8 where post-training int8 fails.

The CIFAR-10 CNN of test_cifar_acceptance.py (../shared/data/cifar10-test-1k.npz; the
test skips without it), with a few channels of each convolution given 100 times the
range of the others, as folding BatchNorm gives MobileNets (tests/cifar_cnn.py,
`unbalance_channels`: the float model computes the same function). One recipe builds:

    float    float32 TFLite, the reference
    int8     post-training full-integer int8, its budget loosened so that it ships
             and can be measured
    qat      int8 after quantization-aware training (distilled from the float model)
    coral    an integer-only device whose ladder [int8, int8-qat] must step down
    sparse   50% pruning, then sparsity-preserving QAT
    cqat     16 clusters, then cluster-preserving QAT; its budget loosened, since 16
             shared values per layer cost this model's wide-range channels their
             precision before QAT starts
    pcqat    50% pruning and 16 clusters, then sparsity- and cluster-preserving QAT
    keep     QAT with the last layer kept in float (keep_float)

Every figure is measured on the bundled .tflite with LiteRT, on 400 held-out images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import Project
from test_cifar_acceptance import CIFAR, prepare, step_facts, tflite_predictions
from test_cifar_acceptance import RECIPE as CIFAR_RECIPE

pytestmark = pytest.mark.skipif(not CIFAR.exists(),
                                reason=f"needs the CIFAR-10 sample at {CIFAR} (../shared)")

# test_cifar_acceptance's data, distilled from the float model: QAT should learn to
# reproduce it under int8 rounding, not to beat it with the labels.
RECIPE = CIFAR_RECIPE.split("targets:")[0].replace(
    "loss: sparse_categorical_crossentropy", "loss: distill") + """\
targets:
  float: {device: rpi4, quantize: false}
  int8: {device: rpi4, budget: {max_drop_points: 20, min_cosine: 0.5, min_agreement: 0.5}}
  qat: {device: rpi4, quantize: {qat: {}}}
  coral: {device: coral-edgetpu, fallback: [int8, int8-qat]}
  sparse: {device: rpi4, prune: {sparsity: 0.5, end_step: 19}, quantize: {qat: {}}}
  cqat: {device: rpi4, cluster: {clusters: 16}, quantize: {qat: {}},
         budget: {max_drop_points: 40, min_cosine: 0.2, min_agreement: 0.2}}
  pcqat: {device: rpi4, prune: {sparsity: 0.5, end_step: 19}, cluster: {clusters: 16},
          quantize: {qat: {}}}
  keep: {device: rpi4, quantize: {qat: {}, keep_float: {layers: [dense_1]}}}
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("qat")
    x_val, y_val = prepare(root, seed=0, imbalance=100.0)
    (root / "cifar.yaml").write_text(RECIPE)
    project = Project(root, "cifar.yaml")
    result = project.build()
    accuracy = {}
    for name in ("float", "int8", "qat", "coral", "sparse", "cqat", "pcqat", "keep"):
        predicted = tflite_predictions(project.dist / "cifar" / name / "model.tflite", x_val)
        accuracy[name] = 100 * float(np.mean(predicted == y_val))
    print("top-1 on held-out images:", accuracy)
    return project, result, accuracy


def test_qat_brings_the_int8_drop_within_half_a_point_or_halves_it(built):
    _, result, accuracy = built
    assert {name: t["status"] for name, t in result["targets"].items()} == {
        **dict.fromkeys(("float", "int8", "qat", "sparse", "cqat", "pcqat", "keep"), "ok"),
        "coral": "deferred"}  # built and validated; the Edge TPU compiler is not here
    ptq_drop = accuracy["float"] - accuracy["int8"]
    qat_drop = accuracy["float"] - accuracy["qat"]
    assert ptq_drop >= 1.0, f"post-training int8 must cost a point for this test: {accuracy}"
    assert qat_drop <= 0.5 or qat_drop <= ptq_drop / 2, accuracy


def test_an_integer_only_ladder_chooses_int8_qat_and_a_rerun_executes_nothing(built):
    project, result, _ = built
    ladder = result["targets"]["coral"]["fallback"]
    assert ladder["chosen"] == "int8-qat", ladder
    assert ladder["tried"][0]["rung"] == "int8" and ladder["tried"][0]["misses"], ladder
    lock = json.loads((project.root / "cifar.lock").read_text())
    assert lock["targets"]["coral"]["fallback"]["chosen"] == "int8-qat"
    manifest = json.loads((project.dist / "cifar" / "coral" / "manifest.json").read_text())
    assert manifest["fallback"]["chosen"] == "int8-qat"
    assert [i["dtype"] for i in manifest["artifact"]["inputs"]] == ["int8"]  # int8 I/O
    facts = [s.get("facts", {}) for s in lock["targets"]["coral"]["steps"]
             if s["kind"] == "quantize"]
    assert any(f.get("integer_only", {}).get("float_ops") == 0 and "qat" in f for f in facts)
    again = project.build()
    assert again["steps"]["executed"] == 0, again["steps"]


def test_prune_then_qat_keeps_the_sparsity_in_the_int8_weights(built):
    project, _, _ = built
    lock = json.loads((project.root / "cifar.lock").read_text())
    pruning = step_facts(lock, "sparse", "prune")
    quantize = step_facts(lock, "sparse", "quantize")
    composition = quantize["composition"]
    assert composition["preserved"] and quantize["qat"]["epochs"] == 3
    for name, layer in composition["layers"].items():
        assert layer["int8"]["sparsity"] >= pruning["layers"][name]["sparsity"] - 1e-3, name
    assert pruning["sparsity"] >= 0.45


def test_prune_cluster_then_qat_keeps_zeros_and_shared_values(built):
    """PCQAT: the composition check finds every pruned and clustered layer in the int8
    flatbuffer (a check that found none would prove nothing) with its sparsity and at
    most 16 values per output channel."""
    project, _, _ = built
    lock = json.loads((project.root / "cifar.lock").read_text())
    clustering = step_facts(lock, "pcqat", "cluster")
    composition = step_facts(lock, "pcqat", "quantize")["composition"]
    assert set(composition["layers"]) == set(clustering["layers"])
    for name, layer in composition["layers"].items():
        assert layer["preserved"] and layer["int8"]["unique_per_channel"] <= 16, (name, layer)
        assert layer["int8"]["sparsity"] >= clustering["layers"][name]["sparsity"] - 1e-3


def test_cluster_then_qat_keeps_the_shared_values(built):
    """CQAT: every clustered layer found in the int8 flatbuffer with at most 16 values
    per output channel, and QAT fine-tuned (its epochs recorded)."""
    project, _, _ = built
    lock = json.loads((project.root / "cifar.lock").read_text())
    clustering = step_facts(lock, "cqat", "cluster")
    quantize = step_facts(lock, "cqat", "quantize")
    assert quantize["qat"]["epochs"] == 3
    composition = quantize["composition"]
    assert set(composition["layers"]) == set(clustering["layers"])
    for name, layer in composition["layers"].items():
        assert layer["preserved"] and layer["int8"]["unique_per_channel"] <= 16, (name, layer)


def test_qat_keeps_the_named_layer_in_float(built):
    """keep_float with qat: the layer is left out of fake quantization and of int8, so
    its weights stay float32 in the flatbuffer; the rest is int8."""
    from ai_edge_litert.interpreter import Interpreter

    project, _, accuracy = built
    lock = json.loads((project.root / "cifar.lock").read_text())
    facts = step_facts(lock, "keep", "quantize")
    assert any("dense_1" in kept for kept in facts["kept_float"]), facts
    interpreter = Interpreter(str(project.dist / "cifar" / "keep" / "model.tflite"))
    weights = {d["name"]: d["dtype"] for d in interpreter.get_tensor_details()
               if len(d["shape"]) == 2 and d["shape"][0] in (10, 64)}
    assert any("dense_1" in name and dtype == np.float32 for name, dtype in weights.items())
    assert any("dense/" in name and dtype == np.int8 for name, dtype in weights.items())
    assert accuracy["keep"] >= accuracy["int8"]
