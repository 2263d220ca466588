"""MobileNetV3-style activations (hard-swish, hard-sigmoid, squeeze-excite) in int8 on
ONNX Runtime's CPU.

ONNX Runtime turns a QDQ node unit into an int8 kernel for some op types only (Conv,
MatMul, Gemm, Add, Mul, Sigmoid, LeakyRelu, GlobalAveragePool, Concat, Softmax, ...).
Any other op between two quantized tensors runs in float between a DequantizeLinear
and a QuantizeLinear. MobileNetV3, PP-LCNet and their kin follow nearly every
convolution with hard-swish, x * HardSigmoid(x), and ONNX Runtime has no int8
HardSigmoid or HardSwish: each activation went int8 -> float -> int8, and an int8
PP-LCNet ran at 0.75x the speed of the float one.

So, before quantization, each form of hard-sigmoid becomes one HardSigmoid node
(ReduceMean over the spatial axes becomes GlobalAveragePool, which has an int8
kernel), and after it each HardSigmoid between a DequantizeLinear and a uint8
QuantizeLinear becomes an Add, which ONNX Runtime runs as QLinearAdd. Every rewrite
computes what the graph computed before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# ReduceMean axes that are H and W, by layout.
_SPATIAL_AXES = {(2, 3): "NCHW", (1, 2): "NHWC"}


def quantized_op_types(excluded: list[str]) -> list[str]:
    """What quantize_static quantizes in QDQ format when given no list (its QDQ and
    QLinear registries), plus HardSigmoid, less the op types kept in float."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    wanted = {*QDQRegistry, *QLinearOpsRegistry, "HardSigmoid"}
    return sorted(op for op in wanted if op not in excluded)


def prepare(model, kept_nodes: list[str], kept_ops: list[str]) -> dict[str, int]:
    """The float rewrites, in place; how many nodes each one rewrote (none where
    kept in float: those nodes stay as they are)."""
    kept = set(kept_nodes)
    split = not {"HardSwish", "HardSigmoid", "Mul"} & set(kept_ops)
    done = {
        "hard_swish_split": _split_hard_swish(model, kept) if split else 0,
        "hard_sigmoid_joined": _join_hard_sigmoids(model, kept, kept_ops),
        "reduce_mean_as_pool": (0 if {"ReduceMean", "GlobalAveragePool"} & set(kept_ops)
                                else _reduce_means_as_pools(model, kept)),
    }
    return {name: count for name, count in done.items() if count}


def finish(path: Path, kept_nodes: list[str], kept_ops: list[str]) -> dict[str, int]:
    """The rewrite of the quantized model at `path`, in place: how many nodes."""
    import onnx

    model = onnx.load(str(path))
    count = hard_sigmoids_as_adds(model, kept_nodes, kept_ops)
    if count:
        onnx.save(model, str(path))
    return {"hard_sigmoid_as_add": count} if count else {}


def hard_sigmoids_as_adds(model, kept_nodes: list[str], kept_ops: list[str]) -> int:
    """DQ -> HardSigmoid(alpha, beta) -> Q(scale, zero point 0, uint8) becomes
    DQ -> Add(beta / alpha) -> Q(scale / alpha): Q of alpha * x + beta is Q of
    x + beta / alpha at that scale, and the clip to [0, 1] is the Q's own saturation,
    since its range, [0, 255 * scale], lies within [0, 1]. In place; returns how many."""
    if "HardSigmoid" in kept_ops:
        return 0
    graph = _Graph(model)
    changes = {}
    for position, node in enumerate(graph.nodes):
        if node.op_type != "HardSigmoid" or node.name in kept_nodes:
            continue
        alpha, beta = _attribute(node, "alpha", 0.2), _attribute(node, "beta", 0.5)
        quantize = graph.only_consumer(node.output[0])
        source = graph.producer(node.input[0])
        if (alpha <= 0 or quantize is None or quantize.op_type != "QuantizeLinear"
                or source is None or source.op_type != "DequantizeLinear"
                or not _saturates_to_unit(graph, quantize)):
            continue
        offset = graph.quantized_scalar(f"{node.name}_offset", beta / alpha)
        node.op_type = "Add"
        del node.attribute[:]
        node.input.append(offset.output[0])
        scale = graph.constant(quantize.input[1]) / alpha
        quantize.input[1] = graph.add_initializer(f"{node.name}_scale", scale.astype(np.float32))
        changes[position] = [offset, node]
    _rebuild(model, graph.nodes, changes)
    return len(changes)


