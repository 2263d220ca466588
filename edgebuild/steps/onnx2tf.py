"""convert.onnx2tf: an ONNX model as a TensorFlow SavedModel in NHWC, which the TFLite
converter then turns into float and quantized artifacts (the route Ultralytics' TFLite
and Edge TPU exports take).

onnx2tf rewrites the graph for channels-last: 4-D inputs become NHWC (an input the
recipe says is NHWC already stays as it is). The SavedModel's signature names its
outputs after the ONNX model's, so later steps match outputs by name, not by order.
The library calls are in toolchains/onnx_to_tf.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from edgebuild.worker import StepContext

# onnx2tf's own conversion check runs the models on a sample of 20 images, and
# downloads that sample from GitHub unless this file is in the working folder.
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
IO_FILE = "io.json"  # beside the SavedModel: its inputs and outputs, by ONNX name


def run(ctx: StepContext) -> dict:
    from edgebuild.toolchains import onnx_to_tf

    source = ctx.inputs["model"]
    inputs, outputs = onnx_to_tf.io_names(source)
    # Never the network: a fixed sample, the same on every machine (onnx2tf only
    # compares its TF graph with ONNX Runtime on it).
    rng = np.random.default_rng(0)
    np.save(Path.cwd() / SAMPLE_FILE, rng.random((20, 128, 128, 3), dtype=np.float32))

    # onnx2tf rewrites the file it converts (it names every node, in place): give it a
    # copy, so that no input, least of all a user's model, is ever written to.
    copy = Path.cwd() / "onnx2tf-input.onnx"
    shutil.copyfile(source, copy)
    ctx.progress("converting ONNX to TensorFlow with onnx2tf")
    model = onnx_to_tf.convert(copy, inputs if ctx.params["layout"] == "NHWC" else [])
    out = ctx.output("model", "saved_model")
    io = onnx_to_tf.save(model, inputs, outputs, out)
    (out / IO_FILE).write_text(json.dumps(io, indent=1, sort_keys=True))
    return {"facts": {"inputs": io["inputs"], "outputs": io["outputs"]}}
