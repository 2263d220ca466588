"""Mistakes that the model file itself reveals are recipe errors when the recipe loads:
exit 2, located file:line:col and key, before minutes of conversion, and read from the
model file without TensorFlow, Keras or ONNX Runtime (plans stay light).

Every test plans only, in a fresh interpreter run with -X importtime, so that what
planning imported can be checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_images

HEAVY = {"tensorflow", "keras", "tf_keras", "tensorflow_model_optimization", "onnxruntime",
         "onnx"}


def at(text: str, token: str) -> str:
    """'line:column' of the first `token` in `text` (1-based, like editors)."""
    index = text.index(token)
    line = text.count("\n", 0, index) + 1
    return f"{line}:{index - (text.rfind(chr(10), 0, index) + 1) + 1}"


def plan(recipe: Path, text: str) -> tuple[int, str, set[str]]:
    """Write `text` to `recipe` and plan it: (exit code, messages, top-level packages
    the planning process imported)."""
    recipe.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "edgebuild", "plan", str(recipe),
         "--cache-dir", str(recipe.parent / "cache")],
        capture_output=True, text=True, cwd=recipe.parent, timeout=120)
    imported, messages = set(), []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:"):
            imported.add(line.rsplit("|", 1)[1].strip().split(".")[0])
        else:
            messages.append(line)
    assert "Traceback" not in proc.stderr
    return proc.returncode, "\n".join(messages), imported


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Tiny tf_keras models, as .keras and .h5, and images to plan with."""
    import tf_keras as keras

    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    # Layers tfmot refuses to prune (Rescaling, Normalization, PReLU) or to cluster
    # (PReLU, which has weights), one of them inside a nested model; two outputs.
    inner = keras.Sequential([keras.layers.Input((16, 16, 4)), keras.layers.Conv2D(4, 1),
                              keras.layers.PReLU(name="act")], name="inner")
    image = keras.layers.Input((16, 16, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(image)
    x = keras.layers.Normalization(mean=0.5, variance=0.25, name="norm")(x)
    x = inner(keras.layers.Conv2D(4, 3, padding="same", name="conv")(x))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    two = keras.Model(image, [keras.layers.Dense(4, activation="softmax", name="probs")(x),
                              keras.layers.Dense(2, name="aux")(x)])
    for suffix in (".keras", ".h5"):
        two.save(root / f"mixed{suffix}")
    make_onnx(root / "nchw.onnx", ["N", 3, "H", "W"], ["scores"])
    make_onnx(root / "two.onnx", [1, 3, 16, 16], ["scores", "features"])
    write_images(root / "val", 4, seed=1, size=16)
    x = np.random.default_rng(2).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    np.savez(root / "labelled.npz", x=x, y=np.arange(6) % 4)
    np.savez_compressed(root / "unlabelled.npz", x=x)
    np.savez(root / "misnamed.npz", images=x)
    return root


def make_onnx(path: Path, dims: list, outputs: list[str]) -> None:
    """An image model: x -> GlobalAveragePool -> Flatten, as each output."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["pooled"])]
    nodes += [helper.make_node("Flatten", ["pooled"], [name]) for name in outputs]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def project(models: Path, tmp_path: Path) -> Path:
    """A folder with the models and images, for one recipe."""
    for item in models.iterdir():
        (tmp_path / item.name).symlink_to(item)
    return tmp_path / "recipe.yaml"


# -- 1. layers tfmot cannot prune or cluster ----------------------------------------

LAYERS_RECIPE = """\
name: layers
source: {path: mixed.keras}
task: detection
data:
  preprocess: {resize: [16, 16]}
  validation: {path: val}
targets:
  pruned: {device: rpi4, quantize: false, prune: {sparsity: 0.5}}
  clustered: {device: rpi4, quantize: false, cluster: {clusters: 4}}
"""
FIXED = ("  fixed: {device: rpi4, quantize: false, prune: {exclude: [Rescaling, Normalization, "
         "PReLU]}, cluster: {exclude: [act]}}\n")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_layers_tfmot_refuses_are_recipe_errors(models, tmp_path, suffix):
    recipe = project(models, tmp_path)
    text = (LAYERS_RECIPE + FIXED).replace("mixed.keras", f"mixed{suffix}")
    code, err, imported = plan(recipe, text)
    assert code == 2, err
    assert f"{recipe}:{at(text, '{sparsity: 0.5}')}: targets.pruned.prune: tfmot cannot prune " \
           "3 layer(s) of this model: 'rescale' (Rescaling), 'norm' (Normalization), " \
           "'act' (PReLU). Leave them out with `prune: {exclude: [rescale, norm, act]}`" in err
    assert "or set `prune: false`" in err
    # Clustering takes layers without trainable weights, so only PReLU is in the way.
    assert f"{recipe}:{at(text, '{clusters: 4}')}: targets.clustered.cluster: tfmot cannot " \
           "cluster 1 layer(s) of this model: 'act' (PReLU)." in err
    assert "targets.fixed" not in err
    assert not imported & HEAVY, imported & HEAVY

    # Leaving them out (by type or name) plans; nothing else of the model is refused.
    code, err, _ = plan(recipe, LAYERS_RECIPE.split("targets:")[0] + "targets:\n" + FIXED)
    assert code == 0, err


def test_layers_qat_cannot_train_quantized_are_named_at_plan_time(models, tmp_path):
    """Quantization-aware training wraps what tfmot's 8-bit registry knows; the rest
    trains in float and is calibrated after training. The plan says which layers, and
    how to keep them in float instead, without importing TensorFlow."""
    recipe = project(models, tmp_path)
    text = LAYERS_RECIPE.replace("  validation: {path: val}\n", "  validation: {path: val}\n"
                                 "  calibration: {path: val}\n  train: {path: val, loss: "
                                 "distill}\n").split("targets:")[0] + \
        "targets:\n  qat: {device: rpi4, quantize: {qat: {epochs: 1}, keep_float: " \
        "{layers: [act]}}}\n"
    code, err, imported = plan(recipe, text)
    assert code == 0, err
    assert f"{at(text, '{epochs: 1}')}: targets.qat.quantize.qat: tfmot has no " \
           "quantization-aware training rule for 'rescale' (Rescaling), 'norm' " \
           "(Normalization):" in err
    assert "list them in quantize.keep_float.layers" in err
    assert not imported & HEAVY, imported & HEAVY


def test_an_unchanged_h5_model_is_checked_once(models, tmp_path):
    """h5py costs a no-op plan 0.2 s or more: a recipe that passed with this .h5 file
    (by its stat, as the hashing stat cache keys files) is not checked again."""
    recipe = project(models, tmp_path)
    (tmp_path / "mixed.h5").unlink()
    shutil.copy(models / "mixed.h5", tmp_path / "mixed.h5")
    text = LAYERS_RECIPE.replace("mixed.keras", "mixed.h5").split("targets:")[0] + \
        "targets:\n" + FIXED
    runs = [plan(recipe, text) for _ in range(2)]
    assert [code for code, _, _ in runs] == [0, 0], runs
    assert "h5py" in runs[0][2] and "h5py" not in runs[1][2]
    os.utime(tmp_path / "mixed.h5", ns=(0, 0))  # a changed file is checked again
    code, err, imported = plan(recipe, text)
    assert code == 0 and "h5py" in imported, err


def test_include_and_exclude_must_name_layers_of_the_model(models, tmp_path):
    recipe = project(models, tmp_path)
    text = LAYERS_RECIPE.replace("{sparsity: 0.5}", "{include: [conv*, heads]}")
    code, err, _ = plan(recipe, text)
    assert code == 2
    assert f"{recipe}:{at(text, '[conv*, heads]')}: targets.pruned.prune.include: 'heads' " \
           "matches no layer name or type of this model (its layers: rescale, norm, conv, " in err


# -- 2. a preprocessing layout or size the model does not take ----------------------

LAYOUT_RECIPE = """\
name: layout
source: {path: mixed.keras}
task: detection
data:
  preprocess: {resize: [16, 16], layout: NCHW}
  validation: {path: val}
targets:
  rpi4: {device: rpi4, quantize: false}
"""


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_layout_the_keras_model_does_not_take_is_a_recipe_error(models, tmp_path, suffix):
    recipe = project(models, tmp_path)
    text = LAYOUT_RECIPE.replace("mixed.keras", f"mixed{suffix}")
    code, err, imported = plan(recipe, text)
    assert code == 2
    assert f"{recipe}:{at(text, 'NCHW')}: data.preprocess.layout: layout is NCHW, but the " \
           "model's input 'image' has shape [None, 16, 16, 3], channels last (NHWC); set " \
           "layout: NHWC" in err
    assert not imported & HEAVY, imported & HEAVY

    # The right layout, the wrong size: resize must make what the model takes.
    text = text.replace("[16, 16], layout: NCHW", "[32, 24], layout: NHWC")
    code, err, _ = plan(recipe, text)
    assert code == 2
    assert f"{recipe}:{at(text, '[32, 24]')}: data.preprocess.resize: resize [32, 24] makes " \
           "images 32 high and 24 wide, and the model's input 'image' takes 16 by 16 " \
           "(shape [None, 16, 16, 3]); set resize: [16, 16]" in err


def test_a_layout_the_onnx_model_does_not_take_is_a_recipe_error(models, tmp_path):
    recipe = project(models, tmp_path)
    # No layout: NHWC, the default. The model's height and width are dynamic, so any
    # size goes, until source.input_shapes fixes them.
    text = LAYOUT_RECIPE.replace("{path: mixed.keras}", "{path: nchw.onnx}").replace(
        ", layout: NCHW", "").replace("device: rpi4", "device: x86-cpu")
    code, err, imported = plan(recipe, text)
    assert code == 2
    assert f"{recipe}:{at(text, 'preprocess')}: data.preprocess.layout: layout is NHWC (the " \
           "default), but the model's input 'x' has shape [None, 3, None, None], channels " \
           "first (NCHW); set layout: NCHW" in err
    assert not imported & HEAVY, imported & HEAVY

    text = text.replace("{path: nchw.onnx}", "{path: nchw.onnx, input_shapes: {x: [1, 3, 8, 8]}}")
    text = text.replace("[16, 16]}", "[16, 16], layout: NCHW}")
    code, err, _ = plan(recipe, text)
    assert code == 2
    assert f"{recipe}:{at(text, '[16, 16]')}: data.preprocess.resize: resize [16, 16] makes " \
           "images 16 high and 16 wide, and the model's input 'x' takes 8 by 8 (shape " \
           "[1, 3, 8, 8]); set resize: [8, 8]" in err
    code, err, _ = plan(recipe, text.replace("[16, 16]", "[8, 8]"))
    assert code == 0, err


# -- 3. a classifier with several outputs --------------------------------------------

OUTPUTS_RECIPE = """\
name: outputs
source: {path: mixed.keras}
task: classification
data:
  preprocess: {resize: [16, 16]}
  validation: {path: val}
targets:
  rpi4: {device: rpi4, quantize: false}
"""


@pytest.mark.parametrize("suffix", [".keras", ".h5", ".onnx"])
def test_a_classifier_with_several_outputs_names_the_one_with_class_scores(models, tmp_path,
                                                                           suffix):
    recipe = project(models, tmp_path)
    text = OUTPUTS_RECIPE.replace("mixed.keras", f"mixed{suffix}")
    names = "'probs', 'aux'"
    if suffix == ".onnx":
        text = text.replace("mixed.onnx", "two.onnx").replace("device: rpi4", "device: x86-cpu")
        text = text.replace("[16, 16]}", "[16, 16], layout: NCHW}")
        names = "'scores', 'features'"
    code, err, imported = plan(recipe, text)
    assert code == 2
    assert f"{recipe}:{at(text, 'classification')}: task: the model has 2 outputs ({names}); " \
           "name the one holding the class scores with `classifier_output: NAME`" in err
    assert not imported & HEAVY, imported & HEAVY

    text = text.replace("task: classification\n", "task: classification\nclassifier_output: "
                                                   "logits\n")
    code, err, _ = plan(recipe, text)
    assert code == 2
    assert f"{recipe}:{at(text, 'logits')}: classifier_output: 'logits' is not an output of " \
           f"the model (its outputs: {names})" in err

    code, err, _ = plan(recipe, text.replace("logits", names.split("'")[1]))
    assert code == 0, err


def test_classifier_output_is_for_classifiers(models, tmp_path):
    recipe = project(models, tmp_path)
    text = OUTPUTS_RECIPE.replace("task: classification", "task: detection\nclassifier_output: "
                                                          "probs")
    code, err, _ = plan(recipe, text)
    assert code == 2
    assert f"{recipe}:{at(text, 'probs')}: classifier_output: classifier_output is for " \
           "classification" in err


# -- 4. counts beyond the data, labels the recipe needs ------------------------------

DATA_RECIPE = """\
name: data
source: {path: mixed.keras}
task: classification
classifier_output: probs
data:
  preprocess: {resize: [16, 16]}
  calibration: {path: val, count: 10}
  validation: {path: labelled.npz, count: 8}
  train: {path: labelled.npz, loss: sparse_categorical_crossentropy, count: 7}
targets:
  rpi4: {device: rpi4, prune: {include: [conv]}}
"""


def test_counts_beyond_the_data_are_recipe_errors(models, tmp_path):
    recipe = project(models, tmp_path)
    code, err, imported = plan(recipe, DATA_RECIPE)
    assert code == 2
    assert f"{recipe}:{at(DATA_RECIPE, '10}')}: data.calibration.count: count is 10, but 'val' " \
           "holds 4 images; lower count, or drop it to use them all" in err
    assert f"{recipe}:{at(DATA_RECIPE, '8}')}: data.validation.count: count is 8, but " \
           "'labelled.npz' holds 6 samples (the length of its x)" in err
    assert f"{recipe}:{at(DATA_RECIPE, '7}')}: data.train.count: count is 7, but " in err
    assert not imported & HEAVY, imported & HEAVY

    fixed = DATA_RECIPE.replace("count: 10", "count: 4").replace("count: 8", "count: 6")
    code, err, _ = plan(recipe, fixed.replace(", count: 7", ""))
    assert code == 0, err


def test_labels_the_recipe_needs_are_recipe_errors(models, tmp_path):
    recipe = project(models, tmp_path)
    text = DATA_RECIPE.replace(", count: 10", "").replace(", count: 8", "").replace(
        ", count: 7", "").replace("labelled.npz", "unlabelled.npz").replace(
        "[conv]}}", "[conv]}, budget: {max_drop_points: 1}}")
    code, err, imported = plan(recipe, text)
    assert code == 2
    # A drop in top-1 needs labels to measure it on...
    assert f"{recipe}:{at(text, '1}}')}: targets.rpi4.budget.max_drop_points: an accuracy " \
           "drop needs task metrics, which need labelled data.validation (an .npz with y, " \
           "or images in class sub-folders)" in err
    # ...and so does fine-tuning with a classification loss.
    assert f"{recipe}:{at(text, 'sparse_categorical')}: data.train.loss: loss " \
           "sparse_categorical_crossentropy needs labels, and 'unlabelled.npz' has none" in err
    assert not imported & HEAVY, imported & HEAVY

    # Without a drop budget of its own, the device's default one is left out, as for a
    # detector without annotations; distillation needs no labels.
    code, err, _ = plan(recipe, text.replace(", budget: {max_drop_points: 1}", "").replace(
        "sparse_categorical_crossentropy", "distill"))
    assert code == 0, err

    code, err, _ = plan(recipe, text.replace("{path: unlabelled.npz}", "{path: misnamed.npz}"))
    assert code == 2
    assert "data.validation.path: 'misnamed.npz' has no array x (its arrays: images); an " \
           ".npz dataset keeps its samples in x, and labels in y" in err


@pytest.mark.slow
def test_metrics_and_agreement_use_the_named_output(tmp_path):
    """A real build (ONNX Runtime only): top-1 is computed on the named output."""
    import json

    import onnx
    from conftest import Project
    from onnx import TensorProto, helper, numpy_helper

    # probs = softmax(mean colour @ w), and a decoy output listed first: the mean colour.
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["colour"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["colour", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"])],
        "two", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 16, 16, 3])],
        [helper.make_tensor_value_info("colour", TensorProto.FLOAT, [1, 3]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                ir_version=8), tmp_path / "two.onnx")
    x = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    colour = (x / 255).mean(axis=(1, 2))
    y = np.argmax(colour @ w, axis=1)  # the labels probs predicts
    assert np.mean(np.argmax(colour, axis=1) == y) < 0.5  # and the decoy does not
    np.savez(tmp_path / "val.npz", x=x, y=y)
    (tmp_path / "two.yaml").write_text(OUTPUTS_RECIPE.replace("mixed.keras", "two.onnx")
                                       .replace("task: classification", "task: classification"
                                                "\nclassifier_output: probs")
                                       .replace("[16, 16]}", "[16, 16], scale: "
                                                "0.00392156862745098}")
                                       .replace("{path: val}", "{path: val.npz}")
                                       .replace("device: rpi4", "device: x86-cpu"))
    built = Project(tmp_path, "two.yaml").build()
    assert built["targets"]["rpi4"]["status"] == "ok"
    report = json.loads((tmp_path / "dist" / "outputs" / "report.json").read_text())
    assert report["baseline"]["metrics"]["top1"] == 1.0
    (target,) = report["targets"]
    assert target["metrics"]["top1"] == 1.0
    assert target["fidelity"]["agreement_label"] == "top-1 agreement"
    assert target["fidelity"]["agreement"] == 1.0


@pytest.mark.slow
def test_plan_and_step_judge_layers_as_tfmot_does(tmp_path):
    """tfmot_layers copies tfmot's registries, which planning cannot import: its lists
    are tfmot's, and on real layers the plan (from the config) and the step (from the
    loaded layers) never contradict tfmot."""
    import json
    import zipfile

    import tf_keras as keras
    from tensorflow_model_optimization.python.core.clustering.keras.clustering_registry import (
        ClusteringRegistry as Clustering,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (  # noqa: E501
        Default8BitQuantizeRegistry,
    )
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import (
        PruneRegistry as Pruning,
    )

    from edgebuild.toolchains import tfmot, tfmot_layers
    from edgebuild.toolchains.keras_files import config_layers

    def names(classes) -> set[str]:
        return {cls.__name__ for cls in classes} - {"type"}  # tfmot's Rescaling slip

    assert names(Pruning._LAYERS_WEIGHTS_MAP) == tfmot_layers.PRUNE_LAYERS
    assert names(Pruning._RNN_LAYERS) == tfmot_layers.PRUNE_RNN_LAYERS
    assert names(Pruning._RNN_CELLS_WEIGHTS_MAP) == tfmot_layers.PRUNE_RNN_CELLS
    assert names([*Clustering._LAYERS_WEIGHTS_MAP, *Clustering._SUPPORTED_MHA_LAYERS]) == \
        tfmot_layers.CLUSTER_LAYERS
    assert names(Clustering._SUPPORTED_RNN_LAYERS) == tfmot_layers.CLUSTER_RNN_LAYERS
    assert names(Clustering._SUPPORTED_RNN_CELLS) == tfmot_layers.CLUSTER_RNN_CELLS
    assert names(Default8BitQuantizeRegistry()._layer_quantize_map) == tfmot_layers.QAT_LAYERS

    layers, seq = keras.layers, keras.layers.Input((6, 8))
    frozen = layers.Dense(3, name="frozen")
    frozen.trainable = False
    flat = layers.Flatten
    outputs = [
        layers.LSTM(4)(seq), layers.Bidirectional(layers.GRU(4))(seq),
        layers.RNN(layers.StackedRNNCells([layers.SimpleRNNCell(4), layers.GRUCell(4)]))(seq),
        flat()(layers.PReLU()(layers.LayerNormalization()(seq))),
        flat()(layers.TimeDistributed(layers.Dense(3))(seq)),
        flat()(layers.Conv1D(4, 3)(layers.Rescaling(2.0)(seq))),
        frozen(flat()(layers.Dropout(0.1)(seq))), flat()(layers.DepthwiseConv1D(3)(seq)),
        layers.EinsumDense("ab,bc->ac", output_shape=3)(flat()(seq)),
        flat()(layers.Attention()([seq, seq])),
    ]
    model = keras.Model(seq, outputs)
    model.save(tmp_path / "m.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("config.json"))
    planned = {layer.name: layer for layer in config_layers(config)}
    for layer in tfmot.leaf_layers(model):
        truth = {"prune": Pruning.supports(layer), "cluster": Clustering.supports(layer)}
        trained_quantized = Default8BitQuantizeRegistry().supports(layer) or \
            isinstance(layer, keras.layers.BatchNormalization)
        left_out = tfmot_layers.not_trained_quantized([planned[layer.name]], ())
        assert (not left_out) == trained_quantized, layer
        for slot, supported in truth.items():
            assert tfmot_layers.supports(slot, tfmot.described(layer)) == supported, layer
            assert tfmot_layers.supports(slot, planned[layer.name]) in (None, supported), layer
