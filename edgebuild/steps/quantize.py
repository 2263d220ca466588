"""quantize.tflite: post-training quantization with the TFLite converter (ONNX Runtime's
is in quantize_onnx).

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
    from edgebuild.toolchains import tflite_inspect

    params = ctx.params
    mode, io, keep_float = params["mode"], params["io"], params["keep_float"]
    ctx.progress(f"quantizing to {mode} with the TFLite converter")
    converter = tfc.tflite_converter(ctx.inputs["model"], params["source_format"],
                                     ctx.outdir.parent, tfc.step_trust(ctx))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = ()
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode in ("int8", "int16x8"):
        samples = load_samples(ctx.inputs["calibration"], params["calibration"])
        converter.representative_dataset = lambda: _calibration(ctx, samples)
        ops = tf.lite.OpsSet
        converter.target_spec.supported_ops = [
            ops.TFLITE_BUILTINS_INT8 if mode == "int8"
            else ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        if io != "float32":
            converter.inference_input_type = converter.inference_output_type = getattr(tf, io)
        # The converter's own switch (used by its QuantizationDebugger too); per-tensor
        # drops a float32 scale and an int64 zero point per output channel.
        converter._experimental_disable_per_channel = not params["per_channel"]
    if keep_float["layers"] or keep_float["ops"] or keep_float.get("sensitive"):
        flatbuffer, kept = _selective_int8(ctx, converter, samples, keep_float)
    else:
        flatbuffer, kept = _convert(converter), []
    ctx.output("model", "model.tflite").write_bytes(flatbuffer)
    facts = {"calibration_samples": len(samples)}
    if kept:
        facts["kept_float"] = kept
    ops = tflite_inspect.read_ops(flatbuffer)
    if params["integer_only"]:
        facts["integer_only"] = _check_integer_only(ops)
    if params["after"]:
        facts["composition"] = _check_composition(ctx, ops, mode)
    return {"facts": facts}


def _calibration(ctx: StepContext, samples):
    for i, sample in enumerate(samples):
        ctx.progress("calibrating", i + 1, len(samples))
        yield [sample[None, ...]]


def _selective_int8(ctx: StepContext, converter, samples,
                    keep_float: dict) -> tuple[bytes, list[str]]:
    """Full-integer int8 except the named layers and ops, and the `sensitive` layers
    with the largest quantization error, which stay float: TFLite's selective
    quantization, through its QuantizationDebugger."""
    import tensorflow as tf

    from edgebuild.errors import StepError
    from edgebuild.toolchains import tflite_inspect

    ops = tf.lite.OpsSet
    converter.target_spec.supported_ops = [ops.TFLITE_BUILTINS_INT8, ops.TFLITE_BUILTINS]
    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=list(keep_float["ops"]) or None)
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: ([s[None, ...]] for s in samples),
        debug_options=options)
    nodes = tflite_inspect.layer_nodes(tflite_inspect.read_ops(debugger.calibrated_model),
                                       keep_float["layers"])
    if keep_float["layers"] and not nodes:
        raise StepError(f"quantize.keep_float.layers {list(keep_float['layers'])} match no op "
                        "of the converted model; use the Keras layer names (ONNX node "
                        "names for ONNX sources)")
    if keep_float.get("sensitive"):
        ctx.progress("measuring each layer's quantization error")
        ranked = [n for n in _most_sensitive(debugger) if n not in nodes]
        nodes = [*nodes, *ranked[:keep_float["sensitive"]]]
    options.denylisted_nodes = nodes or None  # read when the final model is made
    return debugger.get_nondebug_quantized_model(), [*keep_float["ops"], *nodes]


def _most_sensitive(debugger) -> list[str]:
    """Quantized tensors, largest error first. The error is the RMSE between float and
    quantized outputs relative to the quantization step (TFLite's debugging guide): a
    well-quantized layer sits near 1/sqrt(12) = 0.29, a troubled one well above."""
    import csv
    import io
    import math

    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    rows = list(csv.DictReader(io.StringIO(dump.getvalue())))
    errors = {}
    for row in rows:
        scale = float(row["scale"] or 0)
        if scale > 0:
            errors[row["tensor_name"]] = math.sqrt(float(row["mean_squared_error"])) / scale
    return sorted(errors, key=lambda name: -errors[name])


def _check_integer_only(ops) -> dict:
    """The guarantee for integer-only hardware: no float op and no float tensor."""
    from edgebuild.errors import StepError
    from edgebuild.toolchains.tflite_inspect import float_offenders

    offenders = float_offenders(ops)
    if offenders:
        raise StepError(f"the int8 model still has {len(offenders)} float op(s), and the "
                        "device runs integer ops only:\n  " + "\n  ".join(offenders) +
                        "\nThese ops have no int8 kernel in the TFLite converter; replace "
                        "the layers that produce them, or choose a device with float support.")
    return {"ops": len(ops), "float_ops": 0}


def _check_composition(ctx: StepContext, ops, mode: str) -> dict:
    """Pruned zeros and shared cluster values must survive quantization: per layer, the
    quantized kernel keeps at least the float sparsity, and no output channel holds
    more distinct values than the whole float kernel did."""
    from edgebuild.errors import StepError
    from edgebuild.toolchains.tf import load_keras, step_trust
    from edgebuild.toolchains.tflite_inspect import kernel_stats
    from edgebuild.toolchains.tfmot import leaf_layers, weight_stats

    model = load_keras(ctx.inputs["model"], step_trust(ctx))
    before = weight_stats(model, [layer.name for layer in leaf_layers(model)])
    after = kernel_stats(ops, list(before))
    layers, lost = {}, []  # layers: the pruned or clustered ones, for the record
    for name, float_stats in before.items():
        if name not in after:
            continue
        quantized = after[name]
        kept = (quantized["sparsity"] >= float_stats["sparsity"] - 1e-3
                and quantized["unique_per_channel"] <= float_stats["unique"])
        if not kept or float_stats["sparsity"] > 0 or float_stats["unique"] <= 256:
            layers[name] = {"float": {"sparsity": float_stats["sparsity"],
                                      "unique": float_stats["unique"]},
                            mode: {"sparsity": quantized["sparsity"],
                                   "unique_per_channel": quantized["unique_per_channel"]},
                            "preserved": kept}
        if not kept:
            lost.append(f"{name}: sparsity {float_stats['sparsity']} -> "
                        f"{quantized['sparsity']}, values {float_stats['unique']} -> "
                        f"{quantized['unique_per_channel']} per channel")
    if lost:
        raise StepError(f"{mode} quantization undid pruning or clustering in "
                        f"{len(lost)} layer(s):\n  " + "\n  ".join(lost) +
                        "\nExclude these layers from prune/cluster, or quantize them in float "
                        "with quantize.keep_float.")
    return {"layers": layers, "preserved": True}

