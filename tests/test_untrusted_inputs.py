"""Damaged or foreign model files get a clear, located error, not a toolchain's
traceback: before anything runs where a cheap look tells, in the step otherwise."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from conftest import TINY_RECIPE

from edgebuild.errors import StepError
from edgebuild.toolchains.runtimes import LiteRTModel, OnnxModel


def damaged(root: Path, kind: str) -> str:
    """Write a damaged source of `kind`; return its path relative to the recipe."""
    good = (root / "model" / "tiny.keras").read_bytes()
    if kind == "truncated.keras":
        (root / kind).write_bytes(good[: len(good) // 2])
    elif kind == "zip-without-config.keras":
        import zipfile

        with zipfile.ZipFile(root / kind, "w") as archive:
            archive.writestr("weights.h5", b"x")
    elif kind == "bad-crc.keras":  # a flipped byte inside the archive's config.json
        import zipfile

        data = bytearray(good)
        info = zipfile.ZipFile(root / "model" / "tiny.keras").getinfo("config.json")
        data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 5] ^= 0xFF
        (root / kind).write_bytes(bytes(data))
    elif kind == "random.h5":
        (root / kind).write_bytes(os.urandom(4096))
    elif kind == "empty.onnx":
        (root / kind).write_bytes(b"")
    elif kind == "not-a-savedmodel":
        (root / kind).mkdir()
        (root / kind / "variables").mkdir()
    elif kind == "folder.keras":
        (root / kind).mkdir()
    elif kind == "huge.onnx":
        sparse(root / kind, 2 ** 31 + 1)
    elif kind in ("huge-savedmodel", "empty-savedmodel"):
        (root / kind / "variables").mkdir(parents=True)
        sparse(root / kind / "saved_model.pb", 0 if kind.startswith("empty") else 2 ** 31)
    return kind


def sparse(path: Path, size: int) -> None:
    """A file of `size` bytes that takes no disk space: an oversized model, cheaply."""
    with open(path, "wb") as handle:
        handle.truncate(size)


@pytest.mark.parametrize("kind, message", [
    ("truncated.keras", "is not a .keras archive (no zip directory: truncated"),
    ("zip-without-config.keras", "a zip file without config.json"),
    ("bad-crc.keras", "'bad-crc.keras' is damaged: its config.json cannot be read (Bad CRC-32"),
    ("random.h5", "is not an HDF5 file"),
    ("empty.onnx", "'empty.onnx' is empty"),
    ("not-a-savedmodel", "has no saved_model.pb"),
    ("folder.keras", "is a folder"),
    ("huge.onnx", "'huge.onnx' is 2.0 GiB; ONNX files over 2 GiB must keep their weights as "
                  "external data"),
    ("huge-savedmodel", "'huge-savedmodel/saved_model.pb' is 2.0 GiB, past the 2 GiB a "
                        "protocol buffer can hold"),
    ("empty-savedmodel", "'empty-savedmodel/saved_model.pb' is empty"),
])
def test_damaged_sources_are_recipe_errors_at_source_path(tiny, kind, message):
    path = damaged(tiny.root, kind)
    recipe = TINY_RECIPE.replace("model/tiny.keras", path)
    if kind.endswith(".onnx"):
        recipe = recipe.replace("{device: rpi4}", "{device: x86-cpu}").replace(
            "{device: android-gpu}", "{device: cloud-gpu}")
    if kind == "folder.keras" or "savedmodel" in kind:  # say what it should be
        fmt = "keras" if kind == "folder.keras" else "saved_model"
        recipe = recipe.replace(f"{{path: {kind}}}", f"{{path: {kind}, format: {fmt}}}")
    tiny.recipe.write_text(recipe)
    code, _ = tiny.run("plan")
    assert code == 2, tiny.last_stderr
    assert "tiny.yaml:2:" in tiny.last_stderr and "source.path" in tiny.last_stderr
    assert message in tiny.last_stderr, tiny.last_stderr
    assert "Traceback" not in tiny.last_stderr


def test_a_corrupt_onnx_source_fails_its_steps_with_clear_messages(tiny):
    (tiny.root / "junk.onnx").write_bytes(os.urandom(5000))
    tiny.recipe.write_text(TINY_RECIPE.replace("model/tiny.keras", "junk.onnx").replace(
        "{device: rpi4}", "{device: x86-cpu}").replace("{device: android-gpu}",
                                                       "{device: cloud-gpu}"))
    code, result = tiny.run("all")
    assert code == 1
    messages = {s["kind"]: s["message"] for s in result["step_list"] if s["status"] == "failed"}
    assert "not a valid ONNX model" in messages["prepare"]
    assert "ONNX Runtime cannot load it" in messages["baseline"]
    assert not any("crashed" in m for m in messages.values()), messages


def test_a_corrupt_savedmodel_fails_its_steps_with_clear_messages(tiny):
    folder = tiny.root / "junk-savedmodel"
    (folder / "variables").mkdir(parents=True)
    (folder / "saved_model.pb").write_bytes(os.urandom(5000))
    tiny.recipe.write_text(ONE_TARGET.replace("model/tiny.keras", "junk-savedmodel"))
    code, result = tiny.run("all")
    assert code == 1
    messages = {s["kind"]: s["message"] for s in result["step_list"] if s["status"] == "failed"}
    assert set(messages) == {"convert", "quantize", "baseline"}, messages
    for message in messages.values():
        assert message.startswith("junk-savedmodel: TensorFlow cannot load this SavedModel: "
                                  "Cannot parse file"), messages


@pytest.mark.parametrize("runtime, suffix", [(LiteRTModel, ".tflite"), (OnnxModel, ".onnx")])
def test_runtimes_refuse_foreign_files_with_a_step_error(tmp_path, runtime, suffix):
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(os.urandom(3000))
    with pytest.raises(StepError, match="cannot load it"):
        runtime(path)


def test_an_oversized_tflite_file_is_refused_unread(tmp_path):
    sparse(tmp_path / "huge.tflite", 2 ** 31)
    with pytest.raises(StepError, match="2.0 GiB, past the 2 GiB a TFLite flatbuffer can"):
        LiteRTModel(tmp_path / "huge.tflite")


MY_LAYERS = """\
import tf_keras as keras


