"""ONNX sources: checked, validated in ONNX Runtime, deferred TensorRT compiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, Project, write_images

ULTRAFACE = SHARED / "models" / "ultraface"


def make_tiny_onnx(path: Path, legacy: bool = False, dynamic_hw: bool = False) -> None:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, NCHW. `legacy` builds it
    the way old PyTorch exporters did: opset 11, every weight also a graph input, and
    a dynamic batch dimension."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 5)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.zeros(5, np.float32), "fcb"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="head_fc"),
    ]
    batch = "N" if legacy else 1
    hw = ["H", "W"] if dynamic_hw else [16, 16]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, *hw])]
    if legacy:
        inputs += [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in inits]
    graph = helper.make_graph(
        nodes, "tiny", inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11 if legacy else 17)])
    model.ir_version = 6 if legacy else 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


RECIPE = """\
name: tiny-onnx
source: {path: tiny.onnx}
task: classification
data:
  preprocess: {resize: [16, 16], scale: 0.00392156862745098, layout: NCHW}
  calibration: {path: calib}
  validation: {path: val}
targets:
  x86: {device: x86-cpu}
  x86-tensor: {device: x86-cpu, quantize: {per_channel: false, calibration_method: percentile}}
  x86-entropy: {device: x86-cpu, quantize: {calibration_method: entropy}}
  x86-head: {device: x86-cpu, quantize: {keep_float: {layers: [head_*]}}}
  x86-dyn: {device: x86-cpu, quantize: {mode: dynamic, weight_type: uint8}}
  x86-fp32: {device: x86-cpu, quantize: false}
  jetson: {device: jetson-orin}
  jetson-int8: {device: jetson-orin, quantize: {mode: int8}}
  server: {device: cloud-gpu, quantize: {io: float16}}
"""


def with_targets(*targets: str, recipe: str = RECIPE) -> str:
    """`recipe` with its targets replaced by `targets`, one YAML line each."""
    return recipe.split("targets:")[0] + "targets:\n" + "".join(f"  {t}\n" for t in targets)


@pytest.fixture
def onnx_project(tmp_path) -> Project:
    make_tiny_onnx(tmp_path / "tiny.onnx", legacy=True)
    write_images(tmp_path / "val", 4, seed=3)
    write_images(tmp_path / "calib", 6, seed=4)
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    return Project(tmp_path)


def _model(project: Project, target: str):
    import onnx

    return onnx.load(str(project.dist / "tiny-onnx" / target / "model.onnx"))


def _weight_scale(model, weight: str):
    """The scale of the DequantizeLinear that reads the quantized `weight`."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0].startswith(weight):
            return inits[node.input[0]], inits[node.input[1]], inits[node.input[2]]
    return None


