"""ONNX sources: checked, validated in ONNX Runtime, deferred TensorRT compiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, Project, write_images

ULTRAFACE = SHARED / "models" / "ultraface"


def make_tiny_onnx(path: Path) -> None:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm, NCHW, batch 1."""
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
        helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


RECIPE = """\
name: tiny-onnx
source: {path: tiny.onnx}
task: classification
data:
  preprocess: {resize: [16, 16], scale: 0.00392156862745098, layout: NCHW}
  validation: {path: val}
targets:
  x86: {device: x86-cpu, format: onnx, quantize: false}
  x86-dyn: {device: x86-cpu, format: onnx, quantize: {mode: dynamic}}
  jetson: {device: jetson-orin}
  server: {device: cloud-gpu}
"""


@pytest.fixture
def onnx_project(tmp_path) -> Project:
    make_tiny_onnx(tmp_path / "tiny.onnx")
    write_images(tmp_path / "val", 4, seed=3)
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    return Project(tmp_path)


def test_onnx_source_builds_for_onnx_devices(onnx_project):
    result = onnx_project.build()
    status = {name: t["status"] for name, t in result["targets"].items()}
    assert status == {"x86": "ok", "x86-dyn": "ok", "jetson": "deferred", "server": "ok"}
    kinds = {s["label"] for s in result["step_list"]}
    assert {"convert.onnx-check", "quantize.onnx[dynamic]", "quantize.onnx[fp16]",
            "compile.tensorrt[fp16]", "baseline.onnx"} <= kinds

    jetson = onnx_project.dist / "tiny-onnx" / "jetson"
    assert sorted(p.name for p in jetson.iterdir()) == ["build_engine.sh", "manifest.json",
                                                        "model.onnx"]
    script = (jetson / "build_engine.sh").read_text()
    assert "trtexec --onnx=model.onnx --saveEngine=model.engine --fp16" in script
    assert (jetson / "build_engine.sh").stat().st_mode & 0o111
    manifest = json.loads((jetson / "manifest.json").read_text())
    assert "deferred" in manifest["artifact"]
    assert [c.get("status") for c in manifest["chain"] if c["kind"] == "compile"] == ["deferred"]

    import onnx

    server = onnx.load(str(onnx_project.dist / "tiny-onnx" / "server" / "model.onnx"))
    weights = {i.name: i.data_type for i in server.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in weights.values()  # fp16 inside ...
    assert server.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float I/O

    again = onnx_project.build()
    assert again["steps"]["executed"] == 0


def test_tflite_device_with_onnx_source_is_a_recipe_error(onnx_project, capsys):
    from edgebuild.cli import main

    text = onnx_project.recipe.read_text() + "  pi: {device: rpi4, validate: false}\n"
    onnx_project.recipe.write_text(text)
    assert main(["plan", str(onnx_project.recipe), *onnx_project.args()]) == 2
    assert "targets.pi.device: device 'rpi4' takes TFLite models" in capsys.readouterr().err


@pytest.mark.skipif(not ULTRAFACE.exists(), reason="needs ../shared/models/ultraface")
def test_ultraface_checks_and_validates_against_itself(tmp_path):
    (tmp_path / "uf.yaml").write_text(f"""\
name: ultraface
source: {{path: {ULTRAFACE / 'version-RFB-320.onnx'}}}
task: detection
data:
  preprocess: {{resize: [240, 320], mean: 127, std: 128, layout: NCHW}}
  validation: {{path: {ULTRAFACE / 'imgs'}, count: 6}}
targets:
  x86: {{device: x86-cpu, format: onnx, quantize: false}}
  jetson: {{device: jetson-orin}}
""")
    project = Project(tmp_path, "uf.yaml")
    result = project.build()
    assert result["targets"]["x86"]["status"] == "ok"
    assert result["targets"]["jetson"]["status"] == "deferred"
    report = _validate_report(project, "x86")
    assert report["samples"] == 6
    assert [f["cosine"] for f in report["fidelity"]] == pytest.approx([1.0, 1.0])


def _validate_report(project: Project, target: str) -> dict:
    from edgebuild.cache import Cache

    lock = json.loads(project.recipe.with_suffix(".lock").read_text())
    validate = next(s for s in lock["targets"][target]["steps"] if s["kind"] == "validate")
    entry = Cache(project.cache).entry(validate["key"])
    return json.loads(Cache(project.cache).read_blob(entry.outputs["report"].digest))
