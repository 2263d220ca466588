"""convert: the source model as a float32 artifact in the target's format (the TFLite
converter and tf2onnx, through toolchains/tf and toolchains/keras_to_onnx)."""

from __future__ import annotations

from edgebuild.worker import StepContext


def to_tflite(ctx: StepContext) -> dict:
    from edgebuild.toolchains import tf as tfc

    ctx.progress("converting to TFLite float32")
    converter = tfc.tflite_converter(ctx.inputs["model"], ctx.params["source_format"],
                                     ctx.outdir.parent, tfc.step_trust(ctx))
    flatbuffer = tfc.convert_tflite(converter)
    ctx.output("model", "model.tflite").write_bytes(flatbuffer)
    return {"bytes": len(flatbuffer)}


def to_onnx(ctx: StepContext) -> dict:
    from edgebuild.toolchains import keras_to_onnx, onnx_tools
    from edgebuild.toolchains.tf import step_trust

    ctx.progress("converting to ONNX with tf2onnx")
    model = keras_to_onnx.convert(ctx.inputs["model"], ctx.params["source_format"],
                                  ctx.params["opset"], ctx.outdir.parent, step_trust(ctx))
    # tf2onnx leaves some graphs unoptimized (a SavedModel's BatchNorms can stay
    # separate Mul and Add nodes where the same model from .h5 has them folded into
    # Conv), which costs int8 accuracy. ONNX sources get the same clean-up in prepare.
    out = ctx.output("model", "model.onnx")
    ctx.progress("cleaning up the ONNX graph for quantization")
    facts = onnx_tools.clean_up(model, out)
    return {"facts": facts, **onnx_tools.checked_facts(out)}
