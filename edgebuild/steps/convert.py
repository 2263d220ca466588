"""convert: the source model as a float32 artifact in the target's format."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from edgebuild.errors import StepError, first_line
from edgebuild.worker import StepContext


def to_tflite(ctx: StepContext) -> dict:
    from edgebuild.toolchains import tf as tfc

    ctx.progress("converting to TFLite float32")
    converter = tfc.tflite_converter(ctx.inputs["model"], ctx.params["source_format"],
                                     ctx.outdir.parent, tfc.step_trust(ctx))
    flatbuffer = _convert(converter)
    ctx.output("model", "model.tflite").write_bytes(flatbuffer)
    return {"bytes": len(flatbuffer)}


def to_onnx(ctx: StepContext) -> dict:
    from edgebuild.toolchains import onnx_tools

    ctx.progress("converting to ONNX with tf2onnx")
    model = _tf2onnx(ctx)
    # tf2onnx leaves some graphs unoptimized (a SavedModel's BatchNorms can stay
    # separate Mul and Add nodes where the same model from .h5 has them folded into
    # Conv), which costs int8 accuracy. ONNX sources get the same clean-up in prepare.
    out = ctx.output("model", "model.onnx")
    ctx.progress("cleaning up the ONNX graph for quantization")
    facts = onnx_tools.clean_up(model, out)
    return {"facts": facts, **_check(out)}


def _tf2onnx(ctx: StepContext):
    """The source as tf2onnx converts it, an ONNX ModelProto."""
    import tensorflow as tf
    import tf2onnx

    from edgebuild.toolchains import tf as tfc

    source, source_format = ctx.inputs["model"], ctx.params["source_format"]
    opset, trust = ctx.params["opset"], tfc.step_trust(ctx)
    model = tfc.load_keras(source, trust) if source_format == "keras" else None
    if model is not None and tfc.is_tf_keras(model):
        spec = tuple(tf.TensorSpec((None, *i.shape[1:]), i.dtype, name=i.name.split(":")[0])
                     for i in model.inputs)
        with _deterministic_tf2onnx():
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        return proto
    saved = tfc.saved_model_dir(source, source_format, ctx.outdir.parent, trust)
    loaded = tfc.load_saved_model(saved)  # keep alive: it owns the variables
    signature = loaded.signatures["serving_default"]
    names = list(signature.structured_input_signature[1])
    spec = tuple(signature.structured_input_signature[1][n] for n in names)

    # tf2onnx traces a tf.function; a loaded signature is a concrete function.
    @tf.function(input_signature=spec)
    def serve(*args):
        outputs = signature(**dict(zip(names, args, strict=True)))
        return [outputs[k] for k in sorted(outputs)]

    with _deterministic_tf2onnx():
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset)
    return proto


@contextmanager
def _deterministic_tf2onnx():
    """Run tf2onnx without its `merge_duplication` pass, which keeps whichever duplicate
    it meets first in an order that changes from run to run: the same model gave
    different bytes. Without it a few scalar constants stay duplicated. Only
    `from_keras` takes an optimizer list, so we edit the default table (this runs in
    a one-step worker process) and put it back."""
    from tf2onnx import optimizer

    table = getattr(optimizer, "_optimizers", {})
    saved = dict(table)
    table.pop("merge_duplication", None)
    try:
        yield
    finally:
        table.clear()
        table.update(saved)


def _convert(converter) -> bytes:
    try:
        flatbuffer = converter.convert()
    except Exception as exc:  # the converter raises ConverterError and plain exceptions
        raise StepError(f"TFLite conversion failed: {first_line(exc)}") from None
    # A Keras model is converted through a temporary SavedModel; if writing it fails
    # (a full disk), TensorFlow silently converts another way, with other bytes.
    if getattr(converter, "_keras_model", None) is not None and not converter.saved_model_dir:
        raise StepError("TFLite conversion could not write its temporary SavedModel (is the "
                        "disk full?); refusing TensorFlow's fallback, which gives other bytes")
    return flatbuffer


def _check(path: Path) -> dict:
    import onnx

    from edgebuild.toolchains.onnx_tools import opset_of

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    return {"opset": opset_of(model), "bytes": path.stat().st_size}
