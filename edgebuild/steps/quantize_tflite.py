"""quantize.tflite: post-training quantization with the TFLite converter (ONNX Runtime's
is in quantize_onnx).

Modes follow the TFLite guide: fp16 (half-size weights), dynamic (int8 weights,
float activations), int8 (full-integer, activations calibrated on data.calibration)
and int16x8 (int16 activations, int8 weights, for accuracy-sensitive models).
"""

from __future__ import annotations

from edgebuild.worker import StepContext


def tflite(ctx: StepContext) -> dict:
    from edgebuild.data import load_samples
    from edgebuild.toolchains import tf as tfc
    from edgebuild.toolchains import tflite_inspect, tflite_quantize

    params = ctx.params
    mode, keep_float = params["mode"], params["keep_float"]
    facts = {}
    if params.get("qat"):
        converter, facts["qat"] = _trained_for_int8(ctx)
    else:
        converter = tfc.tflite_converter(ctx.inputs["model"], params["source_format"],
                                         ctx.outdir.parent, tfc.step_trust(ctx))
    ctx.progress(f"quantizing to {mode} with the TFLite converter")
    samples = ()
    if mode in ("int8", "int16x8"):
        samples = load_samples(ctx.inputs["calibration"], params["calibration"])
    tflite_quantize.configure(converter, mode, params["io"], params["per_channel"],
                              lambda: _calibration(ctx, samples))
    if keep_float["layers"] or keep_float["ops"] or keep_float.get("sensitive"):
        flatbuffer, kept = tflite_quantize.selective_int8(converter, samples, keep_float,
                                                          ctx.progress)
    else:
        flatbuffer, kept = tfc.convert_tflite(converter), []
    ctx.output("model", "model.tflite").write_bytes(flatbuffer)
    facts["calibration_samples"] = len(samples)
    if kept:
        facts["kept_float"] = kept
    ops = tflite_inspect.read_ops(flatbuffer)
    if params["integer_only"]:
        facts["integer_only"] = _check_integer_only(ops)
    if params["after"]:
        facts["composition"] = _check_composition(ctx, ops, mode)
    return {"facts": facts}


def _trained_for_int8(ctx: StepContext):
    """Quantization-aware training: the Keras model with tfmot's fake quantization,
    fine-tuned on data.train; the TFLite converter of the result, and what was done.
    tfmot folds BatchNorm into the layer before it itself, while training. Fake
    quantization computes in float32 only, so unlike prune and cluster this fine-tuning
    is not done in float64: its bytes differ between CPU models (an emulated AMD EPYC
    gave another .tflite than an Intel Xeon; README, Guarantees)."""
    from edgebuild.steps.prune_cluster import start_fine_tuning
    from edgebuild.toolchains import tfmot
    from edgebuild.toolchains.tf import tflite_converter_of

    params, qat = ctx.params, ctx.params["qat"]
    model, tuning = start_fine_tuning(ctx, "quantization-aware training", qat["epochs"],
                                      qat["learning_rate"])
    trained, unwrapped = tfmot.quantize_aware(
        model, tuning, tuple(params["keep_float"]["layers"]), params["after"])
    facts = {"epochs": tuning.epochs, "samples": len(tuning.x)}
    if unwrapped:  # the converter calibrates these after training instead
        facts["not_trained_quantized"] = unwrapped
    return tflite_converter_of(trained), facts


def _calibration(ctx: StepContext, samples):
    for i, sample in enumerate(samples):
        ctx.progress("calibrating", i + 1, len(samples))
        yield [sample[None, ...]]


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
    optimized = [name for name, st in before.items()
                 if st["sparsity"] > 0 or st["unique"] <= 256]
    if optimized and not any(name in after for name in optimized):
        # A check that finds none of the layers would pass whatever happened to them.
        raise StepError("found none of the pruned or clustered layers "
                        f"({', '.join(optimized[:5])}) in the {mode} flatbuffer, so cannot "
                        "check that their zeros and shared values survived; please report")
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

