"""quantize: post-training quantization with the TFLite converter or ONNX Runtime.

Modes follow the TFLite guide: fp16 (half-size weights), dynamic (int8 weights,
float activations), int8 (full-integer, activations calibrated on data.calibration)
and int16x8 (int16 activations, int8 weights, for accuracy-sensitive models).
"""

from __future__ import annotations

from edgebuild.worker import StepContext


def tflite(ctx: StepContext) -> dict:
    import tensorflow as tf

    from edgebuild.data import load_samples
    from edgebuild.steps.convert import _convert
    from edgebuild.toolchains import tf as tfc

    mode, io = ctx.params["mode"], ctx.params["io"]
    ctx.progress(f"quantizing to {mode} with the TFLite converter")
    converter = tfc.tflite_converter(ctx.inputs["model"], ctx.params["source_format"],
                                     ctx.outdir.parent)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = ()
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode in ("int8", "int16x8"):
        samples = load_samples(ctx.inputs["calibration"], ctx.params["calibration"])
        converter.representative_dataset = lambda: ([s[None, ...]] for s in samples)
        ops = tf.lite.OpsSet
        converter.target_spec.supported_ops = [
            ops.TFLITE_BUILTINS_INT8 if mode == "int8"
            else ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        if io != "float32":
            converter.inference_input_type = converter.inference_output_type = getattr(tf, io)
        ctx.progress(f"calibrating on {len(samples)} samples")
    flatbuffer = _convert(converter)
    ctx.output("model", "model.tflite").write_bytes(flatbuffer)
    return {"bytes": len(flatbuffer), "mode": mode, "io": io,
            "calibration_samples": len(samples)}


def onnx(ctx: StepContext) -> dict:
    mode = ctx.params["mode"]
    out = ctx.output("model", "model.onnx")
    ctx.progress(f"quantizing to {mode} with ONNX Runtime")
    if mode == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(ctx.inputs["model"]), str(out), weight_type=QuantType.QInt8)
    else:  # fp16, keeping float32 inputs and outputs so callers need no change
        import onnx as onnx_lib
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = onnx_lib.load(str(ctx.inputs["model"]))
        onnx_lib.save(convert_float_to_float16(model, keep_io_types=True), str(out))
    return {"bytes": out.stat().st_size, "mode": mode}
