"""Small ONNX models built in tests, shaped the way PyTorch exports are (NCHW)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_two_head_onnx(path: Path, classes: int = 5, logit_scale: float = 1.0) -> None:
    """NCHW image -> Conv -> Relu -> three outputs, listed in this order:
    `probs` (Softmax of the logits), `features` (the 4-D feature map, channels first)
    and `logits`. probs and logits have the same shape, so only their names tell
    them apart. `logit_scale` near 0 makes the softmax near-uniform."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b"),
        numpy_helper.from_array((rng.normal(0, 1.0, (4, classes)) * logit_scale)
                                .astype(np.float32), "fc"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fcb"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["features"], name="relu"),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fcb"], ["logits"], name="head_fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="head_softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "two-head",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, classes]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 4, 16, 16]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
