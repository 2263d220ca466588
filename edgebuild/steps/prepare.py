"""prepare: an ONNX source made fit for quantization and TensorRT.

Models arrive exported by old tools: opset 9, weights listed as graph inputs, dynamic
dimensions. This step checks the model, drops initializer inputs, upgrades the opset
where later steps need it, fixes dynamic dimensions, infers shapes, and runs ONNX
Runtime's quantization pre-processing (symbolic shape inference and graph
optimizations such as folding BatchNormalization into Conv). The result is the
target's float artifact.
"""

from __future__ import annotations

from edgebuild.errors import StepError
from edgebuild.worker import StepContext


def onnx(ctx: StepContext) -> dict:
    from edgebuild.toolchains import onnx_tools as tools
    from edgebuild.toolchains.onnx_external_data import source_model

    ctx.progress("preparing the ONNX model")
    source = source_model(ctx)
    model = tools.load_checked(source)
    facts = {"source_opset": tools.opset_of(model), "source_nodes": len(model.graph.node)}
    dropped = tools.drop_initializer_inputs(model)
    model = tools.upgrade_opset(model)
    fixed = tools.fix_input_shapes(model, ctx.params["input_shapes"])
    dynamic = tools.dynamic_inputs(model)
    if dynamic:
        shapes = ", ".join(f"{name} {shape}" for name, shape in dynamic.items())
        raise StepError(f"{source.name}: inputs with dynamic dimensions: {shapes}. Quantization "
                        "calibrates and TensorRT builds for fixed shapes; set them in the "
                        "recipe, e.g. source: {input_shapes: {NAME: [1, 3, 224, 224]}}")
    model = tools.infer_shapes(model)
    tools.name_nodes(model)

    out = ctx.output("model", "model.onnx")
    tools.pre_process(model, out)

    prepared = tools.load_checked(out)
    facts.update({"opset": tools.opset_of(prepared), "nodes": len(prepared.graph.node),
                  "dropped_initializer_inputs": len(dropped)})
    if fixed:
        facts["fixed_shapes"] = fixed
    return {"facts": facts, "bytes": out.stat().st_size}