def test_onnx_sources_are_prepared_and_quantized_by_onnx_runtime(onnx_project):
    import onnx

    result = onnx_project.build()
    status = {name: t["status"] for name, t in result["targets"].items()}
    assert status == {"x86": "ok", "x86-tensor": "ok", "x86-entropy": "ok", "x86-head": "ok",
                      "x86-dyn": "ok", "x86-fp32": "ok", "jetson": "deferred",
                      "jetson-int8": "deferred", "server": "ok"}
    labels = {s["label"] for s in result["step_list"]}
    assert {"prepare.onnx", "quantize.onnx[int8]", "quantize.onnx[dynamic]",
            "quantize.onnx[fp16]", "quantize.onnx[int8-per-tensor]", "compile.tensorrt",
            "baseline.onnx"} <= labels

    # prepare: initializer inputs dropped, opset 11 -> 13, the dynamic batch fixed to 1.
    lock = json.loads(onnx_project.recipe.with_suffix(".lock").read_text())
    prepare = lock["targets"]["x86"]["steps"][0]
    assert prepare["facts"]["dropped_initializer_inputs"] == 4
    assert (prepare["facts"]["source_opset"], prepare["facts"]["opset"]) == (11, 13)
    assert prepare["facts"]["fixed_shapes"] == {"input": [1, 3, 16, 16]}
    prepared = _model(onnx_project, "x86-fp32")
    assert [i.name for i in prepared.graph.input] == ["input"]

    # static QDQ: uint8 activations and int8 weights for ONNX Runtime's CPU kernels,
    # one weight scale per output channel, or one per tensor.
    x86 = _model(onnx_project, "x86")
    weight, scale, zero = _weight_scale(x86, "w")
    assert weight.dtype == np.int8 and scale.shape == (4,)
    activations = [n for n in x86.graph.node if n.op_type == "QuantizeLinear"]
    assert activations
    per_tensor = _weight_scale(_model(onnx_project, "x86-tensor"), "w")
    assert per_tensor[1].shape == ()
    # Entropy and percentile calibration pick other activation ranges than min/max.
    assert _model(onnx_project, "x86-entropy") != x86

    # keep_float: the head's Gemm reads float weights, no DequantizeLinear.
    head = _model(onnx_project, "x86-head")
    assert _weight_scale(head, "fc") is None and _weight_scale(head, "w") is not None
    assert _weight_scale(x86, "fc") is not None

    # dynamic: uint8 weights, activations quantized at run time.
    dynamic = _model(onnx_project, "x86-dyn")
    assert "DynamicQuantizeLinear" in {n.op_type for n in dynamic.graph.node}
    assert any(i.data_type == onnx.TensorProto.UINT8 for i in dynamic.graph.initializer)

    # fp16 with float16 I/O, as asked.
    server = _model(onnx_project, "server")
    assert server.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16

    # TensorRT int8 is symmetric: every zero point is an int8 zero.
    trt_int8 = _model(onnx_project, "jetson-int8")
    zeros = [z for n in trt_int8.graph.node if n.op_type == "QuantizeLinear"
             for z in [_initializer(trt_int8, n.input[2])]]
    assert zeros and all(z.dtype == np.int8 and not z.any() for z in zeros)

    jetson = onnx_project.dist / "tiny-onnx" / "jetson"
    assert sorted(p.name for p in jetson.iterdir()) == ["build_engine.sh", "manifest.json",
                                                        "model.onnx"]
    script = (jetson / "build_engine.sh").read_text()
    assert "Deferred: no NVIDIA GPU here" in script or "Deferred: TensorRT is not" in script
    assert ("trtexec --onnx=model.onnx --saveEngine=model.engine --stronglyTyped "
            "--timingCacheFile=timing.cache") in script
    assert (jetson / "build_engine.sh").stat().st_mode & 0o111
    manifest = json.loads((jetson / "manifest.json").read_text())
    assert manifest["artifact"]["precision"] == "fp16" and "deferred" in manifest["artifact"]
    assert [c.get("status") for c in manifest["chain"] if c["kind"] == "compile"] == ["deferred"]
    assert result["targets"]["jetson"]["deferred"] in ("no NVIDIA GPU here", (
        "TensorRT is not installed here (pip install 'edgebuild[tensorrt]')"))

    again = onnx_project.build()
    assert again["steps"]["executed"] == 0


def _initializer(model, name: str):
    from onnx import numpy_helper

    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def test_deferred_engines_show_in_plan_and_fail_with_require_engines(onnx_project, capsys):
    from edgebuild.cli import main
    from edgebuild.toolchains.gpu_probe import host

    if host().deferral is None:
        pytest.skip("this host can build TensorRT engines, so nothing is deferred")
    onnx_project.recipe.write_text(with_targets("jetson: {device: jetson-orin}",
                                                "x86: {device: x86-cpu, quantize: false}"))
    assert main(["plan", str(onnx_project.recipe), *onnx_project.args()]) == 0
    assert f"jetson: deferred: {host().deferral}" in capsys.readouterr().out

    code, result = onnx_project.run("all", "--require-engines")
    assert code == 1
    assert result["targets"]["jetson"]["status"] == "failed"
    assert "--require-engines" in result["targets"]["jetson"]["message"]
    assert result["targets"]["x86"]["status"] == "ok"
    assert not (onnx_project.dist / "tiny-onnx" / "jetson").exists()