class Scale(keras.layers.Layer):  # not registered: Keras finds it through custom_objects
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
"""


def model_with_code(root: Path, name: str, marker: Path | None = None,
                    custom: bool = False) -> Path:
    """A tiny classifier with a Lambda layer that touches `marker` whenever it runs,
    and/or the custom layer of a my_layers.py written next to the recipe."""
    import importlib.util

    import tf_keras as keras

    layers = [keras.layers.Input((16, 16, 3), name="image")]
    if marker is not None:  # a constant in the Lambda's own bytecode, as an attacker would
        layers.append(keras.layers.Lambda(
            eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")))
    if custom:
        (root / "my_layers.py").write_text(MY_LAYERS)
        spec = importlib.util.spec_from_file_location("my_layers_for_saving",
                                                      root / "my_layers.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        layers.append(module.Scale(0.5))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([*layers, keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(4, activation="softmax")])
    model.save(root / name)
    if marker is not None:
        marker.unlink(missing_ok=True)  # saving traced the Lambda once
    return root / name


ONE_TARGET = TINY_RECIPE.replace("  pixel: {device: android-gpu}\n", "")


def test_lambda_layers_in_keras_archives_are_refused_before_anything_runs(tiny, tmp_path):
    marker = tmp_path / "lambda-ran"
    model_with_code(tiny.root, "lambda.keras", marker)
    tiny.recipe.write_text(TINY_RECIPE.replace("model/tiny.keras", "lambda.keras"))
    code, _ = tiny.run("all")
    assert code == 2
    err = tiny.last_stderr
    assert "tiny.yaml:2:" in err and "source.path" in err, err
    assert "Lambda layer(s) 'lambda" in err and "safe mode" in err, err
    assert "`trust_source: true` under `source:`" in err and "custom_objects:" in err, err
    assert not marker.exists(), "the model's Lambda code ran"
    assert not tiny.cache.exists() or not any((tiny.cache / "entries").rglob("*.json"))


def test_lambda_layers_in_h5_files_are_refused_without_running(tiny, tmp_path):
    # Keras's safe mode does not cover .h5: edgebuild reads the config with h5py first.
    marker = tmp_path / "lambda-ran"
    model_with_code(tiny.root, "lambda.h5", marker)
    tiny.recipe.write_text(ONE_TARGET.replace("model/tiny.keras", "lambda.h5"))
    code, result = tiny.run("all")
    assert code == 1
    messages = [s["message"] for s in result["step_list"] if s["status"] == "failed"]
    assert messages and all("Lambda layer(s) 'lambda" in m and "trust_source: true" in m
                            for m in messages), messages
    assert not marker.exists(), "the model's Lambda code ran"


@pytest.mark.parametrize("source, where, message", [
    ("{path: custom.keras}", "source.path",
     "custom object(s) 'Scale' (code Keras imports by name)"),
    ("{path: custom.keras, custom_objects: my_layers}", "source.custom_objects",
     "loading 'my_layers' runs its code while the model loads; set `trust_source: true`"),
    ("{path: custom.keras, trust_source: true, custom_objects: 'my layers!'}",
     "source.custom_objects", "'my layers!' is not a module name"),
    ("{path: custom.keras, trust_source: 'true'}", "source.trust_source",
     "expected true or false, got 'true'"),
])
def test_custom_objects_need_trust_and_a_module(tiny, source, where, message):
    model_with_code(tiny.root, "custom.keras", custom=True)
    tiny.recipe.write_text(TINY_RECIPE.replace("{path: model/tiny.keras}", source))
    code, _ = tiny.run("plan")
    assert code == 2, tiny.last_stderr
    assert "tiny.yaml:2:" in tiny.last_stderr and where in tiny.last_stderr, tiny.last_stderr
    assert message in tiny.last_stderr, tiny.last_stderr


def test_a_trusted_model_builds_and_its_module_is_a_step_input(tiny, tmp_path):
    marker = tmp_path / "lambda-ran"
    model_with_code(tiny.root, "custom.keras", marker, custom=True)
    tiny.recipe.write_text(ONE_TARGET.replace(
        "{path: model/tiny.keras}",
        "{path: custom.keras, trust_source: true, custom_objects: my_layers}"))
    result = tiny.build()
    assert {s["status"] for s in result["step_list"]} == {"executed"}
    assert marker.exists(), "the trusted Lambda never ran"
    manifest = json.loads((tiny.dist / "tiny" / "rpi4" / "manifest.json").read_text())
    convert = next(step for step in manifest["chain"] if step["kind"] == "convert")
    assert convert["params"]["trust_source"] == {"custom_objects": "my_layers"}

    # The module is code the steps ran: editing it makes every step that loaded the
    # model stale, with that as the reason.
    with open(tiny.root / "my_layers.py", "a") as module:
        module.write("# edited\n")
    code, plan = tiny.run("plan")
    assert code == 0
    stale = {s["kind"]: [r.get("field") for r in s["reasons"]] for s in plan["step_list"]
             if s["status"] == "run"}
    for kind in ("convert", "quantize", "baseline"):
        assert "inputs.custom_objects" in stale[kind], stale


def test_trusted_loads_name_what_the_module_lacks(tmp_path, monkeypatch):
    from edgebuild.toolchains.keras_files import Trust
    from edgebuild.toolchains.tf import load_keras

    model_with_code(tmp_path, "custom.keras", custom=True)
    model_with_code(tmp_path, "custom.h5", custom=True)
    (tmp_path / "no_layers.py").write_text("FACTOR = 2\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "no_layers", raising=False)
    trust = Trust("no_layers", tmp_path / "no_layers.py")
    with pytest.raises(StepError, match="needs custom object.s. 'Scale', and the module "
                                        "'no_layers' does not define them; name the module"):
        load_keras(tmp_path / "custom.keras", trust)
    with pytest.raises(StepError, match="Keras cannot load it: Unknown layer: 'Scale'; if it "
                                        "has custom layers or functions: name the module"):
        load_keras(tmp_path / "custom.h5", trust)
    with pytest.raises(StepError, match="Unknown layer: 'Scale'; safe mode refuses custom "
                                        "layers and functions. If you trust this model"):
        load_keras(tmp_path / "custom.h5")
    monkeypatch.delitem(sys.modules, "my_layers", raising=False)
    model = load_keras(tmp_path / "custom.keras", Trust("my_layers", tmp_path / "my_layers.py"))
    assert type(model.layers[0]).__name__ == "Scale"


def test_built_in_objects_are_not_taken_for_custom_code(tmp_path):
    # Keras records a registered_name for some of its own classes (Functional) too.
    from edgebuild.toolchains.keras_files import archive_config, model_code

    repo = Path(__file__).resolve().parents[1]
    assert not model_code(archive_config(repo / "models" / "detector.keras"))
    code = model_code(archive_config(model_with_code(tmp_path, "custom.keras",
                                                     tmp_path / "marker", custom=True)))
    assert code.custom == ("Scale",) and len(code.lambdas) == 1


def onnx_with_external_data(folder: Path, location: str = "weights.bin") -> Path:
    """A tiny ONNX classifier (mean colour -> MatMul -> Softmax) whose weights live in
    `location`, as onnx.save(..., save_as_external_data=True) leaves big models."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["mean", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"])],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 16, 16, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              ir_version=8)
    path = folder / "external.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location=location,
              size_threshold=0)
    return path


