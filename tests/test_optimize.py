"""prune, cluster and quantize on a tiny real model: each alone, chained, on an
integer-only device, and what the cache reuses when only quantization changes.

One session build serves the read-only tests; tests that change the recipe work on
a copy of it, cache included.
"""

from __future__ import annotations

import json
import shutil
import tarfile

import numpy as np
import pytest
from conftest import TINY_RECIPE, Project, executed, write_images

from edgebuild.cli import main

# The tiny project's recipe, with training data.
OPT_RECIPE = TINY_RECIPE.split("targets:")[0].replace("name: tiny", "name: opt") + """\
  train: {path: data/train.npz, loss: sparse_categorical_crossentropy, epochs: 1,
          batch_size: 8}
targets:
  pruned: {device: rpi4, quantize: false, prune: {sparsity: 0.5}, validate: false}
  oneshot: {device: rpi4, quantize: false, prune: {sparsity: 0.5, epochs: 0},
            validate: false}
  constant: {device: rpi4, quantize: false, prune: {sparsity: 0.5, schedule: constant},
             validate: false}
  clustered: {device: rpi4, quantize: false, cluster: {clusters: 4}, validate: false}
  chain: {device: rpi4, prune: {sparsity: 0.5}, cluster: {clusters: 4}}
  mcu: {device: mcu, prune: {sparsity: 0.5}, cluster: {clusters: 4}, validate: false}
  dynamic: {device: rpi4, quantize: {mode: dynamic}, validate: false}
  int16x8: {device: rpi4, quantize: {mode: int16x8}, validate: false}
  selective: {device: rpi4, quantize: {mode: int8, keep_float: {layers: [head]}},
              validate: false}
"""


LAYERS = ("conv_a", "conv_b", "head")


def make_small_cnn(path) -> None:
    """Small, but conv_b has more than the 1,024 weights below which the TFLite
    converter leaves a tensor in float under dynamic-range quantization."""
    import tf_keras as keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.layers.Input((16, 16, 3), name="image"),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv_a"),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv_b"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(4, activation="softmax", name="head"),
    ])
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)


@pytest.fixture(scope="session")
def opt_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("opt-assets")
    make_small_cnn(root / "model" / "tiny.keras")
    write_images(root / "data" / "calib", 8, seed=1)
    write_images(root / "data" / "val", 6, seed=2)
    rng = np.random.default_rng(3)
    np.savez(root / "data" / "train.npz", x=rng.integers(0, 256, (32, 16, 16, 3), np.uint8),
             y=rng.integers(0, 4, 32))
    (root / "labels.txt").write_text("a\nb\nc\nd\n")
    (root / "opt.yaml").write_text(OPT_RECIPE)
    return root


@pytest.fixture(scope="session")
def built_opt(opt_assets, tmp_path_factory) -> Project:
    root = tmp_path_factory.mktemp("opt-built") / "opt"
    shutil.copytree(opt_assets, root)
    project = Project(root, "opt.yaml")
    project.first_build = project.build()
    return project


def facts(project: Project, target: str, impl: str) -> dict:
    lock = json.loads(project.recipe.with_suffix(".lock").read_text())
    steps = [s for s in lock["targets"][target]["steps"] if s["impl"].startswith(impl + "@")]
    assert steps, f"no {impl} step recorded for {target}"
    return steps[-1]["facts"]


def ops_of(project: Project, target: str):
    from edgebuild.toolchains.tflite_inspect import read_ops

    return read_ops((project.dist / "opt" / target / "model.tflite").read_bytes())


def kernels(project: Project, target: str) -> dict:
    from edgebuild.toolchains.tflite_inspect import kernel_stats

    return kernel_stats(ops_of(project, target), LAYERS)


def test_prune_alone_fine_tuned(built_opt):
    pruned = facts(built_opt, "pruned", "prune.tfmot")
    assert pruned["fine_tuned"] is True
    assert set(pruned["layers"]) == set(LAYERS)
    assert all(layer["sparsity"] == 0.5 for layer in pruned["layers"].values())
    # ...and the zeros are really in the shipped float32 artifact.
    assert all(k["sparsity"] >= 0.5 for k in kernels(built_opt, "pruned").values())


def test_constant_schedule_prunes_a_short_fine_tune(built_opt):
    """4 steps, masks every 100: the first update must still happen."""
    assert facts(built_opt, "constant", "prune.tfmot")["sparsity"] == 0.5


def test_one_shot_pruning_warns_and_differs_from_fine_tuned(built_opt, capsys):
    oneshot = facts(built_opt, "oneshot", "prune.tfmot")
    assert oneshot["fine_tuned"] is False and oneshot["sparsity"] == 0.5
    dist = built_opt.dist / "opt"
    assert (dist / "oneshot" / "model.tflite").read_bytes() != \
        (dist / "pruned" / "model.tflite").read_bytes()
    assert main(["plan", str(built_opt.recipe), *built_opt.args()]) == 0
    err = capsys.readouterr().err
    line = OPT_RECIPE.splitlines().index(
        "  oneshot: {device: rpi4, quantize: false, prune: {sparsity: 0.5, epochs: 0},") + 1
    assert f"warning: {built_opt.recipe}:{line}:" in err
    assert "targets.oneshot.prune: prune runs one-shot, without fine-tuning, so accuracy may " \
           "drop" in err
    assert "targets.pruned" not in err  # fine-tuned: no warning


