"""convert.onnx2tf: an ONNX model as a TensorFlow SavedModel in NHWC, which the TFLite
converter then turns into float and quantized artifacts (the route Ultralytics' TFLite
and Edge TPU exports take).

onnx2tf rewrites the graph for channels-last: 4-D inputs become NHWC (an input the
recipe says is NHWC already stays as it is). The SavedModel's signature names its
outputs after the ONNX model's, so later steps match outputs by name, not by order.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgebuild.errors import StepError, first_line
from edgebuild.output_mapping import signature_key
from edgebuild.worker import StepContext

# onnx2tf's own conversion check runs the models on a sample of 20 images, and
# downloads that sample from GitHub unless this file is in the working folder.
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
IO_FILE = "io.json"  # beside the SavedModel: its inputs and outputs, by ONNX name


def run(ctx: StepContext) -> dict:
    import numpy as np
    import onnx

    source = ctx.inputs["model"]
    graph = onnx.load(str(source), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    outputs = [o.name for o in graph.output]
    # Never the network: a fixed sample, the same on every machine (onnx2tf only
    # compares its TF graph with ONNX Runtime on it).
    rng = np.random.default_rng(0)
    np.save(Path.cwd() / SAMPLE_FILE, rng.random((20, 128, 128, 3), dtype=np.float32))

    # onnx2tf rewrites the file it converts (it names every node, in place): give it a
    # copy, so that no input, least of all a user's model, is ever written to.
    copy = Path.cwd() / "onnx2tf-input.onnx"
    shutil.copyfile(source, copy)
    ctx.progress("converting ONNX to TensorFlow with onnx2tf")
    model = _convert(copy, inputs if ctx.params["layout"] == "NHWC" else [])
    out = ctx.output("model", "saved_model")
    io = _save(model, inputs, outputs, out)
    (out / IO_FILE).write_text(json.dumps(io, indent=1, sort_keys=True))
    return {"facts": {"inputs": io["inputs"], "outputs": io["outputs"]}}


def _convert(source: Path, keep_nhwc: list[str]):
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


def _save(model, input_names: list[str], output_names: list[str], out: Path) -> dict:
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