def test_a_new_tensorrt_version_or_gpu_reruns_only_compile_and_after(onnx_project, monkeypatch):
    """Engines do not port across TensorRT versions or GPUs: both are in the compile
    key, and nothing before compile depends on them."""
    from conftest import executed

    from edgebuild.toolchains import gpu_probe

    onnx_project.recipe.write_text(with_targets("jetson: {device: jetson-orin}"))
    hosts = [gpu_probe.NvidiaHost(tensorrt=None), gpu_probe.NvidiaHost(tensorrt="10.13.3.9"),
             gpu_probe.NvidiaHost(gpu="NVIDIA Jetson AGX Orin", compute_capability="8.7")]
    runs = []
    for fake in hosts:
        monkeypatch.setattr(gpu_probe, "host", lambda fake=fake: fake)
        runs.append(executed(onnx_project.build()))
    assert ("prepare", ("jetson",)) in runs[0]
    for later in runs[1:]:
        assert later == [("bundle", ("jetson",)), ("compile", ("jetson",))]
    lock = json.loads(onnx_project.recipe.with_suffix(".lock").read_text())
    compile_ = next(s for s in lock["targets"]["jetson"]["steps"] if s["kind"] == "compile")
    assert compile_["device"]["host"] == {
        "gpu": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7", "tensorrt": None}


def test_dynamic_dimensions_come_from_the_recipe(tmp_path):
    make_tiny_onnx(tmp_path / "tiny.onnx", dynamic_hw=True)
    write_images(tmp_path / "val", 2, seed=3)
    recipe = with_targets("x86: {device: x86-cpu, quantize: false}",
                          recipe=RECIPE.replace("  calibration: {path: calib}\n", ""))
    (tmp_path / "tiny.yaml").write_text(recipe)
    project = Project(tmp_path)
    code, result = project.run("all")
    assert code == 1
    failed = next(s for s in result["step_list"] if s["status"] == "failed")
    assert failed["label"] == "prepare.onnx"
    assert "input [1, 3, H, W]" in failed["message"] and "input_shapes" in failed["message"]

    fixed = "source: {path: tiny.onnx, input_shapes: {input: [1, 3, 16, 16]}}"
    (tmp_path / "tiny.yaml").write_text(recipe.replace("source: {path: tiny.onnx}", fixed))
    result = project.build()
    assert result["targets"]["x86"]["status"] == "ok"


@pytest.mark.parametrize(("target", "message"), [
    ("{device: x86-cpu, quantize: {keep_float: {sensitive: 2}}}",
     "targets.t.quantize.keep_float.sensitive: choosing the most sensitive layers"),
    ("{device: rpi4, quantize: {calibration_method: entropy}}",
     "targets.t.quantize.calibration_method: calibration_method is for ONNX static int8"),
    ("{device: jetson-orin, quantize: {mode: dynamic}}",
     "targets.t.quantize.mode: TensorRT does not run dynamically quantized models"),
    ("{device: x86-cpu, quantize: {mode: fp16, weight_type: uint8}}",
     "targets.t.quantize.weight_type: weight_type is for ONNX dynamic"),
    ("{device: x86-cpu, quantize: {io: float16}}",
     "targets.t.quantize.io: io: float16 is for"),
])
def test_onnx_quantize_options_are_checked(tiny, capsys, target, message):
    from edgebuild.cli import main

    text = tiny.recipe.read_text().split("targets:")[0] + f"targets:\n  t: {target}\n"
    tiny.recipe.write_text(text)
    assert main(["plan", str(tiny.recipe), *tiny.args()]) == 2
    err = capsys.readouterr().err
    assert message in err and "tiny.yaml:" in err


@pytest.mark.skipif(not ULTRAFACE.exists(), reason="needs ../shared/models/ultraface")
def test_ultraface_reaches_onnx_and_tflite_devices(tmp_path):
    """recipes/ultraface.yaml, as shipped: a real opset-9 PyTorch export with every
    weight listed as an input, through prepare, static QDQ per-channel int8 (head kept
    float), dynamic and fp16. The int8 artifact must find at least 90% of the float
    model's faces (score >= 0.7, after NMS) again at IoU > 0.5: its budget says so.
    Through onnx2tf, rpi4 int8, pixel fp16 and integer-only coral TFLite artifacts."""
    import onnx

    recipe = (Path(__file__).parents[1] / "recipes" / "ultraface.yaml").read_text()
    (tmp_path / "uf.yaml").write_text(recipe.replace("../../shared", str(SHARED)))
    project = Project(tmp_path, "uf.yaml")
    result = project.build()
    status = {name: t["status"] for name, t in result["targets"].items()}
    assert status == {"x86": "ok", "x86-dynamic": "ok", "x86-fp32": "ok", "jetson": "deferred",
                      "jetson-int8": "deferred", "server": "ok", "rpi4": "ok", "pixel": "ok",
                      "coral": "deferred"}

    lock = json.loads(project.recipe.with_suffix(".lock").read_text())
    facts = lock["targets"]["x86"]["steps"][0]["facts"]
    assert facts["dropped_initializer_inputs"] == 244
    assert (facts["source_opset"], facts["opset"]) == (9, 13)
    assert facts["nodes"] < facts["source_nodes"]  # BatchNormalization folded into Conv

    report = _validate_report(project, "x86")
    assert report["passed"] and report["samples"] == 24
    assert report["agreement"]["label"] == "box agreement"
    assert report["agreement"]["value"] >= 0.9
    int8 = onnx.load(str(project.dist / "ultraface" / "x86" / "model.onnx"))
    scales = {i.name: list(i.dims) for i in int8.graph.initializer}
    conv_weights = [n.input[1] for n in int8.graph.node if n.op_type == "Conv"]
    weight_scales = [n.input[1] for n in int8.graph.node
                     if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights]
    assert len(weight_scales) == len(conv_weights) == 52
    assert all(scales[s] and scales[s][0] > 1 for s in weight_scales)  # per channel
    kept = {n.op_type for n in int8.graph.node if n.op_type in ("Concat", "Softmax")}
    assert kept == {"Concat", "Softmax"}

    assert _validate_report(project, "x86-dynamic")["agreement"]["value"] >= 0.9
    fp16 = onnx.load(str(project.dist / "ultraface" / "server" / "model.onnx"))
    assert {i.data_type for i in fp16.graph.initializer} >= {onnx.TensorProto.FLOAT16}
    assert _validate_report(project, "server")["agreement"]["value"] >= 0.99

    # TFLite from the ONNX source (onnx2tf), validated against the ONNX model.
    assert _validate_report(project, "rpi4")["agreement"]["value"] >= 0.9
    assert _validate_report(project, "pixel")["agreement"]["value"] >= 0.99
    coral = json.loads((project.dist / "ultraface" / "coral" / "manifest.json").read_text())
    quantize = next(c for c in coral["chain"] if c["kind"] == "quantize")
    assert quantize["facts"]["integer_only"]["float_ops"] == 0
    assert coral["artifact"]["inputs"][0]["shape"] == [1, 240, 320, 3]
    assert {o["source_output"] for o in coral["artifact"]["outputs"]} == {"scores", "boxes"}


def _validate_report(project: Project, target: str) -> dict:
    from edgebuild.cache import Cache

    lock = json.loads(project.recipe.with_suffix(".lock").read_text())
    validate = next(s for s in lock["targets"][target]["steps"] if s["kind"] == "validate")
    entry = Cache(project.cache).entry(validate["key"])
    return json.loads(Cache(project.cache).read_blob(entry.outputs["report"].digest))
