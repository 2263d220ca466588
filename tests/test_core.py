"""The pure core, fast: a recipe's step graph, shared chain prefixes, key documents and
the reasons a step is stale, with no toolchain and no build (milliseconds each).

The model is a .keras archive written here from its config alone: the recipe loader
and the planner read only that, and only a build would need its weights.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from edgebuild.cache import Cache
from edgebuild.chain import build_graph
from edgebuild.plan import Planner, diff_docs
from edgebuild.recipe import load_recipe

pytestmark = pytest.mark.fast

RECIPE = """\
name: core
source: {path: model.keras}
task: classification
labels: labels.txt
data:
  preprocess: {resize: [16, 16], scale: 0.00392156862745098}
  calibration: {path: calib}
  validation: {path: val}
targets:
  rpi4: {device: rpi4}
  pixel: {device: android-gpu}
  coral: {device: coral-edgetpu}
  x86: {device: x86-cpu}
"""


def layer(cls: str, name: str, config: dict, inbound: str | None) -> dict:
    return {"module": "keras.layers", "class_name": cls, "name": name, "registered_name": None,
            "config": {"name": name, "trainable": True, "dtype": "float32", **config},
            "inbound_nodes": [[[inbound, 0, 0, {}]]] if inbound else []}


def write_keras_config(path: Path) -> None:
    """A tf_keras model's .keras archive without weights: image -> conv -> pool -> dense."""
    layers = [
        layer("InputLayer", "image", {"batch_input_shape": [None, 16, 16, 3]}, None),
        layer("Conv2D", "conv", {"filters": 4, "kernel_size": [3, 3]}, "image"),
        layer("GlobalAveragePooling2D", "pool", {}, "conv"),
        layer("Dense", "scores", {"units": 4, "activation": "softmax"}, "pool"),
    ]
    config = {"module": "tf_keras.src.engine.functional", "class_name": "Functional",
              "config": {"name": "core", "layers": layers,
                         "input_layers": [["image", 0, 0]], "output_layers": [["scores", 0, 0]]}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "2.21.0"}))
        archive.writestr("config.json", json.dumps(config))


@pytest.fixture
def project(tmp_path) -> Path:
    write_keras_config(tmp_path / "model.keras")
    for folder in ("calib", "val"):
        (tmp_path / folder).mkdir()
        for i in range(2):
            (tmp_path / folder / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "labels.txt").write_text("a\nb\nc\nd\n")
    (tmp_path / "core.yaml").write_text(RECIPE)
    return tmp_path


def graph_of(folder: Path, text: str = RECIPE):
    (folder / "core.yaml").write_text(text)
    recipe = load_recipe(folder / "core.yaml")
    return recipe, build_graph(recipe)


def nodes_of(graph, impl: str) -> list:
    return [n for n in graph.order() if n.impl_name == impl]


def test_targets_share_their_chain_prefix(project):
    _, graph = graph_of(project)
    (convert,) = nodes_of(graph, "convert.tflite")
    assert sorted(convert.targets) == ["coral", "pixel", "rpi4"]
    (baseline,) = nodes_of(graph, "baseline.tf")  # one float reference for every target
    assert sorted(baseline.targets) == ["coral", "pixel", "rpi4", "x86"]
    quantize = {n.targets[0]: n for n in nodes_of(graph, "quantize.tflite")}
    assert quantize["rpi4"].params["mode"] == "int8" and quantize["rpi4"].params["io"] == "float32"
    assert quantize["coral"].params["io"] == "int8"  # integer-only: int8 in and out
    assert quantize["pixel"].params["mode"] == "fp16"
    # The TFLite converter quantizes from the source model, beside the float artifact.
    assert all(q.files["model"] == convert.files["model"] for q in quantize.values())
    (onnx,) = nodes_of(graph, "quantize.onnx")
    assert onnx.params["mode"] == "int8" and nodes_of(graph, "convert.onnx")[0].id == \
        onnx.deps["model"][0]
    for target, chain in graph.target_chains.items():
        assert graph.nodes[chain[-1]].impl_name == "bundle", target
    assert set(graph.deferred) == {"coral"}  # edgetpu_compiler finishes on the device


def test_order_puts_every_step_after_its_inputs(project):
    _, graph = graph_of(project)
    seen = set()
    for node in graph.order():
        assert set(node.edges()) <= seen, node.label
        seen.add(node.id)


def test_key_documents_name_what_a_step_is_and_reads(project, tmp_path):
    recipe, graph = graph_of(project)
    cache = Cache(tmp_path / "cache")
    cache.ensure()
    planner = Planner(graph, cache, cache.stat_cache())
    (convert,) = nodes_of(graph, "convert.tflite")
    state = planner.state(convert)
    assert not state.cached and [r.code for r in state.reasons] == ["new"]
    assert state.doc["impl"].startswith("convert.tflite@")
    assert state.doc["inputs"] == {"model": planner.stat.digest(recipe.source.path)}
    assert set(state.doc["toolchain"]) >= {"tensorflow", "flatbuffers"}
    validate = next(n for n in nodes_of(graph, "validate.tflite") if n.targets == ["rpi4"])
    waiting = planner.state(validate)  # its inputs are not built: no key yet
    assert waiting.key is None and {r.code for r in waiting.reasons} == {"upstream"}
    assert any("quantize.tflite" in r.message for r in waiting.reasons)


def test_built_inputs_unlock_a_steps_key(project, tmp_path):
    _, graph = graph_of(project)
    cache = Cache(tmp_path / "cache")
    cache.ensure()
    planner = Planner(graph, cache, cache.stat_cache())
    validate = next(n for n in nodes_of(graph, "validate.tflite") if n.targets == ["rpi4"])
    made, outputs = {}, {}  # input name -> blob; upstream node -> its outputs
    for name, (up_id, output) in validate.deps.items():
        made[name] = cache.put_bytes(f"{output} of {up_id}".encode(), output)
        outputs.setdefault(up_id, {})[output] = made[name]
    for up_id, produced in outputs.items():
        doc, key = planner.resolve(graph.nodes[up_id])
        cache.commit(key, graph.nodes[up_id].kind, doc, produced, {"status": "executed"})
    later = Planner(graph, cache, cache.stat_cache())  # the next plan finds them cached
    assert all(later.state(graph.nodes[up]).cached for up, _ in validate.deps.values())
    state = later.state(validate)
    assert state.key is not None and not state.cached
    assert {n: state.doc["inputs"][n] for n in made} == {n: o.digest for n, o in made.items()}


def test_a_changed_parameter_restales_only_its_steps_and_says_why(project):
    _, before = graph_of(project)
    _, after = graph_of(project, RECIPE.replace(
        "rpi4: {device: rpi4}", "rpi4: {device: rpi4, quantize: {per_channel: false}}"))
    restaled = {n.label for n in after.order() if n.id not in before.nodes}
    assert restaled == {"quantize.tflite[int8-per-tensor]", "validate.tflite[rpi4]",
                        "bundle[rpi4]"}
    old = nodes_of(before, "quantize.tflite")
    new = nodes_of(after, "quantize.tflite")
    old_rpi4 = next(n for n in old if n.targets == ["rpi4"])
    new_rpi4 = next(n for n in new if n.targets == ["rpi4"])
    reasons = diff_docs({"params": old_rpi4.params}, {"params": new_rpi4.params})
    assert [(r.field, r.old, r.new) for r in reasons] == [("params.per_channel", True, False)]
