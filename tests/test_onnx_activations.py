"""MobileNetV3-style activations run on int8 in ONNX Runtime: hard-swish in each of the
forms exporters write, and squeeze-excite blocks, end up as QLinear ops in the graph
ONNX Runtime's CPU provider runs, with no float op left between Q and DQ."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import Project, write_images

RECIPE = """\
name: tiny-v3
source: {path: tiny_v3.onnx}
task: classification
data:
  preprocess: {resize: [16, 16], scale: 0.00392156862745098, layout: NCHW}
  calibration: {path: calib}
  validation: {path: val}
targets:
  x86: {device: x86-cpu}
  x86-gemm-float: {device: x86-cpu, quantize: {keep_float: {ops: [Gemm]}}}
"""
# What each hard-sigmoid form and squeeze-excite block becomes in the optimized graph.
INT8 = {"QLinearConv", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool", "QGemm"}
FLOAT_ACTIVATIONS = {"HardSwish", "HardSigmoid", "Mul", "Add", "Clip", "ReduceMean",
                     "GlobalAveragePool"}


class _Builder:
    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.nodes, self.inits = [], []

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, cin: int, cout: int, name: str, group: int = 1, k: int = 3) -> str:
        fan_in = cin // group * k * k
        w = self.rng.normal(0, (2 / fan_in) ** 0.5, (cout, cin // group, k, k))
        b = self.rng.normal(0, 0.1, cout)
        return self.node("Conv", [x, self.const(f"{name}_w", w), self.const(f"{name}_b", b)],
                         name, pads=[k // 2] * 4, group=group)


def make_tiny_v3(path: Path) -> None:
    """Conv + HardSwish (one op, opset 14 on), depthwise Conv + x * HardSigmoid(x) (as
    paddle2onnx writes hard-swish), an SE block (GlobalAveragePool, Conv, Relu, Conv,
    HardSigmoid, Mul), Conv + x * (Clip(x + 3, 0, 6) * 1/6) (Keras's hard_swish via
    tf2onnx), an SE block that pools with ReduceMean (PyTorch's x.mean((2, 3),
    keepdim=True)), then GlobalAveragePool, Flatten, Gemm: logits, NCHW 3x16x16."""
    import onnx
    from onnx import TensorProto, helper

    b = _Builder()
    x = b.node("HardSwish", [b.conv("input", 3, 8, "stem")], "stem_act")
    dw = b.conv(x, 8, 8, "dw", group=8)
    x = b.node("Mul", [dw, b.node("HardSigmoid", [dw], "dw_gate", alpha=1 / 6, beta=0.5)],
               "dw_act")
    x = _se(b, x, b.node("GlobalAveragePool", [x], "se1_pool"), "se1")
    pw = b.conv(x, 8, 16, "pw", k=1)
    relu6 = b.node("Clip", [b.node("Add", [pw, b.const("three", 3.0)], "pw_shift"),
                            b.const("zero", 0.0), b.const("six", 6.0)], "pw_relu6")
    gate = b.node("Mul", [relu6, b.const("sixth", 1 / 6)], "pw_gate")
    x = b.node("Mul", [pw, gate], "pw_act")
    x = _se(b, x, b.node("ReduceMean", [x], "se2_mean", axes=[2, 3], keepdims=1), "se2")
    flat = b.node("Flatten", [b.node("GlobalAveragePool", [x], "pool")], "flatten")
    fc = b.const("fc_w", b.rng.normal(0, 0.25, (16, 5)))
    b.node("Gemm", [flat, fc, b.const("fc_b", np.zeros(5))], "logits")
    graph = helper.make_graph(
        b.nodes, "tiny_v3", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                           [1, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])], b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _se(b: _Builder, x: str, pooled: str, name: str) -> str:
    channels = 8 if name == "se1" else 16
    squeezed = b.node("Relu", [b.conv(pooled, channels, 4, f"{name}_down", k=1)],
                      f"{name}_relu")
    scale = b.node("HardSigmoid", [b.conv(squeezed, 4, channels, f"{name}_up", k=1)],
                   f"{name}_gate", alpha=0.2, beta=0.5)
    return b.node("Mul", [x, scale], f"{name}_scale")


@pytest.fixture
def v3_project(tmp_path) -> Project:
    make_tiny_v3(tmp_path / "tiny_v3.onnx")
    write_images(tmp_path / "calib", 8, seed=5)
    write_images(tmp_path / "val", 4, seed=6)
    (tmp_path / "tiny.yaml").write_text(RECIPE)
    return Project(tmp_path)


def _optimized_op_types(model_path: Path, tmp_path: Path) -> Counter:
    """The op types of the graph ONNX Runtime's CPU provider runs, after its QDQ fusions."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"{model_path.parent.name}.opt.onnx")
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def _cosine_to_float(source: Path, int8: Path) -> float:
    import onnxruntime as ort

    x = np.random.default_rng(7).uniform(0, 1, (6, 1, 3, 16, 16)).astype(np.float32)
    ref, quant = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                  for p in (source, int8))
    a = np.concatenate([ref.run(None, {"input": i})[0] for i in x]).ravel()
    b = np.concatenate([quant.run(None, {"input": i})[0] for i in x]).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_hard_swish_hard_sigmoid_and_squeeze_excite_run_on_int8(v3_project, tmp_path):
    import onnx

    result = v3_project.build()
    assert {t["status"] for t in result["targets"].values()} == {"ok"}
    dist = v3_project.dist / "tiny-v3"

    # The QDQ model: no hard-sigmoid left; every activation op between DQ and Q.
    model = onnx.load(str(dist / "x86" / "model.onnx"))
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    ops = Counter(n.op_type for n in model.graph.node)
    assert not ops.keys() & {"HardSwish", "HardSigmoid", "Clip", "ReduceMean"}
    for node in model.graph.node:
        if node.op_type in ("Mul", "Add", "GlobalAveragePool"):
            assert {producers.get(i) for i in node.input} == {"DequantizeLinear"}, node.name
    lock = json.loads(v3_project.recipe.with_suffix(".lock").read_text())
    quantize = next(s for s in lock["targets"]["x86"]["steps"] if s["kind"] == "quantize")
    # HardSigmoids: stem (prepare's ONNX Runtime pre-processing already inlined its
    # HardSwish), dw, se1, pw (joined from the Clip form), se2.
    assert quantize["facts"]["int8_activations"] == {
        "hard_sigmoid_joined": 1, "reduce_mean_as_pool": 1, "hard_sigmoid_as_add": 5}

    # What ONNX Runtime runs: int8 kernels only, one Q at the input, one DQ at the output.
    run = _optimized_op_types(dist / "x86" / "model.onnx", tmp_path)
    assert not run.keys() & FLOAT_ACTIVATIONS, run
    assert run["QuantizeLinear"] == run["DequantizeLinear"] == 1, run
    assert run["QLinearAdd"] == 5 and run["QLinearGlobalAveragePool"] == 3, run
    assert run["QLinearMul"] == 5, run  # 3 hard-swish, 2 SE scales
    assert run.keys() >= INT8
    assert _cosine_to_float(v3_project.root / "tiny_v3.onnx", dist / "x86" / "model.onnx") > 0.99

    # Keeping one op type float keeps only that one float: Add, Mul and the pools stay int8.
    kept = _optimized_op_types(dist / "x86-gemm-float" / "model.onnx", tmp_path)
    assert kept["Gemm"] == 1 and not kept.keys() & FLOAT_ACTIVATIONS, kept
    assert {"QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool"} <= kept.keys()