def _saturates_to_unit(graph: _Graph, quantize) -> bool:
    if len(quantize.input) < 3:
        return False
    zero = graph.constant(quantize.input[2])
    scale = graph.constant(quantize.input[1])
    return (zero is not None and scale is not None and zero.dtype == np.uint8
            and zero.size == 1 and scale.size == 1 and int(zero.ravel()[0]) == 0
            and 0 < float(scale.ravel()[0]) * 255 <= 1 + 1e-6)


def _split_hard_swish(model, kept: set[str]) -> int:
    """HardSwish(x) as x * HardSigmoid(x; 1/6, 1/2), its definition."""
    from onnx import helper

    nodes = list(model.graph.node)
    changes = {}
    for position, node in enumerate(nodes):
        if node.op_type == "HardSwish" and node.name not in kept:
            gate = f"{node.name}_gate"
            changes[position] = [
                helper.make_node("HardSigmoid", [node.input[0]], [gate], name=gate,
                                 alpha=1 / 6, beta=0.5),
                helper.make_node("Mul", [node.input[0], gate], list(node.output),
                                 name=node.name)]
    _rebuild(model, nodes, changes)
    return len(changes)


def _join_hard_sigmoids(model, kept: set[str], kept_ops: list[str]) -> int:
    """k * Clip(x + c, 0, 1/k), as Keras writes hard_sigmoid (ReLU6(x + 3) / 6), as one
    HardSigmoid(x; k, c * k)."""
    from onnx import helper

    if {"Add", "Clip", "Mul", "HardSigmoid"} & set(kept_ops):
        return 0
    graph = _Graph(model)
    changes = {}
    for mul in graph.nodes:
        found = _hard_sigmoid_parts(graph, mul)
        if found is None or {n.name for n in found[0]} & kept:
            continue
        (add, clip, _), x, alpha, beta = found
        changes[graph.position(add)] = changes[graph.position(clip)] = []
        changes[graph.position(mul)] = [helper.make_node(
            "HardSigmoid", [x], list(mul.output), name=mul.name, alpha=alpha, beta=beta)]
    _rebuild(model, graph.nodes, changes)
    return sum(1 for new in changes.values() if new)


def _hard_sigmoid_parts(graph: _Graph, mul):
    """(add, clip, mul), x, alpha, beta where `mul` ends k * Clip(x + c, 0, 1/k)."""
    if mul.op_type != "Mul":
        return None
    for position in (0, 1):
        k = graph.scalar(mul.input[1 - position])
        clip = graph.producer(mul.input[position])
        if k is None or k <= 0 or clip is None or clip.op_type != "Clip":
            continue
        add = graph.producer(clip.input[0])
        bounds = [graph.scalar(name) if name else None for name in clip.input[1:3]]
        if (add is None or add.op_type != "Add" or len(bounds) != 2 or bounds[0] != 0
                or bounds[1] is None or not np.isclose(bounds[1] * k, 1, rtol=1e-6)
                or graph.only_consumer(add.output[0]) is not clip
                or graph.only_consumer(clip.output[0]) is not mul):
            continue
        for side in (0, 1):
            offset = graph.scalar(add.input[1 - side])
            if offset is not None and graph.constant(add.input[side]) is None:
                return (add, clip, mul), add.input[side], float(k), float(offset * k)
    return None