def test_cluster_alone(built_opt):
    clustered = facts(built_opt, "clustered", "cluster.tfmot")
    assert clustered["fine_tuned"] is True
    assert {n: s["unique"] <= 4 for n, s in clustered["layers"].items()} == \
        dict.fromkeys(LAYERS, True)
    assert all(k["unique_per_channel"] <= 4 for k in kernels(built_opt, "clustered").values())


def test_prune_cluster_int8_compose(built_opt):
    composition = facts(built_opt, "chain", "quantize.tflite")["composition"]
    assert composition["preserved"] is True
    for name in LAYERS:
        layer = composition["layers"][name]
        assert layer["float"]["unique"] <= 4 and layer["float"]["sparsity"] >= 0.5
        assert layer["int8"]["sparsity"] >= 0.5 and layer["int8"]["unique_per_channel"] <= 4
    # Measured again on the shipped artifact, independently of the step's own record.
    stats = kernels(built_opt, "chain")
    assert {s["type"] for s in stats.values()} == {"int8"}
    assert all(s["sparsity"] >= 0.5 and s["unique_per_channel"] <= 4 for s in stats.values())
    manifest = json.loads((built_opt.dist / "opt" / "chain" / "manifest.json").read_text())
    assert [c["kind"] for c in manifest["chain"]] == \
        ["convert", "prune", "cluster", "quantize", "baseline", "validate"]
    assert manifest["chain"][1]["facts"]["sparsity"] == 0.5
    assert manifest["reproducible"] == {"bytes": True}


def test_integer_only_target_ships_no_float_tensor(built_opt):
    from ai_edge_litert.interpreter import Interpreter

    assert facts(built_opt, "mcu", "quantize.tflite")["integer_only"]["float_ops"] == 0
    interpreter = Interpreter(str(built_opt.dist / "opt" / "mcu" / "model.tflite"))
    dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert dtypes <= {np.int8, np.int32}, dtypes


def test_integer_only_check_lists_a_planted_float_op(built_opt):
    """The selective target keeps its dense layer in float on purpose: the check that
    guards integer-only devices must name that op and its float tensors."""
    from edgebuild.errors import StepError
    from edgebuild.steps.quantize_tflite import _check_integer_only

    ops = ops_of(built_opt, "selective")
    assert "FULLY_CONNECTED" in {op.name for op in ops}
    with pytest.raises(StepError) as error:
        _check_integer_only(ops)
    message = str(error.value)
    assert "FULLY_CONNECTED" in message and "float32" in message
    assert "CONV_2D" not in message  # the rest is int8
    assert facts(built_opt, "selective", "quantize.tflite")["kept_float"]


def test_quantize_modes_alone(built_opt):
    dynamic = {name: s["type"] for name, s in kernels(built_opt, "dynamic").items()}
    assert dynamic["conv_b"] == "int8"  # int8 weights (small tensors stay float)...
    dynamic_io = {t.type for op in ops_of(built_opt, "dynamic") for t in op.outputs}
    assert "FLOAT32" in dynamic_io  # ...float activations
    activations = {t.type for op in ops_of(built_opt, "int16x8") for t in op.outputs
                   if op.name == "CONV_2D"}
    assert activations == {"INT16"}


def test_sizes_recorded_raw_and_gzip(built_opt):
    size = facts(built_opt, "chain", "quantize.tflite")["size"]
    model = built_opt.dist / "opt" / "chain" / "model.tflite"
    assert size["bytes"] == model.stat().st_size and 0 < size["gzip_bytes"] < size["bytes"]
    manifest = json.loads((model.parent / "manifest.json").read_text())
    assert manifest["artifact"]["gzip_bytes"] == size["gzip_bytes"]
    archive = built_opt.dist / "opt" / "chain.tar.gz"
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == \
            ["chain/labels.txt", "chain/manifest.json", "chain/model.tflite"]
        assert {m.mtime for m in tar.getmembers()} == {0}


def test_changing_only_quantize_reruns_quantize_and_after(built_opt, tmp_path):
    project = built_opt.copy(tmp_path / "copy")
    text = project.recipe.read_text().replace(
        "  chain: {device: rpi4, prune: {sparsity: 0.5}, cluster: {clusters: 4}}",
        "  chain: {device: rpi4, prune: {sparsity: 0.5}, cluster: {clusters: 4},\n"
        "          quantize: {mode: int16x8}}")
    project.recipe.write_text(text)
    code, result = project.run("build", "--target", "chain")
    assert code == 0, project.last_stderr
    assert executed(result) == [("bundle", ("chain",)), ("quantize", ("chain",)),
                                ("validate", ("chain",))]


