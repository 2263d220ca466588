"""One Keras model, saved as .h5 and as a SavedModel, gives the same int8 ONNX.

tf2onnx takes the two by different routes (from_keras, from_function), and the
SavedModel route could leave BatchNorms as separate Mul and Add nodes, which static
int8 then quantizes one by one. convert.onnx cleans both up (quant_pre_process, then
folding what is left into Conv), so the routes must meet: same ops, same accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, Project
from test_cifar_acceptance import split

CIFAR = SHARED / "data" / "cifar10-test-1k.npz"
SCALE = 0.00392156862745098

RECIPE = """\
name: {name}
source: {{path: {source}}}
task: classification
data:
  preprocess: {{scale: {scale}}}
  calibration: {{path: train.npz, count: 100}}
  validation: {{path: val.npz}}
targets:
  x86: {{device: x86-cpu}}
"""


def train_bn_cnn(x: np.ndarray, y: np.ndarray):
    """Conv -> BatchNorm -> ReLU twice, trained briefly, so that the BatchNorms'
    statistics are the data's rather than their initial (identity) values. Momentum
    0.9: with Keras's 0.99 the moving statistics, which inference uses, still lag
    far behind after 150 steps (held-out top-1 ~13% instead of ~27%)."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    layers = keras.layers

    def conv_bn_relu(filters: int) -> list:
        return [layers.Conv2D(filters, 3, padding="same", use_bias=False),
                layers.BatchNormalization(momentum=0.9), layers.ReLU()]

    model = keras.Sequential([
        layers.Input((32, 32, 3), name="image"), *conv_bn_relu(8), layers.MaxPooling2D(),
        *conv_bn_relu(16), layers.GlobalAveragePooling2D(),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x.astype(np.float32) * np.float32(SCALE), y, batch_size=32, epochs=8, verbose=0)
    return model


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def lock_steps(project: Project, name: str) -> dict[str, dict]:
    lock = json.loads((project.root / f"{name}.lock").read_text())
    return {s["kind"]: s for s in lock["targets"]["x86"]["steps"]}


def validate_report(project: Project, name: str) -> dict:
    from edgebuild.cache import Cache

    cache = Cache(project.cache)
    entry = cache.entry(lock_steps(project, name)["validate"]["key"])
    return json.loads(cache.read_blob(entry.outputs["report"].digest))


def test_h5_and_saved_model_give_the_same_int8_onnx(tmp_path):
    if not CIFAR.exists():
        pytest.skip("needs the labelled CIFAR-10 sample ../shared/data/cifar10-test-1k.npz "
                    "(absent)")
    import tensorflow as tf

    with np.load(CIFAR) as archive:
        images, labels = archive["x"], archive["y"].astype(np.int64)
    train, held_out = split(labels, 60)  # 600 to train and calibrate on, 400 held out
    np.savez(tmp_path / "train.npz", x=images[train], y=labels[train])
    np.savez(tmp_path / "val.npz", x=images[held_out], y=labels[held_out])
    model = train_bn_cnn(images[train], labels[train])
    model.save(tmp_path / "model.h5")
    tf.saved_model.save(model, str(tmp_path / "saved"))

    results = {}
    for name, source in (("h5", "model.h5"), ("saved", "saved")):
        (tmp_path / f"{name}.yaml").write_text(RECIPE.format(name=name, source=source, scale=SCALE))
        project = Project(tmp_path, f"{name}.yaml")
        assert project.build()["targets"]["x86"]["status"] == "ok"
        steps = lock_steps(project, name)
        results[name] = {
            "clean_up": steps["convert"]["facts"],
            "int8": op_counts(tmp_path / "dist" / name / "x86" / "model.onnx"),
            "top1": validate_report(project, name)["metrics"]["top1"],
        }
    print(f"\nroute parity: {json.dumps(results)}")

    h5, saved = results["h5"], results["saved"]
    for route in (h5, saved):  # the BatchNorms live in the Convs, not beside them
        facts = route["clean_up"]
        assert facts["nodes"] <= facts["nodes_before"], facts
        assert "Mul" not in route["int8"] and "BatchNormalization" not in route["int8"], route
        assert route["int8"]["QuantizeLinear"] > 0, route
    assert h5["int8"] == saved["int8"]
    assert abs(h5["top1"] - saved["top1"]) * 100 <= 0.5, results


def make_conv_affine(path: Path, shared_output: bool = False) -> None:
    """Conv -> Mul(scale, conv) -> Add(conv, [shift]): a lowered BatchNorm in the forms
    ONNX Runtime's own fusions skip (constant first, a one-element shift). With
    `shared_output` the Conv's output is a graph output too, so folding is not exact."""
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, (1, 4, 1, 1)).astype(np.float32),
                                     "scale"),
             numpy_helper.from_array(np.array([0.25], np.float32), "shift")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["scale", "c"], ["m"], name="bn_mul"),
             helper.make_node("Add", ["m", "shift"], ["a"], name="bn_add"),
             helper.make_node("Relu", ["a"], ["y"], name="relu")]
    outputs = [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])]
    if shared_output:
        outputs.append(helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1, 4, 8, 8]))
    graph = helper.make_graph(
        nodes, "conv_affine",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])], outputs,
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.mark.parametrize("shared_output", [False, True])
def test_clean_up_folds_a_lowered_batchnorm_into_conv_only_where_exact(tmp_path,
                                                                       shared_output):
    import onnx
    import onnxruntime

    from edgebuild.toolchains.onnx_tools import clean_up

    make_conv_affine(tmp_path / "in.onnx", shared_output)
    facts = clean_up(onnx.load(str(tmp_path / "in.onnx")), tmp_path / "out.onnx")

    if shared_output:  # the Conv's own output is still needed: nothing folds
        assert facts["folded_into_conv"] == 0 and facts["removed_ops"] == {}, facts
    else:
        assert facts == {"nodes_before": 4, "nodes": 2, "removed_ops": {"Add": 1, "Mul": 1},
                         "added_ops": {}, "folded_into_conv": 2}
        assert op_counts(tmp_path / "out.onnx") == {"Conv": 1, "Relu": 1}
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    before, after = (onnxruntime.InferenceSession(str(tmp_path / p)).run(["y"], {"x": x})[0]
                     for p in ("in.onnx", "out.onnx"))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
