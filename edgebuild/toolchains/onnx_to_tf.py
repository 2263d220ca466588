"""onnx2tf behind a small adapter: an ONNX model as a Keras model in NHWC, saved as a
SavedModel whose signature keeps the ONNX model's input and output names."""

from __future__ import annotations

import re
from pathlib import Path

from edgebuild.errors import StepError, first_line


def signature_key(name: str) -> str:
    """An ONNX tensor name as a TensorFlow signature key (letters, digits, _ . -)."""
    key = re.sub(r"[^A-Za-z0-9_.\-]", "_", name).lstrip("_.-")
    return key or "output"


def io_names(path: Path) -> tuple[list[str], list[str]]:
    """The ONNX graph's input names (initializers aside) and output names."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return ([i.name for i in graph.input if i.name not in initializers],
            [o.name for o in graph.output])


def convert(source: Path, keep_nhwc: list[str]):
    """onnx2tf's Keras model of `source`, NHWC except for the inputs named."""
    import logging

    import onnx2tf

    logging.getLogger("onnx2tf").setLevel(logging.ERROR)
    try:
        return onnx2tf.convert(
            input_onnx_file_path=str(source), output_folder_path="onnx2tf",
            disable_model_save=True,  # the SavedModel is written below, with named outputs
            not_use_onnxsim=True,     # prepare.onnx has simplified it; onnxsim is not installed
            keep_nwc_or_nhwc_or_ndhwc_input_names=keep_nhwc or None,
            non_verbose=True, verbosity="error")
    except SystemExit as exc:  # onnx2tf exits the process on ops it cannot convert
        raise StepError(f"onnx2tf could not convert the model (exit {exc.code}); its "
                        "messages are in the step's log") from None
    except Exception as exc:
        raise StepError(f"onnx2tf could not convert the model: {first_line(exc)}") from None


def save(model, input_names: list[str], output_names: list[str], out: Path) -> dict:
    """Write `model` as a SavedModel whose serving signature takes the ONNX inputs and
    returns a dict keyed by the ONNX output names (as signature keys)."""
    import tensorflow as tf

    if len(model.inputs) != len(input_names) or len(model.outputs) != len(output_names):
        raise StepError(f"onnx2tf made a model with {len(model.inputs)} inputs and "
                        f"{len(model.outputs)} outputs from one with {len(input_names)} and "
                        f"{len(output_names)}")
    # onnx2tf builds the Keras model's inputs and outputs in the ONNX graph's order and
    # names its input layers after the ONNX inputs; check the names where it kept them.
    kept = [t.name.split(":")[0] for t in model.inputs]
    for mine, theirs in zip(input_names, kept, strict=True):
        if signature_key(mine) != signature_key(theirs) and theirs != mine:
            raise StepError(f"onnx2tf reordered the inputs: expected '{mine}', got '{theirs}'")
    specs = [tf.TensorSpec(t.shape, t.dtype, name=signature_key(n))
             for t, n in zip(model.inputs, input_names, strict=True)]
    keys = [signature_key(n) for n in output_names]

    @tf.function(input_signature=specs)
    def serve(*args):
        results = model(list(args) if len(args) > 1 else args[0], training=False)
        results = results if isinstance(results, (list, tuple)) else [results]
        return dict(zip(keys, results, strict=True))

    module = tf.Module()
    module.model = model  # tracks the variables
    tf.saved_model.save(module, str(out), signatures={"serving_default": serve})
    # The fingerprint holds a fresh random UUID: the same model would get other bytes
    # every time. Loading and converting do without it.
    (out / "fingerprint.pb").unlink(missing_ok=True)
    signature = serve.get_concrete_function()
    return {
        "inputs": [{"name": n, "key": signature_key(n), "shape": list(s.shape), "layout":
                    "NHWC" if len(s.shape) == 4 else None}
                   for n, s in zip(input_names, specs, strict=True)],
        "outputs": [{"name": n, "key": k,
                     "shape": list(signature.structured_outputs[k].shape)}
                    for n, k in zip(output_names, keys, strict=True)],
    }
