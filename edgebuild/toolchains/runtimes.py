"""Run artifacts in the runtimes devices use: LiteRT for .tflite, ONNX Runtime for
.onnx, TensorRT for .engine. Integer I/O is quantized and dequantized with the
model's own parameters, so callers always pass and receive float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgebuild.errors import StepError, first_line

FLATBUFFER_LIMIT = 2 ** 31  # bytes: flatbuffers address with 32-bit offsets


class LiteRTModel:
    def __init__(self, path: Path, threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        size = path.stat().st_size
        if size >= FLATBUFFER_LIMIT:
            raise StepError(f"{path.name}: {size / 2 ** 30:.1f} GiB, past the 2 GiB a TFLite "
                            "flatbuffer can address, so it is not a valid TFLite model")
        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:  # a damaged or foreign flatbuffer
            raise StepError(f"{path.name}: LiteRT cannot load it: {first_line(exc)}") from None
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()
        # A signature's output names are the model's own (Keras layers, ONNX outputs);
        # tensor names ("StatefulPartitionedCall:1") are the converter's.
        named = signature_names(self.interpreter, "outputs")
        self.output_names = [named.get(o["index"], o["name"]) for o in self.outputs]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        """Run one sample (batch of 1)."""
        detail = self.inputs[0]
        self.interpreter.set_tensor(detail["index"], _quantize(x[None, ...], detail))
        self.interpreter.invoke()
        return [_dequantize(self.interpreter.get_tensor(o["index"]), o)[0] for o in self.outputs]


def signature_names(interpreter, which: str) -> dict[int, str]:
    """Tensor index -> name in the model's one signature (empty without one)."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return {}
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    details = runner.get_output_details() if which == "outputs" else runner.get_input_details()
    return {detail["index"]: name for name, detail in details.items()}


class OnnxModel:
    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own pybind11 types
            raise StepError(f"{path.name}: ONNX Runtime cannot load it: {first_line(exc)}") \
                from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        # fp16 models may take float16 I/O (quantize io: float16).
        self.input_type = np.float16 if first.type == "tensor(float16)" else np.float32
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        feed = {self.input_name: x[None, ...].astype(self.input_type, copy=False)}
        return [o[0].astype(np.float32, copy=False) for o in self.session.run(None, feed)]


def load_runtime(path: Path, threads: int = 1):
    if path.suffix == ".engine":
        from edgebuild.toolchains.tensorrt import TensorRTModel

        return TensorRTModel(path, threads)
    return LiteRTModel(path, threads) if path.suffix == ".tflite" else OnnxModel(path, threads)


def _quantize(x: np.ndarray, detail: dict) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * scale


QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
INTEGER_OPS = {"ConvInteger", "MatMulInteger"}  # dynamic quantization's; and QLinear*
CONVERSION_OPS = {"QUANTIZE", "DEQUANTIZE"}


def float_compute(path: Path) -> dict | None:
    """How many of an artifact's compute ops run in float, by op type: where an int8
    artifact is slower than float, ops left in float between the integer ones (each
    with a conversion either side) are the usual reason. None for engines."""
    if path.suffix == ".tflite":
        ops = _tflite_ops(path)
    elif path.suffix == ".onnx":
        ops = _onnx_ops(path)
    else:
        return None
    floats: dict[str, int] = {}
    for op_type, in_float in ops:
        if in_float:
            floats[op_type] = floats.get(op_type, 0) + 1
    by_count = dict(sorted(floats.items(), key=lambda kv: (-kv[1], kv[0])))
    return {"ops": len(ops), "float_ops": sum(floats.values()), "float_op_types": by_count}


def _tflite_ops(path: Path) -> list[tuple[str, bool]]:
    """(op name, computes in float) for each op but the (de)quantize conversions."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    dtypes = {t["index"]: t["dtype"] for t in interpreter.get_tensor_details()}
    ops = []
    for op in interpreter._get_ops_details():  # LiteRT's only listing of ops
        if op["op_name"] in CONVERSION_OPS:
            continue
        tensors = [i for i in (*op["inputs"], *op["outputs"]) if i >= 0]
        ops.append((op["op_name"], any(dtypes.get(i) in (np.float32, np.float16)
                                       for i in tensors)))
    return ops


def _onnx_ops(path: Path) -> list[tuple[str, bool]]:
    """(op type, computes in float) for each node but Q/DQ: in a QDQ model a node runs
    in integers when every input comes through DequantizeLinear and its output goes
    on through QuantizeLinear."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    made_by = {out: node.op_type for node in graph.node for out in node.output}
    read_by: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            read_by.setdefault(name, []).append(node.op_type)
    ops = []
    for node in graph.node:
        if node.op_type in QDQ_OPS:
            continue
        if node.op_type in INTEGER_OPS or node.op_type.startswith("QLinear"):
            ops.append((node.op_type, False))
            continue
        inputs_quantized = all(made_by.get(i) == "DequantizeLinear" for i in node.input if i)
        outputs_quantized = all("QuantizeLinear" in read_by.get(o, ()) for o in node.output)
        ops.append((node.op_type, not (inputs_quantized and outputs_quantized)))
    return ops