def _reduce_means_as_pools(model, kept: set[str]) -> int:
    """ReduceMean over H and W of a 4-D tensor, kept dims (as PyTorch's x.mean((2, 3),
    keepdim=True) and tf2onnx's squeeze-excite export it), as GlobalAveragePool; NHWC
    between two Transposes."""
    import onnx
    from onnx import helper

    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
             [*inferred.graph.value_info, *inferred.graph.input]
             if v.type.tensor_type.HasField("shape")}
    graph = _Graph(model)
    changes = {}
    for position, node in enumerate(graph.nodes):
        layout = _spatial_mean_layout(graph, node, ranks) if node.name not in kept else None
        if layout is None:
            continue
        x, y, name = node.input[0], node.output[0], node.name
        if layout == "NCHW":
            changes[position] = [helper.make_node("GlobalAveragePool", [x], [y], name=name)]
        else:
            changes[position] = [
                helper.make_node("Transpose", [x], [f"{name}_nchw"], name=f"{name}_nchw",
                                 perm=[0, 3, 1, 2]),
                helper.make_node("GlobalAveragePool", [f"{name}_nchw"], [f"{name}_pool"],
                                 name=name),
                helper.make_node("Transpose", [f"{name}_pool"], [y], name=f"{name}_nhwc",
                                 perm=[0, 2, 3, 1])]
    _rebuild(model, graph.nodes, changes)
    return len(changes)


def _spatial_mean_layout(graph: _Graph, node, ranks: dict[str, int]) -> str | None:
    if node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4:
        return None
    if not _attribute(node, "keepdims", 1) or _attribute(node, "noop_with_empty_axes", 0):
        return None
    axes = _attribute(node, "axes", None)
    if axes is None and len(node.input) > 1:  # opset 18 on: axes are an input
        axes = graph.constant(node.input[1])
    if axes is None:
        return None
    return _SPATIAL_AXES.get(tuple(sorted(int(a) % 4 for a in np.ravel(axes))))


def _attribute(node, name: str, default):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _rebuild(model, nodes: list, changes: dict[int, list]) -> None:
    """The graph's nodes with each one at a position in `changes` replaced by the
    nodes given there (none: removed); the order stays topological."""
    if not changes:
        return
    new = [n for position, node in enumerate(nodes) for n in changes.get(position, [node])]
    del model.graph.node[:]
    model.graph.node.extend(new)


class _Graph:
    """Who produces and who consumes each tensor, and the graph's constants, for one
    snapshot of its nodes (rewrites collect changes, then `_rebuild` once)."""

    def __init__(self, model):
        from onnx import numpy_helper

        self.model, self._numpy = model, numpy_helper
        self.nodes = list(model.graph.node)
        self.initializers = {i.name: i for i in model.graph.initializer}
        self.producers = {out: i for i, node in enumerate(self.nodes) for out in node.output}
        self.consumers: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                self.consumers.setdefault(name, []).append(i)
        self.outputs = {o.name for o in model.graph.output}
        self._positions = {id(node): i for i, node in enumerate(self.nodes)}
        self._arrays: dict[str, np.ndarray] = {}
        self._taken: set[str] = set()  # names of tensors added since the snapshot

    def position(self, node) -> int:
        return self._positions[id(node)]

    def producer(self, name: str):
        return self.nodes[self.producers[name]] if name in self.producers else None

    def only_consumer(self, name: str):
        users = self.consumers.get(name, [])
        return self.nodes[users[0]] if len(users) == 1 and name not in self.outputs else None

    def constant(self, name: str) -> np.ndarray | None:
        if name not in self.initializers:
            return None
        if name not in self._arrays:
            self._arrays[name] = self._numpy.to_array(self.initializers[name])
        return self._arrays[name]

    def scalar(self, name: str) -> float | None:
        value = self.constant(name)
        return float(value.ravel()[0]) if value is not None and value.size == 1 else None

    def add_initializer(self, name: str, value) -> str:
        name = self._free(name)
        tensor = self._numpy.from_array(np.asarray(value), name)
        self.model.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        return name

    def quantized_scalar(self, name: str, value: float):
        """A DequantizeLinear (a new node, not yet in the graph) that gives `value`
        exactly from a uint8, 255 or 0: QLinearAdd needs both inputs quantized."""
        from onnx import helper

        quantized, zero = (255, 0) if value > 0 else (0, 255 if value < 0 else 0)
        inputs = [self.add_initializer(f"{name}_quantized", np.uint8(quantized)),
                  self.add_initializer(f"{name}_scale", np.float32(abs(value) / 255 or 1)),
                  self.add_initializer(f"{name}_zero_point", np.uint8(zero))]
        output = self._free(name)
        self._taken.add(output)
        return helper.make_node("DequantizeLinear", inputs, [output], name=output)

    def _free(self, name: str) -> str:
        while name in self.initializers or name in self.producers or name in self._taken:
            name += "_"
        return name