def test_the_float_rewrites_compute_what_the_model_computed(tmp_path):
    """Before quantization: HardSwish split, the Clip form joined, ReduceMean pooled.
    (Sources that come through prepare reach quantize with HardSwish already inlined.)"""
    import onnx
    import onnxruntime as ort

    from edgebuild.toolchains import onnx_int8_activations as activations

    make_tiny_v3(tmp_path / "tiny_v3.onnx")
    model = onnx.load(str(tmp_path / "tiny_v3.onnx"))
    assert activations.prepare(model, ["pw_gate"], []) == {
        "hard_swish_split": 1, "reduce_mean_as_pool": 1}  # pw's Clip form was kept float
    assert activations.prepare(model, [], []) == {"hard_sigmoid_joined": 1}
    onnx.checker.check_model(model)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["HardSigmoid"] == 5 and not ops.keys() & {"HardSwish", "Clip", "ReduceMean"}

    x = np.random.default_rng(8).uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    before, after = (ort.InferenceSession(m, providers=["CPUExecutionProvider"])
                     .run(None, {"input": x})[0]
                     for m in (str(tmp_path / "tiny_v3.onnx"), model.SerializeToString()))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


def test_what_reads_only_kept_float_results_stays_float(tmp_path):
    """Quantizing an op between two kept-float ones (a detector's box decoding) would
    only add a Q and a DQ; convolutions and matrix products are quantized wherever."""
    import onnx

    from edgebuild.toolchains.onnx_tools import float_successors

    make_tiny_v3(tmp_path / "tiny_v3.onnx")
    model = onnx.load(str(tmp_path / "tiny_v3.onnx"))
    assert float_successors(model, [], ["GlobalAveragePool"]) == ["flatten"]
    assert float_successors(model, ["dw"], []) == ["dw_gate", "dw_act", "se1_pool"]
