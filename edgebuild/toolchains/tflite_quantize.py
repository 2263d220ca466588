"""The TFLite converter's post-training quantization, behind a small adapter: fp16,
dynamic range, full-integer int8 and int16x8, and selective int8 (layers and ops kept
float, by name or by measured sensitivity) through its QuantizationDebugger."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable

from edgebuild.errors import StepError


def configure(converter, mode: str, io_type: str, per_channel: bool,
              representative: Callable[[], Iterable] | None) -> None:
    """Set `converter` up for `mode`; int8 and int16x8 calibrate on `representative`."""
    import tensorflow as tf

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "fp16":
        converter.target_spec.supported_types = [tf.float16]
    elif mode in ("int8", "int16x8"):
        converter.representative_dataset = representative
        ops = tf.lite.OpsSet
        converter.target_spec.supported_ops = [
            ops.TFLITE_BUILTINS_INT8 if mode == "int8"
            else ops.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        if io_type != "float32":
            converter.inference_input_type = converter.inference_output_type = \
                getattr(tf, io_type)
        # The converter's own switch (used by its QuantizationDebugger too); per-tensor
        # drops a float32 scale and an int64 zero point per output channel.
        converter._experimental_disable_per_channel = not per_channel


def selective_int8(converter, samples, keep_float: dict,
                   progress: Callable[[str], None]) -> tuple[bytes, list[str]]:
    """Full-integer int8 except the named layers and ops, and the `sensitive` layers
    with the largest quantization error, which stay float: TFLite's selective
    quantization, through its QuantizationDebugger."""
    import tensorflow as tf

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
        progress("measuring each layer's quantization error")
        ranked = [n for n in _most_sensitive(debugger) if n not in nodes]
        nodes = [*nodes, *ranked[:keep_float["sensitive"]]]
    options.denylisted_nodes = nodes or None  # read when the final model is made
    return debugger.get_nondebug_quantized_model(), [*keep_float["ops"], *nodes]


def _most_sensitive(debugger) -> list[str]:
    """Quantized tensors, largest error first. The error is the RMSE between float and
    quantized outputs relative to the quantization step (TFLite's debugging guide): a
    well-quantized layer sits near 1/sqrt(12) = 0.29, a troubled one well above."""
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
