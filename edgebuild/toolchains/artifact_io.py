"""What a bundle's artifact takes and gives: each input's and output's name, shape,
dtype, layout and quantization parameters, read from the artifact itself, for the
bundle manifest (what an app needs to feed the model and read its outputs)."""

from __future__ import annotations

from pathlib import Path


def describe(path: Path, layout: str) -> dict | None:
    """{"inputs": [...], "outputs": [...]} for a .tflite or .onnx artifact; None for
    anything else (engines are described by their own build)."""
    if path.suffix == ".tflite":
        return _tflite(path, layout)
    if path.suffix == ".onnx":
        return _onnx(path, layout)
    return None


def _tflite(path: Path, layout: str) -> dict:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from edgebuild.toolchains.runtimes import signature_names

    interpreter = Interpreter(model_path=str(path))
    described = {}
    for which, details in (("inputs", interpreter.get_input_details()),
                           ("outputs", interpreter.get_output_details())):
        named = signature_names(interpreter, which)
        described[which] = []
        for detail in details:
            scale, zero_point = detail["quantization"]
            entry = {"name": named.get(detail["index"], detail["name"]),
                     "shape": [int(d) for d in detail["shape"]],
                     "dtype": np.dtype(detail["dtype"]).name}
            if which == "inputs":
                entry["layout"] = layout if len(entry["shape"]) == 4 else None
            if scale:  # integer I/O: real = (q - zero_point) * scale
                entry["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
            described[which].append(entry)
    return described


def _onnx(path: Path, layout: str) -> dict:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}

    def entry(value, is_input: bool) -> dict:
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in tensor.shape.dim]
        described = {"name": value.name, "shape": shape,
                     "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}
        if is_input:
            described["layout"] = layout if len(shape) == 4 else None
        return described

    return {"inputs": [entry(v, True) for v in graph.input if v.name not in initializers],
            "outputs": [entry(v, False) for v in graph.output]}
