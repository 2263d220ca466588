"""ONNX model surgery for models as they really arrive: old opsets, initializers listed
as graph inputs, dynamic dimensions. Every failure is a StepError that names the
model and says what to do."""

from __future__ import annotations

import fnmatch
from collections import Counter
from pathlib import Path

from edgebuild.errors import StepError, first_line

# QuantizeLinear/DequantizeLinear take a per-channel `axis` from opset 13 on; older
# models are upgraded so that per-channel quantization (and TensorRT) can read them.
MIN_OPSET = 13
# The ops whose int8 kernels make quantization worth it.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def load_checked(path: Path):
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx raises DecodeError, ValidationError and others
        raise StepError(f"{path}: not a valid ONNX model: {first_line(exc)}") from None
    return model


def checked_facts(path: Path) -> dict:
    """The ONNX checker's verdict on a written model, and its opset and size."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return {"opset": opset_of(model), "bytes": path.stat().st_size}


def opset_of(model) -> int:
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def drop_initializer_inputs(model) -> list[str]:
    """Old exporters (PyTorch < 1.4's keep_initializers_as_inputs) list every weight as
    a graph input too. Runtimes then treat weights as overridable, which blocks constant
    folding and per-channel quantization; drop them from the inputs."""
    weights = {init.name for init in model.graph.initializer}
    dropped = [i.name for i in model.graph.input if i.name in weights]
    if dropped:
        kept = [i for i in model.graph.input if i.name not in weights]
        del model.graph.input[:]
        model.graph.input.extend(kept)
    return dropped


def upgrade_opset(model, minimum: int = MIN_OPSET):
    import onnx
    from onnx import version_converter

    before = opset_of(model)
    if before >= minimum:
        return model
    try:
        upgraded = version_converter.convert_version(model, minimum)
        onnx.checker.check_model(upgraded)
    except Exception as exc:
        raise StepError(f"cannot upgrade the model from opset {before} to {minimum}, which "
                        f"quantization and TensorRT need: {first_line(exc)}; re-export it "
                        f"with opset {minimum} or later") from None
    return upgraded


def fix_input_shapes(model, shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Set dynamic input dimensions: from `shapes` (source.input_shapes), and a dynamic
    leading (batch) dimension to 1, since edge models run one sample at a time.
    Returns what was fixed, by input."""
    inputs = {i.name: i for i in model.graph.input}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise StepError(f"source.input_shapes names {', '.join(unknown)}, which the model "
                        f"does not have (its inputs: {', '.join(inputs)})")
    changed = []
    for name, value in inputs.items():
        dims = value.type.tensor_type.shape.dim
        wanted = shapes.get(name)
        if wanted is not None and len(wanted) != len(dims):
            raise StepError(f"source.input_shapes.{name} has {len(wanted)} dimensions and the "
                            f"model's input has {len(dims)}: {_shape_text(dims)}")
        for axis, dim in enumerate(dims):
            static = dim.HasField("dim_value") and dim.dim_value > 0
            if wanted is not None:
                if static and dim.dim_value != wanted[axis]:
                    raise StepError(f"source.input_shapes.{name}[{axis}] is {wanted[axis]}, but "
                                    f"the model fixes it at {dim.dim_value}: "
                                    f"{_shape_text(dims)}")
                size = wanted[axis]
            elif not static and axis == 0:
                size = 1
            else:
                continue
            if not static:
                dim.Clear()
                dim.dim_value = size
                changed.append(name)
    return {name: [d.dim_value for d in inputs[name].type.tensor_type.shape.dim]
            for name in dict.fromkeys(changed)}


def dynamic_inputs(model) -> dict[str, str]:
    """Inputs that still have a dynamic dimension, with their shapes as text."""
    return {i.name: _shape_text(i.type.tensor_type.shape.dim) for i in model.graph.input
            if any(not (d.HasField("dim_value") and d.dim_value > 0)
                   for d in i.type.tensor_type.shape.dim)}


def infer_shapes(model):
    import onnx

    # A model with fixed inputs may still carry stale shapes on its intermediate
    # tensors (the exporter's); infer from the inputs alone.
    del model.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise StepError(f"ONNX shape inference failed: {first_line(exc)}") from None


def op_types(model) -> set[str]:
    return {node.op_type for node in model.graph.node}


def op_counts(model) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def pre_process(model, out: Path) -> None:
    """ONNX Runtime's recommended step before quantization: symbolic shape inference
    and graph optimizations such as folding BatchNormalization into Conv. It also
    leaves a model that no longer carries unused initializers (e.g. BatchNorm's
    num_batches_tracked)."""
    import onnxruntime
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnxruntime.set_default_logger_severity(3)  # its per-initializer warnings are noise here
    try:
        quant_pre_process(model, str(out))
    except Exception as exc:
        raise StepError("ONNX Runtime's quantization pre-processing failed: "
                        f"{first_line(exc)}") from None


def clean_up(model, out: Path) -> dict:
    """`pre_process`, then fold into Conv the per-channel Mul and Add that ONNX
    Runtime's fusions leave (a converter's lowered BatchNorm), writing `out`. Returns
    facts: node counts before and after, and the op types whose counts changed."""
    import onnx

    from edgebuild.toolchains.onnx_fold import fold_conv_affine

    before = op_counts(model)
    pre_process(model, out)
    cleaned = load_checked(out)
    folded = fold_conv_affine(cleaned)
    if folded:
        onnx.save(cleaned, str(out))
    after = op_counts(cleaned)
    return {"nodes_before": before.total(), "nodes": after.total(),
            "removed_ops": dict(sorted((before - after).items())),
            "added_ops": dict(sorted((after - before).items())),
            "folded_into_conv": folded}


def matching_nodes(model, patterns: tuple[str, ...]) -> list[str]:
    """Names of the nodes that match any of the shell-style `patterns`; an error for a
    pattern that matches none, listing some names that exist."""
    names = [node.name for node in model.graph.node if node.name]
    matched: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise StepError(f"quantize.keep_float.layers: '{pattern}' matches no node of the "
                            f"model (e.g. {', '.join(names[-5:]) or 'its nodes have no names'})")
        matched.extend(h for h in hits if h not in matched)
    return matched


def float_successors(model, nodes: list[str], ops: list[str]) -> list[str]:
    """Names of the nodes other than convolutions and matrix products that read only
    tensors computed in float by the kept `nodes` or `ops`, or by such nodes (constants
    aside). Quantizing them puts a QuantizeLinear and a DequantizeLinear inside the
    float part, say a detector's box decoding, which costs accuracy and time for
    nothing; a convolution gains from int8 wherever it is."""
    weights = {init.name for init in model.graph.initializer}
    weights.update(o for node in model.graph.node if node.op_type == "Constant"
                   for o in node.output)
    float_tensors: set[str] = set()
    successors: list[str] = []
    for node in model.graph.node:  # topological order: producers come first
        dynamic = [i for i in node.input if i and i not in weights]
        kept = node.name in nodes or node.op_type in ops
        follows = (node.op_type not in WEIGHTED_OPS and bool(dynamic)
                   and all(i in float_tensors for i in dynamic))
        if kept or follows:
            float_tensors.update(node.output)
        if follows and not kept:
            successors.append(node.name)
    return successors


def name_nodes(model) -> int:
    """Give unnamed nodes stable names (op type and index), so that exclusions and
    quantization tools can address every node. Returns how many were named."""
    count = 0
    taken = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            count += 1
    return count


def _shape_text(dims) -> str:
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                           for d in dims) + "]"