ONNX_TARGET = TINY_RECIPE.replace("{path: model/tiny.keras}", "{path: external.onnx}").replace(
    "  rpi4: {device: rpi4}\n  pixel: {device: android-gpu}\n", "  x86: {device: x86-cpu}\n")


def test_onnx_external_data_is_a_step_input(tiny):
    # Weights beside the model are part of it: changing only them must rebuild.
    onnx_with_external_data(tiny.root)
    tiny.recipe.write_text(ONNX_TARGET)
    built = tiny.build()
    assert {s["status"] for s in built["step_list"]} == {"executed"}
    data = tiny.root / "weights.bin"
    changed = bytearray(data.read_bytes())
    changed[0] ^= 1
    data.write_bytes(bytes(changed))
    code, plan = tiny.run("plan")
    assert code == 0
    stale = {s["kind"]: [r.get("field") for r in s["reasons"]] for s in plan["step_list"]
             if s["status"] == "run"}
    assert stale["prepare"] == ["inputs.external_data.0"], stale
    assert stale["baseline"] == ["inputs.external_data.0"], stale


@pytest.mark.parametrize("location, message", [
    ("../outside.bin", "'../outside.bin' is not a relative path inside the model's folder"),
    ("missing.bin", "'missing.bin' does not exist beside it"),
])
def test_onnx_external_data_must_stay_beside_the_model(tiny, location, message):
    import onnx

    path = onnx_with_external_data(tiny.root)
    model = onnx.load(str(path), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path.write_bytes(model.SerializeToString())
    tiny.recipe.write_text(ONNX_TARGET)
    code, _ = tiny.run("plan")
    assert code == 2
    assert "source.path" in tiny.last_stderr and message in tiny.last_stderr, tiny.last_stderr


def test_external_data_materialized_apart_is_staged_beside_the_model(tmp_path):
    # On a Dask worker, inputs arrive from the cache, each in its own folder.
    import onnx

    from edgebuild.toolchains.onnx_external_data import external_data, source_model
    from edgebuild.worker import StepContext

    (tmp_path / "data").mkdir()
    path = onnx_with_external_data(tmp_path, "data/weights.bin")
    assert external_data(path) == ["data/weights.bin"]
    apart = {"model": tmp_path / "in" / "model" / "external.onnx",
             "external_data.0": tmp_path / "in" / "external_data.0" / "weights.bin"}
    for name, target in apart.items():
        target.parent.mkdir(parents=True)
        shutil.copyfile(path if name == "model" else tmp_path / "data" / "weights.bin", target)
    ctx = StepContext(params={"external_data": ["data/weights.bin"]}, inputs=apart,
                      outdir=tmp_path / "work" / "out", device={})
    staged = source_model(ctx)
    assert staged.parent == tmp_path / "work" / "source"
    onnx.checker.check_model(onnx.load(str(staged)))
    ctx.params = {}
    assert source_model(ctx) == apart["model"]  # a model without external data