def test_fine_tuned_chain_is_byte_identical_in_a_fresh_cache(built_opt, tmp_path):
    project = built_opt.copy(tmp_path / "fresh")
    shutil.rmtree(project.cache)
    shutil.rmtree(project.dist)
    assert project.run("build", "--target", "chain")[0] == 0, project.last_stderr
    for name in ("model.tflite", "manifest.json"):
        assert (project.dist / "opt" / "chain" / name).read_bytes() == \
            (built_opt.dist / "opt" / "chain" / name).read_bytes(), name


PRELU_RECIPE = """\
name: prelu
source: {path: prelu.keras}
task: classification
data:
  preprocess: {resize: [16, 16], scale: 0.00392156862745098}
  validation: {path: data/val}
targets:
  small: {device: rpi4, quantize: false, prune: {sparsity: 0.5}, validate: false}
"""


def test_unsupported_layer_is_named_with_the_option_that_excludes_it(opt_assets, tmp_path,
                                                                      capsys):
    import tf_keras as keras

    root = tmp_path / "prelu"
    shutil.copytree(opt_assets / "data", root / "data")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Input((16, 16, 3)),
                              keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.PReLU(name="act"),
                              keras.layers.GlobalAveragePooling2D(name="pool"),
                              keras.layers.Dense(4, name="head")])
    model.save(root / "prelu.keras")
    (root / "prelu.yaml").write_text(PRELU_RECIPE)
    project = Project(root, "prelu.yaml")
    # Found in the model's config when the recipe loads, before any work.
    assert main(["all", str(project.recipe), *project.args()]) == 2
    err = capsys.readouterr().err
    assert "targets.small.prune: tfmot cannot prune 1 layer(s) of this model: 'act' (PReLU)" \
        in err
    assert "`prune: {exclude: [act]}`" in err
    assert "Traceback" not in err and not project.cache.exists()
    (root / "prelu.yaml").write_text(PRELU_RECIPE.replace("sparsity: 0.5}",
                                                          "sparsity: 0.5, exclude: [PReLU]}"))
    result = project.build()
    assert result["targets"]["small"]["status"] == "ok"
    pruned = facts(project, "small", "prune.tfmot")
    assert set(pruned["layers"]) == {"conv", "head"}


@pytest.mark.parametrize("change, message", [
    ("  pruned: {device: rpi4, quantize: false, prune: {sparsity: 0.5, schedule: polynomial},"
     " validate: false}\n",
     "targets.pruned.prune.schedule: a polynomial schedule ramps sparsity up while fine-tuning"),
    ("  pruned: {device: rpi4, quantize: false, prune: {structure: '2:4', sparsity: 0.7},"
     " validate: false}\n",
     "targets.pruned.prune.sparsity: structure 2:4 fixes the sparsity at 0.5"),
    ("  pruned: {device: rpi4, quantize: false, prune: {epochs: 3}, validate: false}\n",
     "targets.pruned.prune.epochs: prune fine-tunes for 3 epochs on data.train, which the "
     "recipe does not give"),
    ("  mcu: {device: mcu, quantize: {keep_float: {layers: [head]}}, validate: false}\n",
     "targets.mcu.quantize.keep_float: device 'mcu' runs integer ops only"),
    ("  mcu: {device: mcu, quantize: {io: float32}, validate: false}\n",
     "targets.mcu.quantize.io: device 'mcu' runs integer ops only, so float32 input and output"),
])
def test_optimization_recipe_errors(opt_assets, tmp_path, capsys, change, message):
    shutil.copytree(opt_assets, tmp_path / "opt")
    recipe = tmp_path / "opt" / "opt.yaml"
    head = OPT_RECIPE.split("  train:")[0]
    recipe.write_text(head + "targets:\n" + change)
    assert main(["plan", str(recipe), "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err


def test_prune_needs_a_keras2_source(tmp_path, capsys):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    (tmp_path / "r.yaml").write_text(
        "name: r\nsource: {path: m.onnx}\ntask: classification\n"
        "targets:\n  gpu: {device: cloud-gpu, cluster: {clusters: 8}, validate: false}\n")
    assert main(["plan", str(tmp_path / "r.yaml"), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "targets.gpu.cluster: cluster rewrites Keras 2 (tf_keras) models with tfmot, and " \
           "the source is an ONNX model" in err


def test_cloud_gpu_clusters_only_given_training_data(opt_assets, tmp_path):
    from edgebuild.recipe import load_recipe

    shutil.copytree(opt_assets, tmp_path / "opt")
    recipe = tmp_path / "opt" / "opt.yaml"
    recipe.write_text(OPT_RECIPE.split("targets:")[0] + "targets:\n  server: {device: cloud-gpu}\n")
    assert set(load_recipe(recipe).targets["server"].steps) >= {"cluster", "quantize"}
    without = OPT_RECIPE.split("  train:")[0] + "targets:\n  server: {device: cloud-gpu}\n"
    recipe.write_text(without)
    assert "cluster" not in load_recipe(recipe).targets["server"].steps
