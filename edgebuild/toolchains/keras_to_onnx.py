"""tf2onnx behind a small adapter: any TF source (tf_keras, Keras 3, SavedModel) as an
ONNX ModelProto, the same bytes every time."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgebuild.toolchains.keras_files import Trust


def convert(source: Path, source_format: str, opset: int, workdir: Path,
            trust: Trust | None = None):
    """The source as tf2onnx converts it."""
    import tensorflow as tf
    import tf2onnx

    from edgebuild.toolchains import tf as tfc

    model = tfc.load_keras(source, trust) if source_format == "keras" else None
    if model is not None and tfc.is_tf_keras(model):
        spec = tuple(tf.TensorSpec((None, *i.shape[1:]), i.dtype, name=i.name.split(":")[0])
                     for i in model.inputs)
        with _deterministic():
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
        return proto
    saved = tfc.saved_model_dir(source, source_format, workdir, trust)
    loaded = tfc.load_saved_model(saved)  # keep alive: it owns the variables
    signature = loaded.signatures["serving_default"]
    names = list(signature.structured_input_signature[1])
    spec = tuple(signature.structured_input_signature[1][n] for n in names)

    # tf2onnx traces a tf.function; a loaded signature is a concrete function.
    @tf.function(input_signature=spec)
    def serve(*args):
        outputs = signature(**dict(zip(names, args, strict=True)))
        return [outputs[k] for k in sorted(outputs)]

    with _deterministic():
        proto, _ = tf2onnx.convert.from_function(serve, input_signature=spec, opset=opset)
    return proto


@contextmanager
def _deterministic():
    """Run tf2onnx without its `merge_duplication` pass, which keeps whichever duplicate
    it meets first in an order that changes from run to run: the same model gave
    different bytes. Without it a few scalar constants stay duplicated. Only
    `from_keras` takes an optimizer list, so we edit the default table and put it back.

    tf2onnx also numbers the nodes it makes with a global counter: each conversion
    starts it where importing tf2onnx left it, as in a fresh process, so that a warm
    worker's second conversion names its nodes as the first did."""
    from tf2onnx import optimizer, utils
    from tf2onnx.rewriter import loop_rewriter_base  # noqa: F401 - numbers a node on import

    if not hasattr(utils, "_edgebuild_first_name"):
        utils._edgebuild_first_name = utils.INTERNAL_NAME  # as imported
    utils.INTERNAL_NAME = utils._edgebuild_first_name
    table = getattr(optimizer, "_optimizers", {})
    saved = dict(table)
    table.pop("merge_duplication", None)
    try:
        yield
    finally:
        table.clear()
        table.update(saved)
